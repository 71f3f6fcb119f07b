"""Do security findings help the change-risk model? On the demo world: bandit on every commit's changed .py
files at the parent and at the commit, new findings (absent from the parent, agents.security's identities)
counted by severity, and the model trained with and without those counts on the same time-ordered split.

Batched: each commit's changed files at both states are exported (git cat-file) under `<commit>/<state>/` and
bandit runs once over them all; bandit analyses each file on its own, so this equals one run per checkout
state over those files. The whole history is scanned, not a sample.

Usage: python benchmarks/security_features.py [--commits N] [--seed S]
       (writes benchmarks/results/security_features.{json,md})"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEVERITIES = ("low", "medium", "high", "critical")
SECURITY_FEATURES = [f"new_findings_{s}" for s in SEVERITIES]
CONFIG_SEEDS = (0, 1, 2)  # LightGBM seeds: the spread says how much of a difference is noise
STATES = ("parent", "commit")


def changed_python_blobs(repo: Path, ref: str = "main") -> dict[str, dict[str, dict[str, str]]]:
    """For each commit of `ref`: {state: {path: blob id}} of the .py files it adds, modifies or renames, at
    its parent and at itself (one `git log --raw`; a root commit's files exist only at the commit)."""
    out = subprocess.run(
        ["git", "log", "--raw", "--root", "--no-abbrev", "-M", "--format=%x00%H", ref],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    blobs: dict[str, dict[str, dict[str, str]]] = {}
    zero = "0" * 40
    for chunk in out.split("\x00")[1:]:
        lines = chunk.strip().splitlines()
        sha, raw = lines[0], [x for x in lines[1:] if x.startswith(":")]
        states: dict[str, dict[str, str]] = {"parent": {}, "commit": {}}
        for line in raw:
            meta, *paths = line.split("\t")
            _, _, old, new, _status = meta.split()
            path = paths[-1]  # a renamed file's parent blob is kept under its new path: moving is not adding
            if not path.endswith(".py") or new == zero:
                continue  # a deleted file adds no finding
            states["commit"][path] = new
            if old != zero:
                states["parent"][path] = old
        blobs[sha] = states
    return blobs


def export_blobs(repo: Path, blobs: dict[str, dict[str, dict[str, str]]], into: Path) -> int:
    """Write every blob to `into/<sha>/<state>/<path>` with one `git cat-file --batch`; the files written."""
    wanted = [
        (sha, state, path, blob)
        for sha, s in blobs.items()
        for state in STATES
        for path, blob in s[state].items()
    ]
    unique = sorted({b for *_, b in wanted})
    batch = "\n".join(unique).encode() + b"\n"
    proc = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=repo, input=batch, capture_output=True, check=True
    )
    data, contents, at = proc.stdout, {}, 0
    for blob in unique:
        header_end = data.index(b"\n", at)
        size = int(data[at:header_end].split()[2])
        contents[blob] = data[header_end + 1 : header_end + 1 + size]
        at = header_end + 1 + size + 1
    for sha, state, path, blob in wanted:
        target = into / sha / state / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(contents[blob])
    return len(wanted)


def new_findings_by_commit(sarif: Path, shas: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts: one row per commit, `sha` and the SECURITY_FEATURES; the new findings, one row each) from
    bandit's SARIF over the exported tree: a commit's findings at the commit that no finding of its parent
    matches (agents.security.matched_in_base), with the severity the default policy gives them."""
    from agents.policy import load_policy
    from agents.security import identity_keys, matched_in_base, read_sarif, severity_of

    security = load_policy().security
    grouped: dict[tuple[str, str], list] = {}
    for f in read_sarif(sarif).findings:
        sha, state, path = f.path.split("/", 2)
        keys = identity_keys(f.tool, f.rule_id, path, f.snippet, f.fingerprints, f.start_line, f.message)
        grouped.setdefault((sha, state), []).append(f.model_copy(update={"path": path, "keys": keys}))
    counts, found = [], []
    for sha in shas:
        head, base = grouped.get((sha, "commit"), []), grouped.get((sha, "parent"), [])
        new = [f for f, known in zip(head, matched_in_base(head, base), strict=True) if not known]
        row = dict.fromkeys(SECURITY_FEATURES, 0)
        for f in new:
            severity = severity_of(f, security)
            row[f"new_findings_{severity}"] += 1
            found.append({"sha": sha, "rule_id": f.rule_id, "severity": severity, "where": f.where()})
        counts.append({"sha": sha, **row})
    return pd.DataFrame(counts), pd.DataFrame(found, columns=["sha", "rule_id", "severity", "where"])


def compare(data, with_security: pd.DataFrame, gap_days: float) -> dict[str, dict[str, float]]:
    """AUC and PR-AUC on the same held-out period, the model fitted with and without the counts, over a few
    LightGBM seeds (mean and spread)."""
    from models.evaluation import classification_metrics
    from models.risk_model import ModelConfig
    from models.training import held_out, risk_model

    frame = data.frame.merge(with_security, on="sha", how="left")
    frame[SECURITY_FEATURES] = frame[SECURITY_FEATURES].fillna(0)
    data.frame = frame
    fit, test = held_out(data, gap_days)
    runs: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for seed in CONFIG_SEEDS:
        for name, features in (("without", data.features), ("with", data.features + SECURITY_FEATURES)):
            model = risk_model(features, ModelConfig(seed=seed)).fit(fit, fit["label"], fit["at"])
            m = classification_metrics(
                test["label"], model.predict_proba(test), test["effort"], model.threshold_
            )
            runs[name].append({"auc": m["auc"], "pr_auc": m["pr_auc"]})
    out: dict[str, dict[str, float]] = {}
    for name, rows in runs.items():
        for metric in ("auc", "pr_auc"):
            values = np.array([r[metric] for r in rows])
            out.setdefault(name, {})[metric] = round(float(values.mean()), 4)
            out[name][f"{metric}_sd"] = round(float(values.std()), 4)
    out["rows"] = {"fit": len(fit), "test": len(test), "test_positives": int(test["label"].sum())}
    out["test_rows_with_findings"] = {"count": int((test[SECURITY_FEATURES].sum(axis=1) > 0).sum())}
    out["fit_rows_with_findings"] = {"count": int((fit[SECURITY_FEATURES].sum(axis=1) > 0).sum())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    from importlib.metadata import version

    from features.settings import load_settings
    from pipelines.cli.demo import bandit_command
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare
    from pipelines.train import change_risk_data

    bandit = bandit_command()
    if bandit is None:
        print("bandit is not installed for this Python (dev dependency group): nothing to measure")
        return 1
    gap_days = 30.0  # pipelines.train's default maturity gap before the test period
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = load_settings(data_dir=root / "data")
        world = generate_world(root / "world", seed=args.seed, n_commits=args.commits)
        started = time.perf_counter()
        blobs = changed_python_blobs(world.repo)
        files = export_blobs(world.repo, blobs, root / "scan")
        export_s = time.perf_counter() - started
        sarif = root / "scan.sarif"
        started = time.perf_counter()
        command = [*bandit, "-q", "-r", ".", "-f", "sarif", "-o", str(sarif)]
        proc = subprocess.run(command, cwd=root / "scan", capture_output=True, text=True, check=False)
        scan_s = time.perf_counter() - started
        if proc.returncode not in (0, 1):
            print(f"bandit exited {proc.returncode}: {proc.stderr[-500:]}")
            return 1
        log = json.loads(sarif.read_text())
        notes = log["runs"][0].get("invocations", [{}])[0].get("toolConfigurationNotifications", [])
        unparsed = sum("syntax error" in n.get("message", {}).get("text", "") for n in notes)
        counts, found = new_findings_by_commit(sarif, list(blobs))
        store = prepare(world.repo, settings, root / "tables", name="demo", delivery=world.repo.parent)
        data = change_risk_data(settings, root / "tables", store)
        result = compare(data, counts, gap_days)
    with_any = int((counts[SECURITY_FEATURES].sum(axis=1) > 0).sum())
    report = {
        "benchmark": "security findings (bandit, new vs parent, by severity) as change-risk features",
        "world": {"seed": args.seed, "commits": args.commits},
        "scanner": f"bandit {version('bandit')}",
        "scan": {
            "commits_scanned": len(blobs),
            "commits_with_changed_py": int(sum(bool(s["commit"]) for s in blobs.values())),
            "files_scanned": files,
            "files_bandit_could_not_parse": unparsed,
            "export_s": round(export_s, 2),
            "bandit_s": round(scan_s, 2),
        },
        "commits_with_any_new_finding": with_any,
        "new_findings_by_severity": {s: int(counts[f"new_findings_{s}"].sum()) for s in SEVERITIES},
        "new_findings_by_rule": found["rule_id"].value_counts().to_dict() if len(found) else {},
        "model": result,
        "features": SECURITY_FEATURES,
        "split": f"models.training.held_out: newest 20% test, {gap_days:.0f}-day gap; "
        f"LightGBM seeds {CONFIG_SEEDS}",
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    out = ROOT / "benchmarks" / "results"
    (out / "security_features.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "security_features.md").write_text(markdown(report))
    print(json.dumps(report, indent=2))
    return 0


def markdown(report: dict) -> str:
    scan, model = report["scan"], report["model"]
    delta_auc = model["with"]["auc"] - model["without"]["auc"]
    delta_pr = model["with"]["pr_auc"] - model["without"]["pr_auc"]
    helps = delta_auc > 2 * max(model["without"]["auc_sd"], model["with"]["auc_sd"], 0.001)
    return "\n".join(
        [
            "# Security findings as change-risk features (issue 17)",
            "",
            f"Demo world seed {report['world']['seed']}, {report['world']['commits']} commits, "
            f"{report['scanner']}. Every commit of main scanned (no sample): its changed .py files at the "
            f"parent and at the commit, {scan['files_scanned']} files in one batched bandit run "
            f"({scan['export_s']} s export, {scan['bandit_s']} s bandit); "
            f"{scan['files_bandit_could_not_parse']} files bandit could not parse.",
            "",
            f"- commits with any new finding: **{report['commits_with_any_new_finding']}** of "
            f"{scan['commits_scanned']} ({scan['commits_with_changed_py']} change .py files)",
            f"- new findings by severity: {report['new_findings_by_severity']}",
            f"- {report['split']}; fit rows {model['rows']['fit']}, test rows {model['rows']['test']} "
            f"({model['rows']['test_positives']} positive); rows with findings: fit "
            f"{model['fit_rows_with_findings']['count']}, test {model['test_rows_with_findings']['count']}",
            "",
            "| model | AUC | PR-AUC |",
            "|---|---|---|",
            f"| without findings | {model['without']['auc']:.4f} ± {model['without']['auc_sd']:.4f} | "
            f"{model['without']['pr_auc']:.4f} ± {model['without']['pr_auc_sd']:.4f} |",
            f"| with new findings by severity | {model['with']['auc']:.4f} ± {model['with']['auc_sd']:.4f} | "
            f"{model['with']['pr_auc']:.4f} ± {model['with']['pr_auc_sd']:.4f} |",
            "",
            f"Difference: AUC {delta_auc:+.4f}, PR-AUC {delta_pr:+.4f}. " + recommendation(report, helps),
            "",
        ]
    )


def recommendation(report: dict, helps: bool) -> str:
    if report["commits_with_any_new_finding"] == 0:
        scan = report["scan"]
        return (
            "No commit of main adds a finding: the counts are zero on every row, so the model cannot use "
            f"them and the demo world cannot tell whether they help ({scan['files_bandit_could_not_parse']} "
            f"of {scan['files_scanned']} scanned files are generated lines that are not parseable Python, "
            "which bandit skips). Recommendation: keep them out of the product's feature service until a "
            "history with findings (a real repository) shows a gain."
        )
    if helps:
        return "Recommendation: keep the counts as features (the gain exceeds twice the seed spread)."
    return "Recommendation: keep them out: the difference is within twice the seed spread."


if __name__ == "__main__":
    raise SystemExit(main())
