"""Mining an organisation on Ray against the local miner, in one run on the same repositories (the real
click history and generated worlds, the large one ~2,000 commits): throughput of the local miner with
--workers 1 and 2, of Ray with 1 and 2 worker CPUs (each a fresh cluster started like the tests'), and
Ray's own overhead per repository. Targets (issue 16): 2 Ray CPUs >= 1.7x one; overhead < 5% of a
2,000-commit repository's mining time.

Usage: python benchmarks/scale.py [--large N] [--small N]   (writes benchmarks/results/scale.json)"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUNDLE = ROOT.parent / "shared" / "data" / "repos" / "pallets-click.bundle"
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"


def make_organisation(root: Path, large: int, small: int) -> Path:
    """root/org: click, large (a generated world of `large` commits), small-a and small-b."""
    from pipelines.demo_world import generate_world

    org = root / "org"
    org.mkdir(parents=True)
    for name, seed, n in (("large", 1, large), ("small-a", 2, small), ("small-b", 3, small)):
        generate_world(root / "worlds" / name, seed=seed, n_commits=n)
        shutil.move(root / "worlds" / name / "repo", org / name)
    subprocess.run(["git", "clone", "-q", "-b", "main", str(BUNDLE), str(org / "click")], check=True)
    return org


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its waited-for children (the git processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def run_local(org: Path, data: Path, workers: int) -> dict[str, Any]:
    from features.settings import load_settings
    from pipelines.org import discover, mine_organisation

    settings = load_settings(data_dir=data)
    specs = discover(org).repos
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    outcomes = mine_organisation(specs, settings, ray_address=None, use_ray=False, workers=workers)
    wall = time.perf_counter() - started
    cpu_after = cpu_seconds()
    return _summary(outcomes, wall) | {
        "python_cpu_s": round(cpu_after[0] - cpu_before[0], 2),
        "git_cpu_s": round(cpu_after[1] - cpu_before[1], 2),
    }


def _summary(outcomes: list, wall: float) -> dict[str, Any]:
    failed = [o.spec.name for o in outcomes if o.failed]
    if failed:
        raise SystemExit(f"mining failed for {failed}: {[o.error for o in outcomes if o.failed]}")
    commits = sum(o.result.commits_mined for o in outcomes)
    return {
        "wall_s": round(wall, 2),
        "commits": commits,
        "commits_per_s": round(commits / wall, 1),
        "per_repo": {
            o.spec.name: {"mining_s": round(o.result.seconds, 3), "driver_s": round(o.seconds, 3)}
            for o in outcomes
        },
    }


def run_ray(org: Path, data: Path, worker_cpus: int, large_repo: str) -> dict[str, Any]:
    """A fresh cluster (head with 1 CPU, plus worker nodes of 1 CPU up to `worker_cpus`), the organisation
    mined on it, then Ray's overhead measured on the same cluster with warm workers."""
    import ray

    from features.cluster import connect
    from features.settings import load_settings
    from pipelines.org import RepoSpec, discover, mine_organisation
    from tests.ray_cluster import RayCluster, _ray_binary

    binary = _ray_binary()
    if binary is None:
        raise SystemExit("the ray command is missing (uv sync --extra scale)")
    cluster = _start_cluster(lambda: RayCluster(binary, head_cpus=1))
    try:
        for _ in range(worker_cpus - 1):
            _start_cluster(lambda: _add_worker(cluster))
        t0 = time.perf_counter()
        connect(cluster.address)
        connect_s = time.perf_counter() - t0
        settings = load_settings(data_dir=data)
        specs = discover(org).repos
        started = time.perf_counter()
        outcomes = mine_organisation(specs, settings, ray_address=cluster.address, use_ray=True)
        wall = time.perf_counter() - started
        result = _summary(outcomes, wall) | {"connect_s": round(connect_s, 2)}

        # Overhead: the large repository alone (no queueing), mined again from scratch on a warm worker;
        # driver-side wall time minus the mining time measured inside the task.
        overheads = []
        large = next(s for s in specs if s.name == large_repo)
        for attempt in range(3):
            out = data.parent / f"overhead-{worker_cpus}-{attempt}"
            alone = mine_organisation(
                [RepoSpec(large.name, large.path, out)], settings, ray_address=cluster.address, use_ray=True
            )[0]
            assert alone.result is not None, alone.error
            overheads.append((alone.seconds, alone.result.seconds))
        noop = ray.remote(lambda: None).options(num_cpus=1)
        ray.get(noop.remote())
        t0 = time.perf_counter()
        for _ in range(20):
            ray.get(noop.remote())
        noop_s = (time.perf_counter() - t0) / 20
        driver_s, mining_s = min(overheads, key=lambda pair: pair[0] - pair[1])
        result["overhead"] = {
            "large_driver_s": round(driver_s, 3),
            "large_mining_s": round(mining_s, 3),
            "task_overhead_s": round(driver_s - mining_s, 3),
            "task_overhead_share": round((driver_s - mining_s) / mining_s, 4),
            "noop_round_trip_s": round(noop_s, 4),
            "noop_share": round(noop_s / mining_s, 5),
            "runs": [[round(a, 3), round(b, 3)] for a, b in overheads],
        }
        return result
    finally:
        ray.shutdown()
        cluster.stop()


