"""The code-reading change-risk model on the public OpenStack JIT data (JITLine's split and a time-ordered
80/20 split), beside metrics-only models and JITLine's published predictions (models.jit_code_benchmark).

Run as `python benchmarks/jit_code.py [--data DIR] [--path-tokens]`; writes benchmarks/results/jit_code.json
and .txt (`--path-tokens`: the variant that also reads the words of the changed paths).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.code_model import CodeModelConfig  # noqa: E402
from models.jit_code_benchmark import run_jit_code_benchmark  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "jit" / "openstack-jitline"
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--path-tokens", action="store_true", help="the code model reads the changed paths")
    args = parser.parse_args()
    started = time.perf_counter()
    table = run_jit_code_benchmark(args.data, config=CodeModelConfig(path_tokens=args.path_tokens))
    rows = json.loads(table.to_json(orient="records"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "jit_code.json").write_text(
        json.dumps(
            {
                "data": str(args.data),
                "path_tokens": args.path_tokens,
                "seconds": time.perf_counter() - started,
                "rows": rows,
            },
            indent=2,
        )
    )
    lines = render(rows, args.data.name)
    (RESULTS / "jit_code.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(rows: list[dict], dataset: str) -> list[str]:
    """The text report: one line per split and model, the awo code model's with its paired intervals."""
    lines = [f"JIT defect prediction with code on {dataset}"]
    for row in rows:
        tests = "; ".join(
            f"{k[3:]} {v['auc_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
            for k, v in row.items()
            if k.startswith("vs ") and isinstance(v, dict)
        )
        seconds = row.get("train_seconds")
        trained = f"train {seconds:.1f} s" if isinstance(seconds, float) else "train n/a"
        cpu = row.get("train_cpu_seconds")
        trained += f" ({cpu:.0f} s CPU)" if isinstance(cpu, float) else ""
        lines.append(
            f"{row['split']:<20} {row['model']:<34} AUC {row['auc']:.4f}  F1 {row['f1']:.3f}  "
            f"P {row['precision']:.3f}  R {row['recall']:.3f}  {trained:<27} {tests}"
        )
    return lines


if __name__ == "__main__":
    main()
