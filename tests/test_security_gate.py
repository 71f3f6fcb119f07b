"""The security gate end to end with the real scanner: a repository the test writes, bandit run on checkouts
of the base and the head, `awo decide --sarif` blocking an insecure change and passing a clean one, the
finding in `awo explain` and the audit record, a waiver by a person, a malformed file refused with nothing
recorded, and findings ingested after the change used by a later decision."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agents.engine import audit_log
from agents.policy import DEFAULT_POLICY
from agents.security import read_sarif
from pipelines.cli import app
from pipelines.cli.agents import ingest_security
from pipelines.cli.root import load_settings
from tests.conftest import TinyRepo, free_port, git

runner = CliRunner()
BANDIT = str(Path(sys.executable).parent / "bandit")
CLEAN = (
    "import subprocess\n"
    "\n"
    "import yaml\n"
    "\n"
    "\n"
    "def run(request):\n"
    '    return subprocess.run(["ls", request.args["dir"]], check=True)\n'
    "\n"
    "\n"
    "def settings(request):\n"
    "    return yaml.safe_load(request.data)\n"
)


@dataclass(frozen=True)
class World:
    repo: TinyRepo
    base: str  # the first commit
    clean: str  # adds a safe helper on top of base
    insecure: str  # shell=True on request data and yaml.load without SafeLoader, on top of clean
    scans: dict[str, Path]  # commit → bandit's SARIF of its checkout
    data: Path


def scan_checkout(repo: TinyRepo, sha: str, out: Path) -> Path:
    """bandit on a clean checkout of one commit, as a CI job scans the base and the head."""
    tree = out.parent / f"checkout-{sha[:12]}"
    git(repo.path, "worktree", "add", "-q", "--detach", str(tree), sha)
    proc = subprocess.run(
        [BANDIT, "-q", "-r", ".", "-f", "sarif", "-o", str(out)], cwd=tree, capture_output=True, text=True
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: bandit found something
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The repository, bandit's scans of its three commits, and an awo data root and policy of its own: the
    on_error gate lets an unscored change through (no model is trained here) so what the findings do to the
    gate shows, and the user running the tests may override and lift blocks."""
    root = tmp_path_factory.mktemp("security")
    repo = TinyRepo(root / "shop")
    repo.write("app/handler.py", CLEAN.split("\n\n\ndef settings")[0] + "\n")
    repo.write("README.md", "# shop\n")
    base = repo.commit("Run a listing for a request", at=1_700_000_000)
    repo.write("app/handler.py", CLEAN)
    clean = repo.commit("Read settings from the request with the safe loader", at=1_700_100_000)
    repo.write(
        "app/handler.py",
        CLEAN
        + "\n\ndef run_shell(request):\n"
        + '    return subprocess.call(request.args["cmd"], shell=True)\n'
        + "\n\ndef load_config(request):\n"
        + "    return yaml.load(request.data)\n",
    )
    insecure = repo.commit("Let operators run a command and load full YAML configs", at=1_700_200_000)
    scans = {sha: scan_checkout(repo, sha, root / f"{sha[:12]}.sarif") for sha in (base, clean, insecure)}
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    doc["on_error"] = "standard"
    doc["overrides"] = {"allowed": [getpass.getuser()], "may_unblock": [getpass.getuser()]}
    policy = root / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWO_DATA_DIR", str(root / "data"))
        env.setenv("AWO_POLICY", str(policy))
        env.setenv("AWO_RISK_API_URL", f"http://127.0.0.1:{free_port()}")  # unscored at once
        yield World(repo, base, clean, insecure, scans, root / "data" / "shop")


def decide_json(world: World, sha: str, *options: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["decide", "--repo", str(world.repo.path), "--sha", sha, "--json", *options])
    assert result.exit_code in (0, 3, 4), result.output
    return result.exit_code, json.loads(result.stdout[result.stdout.index("{\n") :])


def sarif_options(world: World, head: str, base: str) -> list[str]:
    return ["--sarif", str(world.scans[head]), "--sarif-base", str(world.scans[base])]


