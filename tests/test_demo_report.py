"""`awo demo` end to end on a small world: decisions through the risk API equal in-process ones, the canary
with an error spike is judged, rolled back and recorded, retraining learns the failed deployment, the insecure
pull request is blocked by its new bandit finding, and the HTML report is self-contained, escaped and renders
in headless Chromium."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agents.assemble import InProcessScorer
from agents.judge import judge_files, load_template
from features.settings import Settings
from pipelines.cli.demo import canary_metric_files
from tests.conftest import DEMO_SEED, DemoRun, git


def _pull_request(demo_run: DemoRun) -> tuple[str, str]:
    """The demo world's insecure pull request: (its head commit, the file it adds), read from git."""
    from pipelines.demo_world import SECURITY_BRANCH

    repo = demo_run.root / "world" / "repo"
    sha = git(repo, "rev-parse", f"refs/heads/{SECURITY_BRANCH}").strip()
    [added] = git(repo, "diff", "--name-only", "--diff-filter=A", "main", sha).split()
    return sha, added


def _gate_decisions(demo_run: DemoRun) -> list[dict]:
    """The decisions of step 9 (the newest commits of main), without the security step's one."""
    sha, _ = _pull_request(demo_run)
    return [r for r in demo_run.audit() if r["kind"] == "decision" and r["decision"]["shas"] != [sha]]


def test_decisions_made_through_the_risk_api_equal_in_process_ones(demo_run: DemoRun) -> None:
    from agents.assemble import ChangeRef, assemble
    from agents.decision import decide
    from agents.engine import policy_of

    settings = demo_run.settings
    policy = policy_of(settings)
    recorded = _gate_decisions(demo_run)
    assert len(recorded) == 100
    [served] = {r["decision"]["model"]["version"] for r in recorded}
    scorer = _PinnedScorer(settings, served)  # the demo's retrain promoted a newer change-risk since
    for record in recorded:
        over_http = record["decision"]
        ref = ChangeRef(
            repo_path=demo_run.root / "world" / "repo",
            repo="demo",
            sha=over_http["shas"][0],
            tables=demo_run.root / "tables",
        )
        at = datetime.fromisoformat(over_http["decided_at"])
        in_process = decide(assemble(ref, settings, policy, now=at, scorer=scorer), policy)
        # the digest hashes the risk as each scorer delivers it (the API sends the drivers' features only);
        # the audit record keeps the security findings beside the decision (agents.engine.record)
        skip = {"decision_id", "inputs_digest", "llm", "findings"}
        expected = {k: v for k, v in in_process.model_dump(mode="json").items() if k not in skip}
        assert {k: v for k, v in over_http.items() if k not in skip} == expected
        assert record["findings"] == in_process.model_dump(mode="json")["findings"]
    assert sum(r["decision"]["probability"] is not None for r in recorded) == 100


class _PinnedScorer(InProcessScorer):
    """The in-process scorer on the change-risk version the risk API served when it decided, not on
    whichever is champion now."""

    def __init__(self, settings: Settings, version: str) -> None:
        from models.registry import CHAMPION, connect, load_version

        super().__init__(settings)
        connect(settings)
        self._loaded = load_version("change-risk", version, CHAMPION)


def test_the_canary_with_the_error_spike_is_rolled_back_by_the_judges_verdict(demo_run: DemoRun) -> None:
    from agents.rollouts import saved_plan

    plan = saved_plan(demo_run.settings, demo_run.rollout_id())
    [canary] = [t for t in plan.tasks if t.kind == "canary"]
    assert canary.status == "failed" and canary.detail.startswith("analysis at step 1: rollback")
    rollbacks = [t for t in plan.tasks if t.kind == "rollback"]
    assert rollbacks and all(t.status == "succeeded" for t in rollbacks)
    assert plan.task("block").status == "succeeded"
    assert all(t.status == "cancelled" for t in plan.tasks if t.kind in ("promote", "watch"))
    mine = [r for r in demo_run.audit() if r.get("plan_id") == plan.plan_id]
    [analysis] = [r for r in mine if r["kind"] == "canary_analysis"]
    assert analysis["action"] == "rollback"
    intervals = analysis["verdicts"][-1]["intervals"]
    assert [i["verdict"] for i in intervals] == ["pass", "pass", "fail"]  # the spike starts at interval 3
    errors = next(r for r in intervals[-1]["results"] if r["name"] == "error_rate")
    assert intervals[-1]["failed_critical"] == ["error_rate"]
    assert errors["classification"] == "High" and errors["canary"] > 2 * errors["baseline"]
    [finished] = [r for r in mine if r["kind"] == "plan_run"]
    assert finished["outcome"] == "blocked" and finished["approved_by"] in (None, "release-managers")
    feedback = demo_run.settings.data_dir / "feedback"
    deployments = {
        r["environment"]: r
        for r in csv.DictReader((feedback / "deployments.csv").open())
        if plan.plan_id in r["deploy_id"]
    }
    assert deployments["production"]["outcome"] == "rolled-back"  # staging had succeeded before
    assert deployments["production"]["sha"] == plan.goal.ref
    assert deployments["production"]["strategy"] == "canary"
    incidents = list(csv.DictReader((feedback / "incidents.csv").open()))
    assert [i["sha"] for i in incidents] == [plan.goal.ref]


