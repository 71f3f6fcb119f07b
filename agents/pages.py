"""The decisions page for people in the loop (`/ui/...` on the agents service): server-rendered HTML, no
JavaScript. A token is exchanged for a session cookie; approvals and overrides go through
`agents.engine.override`, as `awo override` does, recorded under the token's name."""

from __future__ import annotations

import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, cast
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from agents.audit import AuditLog, AuditLogDamaged, DecisionHistory, NotFound
from agents.engine import OverrideRefused, current_gate, explain_text, override
from agents.vocabulary import GATES, Gate
from features.settings import ApiToken, Settings
from serving.admission import AdmittedRoute
from serving.auth import authorize

APPROVE, READ = "decisions:approve", "decisions:read"
SESSION_COOKIE, LOGIN_COOKIE = "awo_session", "awo_login_csrf"
PENDING_GATES = ("senior_review", "block")
DECISION_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")  # a ULID, as the audit log writes them
PAGE_SIZE = 50
SESSION_TTL_S = 8 * 3600.0
APPROVED_PREFIX = "approved: "  # an approval is an override that keeps the gate; its reason says so
# No script runs on these pages; forms post only here; no framing (clickjacking on the approve button).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- sessions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A logged-in token: its digest (looked up in the settings on every request, so a token removed from
    the configuration ends its sessions), the CSRF token of its forms and when it expires."""

    token_sha256: str
    csrf: str
    expires_at: float


class SessionStore:
    """Sessions by random id, in memory: a restart logs everyone out, which is the safe direction."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, token: ApiToken, now: float) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(token.sha256, secrets.token_urlsafe(32), now + self.ttl_s)
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str, now: float) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= now:
                del self._sessions[session_id]
                return None
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


def same_secret(presented: str | None, expected: str) -> bool:
    """CSRF tokens compared in constant time; a missing one never matches."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def form_fields(body: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as one value per field (a repeated field: the first)."""
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return {}
    return {key: values[0] for key, values in parsed.items()}


# -- what the pages show: pure functions of the audit records ---------------------------------------------


@dataclass(frozen=True)
class PendingDecision:
    history: DecisionHistory

    @property
    def decision_id(self) -> str:
        return str(self.history.decision["decision_id"])

    @property
    def gate(self) -> str:
        return str(self.history.decision["decision"]["gate"])


def pending_decisions(records: Iterable[Mapping[str, Any]]) -> list[PendingDecision]:
    """Decisions gated `senior_review` or `block` that no person has approved or overridden since,
    newest first."""
    decisions: dict[str, dict[str, Any]] = {}
    handled: set[str] = set()
    for record in records:
        kind, decision_id = record.get("kind"), record.get("decision_id")
        if not isinstance(decision_id, str):
            continue
        if kind == "decision" and decision_id not in decisions:
            decisions[decision_id] = dict(record)
        elif kind == "override":
            handled.add(decision_id)
    pending = [
        PendingDecision(DecisionHistory(record))
        for decision_id, record in decisions.items()
        if decision_id not in handled and record.get("decision", {}).get("gate") in PENDING_GATES
    ]
    return pending[::-1]


def is_approval(override_record: Mapping[str, Any]) -> bool:
    return bool(override_record.get("from_gate") == override_record.get("to_gate"))


@dataclass(frozen=True)
class RolloutView:
    """A rollout as the audit log tells it: the decision it carries out, its runs and the judge's verdicts."""

    plan_id: str
    decision_id: str
    goal: str
    outcome: str
    at: str
    analyses: list[dict[str, Any]]


