"""`awo demo-world`: a generated git repository with known ground truth, for the demo and the tests.

Several services (top-level folders with code, tests, docs, config, migrations and UI text), a dozen
authors of different experience plus a dependency bot, commits spread over more than two years. Some
commits plant a defect in one of the lines they write, with a probability that grows with change size,
diffusion, author inexperience and the fragility of the touched module, plus noise — so that, as in
real projects, the change metrics predict defects only moderately well. Defects are found late (lognormal
delay, median about four months), and the history is as messy as real data: fixes that also touch
unrelated lines, refactors that move lines between planting and fixing, several defects fixed by one
commit, fix messages without a keyword, defects never fixed.

Commits are written with `git fast-import` (2,000 commits in a few seconds). The ground truth goes to
`truth.parquet` beside the repository: `sha, bug_inducing, fixed_by, is_fix, fixes`; the services'
dependency topology to `services.yaml` (a service map, features/topology.py) and the cause of every
incident to `incident-truth.csv` (`incident_id, culprit_deploy_id`; empty for noise incidents).
One more commit, on the branch `operator-tools` off main's newest commit, is a pull request that adds
insecure calls to the gateway (a shell on request data, `yaml.load` without a safe loader) for the security
gate; main's history is as the seed draws it.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from features.errors import AwoError

START = 1_672_704_000  # 2023-01-03 00:00 UTC: fixed, so a seed always gives the same repository
DAY = 86_400

SERVICES = ("payments", "catalog", "accounts", "search", "notifications", "gateway")
# Who calls whom: a defect shipped to a dependency may surface as an incident of its callers.
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "payments": ("accounts",),
    "catalog": (),
    "accounts": (),
    "search": ("catalog",),
    "notifications": ("accounts",),
    "gateway": ("payments", "catalog", "accounts", "search"),
}
CRITICALITY = {"payments": "critical", "gateway": "critical", "accounts": "high"}
TOPOLOGY_FILE = "services.yaml"
INCIDENT_TRUTH_FILE = "incident-truth.csv"
MODULES = ("core", "api", "models", "rules", "storage", "client", "validation", "jobs")

# (name, email, skill 0..1, activity weight, joins after this share of the history)
AUTHORS = (
    ("Ada Moreau", "ada@example.org", 0.95, 5.0, 0.0),
    ("Bilal Haddad", "bilal@example.org", 0.9, 4.0, 0.0),
    ("Chen Wei", "chen@example.org", 0.8, 3.5, 0.05),
    ("Dana Kowalski", "dana@example.org", 0.75, 3.0, 0.1),
    ("Emeka Obi", "emeka@example.org", 0.7, 2.5, 0.2),
    ("Farah Nasser", "farah@example.org", 0.6, 2.0, 0.3),
    ("Gustavo Lima", "gustavo@example.org", 0.5, 2.0, 0.4),
    ("Hana Sato", "hana@example.org", 0.45, 1.5, 0.5),
    ("Ivan Petrov", "ivan@example.org", 0.35, 1.5, 0.6),
    ("Julia Berg", "julia@example.org", 0.3, 1.0, 0.7),
    ("Kofi Mensah", "kofi@example.org", 0.25, 1.0, 0.8),
    ("Lena Fischer", "lena@example.org", 0.2, 0.8, 0.85),
)
BOT = ("dependabot[bot]", "49699333+dependabot[bot]@users.noreply.github.com")
# Bilal committed under an old address early on; .mailmap folds it into his current identity.
ALIAS = ("B. Haddad", "bilal.haddad@oldcorp.example")


FEATURES = (
    "discount codes", "bulk import", "pagination", "audit trail", "retry policy", "currency rounding",
    "webhooks", "rate limits", "search filters", "locale fallback",
)  # fmt: skip
SYMPTOMS = ("crash", "rounding error", "race", "wrong total", "timeout")
FIX_MESSAGES = (
    "Fix {symptom} in {service}", "Bug: wrong result in {service} when input is empty",
    "{service}: fix regression from last release", "Hotfix for {service} outage",
)  # fmt: skip
SILENT_FIX_MESSAGES = (
    "Handle empty input in {service}", "Correct {service} totals", "Guard against zero limit in {service}",
    "Make {service} tolerate missing keys",
)  # fmt: skip


@dataclass
class Line:
    text: str
    origin: int  # index of the commit that last wrote this line


@dataclass
class Defect:
    planted_by: int
    line: Line
    path: str
    found_at: float | None  # None: never found
    fixed_by: int | None = None


@dataclass(frozen=True)
class PlantedChange:
    """The insecure pull request: its branch, head commit, the main commit it starts from, the file added."""

    branch: str
    sha: str
    base: str
    service: str
    path: str


# The security gate's example (issue 17): bandit reports B602 (subprocess with shell=True, high) and B506
# (yaml.load, medium). A new file of valid Python: the generated modules are not parseable, so a scanner
# sees only what this change adds.
SECURITY_BRANCH = "operator-tools"
SECURITY_SERVICE = "gateway"
SECURITY_PATH = f"{SECURITY_SERVICE}/src/{SECURITY_SERVICE}/operator_tools.py"
SECURITY_SOURCE = '''"""Operator tools of the gateway: run a maintenance command, load a routing table."""

import subprocess

import yaml


def run_maintenance(request):
    return subprocess.call(request.args["command"], shell=True)


def load_routes(request):
    return yaml.load(request.data)
'''
SECURITY_MESSAGE = "Let operators run maintenance commands and load routing tables through the gateway"


@dataclass
class WorldSummary:
    repo: Path
    truth_path: Path
    commits: int
    authors: int
    days: int
    bug_inducing: int
    fix_commits: int
    unfixed: int
    deployments: int = 0
    incidents: int = 0
    test_runs: int = 0
    topology_path: Path | None = None
    incident_truth_path: Path | None = None
    security_change: PlantedChange | None = None


@dataclass
class _Commit:
    author: tuple[str, str]
    at: int
    message: str
    writes: dict[str, str | None] = field(default_factory=dict)  # path → content, None = delete
    kind: str = "feature"


class _World:
    def __init__(self, seed: int, n_commits: int) -> None:
        self.rng = random.Random(seed)
        self.n = n_commits
        self.files: dict[str, list[Line]] = {}
        self.fragility: dict[str, float] = {}
        self.defects: list[Defect] = []
        self.fixes_of: dict[int, list[int]] = {}  # fix commit → planting commits
        self.commits: list[_Commit] = []
        self.author_commits: dict[str, int] = {}
        self.counter = 0
        self.versions: dict[str, int] = {"requests": 28, "sqlalchemy": 20, "pydantic": 2, "httpx": 24}
        self.modules = {s: [m for m in MODULES if self.rng.random() < 0.6] or ["core"] for s in SERVICES}

    # --- content -------------------------------------------------------------------------------
    def _code_line(self, module: str) -> str:
        self.counter += 1
        k = self.counter
        r = self.rng.random()
        if r < 0.08:
            return ""
        if r < 0.16:
            return f"    # {self.rng.choice(['keep', 'note', 'why', 'see'])}: rule {k} of {module}"
        if r < 0.28:
            return f"def {module}_step_{k}(ctx, limit={self.rng.randint(1, 99)}):"
        op = self.rng.choice(["+", "-", "*", "//", "%"])
        return f"    value_{k} = ctx.get('{module}_{k % 53}', {self.rng.randint(0, 999)}) {op} limit"

    def _text_line(self, kind: str) -> str:
        self.counter += 1
        k = self.counter
        if kind == "docs":
            return f"The {self.rng.choice(['service', 'endpoint', 'job'])} handles case {k} as described."
        if kind == "config":
            return f"setting_{k}: {self.rng.randint(1, 500)}"
        if kind == "migration":
            return f"ALTER TABLE t_{k % 17} ADD COLUMN c_{k} INTEGER DEFAULT {self.rng.randint(0, 9)};"
        if kind == "ui":
            return f'msgid "label_{k}"\nmsgstr "Label {k}"'
        return f"    assert run_case_{k}() == {self.rng.randint(0, 99)}"

    def _new_lines(self, path: str, count: int, origin: int) -> list[Line]:
        kind = _path_kind(path)
        module = Path(path).stem
        make = (lambda: self._code_line(module)) if kind == "code" else (lambda: self._text_line(kind))
        return [Line(make(), origin) for _ in range(count)]

    # --- history -------------------------------------------------------------------------------
    def build(self) -> None:
        span = max(800, int(self.n * 0.45)) * DAY
        times = sorted(START + int(self.rng.random() * span) for _ in range(self.n))
        self._initial_commit(times[0])
        for i in range(1, self.n):
            self._next_commit(i, max(times[i], self.commits[-1].at + 60))

    def _initial_commit(self, at: int) -> None:
        commit = _Commit(AUTHORS[0][:2], at, "Initial import of the services", kind="feature")
        self.commits.append(commit)
        commit.writes["README.md"] = "# Shop platform\n\nSix services behind one gateway.\n"
        commit.writes["requirements.txt"] = self._requirements()
        commit.writes[".mailmap"] = f"{AUTHORS[1][0]} <{AUTHORS[1][1]}> {ALIAS[0]} <{ALIAS[1]}>\n"
        for s in SERVICES:
            for m in self.modules[s]:
                path = f"{s}/src/{s}/{m}.py"
                self.files[path] = self._new_lines(path, self.rng.randint(20, 60), 0)
                self.fragility[path] = self.rng.lognormvariate(0, 0.9)
            for path, n in (
                (f"{s}/tests/test_{s}.py", 15),
                (f"{s}/docs/{s}.md", 8),
                (f"{s}/config/settings.yaml", 6),
                (f"{s}/migrations/0001_init.sql", 4),
                (f"{s}/locales/en.po", 4),
            ):
                self.files[path] = self._new_lines(path, n, 0)
        for path in self.files:
            commit.writes[path] = _render(self.files[path])
        self.author_commits[AUTHORS[0][1]] = 1

    def _requirements(self) -> str:
        return "".join(f"{name}>={major}.0\n" for name, major in self.versions.items())

    def _pick_author(self, i: int) -> tuple[str, str, float]:
        progress = i / self.n
        active = [a for a in AUTHORS if a[4] <= progress]
        name, email, skill, _, _ = self.rng.choices(active, weights=[a[3] for a in active])[0]
        if email == AUTHORS[1][1] and progress < 0.3 and self.rng.random() < 0.7:
            name, email = ALIAS
        return name, email, skill

    def _next_commit(self, i: int, at: int) -> None:
        rng = self.rng
        due = [d for d in self.defects if d.fixed_by is None and d.found_at is not None and d.found_at <= at]
        due = [d for d in due if any(line is d.line for line in self.files.get(d.path, ()))]
        if due and rng.random() < 0.5:
            return self._fix_commit(i, at, due)
        r = rng.random()
        if r < 0.04:
            self._bot_commit(i, at)
        elif r < 0.12:
            self._refactor_commit(i, at)
        elif r < 0.26:
            self._side_commit(i, at, rng.choice(["docs", "test", "config"]))
        else:
            self._feature_commit(i, at)

    def _commit(
        self, i: int, at: int, author: tuple[str, str], message: str, kind: str, paths: set[str]
    ) -> None:
        commit = _Commit(author, at, message, kind=kind)
        for path in sorted(paths):
            commit.writes[path] = _render(self.files[path]) if path in self.files else None
        self.commits.append(commit)
        key = AUTHORS[1][1] if author[1] == ALIAS[1] else author[1]
        self.author_commits[key] = self.author_commits.get(key, 0) + 1

    def _edit(self, path: str, i: int, added: int, modified: int, deleted: int) -> list[Line]:
        """Apply an edit to one file; returns the lines this commit wrote."""
        lines = self.files.setdefault(path, [])
        written: list[Line] = []
        for _ in range(min(deleted, max(0, len(lines) - 5))):
            del lines[self.rng.randrange(len(lines))]
        for _ in range(min(modified, len(lines))):
            j = self.rng.randrange(len(lines))
            lines[j] = self._new_lines(path, 1, i)[0]
            written.append(lines[j])
        if added:
            block = self._new_lines(path, added, i)
            at = self.rng.randint(0, len(lines))
            lines[at:at] = block
            written.extend(block)
        return written

    def _feature_commit(self, i: int, at: int) -> None:
        rng = self.rng
        name, email, skill = self._pick_author(i)
        service = rng.choice(SERVICES)
        n_modules = min(len(self.modules[service]), 1 + int(rng.expovariate(1.3)))
        targets = [f"{service}/src/{service}/{m}.py" for m in rng.sample(self.modules[service], n_modules)]
        if rng.random() < 0.12:  # cross-service change
            other = rng.choice([s for s in SERVICES if s != service])
            targets.append(f"{other}/src/{other}/{rng.choice(self.modules[other])}.py")
        size = max(1, int(rng.lognormvariate(2.3, 1.0)))
        written: list[tuple[str, Line]] = []
        churn = 0
        for path in targets:
            share = max(1, int(size * rng.uniform(0.3, 1.0)))
            modified = int(share * rng.uniform(0, 0.4))
            deleted = int(share * rng.uniform(0, 0.3))
            churn += share + 2 * modified + deleted
            written += [(path, line) for line in self._edit(path, i, share, modified, deleted)]
        touched = set(targets)
        for extra, p in (
            ("tests", 0.45),
            ("docs", 0.12),
            ("config", 0.12),
            ("migrations", 0.06),
            ("locales", 0.1),
        ):
            if rng.random() < p:
                path = self._side_path(service, extra, i)
                self._edit(path, i, rng.randint(1, 8), rng.randint(0, 2), 0)
                touched.add(path)
        verb = rng.choice(["Add", "Support", "Implement", "Introduce", "Allow", "Extend"])
        what = rng.choice(FEATURES)
        self._plant(i, at, written, churn, len(touched), skill, email)
        self._commit(i, at, (name, email), f"{verb} {what} in {service}", "feature", touched)

    def _side_path(self, service: str, kind: str, i: int) -> str:
        if kind == "migrations" and self.rng.random() < 0.5:
            n = 1 + sum(1 for p in self.files if p.startswith(f"{service}/migrations/"))
            return f"{service}/migrations/{n:04d}_change_{i}.sql"
        return {
            "tests": f"{service}/tests/test_{service}.py",
            "docs": f"{service}/docs/{service}.md",
            "config": f"{service}/config/settings.yaml",
            "migrations": f"{service}/migrations/0001_init.sql",
            "locales": f"{service}/locales/en.po",
        }[kind]

    def _plant(self, i: int, at: int, written: list[tuple[str, Line]], churn: int, nf: int, skill: float,
               email: str) -> None:  # fmt: skip
        """Maybe plant a defect in one of the code lines this commit wrote (Kamei-style risk + noise)."""
        code = [(p, ln) for p, ln in written if _path_kind(p) == "code" and _is_statement(ln.text)]
        if not code:
            return
        rng = self.rng
        fragility = max(self.fragility.get(p, 1.0) for p, _ in code)
        experience = self.author_commits.get(email, 0)
        logit = (
            -2.7
            + 0.42 * math.log1p(churn)
            + 0.30 * min(nf - 1, 5)
            + 0.55 * math.log(fragility + 0.2)
            + 1.1 * (1 - skill)
            + 0.35 * (experience < 20)
            + rng.gauss(0, 1.0)
        )
        if rng.random() >= 1 / (1 + math.exp(-logit)):
            return
        path, line = rng.choices(code, weights=[self.fragility.get(p, 1.0) for p, _ in code])[0]
        found = None if rng.random() < 0.15 else at + rng.lognormvariate(math.log(120), 0.9) * DAY
        self.defects.append(Defect(i, line, path, found))

    def _fix_commit(self, i: int, at: int, due: list[Defect]) -> None:
        rng = self.rng
        name, email, skill = self._pick_author(i)
        batch = [due[0], *[d for d in due[1:] if rng.random() < 0.2][:2]]  # several fixed together
        touched: set[str] = set()
        written: list[tuple[str, Line]] = []
        for defect in batch:
            lines = self.files[defect.path]
            j = next(k for k, line in enumerate(lines) if line is defect.line)
            lines[j] = Line(defect.line.text.replace("limit", "max(limit, 1)", 1) + "  # guarded", i)
            if lines[j].text == defect.line.text or not lines[j].text.strip():
                lines[j] = Line(f"    value_fixed_{i}_{j} = ctx.get('safe', 0)", i)
            written.append((defect.path, lines[j]))
            defect.fixed_by = i
            touched.add(defect.path)
            if rng.random() < 0.5:  # the fix also touches unrelated lines
                noise = self._edit(defect.path, i, rng.randint(0, 4), rng.randint(1, 3), 0)
                written += [(defect.path, ln) for ln in noise]
            if rng.random() < 0.6:
                path = self._side_path(defect.path.split("/")[0], "tests", i)
                self._edit(path, i, rng.randint(2, 10), 0, 0)
                touched.add(path)
        self.fixes_of[i] = [d.planted_by for d in batch]
        service = batch[0].path.split("/")[0]
        # One fix message in five names no defect keyword, as in real histories.
        template = rng.choice(FIX_MESSAGES if rng.random() < 0.8 else SILENT_FIX_MESSAGES)
        message = template.format(service=service, symptom=rng.choice(SYMPTOMS))
        churn = sum(1 for _ in written)
        self._plant(i, at, written, churn, len(touched), skill, email)
        self._commit(i, at, (name, email), message, "fix", touched)

    def _refactor_commit(self, i: int, at: int) -> None:
        """Move a block of lines inside a file or to a sibling module: the lines keep their origin, so
        blame with move/copy detection still finds the commit that wrote them."""
        rng = self.rng
        name, email, _ = self._pick_author(i)
        service = rng.choice(SERVICES)
        source = f"{service}/src/{service}/{rng.choice(self.modules[service])}.py"
        lines = self.files[source]
        if len(lines) < 15:
            return self._feature_commit(i, at)
        size = rng.randint(5, min(25, len(lines) // 2))
        start = rng.randrange(len(lines) - size)
        block = lines[start : start + size]
        del lines[start : start + size]
        siblings = [m for m in self.modules[service] if f"/{m}.py" not in source]
        if siblings and rng.random() < 0.5:
            target = f"{service}/src/{service}/{rng.choice(siblings)}.py"
            self.files[target][len(self.files[target]) :] = block
            touched = {source, target}
            message = f"Refactor: move helpers from {Path(source).stem} to {Path(target).stem}"
        else:
            at_line = rng.randint(0, len(lines))
            lines[at_line:at_line] = block
            touched = {source}
            message = f"Reorganize {Path(source).stem} in {service}"
        self._commit(i, at, (name, email), message, "refactor", touched)

    def _side_commit(self, i: int, at: int, kind: str) -> None:
        rng = self.rng
        name, email, _ = self._pick_author(i)
        service = rng.choice(SERVICES)
        path = self._side_path(service, {"docs": "docs", "test": "tests", "config": "config"}[kind], i)
        self._edit(path, i, rng.randint(1, 15), rng.randint(0, 3), rng.randint(0, 2))
        message = {
            "docs": f"Document {service} behaviour",
            "test": f"Add tests for {service}",
            "config": f"Tune {service} settings",
        }[kind]
        self._commit(i, at, (name, email), message, kind, {path})

    def _bot_commit(self, i: int, at: int) -> None:
        package = self.rng.choice(sorted(self.versions))
        self.versions[package] += 1
        self.files["requirements.txt"] = [Line(t, i) for t in self._requirements().splitlines()]
        self._commit(
            i, at, BOT, f"Bump {package} to {self.versions[package]}.0", "chore", {"requirements.txt"}
        )


def _path_kind(path: str) -> str:
    if "/src/" in path:
        return "code"
    if "/tests/" in path:
        return "test"
    if "/docs/" in path:
        return "docs"
    if "/config/" in path:
        return "config"
    if "/migrations/" in path:
        return "migration"
    if "/locales/" in path:
        return "ui"
    return "other"


def _is_statement(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


def _render(lines: list[Line]) -> str:
    return "".join(line.text + "\n" for line in lines)


def _security_commit(main: list[_Commit]) -> _Commit:
    """The insecure pull request, an hour after main's newest commit, by the newest author to join."""
    name, email = AUTHORS[-1][:2]
    change = _Commit((name, email), main[-1].at + 3600, SECURITY_MESSAGE, kind="feature")
    change.writes[SECURITY_PATH] = SECURITY_SOURCE
    return change


