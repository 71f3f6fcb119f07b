"""Security findings from SARIF 2.1.0 (the OASIS format bandit, semgrep, CodeQL and Trivy write): read and
validate the subset the gate uses, tell new findings from those the base already had, place them on the
change's added lines, and keep findings that arrive after the change (one parquet table per repository)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.policy import SarifLevel, SecurityPolicy, SecurityRule, Severity, severity_rank
from agents.vocabulary import Gate, gate_level
from features.errors import BadConfig
from features.tables import exclusive, read_table, write_tables
from features.topology import CRITICALITY_LEVEL

SECURITY_FILE = "security_findings.parquet"
Status = Literal["new", "pre-existing", "unknown"]


class SarifError(BadConfig):
    """A file that is not SARIF 2.1.0 as the gate reads it; the message names the file and the JSON path."""


# --- the SARIF subset, as the OASIS 2.1.0 schema spells it (unknown properties are ignored) ---------------


class _Sarif(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class _Text(_Sarif):
    text: str | None = None


class _Region(_Sarif):
    start_line: int | None = Field(default=None, alias="startLine", ge=1)
    end_line: int | None = Field(default=None, alias="endLine", ge=1)
    snippet: _Text | None = None


class _ArtifactLocation(_Sarif):
    uri: str | None = None


class _PhysicalLocation(_Sarif):
    artifact_location: _ArtifactLocation | None = Field(default=None, alias="artifactLocation")
    region: _Region | None = None


class _Location(_Sarif):
    physical_location: _PhysicalLocation | None = Field(default=None, alias="physicalLocation")


class _Configuration(_Sarif):
    level: SarifLevel | None = None


class _Rule(_Sarif):
    id: str
    name: str | None = None
    default_configuration: _Configuration | None = Field(default=None, alias="defaultConfiguration")
    properties: dict[str, Any] = Field(default_factory=dict)


class _Driver(_Sarif):
    name: str
    rules: list[_Rule] = Field(default_factory=list)


class _Tool(_Sarif):
    driver: _Driver


class _RuleReference(_Sarif):
    id: str | None = None
    index: int | None = Field(default=None, ge=0)


class _Result(_Sarif):
    rule_id: str | None = Field(default=None, alias="ruleId")
    rule_index: int | None = Field(default=None, alias="ruleIndex", ge=0)
    rule: _RuleReference | None = None
    kind: str | None = None
    level: SarifLevel | None = None
    message: _Text
    locations: list[_Location] = Field(default_factory=list)
    partial_fingerprints: dict[str, str] = Field(default_factory=dict, alias="partialFingerprints")
    properties: dict[str, Any] = Field(default_factory=dict)


class _Run(_Sarif):
    tool: _Tool
    results: list[_Result] | None = None  # null: the tool did not run to completion


class _Log(_Sarif):
    version: Literal["2.1.0"]
    runs: list[_Run]


# --- what the gate keeps of a result ----------------------------------------------------------------------


class Finding(BaseModel):
    """One result of a scanner, flattened: where it is, what rule says so, how severe the tool says it is."""

    model_config = ConfigDict(frozen=True)
    finding_id: str = Field(
        description="stable id (from the identity and its occurrence): what a waiver names"
    )
    tool: str
    rule_id: str
    rule_name: str | None = None
    level: SarifLevel
    security_severity: float | None = Field(
        default=None, description="the result's or its rule's `security-severity` (0-10)"
    )
    tool_severity: str | None = Field(
        default=None, description="the tool's own word (bandit's issue_severity)"
    )
    message: str
    path: str = Field(description="the artifact's URI as a repository path ('' when the result has none)")
    start_line: int | None = None
    end_line: int | None = None
    snippet: str = ""
    fingerprints: dict[str, str] = Field(default_factory=dict)
    keys: tuple[str, ...] = Field(
        description="identities, strongest first: fingerprint, then rule+file+snippet"
    )

    def where(self) -> str:
        return f"{self.path or '?'}:{self.start_line}" if self.start_line else self.path or "?"


class SarifReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: str
    tools: list[str]
    findings: list[Finding]


_PROBLEMS = {
    "int_type": "not an integer",
    "string_type": "not a string",
    "list_type": "not a list",
    "dict_type": "not an object",
    "model_type": "not an object",
    "model_attributes_type": "not an object",
    "missing": "missing",
    "bool_type": "not a boolean",
}


def _json_path(loc: Iterable[str | int]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _problem(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind == "literal_error":
        return f"{error['input']!r} is not {error['ctx']['expected']}"
    if kind == "greater_than_equal":
        return f"{error['input']!r} is below {error['ctx']['ge']}"
    return str(error["msg"]).lower()


def _fail(source: str, path: str, problem: str) -> SarifError:
    return SarifError(f"{source}: {path}: {problem}")


def _score(value: Any, source: str, path: str) -> float | None:
    """A `security-severity` property: GitHub documents it as a string ("8.8"); numbers are taken too."""
    if value is None:
        return None
    try:
        score = float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None
    except ValueError:
        score = None
    if score is None or not 0 <= score <= 10:
        raise _fail(source, path, f"{value!r} is not a score from 0 to 10")
    return score


def repository_path(uri: str) -> str:
    """An artifact URI as a repository path: `file://` and `./` dropped, percent-escapes decoded."""
    path = unquote(uri.removeprefix("file://"))
    while path.startswith("./"):
        path = path[2:]
    return path


def normalised_snippet(text: str) -> str:
    """The snippet with all whitespace collapsed: re-indenting or re-wrapping keeps a finding's identity."""
    return " ".join(text.split())


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def identity_keys(
    tool: str,
    rule_id: str,
    path: str,
    snippet: str,
    fingerprints: dict[str, str],
    line: int | None,
    message: str,
) -> tuple[str, ...]:
    """A finding's identities, never its line number where anything better exists, so a finding that an edit
    above it moved is not new: the tool's partialFingerprints (any stable key), and rule + file + the
    normalised snippet. Only a result with neither falls back to the line (and the message)."""
    keys = []
    if fingerprints:
        keys.append("fp:" + _digest(tool, rule_id, *(f"{k}={v}" for k, v in sorted(fingerprints.items()))))
    if snippet.strip():
        keys.append("snippet:" + _digest(tool, rule_id, path, normalised_snippet(snippet)))
    if not keys:
        keys.append("line:" + _digest(tool, rule_id, path, str(line), message))
    return tuple(keys)


