"""The online single-stream anomaly detector on the Numenta Anomaly Benchmark (58 labelled streams) with
NAB's own scoring: normalised score per cost profile at one corpus-tuned threshold (NAB's protocol), the
leave-one-category-out score (threshold tuned on the other categories), points/s on one core, beside a
windowed-Gaussian baseline run in the same process and the published detectors.

Usage: python benchmarks/nab.py [NAB_DIR]   (writes benchmarks/results/nab.json and nab.txt)"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.anomaly import DetectorConfig, StreamDetector  # noqa: E402
from agents.nab import load_corpus, published_results, run_nab_benchmark  # noqa: E402

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "metrics" / "nab"
PROFILE_COLUMNS = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def text_table(report: dict) -> str:
    corpus = report["corpus"]
    lines = [
        f"NAB v1.1: {corpus['files']} files, {corpus['points']:,} points, {corpus['windows']} windows",
        f"{'detector':<42}{'standard':>10}{'low FP':>10}{'low FN':>10}{'LOCO std':>10}{'points/s':>12}",
    ]
    for name, run in report["detectors"].items():
        scores = "".join(f"{run['profiles'][p]['score']:>10.2f}" for p in PROFILE_COLUMNS)
        held_out = run["leave_one_category_out"]["standard"]["score"]
        loco = f"{held_out:>10.2f}" if held_out is not None else f"{'n/a':>10}"
        lines.append(f"{name + ' (this run)':<42}{scores}{loco}{run['points_per_second']:>12,}")
    for name, scores in sorted(report["published"].items(), key=lambda kv: -kv[1].get("standard", 0.0)):
        cells = "".join(f"{scores[p]:>10.2f}" if p in scores else f"{'':>10}" for p in PROFILE_COLUMNS)
        lines.append(f"{name + ' (published)':<42}{cells}")
    ours = report["detectors"]["awo"]["profiles"]["standard"]
    lines.append(
        f"awo standard: threshold {ours['threshold']}, {ours['windows_detected']}/{corpus['windows']} "
        f"windows detected, {ours['fp_points']} false-positive points"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    dataset = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATASET
    files = load_corpus(dataset)
    report = run_nab_benchmark(files, published_results(dataset))
    report["dataset"] = str(dataset.name)
    report["detector_config"] = asdict(DetectorConfig())
    report["notes"] = (
        "Points are fed in file order (machine_temperature_system_failure.csv is not sorted; NAB keeps file "
        "order too). The detector's time constants were chosen by looking at this corpus's scores, so the "
        "corpus-tuned figures flatter it as they flatter the published ones; the leave-one-category-out "
        "score only holds the threshold out. points_per_second: one process, pure Python, incl. overhead."
    )
    out = ROOT / "benchmarks" / "results" / "nab.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = text_table(report)
    (ROOT / "benchmarks" / "results" / "nab.txt").write_text(table)
    print(table, end="")
    print(f"default StreamDetector.threshold = {StreamDetector.threshold}")
    print(f"wrote {out.relative_to(ROOT)} and nab.txt")


if __name__ == "__main__":
    main()
