"""The agents on the demo world's own history, replayed in time order (the world `make demo` builds):

- gating: the change-risk model trained on the first 80% of its labelled commits (change_risk_v1 features
  from the feature store), the last 20% gated with the default policy's bands, beside a lines-changed gate
  at the same shares (agents/gate_replay.py, the same code as `awo benchmark gate`);
- test allocation: each CI run of the second half ordered by `rank_tests` from the runs before it only,
  with change-to-test links (files of the tested commit) and without them, beside random order and an
  oracle; APFD over runs with at least one failure.

Usage: python benchmarks/demo_agents.py   (writes benchmarks/results/demo_agents.json)"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gating(settings, tables) -> dict:
    from agents.gate_replay import replay_history
    from features.store import open_store
    from pipelines.train import training_data

    data = training_data("change-risk", settings, tables, open_store(settings))
    frame = data.frame.rename(columns={"label": "bug"})
    return replay_history(frame, data.features, "demo")


def test_allocation(tables) -> dict:
    import pandas as pd

    from agents.test_allocation import TestHistory, rank_tests
    from agents.test_replay import napfd
    from features.tables import FILES_FILE, raw_file

    runs = pd.read_parquet(tables / raw_file("test-runs"))
    runs = runs.sort_values(["started_at", "run_id"], kind="stable").reset_index(drop=True)
    files = pd.read_parquet(tables / FILES_FILE)
    files_by_sha = files.groupby("sha")["path"].agg(list).to_dict()
    order = list(dict.fromkeys(runs["run_id"]))
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {"awo": [], "awo_without_file_links": [], "random": [], "oracle": []}
    for run_id in order[len(order) // 2 :]:
        run = runs[runs["run_id"] == run_id]
        final = run.sort_values("attempt").groupby(["suite", "test_id"], sort=False).tail(1)
        failed = dict(
            zip(zip(final["suite"], final["test_id"], strict=True), final["outcome"] == "failed", strict=True)
        )
        if not any(failed.values()) or len(failed) < 2:
            continue
        durations = dict(
            zip(zip(final["suite"], final["test_id"], strict=True), final["duration_s"], strict=True)
        )
        earlier = runs[runs["started_at"] < run["started_at"].min()]
        history = TestHistory.from_runs(earlier, files_by_sha)
        changed = files_by_sha.get(run["sha"].iloc[0], [])
        keys = list(failed)

        def apfd(sequence: list[tuple[str, str]], failed=failed, durations=durations) -> float:
            verdicts = np.array([failed[k] for k in sequence], dtype=int)
            return napfd(verdicts, np.array([durations[k] for k in sequence], dtype=float))

        def ranked(files: list[str], history=history, keys=keys) -> list[tuple[str, str]]:
            known = [(t.suite, t.test_id) for t in rank_tests(history, files)]
            seen = [k for k in known if k in set(keys)]
            return seen + sorted(k for k in keys if k not in set(seen))  # tests new to the history last

        shuffled = [[keys[i] for i in rng.permutation(len(keys))] for _ in range(10)]
        scores["awo"].append(apfd(ranked(changed)))
        scores["awo_without_file_links"].append(apfd(ranked([])))
        scores["random"].append(float(np.mean([apfd(order) for order in shuffled])))
        oracle = [k for _, _, k in sorted((not failed[k], durations[k], k) for k in keys)]
        scores["oracle"].append(apfd(oracle))
    return {
        name: {"mean_apfd_failing_runs": round(float(np.mean(v)), 4), "runs": len(v)}
        for name, v in scores.items()
    }


def main() -> None:
    from features.settings import load_settings
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = generate_world(root / "world", seed=7, n_commits=2000)
        settings = load_settings(data_dir=root / "data")
        tables = settings.repo_data_dir("demo")
        prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
        result = {"gating": gating(settings, tables), "test_allocation": test_allocation(tables)}
    out = ROOT / "benchmarks" / "results" / "demo_agents.json"
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    gate = result["gating"]
    for method in ("awo", "lines_changed"):
        m = gate[method]["mean"]
        print(
            f"gate {method:14s} fast-tracked {m['fast_track_share']:.3f} "
            f"at {m['fast_track_defect_ratio']:.3f}x "
            f"the base rate; gated {m['gated_share']:.3f} "
            f"holding {m['gated_defect_share']:.3f} of the defects"
        )
    for name, figures in result["test_allocation"].items():
        print(
            f"tests {name:24s} APFD {figures['mean_apfd_failing_runs']:.3f} "
            f"over {figures['runs']} failing runs"
        )
    print(f"written {out}")


if __name__ == "__main__":
    main()