def _with_ids(findings: list[dict[str, Any]]) -> list[Finding]:
    """Finding ids: the strongest identity and its occurrence (two identical snippets in a file differ)."""
    seen: dict[str, int] = {}
    out = []
    for f in findings:
        first = f["keys"][0]
        seen[first] = seen.get(first, 0) + 1
        out.append(Finding(finding_id="F" + _digest(first, str(seen[first]))[:10], **f))
    return out


def parse_sarif(doc: Any, source: str) -> SarifReport:
    """The findings of a SARIF 2.1.0 log. A result of kind `pass` or `notApplicable` is not a finding."""
    try:
        log = _Log.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(source, _json_path(first["loc"]), _problem(dict(first))) from None
    raw: list[dict[str, Any]] = []
    tools: list[str] = []
    for r, run in enumerate(log.runs):
        driver = run.tool.driver
        tools.append(driver.name)
        rule_scores = [
            _score(
                rule.properties.get("security-severity"),
                source,
                f"$.runs[{r}].tool.driver.rules[{i}].properties.security-severity",
            )
            for i, rule in enumerate(driver.rules)
        ]
        by_id = {rule.id: i for i, rule in enumerate(driver.rules)}
        for n, result in enumerate(run.results or []):
            where = f"$.runs[{r}].results[{n}]"
            if result.kind in ("pass", "notApplicable"):
                continue
            ref = result.rule or _RuleReference()
            index = result.rule_index if result.rule_index is not None else ref.index
            if index is not None and index >= len(driver.rules):
                raise _fail(source, f"{where}.ruleIndex", f"{index} is past the {len(driver.rules)} rules")
            rule_id = result.rule_id or ref.id
            if rule_id is None and index is not None:
                rule_id = driver.rules[index].id
            if rule_id is None:
                raise _fail(source, where, "no ruleId, rule.id or ruleIndex")
            if index is None:
                index = by_id.get(rule_id)
            rule = None if index is None else driver.rules[index]
            score = _score(
                result.properties.get("security-severity"), source, f"{where}.properties.security-severity"
            )
            if score is None and index is not None:
                score = rule_scores[index]
            default = rule.default_configuration.level if rule and rule.default_configuration else None
            physical = result.locations[0].physical_location if result.locations else None
            uri = physical.artifact_location.uri if physical and physical.artifact_location else None
            region = physical.region if physical else None
            path = repository_path(uri or "")
            snippet = (region.snippet.text or "") if region and region.snippet else ""
            start = region.start_line if region else None
            message = result.message.text or ""
            tool_severity = result.properties.get("issue_severity")
            raw.append(
                {
                    "tool": driver.name,
                    "rule_id": rule_id,
                    "rule_name": rule.name if rule else None,
                    "level": result.level or default or "warning",  # SARIF §3.27.10: warning by default
                    "security_severity": score,
                    "tool_severity": tool_severity if isinstance(tool_severity, str) else None,
                    "message": message,
                    "path": path,
                    "start_line": start,
                    "end_line": (region.end_line or start) if region else None,
                    "snippet": snippet,
                    "fingerprints": dict(result.partial_fingerprints),
                    "keys": identity_keys(
                        driver.name, rule_id, path, snippet, dict(result.partial_fingerprints), start, message
                    ),
                }
            )
    return SarifReport(source=source, tools=tools, findings=_with_ids(raw))


