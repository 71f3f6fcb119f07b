"""Rules that classify paths, commit messages and authors. Each rule is documented where it is defined
and in the README; later stages (test allocation, rollout) rely on these flags.

File-type flags (a file may carry several):
- `is_test`: a path segment `test`, `tests`, `testing`, `__tests__`, `spec` or `specs`, or a file named
  `test_*`, `*_test.*`, `*_tests.*`, `*Test.*`, `*Tests.*`, `*.test.*`, `*.spec.*`, `conftest.py`.
- `is_docs`: under `doc/` or `docs/`, a documentation extension (`.md .rst .adoc .txt`, but not
  requirement files), or a well-known project document (README, CHANGES, CHANGELOG, LICENSE, ...).
- `is_config`: a configuration extension (`.yml .yaml .toml .ini .cfg .conf .json .env .properties`),
  build and dependency files (Dockerfile, Makefile, `requirements*.txt`, `*.lock`, `setup.py`, ...),
  or anything under `.github/`, `.circleci/`, `config/`, `conf/`, `deploy/`, `k8s/`, `helm/`.
- `is_migration`: under a `migrations/`, `migrate/`, `alembic/` or `db/migrate/` folder, or a Flyway-style
  `V<n>__*.sql` file.
- `is_ui_text`: translation catalogues and UI strings: `.po .pot .mo .xlf .xliff .strings .arb .resx`,
  anything under `locale/`, `locales/`, `i18n/`, `l10n/`, `translations/`, and `strings.xml`,
  `messages*.properties|json`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from features.errors import BadConfig

ROOT_SUBSYSTEM = "(root)"
ROOT_DIRECTORY = "."

_TEST_DIRS = {"test", "tests", "testing", "__tests__", "spec", "specs"}
_TEST_FILE = re.compile(
    r"(^test_.*|.*_tests?\.[^.]+$|.*Tests?\.[^.]+$|.*\.(test|spec)\.[^.]+$|^conftest\.py$)"
)
_DOC_DIRS = {"doc", "docs", "documentation"}
_DOC_EXT = {".md", ".rst", ".adoc", ".txt", ".markdown"}
_DOC_NAMES = re.compile(
    r"^(readme|changes|changelog|history|license|licence|authors|contributing|notice)\b", re.I
)
_CONFIG_EXT = {".yml", ".yaml", ".toml", ".ini", ".cfg", ".conf", ".json", ".env", ".properties", ".lock"}
_CONFIG_NAMES = re.compile(
    r"^(dockerfile.*|makefile|.*\.mk|setup\.py|requirements.*\.txt|constraints.*\.txt|\.gitignore|"
    r"\.gitattributes|\.editorconfig|\.pre-commit-config\.yaml|tox\.ini|noxfile\.py|pom\.xml|"
    r"build\.gradle.*|package\.json|go\.mod|go\.sum|cargo\.toml|gemfile.*|procfile|jenkinsfile)$",
    re.I,
)
_CONFIG_DIRS = {".github", ".circleci", ".gitlab", "config", "conf", "deploy", "k8s", "helm", ".ci"}
_MIGRATION_DIRS = {"migrations", "migrate", "alembic", "migration"}
_FLYWAY = re.compile(r"^V\d+(_\d+)*__.*\.sql$", re.I)
_UI_TEXT_EXT = {".po", ".pot", ".mo", ".xlf", ".xliff", ".strings", ".arb", ".resx"}
_UI_TEXT_DIRS = {"locale", "locales", "i18n", "l10n", "translations", "lang"}
_UI_TEXT_NAMES = re.compile(r"^(strings\.xml|messages.*\.(properties|json))$", re.I)


@dataclass(frozen=True, slots=True)
class FileKind:
    is_test: bool
    is_docs: bool
    is_config: bool
    is_migration: bool
    is_ui_text: bool


def file_kind(path: str) -> FileKind:
    """The file-type flags of one repository path (POSIX separators)."""
    p = PurePosixPath(path)
    dirs = {d.lower() for d in p.parts[:-1]}
    name = p.name
    suffix = p.suffix.lower()
    is_config = suffix in _CONFIG_EXT or bool(_CONFIG_NAMES.match(name)) or bool(dirs & _CONFIG_DIRS)
    requirement_file = name.lower().startswith(("requirements", "constraints"))
    return FileKind(
        is_test=bool(dirs & _TEST_DIRS) or bool(_TEST_FILE.match(name)),
        is_docs=bool(dirs & _DOC_DIRS)
        or (suffix in _DOC_EXT and not requirement_file)
        or bool(_DOC_NAMES.match(name)),
        is_config=is_config,
        is_migration=bool(dirs & _MIGRATION_DIRS) or "db/migrate/" in path or bool(_FLYWAY.match(name)),
        is_ui_text=suffix in _UI_TEXT_EXT or bool(dirs & _UI_TEXT_DIRS) or bool(_UI_TEXT_NAMES.match(name)),
    )


def subsystem_of(path: str) -> str:
    """Kamei et al.'s subsystem: the root directory of the path; files at the root share one subsystem."""
    head, sep, _ = path.partition("/")
    return head if sep else ROOT_SUBSYSTEM


