"""The canary judge on synthetic metric streams: A/A canaries and injected regressions (error-rate spikes,
latency, KPI drop). Judges in the same run: awo's count judge (the default template: Fisher's exact test on
counts for rate metrics), awo's previous all-Mann-Whitney judge, a fixed threshold (error rate > 1%) and a
plain t-test. Targets (issue): false rollbacks <= 1% of A/A runs; a 2x spike detected within 3 intervals
in >= 99% of runs; a 1.5x spike detected in >= 90% (within the run's `count` intervals).

Usage: python benchmarks/canary.py [RUNS]   (writes benchmarks/results/canary.json)"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ttest_ind

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.judge import AnalysisTemplate, assess_run, judge_interval, load_template  # noqa: E402

BUCKETS = 6  # per-10-second samples in a one-minute interval
LATENCY_DRAWS = 200  # latency draws per bucket for its p99 (caps cost at high traffic)
SCENARIOS: dict[str, dict[str, float]] = {
    "aa": {},
    "error_1.5x": {"error": 1.5},
    "error_2x": {"error": 2.0},
    "error_5x": {"error": 5.0},
    "latency_+25%": {"latency": 1.25},
    "add_to_cart_-20%": {"kpi": 0.8},
}


def stream(rng: np.random.Generator, runs: int, count: int, effect: dict[str, float]) -> list[dict[str, Any]]:
    """Per run and interval, baseline and canary samples of each metric. Traffic follows a diurnal curve
    (100-5,000 requests a minute), split evenly between baseline and canary; base error rate log-uniform
    0.1-5% per run; errors binomial; latency lognormal; KPIs binomial over requests."""
    out = []
    for _ in range(runs):
        base_rate = float(np.exp(rng.uniform(np.log(0.001), np.log(0.05))))
        start_hour = rng.uniform(0, 24)
        median_ms = rng.uniform(50, 300)
        cart_rate = rng.uniform(0.05, 0.15)
        conversion = rng.uniform(0.01, 0.05)
        cpu = rng.uniform(0.3, 0.7)
        intervals = []
        requests = 0.0
        for i in range(count):
            hour = (start_hour + i / 60) % 24
            rpm = 100 + 4900 * (0.5 - 0.5 * np.cos(2 * np.pi * (hour - 4) / 24))
            requests += rpm / count
            sides = {}
            for side in ("baseline", "canary"):
                mult = effect if side == "canary" else {}
                n = np.maximum(rng.poisson(rpm / BUCKETS, BUCKETS), 1)
                errors = rng.binomial(n, min(1.0, base_rate * mult.get("error", 1.0)))
                p99 = [
                    float(
                        np.quantile(rng.lognormal(np.log(median_ms), 0.5, min(int(k), LATENCY_DRAWS)), 0.99)
                    )
                    * mult.get("latency", 1.0)
                    for k in n
                ]
                cart = rng.binomial(n, cart_rate * mult.get("kpi", 1.0))
                checkout = rng.binomial(n, conversion)
                sides[side] = {
                    # counts, for the count judge's rate metrics (the template's numerator/denominator)
                    "errors": list(errors),
                    "requests": list(n),
                    "cart_adds_ok": list(cart),
                    "cart_adds": list(n),
                    "checkouts": list(checkout),
                    "sessions": list(n),
                    # per-10-second samples, for the Mann-Whitney judge and the baselines
                    "error_rate": list(errors / n),
                    "latency_p99_ms": p99,
                    "saturation": list(np.clip(rng.normal(cpu, 0.05, BUCKETS), 0, 1)),
                    "add_to_cart_success": list(cart / n),
                    "checkout_conversion": list(checkout / n),
                }
            intervals.append(sides)
        out.append(
            {
                "base_rate": base_rate,
                "errors_per_interval": float(base_rate * requests),
                "requests_per_minute": float(requests),
                "intervals": intervals,
            }
        )
    return out


def awo_rollback_at(run: dict[str, Any], template: AnalysisTemplate) -> int | None:
    """The 1-based interval at which the judge's AnalysisRun rolls back, or None."""
    verdicts = []
    for i in range(1, len(run["intervals"]) + 1):
        window = run["intervals"][:i]
        base = {m: [x for iv in window for x in iv["baseline"][m]] for m in window[0]["baseline"]}
        can = {m: [x for iv in window for x in iv["canary"][m]] for m in window[0]["canary"]}
        verdicts.append(judge_interval(base, can, template))
        action = assess_run(verdicts, template).action
        if action == "rollback":
            return i
        if action == "pause":
            return -i  # halted for a human: reported apart from rollbacks
    return None


def threshold_rollback_at(run: dict[str, Any]) -> int | None:
    """The usual alert rule: roll back in the first interval whose canary error rate exceeds 1%."""
    for i, iv in enumerate(run["intervals"], start=1):
        if statistics.fmean(iv["canary"]["error_rate"]) > 0.01:
            return i
    return None


