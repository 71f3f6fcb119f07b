"""Mining speed on the real click history, in one run: (a) `git log --no-merges --numstat` alone,
(b) a naive PyDriller pass reading `modified_files` of each commit, (c) `awo mine` (in-process, so
interpreter start-up is not counted). Targets: (c) ≥ 10× (b) and within 3× of (a).

Usage: python benchmarks/mining.py [--naive-limit N]   (writes benchmarks/results/mining.json)"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUNDLE = ROOT.parent / "shared" / "data" / "repos" / "pallets-click.bundle"


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--naive-limit", type=int, default=600, help="commits for the slow PyDriller pass")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not BUNDLE.exists():
        print(f"skipped: {BUNDLE} is missing")
        return 0
    from features.settings import load_settings
    from pipelines.mine import mine_repository

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "click"
        subprocess.run(["git", "clone", "-q", "-b", "main", str(BUNDLE), str(repo)], check=True)
        n = int(subprocess.run(["git", "rev-list", "--no-merges", "--count", "main"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout)  # fmt: skip

        def git_log() -> None:
            subprocess.run(["git", "log", "--no-merges", "--numstat", "main"], cwd=repo,
                           stdout=subprocess.DEVNULL, check=True)  # fmt: skip

        t_git = best_of(args.runs, git_log)

        from pydriller import Repository

        def naive() -> int:
            count = 0
            for commit in Repository(str(repo), only_no_merge=True, order="reverse").traverse_commits():
                for f in commit.modified_files:
                    _ = (f.added_lines, f.deleted_lines, f.change_type)
                count += 1
                if count >= args.naive_limit:
                    break
            return count

        start = time.perf_counter()
        naive_count = naive()
        t_naive = time.perf_counter() - start

        settings = load_settings(data_dir=Path(tmp) / "data")
        runs = iter(range(100))

        def awo(workers: int):
            return lambda: mine_repository(repo, settings, Path(tmp) / f"out{next(runs)}", workers=workers)

        t_awo = best_of(args.runs, awo(1))
        t_awo2 = best_of(args.runs, awo(2))

    rate = {
        "a_git_log_numstat": n / t_git,
        "b_naive_pydriller": naive_count / t_naive,
        "c_awo_mine": n / t_awo,
        "c_awo_mine_2_workers": n / t_awo2,
    }
    result = {
        "repository": "pallets-click (main)",
        "non_merge_commits": n,
        "commits_per_second": {k: round(v, 1) for k, v in rate.items()},
        "awo_vs_naive_pydriller": round(rate["c_awo_mine"] / rate["b_naive_pydriller"], 1),
        "awo_time_over_git_log": round(t_awo / t_git, 2),
        "awo_2_workers_time_over_git_log": round(t_awo2 / t_git, 2),
        "targets": {"awo_vs_naive_pydriller": ">= 10", "awo_time_over_git_log": "<= 3"},
        "machine": f"{platform.machine()}, {platform.python_version()}, {subprocess.os.cpu_count()} cpus",
        "notes": f"best of {args.runs} runs; naive pass over the newest {naive_count} commits",
    }
    print(f"mining {n} non-merge commits of click")
    for name, value in rate.items():
        print(f"  {name:<24} {value:>9,.0f} commits/s")
    print(f"  awo mine is {result['awo_vs_naive_pydriller']}x the naive PyDriller pass (target >= 10x)")
    print(f"  awo mine takes {result['awo_time_over_git_log']}x the time of git log alone (target <= 3x)")
    out = ROOT / "benchmarks" / "results" / "mining.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
