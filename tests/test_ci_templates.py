"""The CI templates (GitHub composite action, GitLab include, Jenkins stage) run as their CI system would run
them, against a real git repository and the real `awo decide`: exit codes, outputs and tool errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import TinyRepo, free_port

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / ".github" / "actions" / "awo"
GITLAB = ROOT / "ci" / "gitlab" / "awo.gitlab-ci.yml"
JENKINS = ROOT / "ci" / "jenkins" / "awo-decide.groovy"
VENV_BIN = ROOT / ".venv" / "bin"
# What the CI systems set about themselves: removed from the outer environment so that a test run inside CI
# sees only what each test sets.
CI_VARIABLES = re.compile(r"^(GITHUB_|GITLAB_|CI_|JENKINS_|GIT_COMMIT|GIT_PREVIOUS|CHANGE_|AWO_)|^CI$")


@pytest.fixture(scope="module")
def change(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A repository whose commits get each gate from the policy's file rules. Nothing is scored (the risk
    API named is a closed port: the cheapest way to the policy's on_error gate, without loading MLflow), and
    the policy's on_error gate is `standard`, so an unruled change proceeds."""
    base = tmp_path_factory.mktemp("ci")
    repo = TinyRepo(base / "repo")
    repo.write("README.md", "# shop\n")
    repo.lines("src/app.py", 10)
    shas = {"init": repo.commit("initial import")}
    repo.write("docs/guide.md", "how to run the shop\n")
    shas["docs"] = repo.commit("document the shop", at=1_600_086_400)
    repo.lines("payments/charge.py", 12)
    shas["payments"] = repo.commit("charge cards", at=1_600_172_800)
    repo.write("secrets/prod.key", "-----BEGIN KEY-----\n")
    shas["secrets"] = repo.commit("add the production key", at=1_600_259_200)

    policy = yaml.safe_load((ROOT / "agents" / "default_policy.yaml").read_text())
    policy["on_error"] = "standard"
    policy["rules"] += [
        {
            "name": "payments-review",
            "when": {"paths": ["payments/*"]},
            "min_gate": "senior_review",
            "reason": "payments code",
        },
        {
            "name": "no-keys",
            "when": {"paths": ["secrets/*"]},
            "min_gate": "block",
            "reason": "a key is committed",
        },
    ]
    (base / "policy.yaml").write_text(yaml.safe_dump(policy))

    env = {k: v for k, v in os.environ.items() if not CI_VARIABLES.match(k)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        AWO_DATA_DIR=str(base / "data"),
        AWO_POLICY=str(base / "policy.yaml"),
        AWO_RISK_API_URL=f"http://127.0.0.1:{free_port()}",
        # Each `awo decide` is a fresh interpreter: compiled modules are kept for the next one.
        PYTHONPYCACHEPREFIX=str(base / "pycache"),
    )
    return {"repo": repo.path, "shas": shas, "env": env, "base": base}


