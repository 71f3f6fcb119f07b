"""SARIF 2.1.0 as the gate reads it, on bandit's real output: parsing, validation errors that name the file
and the JSON path, finding identity across edits, new against the base, severity by the policy, placement on
the change's added lines, the gate decide() sets, the LLM guardrail and the findings store."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.assemble import changed_lines
from agents.context import ChangeContext, ChangedFile, Risk
from agents.decision import decide
from agents.policy import load_policy
from agents.reasoning import Proposal, verify
from agents.security import (
    Finding,
    SarifError,
    SecurityScan,
    added_line_ranges,
    assess_findings,
    on_changed_line,
    parse_sarif,
    parse_sarif_text,
    severity_of,
    store_findings,
    stored_findings,
)
from agents.vocabulary import gate_level
from features.topology import Topology
from tests.conftest import TinyRepo, git

POLICY = load_policy()
MONDAY_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BANDIT = str(Path(sys.executable).parent / "bandit")
INSECURE = (
    "import subprocess\n"
    "import yaml\n"
    "\n"
    "\n"
    "def run(request):\n"
    '    cmd = request.args["cmd"]\n'
    "    subprocess.call(cmd, shell=True)\n"
    "    return yaml.load(request.data)\n"
)


def bandit_scan(folder: Path) -> dict[str, Any]:
    """bandit's SARIF of a folder, as the real scanner writes it (exit 1 means it found something)."""
    out = folder.parent / f"{folder.name}.sarif"
    proc = subprocess.run(
        [BANDIT, "-q", "-r", ".", "-f", "sarif", "-o", str(out)], cwd=folder, capture_output=True, text=True
    )
    assert proc.returncode in (0, 1), proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


@pytest.fixture(scope="module")
def bandit_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("scan") / "app"
    folder.mkdir()
    (folder / "handler.py").write_text(INSECURE)
    return bandit_scan(folder)


def by_rule(findings: list[Finding]) -> dict[str, Finding]:
    return {f.rule_id: f for f in findings}


def test_bandits_sarif_gives_each_result_with_rule_level_place_snippet_and_tool_severity(bandit_doc):
    report = parse_sarif(bandit_doc, "scan.sarif")
    assert report.tools == ["Bandit"]
    found = by_rule(report.findings)
    assert set(found) == {"B404", "B602", "B506"}
    shell = found["B602"]
    assert (shell.level, shell.path, shell.start_line, shell.tool_severity) == (
        "error",
        "handler.py",
        7,
        "HIGH",
    )
    assert shell.rule_name == "subprocess_popen_with_shell_equals_true"
    assert "shell=True" in shell.snippet
    # bandit writes no level for a medium issue: SARIF's default level is warning
    assert found["B506"].level == "warning" and found["B506"].start_line == 8
    assert len({f.finding_id for f in report.findings}) == 3


def _set(doc: dict, path: list[Any], value: Any) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
REGION = ["runs", 0, "results", 1, "locations", 0, "physicalLocation", "region"]


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (
            [*REGION, "startLine"],
            "7",
            "$.runs[0].results[1].locations[0].physicalLocation.region.startLine: not an integer",
        ),
        ([*REGION, "startLine"], 0, "region.startLine: 0 is below 1"),
        (["version"], "2.0.0", "$.version: '2.0.0' is not '2.1.0'"),
        (["runs"], _DELETE, "$.runs: missing"),
        (["runs", 0, "tool", "driver", "name"], _DELETE, "$.runs[0].tool.driver.name: missing"),
        (["runs", 0, "results", 2, "level"], "fatal", "$.runs[0].results[2].level: 'fatal' is not"),
        (["runs", 0, "results", 0, "ruleIndex"], 9, "$.runs[0].results[0].ruleIndex: 9 is past the 3 rules"),
        (["runs", 0, "results", 0, "message"], "text", "$.runs[0].results[0].message: not an object"),
        (["runs", 0, "results", 1, "partialFingerprints"], {"h": 3}, "partialFingerprints.h: not a string"),
        (
            ["runs", 0, "tool", "driver", "rules", 1, "properties", "security-severity"],
            "very high",
            "$.runs[0].tool.driver.rules[1].properties.security-severity: 'very high' is not a score",
        ),
    ],
)
def test_a_malformed_file_is_one_error_naming_the_file_and_the_json_path(bandit_doc, path, value, named):
    with pytest.raises(SarifError) as caught:
        parse_sarif(_set(bandit_doc, path, value), "scan.sarif")
    message = str(caught.value)
    assert message.startswith("scan.sarif: $.") and named in message and "\n" not in message


