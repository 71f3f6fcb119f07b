"""The edge where a change's context is gathered: its commits and files (mined tables, or git for a range
not mined yet), its risk (the scoring core in process, or the risk API over HTTP), the test history, the
service map, production's state, the change's Terraform plan and its security findings. Failures to reach a
scorer are recorded, not raised: `decide` then applies the policy's `on_error` gate (fail closed); a bad plan
or SARIF file is an error."""

from __future__ import annotations

import functools
import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from agents.context import ChangeContext, ChangedFile, Risk, RiskDriver
from agents.policy import Policy
from agents.security import (
    ChangedLines,
    Finding,
    SecurityScan,
    added_line_ranges,
    assess_findings,
    read_sarif,
    stored_findings,
)
from agents.terraform import TerraformPlan, is_plan_file, parse_plan_text, read_plan
from features.classify import ServiceMap
from features.errors import AwoError
from features.settings import Settings
from features.tables import (
    COMMITS_FILE,
    FILES_FILE,
    INCIDENTS_FILE,
    as_utc,
    file_key,
    raw_file,
    read_table_cached,
)
from features.topology import Topology, load_topology

if TYPE_CHECKING:
    from models.registry import LoadedModel
    from serving.core import CommitScore

CHANGE_RISK = "change-risk"


class ScoringUnavailable(AwoError):
    """The model, the feature store or the risk API could not be reached or has no answer."""


@dataclass(frozen=True)
class ChangeRef:
    """What to decide on: one commit (`sha`) or a range (`base`..`head`, as a pull request lands it)."""

    repo_path: Path
    repo: str
    sha: str | None = None
    base: str | None = None
    head: str | None = None
    tables: Path | None = None  # the repository's tables (default: `<data root>/<repo>/`)

    def tables_dir(self, settings: Settings) -> Path:
        return self.tables if self.tables is not None else settings.repo_data_dir(self.repo)

    def __post_init__(self) -> None:
        if (self.sha is None) == (self.head is None):
            raise AwoError("give either --sha or --base with --head")
        if self.head is not None and self.base is None:
            raise AwoError("--head needs --base")


@dataclass(frozen=True)
class MeasuredChange:
    shas: list[str]
    base: str | None
    files: list[tuple[str, int, int]]  # path, lines added, lines deleted
    messages: list[str]
    metrics: dict[str, float] | None  # the full feature vector when measured from git (unmined)
    mined: bool


class RiskScorer(Protocol):
    def score_mined(self, repo: str, sha: str) -> Risk | None: ...  # None: not in the feature store
    def score_metrics(self, repo: str, metrics: dict[str, float]) -> Risk: ...


def _risk(score: CommitScore, reference: dict[str, float]) -> Risk:
    return Risk(
        probability=score.probability,
        drivers=[
            RiskDriver(feature=d.feature, value=d.value, contribution=d.contribution) for d in score.drivers
        ],
        features=score.features,
        model_name=score.model.name,
        model_version=score.model.version,
        model_kind=score.model.kind,
        reference=reference,
        warnings=list(score.warnings),
    )


