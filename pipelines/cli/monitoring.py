"""`awo benchmark nab`: the single-stream anomaly detector scored on NAB-format corpora."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.models import benchmark_app
from pipelines.cli.root import console


@benchmark_app.command("nab")
def benchmark_nab(
    dataset: Annotated[Path, typer.Option(help="a NAB corpus: data/<category>/<file>.csv and labels/")],
    labels: Annotated[
        Path | None, typer.Option(help="windows JSON (default: <dataset>/labels/combined_windows.json)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the figures as JSON")] = None,
) -> None:
    """The online anomaly detector on NAB (Lavin & Ahmad 2015) with NAB's scoring: normalised score per
    cost profile at one corpus-tuned threshold, leave-one-category-out, points/s; a windowed-Gaussian
    baseline and the published detectors beside it."""
    from agents.nab import load_corpus, published_results, run_nab_benchmark

    files = load_corpus(dataset, labels)
    report = run_nab_benchmark(files, published_results(dataset))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print_nab_table(report)


def print_nab_table(report: dict) -> None:
    from rich.table import Table

    corpus = report["corpus"]
    view = Table(
        title=f"NAB: {corpus['files']} files, {corpus['points']:,} points, {corpus['windows']} windows"
    )
    for column in ("detector", "standard", "low FP", "low FN", "LOCO std", "points/s"):
        view.add_column(column, justify="left" if column == "detector" else "right", no_wrap=True)
    for name, run in report["detectors"].items():
        scores = [
            f"{run['profiles'][p]['score']:.2f}"
            for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
        ]
        held_out = run["leave_one_category_out"]["standard"]["score"]
        loco = "n/a" if held_out is None else f"{held_out:.2f}"
        view.add_row(name, *scores, loco, f"{run['points_per_second']:,}")
    view.add_section()
    published = sorted(report["published"].items(), key=lambda kv: -kv[1].get("standard", 0.0))
    for name, scores in published:
        cells = [
            f"{scores[p]:.2f}" if p in scores else ""
            for p in ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
        ]
        view.add_row(name, *cells, "", "")
    view.caption = "above: this run, one threshold per profile tuned over the corpus given; below: published"
    console.print(view)
