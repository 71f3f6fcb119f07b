"""The canary judge: per interval, each metric of the canary against the baseline (Kayenta's Mann-Whitney
judge for continuous metrics, Fisher's exact test on counts for rate metrics), a 0-100 score, and the run's
action under Argo Rollouts' AnalysisRun limits. Pure functions over samples and a template."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.stats import hypergeom, mannwhitneyu

from features.errors import BadConfig, BadTable
from features.yamlfile import load_yaml_model

Classification = Literal["Pass", "High", "Low", "NoData"]
IntervalOutcome = Literal["pass", "marginal", "fail", "nodata", "error"]
Action = Literal["promote", "continue", "pause", "rollback"]
EXIT_CODES: dict[str, int] = {"pass": 0, "marginal": 3, "inconclusive": 3, "nodata": 3, "fail": 4}
DEFAULT_ANALYSIS = Path(__file__).resolve().parent / "default_analysis.yaml"
_DURATION = r"^(\d+)(s|m|h)$"
# Placeholders a metric's PromQL may use; anything else in single braces is a typo caught at load time.
PLACEHOLDERS = ("service", "track", "namespace", "ref", "interval", "step")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Strict):
    """One metric the judge compares, as a Kayenta canary config's metric with Argo's per-metric query.

    kind `continuous` (latency percentiles, saturation): samples compared by Kayenta's Mann-Whitney U test
    at `alpha` per look; `query` is the PromQL whose range samples are the metric.
    kind `rate` (error rate, add-to-cart success, conversion): counts `numerator` / `denominator` (the
    metric names of the count samples in a metric file; `numerator_query` / `denominator_query` in
    Prometheus) compared by Fisher's exact test on the cumulative window; `alpha` is the false-alarm rate
    of the whole run, split over the template's `count` looks (Bonferroni). A rate metric whose counts are
    missing but whose own name has ratio samples falls back to Mann-Whitney at the same per-look alpha."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    kind: Literal["continuous", "rate"] = Field(default="continuous", description="how the metric is tested")
    bad: Literal["increase", "decrease", "either"] = Field(
        default="increase", description="which direction of change is a regression"
    )
    tolerance: float = Field(
        default=0.1, ge=0, description="relative change of the mean (or rate) within which a metric passes"
    )
    alpha: float = Field(default=0.01, gt=0, lt=1, description="significance level (see the class docstring)")
    critical: bool = Field(default=False, description="a regression here fails the whole canary")
    weight: float = Field(default=1.0, gt=0)
    min_samples: int = Field(
        default=3, ge=1, description="fewer samples (rate metrics: trials) on either side is NoData"
    )
    numerator: str | None = Field(default=None, min_length=1, description="rate: count metric of successes")
    denominator: str | None = Field(default=None, min_length=1, description="rate: count metric of trials")
    query: str | None = Field(default=None, min_length=1, description="continuous: PromQL of the samples")
    numerator_query: str | None = Field(default=None, min_length=1, description="rate: PromQL of the count")
    denominator_query: str | None = Field(default=None, min_length=1, description="rate: PromQL of trials")

    @field_validator("query", "numerator_query", "denominator_query")
    @classmethod
    def _known_placeholders(cls, query: str | None) -> str | None:
        for name in _PLACEHOLDER.findall(query or ""):
            if name not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {{{name}}} (known: {', '.join(PLACEHOLDERS)})")
        return query

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> MetricSpec:
        if self.kind == "rate":
            if not (self.numerator and self.denominator):
                raise ValueError(f"rate metric {self.name} needs numerator and denominator")
            if self.query:
                raise ValueError(
                    f"rate metric {self.name} takes numerator_query/denominator_query, not query"
                )
            if bool(self.numerator_query) != bool(self.denominator_query):
                raise ValueError(f"rate metric {self.name} needs both numerator_query and denominator_query")
        else:
            extra = [
                f
                for f in ("numerator", "denominator", "numerator_query", "denominator_query")
                if getattr(self, f)
            ]
            if extra:
                raise ValueError(f"continuous metric {self.name} does not take {', '.join(extra)}")
        return self