def test_text_that_is_not_json_names_the_file_and_position():
    with pytest.raises(SarifError, match=r"^scan\.sarif: not JSON \(line 1, column 2"):
        parse_sarif_text("{runs: []}", "scan.sarif")


def _finding(bandit_doc: dict, rule: str, **changes: Any) -> dict:
    """The bandit result of a rule, with fields changed as a later scan would see them."""
    doc = copy.deepcopy(bandit_doc)
    [result] = [r for r in doc["runs"][0]["results"] if r["ruleId"] == rule]
    region = result["locations"][0]["physicalLocation"]["region"]
    for key, value in changes.items():
        if key == "snippet":
            region["snippet"]["text"] = value
        elif key == "line":
            region["startLine"] = region["endLine"] = value
        else:
            result[key] = value
    doc["runs"][0]["results"] = [result]
    return doc


def test_a_finding_moved_down_or_reindented_by_an_edit_keeps_its_identity(bandit_doc):
    base = parse_sarif(_finding(bandit_doc, "B602"), "base").findings
    moved = parse_sarif(
        _finding(bandit_doc, "B602", line=40, snippet="        subprocess.call(cmd,   shell=True)\n"), "head"
    ).findings
    changed = parse_sarif(
        _finding(bandit_doc, "B602", snippet="    subprocess.call(user_cmd, shell=True)\n"), "head"
    ).findings
    assert moved[0].finding_id == base[0].finding_id
    [a] = assess_findings(moved, base, {}, POLICY.security, lambda p: "app")
    assert a.status == "pre-existing"
    [b] = assess_findings(changed, base, {}, POLICY.security, lambda p: "app")
    assert b.status == "new" and changed[0].finding_id != base[0].finding_id


def test_partial_fingerprints_identify_a_finding_even_when_its_snippet_changes(bandit_doc):
    marks = {"primaryLocationLineHash": "3f2a9c1e:1"}
    base = parse_sarif(_finding(bandit_doc, "B602", partialFingerprints=marks), "base").findings
    head = parse_sarif(
        _finding(bandit_doc, "B602", partialFingerprints=marks, snippet="subprocess.call(x, shell=True)"), "h"
    ).findings
    other = parse_sarif(
        _finding(bandit_doc, "B602", partialFingerprints={"primaryLocationLineHash": "77aa:1"}, line=30), "h"
    ).findings
    assert [a.status for a in assess_findings(head, base, {}, POLICY.security, str)] == ["pre-existing"]
    # a different fingerprint with the same snippet is still the same finding by rule + file + snippet
    assert [a.status for a in assess_findings(other, base, {}, POLICY.security, str)] == ["pre-existing"]


def test_a_second_copy_of_a_known_snippet_is_new(bandit_doc):
    base = parse_sarif(_finding(bandit_doc, "B602"), "base").findings
    doc = _finding(bandit_doc, "B602")
    second = copy.deepcopy(doc["runs"][0]["results"][0])
    second["locations"][0]["physicalLocation"]["region"]["startLine"] = 20
    doc["runs"][0]["results"].append(second)
    head = parse_sarif(doc, "head").findings
    assert len({f.finding_id for f in head}) == 2
    statuses = [a.status for a in assess_findings(head, base, {}, POLICY.security, str)]
    assert sorted(statuses) == ["new", "pre-existing"]


@pytest.mark.parametrize(
    ("rule_score", "result_score", "level", "expected"),
    [
        ("9.8", None, "note", "critical"),
        ("7.0", None, "note", "high"),
        ("6.9", None, "error", "medium"),
        (4, None, "error", "medium"),
        ("0.05", None, "error", "info"),
        ("2.0", "9.1", "note", "critical"),  # the result's own score wins over its rule's
        (None, None, "error", "high"),
        (None, None, "warning", "medium"),
        (None, None, "note", "low"),
        (None, None, "none", "info"),
    ],
)
def test_severity_is_the_security_severity_score_else_the_level(
    bandit_doc, rule_score, result_score, level, expected
):
    doc = _finding(bandit_doc, "B602", level=level)
    if rule_score is not None:
        doc["runs"][0]["tool"]["driver"]["rules"][1]["properties"]["security-severity"] = rule_score
    if result_score is not None:
        doc["runs"][0]["results"][0]["properties"]["security-severity"] = result_score
    [finding] = parse_sarif(doc, "s").findings
    assert severity_of(finding, POLICY.security) == expected


def test_the_level_to_severity_map_is_the_policys(bandit_doc):
    [finding] = parse_sarif(_finding(bandit_doc, "B506"), "s").findings  # level warning
    strict = POLICY.security.model_copy(update={"levels": {**POLICY.security.levels, "warning": "high"}})
    assert severity_of(finding, POLICY.security) == "medium" and severity_of(finding, strict) == "high"