def _add_worker(cluster: Any) -> None:
    try:
        cluster.add_worker(num_cpus=1)
    except TimeoutError:
        if cluster.nodes[-1].poll() is not None:  # it exited: started again by _start_cluster
            raise
        cluster.wait_for_nodes(sum(p.poll() is None for p in cluster.nodes), timeout_s=300)  # joining slowly


def _start_cluster(start: Any, attempts: int = 3) -> Any:
    """Ray gives a node 30 s to register with its head; on a loaded machine the head may miss that."""
    for attempt in range(attempts):
        try:
            return start()
        except (RuntimeError, TimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", type=int, default=2000, help="commits of the large generated repository")
    parser.add_argument("--small", type=int, default=600, help="commits of each of the two small ones")
    args = parser.parse_args()
    if not BUNDLE.exists():
        print(f"skipped: {BUNDLE} is missing")
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # private clusters (see tests/test_scale_mining.py)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="awo-scale-", dir="/tmp") as tmp:
        org = make_organisation(Path(tmp), args.large, args.small)
        configs = [
            ("local_workers_1", lambda d: run_local(org, d, 1)),
            ("local_workers_2", lambda d: run_local(org, d, 2)),
            ("ray_1_cpu", lambda d: run_ray(org, d, 1, "large")),
            ("ray_2_cpus", lambda d: run_ray(org, d, 2, "large")),
        ]
        for name, run in configs:
            data = Path(tmp) / name / "data"  # a fresh data root: every configuration mines everything
            results[name] = run(data)
            print(
                f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'per_repo'})}",
                flush=True,
            )
            shutil.rmtree(data.parent, ignore_errors=True)
    base = results["local_workers_1"]["commits_per_s"]
    ray1 = results["ray_1_cpu"]["commits_per_s"]
    results["ratios"] = {
        "local_workers_2_vs_1": round(results["local_workers_2"]["commits_per_s"] / base, 3),
        "ray_1_cpu_vs_local_1": round(ray1 / base, 3),
        "ray_2_cpus_vs_ray_1_cpu": round(results["ray_2_cpus"]["commits_per_s"] / ray1, 3),
        "ray_2_cpus_vs_local_1": round(results["ray_2_cpus"]["commits_per_s"] / base, 3),
    }
    results["targets"] = {
        "ray_2_vs_1_at_least_1.7": results["ratios"]["ray_2_cpus_vs_ray_1_cpu"] >= 1.7,
        "overhead_under_5pct": results["ray_2_cpus"]["overhead"]["task_overhead_share"] < 0.05,
    }
    results["machine"]["load_after"] = os.getloadavg()
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"]), json.dumps(results["targets"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
