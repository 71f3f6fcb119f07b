"""The risk gate's band rule: a change's calibrated probability, read against the model's training-period
reference (quantiles of held-out training-period scores), gives its band — low, medium, high or critical.
Pure: no I/O; the same signal and bands give the same band."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.vocabulary import BANDS, Band
from models.evaluation import QUANTILE_LEVELS, quantile_key, risk_reference

BandName = Band
BANDS_ORDER = BANDS  # lowest risk first

# The reference (models/evaluation.py, stored with each model) keeps the held-out score distribution at every
# percentile (q00 … q100), so a policy may move a band's quantile without retraining the model.
reference_from_training = risk_reference


class RiskBands(BaseModel):
    """The `risk_bands:` section of the policy. Bands are read as quantiles of the model's held-out
    training-period scores (the validation and calibration slices, which the booster did not fit), not as
    absolute probabilities: base rates vary from 12% to 49% between projects (ISSTA'21 JIT data), so one
    absolute threshold fast-tracks almost nothing in one project and half the changes in another. This is
    the quantile form of effort-aware JIT gating (Kamei et al., TSE 2013: inspect the riskiest share; here
    its mirror image, release the safest share). The absolute `fallback_*` thresholds apply only to a
    model that carries no reference."""

    model_config = ConfigDict(extra="forbid")

    fast_track_quantile: float = Field(
        default=0.30,
        ge=0.0,
        le=1.0,
        description="low band: probability at or below this quantile of the held-out training-period scores",
    )
    review_quantile: float = Field(
        default=0.80,
        ge=0.0,
        le=1.0,
        description="high band (senior review): probability at or above this quantile of the reference",
    )
    block_quantile: float = Field(
        default=0.95,
        ge=0.0,
        le=1.0,
        description="critical band (block): probability at or above this quantile of the reference",
    )
    fallback_medium: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="without a reference: lowest calibrated probability of the medium band",
    )
    fallback_high: float = Field(
        default=0.4,
        ge=0.0,
        le=1.0,
        description="without a reference: lowest calibrated probability of the high band",
    )
    fallback_critical: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="without a reference: lowest calibrated probability of the critical band",
    )

    @model_validator(mode="after")
    def _ordered(self) -> RiskBands:
        from pydantic_core import PydanticCustomError

        for lower, upper in (
            ("fast_track_quantile", "review_quantile"),
            ("review_quantile", "block_quantile"),
            ("fallback_medium", "fallback_high"),
            ("fallback_high", "fallback_critical"),
        ):
            if getattr(self, lower) >= getattr(self, upper):
                raise PydanticCustomError(
                    "bands_not_ordered",
                    "{upper} ({upper_value}) must be above {lower} ({lower_value})",
                    {
                        "upper": upper,
                        "upper_value": getattr(self, upper),
                        "lower": lower,
                        "lower_value": getattr(self, lower),
                    },
                )
        return self


@dataclass(frozen=True)
class RiskSignal:
    """What the gate reads of one scored change.

    probability: the model's calibrated probability (CommitScore.probability).
    quantiles: the held-out training-period scores at QUANTILE_LEVELS (q00 … q100, 101 values, non-
        decreasing), from the model's meta; empty when the model carries none (absolute fallback).
    base_rate: the training period's share of defect-inducing changes (reported, not used by the rule)."""

    probability: float
    quantiles: tuple[float, ...] = ()
    base_rate: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or self.probability != self.probability:
            raise ValueError(f"probability must lie in [0, 1], got {self.probability}")
        if self.quantiles and len(self.quantiles) != len(QUANTILE_LEVELS):
            raise ValueError(
                f"quantiles: need {len(QUANTILE_LEVELS)} values (q00 … q100), got {len(self.quantiles)}"
            )

    @classmethod
    def from_reference(cls, probability: float, reference: Mapping[str, float]) -> RiskSignal:
        """A signal from a probability and a reference as `reference_from_training` writes it (the model's
        meta); a reference without every quantile counts as none."""
        keys = [quantile_key(level) for level in QUANTILE_LEVELS]
        quantiles = tuple(float(reference[k]) for k in keys) if all(k in reference for k in keys) else ()
        base = reference.get("base_rate")
        return cls(float(probability), quantiles, None if base is None else float(base))

    def reference_score(self, level: float) -> float:
        """The reference's score at quantile `level`, interpolated between percentiles."""
        return float(np.interp(level, QUANTILE_LEVELS, self.quantiles))


def band_of(signal: RiskSignal, bands: RiskBands) -> BandName:
    """The band of a change: critical at or above the reference's block quantile, high at or above its review
    quantile, low at or below its fast-track quantile, medium in between (riskiest rule first, so a higher
    probability never gets a lower band). Without a reference, the absolute fallback thresholds."""
    p = signal.probability
    if not signal.quantiles:
        if p >= bands.fallback_critical:
            return "critical"
        if p >= bands.fallback_high:
            return "high"
        return "medium" if p >= bands.fallback_medium else "low"
    if p >= signal.reference_score(bands.block_quantile):
        return "critical"
    if p >= signal.reference_score(bands.review_quantile):
        return "high"
    if p <= signal.reference_score(bands.fast_track_quantile):
        return "low"
    return "medium"