STRATA = (("<1", 0.0, 1.0), ("1-5", 1.0, 5.0), ("5-20", 5.0, 20.0), (">=20", 20.0, float("inf")))
TRAFFIC = (("<500", 0.0, 500.0), ("500-2000", 500.0, 2000.0), (">=2000", 2000.0, float("inf")))
# (scenario, measure, comparison, bound) of each issue target
TARGETS = (
    ("aa", "rollback_rate", "<=", 0.01),
    ("error_2x", "within_3", ">=", 0.99),
    ("error_1.5x", "rollback_rate", ">=", 0.90),
)


def mann_whitney_template(template: AnalysisTemplate) -> AnalysisTemplate:
    """awo's previous default: every metric continuous, judged by Mann-Whitney at alpha 0.001 per look."""
    doc = template.model_dump(exclude={"metrics"})
    doc["metrics"] = [
        {k: getattr(m, k) for k in ("name", "bad", "tolerance", "critical", "weight")} | {"alpha": 0.001}
        for m in template.metrics
    ]
    return AnalysisTemplate.model_validate(doc)


TTEST_BAD = {
    "error_rate": "greater",
    "latency_p99_ms": "greater",
    "saturation": "greater",
    "add_to_cart_success": "less",
    "checkout_conversion": "less",
}


def ttest_rollback_at(run: dict[str, Any]) -> int | None:
    """A plain Welch t-test per metric at p < 0.05 on the cumulative window, no tolerance band."""
    for i in range(1, len(run["intervals"]) + 1):
        window = run["intervals"][:i]
        for metric, alternative in TTEST_BAD.items():
            b = [x for iv in window for x in iv["baseline"][metric]]
            c = [x for iv in window for x in iv["canary"][metric]]
            if np.std(b) == 0 and np.std(c) == 0:
                continue
            if ttest_ind(c, b, equal_var=False, alternative=alternative).pvalue < 0.05:
                return i
    return None


def summarise(at: list[int | None], within: int | None = None) -> dict[str, Any]:
    hits = [a for a in at if a is not None and a > 0]
    row: dict[str, Any] = {
        "rollback_rate": round(len(hits) / len(at), 4),
        "pause_rate": round(sum(a is not None and a < 0 for a in at) / len(at), 4),
        "median_intervals": statistics.median(hits) if hits else None,
    }
    if within is not None:
        row[f"within_{within}"] = round(sum(a <= within for a in hits) / len(at), 4)
    return row


def by_band(
    at: list[int | None], data: list[dict[str, Any]], key: str, bands: tuple[tuple[str, float, float], ...]
) -> dict[str, Any]:
    return {
        label: summarise([a for a, r in zip(at, data, strict=True) if lo <= r[key] < hi], 3)
        | {"runs": int(sum(lo <= r[key] < hi for r in data))}
        for label, lo, hi in bands
    }


def targets(result: dict[str, Any], judge: str) -> dict[str, Any]:
    """Each issue target for `judge`: overall, and the bands of baseline errors per interval that meet it."""
    out = {}
    for scenario, measure, op, bound in TARGETS:
        row = result[scenario][judge]

        def met(value: float) -> bool:
            return value <= bound if op == "<=" else value >= bound  # noqa: B023

        out[f"{scenario} {measure} {op} {bound}"] = {
            "value": row[measure],
            "met": met(row[measure]),
            "met_in_bands": [
                b for b, r in row["by_errors_per_interval"].items() if r["runs"] and met(r[measure])
            ],
        }
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    template = load_template()
    previous = mann_whitney_template(template)
    rng = np.random.default_rng(20261124)
    start = time.perf_counter()
    result: dict[str, Any] = {"runs": runs, "count": template.count, "samples_per_interval": BUCKETS}
    for name, effect in SCENARIOS.items():
        data = stream(rng, runs, template.count, effect)
        rows = {}
        for judge, fn in (
            ("awo_counts", lambda r: awo_rollback_at(r, template)),
            ("awo_mann_whitney", lambda r: awo_rollback_at(r, previous)),
            ("fixed_threshold", threshold_rollback_at),
            ("t_test", ttest_rollback_at),
        ):
            at = [fn(r) for r in data]
            rows[judge] = summarise(at, within=3)
            # by the baseline's expected errors per interval: below a few errors no test can tell 2x apart
            rows[judge]["by_errors_per_interval"] = by_band(at, data, "errors_per_interval", STRATA)
            rows[judge]["by_requests_per_minute"] = by_band(at, data, "requests_per_minute", TRAFFIC)
        result[name] = rows
        print(name, json.dumps(rows), flush=True)
    result["targets"] = {judge: targets(result, judge) for judge in result["aa"]}
    print("targets", json.dumps(result["targets"]), flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = ROOT / "benchmarks" / "results" / "canary.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
