"""A decision back on the git host, through its REST API: a commit status on GitHub, GitLab and Bitbucket
Cloud, and a note on a GitLab merge request. httpx with tenacity's retries for connection errors, 429 and
5xx; base URLs from settings (GitHub Enterprise, self-managed GitLab)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from agents.decision import Decision
from agents.webhooks import HostEvent
from features.errors import AwoError
from features.settings import Settings

State = Literal["success", "pending", "failure"]
CONTEXT = "awo/risk"  # the status' name on every host: one status per commit, updated in place
# What each gate tells a merge: proceed, wait for a senior reviewer (an override clears it), or stop.
STATE_OF_GATE: dict[str, State] = {
    "fast_track": "success",
    "standard": "success",
    "senior_review": "pending",
    "block": "failure",
}
GITLAB_STATE: dict[State, str] = {"success": "success", "pending": "pending", "failure": "failed"}
BITBUCKET_STATE: dict[State, str] = {"success": "SUCCESSFUL", "pending": "INPROGRESS", "failure": "FAILED"}


class HostApiError(AwoError):
    """The host refused a call (4xx other than 429), or it kept failing after the retries."""


@dataclass(frozen=True)
class StatusReport:
    """What goes back to the host for one decision."""

    state: State
    description: str  # at most 140 characters: GitHub refuses longer commit status descriptions
    target_url: str  # the decision in the agents service
    note: str  # a longer markdown account, for a merge request note


def status_report(decision: Decision, public_url: str) -> StatusReport:
    """The commit status of a decision: its gate as a state, the risk and first reason in a short line."""
    state = STATE_OF_GATE[decision.gate]
    risk = "unscored" if decision.probability is None else f"{decision.band} risk {decision.probability:.2f}"
    first = decision.reasons[0].message if decision.reasons else ""
    description = f"{decision.gate.replace('_', ' ')}: {risk}" + (f"; {first}" if first else "")
    if len(description) > 140:
        description = description[:139] + "…"
    reasons = "\n".join(f"- {r.message}" for r in decision.reasons[:10])
    note = (
        f"**awo: {decision.gate.replace('_', ' ')}** ({risk}) for {len(decision.shas)} commits.\n\n"
        f"{reasons}\n\nDecision `{decision.decision_id}`: {public_url.rstrip('/')}/v1/decisions/"
        f"{decision.decision_id}"
    )
    return StatusReport(
        state, description, f"{public_url.rstrip('/')}/v1/decisions/{decision.decision_id}", note
    )


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code == 429 or exc.response.status_code >= 500
    )


@retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.25, max=8),
    reraise=True,
)
def _post_retried(client: httpx.Client, url: str, payload: dict[str, Any], headers: dict[str, str]) -> Any:
    response = client.post(url, json=payload, headers=headers)
    response.raise_for_status()
    return response.json() if response.content else None


def post_json(
    client: httpx.Client, host: str, url: str, payload: dict[str, Any], headers: dict[str, str]
) -> Any:
    """POST with retries; a refusal or the last failure becomes a one-line HostApiError naming the call."""
    try:
        return _post_retried(client, url, payload, headers)
    except httpx.HTTPStatusError as exc:
        raise HostApiError(
            f"{host} POST {url}: HTTP {exc.response.status_code} {exc.response.text[:200]!r}"
        ) from None
    except httpx.TransportError as exc:
        raise HostApiError(f"{host} POST {url}: {type(exc).__name__}: {exc}") from None


def _base(url: str) -> str:
    return url.rstrip("/")


def _path(full_name: str) -> str:
    return "/".join(quote(part, safe="") for part in full_name.split("/"))


def github_calls(event: HostEvent, report: StatusReport, api_url: str) -> list[tuple[str, dict[str, Any]]]:
    """GitHub "Create a commit status", `POST /repos/{owner}/{repo}/statuses/{sha}` with state (error,
    failure, pending, success), target_url, description and context
    (https://docs.github.com/en/rest/commits/statuses#create-a-commit-status)."""
    payload = {
        "state": report.state,
        "target_url": report.target_url,
        "description": report.description,
        "context": CONTEXT,
    }
    return [(f"{_base(api_url)}/repos/{_path(event.repo)}/statuses/{event.head}", payload)]


def gitlab_calls(event: HostEvent, report: StatusReport, api_url: str) -> list[tuple[str, dict[str, Any]]]:
    """GitLab "Set the pipeline status of a commit", `POST /projects/:id/statuses/:sha` with state (pending,
    running, success, failed, canceled, skipped), ref, name, target_url, description
    (https://docs.gitlab.com/api/commits/#set-the-pipeline-status-of-a-commit); on a merge request also
    "Create new merge request note", `POST /projects/:id/merge_requests/:merge_request_iid/notes` with body
    (https://docs.gitlab.com/api/notes/#create-new-merge-request-note). `:id` is the URL-encoded path."""
    project = f"{_base(api_url)}/projects/{quote(event.repo, safe='')}"
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            f"{project}/statuses/{event.head}",
            {
                "state": GITLAB_STATE[report.state],
                "ref": event.branch,
                "name": CONTEXT,
                "target_url": report.target_url,
                "description": report.description,
            },
        )
    ]
    if event.kind == "pull_request" and event.number is not None:
        calls.append((f"{project}/merge_requests/{event.number}/notes", {"body": report.note}))
    return calls