class InProcessScorer:
    """The champion change-risk model through the scoring core, loaded on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: LoadedModel | None = None
        self._store: Any = None

    def _model(self) -> LoadedModel:
        from models.registry import RegistryError, connect, load, redacted, registry_failures

        if self._loaded is None:
            try:
                connect(self.settings)
                self._loaded = load(CHANGE_RISK)
            except RegistryError as exc:  # unreachable registry or no champion yet
                raise ScoringUnavailable(str(exc)) from None
            except registry_failures() as exc:  # MLflow's own failures reaching its store
                problem = f"{type(exc).__name__}: {redacted(str(exc))}"
                raise ScoringUnavailable(f"model registry: {problem}") from None
        return self._loaded

    def _reference(self) -> dict[str, float]:
        meta = self._model().meta
        return {k: float(v) for k, v in (meta.get("risk_reference") or {}).items()}

    def score_mined(self, repo: str, sha: str) -> Risk | None:
        from features.store import open_store
        from serving.core import CommitRef, CommitScore, score_commits

        loaded = self._model()
        if self._store is None:
            self._store = open_store(self.settings)
        try:
            [result] = score_commits(
                [CommitRef(repo=repo, sha=sha)], loaded, self._store, self.settings, top=50
            )
        except AwoError as exc:
            raise ScoringUnavailable(f"feature store: {exc}") from None
        return _risk(result, self._reference()) if isinstance(result, CommitScore) else None

    def score_metrics(self, repo: str, metrics: dict[str, float]) -> Risk:
        from serving.core import CommitRef, CommitScore, score_commits

        loaded = self._model()
        names = loaded.model.features
        query = {n: metrics.get(n, math.nan) for n in names}
        [result] = score_commits([CommitRef(repo=repo, metrics=query)], loaded, None, self.settings, top=50)
        if not isinstance(result, CommitScore):  # a metrics query is always scored
            raise TypeError(f"unexpected result {result!r}")
        return _risk(result, self._reference())


class HttpScorer:
    """The risk API (`POST /v1/risk/commits`), with the bearer token from settings."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._references: dict[tuple[str, str], dict[str, float]] = {}

    def _reference(self, name: str, version: str) -> dict[str, float]:
        """The served version's training-period reference, from `GET /v1/models` (once per version)."""
        import httpx

        if (name, version) not in self._references:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                response = httpx.get(f"{self.base_url}/v1/models", headers=headers, timeout=self.timeout)
                response.raise_for_status()
                entry = response.json().get(name) or {}
            except (httpx.HTTPError, ValueError) as exc:
                raise ScoringUnavailable(f"risk API {self.base_url}: GET /v1/models: {exc}") from None
            for alias in ("champion", "challenger"):
                described = entry.get(alias) or {}
                if str(described.get("version")) == version:
                    reference = described.get("risk_reference") or {}
                    self._references[(name, version)] = {k: float(v) for k, v in reference.items()}
        return self._references.get((name, version), {})

    def _post(self, query: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = httpx.post(
                f"{self.base_url}/v1/risk/commits",
                json={"commits": [query], "drivers": 50},
                headers=headers,
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            raise ScoringUnavailable(f"risk API {self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise AwoError(
                f"risk API {self.base_url} refused the token ({response.status_code}): "
                "check AWO_RISK_API_TOKEN"
            )
        if response.status_code != 200:
            raise ScoringUnavailable(
                f"risk API {self.base_url} answered {response.status_code}: {response.text[:200]}"
            )
        result: dict[str, Any] = response.json()["results"][0]
        return result

    def _as_risk(self, item: dict[str, Any]) -> Risk:
        model = item["model"]
        return Risk(
            probability=item["probability"],
            drivers=[RiskDriver(**d) for d in item.get("drivers", [])],
            features={d["feature"]: d["value"] for d in item.get("drivers", [])},
            model_name=model["name"],
            model_version=str(model["version"]),
            model_kind=model.get("kind"),
            reference=self._reference(model["name"], str(model["version"])),
            warnings=item.get("warnings", []),
        )

    def score_mined(self, repo: str, sha: str) -> Risk | None:
        item = self._post({"repo": repo, "sha": sha})
        if item.get("status") == 404 or item.get("code") == "unknown_commit":
            return None
        return self._as_risk(item)

    def score_metrics(self, repo: str, metrics: dict[str, float]) -> Risk:
        finite = {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}
        return self._as_risk(self._post({"repo": repo, "metrics": finite}))


def scorer_for(settings: Settings) -> RiskScorer:
    if settings.risk_api_url:
        token = settings.risk_api_token.get_secret_value() if settings.risk_api_token else None
        return HttpScorer(settings.risk_api_url, token)
    return InProcessScorer(settings)


@functools.lru_cache(maxsize=4)
def _mined_commits(
    commits_key: tuple[str, int, int], files_key: tuple[str, int, int] | None
) -> dict[str, MeasuredChange]:
    """Every mined commit as a measured change, by sha; built again only when a table changes."""
    commits = read_table_cached(Path(commits_key[0]))
    files = read_table_cached(Path(files_key[0])) if files_key else None
    by_sha: dict[str, list[tuple[str, int, int]]] = {}
    if files is not None:
        for sha, path, la, ld in zip(files["sha"], files["path"], files["la"], files["ld"], strict=True):
            by_sha.setdefault(sha, []).append((path, int(la), int(ld)))
    if commits is None:
        return {}
    return {
        sha: MeasuredChange([sha], None, by_sha.get(sha, []), [str(subject)], None, True)
        for sha, subject in zip(commits["sha"], commits["message_subject"], strict=True)
    }


def measure(ref: ChangeRef, settings: Settings, at: datetime) -> MeasuredChange:
    """The change's commits and files: from the mined tables for a mined commit, else from git."""
    tables = ref.tables_dir(settings)
    commits_key = file_key(tables / COMMITS_FILE)
    if ref.sha is not None and commits_key is not None:
        mined = _mined_commits(commits_key, file_key(tables / FILES_FILE))
        sha = ref.sha.lower()
        hits = [mined[sha]] if sha in mined else [m for full, m in mined.items() if full.startswith(sha)]
        if len(hits) == 1:
            return hits[0]
    from features.mining.diff import measure_unmined_change
    from features.mining.gitlog import Repository

    base, head = ref.base, ref.head
    if ref.sha is not None:
        parents = Repository(ref.repo_path).parents_of(ref.sha)
        if not parents:
            raise AwoError(f"commit {ref.sha} has no parent: a root commit is not a change to decide on")
        base, head = parents[0], ref.sha
    assert base is not None and head is not None
    change = measure_unmined_change(ref.repo_path, base, head, settings, tables, ref.repo, as_utc(at))
    messages = list(Repository(ref.repo_path).messages(list(change.commits)).values())
    return MeasuredChange(
        shas=list(change.commits),
        base=change.merge_base,
        files=[(f.path, f.la, f.ld) for f in change.files],
        messages=messages,
        metrics=change.vector,
        mined=False,
    )


def assess(change: MeasuredChange, ref: ChangeRef, scorer: RiskScorer) -> tuple[Risk | None, str | None]:
    """The change's risk, or why it could not be had."""
    try:
        if change.mined:
            risk = scorer.score_mined(ref.repo, change.shas[0])
            if risk is not None:
                return risk, None
            return (
                None,
                f"commit {change.shas[0]} is mined but not in the feature store: run `awo features build`",
            )
        assert change.metrics is not None
        return scorer.score_metrics(ref.repo, change.metrics), None
    except ScoringUnavailable as exc:
        return None, str(exc)


def test_history(tables: Path) -> Any:
    """The repository's ingested test runs as a TestHistory, with the files of each tested commit."""
    runs_key = file_key(tables / raw_file("test-runs"))
    return None if runs_key is None else _test_history(runs_key, file_key(tables / FILES_FILE))


@functools.lru_cache(maxsize=8)
def _test_history(runs_key: tuple[str, int, int], files_key: tuple[str, int, int] | None) -> Any:
    from agents.test_allocation import TestHistory

    runs = read_table_cached(Path(runs_key[0]))
    if runs is None or runs.empty:
        return None
    files = read_table_cached(Path(files_key[0])) if files_key else None
    files_by_sha = None if files is None else files.groupby("sha")["path"].agg(list).to_dict()
    return TestHistory.from_runs(runs, files_by_sha)


def terraform_plan_of(
    ref: ChangeRef, change: MeasuredChange, policy: Policy, given: Path | None
) -> TerraformPlan | None:
    """The plan given on the command line, else the plan files the change commits (by the policy's
    `terraform.plan_files` names), read as of its newest commit; several are read as one plan."""
    if given is not None:
        return read_plan(given)
    from features.mining.gitlog import Repository

    names = [p for p, _, _ in change.files if is_plan_file(p, policy.terraform.plan_files)]
    plans = []
    for name in sorted(names):
        text = Repository(ref.repo_path).file_at(change.shas[0], name)
        if text is not None:  # None: the change deletes it
            plans.append(parse_plan_text(text, f"{change.shas[0][:12]}:{name}"))
    if not plans:
        return None
    return TerraformPlan(
        source=", ".join(p.source for p in plans),
        format_version=plans[0].format_version,
        changes=[c for p in plans for c in p.changes],
    )


EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's id of the empty tree: a root commit's base


def change_base(ref: ChangeRef, change: MeasuredChange) -> str:
    """What the change is compared with: the range's merge base, else the commit's first parent."""
    if change.base is not None:
        return change.base
    from features.mining.gitlog import Repository

    parents = Repository(ref.repo_path).parents_of(change.shas[-1])
    return parents[0] if parents else EMPTY_TREE


def changed_lines(repo_path: Path, base: str, head: str) -> ChangedLines:
    """The lines the change adds, by file, from `git diff -U0 base head`. Git rather than the mined tables:
    the miner caps a commit's diff lines (DIFF_MAX_LINES) and `added_where` with it, so a large change would
    lose lines silently, while the diff is exact for a mined commit and an unmined range alike."""
    proc = subprocess.run(
        [
            "git",
            "-c",
            "core.quotepath=off",
            "diff",
            "-U0",
            "-M",
            "--no-color",
            "--no-ext-diff",
            base,
            head,
            "--",
        ],
        cwd=repo_path,
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if proc.returncode != 0:
        raise AwoError(f"git diff {base[:12]} {head[:12]} in {repo_path}: {proc.stderr.strip()[:200]}")
    return added_line_ranges(proc.stdout)


def _findings(files: list[Path] | None, tables: Path, sha: str) -> tuple[list[Finding] | None, list[str]]:
    """Findings of one side of a change and where they came from: the SARIF files given, else those stored
    for `sha` (None: none stored)."""
    if files:
        reports = [read_sarif(p) for p in files]
        return [f for r in reports for f in r.findings], [r.source for r in reports]
    return stored_findings(tables, sha), [f"stored for {sha[:12]}"]


def security_scan_of(
    ref: ChangeRef,
    change: MeasuredChange,
    settings: Settings,
    policy: Policy,
    service_of: Callable[[str], str],
    sarif: list[Path] | None = None,
    sarif_base: list[Path] | None = None,
) -> SecurityScan | None:
    """The change's findings: the SARIF files given, else those stored for its head commit (`awo ingest
    security`); the base's from `sarif_base`, else stored for the base commit, else none (no base scan).
    None when the change has no findings from anywhere."""
    tables = ref.tables_dir(settings)
    head_sha = change.shas[0]
    base_sha = change_base(ref, change)
    head, sources = _findings(sarif, tables, head_sha)
    if head is None:
        return None
    base, base_sources = _findings(sarif_base, tables, base_sha)
    lines = changed_lines(ref.repo_path, base_sha, head_sha)
    return SecurityScan(
        sources=sources,
        base_sources=base_sources if base is not None else [],
        findings=assess_findings(head, base, lines, policy.security, service_of),
    )


def assemble(
    ref: ChangeRef,
    settings: Settings,
    policy: Policy,
    *,
    now: datetime | None = None,
    services: list[str] | None = None,
    environment: str = "production",
    scorer: RiskScorer | None = None,
    topology: Topology | None = None,
    terraform_plan: Path | None = None,
    sarif: list[Path] | None = None,
    sarif_base: list[Path] | None = None,
) -> ChangeContext:
    from agents.environment import MetricsUnavailable, read_metrics_file, read_prometheus, service_states

    at = as_utc(now).to_pydatetime()
    topology = topology if topology is not None else load_topology(settings.service_map)
    change = measure(ref, settings, at)
    terraform = terraform_plan_of(ref, change, policy, terraform_plan)
    risk, risk_error = assess(change, ref, scorer or scorer_for(settings))
    service_map = ServiceMap(topology.path_rules())
    security = security_scan_of(ref, change, settings, policy, service_map.service_of, sarif, sarif_base)
    files = [ChangedFile.of(p, service_map.service_of(p), la, ld) for p, la, ld in change.files]
    # Services named by the caller are added to those of the files, never put in their place: the rules,
    # incidents and error budgets of a touched service always count.
    touched = sorted({f.service for f in files} | set(services or []))
    metrics: pd.DataFrame | None = None
    warnings: list[str] = []
    if settings.metrics_file is not None:
        metrics = read_metrics_file(settings.metrics_file)
    elif settings.prometheus_url:
        try:
            metrics = read_prometheus(
                settings.prometheus_url,
                touched,
                settings.prometheus_requests_query,
                settings.prometheus_errors_query,
                at,
            )
        except MetricsUnavailable as exc:  # decide without traffic and budget, and say so
            warnings.append(f"production metrics unknown: {exc}")
    incidents = read_table_cached(ref.tables_dir(settings) / INCIDENTS_FILE)
    states = service_states(
        touched,
        metrics,
        incidents,
        {s: topology.service(s).slos for s in touched},
        at,
        policy.schedule.lookahead_hours,
    )
    return ChangeContext(
        repo=ref.repo,
        shas=change.shas,
        base=change.base,
        environment=environment,
        files=files,
        services=touched,
        messages=change.messages,
        risk=risk,
        risk_error=risk_error,
        test_history=test_history(ref.tables_dir(settings)),
        topology=topology,
        service_states=states,
        warnings=warnings,
        terraform=terraform,
        security=security,
        now=at,
    )