def test_the_changed_lines_are_the_heads_added_lines_from_git(tmp_path: Path):
    repo = TinyRepo(tmp_path / "r")
    repo.write("app/handler.py", "def run(request):\n    return 1\n")
    repo.write("README.md", "hello\n")
    repo.commit("base")
    base = git(repo.path, "rev-parse", "HEAD").strip()
    repo.write("app/handler.py", "import yaml\n\n\ndef run(request):\n    return yaml.load(request.data)\n")
    repo.write("app/new.py", "x = 1\ny = 2\n")
    repo.rm("README.md")
    repo.commit("head")
    lines = changed_lines(repo.path, base, "HEAD")
    assert lines == {"app/handler.py": [(1, 3), (5, 5)], "app/new.py": [(1, 2)]}
    assert added_line_ranges("+++ /dev/null\n@@ -1,3 +0,0 @@\n") == {}


def _at(path: str, start: int, end: int | None = None) -> Finding:
    return Finding(
        finding_id="F1", tool="t", rule_id="R", level="error", message="m", path=path, start_line=start,
        end_line=end, keys=("k",),
    )  # fmt: skip


def test_a_finding_is_on_a_changed_line_when_its_region_overlaps_an_added_range():
    changed = {"app/handler.py": [(5, 5), (10, 12)]}
    assert on_changed_line(_at("app/handler.py", 5), changed)
    assert on_changed_line(_at("app/handler.py", 8, 10), changed)  # a region reaching into the range
    assert not on_changed_line(_at("app/handler.py", 6, 9), changed)
    assert not on_changed_line(_at("app/other.py", 5), changed)
    assert on_changed_line(_at("/home/ci/build/app/handler.py", 11), changed)  # an absolute URI


def test_without_a_base_only_findings_on_changed_lines_count_as_new(bandit_doc):
    head = parse_sarif(bandit_doc, "head").findings
    assessed = assess_findings(head, None, {"handler.py": [(7, 7)]}, POLICY.security, lambda p: "app")
    status = {a.finding.rule_id: a.status for a in assessed}
    assert status == {"B602": "new", "B404": "unknown", "B506": "unknown"}


# --- the gate ------------------------------------------------------------------------------------------


TOPOLOGY = Topology.model_validate(
    {
        "services": {
            "payments": {"paths": ["payments/*"], "criticality": "critical"},
            "blog": {"paths": ["blog/*"], "criticality": "low"},
        }
    }
)


def gate_context(bandit_doc: dict, folder: str, changed: dict, base: list[Finding] | None) -> ChangeContext:
    doc = copy.deepcopy(bandit_doc)
    for r in doc["runs"][0]["results"]:
        r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] = f"{folder}/handler.py"
    head = parse_sarif(doc, "head.sarif").findings
    service = folder
    return ChangeContext(
        repo="shop",
        shas=["c" * 40],
        files=[ChangedFile.of(f"{folder}/handler.py", service, 8, 0)],
        services=[service],
        risk=Risk(probability=0.005, model_name="change-risk", model_version="1"),
        topology=TOPOLOGY,
        security=SecurityScan(
            sources=["head.sarif"],
            base_sources=[] if base is None else ["base.sarif"],
            findings=assess_findings(head, base, changed, POLICY.security, lambda p: service),
        ),
        now=MONDAY_10,
    )


def test_a_new_high_finding_on_a_changed_line_blocks_naming_rule_file_line_severity_and_tool(bandit_doc):
    decision = decide(gate_context(bandit_doc, "blog", {"blog/handler.py": [(1, 8)]}, []), POLICY)
    assert decision.gate == "block" and decision.exit_code == 4
    assert decision.gate_without_findings == "fast_track"
    [reason] = [r for r in decision.reasons if r.code == "new-high-finding-blocks"]
    assert reason.kind == "security"
    for part in ("high", "Bandit", "B602", "blog/handler.py:7", "at least block"):
        assert part in reason.message
    [row] = [f for f in decision.findings if f.gate]
    assert (row.rule_id, row.line, row.gating_rule) == ("B602", 7, "new-high-finding-blocks")


def test_a_new_medium_finding_needs_senior_review_only_in_a_critical_service(bandit_doc):
    def medium_only(folder: str) -> str:
        doc = copy.deepcopy(bandit_doc)
        doc["runs"][0]["results"] = [r for r in doc["runs"][0]["results"] if r["ruleId"] == "B506"]
        return decide(gate_context(doc, folder, {f"{folder}/handler.py": [(1, 8)]}, []), POLICY).gate

    assert medium_only("payments") == "senior_review"
    assert medium_only("blog") == "fast_track"


