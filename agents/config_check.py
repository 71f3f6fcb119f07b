"""Per-environment configuration overlays (`<root>/<environment>/<service>.{yaml,yml,json,env}`) compared
across environments: keys missing somewhere, values the policy says must be equal but differ, and secrets
checked in as plain text (detect-secrets' entropy and known-token plugins)."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from agents.policy import ConfigRules
from features.errors import BadConfig

OVERLAY_SUFFIXES = (".yaml", ".yml", ".json", ".env")
FindingKind = Literal["missing", "differs", "secret"]
FILE_KEY = "(file)"  # the key of a finding about a whole overlay file
MASK = "****"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class ConfigError(BadConfig):
    """A usage error of `awo config`: a missing root, an unknown environment, an unparsable overlay."""


@dataclass(frozen=True)
class Setting:
    value: str  # canonical text: strings as written, other scalars as JSON (`true`, `3000`, `null`)
    line: int
    is_text: bool  # a string in the file (only strings can be secrets)


@dataclass(frozen=True)
class Overlay:
    environment: str
    service: str
    path: str
    settings: dict[str, Setting]


class Finding(BaseModel):
    kind: FindingKind
    service: str
    key: str
    environments: list[str] = Field(description="the environments at fault")
    detail: str
    file: str | None = None
    line: int | None = None

    def text(self) -> str:
        where = f" ({self.file}:{self.line})" if self.file and self.line else ""
        return f"{self.service}: {self.detail}{where}"


class Difference(BaseModel):
    """A key whose value is not the same everywhere: per environment its value (None: not set), masked when
    it is a secret."""

    service: str
    key: str
    values: dict[str, str | None]
    status: Literal["missing", "must be equal", "may differ", "differs"]


class ConfigReport(BaseModel):
    root: str
    environments: list[str]
    services: list[str]
    keys: int = Field(description="distinct (service, key) pairs")
    findings: list[Finding]
    differences: list[Difference]

    def counts(self) -> dict[str, int]:
        return {k: sum(f.kind == k for f in self.findings) for k in ("missing", "differs", "secret")}

    def findings_for(self, environment: str) -> list[Finding]:
        return [f for f in self.findings if environment in f.environments]


# --- reading overlays (the edge) ---------------------------------------------------------------------


def _scalar(node: yaml.ScalarNode) -> tuple[str, bool]:
    value = yaml.SafeLoader("").construct_object(node)
    if isinstance(value, str):
        return value, True
    return json.dumps(value, default=str), False


def _flatten(node: yaml.Node, prefix: str, path: Path, out: dict[str, Setting]) -> None:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: a key must be a plain value")
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            _flatten(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        if all(isinstance(item, yaml.ScalarNode) for item in node.value):  # a list of values is one value
            items = [_scalar(item)[0] for item in node.value]
            out[prefix] = Setting(json.dumps(items), line, False)
        else:
            for i, item in enumerate(node.value):
                _flatten(item, f"{prefix}[{i}]", path, out)
    else:
        value, is_text = _scalar(node)  # type: ignore[arg-type]
        out[prefix] = Setting(value, line, is_text)


def parse_structured(text: str, path: Path) -> dict[str, Setting]:
    """A YAML or JSON overlay, flattened to dotted keys (`db.pool.size`) with the line of each value."""
    if path.suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{path}:{line}: not valid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:1: the top level must be a mapping of keys to values")
    out: dict[str, Setting] = {}
    _flatten(root, "", path, out)
    return out


def parse_env(text: str, path: Path) -> dict[str, Setting]:
    """A dotenv overlay: `KEY=VALUE` lines, `export` allowed, `#` comments, values optionally quoted. A bad
    line is named by number only: its text may hold a secret."""
    out: dict[str, Setting] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY.match(key):
            raise ConfigError(f"{path}:{number}: not a KEY=VALUE line")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key] = Setting(value, number, True)
    return out


def read_overlay(path: Path, environment: str) -> Overlay:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    settings = parse_env(text, path) if path.suffix == ".env" else parse_structured(text, path)
    return Overlay(environment, path.stem, str(path), settings)


def environments_under(root: Path) -> list[str]:
    if not root.is_dir():
        raise ConfigError(f"config root {root} does not exist (setting config_root, or --root)")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_overlays(root: Path, environments: list[str] | None = None) -> dict[str, dict[str, Overlay]]:
    """environment → service → overlay, for the named environments (default: every folder under root)."""
    root = Path(root)
    present = environments_under(root)
    wanted = list(environments) if environments else present
    if not wanted:
        raise ConfigError(f"config root {root} has no environment folders")
    unknown = [e for e in wanted if e not in present]
    if unknown:
        raise ConfigError(
            f"unknown environment(s) {', '.join(unknown)}: {root} has {', '.join(present) or 'none'}"
        )
    overlays: dict[str, dict[str, Overlay]] = {}
    for environment in wanted:
        found: dict[str, Overlay] = {}
        for path in sorted((root / environment).iterdir()):
            if not path.is_file() or path.suffix not in OVERLAY_SUFFIXES or path.name.startswith("."):
                continue
            if path.stem in found:
                raise ConfigError(
                    f"{path}: service {path.stem!r} has a second overlay in {environment}: "
                    f"{found[path.stem].path}"
                )
            found[path.stem] = read_overlay(path, environment)
        overlays[environment] = found
    return overlays


# --- comparing (pure) ----------------------------------------------------------------------------------


def _matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def is_reference(key: str, value: str, rules: ConfigRules) -> bool:
    """A value that points at a secret store (`${DB_PASSWORD}`, `vault:...`) or sits under a reference key
    (`password.secretRef`): not a secret itself."""
    parts = re.split(r"[.\[\]]", key)
    return _matches(value.strip(), rules.reference_values) or any(p in rules.reference_keys for p in parts)


@dataclass
class SecretScanner:
    """detect-secrets' plugins (every one it ships: known token formats, keyword, base64/hex entropy) over
    one `key: "value"` line per setting. Verification against the providers stays off: no network."""

    def __post_init__(self) -> None:
        from detect_secrets.settings import default_settings, get_plugins

        with default_settings():
            self._plugins = list(get_plugins())

    def kinds(self, key: str, value: str) -> list[str]:
        line = f"{key}: {json.dumps(value)}"
        found = {
            secret.type
            for plugin in self._plugins
            for secret in plugin.analyze_line(filename="overlay", line=line, line_number=1)
        }
        return sorted(found)


def compare(
    overlays: dict[str, dict[str, Overlay]], rules: ConfigRules, scanner: SecretScanner, root: str = ""
) -> ConfigReport:
    """The findings over the environments' overlays, each naming the service, the key and the environments
    at fault; and every key whose value is not the same everywhere (for `awo config diff`)."""
    environments = list(overlays)
    services = sorted({s for by_service in overlays.values() for s in by_service})
    findings: list[Finding] = []
    differences: list[Difference] = []
    keys = 0
    for service in services:
        present = {e: overlays[e][service] for e in environments if service in overlays[e]}
        absent = [e for e in environments if e not in present]
        if absent:
            findings.append(
                Finding(
                    kind="missing",
                    service=service,
                    key=FILE_KEY,
                    environments=absent,
                    detail=f"no overlay in {', '.join(absent)} (found in {', '.join(present)})",
                )
            )
        secret_keys: set[str] = set()
        for environment, overlay in present.items():
            for key, setting in overlay.settings.items():
                if not setting.is_text or not setting.value or _matches(key, rules.not_secret_keys):
                    continue
                if is_reference(key, setting.value, rules):
                    continue
                kinds = scanner.kinds(key, setting.value)
                if kinds:
                    secret_keys.add(key)
                    findings.append(
                        Finding(
                            kind="secret",
                            service=service,
                            key=key,
                            environments=[environment],
                            detail=f"{key} in {environment} looks like a plain-text secret "
                            f"({', '.join(kinds)})",
                            file=overlay.path,
                            line=setting.line,
                        )
                    )
        all_keys = sorted({k for overlay in present.values() for k in overlay.settings})
        keys += len(all_keys)
        for key in all_keys:
            values = {e: (o.settings[key].value if key in o.settings else None) for e, o in present.items()}
            missing = [e for e, v in values.items() if v is None]
            distinct = {v for v in values.values() if v is not None}
            shown = {e: (MASK if key in secret_keys and v is not None else v) for e, v in values.items()}
            if missing and not _matches(key, rules.may_be_missing):
                has = [e for e in values if e not in missing]
                first = present[has[0]]
                findings.append(
                    Finding(
                        kind="missing",
                        service=service,
                        key=key,
                        environments=missing,
                        detail=f"{key} is set in {', '.join(has)} but not in {', '.join(missing)}",
                        file=first.path,
                        line=first.settings[key].line,
                    )
                )
                differences.append(Difference(service=service, key=key, values=shown, status="missing"))
                continue
            if len(distinct) <= 1:
                if missing:
                    differences.append(
                        Difference(service=service, key=key, values=shown, status="may differ")
                    )
                continue
            if _matches(key, rules.may_differ):
                status: Literal["must be equal", "may differ", "differs"] = "may differ"
            elif _matches(key, rules.must_equal):
                status = "must be equal"
                listed = "; ".join(f"{e}={v}" for e, v in shown.items() if v is not None)
                findings.append(
                    Finding(
                        kind="differs",
                        service=service,
                        key=key,
                        environments=[e for e, v in values.items() if v is not None],
                        detail=f"{key} must be equal in every environment but is {listed}",
                    )
                )
            else:
                status = "differs"
            differences.append(Difference(service=service, key=key, values=shown, status=status))
    return ConfigReport(
        root=root,
        environments=environments,
        services=services,
        keys=keys,
        findings=findings,
        differences=differences,
    )


def check_config(root: Path, rules: ConfigRules, environments: list[str] | None = None) -> ConfigReport:
    """Read the overlays under `root` and compare them (the whole of `awo config check`)."""
    return compare(read_overlays(root, environments), rules, SecretScanner(), str(root))


def promotion_refusal(report: ConfigReport, environments: list[str]) -> str | None:
    """Why a rollout may not deploy to these environments: the findings about them, or None."""
    lines = [f"{e}: {f.text()}" for e in environments for f in report.findings_for(e)]
    if not lines:
        return None
    failing = ", ".join(e for e in environments if report.findings_for(e))
    return (
        f"configuration check of {report.root} failed for {failing} ({len(lines)} finding(s)): "
        + "; ".join(lines)
        + "; fix them and run `awo config check`"
    )
