"""The job behind a verified git-host webhook (its composition root): fetch the pushed commits into the
configured checkout, mine them incrementally, decide on the pushed range and send the decision back to the
host as a commit status (and a merge-request note on GitLab)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import httpx

from agents.assemble import ChangeRef, RiskScorer, scorer_for
from agents.engine import decide_change, policy_of
from agents.hosts import host_client, report_to_host, status_report
from agents.policy import Policy
from agents.webhooks import HostEvent, JobResult, WebhookHandler, configured_name
from features.errors import AwoError, BadConfig
from features.settings import Settings
from pipelines.mine import mine_repository

log = logging.getLogger(__name__)


def _git(checkout: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Arguments are a list (never a shell line); shas and branch names were checked by the parsers.
    proc = subprocess.run(
        ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=600, check=False
    )
    if check and proc.returncode != 0:
        raise AwoError(f"git {' '.join(args)} in {checkout}: {proc.stderr.strip()[:300]}")
    return proc


def _has_commit(checkout: Path, sha: str) -> bool:
    return _git(checkout, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0


def fetch(checkout: Path, event: HostEvent) -> None:
    """`git fetch origin` (every branch), plus the PR's head ref where the host publishes one (a fork's PR
    has its commits only there: GitHub refs/pull/N/head, GitLab refs/merge-requests/N/head)."""
    _git(checkout, "fetch", "--quiet", "--prune", "origin")
    if event.kind == "pull_request" and event.number is not None and not _has_commit(checkout, event.head):
        pr_ref = {"github": "refs/pull/{n}/head", "gitlab": "refs/merge-requests/{n}/head"}.get(event.host)
        if pr_ref:
            _git(checkout, "fetch", "--quiet", "origin", pr_ref.format(n=int(event.number)), check=False)
    if not _has_commit(checkout, event.head):
        raise AwoError(f"commit {event.head} of {event.repo} is not in {checkout} after fetching origin")


def advance_mined_branch(checkout: Path, event: HostEvent) -> bool:
    """A push to the checkout's own branch (the one mined) fast-forwards it, so mining sees the commits.
    Other branches and PRs are decided from git without mining them: tables hold one line of history."""
    current = _git(checkout, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).stdout.strip()
    if event.kind != "push" or event.branch != current:
        return False
    done = _git(checkout, "merge", "--ff-only", "--quiet", event.head, check=False)
    if done.returncode != 0:
        raise AwoError(
            f"{checkout}: branch {current} cannot fast-forward to {event.head} (a force-push?): "
            f"{done.stderr.strip()[:200]}; reset the checkout to origin/{current}"
        )
    return True


def change_of(event: HostEvent, checkout: Path, repo_name: str) -> ChangeRef:
    """The range to decide on: base..head when the base is known and present, else the merge base with the
    PR's target branch, else the head commit alone (a new branch)."""
    base = event.base if event.base is not None and _has_commit(checkout, event.base) else None
    if base is None and event.base_branch is not None:
        found = _git(
            checkout, "merge-base", f"refs/remotes/origin/{event.base_branch}", event.head, check=False
        )
        base = found.stdout.strip() or None
    if base is None or base == event.head:
        return ChangeRef(repo_path=checkout, repo=repo_name, sha=event.head)
    return ChangeRef(repo_path=checkout, repo=repo_name, base=base, head=event.head)


def run_webhook_job(
    event: HostEvent,
    settings: Settings,
    policy: Policy,
    client: httpx.Client,
    scorer: RiskScorer | None = None,
    reviewer: Any = None,
) -> JobResult:
    """Fetch, mine, decide, report: one host event, end to end."""
    repo_name = configured_name(settings, event.repo)
    if repo_name is None:
        raise BadConfig(f"repository {event.repo!r} is not under the `repositories` setting")
    checkout = settings.repositories[repo_name]
    fetch(checkout, event)
    advance_mined_branch(checkout, event)
    mined = mine_repository(checkout, settings, name=repo_name)  # incremental: only the new commits
    recorded = decide_change(
        change_of(event, checkout, repo_name), settings, policy, scorer=scorer, reviewer=reviewer
    )
    report = status_report(recorded.decision, settings.public_url)
    called = report_to_host(event, report, settings, client)
    decision = recorded.decision
    message = (
        f"{event.host} {event.repo} {event.ref}: {mined.commits_new} commits mined, "
        f"{len(decision.shas)} decided: {decision.gate} → {report.state} ({len(called)} calls)"
    )
    log.info(message)
    return JobResult(decision.decision_id, decision.gate, report.state, message)


def webhook_handler(settings: Settings) -> WebhookHandler:
    """The handler the agents service's webhook worker calls: the policy, scorer, LLM reviewer and HTTP
    client are made once, here."""
    policy = policy_of(settings)
    scorer = scorer_for(settings)
    reviewer = None
    if settings.llm_base_url:
        from agents.reasoning import LlmReviewer

        reviewer = LlmReviewer.from_settings(settings)
    client = host_client()

    def handle(event: HostEvent) -> JobResult:
        return run_webhook_job(event, settings, policy, client, scorer=scorer, reviewer=reviewer)

    return handle
