"""`awo judge` on metric files: a healthy canary passes (exit 0), a canary with five times the errors fails
(exit 4) naming the metric, and a malformed file is a one-line error (exit 2)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def write(path, error_rate: float, seed: int, intervals: int = 12) -> None:
    rng = np.random.default_rng(seed)
    lines = ["timestamp,metric,value"]
    for i in range(intervals):
        stamp = f"2026-11-24T10:{i:02d}:00Z"
        for _ in range(20):  # twenty instances report each minute
            lines.append(f"{stamp},error_rate,{rng.binomial(200, error_rate) / 200}")
            lines.append(f"{stamp},latency_p99_ms,{rng.lognormal(5.0, 0.2):.2f}")
    path.write_text("\n".join(lines) + "\n")


def test_a_healthy_canary_passes_and_a_broken_one_fails(tmp_path):
    write(tmp_path / "baseline.csv", 0.02, 1)
    write(tmp_path / "same.csv", 0.02, 2)
    write(tmp_path / "broken.csv", 0.10, 3)
    healthy = runner.invoke(
        app,
        [
            "judge",
            "--baseline",
            str(tmp_path / "baseline.csv"),
            "--canary",
            str(tmp_path / "same.csv"),
            "--json",
        ],
    )
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.stdout)["verdict"] == "pass"
    broken = runner.invoke(
        app, ["judge", "--baseline", str(tmp_path / "baseline.csv"), "--canary", str(tmp_path / "broken.csv")]
    )
    assert broken.exit_code == 4, broken.output
    assert "FAIL" in broken.output and "error_rate" in broken.output


def test_a_malformed_metric_file_is_a_one_line_error(tmp_path):
    write(tmp_path / "baseline.csv", 0.02, 1)
    (tmp_path / "bad.csv").write_text("timestamp,metric,value\n2026-11-24T10:00:00Z,error_rate,lots\n")
    result = runner.invoke(
        app, ["judge", "--baseline", str(tmp_path / "baseline.csv"), "--canary", str(tmp_path / "bad.csv")]
    )
    assert result.exit_code == 2 and "bad.csv" in result.output