def parse_sarif_text(text: str, source: str) -> SarifReport:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SarifError(f"{source}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_sarif(doc, source)


def read_sarif(path: Path) -> SarifReport:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SarifError(f"{path}: cannot be read ({exc})") from None
    return parse_sarif_text(text, str(path))


# --- new or not, on a changed line or not: pure functions --------------------------------------------------

ChangedLines = dict[str, list[tuple[int, int]]]  # repository path → inclusive ranges of added lines
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def added_line_ranges(diff: str) -> ChangedLines:
    """The head-side line ranges each file gains, from a `git diff -U0` (unified diff without context)."""
    changed: ChangedLines = {}
    path: str | None = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            name = line[4:].strip().strip('"')
            path = None if name == "/dev/null" else name.removeprefix("b/")
        elif path is not None and (hunk := _HUNK.match(line)):
            start, count = int(hunk.group(1)), int(hunk.group(2) or 1)
            if count:
                changed.setdefault(path, []).append((start, start + count - 1))
    return changed


def on_changed_line(finding: Finding, changed: ChangedLines) -> bool:
    """Whether any line of the finding's region is one the change adds. An absolute URI matches the
    repository path it ends with."""
    if finding.start_line is None or not finding.path:
        return False
    ranges = changed.get(finding.path)
    if ranges is None:
        ranges = next((r for p, r in changed.items() if finding.path.endswith("/" + p)), [])
    end = max(finding.end_line or finding.start_line, finding.start_line)
    return any(lo <= end and finding.start_line <= hi for lo, hi in ranges)


def severity_of(finding: Finding, policy: SecurityPolicy) -> Severity:
    """`security-severity` by the policy's scale where given, else the SARIF level by the policy's map."""
    if finding.security_severity is not None:
        return policy.security_severity.severity_of(finding.security_severity)
    return policy.levels[finding.level]


class AssessedFinding(BaseModel):
    model_config = ConfigDict(frozen=True)
    finding: Finding
    severity: Severity
    status: Status = Field(
        description="new: absent from the base; unknown: no base and off the changed lines"
    )
    on_changed_line: bool
    service: str


class SecurityScan(BaseModel):
    """The change's findings as the gate reads them, and where they came from."""

    model_config = ConfigDict(frozen=True)
    sources: list[str]
    base_sources: list[str] = Field(default_factory=list, description="empty: no base scan was known")
    findings: list[AssessedFinding] = Field(default_factory=list)


def matched_in_base(head: list[Finding], base: list[Finding]) -> list[bool]:
    """For each head finding, whether a base finding shares one of its identities; each base finding
    accounts for one head finding, so a second copy of a known snippet is new."""
    unused: dict[str, list[int]] = {}
    for i, b in enumerate(base):
        for key in b.keys:
            unused.setdefault(key, []).append(i)
    taken: set[int] = set()
    matched = []
    for f in head:
        hit = next((i for key in f.keys for i in unused.get(key, []) if i not in taken), None)
        if hit is not None:
            taken.add(hit)
        matched.append(hit is not None)
    return matched


def assess_findings(
    head: list[Finding],
    base: list[Finding] | None,
    changed: ChangedLines,
    policy: SecurityPolicy,
    service_of: Callable[[str], str],
) -> list[AssessedFinding]:
    """Each head finding with its severity, whether it is new and whether it is on an added line. Without
    a base scan, a finding on an added line counts as new; the rest are `unknown` (reported, never gating)."""
    known = matched_in_base(head, base) if base is not None else [False] * len(head)
    out = []
    for f, in_base in zip(head, known, strict=True):
        on_line = on_changed_line(f, changed)
        status: Status = "pre-existing" if in_base else "new" if base is not None or on_line else "unknown"
        out.append(
            AssessedFinding(
                finding=f,
                severity=severity_of(f, policy),
                status=status,
                on_changed_line=on_line,
                service=service_of(f.path) if f.path else "",
            )
        )
    return out


def gating_rule(
    assessed: AssessedFinding, policy: SecurityPolicy, criticality: Callable[[str], str]
) -> SecurityRule | None:
    """The tightest policy rule a finding triggers: only new findings gate, and only on added lines unless
    the rule says otherwise; `criticality` gives a service's criticality word."""
    if assessed.status != "new":
        return None
    fitting = [
        rule
        for rule in policy.rules
        if severity_rank(assessed.severity) >= severity_rank(rule.min_severity)
        and (assessed.on_changed_line or not rule.on_changed_lines_only)
        and (
            rule.min_criticality is None
            or CRITICALITY_LEVEL.get(criticality(assessed.service), 0)
            >= CRITICALITY_LEVEL[rule.min_criticality]
        )
    ]
    return max(fitting, key=lambda rule: gate_level(rule.gate), default=None)


def findings_floor(gates: Iterable[Gate | None]) -> Gate | None:
    """The tightest gate among findings' gates (None when none gates)."""
    given = [g for g in gates if g is not None]
    return max(given, key=gate_level, default=None)


# --- findings that arrive later: `<repository data dir>/security_findings.parquet` -------------------------

# One row per finding: sha (as given, lower case), tool, source (the file), finding_id, rule_id, rule_name,
# level, security_severity (float, NaN: none), tool_severity, message, path, start_line / end_line (Int64),
# snippet, fingerprints (JSON object), keys (JSON list).
SECURITY_SCHEMA = pa.schema(
    [
        ("sha", pa.string()),
        ("tool", pa.string()),
        ("source", pa.string()),
        ("finding_id", pa.string()),
        ("rule_id", pa.string()),
        ("rule_name", pa.string()),
        ("level", pa.string()),
        ("security_severity", pa.float64()),
        ("tool_severity", pa.string()),
        ("message", pa.string()),
        ("path", pa.string()),
        ("start_line", pa.int64()),
        ("end_line", pa.int64()),
        ("snippet", pa.string()),
        ("fingerprints", pa.string()),
        ("keys", pa.string()),
    ]
)
_SHA = re.compile(r"^[0-9a-f]{7,64}$")


def checked_sha(sha: str) -> str:
    if not _SHA.match(sha.lower()):
        raise BadConfig(f"--sha {sha!r}: expected a commit id of 7 to 64 hex digits")
    return sha.lower()


class StoredFindings(BaseModel):
    sha: str
    source: str
    tools: list[str]
    stored: int
    replaced: int
    table: str


def _rows(sha: str, report: SarifReport) -> list[dict[str, Any]]:
    return [
        {
            "sha": sha,
            "source": report.source,
            **f.model_dump(exclude={"fingerprints", "keys", "security_severity"}),
            "security_severity": float("nan") if f.security_severity is None else f.security_severity,
            "fingerprints": json.dumps(f.fingerprints, sort_keys=True),
            "keys": json.dumps(list(f.keys)),
        }
        for f in report.findings
    ]


def store_findings(data_dir: Path, sha: str, report: SarifReport) -> StoredFindings:
    """Keep a validated report's findings for a commit; they replace that commit's findings from the same
    tools (a re-scan), and leave other commits' and other tools' alone. Written crash-safely."""
    sha = checked_sha(sha)
    path = data_dir / SECURITY_FILE
    with exclusive(data_dir):
        old = read_table(path, SECURITY_SCHEMA)
        replaced = 0
        if old is not None:
            stale = (old["sha"] == sha) & old["tool"].isin(report.tools)
            replaced = int(stale.sum())
            old = old[~stale]
        fresh = pd.DataFrame(_rows(sha, report), columns=SECURITY_SCHEMA.names)
        frame = fresh if old is None or old.empty else pd.concat([old, fresh], ignore_index=True)
        frame = frame.astype({"start_line": "Int64", "end_line": "Int64"})
        table = pa.Table.from_pandas(
            frame[SECURITY_SCHEMA.names], schema=SECURITY_SCHEMA, preserve_index=False
        )
        write_tables(data_dir, {SECURITY_FILE: table})
    return StoredFindings(
        sha=sha, source=report.source, tools=report.tools, stored=len(report.findings), replaced=replaced,
        table=str(path),
    )  # fmt: skip


def stored_findings(data_dir: Path, sha: str) -> list[Finding] | None:
    """The findings stored for a commit (a full sha matches a stored short one and the other way round);
    None when nothing was stored for it."""
    table = read_table(data_dir / SECURITY_FILE, SECURITY_SCHEMA)
    if table is None:
        return None
    sha = sha.lower()
    rows = table[[sha.startswith(s) or s.startswith(sha) for s in table["sha"]]]
    if rows.empty:
        return None
    out = []
    for row in rows.to_dict("records"):
        score = row["security_severity"]
        out.append(
            Finding(
                finding_id=row["finding_id"],
                tool=row["tool"],
                rule_id=row["rule_id"],
                rule_name=row["rule_name"],
                level=row["level"],
                security_severity=None if pd.isna(score) else float(score),
                tool_severity=row["tool_severity"],
                message=row["message"],
                path=row["path"],
                start_line=None if pd.isna(row["start_line"]) else int(row["start_line"]),
                end_line=None if pd.isna(row["end_line"]) else int(row["end_line"]),
                snippet=row["snippet"],
                fingerprints=json.loads(row["fingerprints"]),
                keys=tuple(json.loads(row["keys"])),
            )
        )
    return out
