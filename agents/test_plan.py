"""What a change is tested with: the suites its files, band and the policy's rules call for, where they run,
and, from the test history, which tests in which order within the band's time budget, with flaky tests
retried and reported rather than blocking; and the infrastructure checks (Terraform plan review, Ansible
check mode) its files call for."""

from __future__ import annotations

import fnmatch
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from agents.context import ChangeContext
from agents.policy import AnsiblePolicy, Policy
from agents.terraform import stateful_changes
from agents.vocabulary import Band


class PlannedSuite(BaseModel):
    name: str
    resource: str
    mandatory: bool = Field(description="required by a rule or the band: never cut by the budget")
    why: list[str]


class PlannedTest(BaseModel):
    test_id: str
    suite: str
    plan_suite: str = Field(description="the policy suite it runs in")
    order: int
    p_fail: float = Field(description="expected failure probability from history and the changed files")
    duration_s: float
    flake_rate: float
    retries: int = Field(description="retries of a failure before it counts (known-flaky tests)")
    blocking: bool = Field(description="a failure blocks the change (false: reported only)")
    reasons: list[str] = Field(default_factory=list)


class PlannedCheck(BaseModel):
    """A check beside the test suites: a person reviewing a Terraform plan, or a command a runner executes."""

    name: str = Field(examples=["plan-review", "ansible-check:playbooks/web.yml"])
    kind: Literal["plan-review", "ansible-check"]
    resource: str
    command: list[str] = Field(default_factory=list, description="argv to run (empty: a person does it)")
    blocking: bool = Field(description="the change waits for it")
    why: list[str]


class TestPlan(BaseModel):
    suites: list[PlannedSuite]
    checks: list[PlannedCheck] = Field(
        default_factory=list, description="infrastructure checks: Terraform plan review, Ansible check mode"
    )
    tests: list[PlannedTest]
    budget_s: float
    planned_s: float = Field(
        description="expected test time of the planned tests (mandatory suites included)"
    )
    skipped_over_budget: int = Field(description="known tests of the scheduled suites left out by the budget")
    history_tests: int = Field(description="tests known from the history")


def _suite_of(test_id: str, suite: str, policy: Policy, scheduled: list[str]) -> str | None:
    for name in scheduled:
        patterns = policy.suites[name].tests
        if any(fnmatch.fnmatchcase(suite, p) or fnmatch.fnmatchcase(test_id, p) for p in patterns):
            return name
    return None


def scheduled_suites(
    context: ChangeContext, band: Band, policy: Policy, rule_suites: dict[str, list[str]]
) -> list[PlannedSuite]:
    kinds = context.kinds()
    chosen: dict[str, PlannedSuite] = {}

    def add(name: str, mandatory: bool, why: str) -> None:
        suite = chosen.get(name)
        if suite is None:
            chosen[name] = PlannedSuite(
                name=name, resource=policy.suites[name].resource, mandatory=mandatory, why=[why]
            )
        else:
            chosen[name] = suite.model_copy(
                update={"mandatory": suite.mandatory or mandatory, "why": [*suite.why, why]}
            )

    for name, suite in policy.suites.items():
        hit = sorted(kinds & set(suite.runs_for))
        if hit:
            add(name, False, f"changed files: {', '.join(hit)}")
    for name in policy.tests.suites_by_band.get(band, []):
        add(name, True, f"every {band}-risk change")
    for name, rules in rule_suites.items():
        add(name, True, "rule " + ", ".join(rules))
    return sorted(chosen.values(), key=lambda s: (policy.suites[s.name].cost_s, s.name))


# Folders of a role or of inventory variables: a YAML file under one is not a playbook of its own.
_NOT_PLAYBOOK_PARTS = frozenset(
    {
        "roles",
        "group_vars",
        "host_vars",
        "vars",
        "defaults",
        "tasks",
        "handlers",
        "templates",
        "files",
        "meta",
    }
)


def ansible_playbooks(paths: list[str], ansible: AnsiblePolicy) -> list[str]:
    """The playbooks a change's files call to be checked: each changed playbook itself, and the site playbook
    for a change to a role, to variables or to anything else under the Ansible paths (a role runs only
    through a playbook that uses it, and the site playbook is the one that uses them all)."""
    playbooks: list[str] = []
    site = False
    for path in paths:
        if not any(fnmatch.fnmatchcase(path, p) for p in ansible.paths):
            continue
        pure = PurePosixPath(path)
        if pure.suffix in (".yml", ".yaml") and not _NOT_PLAYBOOK_PARTS & set(pure.parts[:-1]):
            playbooks.append(path)
        else:
            site = True
    if site and ansible.site_playbook not in playbooks:
        playbooks.append(ansible.site_playbook)
    return sorted(set(playbooks))


