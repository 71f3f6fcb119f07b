"""The risk gate: band rules pinned with literal signals, the bands' validation, monotonicity as a property,
and the replay on a real ISSTA'21 project (thresholds from training rows only, a lower fast-track defect
ratio than the lines-changed gate at the same share)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.gate_replay import (
    ScoredReplay,
    awo_gates,
    compare,
    gate_metrics,
    lines_changed_gates,
    print_gate_table,
    run_gate_benchmark,
    score_history,
    summarise,
)
from agents.gating import (
    BANDS_ORDER,
    QUANTILE_LEVELS,
    RiskBands,
    RiskSignal,
    band_of,
    reference_from_training,
)
from features.change_metrics import KAMEI_METRICS
from features.errors import AwoError
from models.jit_benchmark import load_project

ISSTA21 = Path(__file__).resolve().parents[2] / "shared" / "data" / "jit" / "issta21"
needs_issta21 = pytest.mark.skipif(not (ISSTA21 / "jdt.csv").exists(), reason="ISSTA'21 JIT data not present")

# A reference whose score at quantile level L is L itself: thresholds read off directly.
UNIFORM = tuple(QUANTILE_LEVELS)


def signal(p: float) -> RiskSignal:
    return RiskSignal(probability=p, quantiles=UNIFORM, base_rate=0.25)


# --- band rules, a few literal signals each ---


def test_at_or_below_the_fast_track_quantile_is_low() -> None:
    bands = RiskBands()
    assert [band_of(signal(p), bands) for p in (0.0, 0.12, 0.30)] == ["low", "low", "low"]


def test_between_fast_track_and_review_quantiles_is_medium() -> None:
    bands = RiskBands()
    assert [band_of(signal(p), bands) for p in (0.3001, 0.55, 0.7999)] == ["medium"] * 3


def test_at_or_above_the_review_quantile_is_high() -> None:
    bands = RiskBands()
    assert [band_of(signal(p), bands) for p in (0.80, 0.9, 0.9499)] == ["high"] * 3


def test_at_or_above_the_block_quantile_is_critical() -> None:
    bands = RiskBands()
    assert [band_of(signal(p), bands) for p in (0.95, 0.99, 1.0)] == ["critical"] * 3


def test_bands_follow_the_reference_not_the_absolute_probability() -> None:
    """A project with a 49% base rate: a probability of 0.35 is among its safest changes."""
    high_base = tuple(0.3 + 0.6 * level for level in QUANTILE_LEVELS)  # scores from 0.30 to 0.90
    low_base = tuple(0.01 + 0.3 * level for level in QUANTILE_LEVELS)  # scores from 0.01 to 0.31
    bands = RiskBands()
    assert band_of(RiskSignal(0.35, high_base), bands) == "low"
    assert band_of(RiskSignal(0.35, low_base), bands) == "critical"


def test_quantiles_between_percentiles_are_interpolated() -> None:
    bands = RiskBands(fast_track_quantile=0.305)
    reference = tuple(level * 2 if level <= 0.30 else 0.6 + (level - 0.30) for level in QUANTILE_LEVELS)
    # q30 = 0.60, q31 = 0.61: the 0.305 quantile is 0.605
    assert band_of(RiskSignal(0.605, reference), bands) == "low"
    assert band_of(RiskSignal(0.606, reference), bands) == "medium"


def test_without_a_reference_the_absolute_fallback_thresholds_apply() -> None:
    bands = RiskBands()
    got = [band_of(RiskSignal(p), bands) for p in (0.19, 0.2, 0.39, 0.4, 0.69, 0.7)]
    assert got == ["low", "medium", "medium", "high", "high", "critical"]


def test_a_partial_reference_counts_as_none() -> None:
    reference = reference_from_training([0.1, 0.2, 0.3, 0.9], [0, 0, 1, 1])
    del reference["q50"]
    s = RiskSignal.from_reference(0.5, reference)
    assert s.quantiles == () and s.base_rate == 0.5
    assert band_of(s, RiskBands()) == "high"  # fallback: 0.4 <= 0.5 < 0.7


# --- the reference ---


def test_reference_holds_base_rate_rows_and_every_percentile() -> None:
    scores = np.arange(101) / 100
    labels = np.r_[np.ones(25), np.zeros(76)]
    reference = reference_from_training(scores, labels)
    assert reference["base_rate"] == pytest.approx(25 / 101)
    assert reference["rows"] == 101
    assert reference["q00"] == 0.0 and reference["q30"] == pytest.approx(0.30) and reference["q100"] == 1.0
    s = RiskSignal.from_reference(0.31, reference)
    assert len(s.quantiles) == 101 and band_of(s, RiskBands()) == "medium"


def test_reference_refuses_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="as many labels"):
        reference_from_training([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="as many labels"):
        reference_from_training([], [])


def test_a_probability_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="probability"):
        RiskSignal(1.2)


# --- validation ---


def test_review_quantile_below_fast_track_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        RiskBands(fast_track_quantile=0.5, review_quantile=0.4)
    assert "review_quantile" in str(error.value) and "fast_track_quantile" in str(error.value)


def test_block_quantile_not_above_review_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="block_quantile"):
        RiskBands(review_quantile=0.9, block_quantile=0.9)


def test_fallback_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="fallback_critical"):
        RiskBands(fallback_high=0.8, fallback_critical=0.7)


def test_a_quantile_outside_0_1_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        RiskBands(block_quantile=1.5)
    assert error.value.errors()[0]["loc"] == ("block_quantile",)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="medium"):
        RiskBands.model_validate({"medium": 0.2})


# --- the property ---

levels = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def bands_and_reference(draw: st.DrawFn) -> tuple[RiskBands, tuple[float, ...]]:
    q = sorted(draw(st.lists(levels, min_size=3, max_size=3, unique=True)))
    f = sorted(draw(st.lists(levels, min_size=3, max_size=3, unique=True)))
    reference = tuple(sorted(draw(st.lists(levels, min_size=101, max_size=101))))
    bands = RiskBands(
        fast_track_quantile=q[0],
        review_quantile=q[1],
        block_quantile=q[2],
        fallback_medium=f[0],
        fallback_high=f[1],
        fallback_critical=f[2],
    )
    return bands, reference if draw(st.booleans()) else ()


@settings(max_examples=300, deadline=None)
@given(bands_and_reference(), levels, levels)
def test_a_higher_probability_never_gets_a_lower_band(
    setup: tuple[RiskBands, tuple[float, ...]], a: float, b: float
) -> None:
    bands, reference = setup
    low, high = sorted((a, b))
    rank = BANDS_ORDER.index
    assert rank(band_of(RiskSignal(high, reference), bands)) >= rank(
        band_of(RiskSignal(low, reference), bands)
    )


# --- the replay's pieces, literal ---


def test_lines_changed_gate_fast_tracks_the_smallest_and_breaks_ties_by_commit_order() -> None:
    size = np.array([5.0, 1.0, 5.0, 100.0, 1.0, 5.0, 100.0])
    gates = lines_changed_gates(size, fast_tracked=3, gated=1)
    assert gates.tolist() == [
        "fast_track",  # the first of the three 5-line changes
        "fast_track",
        "standard",
        "senior_review",  # the first of the two 100-line changes
        "fast_track",
        "standard",
        "standard",
    ]


def test_gate_metrics_by_hand() -> None:
    gates = np.array(["fast_track", "fast_track", "standard", "senior_review", "block", "fast_track"])
    bug = np.array([0, 1, 0, 1, 1, 0])
    m = gate_metrics(gates, bug)
    assert m["fast_track_share"] == pytest.approx(0.5)
    assert m["fast_track_defect_ratio"] == pytest.approx((1 / 3) / 0.5)
    assert m["gated_share"] == pytest.approx(2 / 6)
    assert m["gated_defect_share"] == pytest.approx(2 / 3)


def test_compare_puts_the_baseline_at_awo_shares() -> None:
    rng = np.random.default_rng(0)
    scored = ScoredReplay(
        project="toy",
        rows=500,
        reference=reference_from_training(rng.uniform(size=400), rng.integers(0, 2, 400)),
        probability=rng.uniform(size=100),
        size=rng.integers(0, 50, 100).astype(float),
        bug=rng.integers(0, 2, 100),
    )
    figures = compare(scored, RiskBands())
    for key in ("fast_track_share", "gated_share"):
        assert figures["lines_changed"][key] == figures["awo"][key]
    assert 0 < figures["awo"]["fast_track_share"] < 1


# --- the replay on real data ---


@pytest.fixture(scope="module")
def jdt() -> pd.DataFrame:
    return load_project(ISSTA21 / "jdt.csv")


@pytest.fixture(scope="module")
def jdt_scored(jdt: pd.DataFrame) -> ScoredReplay:
    return score_history(jdt, list(KAMEI_METRICS), "jdt")


@needs_issta21
def test_jdt_fast_tracks_below_the_base_rate_and_beats_lines_changed_at_the_same_share(
    jdt_scored: ScoredReplay,
) -> None:
    result = summarise({"jdt": compare(jdt_scored, RiskBands())}, RiskBands())
    awo, baseline = result["awo"]["jdt"], result["lines_changed"]["jdt"]
    assert awo["replay_rows"] == len(jdt_scored.bug) == 3279 - int(3279 * 0.8)
    assert 0.15 < awo["fast_track_share"] < 0.45
    assert awo["fast_track_defect_ratio"] < 0.8
    assert baseline["fast_track_share"] == awo["fast_track_share"]
    assert baseline["gated_share"] == awo["gated_share"]
    assert awo["fast_track_defect_ratio"] < baseline["fast_track_defect_ratio"]
    assert awo["gated_defect_share"] > awo["gated_share"]  # gating concentrates defects
    out = io.StringIO()
    from rich.console import Console

    print_gate_table(result, Console(file=out, width=120))
    assert "mean" in out.getvalue() and "lines_changed" in out.getvalue()


@needs_issta21
def test_replay_labels_do_not_move_the_thresholds(jdt: pd.DataFrame, jdt_scored: ScoredReplay) -> None:
    """Flip every replay label: the model, the reference and each commit's gate stay the same."""
    n_train = int(len(jdt) * 0.8)
    flipped = jdt.copy()
    flipped.loc[flipped.index[n_train:], "bug"] = 1 - flipped["bug"].iloc[n_train:]
    again = score_history(flipped, list(KAMEI_METRICS), "jdt")
    assert again.reference == jdt_scored.reference
    np.testing.assert_array_equal(again.probability, jdt_scored.probability)
    np.testing.assert_array_equal(awo_gates(again, RiskBands()), awo_gates(jdt_scored, RiskBands()))
    assert (again.bug != jdt_scored.bug).all()


@needs_issta21
def test_a_csv_missing_a_column_is_named_with_its_file(tmp_path: Path) -> None:
    frame = pd.read_csv(ISSTA21 / "jdt.csv", nrows=50)
    frame.drop(columns=["la"]).to_csv(tmp_path / "broken.csv", index=False)
    shutil.copy(ISSTA21 / "jdt.csv", tmp_path / "jdt.csv")
    with pytest.raises(AwoError) as error:
        run_gate_benchmark(tmp_path)
    assert "broken.csv" in str(error.value) and "'la'" in str(error.value)


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AwoError, match="no CSV files"):
        run_gate_benchmark(tmp_path)
