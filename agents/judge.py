"""The canary judge: per interval, each metric of the canary against the baseline (Kayenta's Mann-Whitney
judge with an effect-size tolerance), a 0-100 score, and the run's action under Argo Rollouts' AnalysisRun
limits. Pure functions over samples and a template; reading files is the only I/O, kept at the edge."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.stats import mannwhitneyu

from features.errors import BadConfig, BadTable
from features.yamlfile import load_yaml_model

Classification = Literal["Pass", "High", "Low", "NoData"]
IntervalOutcome = Literal["pass", "marginal", "fail", "nodata", "error"]
Action = Literal["promote", "continue", "pause", "rollback"]
EXIT_CODES: dict[str, int] = {"pass": 0, "marginal": 3, "inconclusive": 3, "nodata": 3, "fail": 4}
DEFAULT_ANALYSIS = Path(__file__).resolve().parent / "default_analysis.yaml"
_DURATION = r"^(\d+)(s|m|h)$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Strict):
    """One metric the judge compares, as a Kayenta canary config's metric."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    bad: Literal["increase", "decrease", "either"] = Field(
        default="increase", description="which direction of change is a regression"
    )
    tolerance: float = Field(
        default=0.1, ge=0, description="relative change of the mean within which a metric passes"
    )
    alpha: float = Field(
        default=0.01, gt=0, lt=1, description="significance level of the Mann-Whitney U test"
    )
    critical: bool = Field(default=False, description="a regression here fails the whole canary")
    weight: float = Field(default=1.0, gt=0)
    min_samples: int = Field(default=3, ge=1, description="fewer samples on either side is NoData")