def test_a_healthy_canary_beside_it_is_kept_and_fed_back_as_succeeded(demo_run: DemoRun) -> None:
    from agents.rollouts import saved_plan

    runs = [r for r in demo_run.audit() if r["kind"] == "plan_run"]
    [kept] = [r for r in runs if r["plan_id"] != demo_run.rollout_id()]
    plan = saved_plan(demo_run.settings, str(kept["plan_id"]))
    [canary] = [t for t in plan.tasks if t.kind == "canary"]
    assert kept["outcome"] == "succeeded" and canary.status == "succeeded"
    assert all(t.status != "succeeded" for t in plan.tasks if t.kind == "rollback")
    spiked = saved_plan(demo_run.settings, demo_run.rollout_id())
    assert plan.goal.ref != spiked.goal.ref
    feedback = demo_run.settings.data_dir / "feedback" / "deployments.csv"
    outcomes = {
        r["environment"]: r["outcome"]
        for r in csv.DictReader(feedback.open())
        if plan.plan_id in r["deploy_id"]
    }
    assert outcomes == {"staging": "succeeded", "production": "succeeded"}
    assert "judged on the same traffic without the spike: succeeded" in demo_run.output


def test_the_judge_passes_the_demo_metrics_without_the_spike_and_fails_them_with_it(tmp_path: Path) -> None:
    template = load_template()
    baseline, spiked = canary_metric_files(template, DEMO_SEED)
    _, healthy = canary_metric_files(template, DEMO_SEED, spike=1.0)
    files = {}
    for name, text in (("baseline", baseline), ("spiked", spiked), ("healthy", healthy)):
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_text(text)
    assert judge_files(files["baseline"], files["healthy"])["verdict"] == "pass"
    judged = judge_files(files["baseline"], files["spiked"])
    assert judged["verdict"] == "fail" and judged["intervals"] == 3
    assert judged["failed_critical"] == ["error_rate"]


def test_retraining_learns_the_rolled_back_deployment_and_registers_a_new_version(demo_run: DemoRun) -> None:
    import pandas as pd
    from mlflow import MlflowClient

    from models.registry import connect

    deployments = pd.read_parquet(demo_run.root / "tables" / "deployments.parquet")
    deploy_id = f"awo-{demo_run.rollout_id()}-{_canary_target(demo_run)}"
    fed_back = deployments[deployments["deploy_id"] == deploy_id]
    assert len(fed_back) == 1 and bool(fed_back["failed"].iloc[0])
    connect(demo_run.settings)
    for name in ("deploy-failure", "change-risk"):  # both retrained, each through the promotion gate
        versions = MlflowClient().search_model_versions(f"name='{name}'")
        assert sorted(int(v.version) for v in versions) == [1, 2]  # trained, then retrained on the feedback
        line = _retrain_line(demo_run)
        promoted = f"{name} v2: promoted to champion" in line
        assert promoted or f"{name} v2: champion v1 kept" in line, line
        champion = MlflowClient().get_model_version_by_alias(name, "champion")
        assert str(champion.version) == ("2" if promoted else "1")


def _retrain_line(demo_run: DemoRun) -> str:
    [line] = [x for x in demo_run.output.splitlines() if x.startswith("12. retrain")]
    return line


def _canary_target(demo_run: DemoRun) -> str:
    """`<service>-<environment>` of the demo's canary, from its rollout state."""
    from agents.rollouts import saved_plan

    [canary] = [t for t in saved_plan(demo_run.settings, demo_run.rollout_id()).tasks if t.kind == "canary"]
    return f"{canary.service}-{canary.environment}"


