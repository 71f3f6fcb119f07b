"""File-type flags, subsystems, the service map, the fix keyword rule, change kinds and bots."""

from __future__ import annotations

import pytest

from features.classify import BotRule, ServiceMap, change_kind, file_kind, is_fix_message, subsystem_of
from features.errors import BadConfig


@pytest.mark.parametrize(
    ("path", "flag"),
    [
        ("tests/test_core.py", "is_test"),
        ("src/app/core_test.go", "is_test"),
        ("web/src/Button.spec.tsx", "is_test"),
        ("java/src/FooTest.java", "is_test"),
        ("conftest.py", "is_test"),
        ("docs/index.rst", "is_docs"),
        ("README.md", "is_docs"),
        ("CHANGES.rst", "is_docs"),
        ("pyproject.toml", "is_config"),
        (".github/workflows/ci.yml", "is_config"),
        ("requirements-dev.txt", "is_config"),
        ("Dockerfile", "is_config"),
        ("payments/migrations/0003_add_total.py", "is_migration"),
        ("db/migrate/V2__add_index.sql", "is_migration"),
        ("sql/V12__users.sql", "is_migration"),
        ("web/locales/de.po", "is_ui_text"),
        ("app/src/main/res/values/strings.xml", "is_ui_text"),
    ],
)
def test_file_flags(path, flag):
    kind = file_kind(path)
    assert getattr(kind, flag), (path, kind)


@pytest.mark.parametrize("path", ["src/click/core.py", "src/testing_utils_impl.py", "attestation/x.py"])
def test_plain_code_carries_no_flag(path):
    kind = file_kind(path)
    assert not any((kind.is_test, kind.is_docs, kind.is_config, kind.is_migration, kind.is_ui_text))


def test_requirements_file_is_config_not_docs():
    kind = file_kind("requirements.txt")
    assert kind.is_config and not kind.is_docs


def test_subsystem_is_the_root_directory():
    assert subsystem_of("src/click/core.py") == "src"
    assert subsystem_of("setup.py") == "(root)"


def test_service_map_first_matching_glob_wins_and_defaults_to_top_directory(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  billing: ['libs/billing/*', 'payments/*']\n  web: 'frontend/*'\n")
    services = ServiceMap.from_yaml(path)
    assert services.service_of("payments/src/api.py") == "billing"
    assert services.service_of("libs/billing/x/y.py") == "billing"
    assert services.service_of("frontend/app.ts") == "web"
    assert services.service_of("search/core.py") == "search"
    assert services.service_of("Makefile") == "(root)"


def test_service_map_errors_name_the_file_and_service(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  billing: 3\n")
    with pytest.raises(BadConfig, match=r"services.yaml: services\.billing: "):
        ServiceMap.from_yaml(path)
    with pytest.raises(BadConfig, match="does not exist"):
        ServiceMap.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Fix crash when stdin is closed", True),
        ("fixes #123: wrong default", True),
        ("Bugfix: handle None", True),
        ("Prevent regression in option parsing", True),
        ("Add fixture for the pager tests", False),
        ("Support prefix matching", False),
        ("Improve debug output", False),
        ("Add shell completion for zsh", False),
    ],
)
def test_fix_keyword_rule(message, expected):
    assert is_fix_message(message) is expected


def test_change_kind_rules():
    code, docs, test, config = (
        file_kind(p) for p in ("src/a.py", "docs/a.rst", "tests/test_a.py", "tox.ini")
    )
    assert change_kind("Fix typo in parser", [code]) == "fix"
    assert change_kind("Update guide", [docs, docs]) == "docs"
    assert change_kind("More cases", [test]) == "test"
    assert change_kind("Refactor the parser", [code, test]) == "refactor"
    assert change_kind("Bump pytest to 8", [config]) == "chore"
    assert change_kind("Add --color option", [code, test, docs]) == "feature"


def test_bot_rule_and_extra_patterns():
    rule = BotRule(["^release-robot$"])
    assert rule.is_bot("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")
    assert rule.is_bot("renovate", "bot@renovateapp.com")
    assert rule.is_bot("pre-commit-ci[bot]", "66853113+pre-commit-ci[bot]@users.noreply.github.com")
    assert rule.is_bot("release-robot", "r@corp.example")
    assert not rule.is_bot("Abbot Smith", "abbot@example.org")
    assert not rule.is_bot("David Lord", "davidism@gmail.com")
    with pytest.raises(BadConfig, match="not a valid regular expression"):
        BotRule(["(unclosed"])