def render_query(query: str, **values: str) -> str:
    """`query` with its `{placeholder}`s replaced; PromQL's own braces (label matchers) are left alone.
    Values are escaped for a double-quoted PromQL string, so a name cannot end the label matcher."""

    def value(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            return match.group(0)
        return values[match.group(1)].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return _PLACEHOLDER.sub(value, query)


def duration_seconds(duration: str) -> int:
    """`30s`, `5m`, `1h` in seconds (the template's duration vocabulary)."""
    match = re.match(_DURATION, duration)
    if match is None:
        raise BadConfig(f"duration {duration!r}: expected a number and s, m or h")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


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
    samples_per_interval: int = Field(
        default=6, ge=1, le=600, description="Prometheus range samples of a continuous metric per interval"
    )

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisTemplate:
        if self.marginal_score > self.pass_score:
            raise ValueError("marginal_score must not exceed pass_score")
        names = [m.name for m in self.metrics]
        if len(names) != len(set(names)):
            raise ValueError("metric names must be unique")
        if duration_seconds(self.interval) < 1:
            raise ValueError("interval must be at least 1s")
        return self

    @property
    def interval_seconds(self) -> int:
        return duration_seconds(self.interval)


@dataclass(frozen=True)
class MetricResult:
    name: str
    classification: Classification
    p_value: float | None
    effect: float | None  # canary mean (or rate) / baseline mean (or rate) - 1
    n: int  # the smaller of the two sample counts (rate metrics: of the two trial counts)
    reason: str
    baseline: float | None = None  # the baseline's mean (rate metrics: successes / trials)
    canary: float | None = None
    test: Literal["mann-whitney", "fisher", "none"] = "mann-whitney"


@dataclass(frozen=True)
class IntervalVerdict:
    score: float | None
    verdict: IntervalOutcome
    failed_critical: list[str]
    results: tuple[MetricResult, ...] = ()
    error: str = ""  # why the measurement could not be taken (verdict "error")


@dataclass(frozen=True)
class RunVerdict:
    action: Action
    why: str
    intervals: tuple[IntervalVerdict, ...] = ()  # the evidence: every interval's per-metric statistics


def source_error(why: str = "") -> IntervalVerdict:
    """The verdict of an interval whose measurement could not be taken (counts toward the error limit)."""
    return IntervalVerdict(score=None, verdict="error", failed_critical=[], results=(), error=why)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf": errors on a canary whose baseline had none; strict JSON has no Infinity
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def run_evidence(run: RunVerdict) -> dict[str, Any]:
    """The run as strict-JSON data for the audit log: the action, why, and each interval's per-metric
    statistics (classification, p-value, rates or means, effect, test)."""
    return _json_safe({"action": run.action, "why": run.why, "intervals": [asdict(v) for v in run.intervals]})


def load_template(path: Path | None = None) -> AnalysisTemplate:
    """The template in `path` (the packaged default when None); errors name the file and the field."""
    return load_yaml_model(path or DEFAULT_ANALYSIS, AnalysisTemplate, "analysis template")


def relative_effect(baseline_mean: float, canary_mean: float) -> float:
    if baseline_mean == 0:
        return 0.0 if canary_mean == 0 else math.copysign(math.inf, canary_mean)
    return (
        canary_mean / baseline_mean - 1
        if baseline_mean > 0
        else (canary_mean - baseline_mean) / -baseline_mean
    )


_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "increase": ("greater",),
    "decrease": ("less",),
    "either": ("greater", "less"),
}