def recent_rollouts(records: Iterable[Mapping[str, Any]], limit: int = PAGE_SIZE) -> list[RolloutView]:
    """Rollouts (plan runs, pauses and canary analyses in the audit log) grouped by plan, newest first;
    the outcome is that of the newest run or pause."""
    views: dict[str, dict[str, Any]] = {}
    for record in records:
        kind = record.get("kind")
        plan_id = record.get("plan_id")
        if kind not in ("plan_run", "plan_paused", "canary_analysis") or not isinstance(plan_id, str):
            continue
        view = views.pop(plan_id, None) or {
            "decision_id": str(record.get("decision_id", "")),
            "goal": "",
            "outcome": "",
            "analyses": [],
        }
        view["at"] = str(record.get("recorded_at", ""))
        if kind == "plan_run":
            view["goal"], view["outcome"] = str(record.get("goal", "")), str(record.get("outcome", ""))
        elif kind == "plan_paused":
            view["outcome"] = f"paused at {record.get('task')}: {record.get('why')}"
        else:
            view["analyses"].append(dict(record))
        views[plan_id] = view  # re-inserted: the dict's order is the order of the newest record
    newest = list(views.items())[::-1][:limit]
    return [RolloutView(plan_id, **view) for plan_id, view in newest]


# -- HTML -------------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto}
header form{display:inline}main{padding:1rem 1.4rem;max-width:70rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.4rem 0 1rem}
th,td{border:1px solid #d8dce3;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f5}pre{background:#fff;border:1px solid #d8dce3;padding:.6rem;white-space:pre-wrap}
.gate{font-weight:600;padding:.05rem .45rem;border-radius:.3rem}
.block{background:#fbd5d5;color:#8a1010}.senior_review{background:#ffe9b8;color:#6b4a00}
.standard{background:#dbe8ff}.fast_track{background:#d7f5dd}
.error{background:#fbd5d5;border:1px solid #d08080;padding:.5rem}.ok{background:#d7f5dd;padding:.5rem}
form.act{background:#fff;border:1px solid #d8dce3;padding:.7rem;margin:.5rem 0;max-width:40rem}
textarea{width:100%;min-height:3.5rem}button{padding:.3rem .9rem}
"""


def layout(title: str, body: str, who: str | None = None, csrf: str | None = None) -> str:
    nav = ""
    if who is not None and csrf is not None:
        nav = (
            '<a href="/ui/decisions">Pending decisions</a><a href="/ui/audit">Audit log</a>'
            f'<a href="/ui/rollouts">Rollouts</a><span class="who">signed in as <b>{esc(who)}</b> '
            f'<form method="post" action="/ui/logout">{csrf_field(csrf)}<button>Log out</button></form>'
            "</span>"
        )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · awo</title>'
        f"<style>{STYLE}</style></head><body><header><b>awo</b>{nav}</header>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


def gate_badge(gate: Any) -> str:
    name = str(gate)
    css = name if name in GATES else ""
    return f'<span class="gate {css}">{esc(name)}</span>'


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """A table whose cells are already HTML (escape the values before)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _probability(d: Mapping[str, Any]) -> str:
    p = d.get("probability")
    return "not scored" if p is None else f"{float(p):.3f}"


def decisions_list_html(pending: list[PendingDecision]) -> str:
    if not pending:
        return '<p class="ok">No decision waits for a person.</p>'
    rows = []
    for item in pending:
        d = item.history.decision["decision"]
        reasons = "<br>".join(esc(r.get("message")) for r in d.get("reasons", [])[:3])
        rows.append(
            [
                f'<a href="/ui/decisions/{esc(item.decision_id)}">{esc(item.decision_id)}</a>',
                gate_badge(d.get("gate")),
                esc(d.get("repo")) + " " + esc(", ".join(s[:12] for s in d.get("shas", []))),
                esc(", ".join(d.get("services", [])) or "-"),
                esc(_probability(d)),
                reasons,
                esc(d.get("decided_at")),
            ]
        )
    return table(["Decision", "Gate", "Change", "Services", "Risk", "Why", "Decided"], rows)


def decision_html(history: DecisionHistory, csrf: str, may_act: bool, message: str = "") -> str:
    record = history.decision
    d = record["decision"]
    decision_id = str(record["decision_id"])
    gate = current_gate(record, history.overrides)
    parts = [message]
    parts.append(
        f"<p>Gate now: {gate_badge(gate)} (decided {gate_badge(d.get('gate'))}, risk {esc(d.get('band'))} "
        f"{esc(_probability(d))})</p>"
    )
    parts.append(f"<h2>Explanation</h2><pre>{esc(explain_text(history))}</pre>")
    drivers = (record.get("scores") or {}).get("drivers") or []
    parts.append("<h2>Risk drivers</h2>")
    parts.append(
        table(
            ["Feature", "Value", "Contribution (log-odds)"],
            [
                [esc(x.get("feature")), esc(x.get("value")), esc(f"{x.get('contribution', 0):+.3f}")]
                for x in drivers
            ],
        )
        if drivers
        else "<p>No drivers (the change was not scored).</p>"
    )
    plan = d.get("test_plan", {})
    parts.append(
        f"<h2>Test plan</h2><p>{len(plan.get('tests', []))} tests planned, "
        f"{esc(round(plan.get('planned_s', 0)))} s of a {esc(round(plan.get('budget_s', 0)))} s budget; "
        f"{esc(plan.get('skipped_over_budget', 0))} left out by the budget.</p>"
    )
    parts.append(
        table(
            ["Suite", "Resource", "Mandatory", "Why"],
            [
                [
                    esc(s.get("name")),
                    esc(s.get("resource")),
                    esc("yes" if s.get("mandatory") else "no"),
                    esc("; ".join(s.get("why", []))),
                ]
                for s in plan.get("suites", [])
            ],
        )
    )
    if plan.get("checks"):
        parts.append(
            table(
                ["Check", "Kind", "Blocking", "Why"],
                [
                    [
                        esc(c.get("name")),
                        esc(c.get("kind")),
                        esc("yes" if c.get("blocking") else "no"),
                        esc("; ".join(c.get("why", []))),
                    ]
                    for c in plan["checks"]
                ],
            )
        )
    if plan.get("tests"):
        parts.append(
            table(
                ["Order", "Test", "Suite", "P(fail)", "Duration s"],
                [
                    [
                        esc(t.get("order")),
                        esc(t.get("test_id")),
                        esc(t.get("plan_suite")),
                        esc(f"{t.get('p_fail', 0):.3f}"),
                        esc(t.get("duration_s")),
                    ]
                    for t in plan["tests"][:50]
                ],
            )
        )
    rollout = d.get("rollout_plan", {})
    steps = [
        f"weight {s['set_weight']}%" if s.get("set_weight") is not None else f"pause {s.get('pause')}"
        for s in rollout.get("steps", [])
    ]
    parts.append(
        "<h2>Rollout plan</h2>"
        + table(
            ["Strategy", "Steps", "Bake time s", "Deploy order", "Rollback order", "Deploy at"],
            [
                [
                    esc(rollout.get("strategy")),
                    esc(" → ".join(steps) or "-"),
                    esc(rollout.get("bake_time_s")),
                    esc(" → ".join(rollout.get("deploy_order", [])) or "-"),
                    esc(" → ".join(rollout.get("rollback_order", [])) or "-"),
                    esc(rollout.get("deploy_at") or "no slot"),
                ]
            ],
        )
    )
    if rollout.get("analysis"):
        parts.append(
            table(
                ["Analysis", "Metric", "Interval × count", "Failure limit", "Success"],
                [
                    [
                        esc(a.get("name")),
                        esc(a.get("metric")),
                        esc(f"{a.get('interval')} × {a.get('count')}"),
                        esc(a.get("failure_limit")),
                        esc(a.get("success_condition")),
                    ]
                    for a in rollout["analysis"]
                ],
            )
        )
    if history.overrides:
        parts.append(
            "<h2>Approvals and overrides</h2>"
            + table(
                ["When", "Who", "What", "Reason"],
                [
                    [
                        esc(o.get("recorded_at")),
                        esc(o.get("who")),
                        ("approved " + gate_badge(o.get("to_gate")))
                        if is_approval(o)
                        else f"{gate_badge(o.get('from_gate'))} → {gate_badge(o.get('to_gate'))}",
                        esc(o.get("reason")),
                    ]
                    for o in history.overrides
                ],
            )
        )
    if may_act:
        target = f"/ui/decisions/{esc(decision_id)}"
        options = "".join(
            f'<option value="{esc(g)}"{" selected" if g == gate else ""}>{esc(g)}</option>' for g in GATES
        )
        parts.append(
            f'<h2>Act</h2><form class="act" id="approve" method="post" action="{target}/approve">'
            f"{csrf_field(csrf)}<p>Approve: you reviewed the change and accept its gate "
            f"{gate_badge(gate)}.</p>"
            '<label>Reason<textarea name="reason" required maxlength="2000"></textarea></label>'
            "<p><button>Approve</button></p></form>"
            f'<form class="act" id="override" method="post" action="{target}/override">{csrf_field(csrf)}'
            f'<p>Override the gate: <select name="gate">{options}</select></p>'
            '<label>Reason<textarea name="reason" required maxlength="2000"></textarea></label>'
            "<p><button>Override</button></p></form>"
        )
    else:
        parts.append(
            f"<p>Read only: approving or overriding needs a token with the scope {esc(APPROVE)}.</p>"
        )
    return "".join(parts)


def audit_html(records: list[dict[str, Any]], page: int, total: int, verify: Any) -> str:
    status = (
        f'<p class="ok">Chain verifies: {esc(verify.records)} records, head {esc(verify.head[:16])}…'
        f"{(' — ' + esc(verify.note)) if verify.note else ''}</p>"
        if verify.ok
        else f'<p class="error">Chain does NOT verify: {esc(verify.problem)}</p>'
    )
    rows = []
    for r in records:
        summary = _summary(r)
        decision_id = esc(r.get("decision_id"))
        rows.append(
            [
                esc(r.get("seq")),
                esc(r.get("recorded_at")),
                esc(r.get("kind")),
                f'<a href="/ui/decisions/{decision_id}">{decision_id}</a>'
                if r.get("kind") in ("decision", "override")
                else decision_id,
                summary,
            ]
        )
    pages = max(1, -(-total // PAGE_SIZE))
    links = []
    if page > 1:
        links.append(f'<a href="/ui/audit?page={page - 1}">newer</a>')
    if page < pages:
        links.append(f'<a href="/ui/audit?page={page + 1}">older</a>')
    nav = f"<p>Page {page} of {pages} (newest first) {' · '.join(links)}</p>"
    return status + nav + table(["Seq", "Recorded", "Kind", "Decision", "Summary"], rows) + nav


def _summary(r: Mapping[str, Any]) -> str:
    kind = r.get("kind")
    if kind == "decision":
        d = r.get("decision", {})
        return f"{gate_badge(d.get('gate'))} {esc(d.get('repo'))} {esc(', '.join(d.get('services', [])))}"
    if kind == "override":
        what = "approved" if is_approval(r) else f"{esc(r.get('from_gate'))} → {esc(r.get('to_gate'))}"
        return f"{what} by <b>{esc(r.get('who'))}</b>: {esc(r.get('reason'))}"
    if kind == "plan_run":
        return f"rollout {esc(r.get('plan_id'))}: {esc(r.get('outcome'))}"
    if kind == "canary_analysis":
        return f"canary verdict on {esc(r.get('task'))}: {esc(r.get('action'))}"
    return esc(", ".join(k for k in r if k not in ("seq", "prev", "hmac", "recorded_at", "kind")))


def rollouts_html(views: list[RolloutView]) -> str:
    if not views:
        return "<p>No rollout is recorded in the audit log yet.</p>"
    rows = []
    for v in views:
        verdicts = []
        for analysis in v.analyses:
            for verdict in analysis.get("verdicts", []):
                action, why = esc(verdict.get("action")), esc(verdict.get("why"))
                verdicts.append(f"{esc(analysis.get('task'))}: <b>{action}</b> {why}")
        rows.append(
            [
                esc(v.plan_id),
                f'<a href="/ui/decisions/{esc(v.decision_id)}">{esc(v.decision_id)}</a>'
                if v.decision_id
                else "-",
                esc(v.goal),
                esc(v.outcome),
                "<br>".join(verdicts) or "no canary analysis",
                esc(v.at),
            ]
        )
    return table(["Rollout", "Decision", "Goal", "Outcome", "Judge verdicts", "Last record"], rows)


# -- routes -----------------------------------------------------------------------------------------------


def html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def pages_router(sessions: SessionStore | None = None) -> APIRouter:
    """The `/ui` pages. They read the agents service's state (`app.state.awo`: settings, policy, audit)."""
    store = sessions or SessionStore()
    router = APIRouter(prefix="/ui", tags=["ui"], route_class=AdmittedRoute, include_in_schema=False)

    def state_of(request: Request) -> Any:
        return request.app.state.awo

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def signed_in(request: Request) -> tuple[ApiToken, Session] | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        session = store.get(session_id, time.time()) if session_id else None
        if session is None:
            return None
        settings: Settings = state_of(request).settings
        token = next((t for t in settings.api_tokens if t.sha256 == session.token_sha256), None)
        return None if token is None else (token, session)

    def to_login() -> RedirectResponse:
        return RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)

    @router.get("/login")
    def login_form(request: Request, error: str = "") -> HTMLResponse:
        nonce = secrets.token_urlsafe(32)
        message = f'<p class="error">{esc(error)}</p>' if error else ""
        body = (
            f'{message}<form class="act" method="post" action="/ui/login">{csrf_field(nonce)}'
            '<label>API token <input type="password" name="token" autocomplete="off" size="48" required>'
            "</label> <button>Log in</button></form><p>Paste a token made by <code>awo token</code>; "
            f"it needs the scope {esc(READ)} to read and {esc(APPROVE)} to approve or override.</p>"
        )
        response = html(layout("Log in", body), 401 if error else 200)
        # Login CSRF (double submit): the form's nonce must come back beside the same cookie.
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=600,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = form_fields(await request.body())
        if not same_secret(
            fields.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")
        ) or not request.cookies.get(LOGIN_COOKIE):
            return html(
                layout("Forbidden", '<p class="error">The form expired: reload the log-in page.</p>'), 403
            )
        settings: Settings = state_of(request).settings
        try:
            token = authorize(f"Bearer {fields.get('token', '').strip()}", settings.api_tokens, [])
        except HTTPException:
            return login_form(request, error="unknown token")
        if READ not in token.scopes and APPROVE not in token.scopes:
            return html(
                layout(
                    "Forbidden",
                    f'<p class="error">token {esc(token.name)} lacks the scope {esc(READ)} '
                    f"or {esc(APPROVE)}</p>",
                ),
                403,
            )
        session_id, _session = store.open(token, time.time())
        response = RedirectResponse("/ui/decisions", status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            max_age=int(store.ttl_s),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        found = signed_in(request)
        fields = form_fields(await request.body())
        if found is None:
            return to_login()
        if not same_secret(fields.get("csrf"), found[1].csrf):
            return html(layout("Forbidden", '<p class="error">missing or wrong CSRF token</p>'), 403)
        store.close(request.cookies.get(SESSION_COOKIE, ""))
        response = to_login()
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    @router.get("/decisions")
    def decisions(request: Request) -> Response:
        found = signed_in(request)
        if found is None:
            return to_login()
        token, session = found
        audit: AuditLog = state_of(request).audit
        try:
            pending = pending_decisions(audit.records())
        except AuditLogDamaged as exc:
            return html(
                layout("Pending decisions", f'<p class="error">{esc(exc)}</p>', token.name, session.csrf), 500
            )
        return html(layout("Pending decisions", decisions_list_html(pending), token.name, session.csrf))

    def decision_page(
        request: Request, decision_id: str, message: str = "", status_code: int = 200
    ) -> Response:
        found = signed_in(request)
        if found is None:
            return to_login()
        token, session = found
        title = f"Decision {decision_id}"
        try:
            history = state_of(request).audit.find(decision_id)
        except NotFound:
            return html(
                layout("Not found", f"<p>No decision {esc(decision_id)}.</p>", token.name, session.csrf), 404
            )
        except AuditLogDamaged as exc:
            return html(layout(title, f'<p class="error">{esc(exc)}</p>', token.name, session.csrf), 500)
        body = decision_html(history, session.csrf, APPROVE in token.scopes, message)
        return html(layout(title, body, token.name, session.csrf), status_code)

    @router.get("/decisions/{decision_id}")
    def decision(request: Request, decision_id: str, done: str = "") -> Response:
        if not _valid_id(decision_id):
            return html(layout("Not found", "<p>Not a decision id.</p>"), 404)
        message = (
            f'<p class="ok">{esc(done)} recorded in the audit log.</p>'
            if done in ("approval", "override")
            else ""
        )
        return decision_page(request, decision_id, message)

    async def act(request: Request, decision_id: str, approving: bool) -> Response:
        if not _valid_id(decision_id):
            return html(layout("Not found", "<p>Not a decision id.</p>"), 404)
        found = signed_in(request)
        fields = form_fields(await request.body())
        if found is None:
            return html(
                layout("Log in", '<p class="error">sign in first: <a href="/ui/login">log in</a></p>'), 401
            )
        token, session = found
        if not same_secret(fields.get("csrf"), session.csrf):
            return html(
                layout(
                    "Forbidden", '<p class="error">missing or wrong CSRF token</p>', token.name, session.csrf
                ),
                403,
            )
        if APPROVE not in token.scopes:
            return html(
                layout(
                    "Forbidden",
                    f'<p class="error">token {esc(token.name)} lacks the scope {esc(APPROVE)}</p>',
                    token.name,
                    session.csrf,
                ),
                403,
            )
        state = state_of(request)
        reason = fields.get("reason", "").strip()
        try:
            if approving:  # an approval keeps the gate it finds: the review it asked for is done
                history = state.audit.find(decision_id)
                gate: str = current_gate(history.decision, history.overrides)
                reason = APPROVED_PREFIX + reason if reason else ""
            else:
                gate = fields.get("gate", "")
            # engine.override refuses a gate outside GATES, a blank reason and whom the policy does not name
            override(state.audit, state.policy, decision_id, cast(Gate, gate), reason, token.name)
        except NotFound:
            return html(
                layout("Not found", f"<p>No decision {esc(decision_id)}.</p>", token.name, session.csrf), 404
            )
        except OverrideRefused as exc:
            return decision_page(request, decision_id, f'<p class="error">Refused: {esc(exc)}</p>', 403)
        done = "approval" if approving else "override"
        return RedirectResponse(
            f"/ui/decisions/{quote(decision_id)}?done={done}", status_code=303, headers=SECURITY_HEADERS
        )

    @router.post("/decisions/{decision_id}/approve")
    async def approve(request: Request, decision_id: str) -> Response:
        return await act(request, decision_id, approving=True)

    @router.post("/decisions/{decision_id}/override")
    async def override_gate(request: Request, decision_id: str) -> Response:
        return await act(request, decision_id, approving=False)

    @router.get("/audit")
    def audit_page(request: Request, page: int = 1) -> Response:
        found = signed_in(request)
        if found is None:
            return to_login()
        token, session = found
        audit: AuditLog = state_of(request).audit
        verify = audit.verify()
        try:
            records = list(audit.records())
        except AuditLogDamaged as exc:
            return html(
                layout("Audit log", f'<p class="error">{esc(exc)}</p>', token.name, session.csrf), 500
            )
        page = max(1, page)
        newest_first = records[::-1][(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        body = audit_html(newest_first, page, len(records), verify)
        return html(layout("Audit log", body, token.name, session.csrf))

    @router.get("/rollouts")
    def rollouts(request: Request) -> Response:
        found = signed_in(request)
        if found is None:
            return to_login()
        token, session = found
        try:
            views = recent_rollouts(state_of(request).audit.records())
        except AuditLogDamaged as exc:
            return html(layout("Rollouts", f'<p class="error">{esc(exc)}</p>', token.name, session.csrf), 500)
        return html(layout("Recent rollouts", rollouts_html(views), token.name, session.csrf))

    return router


def _valid_id(decision_id: str) -> bool:
    return DECISION_ID.fullmatch(decision_id) is not None