def test_findings_already_in_the_base_or_off_the_changed_lines_are_reported_not_gating(bandit_doc):
    added = {"blog/handler.py": [(1, 8)]}
    scan = gate_context(bandit_doc, "blog", added, None).security
    assert scan is not None
    pre = decide(gate_context(bandit_doc, "blog", added, [a.finding for a in scan.findings]), POLICY)
    assert pre.gate == "fast_track" and {f.status for f in pre.findings} == {"pre-existing"}
    off = decide(gate_context(bandit_doc, "blog", {"blog/handler.py": [(3, 4)]}, []), POLICY)
    assert off.gate == "fast_track" and not any(f.gate for f in off.findings)
    assert {f.rule_id for f in off.findings if f.status == "new"} == {"B602", "B506", "B404"}
    [summary] = [r.message for r in off.reasons if r.code == "security-scan"]
    assert "3 findings, 3 new (0 on changed lines), 0 pre-existing" in summary
    reported = [r.message for r in off.reasons if r.code == "finding-reported"]
    assert len(reported) == 3 and all("reported, not gating" in m for m in reported)


def test_an_llm_proposal_can_neither_waive_a_finding_nor_lower_the_gate_it_set(bandit_doc):
    context = gate_context(bandit_doc, "blog", {"blog/handler.py": [(1, 8)]}, [])
    decision = decide(context, POLICY)
    [row] = [f for f in decision.findings if f.gate]
    proposals = [
        Proposal(kind="waive_finding", finding=row.finding_id, why="test code, not reachable"),
        Proposal(kind="tighten_gate", gate="standard", why="the finding is a false positive"),
    ]
    reviewed, accepted, rejected, fired = verify(proposals, decision, context, POLICY)
    assert reviewed.gate == "block" and accepted == []
    assert {"no_security_waiver", "no_loosening"} <= set(fired)
    assert any(row.finding_id in r["refused"] for r in rejected)


# --- the store -------------------------------------------------------------------------------------------


def test_stored_findings_replace_the_same_tools_findings_of_that_commit_only(bandit_doc, tmp_path: Path):
    report = parse_sarif(bandit_doc, "scan.sarif")
    one = _finding(bandit_doc, "B602")
    first = store_findings(tmp_path, "a" * 40, report)
    store_findings(tmp_path, "b" * 40, report)
    again = store_findings(tmp_path, "a" * 40, parse_sarif(one, "rescan.sarif"))
    assert (first.stored, first.replaced, again.stored, again.replaced) == (3, 0, 1, 3)
    assert [f.rule_id for f in stored_findings(tmp_path, "aaaaaaaa") or []] == ["B602"]
    kept = stored_findings(tmp_path, "b" * 40) or []
    assert sorted(f.finding_id for f in kept) == sorted(f.finding_id for f in report.findings)
    assert (
        kept[0].model_dump()
        == next(f for f in report.findings if f.finding_id == kept[0].finding_id).model_dump()
    )
    assert stored_findings(tmp_path, "c" * 40) is None


_PROPOSALS = st.builds(
    Proposal,
    kind=st.sampled_from(["tighten_gate", "waive_finding", "add_suite", "delay_deploy", "lower_gate"]),
    gate=st.sampled_from([None, "fast_track", "standard", "senior_review", "block"]),
    suite=st.sampled_from([None, "unit", "performance"]),
    delay_hours=st.sampled_from([None, 1, 24]),
    finding=st.sampled_from([None, "F0000000000"]),
)


@given(proposals=st.lists(_PROPOSALS, max_size=8), medium_only=st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_llm_proposal_ever_lowers_a_gate_a_finding_set(bandit_doc, proposals, medium_only):
    doc = copy.deepcopy(bandit_doc)
    if medium_only:
        doc["runs"][0]["results"] = [r for r in doc["runs"][0]["results"] if r["ruleId"] == "B506"]
    context = gate_context(doc, "payments", {"payments/handler.py": [(1, 8)]}, [])
    decision = decide(context, POLICY)
    floor = max((f.gate for f in decision.findings if f.gate), key=gate_level)
    reviewed, _, _, _ = verify(proposals, decision, context, POLICY)
    assert gate_level(reviewed.gate) >= gate_level(floor)
    assert reviewed.gate_without_findings is not None
    assert gate_level(reviewed.gate_without_findings) >= gate_level(
        decision.gate_without_findings or "fast_track"
    )