def run_bash(script: str, env: dict, cwd: Path, shell: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*shell, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def read_pairs(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (GitHub's output file, GitLab's dotenv report)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def run_github_action(change: dict, tmp: Path, inputs: dict[str, str], event: dict, **env: str):
    """The action's composite step as the runner runs it: `${{ inputs.* }}` filled in from the inputs and
    their defaults, GITHUB_* variables set, the step's script under `bash --noprofile --norc -eo pipefail`."""
    action = yaml.safe_load((ACTION / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    unknown = set(inputs) - set(values)
    assert not unknown, f"not inputs of the action: {unknown}"
    values.update(inputs)
    (step,) = action["runs"]["steps"]
    assert step["shell"] == "bash"

    def expand(text: str) -> str:
        def one(match: re.Match) -> str:
            name = match.group(1).strip()
            assert name.startswith("inputs."), f"an expression this test does not evaluate: {name}"
            return values[name.removeprefix("inputs.")]

        return re.sub(r"\$\{\{(.*?)\}\}", one, text)

    (tmp / "event.json").write_text(json.dumps(event))
    outputs, summary = tmp / "github_output", tmp / "step_summary"
    outputs.touch()
    summary.touch()
    full_env = {
        **change["env"],
        "GITHUB_ACTIONS": "true",
        "GITHUB_ACTION_PATH": str(ACTION),
        "GITHUB_WORKSPACE": str(change["repo"]),
        "GITHUB_EVENT_PATH": str(tmp / "event.json"),
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(summary),
        **env,
        **{k: expand(str(v)) for k, v in step["env"].items()},
    }
    proc = run_bash(
        step["run"], full_env, change["repo"], ("bash", "--noprofile", "--norc", "-eo", "pipefail")
    )
    declared = {
        name: re.fullmatch(r"\$\{\{\s*steps\.decide\.outputs\.([\w-]+)\s*\}\}", spec["value"]).group(1)  # type: ignore[union-attr]
        for name, spec in action["outputs"].items()
    }
    written = read_pairs(outputs)
    return proc, {name: written.get(key) for name, key in declared.items()}, summary.read_text()


def test_github_action_lets_a_pull_request_that_proceeds_pass_with_its_outputs(change, tmp_path):
    shas = change["shas"]
    event = {"pull_request": {"base": {"sha": shas["init"]}, "head": {"sha": shas["docs"]}}}
    proc, out, summary = run_github_action(
        change,
        tmp_path,
        {"install-from": "", "decision-file": str(tmp_path / "decision.json")},
        event,
        GITHUB_EVENT_NAME="pull_request",
        GITHUB_SHA=shas["docs"],
        GITHUB_BASE_REF="main",
    )
    assert proc.returncode == 0, proc.stderr
    decision = json.loads((tmp_path / "decision.json").read_text())
    assert decision["shas"] == [shas["docs"]]  # the pull request's range, read from the event
    assert out == {
        "gate": "standard",
        "probability": "",
        "decision-id": decision["decision_id"],
        "exit-code": "0",
        "decision-file": str(tmp_path / "decision.json"),
    }
    assert "### awo: standard" in summary and decision["decision_id"] in summary
    assert (
        f"awo: proceed (gate standard, probability unscored, decision {decision['decision_id']}"
        in proc.stdout
    )


def test_github_action_fails_the_job_on_a_block_in_enforce_mode(change, tmp_path):
    shas = change["shas"]
    proc, out, summary = run_github_action(
        change,
        tmp_path,
        {"install-from": "", "decision-file": str(tmp_path / "decision.json")},
        {"before": shas["payments"], "after": shas["secrets"]},
        GITHUB_EVENT_NAME="push",
        GITHUB_SHA=shas["secrets"],
    )
    assert proc.returncode == 4
    assert out["gate"] == "block" and out["exit-code"] == "4"
    assert "a key is committed" in summary
    assert json.loads((tmp_path / "decision.json").read_text())["rules_fired"] == ["no-keys"]


def test_github_action_fails_with_the_tools_error_on_a_bad_sha_never_proceed(change, tmp_path):
    proc, out, _ = run_github_action(
        change,
        tmp_path,
        {"install-from": "", "sha": "0badc0ffee", "mode": "advisory"},
        {},
        GITHUB_SHA=change["shas"]["docs"],
    )
    assert proc.returncode == 2  # awo's usage error, passed on even in advisory mode
    assert "0badc0ffee" in proc.stderr and "the change was NOT decided" in proc.stderr
    assert out["gate"] == "error" and out["decision-id"] == ""


def test_gitlab_job_reports_a_block_in_advisory_mode_without_failing(change, tmp_path):
    shas = change["shas"]
    job = yaml.safe_load(GITLAB.read_text())[".awo-decide"]
    assert job["artifacts"]["reports"]["dotenv"] == job["variables"]["AWO_CI_DOTENV_FILE"]
    # The job's variables as GitLab exports them (in order, each may use the ones before), then what the
    # pipeline sets: the awo checkout is this one and awo is already on PATH.
    exports = "".join(f'export {k}="{v}"\n' for k, v in job["variables"].items())
    overrides = f'export AWO_HOME="{ROOT}" AWO_CI_INSTALL_FROM="" AWO_CI_MODE=advisory\n'
    env = {
        **change["env"],
        "GITLAB_CI": "true",
        "CI": "true",
        "CI_PROJECT_DIR": str(change["repo"]),
        "CI_COMMIT_BEFORE_SHA": shas["payments"],
        "CI_COMMIT_SHA": shas["secrets"],
    }
    script = "set -eo pipefail\n" + exports + overrides + "\n".join(job["script"])
    proc = run_bash(script, env, change["repo"], ("bash",))
    assert proc.returncode == 0, proc.stderr
    report = read_pairs(change["repo"] / job["artifacts"]["reports"]["dotenv"])
    decision = json.loads((change["repo"] / job["artifacts"]["paths"][0]).read_text())
    assert report == {
        "AWO_GATE": "block",
        "AWO_PROBABILITY": "",
        "AWO_DECISION_ID": decision["decision_id"],
        "AWO_EXIT_CODE": "4",
    }
    assert decision["shas"] == [shas["secrets"]]  # CI_COMMIT_BEFORE_SHA..CI_COMMIT_SHA
    assert "awo: block (gate block" in proc.stdout and "advisory mode" in proc.stdout


def jenkins_stage() -> tuple[dict[str, str], str, dict[int, str]]:
    """The stage's literal environment, the script of its `sh(returnStatus: true, ...)` and what the
    pipeline does with each exit status."""
    text = JENKINS.read_text()
    block = re.search(r"environment \{(.*?)\}", text, re.S).group(1)  # type: ignore[union-attr]
    environment = dict(re.findall(r"(\w+) = '([^']*)'", block))
    script = re.search(r"sh\(returnStatus: true, script: '''(.*?)'''\)", text, re.S).group(1)  # type: ignore[union-attr]
    actions = {int(code): step for code, step in re.findall(r"status == (\d+)\) \{\s*(\w+)\(", text)}
    return environment, script, actions


def test_jenkins_stage_marks_a_senior_review_unstable(change, tmp_path):
    shas = change["shas"]
    environment, script, actions = jenkins_stage()
    assert actions == {3: "unstable", 4: "error"}
    env = {
        **change["env"],
        **environment,
        "JENKINS_URL": "http://jenkins.example.org/",
        "WORKSPACE": str(change["repo"]),
        "GIT_PREVIOUS_SUCCESSFUL_COMMIT": shas["docs"],
        "GIT_COMMIT": shas["payments"],
        "AWO_HOME": str(ROOT),
        "AWO_CI_INSTALL_FROM": "",
        "AWO_CI_DECISION_FILE": str(tmp_path / "awo-decision.json"),
    }
    proc = run_bash(script, env, change["repo"], ("sh", "-xe"))  # Jenkins' `sh` step
    assert proc.returncode == 3, proc.stderr
    assert actions[proc.returncode] == "unstable"
    decision = json.loads((tmp_path / "awo-decision.json").read_text())
    assert decision["gate"] == "senior_review" and decision["shas"] == [shas["payments"]]


def test_script_refuses_an_unknown_mode_before_deciding(change):
    env = {**change["env"], "AWO_CI_MODE": "lenient"}
    proc = run_bash(f"bash {ROOT / 'ci' / 'awo-decide.sh'}", env, change["repo"], ("bash",))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "awo: error: AWO_CI_MODE=lenient: expected enforce or advisory"
