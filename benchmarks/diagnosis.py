"""The diagnostic agent on the demo world (agents/diagnosis.py), beside the naive rule "the latest production
deployment of the affected service before the incident", in the same run:

- the world is generated with its service topology and the cause of every incident (incident-truth.csv,
  which the diagnosis never reads); mined, labelled, ingested and built into features with pipelines.flow;
- failure scores: a deploy-failure model (models.risk_model.RiskModel on the deploy_failure_v1 features,
  point-in-time) fitted on the deployments of the first half of the history only; the diagnosis is measured
  on the incidents of the second half, so no score was fitted on the deployments it judges;
- the ranking's weights are the fixed CulpritModel defaults (not fitted; they were set while developing on
  a different world, seed 11, and not changed for this one).

Measures: top-1 and top-3 culprit accuracy over incidents with a culprit (split by same-service and
dependency culprits), and the share of noise incidents answered "no culprit".

Usage: python benchmarks/diagnosis.py [--seed 7] [--commits 2000]
(writes benchmarks/results/diagnosis.json)"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def failure_scores(settings, tables: Path, cutoff: pd.Timestamp) -> tuple[dict[str, float], dict]:
    """deploy_id → failure probability from a model fitted on the deployments started before `cutoff`."""
    from features.store import open_store
    from models.risk_model import RiskModel
    from pipelines.train import training_data

    data = training_data("deploy-failure", settings, tables, open_store(settings))
    frame = data.frame
    fit_rows = frame[frame["at"] < cutoff].reset_index(drop=True)
    model = RiskModel(data.features, name="deploy-failure").fit(fit_rows, fit_rows["label"], fit_rows["at"])
    p = model.predict_proba(frame)
    later = frame["at"] >= cutoff
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(frame.loc[later, "label"], p[later.to_numpy()]))
    info = {"fit_deployments": len(fit_rows), "scored_deployments": int(later.sum()), "auc_second_half": auc}
    return dict(zip(frame["deploy_id"], map(float, p), strict=True)), info


def evaluate(world_dir: Path, tables: Path, scores: dict[str, float], cutoff: pd.Timestamp) -> dict:
    from agents.diagnosis import IncidentFacts, naive_culprit, rank_culprits
    from features.tables import DEPLOYMENTS_FILE, INCIDENTS_FILE, read_table
    from features.topology import load_topology

    topology = load_topology(world_dir / "services.yaml")
    deployments = read_table(tables / DEPLOYMENTS_FILE)
    incidents = read_table(tables / INCIDENTS_FILE)
    assert deployments is not None and incidents is not None
    truth = pd.read_csv(world_dir / "incident-truth.csv", dtype=str, keep_default_na=False)
    culprit_of = dict(zip(truth["incident_id"], truth["culprit_deploy_id"], strict=True))
    service_of = dict(zip(deployments["deploy_id"], deployments["service"], strict=True))
    rows = []
    for inc in incidents[incidents["started_at"] >= cutoff].itertuples():
        facts = IncidentFacts(inc.incident_id, inc.service, inc.started_at.to_pydatetime(), inc.severity)
        diagnosis = rank_culprits(facts, deployments, topology, failure_scores=scores, incidents=incidents)
        ranked = [c.deploy_id for c in diagnosis.candidates] if diagnosis.culprit is not None else []
        true = culprit_of[inc.incident_id]
        rows.append(
            {
                "true": true,
                "kind": "noise"
                if not true
                else ("same" if service_of[true] == inc.service else "dependency"),
                "top1": (ranked[:1] == [true]) if true else diagnosis.culprit is None,
                "top3": true in ranked[:3] if true else diagnosis.culprit is None,
                "naive": naive_culprit(facts, deployments) == true if true else False,
            }
        )
    table = pd.DataFrame(rows)

    def share(frame: pd.DataFrame, column: str) -> float:
        return round(float(frame[column].mean()), 4) if len(frame) else float("nan")

    culprit = table[table["kind"] != "noise"]
    result: dict = {
        "incidents": len(table),
        "with_culprit": len(culprit),
        "noise": int((table["kind"] == "noise").sum()),
        "awo": {"top1": share(culprit, "top1"), "top3": share(culprit, "top3")},
        "naive_latest_own_deployment": {"top1": share(culprit, "naive")},
    }
    result["awo"]["no_culprit_correct"] = share(table[table["kind"] == "noise"], "top1")
    result["naive_latest_own_deployment"]["no_culprit_correct"] = 0.0  # it always blames a deployment
    for kind in ("same", "dependency"):
        part = table[table["kind"] == kind]
        result[f"{kind}_service_culprits" if kind == "same" else "dependency_culprits"] = {
            "incidents": len(part),
            "awo_top1": share(part, "top1"),
            "awo_top3": share(part, "top3"),
            "naive_top1": share(part, "naive"),
        }
    result["top1_gain_over_naive_points"] = round(
        100 * (result["awo"]["top1"] - result["naive_latest_own_deployment"]["top1"]), 1
    )
    return result


def main() -> None:
    from features.settings import load_settings
    from features.tables import DEPLOYMENTS_FILE, read_table
    from pipelines.demo_world import generate_world
    from pipelines.flow import prepare

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diagnosis.json")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = generate_world(root / "world", seed=args.seed, n_commits=args.commits)
        settings = load_settings(data_dir=root / "data", service_map=world.topology_path)
        tables = settings.repo_data_dir("demo")
        prepare(world.repo, settings, tables, name="demo", delivery=world.repo.parent)
        deployments = read_table(tables / DEPLOYMENTS_FILE)
        assert deployments is not None
        cutoff = deployments["started_at"].quantile(0.5)
        scores, model_info = failure_scores(settings, tables, cutoff)
        result = evaluate(world.repo.parent, tables, scores, cutoff)
    result = {
        "world": {"seed": args.seed, "commits": args.commits, "evaluated_from": cutoff.isoformat()},
        "deploy_failure_model": model_info,
        **result,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    awo, naive = result["awo"], result["naive_latest_own_deployment"]
    print(
        f"diagnosis over {result['with_culprit']} incidents with a culprit: top-1 {awo['top1']:.3f}, "
        f"top-3 {awo['top3']:.3f} (naive top-1 {naive['top1']:.3f}); "
        f"no culprit right on {awo['no_culprit_correct']:.3f} of {result['noise']} noise incidents"
    )
    dep = result["dependency_culprits"]
    print(
        f"  dependency culprits: {dep['incidents']}, "
        f"top-1 {dep['awo_top1']:.3f} (naive {dep['naive_top1']:.3f})"
    )
    print(f"written {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
