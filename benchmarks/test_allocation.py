"""Test prioritisation on real CI histories, replayed online cycle by cycle: awo's prioritiser against
random order, recent failures first (the RETECS reference heuristic) and the oracle, on ABB Paint Control
(the main figure, with its two halves apart: parameters were chosen on the first half) and, as a smoke
check of a different format with very few failures, the six Apache Commons histories.
Targets on Paint Control: mean APFD on failing cycles above the best published 0.758 and above recent
failures first; NAPFD with a 50 % time budget above recent failures first.

Usage: python benchmarks/test_allocation.py   (writes benchmarks/results/test_allocation.json)"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ci-tests"
PAINT_CONTROL = DATA / "retecs" / "paintcontrol.csv.gz"
OUT = ROOT / "benchmarks" / "results" / "test_allocation.json"


def main() -> int:
    from agents.test_replay import benchmark, print_benchmark

    if not PAINT_CONTROL.exists():
        print(f"skipped: {PAINT_CONTROL} is missing")
        return 0
    start = time.perf_counter()
    main_result = benchmark(PAINT_CONTROL, seeds=tuple(range(30)))
    seconds = time.perf_counter() - start
    print_benchmark(main_result)
    commons = {}
    for path in sorted((DATA / "commons").glob("Commons_*.csv.gz")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = benchmark(path, seeds=tuple(range(10)))
        commons[path.name] = {
            name: {
                "mean_apfd_failing_cycles": result[name]["mean_apfd_failing_cycles"],
                "mean_napfd_failing_cycles_50": result[name]["mean_napfd_failing_cycles_50"],
                "cycles": result[name]["cycles"],
            }
            for name in ("awo", "random", "recent_failures_first", "oracle")
        }
        awo, rff = commons[path.name]["awo"], commons[path.name]["recent_failures_first"]
        print(
            f"{path.name}: {awo['cycles']['failing']} failing cycles; APFD awo "
            f"{awo['mean_apfd_failing_cycles']} vs recent failures first {rff['mean_apfd_failing_cycles']}"
        )
    awo, rff = main_result["awo"], main_result["recent_failures_first"]
    apfd, napfd = "mean_apfd_failing_cycles", "mean_napfd_failing_cycles_50"
    out = {
        "paintcontrol": main_result,
        "commons": commons,
        "targets": {
            "apfd_above_best_published_0.758": awo[apfd] > 0.758,
            "apfd_above_recent_failures_first": awo[apfd] > rff[apfd],
            "napfd_50_above_recent_failures_first": awo[napfd] > rff[napfd],
            "apfd_aim_0.80": awo[apfd] >= 0.80,
            "napfd_50_aim_0.75": awo[napfd] >= 0.75,
        },
        "paintcontrol_replay_s": round(seconds, 2),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(f"targets: {out['targets']}; wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
