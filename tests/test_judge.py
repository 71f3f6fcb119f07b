"""The canary judge, pinned rule by rule with literal samples (as Argo Rollouts' assessMetricStatus tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.judge import (
    AnalysisTemplate,
    IntervalVerdict,
    MetricResult,
    MetricSpec,
    RunVerdict,
    assess_run,
    classify_counts,
    classify_metric,
    judge_files,
    judge_interval,
    load_template,
    read_metric_file,
    render_query,
    run_evidence,
    score_interval,
    source_error,
)
from features.errors import BadConfig, BadTable

ERRORS = MetricSpec(name="error_rate", bad="increase", tolerance=0.2, alpha=0.01, critical=True, weight=3)
CART = MetricSpec(name="add_to_cart_success", bad="decrease", tolerance=0.1, alpha=0.01)
TEMPLATE = AnalysisTemplate(metrics=[ERRORS, CART], count=3)
BASE = [0.010, 0.012, 0.009, 0.011, 0.010, 0.013, 0.008, 0.011, 0.010, 0.012]


def verdict(v: str) -> IntervalVerdict:
    return IntervalVerdict(score=None, verdict=v, failed_critical=["error_rate"] if v == "fail" else [])  # type: ignore[arg-type]


def test_a_doubled_error_rate_is_high() -> None:
    result = classify_metric(BASE, [2 * x for x in BASE], ERRORS)
    assert result.classification == "High"
    assert result.effect == pytest.approx(1.0)
    assert result.p_value is not None and result.p_value < 0.01


def test_a_significant_change_inside_the_tolerance_band_passes() -> None:
    result = classify_metric(BASE, [x * 1.1 for x in BASE], ERRORS)
    assert result.classification == "Pass"


def test_a_change_in_the_harmless_direction_passes() -> None:
    assert classify_metric(BASE, [x / 3 for x in BASE], ERRORS).classification == "Pass"


def test_a_kpi_drop_is_low() -> None:
    cart = [0.10, 0.11, 0.09, 0.10, 0.12, 0.10, 0.11, 0.09]
    assert classify_metric(cart, [x * 0.5 for x in cart], CART).classification == "Low"


def test_too_few_samples_is_nodata() -> None:
    result = classify_metric([0.01, 0.02], [0.5, 0.6, 0.7], ERRORS)
    assert (result.classification, result.n) == ("NoData", 2)


def test_identical_constant_samples_pass() -> None:
    assert classify_metric([0.0] * 6, [0.0] * 6, ERRORS).classification == "Pass"


def test_a_failed_critical_metric_fails_the_interval_whatever_the_score() -> None:
    template = AnalysisTemplate(metrics=[ERRORS, CART], pass_score=10, marginal_score=5)
    results = [
        MetricResult("error_rate", "High", 0.001, 1.0, 10, ""),
        MetricResult("add_to_cart_success", "Pass", 0.5, 0.0, 10, ""),
    ]
    v = score_interval(results, template)
    assert (v.verdict, v.score, v.failed_critical) == ("fail", 25.0, ["error_rate"])


def test_a_failed_minor_metric_makes_the_interval_marginal() -> None:
    results = [
        MetricResult("error_rate", "Pass", 0.5, 0.0, 10, ""),
        MetricResult("add_to_cart_success", "Low", 0.001, -0.3, 10, ""),
    ]
    template = AnalysisTemplate(metrics=[ERRORS, CART], pass_score=95, marginal_score=75)
    assert (score_interval(results, template).verdict, score_interval(results, template).score) == (
        "marginal",
        75.0,
    )


def test_a_critical_metric_without_data_makes_the_interval_nodata() -> None:
    results = [
        MetricResult("error_rate", "NoData", None, None, 0, ""),
        MetricResult("add_to_cart_success", "Pass", 0.5, 0.0, 10, ""),
    ]
    assert score_interval(results, TEMPLATE).verdict == "nodata"


def test_failures_beyond_the_failure_limit_roll_back() -> None:
    template = TEMPLATE.model_copy(update={"failure_limit": 1})
    assert assess_run([verdict("fail")], template).action == "continue"
    run = assess_run([verdict("fail"), verdict("pass"), verdict("fail")], template)
    assert run.action == "rollback" and "error_rate" in run.why


def test_inconclusive_beyond_the_limit_pauses() -> None:
    assert assess_run([verdict("pass"), verdict("marginal")], TEMPLATE).action == "pause"


def test_consecutive_source_errors_beyond_the_limit_pause() -> None:
    template = TEMPLATE.model_copy(update={"consecutive_error_limit": 2})
    assert assess_run([source_error(), source_error()], template).action == "continue"
    assert assess_run([source_error()] * 3, template).action == "pause"
    assert assess_run([source_error(), source_error(), verdict("pass"), source_error()], template).action == (
        "continue"
    )


def test_enough_passing_intervals_promote() -> None:
    assert assess_run([verdict("pass")] * 3, TEMPLATE).action == "promote"
    assert assess_run([verdict("pass")] * 2, TEMPLATE).action == "continue"


def test_never_promote_on_no_data() -> None:
    template = TEMPLATE.model_copy(update={"inconclusive_limit": 5})
    assert assess_run([verdict("nodata")] * 3, template).action == "pause"


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(["pass", "marginal", "fail", "nodata", "error"]), max_size=12),
)
def test_a_run_with_no_passing_interval_never_promotes(outcomes: list[str]) -> None:
    template = TEMPLATE.model_copy(update={"failure_limit": 20, "inconclusive_limit": 20})
    run = assess_run([verdict(o) if o != "error" else source_error() for o in outcomes], template)
    if "pass" not in outcomes:
        assert run.action != "promote"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1), min_size=3, max_size=20))
def test_a_canary_identical_to_its_baseline_passes(samples: list[float]) -> None:
    assert classify_metric(samples, list(samples), ERRORS).classification == "Pass"


def test_the_default_template_loads_with_critical_error_rate() -> None:
    template = load_template()
    assert {m.name for m in template.metrics if m.critical} >= {"error_rate"}


def test_a_bad_template_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "analysis.yaml"
    path.write_text("metrics:\n  - name: error_rate\n    bad: sideways\n")
    with pytest.raises(BadConfig, match=r"analysis.yaml: metrics\.0\.bad"):
        load_template(path)


def test_a_malformed_csv_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "canary.csv"
    path.write_text(
        "timestamp,metric,value\n2026-01-01T00:00,error_rate,0.01\n2026-01-01T00:00,error_rate,oops\n"
    )
    with pytest.raises(BadTable, match=r"canary.csv: line 3, column value: not a number"):
        read_metric_file(path)


def _write(path: Path, scale: float) -> Path:
    rows = ["timestamp,metric,value"]
    for t in range(3):
        for x in BASE:
            rows.append(f"2026-01-01T00:0{t},error_rate,{x * scale}")
            rows.append(f"2026-01-01T00:0{t},add_to_cart_success,{x * 10}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _template(tmp_path: Path) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(
        "count: 3\nmetrics:\n  - {name: error_rate, critical: true, tolerance: 0.2}\n"
        "  - {name: add_to_cart_success, bad: decrease}\n"
    )
    return path


def test_judge_files_passes_an_a_a_canary_and_fails_a_doubled_error_rate(tmp_path: Path) -> None:
    base = _write(tmp_path / "b.csv", 1)
    same = judge_files(base, _write(tmp_path / "c.csv", 1), _template(tmp_path))
    assert (same["verdict"], same["exit_code"], same["action"]) == ("pass", 0, "promote")
    worse = judge_files(base, _write(tmp_path / "d.csv", 2), _template(tmp_path))
    assert (worse["verdict"], worse["exit_code"], worse["action"]) == ("fail", 4, "rollback")
    assert worse["metrics"][0]["classification"] == "High"


def test_judge_files_shorter_than_the_count_are_inconclusive(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text("count: 5\nmetrics:\n  - {name: error_rate, critical: true}\n")
    base = _write(tmp_path / "b.csv", 1)
    result = judge_files(base, _write(tmp_path / "c.csv", 1), template)
    assert (result["verdict"], result["exit_code"], result["action"]) == ("inconclusive", 3, "continue")
    assert "3 of 5" in result["why"]


def test_judge_files_without_a_critical_metric_is_inconclusive(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "count: 3\nmetrics:\n  - {name: latency_p99_ms, critical: true}\n  - {name: error_rate}\n"
    )
    base = _write(tmp_path / "b.csv", 1)
    result = judge_files(base, _write(tmp_path / "c.csv", 1), template)
    assert (result["verdict"], result["exit_code"], result["action"]) == ("inconclusive", 3, "pause")
    assert result["metrics"][0]["classification"] == "NoData"


def test_a_csv_row_with_missing_columns_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "baseline.csv"
    path.write_text("timestamp,metric,value\n2026-01-01T00:00,error_rate\n")
    with pytest.raises(BadTable, match=r"baseline.csv: line 2: expected 3 columns, found 2"):
        read_metric_file(path)


# The count judge for rate metrics: Fisher's exact test on successes/trials, alpha spent over the looks.
ERROR_COUNTS = MetricSpec(
    name="error_rate", kind="rate", numerator="errors", denominator="requests", tolerance=0.2, alpha=0.01
)
CART_COUNTS = MetricSpec(
    name="add_to_cart_success",
    kind="rate",
    numerator="cart_ok",
    denominator="cart",
    bad="decrease",
    alpha=0.01,
)


def test_doubled_error_counts_are_high_at_one_look() -> None:
    result = classify_counts((20, 1000), (40, 1000), ERROR_COUNTS, looks=1)
    assert (result.classification, result.test) == ("High", "fisher")
    assert result.p_value == pytest.approx(0.00607, rel=1e-2)
    assert (result.baseline, result.canary, result.effect) == (0.02, 0.04, pytest.approx(1.0))


def test_alpha_is_spent_over_the_planned_looks() -> None:
    # p = 0.006 beats alpha 0.01 once, not alpha / 10 at each of ten looks (Bonferroni)
    assert classify_counts((20, 1000), (40, 1000), ERROR_COUNTS, looks=10).classification == "Pass"
    assert classify_counts((20, 1000), (45, 1000), ERROR_COUNTS, looks=5).classification == "High"


def test_a_significant_rate_change_inside_the_tolerance_band_passes() -> None:
    result = classify_counts((10_000, 100_000), (11_000, 100_000), ERROR_COUNTS, looks=1)
    assert result.p_value is not None and result.p_value < 1e-10
    assert result.classification == "Pass" and "within tolerance" in result.reason


def test_fewer_errors_on_the_canary_pass() -> None:
    assert classify_counts((20, 1000), (5, 1000), ERROR_COUNTS, looks=1).classification == "Pass"


def test_errors_on_a_canary_whose_baseline_had_none_are_high_and_audit_as_strict_json() -> None:
    result = classify_counts((0, 1000), (15, 1000), ERROR_COUNTS, looks=1)
    assert result.classification == "High" and result.effect == float("inf")
    run = RunVerdict("rollback", "", (IntervalVerdict(25.0, "fail", ["error_rate"], (result,)),))
    assert "Infinity" not in json.dumps(run_evidence(run))


def test_a_kpi_rate_drop_is_low() -> None:
    assert classify_counts((120, 1000), (80, 1000), CART_COUNTS, looks=1).classification == "Low"


def test_too_few_trials_is_nodata() -> None:
    result = classify_counts((0, 2), (2, 2), ERROR_COUNTS, looks=1)
    assert (result.classification, result.n) == ("NoData", 2)


def test_extrapolated_counts_are_rounded_and_capped_at_trials() -> None:
    result = classify_counts((20.4, 999.6), (1001.2, 1000.3), ERROR_COUNTS, looks=1)
    assert (result.baseline, result.canary, result.n) == (0.02, 1.0, 1000)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=3, max_value=5000), st.data())
def test_identical_counts_always_pass(trials: int, data: st.DataObject) -> None:
    errors = data.draw(st.integers(min_value=0, max_value=trials))
    assert classify_counts((errors, trials), (errors, trials), ERROR_COUNTS, looks=1).classification == "Pass"


def test_an_interval_judges_rate_metrics_on_counts_when_both_sides_have_them() -> None:
    template = AnalysisTemplate(metrics=[ERROR_COUNTS.model_copy(update={"critical": True})], count=1)
    counted = judge_interval(
        {"errors": [10, 10], "requests": [500, 500]}, {"errors": [20, 20], "requests": [500, 500]}, template
    )
    assert (counted.verdict, counted.results[0].test, counted.results[0].canary) == ("fail", "fisher", 0.04)
    ratios = judge_interval({"error_rate": BASE}, {"error_rate": [2 * x for x in BASE]}, template)
    assert (ratios.verdict, ratios.results[0].test) == ("fail", "mann-whitney")


def test_a_rate_metric_needs_its_counts_and_queries_name_known_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "analysis.yaml"
    path.write_text("metrics:\n  - {name: error_rate, kind: rate, numerator: errors}\n")
    with pytest.raises(BadConfig, match=r"analysis.yaml: metrics\.0.*numerator and denominator"):
        load_template(path)
    path.write_text("metrics:\n  - {name: p99, query: 'x{service=\"{servce}\"}'}\n")
    with pytest.raises(BadConfig, match=r"analysis.yaml: metrics\.0\.query.*servce"):
        load_template(path)


def test_a_query_keeps_its_label_matchers_and_fills_its_placeholders() -> None:
    query = 'sum(increase(http_requests_total{service="{service}",track="{track}",code=~"5.."}[{interval}]))'
    assert render_query(query, service="cart", track="canary", interval="60000ms") == (
        'sum(increase(http_requests_total{service="cart",track="canary",code=~"5.."}[60000ms]))'
    )


def test_the_run_verdict_carries_every_interval_as_evidence() -> None:
    intervals = [verdict("pass"), verdict("fail")]
    run = assess_run(intervals, TEMPLATE)
    assert isinstance(run, RunVerdict) and run.intervals == tuple(intervals)
    assert run_evidence(run)["intervals"][1]["failed_critical"] == ["error_rate"]


def test_a_pause_for_source_errors_names_the_last_error() -> None:
    template = TEMPLATE.model_copy(update={"consecutive_error_limit": 1})
    run = assess_run([source_error("Prometheus http://p:9090 unreachable")] * 2, template)
    assert run.action == "pause" and "http://p:9090" in run.why


def test_judge_files_reads_count_rows_for_rate_metrics(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(
        "count: 3\nmetrics:\n  - {name: error_rate, kind: rate, numerator: errors, denominator: requests,"
        " critical: true, alpha: 0.01}\n"
    )

    def counts(path: Path, errors: int) -> Path:
        rows = ["timestamp,metric,value"]
        for t in range(3):
            rows += [f"2026-01-01T00:0{t},errors,{errors}", f"2026-01-01T00:0{t},requests,1000"]
        path.write_text("\n".join(rows) + "\n")
        return path

    base = counts(tmp_path / "b.csv", 20)
    assert judge_files(base, counts(tmp_path / "c.csv", 22), template)["action"] == "promote"
    worse = judge_files(base, counts(tmp_path / "d.csv", 60), template)
    assert (worse["action"], worse["intervals"], worse["metrics"][0]["classification"]) == (
        "rollback",
        1,
        "High",
    )


def test_a_placeholder_value_cannot_end_its_promql_label_matcher() -> None:
    query = 'sum(rate(http_requests_total{service="{service}"}[{interval}]))'
    hostile = render_query(query, service='x"} or vector(1) or {a="', interval="60s")
    assert hostile == 'sum(rate(http_requests_total{service="x\\"} or vector(1) or {a=\\""}[60s]))'