def classify_metric(
    baseline_samples: Sequence[float], canary_samples: Sequence[float], spec: MetricSpec, looks: int = 1
) -> MetricResult:
    """Kayenta's classifier: a one-sided Mann-Whitney U test in each bad direction, and a relative change of
    the mean beyond the tolerance band. A change in the harmless direction passes. For a rate metric
    (ratio samples, no counts) alpha is spread over `looks`."""
    alpha = spec.alpha / looks if spec.kind == "rate" else spec.alpha
    n = min(len(baseline_samples), len(canary_samples))
    if n < spec.min_samples:
        return MetricResult(
            spec.name, "NoData", None, None, n, f"{n} samples, need {spec.min_samples}", test="none"
        )
    b_mean = sum(baseline_samples) / len(baseline_samples)
    c_mean = sum(canary_samples) / len(canary_samples)
    effect = relative_effect(b_mean, c_mean)
    best_p = 1.0
    for alternative in _DIRECTIONS[spec.bad]:
        if set(baseline_samples) == set(canary_samples) and len(set(canary_samples)) == 1:
            p = 1.0  # identical constant samples: scipy's U test is undefined, nothing differs
        else:
            p = float(mannwhitneyu(canary_samples, baseline_samples, alternative=alternative).pvalue)
        best_p = min(best_p, p)
        beyond = effect > spec.tolerance if alternative == "greater" else effect < -spec.tolerance
        if p < alpha and beyond:
            label: Classification = "High" if alternative == "greater" else "Low"
            why = f"{effect:+.1%} (p={p:.2g} < {alpha:.2g}, tolerance ±{spec.tolerance:.0%})"
            return MetricResult(spec.name, label, p, effect, n, why, b_mean, c_mean)
    why = "within tolerance" if abs(effect) <= spec.tolerance else "not significant"
    return MetricResult(
        spec.name, "Pass", best_p, effect, n, f"{effect:+.1%} (p={best_p:.2g}, {why})", b_mean, c_mean
    )


def classify_counts(
    baseline: tuple[float, float], canary: tuple[float, float], spec: MetricSpec, looks: int
) -> MetricResult:
    """A rate metric from (successes, trials) on each side: Fisher's exact test, one-sided in each bad
    direction, at alpha / looks (Bonferroni over the run's planned looks, so repeated looks at the growing
    window keep the run's false-alarm rate under alpha), and the rate ratio beyond the tolerance band.
    Counts are rounded (Prometheus' increase() extrapolates) and successes capped at trials."""
    nb, nc = round(baseline[1]), round(canary[1])
    xb, xc = min(round(baseline[0]), nb), min(round(canary[0]), nc)
    if min(nb, nc) < spec.min_samples:
        return MetricResult(
            spec.name,
            "NoData",
            None,
            None,
            max(0, min(nb, nc)),
            f"{min(nb, nc)} trials, need {spec.min_samples}",
            test="none",
        )
    if min(xb, xc) < 0:
        raise BadTable(f"metric {spec.name}: negative count {spec.numerator} ({xb} baseline, {xc} canary)")
    rate_b, rate_c = xb / nb, xc / nc
    effect = relative_effect(rate_b, rate_c)
    directions = _DIRECTIONS[spec.bad]
    alpha = spec.alpha / looks / len(directions)
    counts = f"{xc}/{nc} vs {xb}/{nb}"
    best_p = 1.0
    for alternative in directions:
        # Fisher's exact test: given the total successes, the canary's share is hypergeometric under H0.
        if alternative == "greater":
            p = float(hypergeom.sf(xc - 1, nb + nc, xb + xc, nc))
        else:
            p = float(hypergeom.cdf(xc, nb + nc, xb + xc, nc))
        p = min(1.0, p)
        best_p = min(best_p, p)
        beyond = effect > spec.tolerance if alternative == "greater" else effect < -spec.tolerance
        if p < alpha and beyond:
            label: Classification = "High" if alternative == "greater" else "Low"
            why = f"{effect:+.1%}, {counts} (Fisher p={p:.2g} < {alpha:.2g}, tolerance ±{spec.tolerance:.0%})"
            return MetricResult(spec.name, label, p, effect, min(nb, nc), why, rate_b, rate_c, "fisher")
    why = "within tolerance" if abs(effect) <= spec.tolerance else "not significant"
    return MetricResult(
        spec.name,
        "Pass",
        best_p,
        effect,
        min(nb, nc),
        f"{effect:+.1%}, {counts} (Fisher p={best_p:.2g}, {why})",
        rate_b,
        rate_c,
        "fisher",
    )


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
    """Every template metric classified and the interval scored; a metric missing on a side is NoData. A
    rate metric is judged on the sums of its count samples when both sides have them."""
    results = []
    for m in template.metrics:
        num, den = m.numerator or "", m.denominator or ""
        if m.kind == "rate" and all(k in side for side in (baseline, canary) for k in (num, den)):
            b_counts = (sum(baseline[num]), sum(baseline[den]))
            results.append(classify_counts(b_counts, (sum(canary[num]), sum(canary[den])), m, template.count))
        else:
            results.append(
                classify_metric(baseline.get(m.name, ()), canary.get(m.name, ()), m, template.count)
            )
    return score_interval(results, template)


