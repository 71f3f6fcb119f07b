"""The agents service (`awo agent serve`): decisions, explanations, overrides and the audit check over
HTTP, with the risk API's conventions (bearer tokens with scopes checked before the body, JSON errors).
A request names a repository configured under `repositories` (never a path: untrusted text)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security, status
from pydantic import BaseModel, Field, model_validator

from agents.assemble import ChangeRef, RiskScorer, scorer_for
from agents.audit import AuditLog
from agents.decision import Decision
from agents.engine import OverrideRefused, audit_log, decide_change, explain_text, override, policy_of
from agents.pages import pages_router
from agents.policy import Policy
from agents.vocabulary import Gate
from agents.webhooks import WebhookHandler, webhook_receiver
from features.errors import AwoError, BadConfig
from features.settings import ApiToken, Settings, load_settings
from serving.admission import AdmittedRoute, caller
from serving.app import check_admitted, install_error_handlers
from serving.schemas import Name, Problem, RepoName

DECIDE, READ_DECISIONS, OVERRIDE = "decisions:write", "decisions:read", "decisions:override"
Ref = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._/@^~+-]+$")]


class AgentState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy: Policy = policy_of(settings)
        self.audit: AuditLog = audit_log(settings)
        self.scorer: RiskScorer = scorer_for(settings)  # loads the champion once, on first use
        self.reviewer: Any = None
        if settings.llm_base_url:
            from agents.reasoning import LlmReviewer

            self.reviewer = LlmReviewer.from_settings(settings)


def get_agent_state(request: Request) -> AgentState:
    return request.app.state.awo


AgentStateDep = Annotated[AgentState, Depends(get_agent_state)]


class DecisionQuery(BaseModel):
    repo: RepoName
    sha: Ref | None = None
    base: Ref | None = None
    head: Ref | None = None
    services: list[Name] | None = Field(default=None, max_length=100)
    environment: Name = "production"
    now: datetime | None = None

    @model_validator(mode="after")
    def _one_change(self) -> DecisionQuery:
        if (self.sha is None) == (self.head is None) or (self.head is not None and self.base is None):
            raise ValueError("give either sha, or base with head")
        return self


class DecisionResponse(BaseModel):
    decision: Decision
    audit_head: str
    exit_code: int = Field(
        description="what `awo decide` would exit with: 0 proceed, 3 senior review, 4 block"
    )


class OverrideQuery(BaseModel):
    gate: Gate
    reason: str = Field(min_length=1, max_length=2000)


ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": Problem}, 403: {"model": Problem}}
router = APIRouter(prefix="/v1", tags=["decisions"], route_class=AdmittedRoute)


@router.post("/decisions", dependencies=[Security(caller, scopes=[DECIDE])], responses=ERRORS)
def create_decision(query: DecisionQuery, state: AgentStateDep) -> DecisionResponse:
    """Decide on a change of a configured repository and record it in the audit log."""
    path = state.settings.repositories.get(query.repo)
    if path is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail={"code": "unknown_repository", "message": f"repository {query.repo!r} is not configured"},
        )
    ref = ChangeRef(repo_path=path, repo=query.repo, sha=query.sha, base=query.base, head=query.head)
    try:
        recorded = decide_change(
            ref,
            state.settings,
            state.policy,
            services=query.services,
            environment=query.environment,
            now=query.now,
            scorer=state.scorer,
            reviewer=state.reviewer,
        )
    except BadConfig as exc:  # the server's own policy, service map or settings: not the caller's fault
        raise HTTPException(500, detail={"code": "misconfigured", "message": str(exc)}) from None
    except AwoError as exc:  # the change cannot be read (unknown commit, unmined repository)
        raise HTTPException(422, detail={"code": "bad_change", "message": str(exc)}) from None
    decision = recorded.decision
    return DecisionResponse(decision=decision, audit_head=recorded.audit_head, exit_code=decision.exit_code)


@router.get(
    "/decisions/{decision_id}", dependencies=[Security(caller, scopes=[READ_DECISIONS])], responses=ERRORS
)
def get_decision(
    decision_id: Annotated[str, Field(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")], state: AgentStateDep
) -> dict[str, Any]:
    """A recorded decision, its overrides and a readable account."""
    from agents.audit import NotFound

    try:
        history = state.audit.find(decision_id)
    except NotFound as exc:
        raise HTTPException(404, detail={"code": "unknown_decision", "message": str(exc)}) from None
    return {
        "decision": history.decision,
        "overrides": history.overrides,
        "explanation": explain_text(history),
    }


@router.post("/decisions/{decision_id}/override", responses=ERRORS)
def override_decision(
    decision_id: Annotated[str, Field(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")],
    query: OverrideQuery,
    state: AgentStateDep,
    who: Annotated[ApiToken, Security(caller, scopes=[OVERRIDE])],
) -> dict[str, Any]:
    """Override a decision's gate, as the calling token's name; the policy says who may."""
    from agents.audit import NotFound

    try:
        return override(state.audit, state.policy, decision_id, query.gate, query.reason, who.name)
    except NotFound as exc:
        raise HTTPException(404, detail={"code": "unknown_decision", "message": str(exc)}) from None
    except OverrideRefused as exc:
        raise HTTPException(403, detail={"code": "override_refused", "message": str(exc)}) from None


@router.get("/audit/verify", dependencies=[Security(caller, scopes=[READ_DECISIONS])], responses=ERRORS)
def verify_audit(state: AgentStateDep, head: str | None = None) -> dict[str, Any]:
    report = state.audit.verify(head)
    return {"ok": report.ok, "records": report.records, "head": report.head, "problem": report.problem}


health = APIRouter(tags=["health"], route_class=AdmittedRoute)


@health.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_agent_app(
    settings: Settings | None = None, webhook_handler: WebhookHandler | None = None
) -> FastAPI:
    """The service; with a `webhook_handler` and a host's webhook secret also POST /webhooks/<host>, whose
    queue's worker runs for the app's lifespan (agents.webhooks)."""
    settings = settings or load_settings()
    webhooks = webhook_receiver(settings, webhook_handler)
    app = FastAPI(
        title="awo agents service",
        version="1",
        description="Decisions for changes: gate, test plan and rollout plan, explained and audited.",
        lifespan=webhooks.lifespan if webhooks else None,
    )
    app.state.awo = AgentState(settings)
    install_error_handlers(app)
    app.include_router(health)
    app.include_router(router)
    app.include_router(pages_router())  # /ui: the decisions page for people in the loop
    if webhooks:
        app.include_router(webhooks.router)
    check_admitted(app)
    return app