class _Page(HTMLParser):
    """Tags as opened and closed (void elements excepted), images' sources, SVGs, table ids and text."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.unbalanced: list[str] = []
        self.images: list[str] = []
        self.svgs = 0
        self.tables: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag == "svg":
            self.svgs += 1
        if tag == "table" and values.get("id"):
            self.tables.append(str(values["id"]))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.unbalanced.append(tag)
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_report_is_one_valid_page_with_inline_plots_and_the_decisions_reasons(demo_run: DemoRun) -> None:
    report = demo_run.root / "report.html"
    page = report.read_text()
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>")
    assert parser.unbalanced == [] and parser.stack == []
    assert len(parser.images) >= 2 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert parser.svgs >= 1 and "decisions" in parser.tables
    assert not re.search(r"\b(?:src|href)=\"(?:https?:)?//", page)  # nothing loaded from elsewhere
    text = "".join(parser.text)
    decisions = [r["decision"] for r in _gate_decisions(demo_run)]
    riskiest = max(decisions, key=lambda d: d["probability"])
    assert all(reason["message"] in text for reason in riskiest["reasons"])
    assert "rolled back: canary:" in text and "error_rate" in text


def test_the_insecure_pull_request_is_blocked_by_its_new_bandit_finding_in_the_audit_log_and_report(
    demo_run: DemoRun,
) -> None:
    from agents.security import read_sarif

    sha, added = _pull_request(demo_run)
    [record] = [r for r in demo_run.audit() if r["kind"] == "decision" and r["decision"]["shas"] == [sha]]
    decision = record["decision"]
    assert decision["gate"] == "block"
    source = git(demo_run.root / "world" / "repo", "show", f"{sha}:{added}").splitlines()
    shell_line = next(n for n, line in enumerate(source, start=1) if "shell=True" in line)
    [blocking] = [f for f in record["findings"] if f["gate"] == "block"]
    assert (blocking["rule_id"], blocking["status"], blocking["path"]) == ("B602", "new", added)
    assert blocking["line"] == shell_line and blocking["on_changed_line"]
    [reason] = [r for r in decision["reasons"] if r["code"] == blocking["gating_rule"]]
    assert reason["kind"] == "security" and "B602" in reason["message"]
    assert f"{added}:{shell_line}" in reason["message"]
    # the scans behind it: the head's finding is absent from the base's scan
    scans = demo_run.root / "security"
    head_rules = {f.rule_id for f in read_sarif(scans / "head.sarif").findings}
    base_rules = {f.rule_id for f in read_sarif(scans / "base.sarif").findings}
    assert "B602" in head_rules and "B602" not in base_rules
    # printed as the blocked decision, and in the report with its reasons and findings
    step = demo_run.output[demo_run.output.index("13. security gate") :]
    assert f"BLOCK  demo {sha[:12]}" in step and decision["decision_id"] in step
    parser = _Page()
    parser.feed((demo_run.root / "report.html").read_text())
    text = "".join(parser.text)
    section = text[text.index("Security gate") :]
    assert decision["decision_id"] in section and blocking["finding_id"] in section
    assert all(r["message"] in section for r in decision["reasons"])


def test_the_security_step_is_skipped_and_reported_when_bandit_is_missing(
    demo_run: DemoRun, tmp_path: Path
) -> None:
    from pipelines.cli.demo import _demo_security, bandit_command
    from pipelines.demo_world import PlantedChange, WorldSummary
    from pipelines.report import DemoReport, render_html, terminal_lines

    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or subprocess.run([python, "-c", "import bandit"], capture_output=True).returncode == 0:
        pytest.skip("no system Python without bandit to look for it with")
    assert bandit_command(python) is None
    assert bandit_command() is not None  # the project's own interpreter has it (dev group)
    sha, added = _pull_request(demo_run)
    repo = demo_run.root / "world" / "repo"
    change = PlantedChange("operator-tools", sha, git(repo, "rev-parse", "main").strip(), "gateway", added)
    world = WorldSummary(
        repo, demo_run.root / "world" / "truth.parquet", 0, 0, 0, 0, 0, 0, security_change=change
    )
    tables = demo_run.root / "tables"
    why = _demo_security(demo_run.settings, world, tables, None, tmp_path, None)  # type: ignore[arg-type]
    assert isinstance(why, str) and "bandit is not installed" in why
    assert list(tmp_path.iterdir()) == []  # nothing scanned, nothing decided
    report = DemoReport(
        generated_at=datetime(2026, 1, 1),
        world={},
        steps=[],
        models=[],
        promotion=[],
        api="",
        gates={},
        decisions=[],
        decisions_total=0,
        rollout=None,
        retrain=None,
        security_skipped=why,
    )
    assert f"security gate: skipped: {why}" in terminal_lines(report)
    assert "<h2>Security gate</h2>" in render_html(report)


def test_every_value_in_the_report_is_escaped() -> None:
    from datetime import UTC

    from pipelines.report import DecisionRow, DemoReport, FindingRow, SecurityGateSummary, render_html

    hostile = '<script>alert("x")</script>'
    report = DemoReport(
        generated_at=datetime(2026, 1, 1, tzinfo=UTC),
        world={"name": hostile},
        steps=[],
        models=[],
        promotion=[hostile],
        api=hostile,
        gates={"block": 1},
        decisions=[DecisionRow(hostile, [hostile], "block", "critical", 0.9, [hostile], "canary")],
        decisions_total=1,
        rollout=None,
        retrain=None,
    )
    page = render_html(report)
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 5
    finding = FindingRow(hostile, hostile, "high", "new", hostile, "block", hostile)
    texts = (hostile,) * 5
    security = SecurityGateSummary(*texts, 1.0, hostile, "block", [hostile], [finding])
    page = render_html(replace(report, security=security))
    assert "<script" not in page
    section = page[page.index("<h2>Security gate</h2>") :]
    assert section.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 9  # sha and base cut to 12


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`; `make services`)")
    return found


def test_the_report_renders_in_headless_chromium_with_its_plots(demo_run: DemoRun, tmp_path: Path) -> None:
    import matplotlib.image

    chromium = _chromium()
    url = (demo_run.root / "report.html").resolve().as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280)
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert '<table id="decisions">' in dom and "<svg" in dom
    assert dom.count('<img alt="') >= 2