def assess_run(interval_verdicts: Sequence[IntervalVerdict], template: AnalysisTemplate) -> RunVerdict:
    """Argo Rollouts' AnalysisRun assessment: failed measurements beyond failure_limit roll back; marginal or
    no-data measurements beyond inconclusive_limit pause and ask; source errors in a row beyond
    consecutive_error_limit pause; after `count` measurements, promote only if some passed."""
    failed = sum(v.verdict == "fail" for v in interval_verdicts)
    inconclusive = sum(v.verdict in ("marginal", "nodata") for v in interval_verdicts)
    evidence = tuple(interval_verdicts)
    consecutive_errors = 0
    for v in interval_verdicts:
        consecutive_errors = consecutive_errors + 1 if v.verdict == "error" else 0
    if failed > template.failure_limit:
        critical = sorted({name for v in interval_verdicts for name in v.failed_critical})
        detail = f" (critical: {', '.join(critical)})" if critical else ""
        return RunVerdict(
            "rollback",
            f"{failed} failed intervals > failure_limit {template.failure_limit}{detail}",
            evidence,
        )
    if consecutive_errors > template.consecutive_error_limit:
        last_error = interval_verdicts[-1].error
        return RunVerdict(
            "pause",
            f"metric source failed {consecutive_errors} times in a row > "
            f"consecutive_error_limit {template.consecutive_error_limit}"
            + (f": {last_error}" if last_error else ""),
            evidence,
        )
    if inconclusive > template.inconclusive_limit:
        return RunVerdict(
            "pause",
            f"{inconclusive} inconclusive intervals > inconclusive_limit {template.inconclusive_limit}",
            evidence,
        )
    measured = [v for v in interval_verdicts if v.verdict != "error"]
    if len(measured) < template.count:
        return RunVerdict("continue", f"{len(measured)} of {template.count} intervals measured", evidence)
    if not any(v.verdict == "pass" for v in measured):
        return RunVerdict("pause", "no interval passed: never promote on no data", evidence)
    return RunVerdict(
        "promote",
        f"{len(measured)} intervals measured, {failed} failed, {inconclusive} inconclusive",
        evidence,
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
    shorter than the template's `count` are inconclusive: an unfinished analysis never promotes. Rate
    metrics are judged on counts where the files carry them (metric rows named as the template's
    `numerator` and `denominator`, e.g. `errors` and `requests`), else on their ratio samples."""
    spec = load_template(template)
    base = {k: _by_interval(v) for k, v in read_metric_file(baseline).items()}
    can = {k: _by_interval(v) for k, v in read_metric_file(canary).items()}
    known = {m.name for m in spec.metrics} | {
        c for m in spec.metrics for c in (m.numerator, m.denominator) if c is not None
    }
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
        if run.action != "continue":  # an AnalysisRun ends at its verdict: later rows are not looked at
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
                "baseline": r.baseline,
                "canary": r.canary,
                "test": r.test,
            }
            for r in last.results
        ],
    }
