"""SZZ labels against the developer-informed oracle (Rosa et al., ICSE 2021) in ../shared/data/szz: awo's
strategies (features.mining.szz.fix_inducing) and PyDriller's built-in SZZ, scored as the paper scored them.

Run as `python benchmarks/szz.py [--data DIR] [--workers N]`; writes benchmarks/results/szz.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.mining.gitlog import Repository  # noqa: E402
from features.mining.szz import DEFAULT_STRATEGIES, fix_inducing, topological_seq  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "szz"
RESULTS = ROOT / "benchmarks" / "results"
# Each row: a name and the strategies it combines (see features.mining.szz.STRATEGIES).
ROWS: dict[str, tuple[str, ...]] = {
    "awo r-szz (before)": ("r-szz",),
    "awo skip-fixes": ("skip-fixes",),
    "awo ignore-cosmetic": ("ignore-cosmetic",),
    "awo per-hunk": ("per-hunk",),
    "awo most-lines": ("most-lines",),
    "awo r-szz + fallback (default now)": DEFAULT_STRATEGIES,
    "awo fallback + ignore-cosmetic": ("fallback", "ignore-cosmetic"),
    "awo fallback + skip-fixes": ("fallback", "skip-fixes"),
    "awo no-copies": ("no-copies",),
    "awo fallback + no-copies": ("fallback", "no-copies"),
    "awo fallback + no-copies + per-hunk": ("fallback", "no-copies", "per-hunk"),
    "awo fallback + adjacent": ("fallback", "adjacent"),
    "awo fallback + no-copies + adjacent": ("fallback", "no-copies", "adjacent"),
    "awo fallback + line-history": ("fallback", "line-history"),
}


def clone(data: Path, fix: dict, into: Path) -> Path:
    target = into / fix["bundle"].removesuffix(".bundle")
    if not target.exists():
        subprocess.run(
            ["git", "clone", "-q", "-b", fix["branch"], str(data / "repos" / fix["bundle"]), str(target)],
            check=True,
        )
    return target


def pydriller_szz(path: Path, fix_sha: str) -> list[str]:
    from pydriller import Git

    git = Git(str(path))
    found = git.get_commits_last_modified_lines(git.get_commit(fix_sha))
    return sorted({sha for shas in found.values() for sha in shas})


def committer_dates(path: Path, shas: set[str]) -> dict[str, datetime]:
    if not shas:
        return {}
    out = subprocess.run(
        ["git", "-C", str(path), "show", "-s", "--format=%H %ct", *sorted(shas)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return {
        sha: datetime.fromtimestamp(int(ts), UTC)
        for sha, ts in (line.split() for line in out if line.strip())
    }


def run_fix(data: Path, fix: dict, into: Path) -> dict:
    path = clone(data, fix, into)
    seq = topological_seq(Repository(path), fix["fix_commit"])
    repository = Repository(path)
    predicted: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for name, strategies in ROWS.items():
        started = time.perf_counter()
        predicted[name] = fix_inducing(repository, fix["fix_commit"], seq, strategies)
        seconds[name] = time.perf_counter() - started
    started = time.perf_counter()
    predicted["PyDriller 2.12 SZZ"] = pydriller_szz(path, fix["fix_commit"])
    seconds["PyDriller 2.12 SZZ"] = time.perf_counter() - started
    dates = committer_dates(path, {sha for shas in predicted.values() for sha in shas})
    return {"fix": fix, "predicted": predicted, "seconds": seconds, "dates": dates}


def score(runs: list[dict], name: str, issue_filter: bool) -> dict:
    """Micro-averaged over (repo, fix, bug-inducing) triples, as the package's scripts/overlap.py."""
    predicted: set[tuple[str, str, str]] = set()
    oracle: set[tuple[str, str, str]] = set()
    for run in runs:
        fix = run["fix"]
        issue = fix.get("earliest_issue_date") or fix["best_scenario_issue_date"]
        opened = datetime.fromisoformat(issue).replace(tzinfo=UTC)
        for sha in run["predicted"][name]:
            if issue_filter and not run["dates"][sha] < opened:
                continue
            predicted.add((fix["repo"], fix["fix_commit"], sha))
        oracle.update((fix["repo"], fix["fix_commit"], sha) for sha in fix["bug_inducing_commits"])
    tp = len(predicted & oracle)
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / len(oracle) if oracle else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "predicted": len(predicted),
        "tp": tp,
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "f1": round(f1, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    oracle = json.loads((args.data / "oracle.json").read_text())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(lambda fix: run_fix(args.data, fix, Path(tmp)), oracle))
    wall = time.perf_counter() - started
    names = [*ROWS, "PyDriller 2.12 SZZ"]
    rows = [
        {
            "name": name,
            "strategies": list(ROWS.get(name, ())),
            "no_filter": score(runs, name, False),
            "issue_filter": score(runs, name, True),
            "seconds": round(sum(r["seconds"][name] for r in runs), 1),
        }
        for name in names
    ]
    per_fix = [
        {
            "repo": r["fix"]["repo"],
            "fix": r["fix"]["fix_commit"],
            "oracle": r["fix"]["bug_inducing_commits"],
            "predicted": r["predicted"],
        }
        for r in runs
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "oracle": "Rosa et al., ICSE 2021, Python subset (../shared/data/szz), 76 fixes",
        "protocol": (
            "micro-averaged over (repo, fix, bug-inducing) triples; issue filter as scripts/postfilter.rb"
        ),
        "wall_seconds": round(wall, 1),
        "workers": args.workers,
        "rows": rows,
        "per_fix": per_fix,
    }
    (RESULTS / "szz.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"SZZ on the developer-informed oracle ({len(oracle)} fixes), {wall:.0f} s wall, "
        f"{args.workers} workers",
        f"{'strategy':<36} {'pred':>5} {'TP':>4} {'P':>6} {'R':>6} {'F1':>6}   filtered P/R/F1   seconds",
    ]
    for row in rows:
        n, f = row["no_filter"], row["issue_filter"]
        lines.append(
            f"{row['name']:<36} {n['predicted']:>5} {n['tp']:>4} {n['precision']:>6.3f} {n['recall']:>6.3f} "
            f"{n['f1']:>6.3f}   {f['precision']:.3f}/{f['recall']:.3f}/{f['f1']:.3f}   {row['seconds']:>6.1f}"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "szz.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
