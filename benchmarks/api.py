"""Risk API speed: the real server (`awo serve`, uvicorn on localhost) driven by a bounded load generator
for a fixed time. Single-commit scoring at increasing concurrency and at a fixed 200 requests/s, batches
of 100 and 1,000, and — in the same run — the in-process cost of one prediction (online feature lookup +
model) as the floor. Targets on 2 cores: single-commit p99 < 25 ms at 200 requests/s; a batch of 1,000
under 250 ms; server overhead within 5x the floor. The load generator shares the 2 cores with the server.

Usage: python benchmarks/api.py   (writes benchmarks/results/api.json)"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DURATION = 5.0


def stats(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


async def closed_loop(url: str, headers: dict, bodies, concurrency: int, duration: float) -> dict:
    import httpx

    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post(url, json=bodies[i % len(bodies)], headers=headers)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text[:200]
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return stats(latencies, time.perf_counter() - start)


async def open_loop(url: str, headers: dict, bodies, rate: float, duration: float) -> dict:
    """Requests sent at a fixed rate whatever the latency (bounded: rate x duration requests)."""
    import httpx

    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:

        async def one(body) -> None:
            start = time.perf_counter()
            response = await client.post(url, json=body, headers=headers)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
        return stats(latencies, time.perf_counter() - start)


def main() -> int:
    import pandas as pd
    import yaml

    from features.settings import load_settings
    from features.store import online_features
    from models.registry import load
    from models.risk_model import ModelConfig
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare
    from pipelines.train import train
    from serving.auth import new_token

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        token, digest = new_token()
        config = root / "awo.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "api_tokens": [{"name": "bench", "sha256": digest, "scopes": ["risk:read"]}],
                    "max_batch": 1000,
                }
            )
        )
        settings = load_settings(data_dir=root)
        world = generate_world(root / "world", seed=7, n_commits=2000)
        store = prepare(world.repo, settings, root / "demo", name="demo", delivery=world.repo.parent)
        train("change-risk", settings, root / "demo", ModelConfig())
        shas = list(pd.read_parquet(root / "demo" / "commits.parquet")["sha"])

        # The floor: one prediction in-process (online feature lookup + model), no HTTP.
        model = load("change-risk")
        floor = []
        for sha in shas[:500]:
            start = time.perf_counter()
            rows = online_features(store, "change_risk_v1", [{"repo": "demo", "sha": sha}]).rows
            model.model.predict_proba(pd.DataFrame(rows).astype(float))
            floor.append(time.perf_counter() - start)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "AWO_DATA_DIR": str(root), "AWO_CONFIG": str(config)}
        server = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import httpx

            base = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            url, headers = f"{base}/v1/risk/commits", {"Authorization": f"Bearer {token}"}
            single = [{"commits": [{"repo": "demo", "sha": s}]} for s in shas]
            results = {"floor_in_process": stats(floor, sum(floor))}
            for concurrency in (1, 4, 16):
                results[f"single_concurrency_{concurrency}"] = asyncio.run(
                    closed_loop(url, headers, single, concurrency, DURATION)
                )
            results["single_at_200_rps"] = asyncio.run(open_loop(url, headers, single, 200, DURATION))
            for size in (100, 1000):
                batches = [
                    {"commits": [{"repo": "demo", "sha": s} for s in shas[i : i + size]]}
                    for i in range(0, len(shas) - size + 1, size)
                ]
                results[f"batch_{size}"] = asyncio.run(closed_loop(url, headers, batches, 1, DURATION))
        finally:
            server.terminate()
            server.wait(timeout=30)
    results["overhead_vs_floor_p50"] = round(
        results["single_concurrency_1"]["p50_ms"] / results["floor_in_process"]["p50_ms"], 2
    )
    results["targets"] = {
        "single_at_200_rps_p99_ms": "< 25",
        "batch_1000_p50_ms": "< 250",
        "overhead_vs_floor_p50": "<= 5",
    }
    results["machine"] = (
        f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cpus, 1 uvicorn worker"
    )
    print(json.dumps(results, indent=2))
    (ROOT / "benchmarks" / "results" / "api.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