def directory_of(path: str) -> str:
    head, sep, _ = path.rpartition("/")
    return head if sep else ROOT_DIRECTORY


class ServiceMap:
    """Path globs → service name, first match wins; unmatched paths belong to their top-level directory.

    YAML form (`fnmatch` globs, `*` also crosses `/`; the full form of an entry is in features/topology.py)::

        services:
          payments: ["services/payments/*", "libs/billing/*"]
          web: {paths: ["frontend/*"], depends_on: [payments], criticality: high}
    """

    def __init__(self, rules: list[tuple[str, str]] | None = None) -> None:
        self._rules = [(re.compile(fnmatch.translate(glob)), service) for glob, service in rules or []]
        self._cache: dict[str, str] = {}

    @classmethod
    def from_yaml(cls, path: Path | None) -> ServiceMap:
        """The path rules of the service-map file (features/topology.py reads and validates it)."""
        from features.topology import load_topology

        return cls(load_topology(path).path_rules())

    def service_of(self, path: str) -> str:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        service = next((name for pattern, name in self._rules if pattern.match(path)), None)
        if service is None:
            service = subsystem_of(path)
        self._cache[path] = service
        return service


# --- commit messages ---------------------------------------------------------------------------

# A commit is a fix when its message (subject and body) names a defect with one of these words, the
# keyword rule of Mockus & Votta (2000) as used by SZZ implementations; "fixture", "prefix", "debug"
# and "bugle" do not match because the words are matched whole.
FIX_PATTERN = re.compile(
    r"\b(fix(es|ed|ing)?|bug(s|fix|fixes)?|hotfix(es)?|defects?|faults?|regressions?|crash(es|ed|ing)?)\b",
    re.I,
)
_REFACTOR = re.compile(
    r"\b(refactor\w*|renam\w*|mov(e|ed|es|ing)|clean ?up|restructur\w*|simplif\w*|"
    r"reorgani[sz]\w*|extract\w*)\b",
    re.I,
)
_CHORE = re.compile(
    r"\b(bump(s|ed)?|chore|release|version|ci|build|deps|dependenc\w*|upgrade|update requirements|lint)\b",
    re.I,
)


def is_fix_message(message: str) -> bool:
    return bool(FIX_PATTERN.search(message))


def change_kind(message: str, kinds: list[FileKind]) -> str:
    """fix / docs / test / refactor / chore / feature, first rule that applies:
    fix keyword → fix; every file docs → docs; every file a test → test; refactor words → refactor;
    chore words or every file config → chore; otherwise feature."""
    if is_fix_message(message):
        return "fix"
    if kinds and all(k.is_docs for k in kinds):
        return "docs"
    if kinds and all(k.is_test for k in kinds):
        return "test"
    if _REFACTOR.search(message):
        return "refactor"
    if _CHORE.search(message) or (kinds and all(k.is_config for k in kinds)):
        return "chore"
    return "feature"


# --- authors -----------------------------------------------------------------------------------

# Bots: names or emails ending in "[bot]", the well-known dependency and CI accounts, and any
# pattern the user adds (`bot_patterns` setting).
_BOT_PATTERN = re.compile(
    r"(\[bot\]|\bbot@|^(dependabot|renovate|greenkeeper|snyk-bot|pre-commit-ci|github-actions|"
    r"gitlab-ci|jenkins|travis|circleci|buildkite|ci|ci-bot|semantic-release-bot|pyup-bot|imgbot|"
    r"allcontributors|web-flow)\b)",
    re.I,
)


class BotRule:
    def __init__(self, extra_patterns: list[str] | None = None) -> None:
        try:
            self._extra = [re.compile(p, re.I) for p in extra_patterns or []]
        except re.error as exc:
            raise BadConfig(f"bot pattern {exc.pattern!r} is not a valid regular expression: {exc}") from exc

    def is_bot(self, name: str, email: str) -> bool:
        for value in (name, email):
            if _BOT_PATTERN.search(value) or any(p.search(value) for p in self._extra):
                return True
        return False


def author_id(email: str, name: str, salt: str) -> str:
    """Stable pseudonymous id of an author (after .mailmap): a salted SHA-256 of the lower-cased email
    (or the name when the email is empty)."""
    key = (email.strip().lower() or name.strip().lower()).encode()
    return hashlib.sha256(salt.encode() + b"\0" + key).hexdigest()[:16]
