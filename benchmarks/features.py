"""Feature store speed on the demo world, in one run, beside a baseline of reading the same rows straight
from the parquet sources with pandas:
- online lookup of the full change_risk_v1 vector for one commit (p50 / p99 over 2,000 lookups) and for a
  batch of 100 (targets with SQLite: p99 < 5 ms and < 20 ms);
- historical retrieval (point-in-time join) for 50,000 entity rows;
- materialization throughput (rows/s).

Usage: python benchmarks/features.py   (writes benchmarks/results/features.json)"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def main() -> int:
    from features.settings import load_settings
    from features.store import apply, materialize, online_features, open_store, sources_dir, training_set
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root)
        world = generate_world(root / "world", seed=7, n_commits=2000)
        tables = root / "demo"
        store = prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
        source_rows = sum(len(pd.read_parquet(p)) for p in sources_dir(settings).glob("*.parquet"))
        views = len(store.list_feature_views())
        # Materialize again from scratch, timed: a fresh registry and online store over every source row.
        for name in ("registry.db", "online.db"):
            (settings.data_dir / "feast" / name).unlink()
        store = open_store(settings)
        apply(store)
        start = time.perf_counter()
        materialize(store)
        materialize_s = time.perf_counter() - start

        commits = pd.read_parquet(tables / "commits.parquet")
        shas = commits["sha"].to_numpy()
        online_features(store, "change_risk_v1", [{"repo": "demo", "sha": shas[0]}])  # warm-up

        single = []
        for sha in rng.choice(shas, 2000):
            t = time.perf_counter()
            online_features(store, "change_risk_v1", [{"repo": "demo", "sha": sha}])
            single.append(time.perf_counter() - t)
        batch = []
        for _ in range(200):
            rows = [{"repo": "demo", "sha": s} for s in rng.choice(shas, 100, replace=False)]
            t = time.perf_counter()
            online_features(store, "change_risk_v1", rows)
            batch.append(time.perf_counter() - t)

        # Baseline: the same vector straight from the parquet sources with pandas, in this process.
        sources = sources_dir(settings)

        def pandas_lookup(picked: list[str]) -> pd.DataFrame:
            change = pd.read_parquet(sources / "commit_change.parquet", filters=[("sha", "in", picked)])
            history = pd.read_parquet(sources / "commit_history.parquet", filters=[("sha", "in", picked)])
            return change.merge(history, on=["repo", "sha"])

        base_single, base_batch = [], []
        for sha in rng.choice(shas, 300):
            t = time.perf_counter()
            pandas_lookup([sha])
            base_single.append(time.perf_counter() - t)
        for _ in range(50):
            picked = list(rng.choice(shas, 100, replace=False))
            t = time.perf_counter()
            pandas_lookup(picked)
            base_batch.append(time.perf_counter() - t)

        entity_rows = commits.sample(50_000, replace=True, random_state=1)[["repo", "sha", "committed_at"]]
        entity_rows = entity_rows.rename(columns={"committed_at": "event_timestamp"}).reset_index(drop=True)
        t = time.perf_counter()
        historical = training_set(store, entity_rows, "change_risk_v1")
        historical_s = time.perf_counter() - t
        t = time.perf_counter()
        change = pd.read_parquet(sources / "commit_change.parquet")
        history = pd.read_parquet(sources / "commit_history.parquet")
        entity_rows.merge(change, on=["repo", "sha"]).merge(history, on=["repo", "sha"])
        pandas_join_s = time.perf_counter() - t

    result = {
        "store": "Feast 0.67, local provider, SQLite online store, file offline store",
        "features_per_commit": len(historical.columns) - 3,
        "online_single": percentiles(single),
        "online_batch_100": percentiles(batch),
        "pandas_parquet_single": percentiles(base_single),
        "pandas_parquet_batch_100": percentiles(base_batch),
        "historical_50k_rows_s": round(historical_s, 2),
        "pandas_exact_join_50k_rows_s": round(pandas_join_s, 3),
        "materialize_rows_per_s": round(source_rows / materialize_s),
        "materialize_rows": source_rows,
        "materialize_feature_views": views,
        "targets": {"online_single_p99_ms": "< 5", "online_batch_100_p99_ms": "< 20"},
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "notes": "online lookups read the packed change_risk_v1 vector; the pandas baseline is an exact-key "
        "lookup/join, not point-in-time: a floor, not a replacement",
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "features.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
