"""Terraform plans in the documented `terraform show -json` format: counts per type and action, the gate a
destroyed or replaced stateful resource raises, the `plan-review` check, malformed files named by field, and
`awo decide --terraform-plan` (or a committed `*.tfplan.json`) end to end on a real repository."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agents.context import ChangeContext, ChangedFile, Risk
from agents.decision import decide
from agents.policy import DEFAULT_POLICY, load_policy
from agents.terraform import TerraformPlanError, parse_plan, parse_plan_text, read_plan, stateful_changes
from pipelines.cli import app
from tests.conftest import TinyRepo, free_port, git

POLICY = load_policy()
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
runner = CliRunner()


def change(address: str, actions: list[str], mode: str = "managed") -> dict:
    """One `resource_changes` entry as Terraform writes it (before/after values left out: not read)."""
    type_, name = address.split(".")[-2:]
    return {
        "address": address,
        "mode": mode,
        "type": type_,
        "name": name,
        "provider_name": "registry.terraform.io/hashicorp/aws",
        "change": {"actions": actions, "before": None, "after": {}, "after_unknown": {}},
    }


def plan_doc(*changes: dict, version: str = "1.2") -> dict:
    return {
        "format_version": version,
        "terraform_version": "1.9.5",
        "planned_values": {"root_module": {}},
        "resource_changes": list(changes),
        "configuration": {"root_module": {}},
    }


def context_with(doc: dict | None, probability: float = 0.005) -> ChangeContext:
    return ChangeContext(
        repo="infra",
        shas=["b" * 40],
        files=[ChangedFile.of("infra/main.tf", "infra", 4, 1)],
        services=["infra"],
        risk=Risk(probability=probability, model_name="change-risk", model_version="1"),
        terraform=None if doc is None else parse_plan(doc, "plan.json"),
        now=MONDAY_10,
    )


def test_counts_each_resource_type_by_action_and_skips_no_ops_reads_and_data_sources():
    plan = parse_plan(
        plan_doc(
            change("aws_instance.web[0]", ["create"]),
            change("aws_instance.web[1]", ["create"]),
            change("aws_instance.api", ["update"]),
            change("aws_security_group.old", ["delete"]),
            change("aws_instance.worker", ["create", "delete"]),
            change("aws_instance.batch", ["delete", "create"]),
            change("aws_iam_role.ci", ["no-op"]),
            change("data.aws_ami.ubuntu", ["read"], mode="data"),
            change("module.net.aws_subnet.a", ["create"]),
        ),
        "plan.json",
    )
    counts = {t: c.model_dump() for t, c in plan.counts().items()}
    assert counts == {
        "aws_instance": {"created": 2, "updated": 1, "replaced": 2, "destroyed": 0},
        "aws_security_group": {"created": 0, "updated": 0, "replaced": 0, "destroyed": 1},
        "aws_subnet": {"created": 1, "updated": 0, "replaced": 0, "destroyed": 0},
    }
    assert plan.totals().model_dump() == {"created": 3, "updated": 1, "replaced": 2, "destroyed": 1}


def test_a_create_only_plan_keeps_the_gate_and_asks_for_a_non_blocking_plan_review():
    without = decide(context_with(None), POLICY)
    decision = decide(
        context_with(
            plan_doc(change("aws_db_instance.main", ["create"]), change("aws_s3_bucket.logs", ["create"]))
        ),
        POLICY,
    )
    assert decision.gate == without.gate == "fast_track"
    [check] = decision.test_plan.checks
    assert check.name == "plan-review" and check.blocking is False and check.resource == "infra-review"
    assert "2 to create" in check.why[0]
    assert [r.code for r in decision.reasons if r.kind == "infrastructure"] == ["terraform-plan"]


def test_destroying_a_database_raises_the_gate_to_senior_review_naming_the_address():
    decision = decide(
        context_with(
            plan_doc(change("aws_db_instance.orders", ["delete"]), change("aws_instance.a", ["update"]))
        ),
        POLICY,
    )
    assert decision.gate == "senior_review" and decision.exit_code == 3
    [reason] = [r for r in decision.reasons if r.code == "terraform-stateful"]
    assert "aws_db_instance.orders (delete)" in reason.message and "aws_instance.a" not in reason.message
    [check] = decision.test_plan.checks
    assert check.kind == "plan-review" and check.blocking
    assert any("aws_db_instance.orders" in w for w in check.why)


def test_replacing_a_bucket_counts_as_losing_state_and_raises_the_gate():
    decision = decide(context_with(plan_doc(change("aws_s3_bucket.assets", ["delete", "create"]))), POLICY)
    assert decision.gate == "senior_review"
    assert any("aws_s3_bucket.assets (replace)" in r.message for r in decision.reasons)


def test_updating_stateful_resources_in_place_does_not_raise_the_gate():
    doc = plan_doc(change("aws_db_instance.orders", ["update"]), change("aws_ebs_volume.data", ["update"]))
    decision = decide(context_with(doc), POLICY)
    assert decision.gate == "fast_track"
    assert stateful_changes(parse_plan(doc, "p"), POLICY.terraform.stateful_types) == []
    assert decision.test_plan.checks[0].blocking is False


def test_the_policy_names_the_stateful_types_and_the_gate_they_raise_to():
    policy = POLICY.model_copy(
        update={
            "terraform": POLICY.terraform.model_copy(
                update={"stateful_types": ["aws_instance"], "stateful_gate": "block"}
            )
        }
    )
    doc = plan_doc(change("aws_instance.legacy", ["delete"]), change("aws_db_instance.orders", ["delete"]))
    decision = decide(context_with(doc), policy)
    assert decision.gate == "block"
    [reason] = [r for r in decision.reasons if r.code == "terraform-stateful"]
    assert "aws_instance.legacy" in reason.message and "aws_db_instance" not in reason.message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("{not json", "not JSON (line 1"),
        (json.dumps(plan_doc(version="2.0")), "format_version '2.0'"),
        (json.dumps({"resource_changes": []}), "format_version is missing"),
        (
            json.dumps(plan_doc({"address": "aws_instance.a", "type": "aws_instance"})),
            "resource_changes[0].change",
        ),
        (
            json.dumps(plan_doc({"type": "aws_instance", "change": {"actions": ["create"]}})),
            "resource_changes[0].address",
        ),
        (json.dumps(plan_doc(change("aws_instance.a", ["destroy"]))), "change.actions ['destroy']"),
        (json.dumps(plan_doc(change("aws_instance.a", "create"))), "change.actions is a str"),
        (json.dumps([1, 2]), "the document is a list"),
    ],
)
def test_a_malformed_plan_is_an_error_naming_the_file_and_the_field(text: str, named: str):
    with pytest.raises(TerraformPlanError) as caught:
        parse_plan_text(text, "infra/prod.tfplan.json")
    assert "infra/prod.tfplan.json" in str(caught.value) and named in str(caught.value)


def test_reading_a_missing_plan_file_names_it(tmp_path: Path):
    with pytest.raises(TerraformPlanError, match=r"nowhere\.json"):
        read_plan(tmp_path / "nowhere.json")


# --- `awo decide` end to end ----------------------------------------------------------------------------


@pytest.fixture
def infra_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinyRepo:
    """A small real repository, its data root in the test's folder, and a policy whose on_error gate lets an
    unscored change through (no model is trained here), so what the plan does to the gate shows."""
    repo = TinyRepo(tmp_path / "infra")
    repo.write("main.tf", 'resource "aws_instance" "web" {}\n')
    repo.write("app/server.py", "def serve():\n    return 1\n")
    repo.commit("Initial infrastructure", at=1_700_000_000)
    repo.write("main.tf", 'resource "aws_instance" "web" {\n  ami = "ami-2"\n}\n')
    repo.commit("Move web to the new AMI", at=1_700_100_000)
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc["on_error"] = "standard"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("AWO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AWO_POLICY", str(policy))
    # the scorer is a risk API that is not there: the change is unscored at once, with no model registry
    monkeypatch.setenv("AWO_RISK_API_URL", f"http://127.0.0.1:{free_port()}")
    return repo


def decision_json(output: str) -> dict:
    """The decision JSON `awo decide --json` prints (after the mining summary of a first run)."""
    return json.loads(output[output.index("{\n") :])


def head_of(repo: TinyRepo) -> str:
    return git(repo.path, "rev-parse", "HEAD").strip()


def test_awo_decide_with_a_plan_that_destroys_a_database_exits_3_with_the_reason(infra_repo, tmp_path):
    safe, unsafe = tmp_path / "safe.json", tmp_path / "unsafe.json"
    safe.write_text(json.dumps(plan_doc(change("aws_instance.web", ["update"]))))
    unsafe.write_text(
        json.dumps(
            plan_doc(change("aws_instance.web", ["update"]), change("aws_db_instance.orders", ["delete"]))
        )
    )
    sha = head_of(infra_repo)
    base = ["decide", "--repo", str(infra_repo.path), "--sha", sha, "--json"]
    passed = runner.invoke(app, [*base, "--terraform-plan", str(safe)])
    assert passed.exit_code == 0, passed.output
    body = decision_json(passed.stdout)
    assert body["gate"] == "standard" and [c["name"] for c in body["test_plan"]["checks"]] == ["plan-review"]
    held = runner.invoke(app, [*base, "--terraform-plan", str(unsafe)])
    assert held.exit_code == 3, held.output
    body = decision_json(held.stdout)
    assert body["gate"] == "senior_review"
    assert any("aws_db_instance.orders (delete)" in r["message"] for r in body["reasons"])


def test_awo_decide_with_a_malformed_plan_exits_2_naming_the_file_and_field(infra_repo, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(plan_doc({"address": "aws_instance.a", "type": "aws_instance"})))
    result = runner.invoke(
        app,
        [
            "decide",
            "--repo",
            str(infra_repo.path),
            "--sha",
            head_of(infra_repo),
            "--terraform-plan",
            str(bad),
        ],
    )
    assert result.exit_code == 2
    assert "bad.json" in result.output and "resource_changes[0].change" in result.output


def test_a_plan_committed_in_the_change_is_found_by_its_file_name(infra_repo):
    infra_repo.write("main.tf", "")
    infra_repo.write(
        "plans/prod.tfplan.json", json.dumps(plan_doc(change("aws_s3_bucket.assets", ["create", "delete"])))
    )
    infra_repo.commit("Recreate the assets bucket", at=1_700_200_000)
    result = runner.invoke(app, ["decide", "--repo", str(infra_repo.path), "--sha", head_of(infra_repo)])
    assert result.exit_code == 3, result.output
    assert "plans/prod.tfplan.json" in result.output and "aws_s3_bucket.assets (replace)" in result.output
    assert "check plan-review@infra-review (blocking)" in result.output


def test_the_rollout_plans_test_task_carries_the_plan_review():
    from agents.goals import parse_goal
    from agents.planner import plan_goal

    decision = decide(context_with(plan_doc(change("aws_ebs_volume.data", ["delete"]))), POLICY)
    plan = plan_goal(parse_goal(f"ship {'b' * 12} of infra to production"), decision, POLICY)
    [check] = plan.task("test").params["checks"]
    assert check["name"] == "plan-review" and check["blocking"] is True
    plain = plan_goal(
        parse_goal(f"ship {'b' * 12} of infra to production"), decide(context_with(None), POLICY), POLICY
    )
    assert "checks" not in plain.task("test").params
