"""Feast objects of awo, declared top to bottom like a schema: entities, sources, feature views, and one
FeatureService per model kind and feature-set version (the single list of a model's features).

Sources are parquet files written by `awo features build` under <data root>/feast/sources/; every
history value in them is computed from data strictly before the row's event timestamp
(features/history.py)."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float64, String

from features.history import (
    AUTHOR_HISTORY_FEATURES,
    CHANGE_RISK_V1,
    COMMIT_CHANGE_FEATURES,
    COMMIT_HISTORY_FEATURES,
    DEPLOYMENT_FEATURES,
    FILE_HISTORY_FEATURES,
    SERVICE_HEALTH_FEATURES,
)

FOREVER = timedelta(0)  # a ttl of 0: rows never expire; point-in-time joins pick the latest earlier row

# --- entities ---
repo = Entity(name="repo", join_keys=["repo"], value_type=ValueType.STRING, description="a git repository")
commit = Entity(
    name="commit", join_keys=["sha"], value_type=ValueType.STRING, description="a commit of a repo"
)
author = Entity(
    name="author", join_keys=["author_id"], value_type=ValueType.STRING, description="pseudonymous author id"
)
file = Entity(
    name="file", join_keys=["path"], value_type=ValueType.STRING, description="a file path of a repo"
)
service = Entity(
    name="service",
    join_keys=["service"],
    value_type=ValueType.STRING,
    description="a service, unique in the organisation",
)
deployment = Entity(
    name="deployment", join_keys=["deploy_id"], value_type=ValueType.STRING, description="one deployment"
)

# --- sources ---
commit_change_source = FileSource(
    name="commit_change", path="sources/commit_change.parquet", timestamp_field="committed_at"
)
change_risk_v1_vector_source = FileSource(
    name="change_risk_v1_vector", path="sources/change_risk_v1_vector.parquet", timestamp_field="committed_at"
)
commit_history_source = FileSource(
    name="commit_history", path="sources/commit_history.parquet", timestamp_field="committed_at"
)
commit_code_source = FileSource(
    name="commit_code", path="sources/commit_code.parquet", timestamp_field="committed_at"
)
author_history_source = FileSource(
    name="author_history", path="sources/author_history.parquet", timestamp_field="event_at"
)
file_history_source = FileSource(
    name="file_history", path="sources/file_history.parquet", timestamp_field="event_at"
)
deployment_change_source = FileSource(
    name="deployment_change", path="sources/deployment_change.parquet", timestamp_field="started_at"
)
service_health_source = FileSource(
    name="service_health", path="sources/service_health.parquet", timestamp_field="event_at"
)

# --- feature views ---
# The 14 Kamei metrics, change-kind flags and file-type counts of a commit.
commit_change = FeatureView(
    name="commit_change",
    entities=[repo, commit],
    ttl=FOREVER,
    source=commit_change_source,
    schema=[Field(name=n, dtype=Float64) for n in COMMIT_CHANGE_FEATURES],
)
# Author, file (rolled up: max / mean over the commit's files) and subsystem history before the commit.
commit_history = FeatureView(
    name="commit_history",
    entities=[repo, commit],
    ttl=FOREVER,
    source=commit_history_source,
    schema=[Field(name=n, dtype=Float64) for n in COMMIT_HISTORY_FEATURES],
)
# change_risk_v1 packed into one array per commit (element order: features.history.CHANGE_RISK_V1), so a
# batch lookup reads one value per commit instead of one per feature.
change_risk_v1_vector = FeatureView(
    name="change_risk_v1_vector",
    entities=[repo, commit],
    ttl=FOREVER,
    source=change_risk_v1_vector_source,
    schema=[Field(name="change_risk_v1", dtype=Array(Float64))],
    description=f"{len(CHANGE_RISK_V1)} values in the order of change_risk_v1",
)
# The code of a commit as `awo mine` kept it (features.tables.DIFFS_SCHEMA): added and removed lines, the
# message, and the "path:line" of each added line (for line-level explanations, not a model input).
commit_code = FeatureView(
    name="commit_code",
    entities=[repo, commit],
    ttl=FOREVER,
    source=commit_code_source,
    schema=[  # features.history.COMMIT_CODE_FEATURES
        Field(name="added_lines", dtype=Array(String)),
        Field(name="removed_lines", dtype=Array(String)),
        Field(name="message", dtype=String),
        Field(name="added_where", dtype=Array(String)),
    ],
)
# An author's state after each of their commits: for changes that are not mined yet.
author_history = FeatureView(
    name="author_history",
    entities=[author],
    ttl=FOREVER,
    source=author_history_source,
    schema=[Field(name=n, dtype=Float64) for n in AUTHOR_HISTORY_FEATURES],
)
# A file's state after each change: past changes, known defects, authors, last defect fix, recent churn.
file_history = FeatureView(
    name="file_history",
    entities=[repo, file],
    ttl=FOREVER,
    source=file_history_source,
    schema=[Field(name=n, dtype=Float64) for n in FILE_HISTORY_FEATURES],
)
# What a deployment ships and its service's health before it started.
deployment_change = FeatureView(
    name="deployment_change",
    entities=[deployment],
    ttl=FOREVER,
    source=deployment_change_source,
    schema=[Field(name=n, dtype=Float64) for n in DEPLOYMENT_FEATURES],
)
# A service's health after each deployment: deploys, failures, incidents.
service_health = FeatureView(
    name="service_health",
    entities=[service],
    ttl=FOREVER,
    source=service_health_source,
    schema=[Field(name=n, dtype=Float64) for n in SERVICE_HEALTH_FEATURES],
)

# --- feature services: one per model kind and feature-set version ---
change_risk_v1 = FeatureService(name="change_risk_v1", features=[commit_change, commit_history])
change_risk_v2 = FeatureService(name="change_risk_v2", features=[commit_change, commit_history, commit_code])
deploy_failure_v1 = FeatureService(name="deploy_failure_v1", features=[deployment_change])
