"""Request and response models of the risk API, every field constrained, with examples."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Sha = Annotated[
    str, Field(pattern=r"^[0-9a-f]{40}$", description="full commit sha", examples=["3f1c9e0a" * 5])
]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._/@:+-]+$")]


def _one_folder(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("a repository name is a folder name, not '.' or '..'")
    return name


# A repository is a folder under the data root: one path component, never `.` or `..` (untrusted text
# never becomes a path outside the data root).
RepoName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._@+ -]+$",
        description="repository name, as mined (`awo mine --name`)",
        examples=["demo"],
    ),
    AfterValidator(_one_folder),
]
Band = Literal["low", "medium", "high", "critical"]
FeatureName = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")]
FeatureValue = Annotated[float, Field(ge=-1e12, le=1e12, allow_inf_nan=False)]


class CommitQuery(BaseModel):
    """A commit to score: by `sha` of a mined repository, or by raw change metrics for one not mined yet."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"repo": "demo", "sha": "3f1c9e0a" * 5},
                {"repo": "demo", "metrics": {"la": 120, "ld": 30, "nf": 4, "entropy": 1.6, "exp": 12}},
            ]
        },
    )

    repo: RepoName
    sha: Sha | None = None
    metrics: dict[FeatureName, FeatureValue] | None = Field(
        default=None, max_length=200, description="feature name → value, for a commit that is not mined"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CommitQuery:
        if (self.sha is None) == (self.metrics is None):
            raise ValueError("give exactly one of sha or metrics")
        return self


class CommitBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    commits: list[CommitQuery] = Field(
        min_length=1, description="commits to score (at most the configured batch)"
    )
    drivers: int = Field(default=5, ge=0, le=500, description="how many top contributing features to return")


class Driver(BaseModel):
    feature: str
    value: float | None
    contribution: float = Field(description="log-odds contribution to the raw score")


class LineDriver(BaseModel):
    where: str | None = Field(description="path:line of the added line in the new file (None: not known)")
    line: str
    score: float = Field(description="the line's share of the code model's log-odds (JITLine-style)")


class ModelRef(BaseModel):
    name: str
    version: str
    kind: str | None


class ItemError(BaseModel):
    code: str
    status: int
    message: str


class CommitRisk(BaseModel):
    repo: str
    sha: str | None
    probability: float | None = Field(default=None, ge=0, le=1, description="calibrated probability")
    band: Band | None = None
    model: ModelRef | None = None
    raw_score: float | None = Field(default=None, description="log-odds before calibration")
    base_value: float | None = Field(default=None, description="log-odds of an average commit (the bias)")
    drivers: list[Driver] = Field(default=[], description="with all drivers: base_value + Σ = raw_score")
    lines: list[LineDriver] = Field(
        default=[],
        description="code-reading models (change_risk_v2): the added lines that raise the risk most",
    )
    warnings: list[str] = []
    error: ItemError | None = None


class CommitRiskResponse(BaseModel):
    results: list[CommitRisk]


class DeploymentQuery(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "repo": "demo",
                    "service": "payments",
                    "environment": "production",
                    "strategy": "canary",
                    "commits": ["3f1c9e0a" * 5],
                },
            ]
        },
    )

    repo: RepoName
    service: Name
    environment: Name
    commits: list[Sha] = Field(min_length=1, description="commits the deployment ships")
    strategy: Literal["full", "rolling", "canary", "blue-green", "recreate"] | None = None
    started_at: datetime | None = Field(default=None, description="when it starts (default: now)")


class DeploymentRisk(BaseModel):
    service: str
    environment: str
    probability: float = Field(ge=0, le=1)
    band: Band
    model: ModelRef
    drivers: list[Driver]
    health: dict[str, float | None]
    warnings: list[str] = []


class Problem(BaseModel):
    code: str
    message: str
