"""Ansible in the test plan: which playbooks a change's files call to be checked, and the
`ansible-playbook --check --diff` command the plan gives, run for real (ansible-core) against localhost."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.context import ChangeContext, ChangedFile, Risk
from agents.decision import decide
from agents.policy import load_policy
from agents.test_plan import ansible_playbooks

POLICY = load_policy()
LOCAL = POLICY.model_copy(
    update={"ansible": POLICY.ansible.model_copy(update={"inventory": "localhost,", "connection": "local"})}
)
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def context(paths: list[str]) -> ChangeContext:
    return ChangeContext(
        repo="ops",
        shas=["c" * 40],
        files=[ChangedFile.of(p, "ops", 3, 1) for p in paths],
        services=["ops"],
        risk=Risk(probability=0.01, model_name="change-risk", model_version="1"),
        now=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
    )


def test_a_changed_playbook_is_checked_itself():
    assert ansible_playbooks(["playbooks/web.yml", "app/main.py"], POLICY.ansible) == ["playbooks/web.yml"]
    assert ansible_playbooks(["deploy/db.playbook.yml"], POLICY.ansible) == ["deploy/db.playbook.yml"]


def test_a_role_or_variables_change_checks_the_site_playbook():
    assert ansible_playbooks(["roles/nginx/tasks/main.yml"], POLICY.ansible) == ["site.yml"]
    assert ansible_playbooks(["playbooks/group_vars/all.yml"], POLICY.ansible) == ["site.yml"]
    assert ansible_playbooks(
        ["roles/nginx/templates/nginx.conf.j2", "playbooks/web.yml"], POLICY.ansible
    ) == [
        "playbooks/web.yml",
        "site.yml",
    ]


def test_a_change_without_playbooks_or_roles_gets_no_ansible_check():
    decision = decide(context(["app/main.py", "docs/guide.md", "config/app.yml"]), POLICY)
    assert [c for c in decision.test_plan.checks if c.kind == "ansible-check"] == []


def test_the_plan_says_which_playbook_and_why():
    decision = decide(context(["playbooks/web.yml", "roles/nginx/tasks/main.yml"]), POLICY)
    checks = {c.name: c for c in decision.test_plan.checks}
    assert checks["ansible-check:playbooks/web.yml"].command == [
        "ansible-playbook",
        "--check",
        "--diff",
        "playbooks/web.yml",
    ]
    assert checks["ansible-check:site.yml"].why == ["changed roles or variables"]
    assert all(c.blocking and c.resource == "ansible-runner" for c in checks.values())


PLAYBOOK = """\
- name: Web servers
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the motd
      ansible.builtin.copy:
        dest: "{{ root }}/motd"
        content: "welcome\\n"
    - name: Raise the worker count
      ansible.builtin.lineinfile:
        path: "{{ root }}/nginx.conf"
        regexp: "^worker_processes"
        line: "worker_processes 8;"
"""


@pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-core is a dev dependency of the venv")
def test_the_planned_check_mode_command_runs_against_localhost_and_changes_nothing(tmp_path: Path):
    repo = tmp_path / "ops"
    (repo / "playbooks").mkdir(parents=True)
    (repo / "playbooks" / "web.yml").write_text(PLAYBOOK)
    target = tmp_path / "host"
    target.mkdir()
    (target / "nginx.conf").write_text("worker_processes 2;\n")
    decision = decide(context(["playbooks/web.yml"]), LOCAL)
    [check] = [c for c in decision.test_plan.checks if c.kind == "ansible-check"]
    assert check.command[:3] == ["ansible-playbook", "--check", "--diff"] and "-i" in check.command

    env = {
        **os.environ,
        "PATH": f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
    }
    before = sorted(p.name for p in target.iterdir()), (target / "nginx.conf").read_text()
    done = subprocess.run(
        [*check.command, "-e", f"root={target}"],  # the plan's command; the variable says where "the host" is
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "changed=2" in done.stdout  # check mode reports what it would change ...
    assert "+worker_processes 8;" in done.stdout  # ... with --diff showing how
    assert (sorted(p.name for p in target.iterdir()), (target / "nginx.conf").read_text()) == before


@pytest.mark.skipif(not ANSIBLE_PLAYBOOK.exists(), reason="ansible-core is a dev dependency of the venv")
def test_a_broken_playbook_fails_the_check(tmp_path: Path):
    repo = tmp_path / "ops"
    (repo / "playbooks").mkdir(parents=True)
    (repo / "playbooks" / "web.yml").write_text(
        "- hosts: all\n  tasks:\n    - ansible.builtin.no_such_module: {}\n"
    )
    [check] = decide(context(["playbooks/web.yml"]), LOCAL).test_plan.checks
    env = {**os.environ, "PATH": f"{ANSIBLE_PLAYBOOK.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env |= {"HOME": str(tmp_path), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "t")}
    done = subprocess.run(check.command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no_such_module" in done.stdout + done.stderr