class AnalysisTemplate(_Strict):
    """An AnalysisTemplate-like canary analysis: metrics, score thresholds and Argo's run limits."""

    metrics: list[MetricSpec] = Field(min_length=1)
    pass_score: float = Field(default=95, ge=0, le=100)
    marginal_score: float = Field(default=75, ge=0, le=100)
    interval: str = Field(default="1m", pattern=_DURATION)
    count: int = Field(default=10, ge=1, le=1000)
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=0, ge=0)
    consecutive_error_limit: int = Field(default=4, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisTemplate:
        if self.marginal_score > self.pass_score:
            raise ValueError("marginal_score must not exceed pass_score")
        names = [m.name for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError("metric names must be unique")
        return self


@dataclass(frozen=True)
class MetricResult:
    name: str
    classification: Classification
    p_value: float | None
    effect: float | None  # canary mean / baseline mean - 1
    n: int  # the smaller of the two sample counts
    reason: str


@dataclass(frozen=True)
class IntervalVerdict:
    score: float | None
    verdict: IntervalOutcome
    failed_critical: list[str]
    results: tuple[MetricResult, ...] = ()


@dataclass(frozen=True)
class RunVerdict:
    action: Action
    why: str


def source_error() -> IntervalVerdict:
    """The verdict of an interval whose measurement could not be taken (counts toward the error limit)."""
    return IntervalVerdict(score=None, verdict="error", failed_critical=[], results=())


def load_template(path: Path | None = None) -> AnalysisTemplate:
    """The template in `path` (the packaged default when None); errors name the file and the field."""
    return load_yaml_model(path or DEFAULT_ANALYSIS, AnalysisTemplate, "analysis template")


def _relative_effect(baseline_mean: float, canary_mean: float) -> float:
    if baseline_mean == 0:
        return 0.0 if canary_mean == 0 else math.copysign(math.inf, canary_mean)
    return (
        canary_mean / baseline_mean - 1
        if baseline_mean > 0
        else (canary_mean - baseline_mean) / -baseline_mean
    )


def classify_metric(
    baseline_samples: Sequence[float], canary_samples: Sequence[float], spec: MetricSpec
) -> MetricResult:
    """Kayenta's classifier: a one-sided Mann-Whitney U test in each bad direction, and a relative change of
    the mean beyond the tolerance band. A change in the harmless direction passes."""
    n = min(len(baseline_samples), len(canary_samples))
    if n < spec.min_samples:
        return MetricResult(spec.name, "NoData", None, None, n, f"{n} samples, need {spec.min_samples}")
    b_mean = sum(baseline_samples) / len(baseline_samples)
    c_mean = sum(canary_samples) / len(canary_samples)
    effect = _relative_effect(b_mean, c_mean)
    directions = {"increase": ("greater",), "decrease": ("less",), "either": ("greater", "less")}[spec.bad]
    best_p = 1.0
    for alternative in directions:
        if set(baseline_samples) == set(canary_samples) and len(set(canary_samples)) == 1:
            p = 1.0  # identical constant samples: scipy's U test is undefined, nothing differs
        else:
            p = float(mannwhitneyu(canary_samples, baseline_samples, alternative=alternative).pvalue)
        best_p = min(best_p, p)
        beyond = effect > spec.tolerance if alternative == "greater" else effect < -spec.tolerance
        if p < spec.alpha and beyond:
            label: Classification = "High" if alternative == "greater" else "Low"
            return MetricResult(
                spec.name,
                label,
                p,
                effect,
                n,
                f"{effect:+.1%} (p={p:.2g} < {spec.alpha}, tolerance ±{spec.tolerance:.0%})",
            )
    why = "within tolerance" if abs(effect) <= spec.tolerance else "not significant"
    return MetricResult(spec.name, "Pass", best_p, effect, n, f"{effect:+.1%} (p={best_p:.2g}, {why})")


def score_interval(results: Sequence[MetricResult], template: AnalysisTemplate) -> IntervalVerdict:
    """Kayenta's score: the weighted share of metrics with data that pass. A critical metric that regresses
    fails the interval whatever the score; a critical metric with no data makes the interval NoData."""
    specs = {m.name: m for m in template.metrics}
    with_data = [r for r in results if r.classification != "NoData" and r.name in specs]
    failed_critical = [r.name for r in with_data if specs[r.name].critical and r.classification != "Pass"]
    missing_critical = [
        r.name for r in results if r.classification == "NoData" and r.name in specs and specs[r.name].critical
    ]
    if not with_data:
        return IntervalVerdict(None, "nodata", [], tuple(results))
    total = sum(specs[r.name].weight for r in with_data)
    passed = sum(specs[r.name].weight for r in with_data if r.classification == "Pass")
    score = round(100 * passed / total, 2)
    verdict: IntervalOutcome
    if failed_critical:
        verdict = "fail"
    elif missing_critical:
        verdict = "nodata"
    elif score >= template.pass_score:
        verdict = "pass"
    elif score >= template.marginal_score:
        verdict = "marginal"
    else:
        verdict = "fail"
    return IntervalVerdict(score, verdict, failed_critical, tuple(results))


def judge_interval(
    baseline: Mapping[str, Sequence[float]], canary: Mapping[str, Sequence[float]], template: AnalysisTemplate
) -> IntervalVerdict:
    """Every template metric classified and the interval scored; a metric missing on a side is NoData."""
    results = [classify_metric(baseline.get(m.name, ()), canary.get(m.name, ()), m) for m in template.metrics]
    return score_interval(results, template)


def assess_run(interval_verdicts: Sequence[IntervalVerdict], template: AnalysisTemplate) -> RunVerdict:
    """Argo Rollouts' AnalysisRun assessment: failed measurements beyond failure_limit roll back; marginal or
    no-data measurements beyond inconclusive_limit pause and ask; source errors in a row beyond
    consecutive_error_limit pause; after `count` measurements, promote only if some passed."""
    failed = sum(v.verdict == "fail" for v in interval_verdicts)
    inconclusive = sum(v.verdict in ("marginal", "nodata") for v in interval_verdicts)
    consecutive_errors = 0
    for v in interval_verdicts:
        consecutive_errors = consecutive_errors + 1 if v.verdict == "error" else 0
    if failed > template.failure_limit:
        critical = sorted({name for v in interval_verdicts for name in v.failed_critical})
        detail = f" (critical: {', '.join(critical)})" if critical else ""
        return RunVerdict(
            "rollback", f"{failed} failed intervals > failure_limit {template.failure_limit}{detail}"
        )
    if consecutive_errors > template.consecutive_error_limit:
        return RunVerdict(
            "pause",
            f"metric source failed {consecutive_errors} times in a row > "
            f"consecutive_error_limit {template.consecutive_error_limit}",
        )
    if inconclusive > template.inconclusive_limit:
        return RunVerdict(
            "pause",
            f"{inconclusive} inconclusive intervals > inconclusive_limit {template.inconclusive_limit}",
        )
    measured = [v for v in interval_verdicts if v.verdict != "error"]
    if len(measured) < template.count:
        return RunVerdict("continue", f"{len(measured)} of {template.count} intervals measured")
    if not any(v.verdict == "pass" for v in measured):
        return RunVerdict("pause", "no interval passed: never promote on no data")
    return RunVerdict(
        "promote", f"{len(measured)} intervals measured, {failed} failed, {inconclusive} inconclusive"
    )


def read_metric_file(path: Path) -> dict[str, list[tuple[str, float]]]:
    """Samples per metric from a CSV `timestamp,metric,value` (one row per sample per interval), in file
    order as (timestamp, value). Errors name the file, the line and the column."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadTable(f"metric file {path} does not exist") from None
    except UnicodeDecodeError:
        raise BadTable(f"metric file {path} is not UTF-8 text") from None
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None or [h.strip() for h in header] != ["timestamp", "metric", "value"]:
        raise BadTable(f"metric file {path}: line 1: expected the header timestamp,metric,value")
    samples: dict[str, list[tuple[str, float]]] = {}
    for line_no, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 3:
            raise BadTable(f"metric file {path}: line {line_no}: expected 3 columns, found {len(row)}")
        timestamp, metric, raw = (cell.strip() for cell in row)
        if not timestamp:
            raise BadTable(f"metric file {path}: line {line_no}, column timestamp: empty")
        if not metric:
            raise BadTable(f"metric file {path}: line {line_no}, column metric: empty")
        try:
            value = float(raw)
        except ValueError:
            raise BadTable(
                f"metric file {path}: line {line_no}, column value: not a number: {raw!r}"
            ) from None
        if not math.isfinite(value):
            raise BadTable(f"metric file {path}: line {line_no}, column value: not finite: {raw!r}")
        samples.setdefault(metric, []).append((timestamp, value))
    return samples


def _by_interval(samples: list[tuple[str, float]]) -> list[list[float]]:
    groups: dict[str, list[float]] = {}
    for timestamp, value in samples:
        groups.setdefault(timestamp, []).append(value)
    return [groups[t] for t in sorted(groups)]


def judge_files(baseline: Path, canary: Path, template: Path | None = None) -> dict[str, Any]:
    """`awo judge`: each timestamp is an interval; each interval is judged on the samples so far (Kayenta's
    cumulative window), the run assessed as an AnalysisRun, and the last interval's metrics tabled. Files
    shorter than the template's `count` are inconclusive: an unfinished analysis never promotes."""
    spec = load_template(template)
    base = {k: _by_interval(v) for k, v in read_metric_file(baseline).items()}
    can = {k: _by_interval(v) for k, v in read_metric_file(canary).items()}
    known = {m.name for m in spec.metrics}
    if not (known & (set(base) | set(can))):
        raise BadConfig(f"metric files {baseline}, {canary}: none of the template's metrics {sorted(known)}")
    n_intervals = max((len(v) for v in [*base.values(), *can.values()]), default=0)
    verdicts: list[IntervalVerdict] = []
    run = RunVerdict("pause", "no intervals")
    for i in range(1, n_intervals + 1):
        b = {k: [x for group in v[:i] for x in group] for k, v in base.items()}
        c = {k: [x for group in v[:i] for x in group] for k, v in can.items()}
        verdicts.append(judge_interval(b, c, spec))
        run = assess_run(verdicts, spec)
        if run.action in ("rollback", "pause"):
            break
    last = verdicts[-1] if verdicts else IntervalVerdict(None, "nodata", [])
    if run.action == "rollback":
        verdict = "fail"
    elif run.action == "promote":
        verdict = "pass"
    elif last.verdict == "marginal":
        verdict = "marginal"
    else:
        verdict = "inconclusive"
    return {
        "verdict": verdict,
        "exit_code": EXIT_CODES[verdict],
        "action": run.action,
        "why": run.why,
        "intervals": len(verdicts),
        "score": last.score,
        "failed_critical": last.failed_critical,
        "metrics": [
            {
                "metric": r.name,
                "classification": r.classification,
                "p_value": r.p_value,
                "effect": r.effect,
                "n": r.n,
                "reason": r.reason,
            }
            for r in last.results
        ],
    }