def bitbucket_calls(event: HostEvent, report: StatusReport, api_url: str) -> list[tuple[str, dict[str, Any]]]:
    """Bitbucket Cloud "Create a build status for a commit",
    `POST /2.0/repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build` with key, state
    (SUCCESSFUL, FAILED, INPROGRESS, STOPPED), url (required), name, description, refname; the same key
    overwrites the status (https://developer.atlassian.com/cloud/bitbucket/rest/api-group-commit-statuses/)."""
    payload = {
        "key": "awo-risk",
        "state": BITBUCKET_STATE[report.state],
        "name": CONTEXT,
        "url": report.target_url,
        "description": report.description,
        "refname": event.branch,
    }
    return [
        (f"{_base(api_url)}/2.0/repositories/{_path(event.repo)}/commit/{event.head}/statuses/build", payload)
    ]


def host_calls(
    event: HostEvent, report: StatusReport, settings: Settings
) -> list[tuple[str, dict[str, Any]]]:
    """The calls that report `report` for `event` to its host (pure: URLs and payloads)."""
    if event.host == "github":
        return github_calls(event, report, settings.github_api_url)
    if event.host == "gitlab":
        return gitlab_calls(event, report, settings.gitlab_api_url)
    return bitbucket_calls(event, report, settings.bitbucket_api_url)


def auth_headers(host: str, settings: Settings) -> dict[str, str]:
    """GitHub: a bearer token and the REST API version; GitLab: PRIVATE-TOKEN; Bitbucket: a bearer
    (repository or workspace access) token. No token: no header (the host answers 401, recorded)."""
    if host == "github":
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if settings.github_token is not None:
            headers["Authorization"] = f"Bearer {settings.github_token.get_secret_value()}"
        return headers
    if host == "gitlab":
        return {"PRIVATE-TOKEN": settings.gitlab_token.get_secret_value()} if settings.gitlab_token else {}
    if settings.bitbucket_token is not None:
        return {"Authorization": f"Bearer {settings.bitbucket_token.get_secret_value()}"}
    return {}


def report_to_host(
    event: HostEvent, report: StatusReport, settings: Settings, client: httpx.Client
) -> list[str]:
    """Send the report; the URLs called, in order."""
    headers = {"User-Agent": "awo-agents", **auth_headers(event.host, settings)}
    done = []
    for url, payload in host_calls(event, report, settings):
        post_json(client, event.host, url, payload, headers)
        done.append(url)
    return done


def host_client(timeout_s: float = 10.0) -> httpx.Client:
    """An httpx client whose transport also retries failed connection attempts."""
    return httpx.Client(timeout=timeout_s, transport=httpx.HTTPTransport(retries=2))