def test_an_insecure_change_is_blocked_by_its_new_findings_shown_in_explain_and_the_audit_record(world):
    code, body = decide_json(world, world.insecure, *sarif_options(world, world.insecure, world.clean))
    assert code == 4 and body["gate"] == "block"
    blocking = [r for r in body["reasons"] if r["code"] == "new-high-finding-blocks"]
    assert len(blocking) == 1 and "B602" in blocking[0]["message"] and "Bandit" in blocking[0]["message"]
    shell_line = CLEAN.count("\n") + 4  # the subprocess.call line of the head's handler.py
    assert f"app/handler.py:{shell_line}" in blocking[0]["message"]
    record = audit_log(load_settings()).find(body["decision_id"]).decision
    new = {f["rule_id"]: f for f in record["findings"] if f["status"] == "new"}
    assert set(new) == {"B602", "B506"}  # `import subprocess` (B404) was in the base already
    assert new["B602"]["gate"] == "block" and new["B506"]["gate"] is None  # medium, not a critical service
    explained = runner.invoke(app, ["explain", body["decision_id"]])
    assert explained.exit_code == 0
    assert f"{new['B602']['finding_id']} high Bandit B602 at app/handler.py:{shell_line}" in explained.stdout
    assert "new-high-finding-blocks: at least block" in explained.stdout


def test_a_clean_change_is_not_gated_by_security(world):
    code, body = decide_json(world, world.clean, *sarif_options(world, world.clean, world.base))
    assert code == 0 and body["gate"] == "standard"  # the on_error gate of the unscored change
    security = [r for r in body["reasons"] if r["kind"] == "security"]
    assert [r["code"] for r in security] == ["security-scan"]
    assert "0 new" in security[0]["message"]


def test_a_block_is_lifted_only_by_waiving_the_finding_and_the_record_says_who_and_why(world):
    _, body = decide_json(world, world.insecure, *sarif_options(world, world.insecure, world.clean))
    decision_id = body["decision_id"]
    refused = runner.invoke(app, ["override", decision_id, "--gate", "standard", "--reason", "ship it"])
    assert refused.exit_code == 2 and "require at least block" in refused.output
    finding = next(f["finding_id"] for f in body["findings"] if f["gate"] == "block")
    waived = runner.invoke(
        app, ["override", decision_id, "--waive", finding, "--reason", "only reachable by the on-call"]
    )
    assert waived.exit_code == 0, waived.output
    assert "block → standard" in waived.stdout and finding in waived.stdout
    [entry] = audit_log(load_settings()).find(decision_id).overrides
    assert (entry["who"], entry["waived"], entry["to_gate"]) == (getpass.getuser(), [finding], "standard")
    assert entry["reason"] == "only reachable by the on-call"
    explained = runner.invoke(app, ["explain", decision_id]).stdout
    assert f"(waived {finding}): only reachable by the on-call" in explained and "(waived)" in explained


def test_a_malformed_sarif_file_is_a_one_line_error_and_no_decision_is_recorded(world, tmp_path):
    doc = json.loads(world.scans[world.insecure].read_text())
    doc["runs"][0]["results"][1]["locations"][0]["physicalLocation"]["region"]["startLine"] = "12"
    bad = tmp_path / "bad.sarif"
    bad.write_text(json.dumps(doc))
    log = audit_log(load_settings())
    before = log.verify().records if (world.data.parent / "audit").exists() else 0
    result = runner.invoke(
        app, ["decide", "--repo", str(world.repo.path), "--sha", world.insecure, "--sarif", str(bad)]
    )
    assert result.exit_code == 2
    [line] = [x for x in result.output.splitlines() if x.strip()]
    assert (
        "bad.sarif" in line and "$.runs[0].results[1].locations[0].physicalLocation.region.startLine" in line
    )
    after = log.verify().records if (world.data.parent / "audit").exists() else 0
    assert after == before


def test_findings_ingested_after_the_change_are_used_by_a_later_decision(world):
    stored, counts = ingest_security(world.scans[world.insecure], world.insecure, world.data)
    scan, data = str(world.scans[world.clean]), str(world.data)
    cli = runner.invoke(app, ["ingest", "security", scan, "--sha", world.clean[:12], "--data", data])
    assert cli.exit_code == 0 and f"for {world.clean[:12]}: " in cli.output and "stored" in cli.output
    no_sha = runner.invoke(app, ["ingest", "security", scan, "--data", data])
    assert no_sha.exit_code == 2 and "needs --sha" in no_sha.output
    assert stored.stored == len(read_sarif(world.scans[world.insecure]).findings) == sum(counts.values())
    assert counts["high"] == 1 and counts["medium"] == 1 and stored.replaced == 0
    code, body = decide_json(world, world.insecure)
    assert code == 4
    assert {f["rule_id"] for f in body["findings"] if f["status"] == "new"} == {"B602", "B506"}
    assert any("stored for" in r["message"] for r in body["reasons"] if r["code"] == "security-scan")