def ansible_command(playbook: str, ansible: AnsiblePolicy) -> list[str]:
    command = ["ansible-playbook", "--check", "--diff"]
    if ansible.inventory is not None:
        command += ["-i", ansible.inventory]
    if ansible.connection is not None:
        command += ["-c", ansible.connection]
    return [*command, playbook]


def planned_checks(context: ChangeContext, policy: Policy) -> list[PlannedCheck]:
    """A `plan-review` of the change's Terraform plan when it changes anything (blocking when it destroys or
    replaces a stateful resource), and an `ansible-playbook --check --diff` per playbook to check."""
    checks: list[PlannedCheck] = []
    plan = context.terraform
    if plan is not None and plan.changes:
        lost = stateful_changes(plan, policy.terraform.stateful_types)
        why = [plan.summary()]
        if lost:
            why.append(
                "stateful resources destroyed or replaced: "
                + ", ".join(f"{c.address} ({c.action})" for c in lost)
            )
        checks.append(
            PlannedCheck(
                name="plan-review",
                kind="plan-review",
                resource=policy.terraform.review_resource,
                blocking=bool(lost),
                why=why,
            )
        )
    changed = {f.path for f in context.files}
    for playbook in ansible_playbooks(sorted(changed), policy.ansible):
        checks.append(
            PlannedCheck(
                name=f"ansible-check:{playbook}",
                kind="ansible-check",
                resource=policy.ansible.resource,
                command=ansible_command(playbook, policy.ansible),
                blocking=True,
                why=["changed playbook" if playbook in changed else "changed roles or variables"],
            )
        )
    return checks


def plan_tests(
    context: ChangeContext, band: Band, policy: Policy, rule_suites: dict[str, list[str]]
) -> TestPlan:
    from agents.test_allocation import rank_tests, select_within_budget

    suites = scheduled_suites(context, band, policy, rule_suites)
    checks = planned_checks(context, policy)
    names = [s.name for s in suites]
    mandatory = {s.name for s in suites if s.mandatory}
    budget = policy.tests.budget_s[band]
    history = context.test_history
    if history is None:
        planned = sum(policy.suites[n].cost_s for n in names)
        return TestPlan(
            suites=suites,
            checks=checks,
            tests=[],
            budget_s=budget,
            planned_s=planned,
            skipped_over_budget=0,
            history_tests=0,
        )
    ranked = rank_tests(
        history,
        changed_files=[f.path for f in context.files],
        change_risk=context.risk.probability if context.risk else None,
    )
    in_suites = [(t, s) for t in ranked if (s := _suite_of(t.test_id, t.suite, policy, names)) is not None]
    must = [t for t, s in in_suites if s in mandatory]
    optional = [t for t, s in in_suites if s not in mandatory]
    must_s = sum(t.duration_s for t in must)
    chosen = select_within_budget(optional, max(budget - must_s, 0.0))
    keep = {id(t) for t in chosen} | {id(t) for t in must}
    plan_suite = {id(t): s for t, s in in_suites}
    tests: list[PlannedTest] = []
    for t in ranked:
        if id(t) not in keep:
            continue
        flaky = t.flake_rate >= policy.tests.flaky_blocking_below and t.flake_rate > 0
        tests.append(
            PlannedTest(
                test_id=t.test_id,
                suite=t.suite,
                plan_suite=plan_suite[id(t)],
                order=len(tests) + 1,
                p_fail=t.p_fail,
                duration_s=t.duration_s,
                flake_rate=t.flake_rate,
                retries=policy.tests.flaky_retries if flaky else 0,
                blocking=not flaky,
                reasons=list(t.reasons),
            )
        )
    unknown = [n for n in names if n not in {s for _, s in in_suites}]  # scheduled, no history yet
    return TestPlan(
        suites=suites,
        checks=checks,
        tests=tests,
        budget_s=budget,
        planned_s=sum(t.duration_s for t in tests) + sum(policy.suites[n].cost_s for n in unknown),
        skipped_over_budget=len(in_suites) - len(tests),
        history_tests=len(ranked),
    )