def _fast_import_stream(commits: list[_Commit], branch: tuple[str, _Commit] | None = None) -> bytes:
    """main's commits in order, then (optionally) one commit on `branch` whose parent is main's newest."""
    out: list[bytes] = []
    heads = [("main", c) for c in commits] + ([branch] if branch else [])
    for n, (ref, c) in enumerate(heads, start=1):
        ident = f"{c.author[0]} <{c.author[1]}> {c.at} +0000"
        msg = c.message.encode() + b"\n"
        out.append(f"commit refs/heads/{ref}\nmark :{n}\nauthor {ident}\ncommitter {ident}\n".encode())
        out.append(b"data %d\n" % len(msg) + msg)
        if n > 1:
            out.append(f"from :{n - 1}\n".encode())
        for path, content in c.writes.items():
            if content is None:
                out.append(f"D {path}\n".encode())
            else:
                data = content.encode()
                out.append(f"M 100644 inline {path}\n".encode() + b"data %d\n" % len(data) + data + b"\n")
        out.append(b"\n")
    return b"".join(out)


def generate_world(out: Path, seed: int = 7, n_commits: int = 2000, overwrite: bool = False) -> WorldSummary:
    """Write the demo repository to `out/repo` and its ground truth to `out/truth.parquet`."""
    out = Path(out)
    repo = out / "repo"
    if repo.exists():
        if not overwrite:
            raise AwoError(f"{repo} already exists; remove it or choose another --out")
        shutil.rmtree(repo)
    world = _World(seed, n_commits)
    world.build()
    repo.mkdir(parents=True)
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(out), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    git = ["git", "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"]
    subprocess.run([*git, "init", "-q", str(repo)], check=True, env=env)
    planted = _security_commit(world.commits)
    stream = _fast_import_stream(world.commits, (SECURITY_BRANCH, planted))
    subprocess.run([*git, "fast-import", "--quiet"], cwd=repo, input=stream, check=True, env=env)
    subprocess.run([*git, "checkout", "-q", "main"], cwd=repo, check=True, env=env)
    shas = subprocess.run(
        ["git", "rev-list", "--reverse", "main"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.split()
    if len(shas) != len(world.commits):
        raise AwoError(f"demo world: git holds {len(shas)} commits, expected {len(world.commits)}")
    branch_head = subprocess.run(
        ["git", "rev-parse", f"refs/heads/{SECURITY_BRANCH}"], cwd=repo, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    security_change = PlantedChange(SECURITY_BRANCH, branch_head, shas[-1], SECURITY_SERVICE, SECURITY_PATH)
    truth = _truth(world, shas)
    truth_path = out / "truth.parquet"
    truth.to_parquet(truth_path, index=False)
    delivery = write_delivery(world, shas, out, seed)
    topology_path = write_topology(out / TOPOLOGY_FILE)
    return WorldSummary(
        repo=repo,
        truth_path=truth_path,
        commits=len(shas),
        authors=len(AUTHORS) + 1,
        days=(world.commits[-1].at - world.commits[0].at) // DAY,
        bug_inducing=int(truth["bug_inducing"].sum()),
        fix_commits=int(truth["is_fix"].sum()),
        unfixed=sum(1 for d in world.defects if d.fixed_by is None),
        deployments=delivery["deployments"],
        incidents=delivery["incidents"],
        test_runs=delivery["test_runs"],
        topology_path=topology_path,
        incident_truth_path=out / INCIDENT_TRUTH_FILE,
        security_change=security_change,
    )


def write_topology(path: Path) -> Path:
    """The world's service map: each service's folder, its dependencies and criticality."""
    services = {
        s: {
            "paths": [f"{s}/*"],
            "depends_on": list(DEPENDS_ON[s]),
            "criticality": CRITICALITY.get(s, "medium"),
        }
        for s in SERVICES
    }
    path.write_text(
        "# The demo world's services: paths, who calls whom, criticality (features/topology.py)\n"
        + yaml.safe_dump({"version": 1, "services": services}, sort_keys=False)
    )
    return path


def _truth(world: _World, shas: list[str]) -> pd.DataFrame:
    """sha, bug_inducing, fixed_by (fix shas), is_fix (the commit fixes a planted defect), fixes."""
    fixed_by: dict[int, list[str]] = {}
    for defect in world.defects:
        entry = fixed_by.setdefault(defect.planted_by, [])
        if defect.fixed_by is not None:
            entry.append(shas[defect.fixed_by])
    return pd.DataFrame(
        {
            "sha": shas,
            "bug_inducing": [i in fixed_by for i in range(len(shas))],
            "fixed_by": [sorted(set(fixed_by.get(i, []))) for i in range(len(shas))],
            "is_fix": [i in world.fixes_of for i in range(len(shas))],
            "fixes": [sorted({shas[j] for j in world.fixes_of.get(i, [])}) for i in range(len(shas))],
            "kind": [c.kind for c in world.commits],
        }
    )


# --- delivery history ------------------------------------------------------------------------------

STRATEGY = {"payments": "canary", "gateway": "blue-green"}
FLAKY_TESTS = {("payments-integration", "test_checkout_timeout"), ("search-unit", "test_ranking_ties"),
               ("gateway-integration", "test_websocket_reconnect")}  # fmt: skip


def _suites(service: str, modules: list[str]) -> list[tuple[str, list[str]]]:
    unit = [f"test_{m}" for m in modules[:4]]
    integration = ["test_end_to_end", "test_contract"]
    for suite, test in FLAKY_TESTS:
        if suite.startswith(service + "-"):
            (unit if suite.endswith("-unit") else integration).append(test)
    return [(f"{service}-unit", unit), (f"{service}-integration", integration)]


def _iso(ts: float) -> str:
    return pd.Timestamp(int(ts), unit="s", tz="UTC").isoformat().replace("+00:00", "Z")


def _services_of(commit: _Commit) -> set[str]:
    return {p.split("/")[0] for p in commit.writes if "/" in p and p.split("/")[0] in SERVICES}


def write_delivery(world: _World, shas: list[str], out: Path, seed: int) -> dict[str, int]:
    """deployments.csv, incidents.csv and test-runs.csv whose failures follow the planted defects: a
    deployment that ships a defect of its service fails far more often (rolled back, failed, or an incident
    hours later), plus background noise and a few flaky tests. A defect shipped to a service may also
    surface hours later as an incident of a service that calls it (DEPENDS_ON). The cause of every incident
    goes to incident-truth.csv, never to incidents.csv."""
    rng = random.Random(seed * 7919 + 1)
    cascade_rng = random.Random(seed * 7919 + 2)  # its own stream: the rows drawn above stay as they were
    culprit: dict[str, str] = {}  # incident id → the deployment that caused it
    shipped_defects: list[tuple[str, str, float]] = []  # failed production deploys that shipped defects
    planted: dict[int, int] = {}
    for defect in world.defects:
        planted[defect.planted_by] = planted.get(defect.planted_by, 0) + 1
    services_of = [_services_of(c) for c in world.commits]
    times = [c.at for c in world.commits]
    deployments: list[list] = []
    incidents: list[list] = []
    end = times[-1]
    for service in SERVICES:
        t = times[0] + rng.uniform(1, 4) * DAY
        last_index = 0
        while t < end:
            head = max(last_index, bisect.bisect_right(times, t) - 1)  # the commit at main's tip at t
            shipped = [i for i in range(last_index + 1, head + 1) if service in services_of[i]]
            defects = sum(planted.get(i, 0) for i in shipped)
            p_fail = 1 - (1 - 0.03) * (1 - 0.35) ** defects * (1 - 0.01) ** len(shipped)
            stage_at = t - 2 * 3600
            n = len(deployments)
            deployments.append([f"dep-{n:05d}", service, "staging", shas[head], _iso(stage_at),
                                _iso(stage_at + 600), "rolling",
                                "failed" if rng.random() < 0.25 * p_fail else "succeeded"])  # fmt: skip
            deploy_id = f"dep-{n + 1:05d}"
            strategy = STRATEGY.get(service, "full" if rng.random() < 0.1 else "rolling")
            outcome = "succeeded"
            failing = rng.random() < p_fail
            if failing:
                r = rng.random()
                if r < 0.45:
                    outcome = "rolled-back"
                elif r < 0.6:
                    outcome = "failed"
                if r >= 0.3:  # an incident follows; half of them name the deployment
                    started = t + rng.uniform(0.5, 20) * 3600
                    culprit[f"inc-{len(incidents):05d}"] = deploy_id
                    incidents.append([f"inc-{len(incidents):05d}", service, rng.choice(["high", "critical"]),
                                      _iso(started), _iso(started + rng.uniform(0.5, 6) * 3600),
                                      deploy_id if rng.random() < 0.5 else "", "",
                                      f"{service} errors after release"])  # fmt: skip
            deployments.append([deploy_id, service, "production", shas[head], _iso(t), _iso(t + 900),
                                strategy, outcome])  # fmt: skip
            if defects and failing:  # a defect bad enough to break callers shows at the service too
                shipped_defects.append((deploy_id, service, t))
            if rng.random() < 0.12:  # background noise: minor incidents unrelated to releases
                started = t + rng.uniform(1, 72) * 3600
                severity = rng.choice(["low", "medium", "medium", "high"])
                incidents.append([f"inc-{len(incidents):05d}", service, severity, _iso(started),
                                  _iso(started + 3600), "", "", f"{service} degraded"])  # fmt: skip
            last_index = head
            t += rng.expovariate(1 / 3.0) * DAY + 3600
    incidents += _cascades(shipped_defects, len(incidents), end, cascade_rng, culprit)
    runs: list[list] = []
    for i in range(len(world.commits)):
        broken = planted.get(i, 0) > 0
        for service in sorted(services_of[i]):
            for suite, tests in _suites(service, world.modules[service]):
                for test in tests:
                    flaky = (suite, test) in FLAKY_TESTS
                    fails = (broken and rng.random() < 0.15) or (flaky and rng.random() < 0.2)
                    duration = round(rng.lognormvariate(0.5 if suite.endswith("unit") else 2.5, 0.4), 3)
                    run_started = _iso(times[i] + 300)  # CI starts a few minutes after the commit
                    verdict = "failed" if fails else "passed"
                    runs.append([f"ci-{i:05d}", shas[i], suite, test, duration, verdict, 1, run_started])
                    if fails:  # CI retries failures once: flaky tests usually pass, real failures do not
                        again = "passed" if flaky and rng.random() < 0.9 else "failed"
                        runs.append([f"ci-{i:05d}", shas[i], suite, test, duration, again, 2, run_started])
    for name, header, rows in (
        (
            "deployments.csv",
            "deploy_id,service,environment,sha,started_at,finished_at,strategy,outcome",
            deployments,
        ),
        (
            "incidents.csv",
            "incident_id,service,severity,started_at,resolved_at,deploy_id,sha,summary",
            incidents,
        ),
        ("test-runs.csv", "run_id,sha,suite,test_id,duration_s,outcome,attempt,started_at", runs),
    ):
        with open(out / name, "w", newline="") as fh:
            fh.write(header + "\n")
            csv.writer(fh).writerows(rows)
    with open(out / INCIDENT_TRUTH_FILE, "w", newline="") as fh:
        fh.write("incident_id,culprit_deploy_id\n")
        csv.writer(fh).writerows([row[0], culprit.get(row[0], "")] for row in incidents)
    return {"deployments": len(deployments), "incidents": len(incidents), "test_runs": len(runs)}


def _cascades(
    shipped: list[tuple[str, str, float]],
    first: int,
    end: float,
    rng: random.Random,
    culprit: dict[str, str],
) -> list[list]:
    """Incidents of callers caused by a defect shipped to a service they depend on, in a deployment that
    failed (rolled back, failed, or an incident of its own): each direct caller has a 30% chance of a
    serious incident 1-24 h after the deployment. The caller's team does not know the cause, so the incident
    names no deployment."""
    callers = {s: [c for c in SERVICES if s in DEPENDS_ON[c]] for s in SERVICES}
    rows: list[list] = []
    for deploy_id, service, t in shipped:
        for caller in callers[service]:
            if rng.random() >= 0.3:
                continue
            started = t + rng.uniform(1, 24) * 3600
            if started > end:
                continue
            incident_id = f"inc-{first + len(rows):05d}"
            culprit[incident_id] = deploy_id
            rows.append([incident_id, caller, rng.choice(["high", "critical"]), _iso(started),
                         _iso(started + rng.uniform(0.5, 6) * 3600), "", "", f"{caller} errors"])  # fmt: skip
    return rows
