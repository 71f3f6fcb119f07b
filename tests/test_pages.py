"""The decisions page (agents.pages) through a real client against the agents service: log-in cookie,
pending decisions from a real audit log, approve and override through engine.override, CSRF and scopes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from agents.assemble import ChangeRef
from agents.context import Risk, RiskDriver
from agents.engine import audit_log, decide_change, policy_of
from agents.pages import pending_decisions, recent_rollouts
from agents.policy import DEFAULT_POLICY
from agents.service import create_agent_app
from features.settings import ApiToken, Settings, load_settings
from serving.auth import digest
from tests.conftest import T0, TinyRepo

APPROVER, LEAD, VIEWER, STRANGER = (
    f"awo_{name}_token_0123456789abcdef" for name in ("app", "lead", "view", "x")
)
HOSTILE = '<script>alert("pwned")</script>'


class FixedRiskScorer:
    """The in-memory twin of the risk scorer (agents.assemble.RiskScorer): one fixed probability and its
    drivers. The model is not what these tests are about, and the real scorer's empty MLflow registry
    costs half a minute to create."""

    def __init__(self, probability: float, feature: str = "la") -> None:
        self.probability = probability
        self.feature = feature

    def score_mined(self, repo: str, sha: str) -> Risk | None:
        return None

    def score_metrics(self, repo: str, metrics: dict[str, float]) -> Risk:
        driver = RiskDriver(feature=self.feature, value=metrics.get("la"), contribution=1.25)
        return Risk(
            probability=self.probability, drivers=[driver], model_name="change-risk", model_version="7"
        )


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyRepo, Path, str, str]:
    return mined_repository(tmp_path_factory.mktemp("pages"))


def mined_repository(root: Path) -> tuple[TinyRepo, Path, str, str]:
    """A small repository mined up to `base`, with one unmined change `head` on top of it."""
    from pipelines.mine import mine_repository

    repo = TinyRepo(root / "repo")
    repo.lines("app/core.py", 30)
    repo.commit("Start the app", at=T0)
    repo.lines("app/api.py", 12)
    base = repo.commit("Add the API", at=T0 + 3600)
    mine_repository(repo.path, load_settings(data_dir=root / "data"), root / "data" / "demo")
    repo.lines("app/core.py", 60, tag="changed")
    repo.write("db/migrations/0001_users.sql", "CREATE TABLE users(id int);\n")
    head = repo.commit("Rework the core and add a migration", at=T0 + 7200)
    return repo, root / "data", base, head


def service_settings(data_dir: Path, tmp_path: Path) -> Settings:
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["overrides"] = {"allowed": ["approver", "lead"], "may_unblock": ["lead"]}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    tokens = [
        ApiToken(name="approver", sha256=digest(APPROVER), scopes=["decisions:read", "decisions:approve"]),
        ApiToken(name="lead", sha256=digest(LEAD), scopes=["decisions:approve"]),
        ApiToken(name="viewer", sha256=digest(VIEWER), scopes=["decisions:read", "decisions:override"]),
        ApiToken(name="stranger", sha256=digest(STRANGER), scopes=["decisions:approve"]),
    ]
    return load_settings(data_dir=tmp_path / "data", policy=policy_file, api_tokens=tokens)


def decide(settings: Settings, mined, probability: float, feature: str = "la") -> tuple[str, str]:
    repo, _data, base, head = mined
    ref = ChangeRef(repo_path=repo.path, repo="demo", base=base, head=head, tables=mined[1] / "demo")
    recorded = decide_change(ref, settings, policy_of(settings), scorer=FixedRiskScorer(probability, feature))
    assert recorded.decision.decision_id is not None
    return recorded.decision.decision_id, recorded.decision.gate


@pytest.fixture
def service(mined, tmp_path):
    settings = service_settings(mined[1], tmp_path)
    review_id, review_gate = decide(settings, mined, 0.5)
    block_id, block_gate = decide(settings, mined, 0.95, feature=HOSTILE)
    assert (review_gate, block_gate) == ("senior_review", "block")
    return TestClient(create_agent_app(settings)), settings, review_id, block_id


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def log_in(client: TestClient, token: str) -> str:
    """Logs in; returns the session's CSRF token (from the first page's forms)."""
    form = client.get("/ui/login")
    response = client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": token})
    assert response.status_code == 200 and "Pending decisions" in response.text, response.text
    return csrf_of(response.text)


def overrides_in_log(settings: Settings) -> list[dict]:
    return [r for r in audit_log(settings).records() if r["kind"] == "override"]


def test_log_in_exchanges_the_token_for_an_http_only_same_site_strict_session_cookie(service):
    client, _settings, _review, _block = service
    form = client.get("/ui/login")
    response = client.post(
        "/ui/login", data={"csrf": csrf_of(form.text), "token": APPROVER}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/decisions"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("awo_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
    assert "secure" not in attributes  # plain http here; over https it is set (next test)
    assert APPROVER not in cookie


def test_the_session_cookie_is_secure_when_served_over_https(service):
    _client, settings, _review, _block = service
    client = TestClient(create_agent_app(settings), base_url="https://testserver")
    form = client.get("/ui/login")
    response = client.post(
        "/ui/login", data={"csrf": csrf_of(form.text), "token": APPROVER}, follow_redirects=False
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("awo_session="))
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


def test_unknown_tokens_and_forged_login_forms_get_no_session(service):
    client, _settings, _review, _block = service
    form = client.get("/ui/login")
    wrong = client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": "awo_not_a_token"})
    assert wrong.status_code == 401 and "unknown token" in wrong.text
    forged = TestClient(client.app).post("/ui/login", data={"csrf": "guess", "token": APPROVER})
    assert forged.status_code == 403
    assert client.get("/ui/decisions", follow_redirects=False).headers["location"] == "/ui/login"


def test_pending_page_lists_the_senior_review_and_block_decisions_with_their_plans(service):
    client, _settings, review_id, block_id = service
    log_in(client, APPROVER)
    listing = client.get("/ui/decisions").text
    assert review_id in listing and block_id in listing
    assert "senior_review" in listing and "block" in listing
    page = client.get(f"/ui/decisions/{review_id}").text
    assert "Explanation" in page and f"Decision {review_id}" in page and "Final gate: senior_review" in page
    assert "Risk drivers" in page and "+1.250" in page  # the scorer's driver and its contribution
    assert "Test plan" in page and "integration" in page  # a suite the policy schedules for this band
    assert "Rollout plan" in page and ("app → db" in page or "db → app" in page)
    assert 'id="approve"' in page and 'id="override"' in page


def test_approve_and_override_are_recorded_in_the_audit_log_under_the_token_name(service):
    client, settings, review_id, block_id = service
    csrf = log_in(client, APPROVER)
    approved = client.post(
        f"/ui/decisions/{review_id}/approve", data={"csrf": csrf, "reason": "read the migration, fine"}
    )
    assert approved.status_code == 200 and "approval recorded" in approved.text
    lead = TestClient(client.app)
    csrf_lead = log_in(lead, LEAD)
    lifted = lead.post(
        f"/ui/decisions/{block_id}/override",
        data={"csrf": csrf_lead, "gate": "senior_review", "reason": "the freeze ended"},
    )
    assert lifted.status_code == 200, lifted.text
    recorded = overrides_in_log(settings)
    assert [(r["decision_id"], r["who"], r["from_gate"], r["to_gate"]) for r in recorded] == [
        (review_id, "approver", "senior_review", "senior_review"),
        (block_id, "lead", "block", "senior_review"),
    ]
    assert recorded[0]["reason"] == "approved: read the migration, fine"
    assert pending_decisions(audit_log(settings).records()) == []
    assert "No decision waits" in client.get("/ui/decisions").text
    assert audit_log(settings).verify().ok


def test_a_missing_or_wrong_csrf_token_is_refused_and_nothing_is_recorded(service):
    client, settings, review_id, _block = service
    csrf = log_in(client, APPROVER)
    missing = client.post(f"/ui/decisions/{review_id}/approve", data={"reason": "ok"})
    wrong = client.post(
        f"/ui/decisions/{review_id}/override",
        data={"csrf": csrf[:-2] + "xx", "gate": "standard", "reason": "ok"},
    )
    other_session = log_in(TestClient(client.app), APPROVER)  # a valid token of another session
    crossed = client.post(f"/ui/decisions/{review_id}/approve", data={"csrf": other_session, "reason": "ok"})
    assert (missing.status_code, wrong.status_code, crossed.status_code) == (403, 403, 403)
    assert overrides_in_log(settings) == []


def test_a_token_without_decisions_approve_reads_but_may_not_act(service):
    client, settings, review_id, _block = service
    csrf = log_in(client, VIEWER)  # decisions:override is the API's scope, not the page's
    page = client.get(f"/ui/decisions/{review_id}").text
    assert "Read only" in page and 'id="approve"' not in page
    refused = client.post(f"/ui/decisions/{review_id}/approve", data={"csrf": csrf, "reason": "ok"})
    assert refused.status_code == 403 and "decisions:approve" in refused.text
    assert overrides_in_log(settings) == []


def test_the_policy_still_names_who_may_override_and_who_may_lift_a_block(service):
    client, settings, review_id, block_id = service
    csrf = log_in(client, STRANGER)  # has the scope, but the policy does not name it
    refused = client.post(
        f"/ui/decisions/{review_id}/override", data={"csrf": csrf, "gate": "standard", "reason": "trust me"}
    )
    assert refused.status_code == 403 and "may not override" in refused.text
    approver = TestClient(client.app)
    csrf = log_in(approver, APPROVER)  # named in overrides.allowed, not in may_unblock
    unblock = approver.post(
        f"/ui/decisions/{block_id}/override", data={"csrf": csrf, "gate": "standard", "reason": "ship it"}
    )
    assert unblock.status_code == 403 and "may not lift a block" in unblock.text
    no_reason = approver.post(f"/ui/decisions/{review_id}/approve", data={"csrf": csrf, "reason": "  "})
    assert no_reason.status_code == 403 and "needs a reason" in no_reason.text
    assert overrides_in_log(settings) == []


def test_values_with_html_in_them_are_escaped(service):
    client, _settings, review_id, block_id = service
    csrf = log_in(client, LEAD)
    client.post(
        f"/ui/decisions/{review_id}/override", data={"csrf": csrf, "gate": "block", "reason": HOSTILE}
    )
    for path in (f"/ui/decisions/{block_id}", f"/ui/decisions/{review_id}", "/ui/audit"):
        page = client.get(path).text
        assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in client.get("/ui/audit").text


def test_the_audit_page_shows_the_chain_status_and_pages_the_records(service):
    client, settings, review_id, _block = service
    log = audit_log(settings)
    for n in range(55):  # more than one page of records
        log.append(
            {"kind": "plan_paused", "decision_id": review_id, "plan_id": f"P-{n}", "task": "t", "why": "x"}
        )
    log_in(client, VIEWER)
    first = client.get("/ui/audit").text
    assert "Chain verifies: 57 records" in first and "Page 1 of 2" in first and "?page=2" in first
    second = client.get("/ui/audit?page=2").text
    assert "Page 2 of 2" in second and "<td>0</td>" in second  # the oldest record, seq 0
    (settings.data_dir / "audit" / "decisions.jsonl").write_bytes(
        (settings.data_dir / "audit" / "decisions.jsonl")
        .read_bytes()
        .replace(b'"gate":"block"', b'"gate":"fast"')
    )
    assert "Chain does NOT verify" in client.get("/ui/audit").text


def test_the_rollouts_page_shows_each_rollout_with_its_judge_verdicts(service):
    client, settings, review_id, _block = service
    log = audit_log(settings)
    base = {"decision_id": review_id, "plan_id": "P-1"}
    log.append({**base, "kind": "plan_paused", "task": "canary-app", "why": "analysis inconclusive"})
    verdict = {"action": "rollback", "why": "error_rate worse than the baseline (Mann-Whitney p=0.001)"}
    log.append(
        {**base, "kind": "canary_analysis", "task": "canary-app", "action": "rollback", "verdicts": [verdict]}
    )
    log.append({**base, "kind": "plan_run", "goal": "deploy app", "outcome": "rolled_back", "tasks": {}})
    views = recent_rollouts(log.records())
    assert [(v.plan_id, v.outcome, len(v.analyses)) for v in views] == [("P-1", "rolled_back", 1)]
    log_in(client, VIEWER)
    page = client.get("/ui/rollouts").text
    assert "P-1" in page and "rolled_back" in page and "<b>rollback</b>" in page and "Mann-Whitney" in page


def test_log_out_ends_the_session(service):
    client, _settings, _review, _block = service
    csrf = log_in(client, VIEWER)
    assert client.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    client.post("/ui/logout", data={"csrf": csrf})
    assert client.get("/ui/decisions", follow_redirects=False).status_code == 303
