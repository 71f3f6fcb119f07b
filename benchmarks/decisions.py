"""Decision latency without an LLM, in process: one change of the demo world (mined, labelled, trained)
through the whole engine — context assembled from the tables, scored by the champion through the online
store, decided, recorded in the audit log (an fsync'ed append) —, the same without the audit write, and
`decide()` alone, the pure function. In the same run, the
floor: scoring the same commit through the scoring core only. Target: p99 under 20 ms for one change.

Usage: python benchmarks/decisions.py   (writes benchmarks/results/decisions.json)"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUNS = 400


def timed(fn, runs: int = RUNS) -> dict[str, float]:
    for _ in range(20):  # warm caches (feature-service lookups, parquet reads)
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    ms = np.array(samples)
    return {
        "runs": runs,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> None:
    import pandas as pd

    from agents.assemble import ChangeRef, InProcessScorer, assemble
    from agents.decision import decide
    from agents.engine import audit_log, record
    from agents.policy import load_policy
    from features.settings import load_settings
    from models.risk_model import ModelConfig
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare
    from pipelines.train import train
    from serving.core import CommitRef, score_commits

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = generate_world(root / "world", seed=11, n_commits=600)
        settings = load_settings(data_dir=root / "data", min_positive_labels=10)
        tables = settings.repo_data_dir("demo")
        prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
        train("change-risk", settings, tables, ModelConfig(n_estimators=200, learning_rate=0.05))
        policy = load_policy()
        scorer = InProcessScorer(settings)
        commits = pd.read_parquet(tables / "commits.parquet").sort_values("seq")
        shas = list(commits["sha"].tail(50))
        refs = [ChangeRef(repo_path=world.repo, repo="demo", sha=s) for s in shas]
        log = audit_log(settings)
        state = {"i": 0}

        def next_ref() -> ChangeRef:
            state["i"] += 1
            return refs[state["i"] % len(refs)]

        def whole_engine() -> None:
            ref = next_ref()
            context = assemble(ref, settings, policy, scorer=scorer)
            record(decide(context, policy), context, log)

        def assembled_and_decided() -> None:
            decide(assemble(next_ref(), settings, policy, scorer=scorer), policy)

        contexts = [assemble(r, settings, policy, scorer=scorer) for r in refs]

        def decide_only() -> None:
            decide(contexts[state["i"] % len(contexts)], policy)
            state["i"] += 1

        scorer.score_mined("demo", shas[0])  # load the champion and open the store once
        loaded, store = scorer._model(), scorer._store

        def scoring_floor() -> None:
            score_commits([CommitRef(repo="demo", sha=next_ref().sha)], loaded, store, settings)

        results = {
            "whole_engine": timed(whole_engine),
            "decision_without_audit_write": timed(assembled_and_decided),
            "decide_only": timed(decide_only),
            "scoring_core_floor": timed(scoring_floor),
        }
    results["engine_over_floor"] = round(
        results["whole_engine"]["p50_ms"] / results["scoring_core_floor"]["p50_ms"], 2
    )
    results["target_p99_ms"] = 20
    results["machine"] = {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}
    out = ROOT / "benchmarks" / "results" / "decisions.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for name in ("whole_engine", "decision_without_audit_write", "decide_only", "scoring_core_floor"):
        r = results[name]
        print(f"{name:20s} p50 {r['p50_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms")
    print(f"engine / scoring floor (p50): {results['engine_over_floor']}x; written {out}")


if __name__ == "__main__":
    main()
