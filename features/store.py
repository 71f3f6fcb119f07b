"""The feature store: opening Feast on the data root, applying the definitions, materializing, and
reading training sets and online features by feature-service name. Feast is imported lazily: its
import alone takes seconds."""

from __future__ import annotations

import contextlib
import io
import math
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.errors import AwoError, BadConfig
from features.history import CHANGE_RISK_V1
from features.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

FEATURE_REPO = Path(__file__).resolve().parent / "feature_repo"
SOURCE_TABLES = (
    "commit_change",
    "change_risk_v1_vector",
    "commit_history",
    "commit_code",
    "author_history",
    "file_history",
    "deployment_change",
    "service_health",
)
FEATURE_SERVICES = ("change_risk_v1", "change_risk_v2", "deploy_failure_v1")
# Feature services read online through a packed vector: view name and field of the vector (its elements are
# features.history.CHANGE_RISK_V1, in order). change_risk_v2 reads the same vector and, in the same call,
# its code features (lists of lines and a message, which no numeric vector can hold).
PACKED = {
    "change_risk_v1": ("change_risk_v1_vector", "change_risk_v1"),
    "change_risk_v2": ("change_risk_v1_vector", "change_risk_v1"),
}


class FeatureNotFound(AwoError):
    pass


def store_dir(settings: Settings) -> Path:
    return settings.data_dir / "feast"


def sources_dir(settings: Settings) -> Path:
    return store_dir(settings) / "sources"


def online_store_config(url: str | None) -> dict[str, Any] | None:
    """The online store block for `AWO_ONLINE_STORE`: None (SQLite from feature_store.yaml),
    `sqlite:///PATH` or `redis://HOST:PORT[/DB]`."""
    if not url:
        return None
    if url.startswith("redis://"):
        rest = url.removeprefix("redis://").rstrip("/")
        host_port, _, db = rest.partition("/")
        if ":" not in host_port:
            raise BadConfig(f"AWO_ONLINE_STORE={url!r}: expected redis://HOST:PORT")
        return {"type": "redis", "connection_string": host_port + (f",db={db}" if db else "")}
    if url.startswith("sqlite:///"):
        return {"type": "sqlite", "path": url.removeprefix("sqlite:///")}
    raise BadConfig(f"AWO_ONLINE_STORE={url!r}: use redis://HOST:PORT or sqlite:///PATH")


# A cluster Feast starts inside the driver (no ray_address) stays small: other jobs share the machine.
LOCAL_RAY_CONF = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024}


def ray_store_config(ray_address: str | None, root: Path) -> dict[str, dict[str, Any]]:
    """The offline store and compute engine blocks of Feast's Ray store (`AWO_OFFLINE_STORE=ray`): the
    same FileSource parquet files, joined point-in-time and materialized by Ray Data tasks on the cluster
    at `ray_address` (None or `local`: a one-CPU cluster inside this process). Ray-only settings (CPUs, object
    store) apply to a local cluster only: `ray.init(address=...)` refuses them."""
    from features.cluster import LOCAL

    remote = ray_address not in (None, LOCAL)
    cluster: dict[str, Any] = {"ray_address": ray_address} if remote else {"ray_conf": LOCAL_RAY_CONF}
    return {
        "offline_store": {"type": "ray", "storage_path": str(root / "ray_storage"), **cluster},
        # one writer: the SQLite online store takes one at a time; Redis gains little on 2 cores
        "batch_engine": {"type": "ray.engine", "max_workers": 1, "write_concurrency": 1, **cluster},
    }


def open_store(settings: Settings) -> FeatureStore:
    import yaml
    from feast import FeatureStore, RepoConfig

    raw = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    online = online_store_config(settings.online_store)
    if online is not None:
        raw["online_store"] = online
    root = store_dir(settings)
    if settings.offline_store == "ray":
        from features.cluster import ray_module

        ray_module()  # a one-line error where Ray is not installed, before Feast imports it
        raw.update(ray_store_config(settings.ray_address, root))
    root.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(**raw)
    config.repo_path = root
    return FeatureStore(repo_path=str(root), config=config)


def definitions() -> list:
    """Every Feast object declared in feature_repo/definitions.py."""
    from feast import Entity, FeatureService, FeatureView, FileSource

    from features.feature_repo import definitions as module

    kinds = (Entity, FileSource, FeatureView, FeatureService)
    return [v for v in vars(module).values() if isinstance(v, kinds)]


def apply(store: FeatureStore) -> dict[str, int]:
    from feast import Entity, FeatureService, FeatureView

    objects = definitions()
    store.apply(objects)
    return {
        "entities": sum(isinstance(o, Entity) for o in objects),
        "feature_views": sum(isinstance(o, FeatureView) for o in objects),
        "feature_services": sum(isinstance(o, FeatureService) for o in objects),
    }


def feature_service(store: FeatureStore, name: str):
    from feast.errors import FeatureServiceNotFoundException

    try:
        return store.get_feature_service(name)
    except FeatureServiceNotFoundException:
        raise FeatureNotFound(
            f"feature service {name!r} is not in the registry (known: {', '.join(FEATURE_SERVICES)}); "
            "run `awo features apply`"
        ) from None


def feature_names(store: FeatureStore, service_name: str) -> list[str]:
    """The features of a feature service, in its order: the model's input columns."""
    return list(_service_and_names(store, service_name)[1])


def resolve_features(store: FeatureStore, requested: list[str]) -> list[str]:
    """Validate `view:feature` references (or bare feature names) against the registry."""
    known: dict[str, str] = {}
    for view in store.list_feature_views():
        for f in view.features:
            known[f"{view.name}:{f.name}"] = f"{view.name}:{f.name}"
            known.setdefault(f.name, f"{view.name}:{f.name}")
    missing = [r for r in requested if r not in known]
    if missing:
        raise FeatureNotFound(f"unknown features {missing}; see `awo features list`")
    return [known[r] for r in requested]


REBUILT_MARK = "_rebuilt_since.json"


def mark_rebuilt(settings: Settings, since: pd.Timestamp | None) -> None:
    """Record that sources were rewritten from `since` on: a build can add rows older than the last
    materialization (a newly mined repository), which incremental materialization would never load."""
    import json

    from features.tables import atomic_write_text

    if since is None:
        return
    path = sources_dir(settings) / REBUILT_MARK
    if path.exists():
        since = min(since, pd.Timestamp(json.loads(path.read_text())["since"]))
    atomic_write_text(path, json.dumps({"since": since.isoformat()}))


def materialize(store: FeatureStore, end: datetime | None = None) -> dict[str, Any]:
    """Incremental materialization up to `end` (default now); the first run of a view starts at its oldest
    row, and after a build that rewrote older rows, at the oldest rewritten one. Views whose source has
    no data yet (no deployments ingested, say) are skipped and named."""
    import json

    end = end or datetime.now(UTC)
    mark = _repo_root(store) / "sources" / REBUILT_MARK
    rebuilt_since = (
        pd.Timestamp(json.loads(mark.read_text())["since"]).to_pydatetime() if mark.exists() else None
    )
    views: list[FeatureView] = []
    empty: list[FeatureView] = []
    for view in store.list_feature_views():
        (views if source_path(store, view).exists() else empty).append(view)
    first = [v.name for v in views if not v.materialization_intervals or rebuilt_since is not None]
    rest = [v.name for v in views if v.name not in first]
    # Feast prints its own progress to stdout; the caller reports what was materialized in numbers.
    with contextlib.redirect_stdout(io.StringIO()):
        if first:
            start = min(rebuilt_since, end) if rebuilt_since is not None else datetime(1970, 1, 2, tzinfo=UTC)
            store.materialize(start - timedelta(seconds=1), end, feature_views=first)
        if rest:
            store.materialize_incremental(end, feature_views=rest)
    if mark.exists():
        mark.unlink()
    return {"feature_views": len(views), "skipped": [v.name for v in empty], "end": end}


def _repo_root(store: FeatureStore) -> Path:
    return Path(store.config.repo_path or store.repo_path)


def source_path(store: FeatureStore, view: FeatureView) -> Path:
    """The parquet file a feature view reads (written by `awo features build`)."""
    from feast import FileSource

    source = view.batch_source
    if not isinstance(source, FileSource):
        raise BadConfig(f"feature view {view.name} does not read a file source")
    path = Path(source.path)
    return path if path.is_absolute() else _repo_root(store) / path


@dataclass
class FeatureCatalog:
    """What the registry holds: each feature service with its features in model-input order, and each
    feature view with its entities' join keys, its features and whether its source has been built."""

    services: dict[str, list[str]]
    views: dict[str, tuple[list[str], list[str], bool]]


def catalog(store: FeatureStore) -> FeatureCatalog:
    services = {s.name: feature_names(store, s.name) for s in store.list_feature_services()}
    views = {
        v.name: (
            [c.name for c in v.entity_columns],
            [f.name for f in v.features],
            source_path(store, v).exists(),
        )
        for v in store.list_feature_views()
    }
    if not services and not views:
        raise AwoError(f"the feature registry in {_repo_root(store)} is empty: run `awo features apply`")
    return FeatureCatalog(dict(sorted(services.items())), dict(sorted(views.items())))


# Registry look-ups cost milliseconds; a feature service's list of features never changes under the same
# name (a new feature set is a new service version), so it is read once per store.
_SERVICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _service_and_names(store: FeatureStore, service_name: str) -> tuple[Any, list[str]]:
    cached = _SERVICES.setdefault(store, {})
    if service_name not in cached:
        service = feature_service(store, service_name)
        cached[service_name] = (
            service,
            [f.name for p in service.feature_view_projections for f in p.features],
        )
    return cached[service_name]


def _packed_plan(store: FeatureStore, service_name: str) -> tuple[list[str], list[str]]:
    """The feature references one online call of a packed service reads (the vector first), and the
    service's features outside the vector, in the service's order; computed once per store."""
    cached = _SERVICES.setdefault(store, {})
    key = ("packed", service_name)
    if key not in cached:
        service, names = _service_and_names(store, service_name)
        view, field_name = PACKED[service_name]
        if list(names[: len(CHANGE_RISK_V1)]) != list(CHANGE_RISK_V1):
            raise AwoError(f"feature service {service_name} does not start with change_risk_v1's features")
        unpacked = list(names[len(CHANGE_RISK_V1) :])
        where = {f.name: p.name for p in service.feature_view_projections for f in p.features}
        cached[key] = ([f"{view}:{field_name}", *(f"{where[n]}:{n}" for n in unpacked)], unpacked)
    return cached[key]


COMMIT_KEYS = ("repo", "sha")  # the join keys of every view a packed service reads (entities repo, commit)
SQLITE_KEYS_PER_QUERY = 999  # SQLite's oldest default bound on a statement's parameters


def _read_online(store: FeatureStore, references: list[str], entity_rows: list[dict[str, Any]]) -> dict:
    """Values of `references` ("view:field") per entity row, by field name, read from the online store
    directly with the entity keys serialized once: Feast's `get_online_features` answers the same but
    spends most of a one-commit lookup preparing the request and the response (0.33 of 0.58 ms in the API
    benchmark's floor). SQLite: one query per view for all keys and only the fields asked, the values
    decoded without Feast's per-value conversion (`_sqlite_read`); another store (Redis): its own
    `online_read`. Rows that are not all and only the commit keys take Feast's general path."""
    if any(row.keys() != set(COMMIT_KEYS) for row in entity_rows):
        return store.get_online_features(features=references, entity_rows=entity_rows).to_dict()
    fields_by_view: dict[str, list[str]] = {}
    for reference in references:
        view, _, name = reference.partition(":")
        fields_by_view.setdefault(view, []).append(name)
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    provider = store._get_provider()
    sqlite = isinstance(getattr(provider, "online_store", None), SqliteOnlineStore)
    keys = [(str(row["repo"]), str(row["sha"])) for row in entity_rows]
    out: dict[str, list[Any]] = {}
    for view_name, names in fields_by_view.items():
        table = _feature_view(store, view_name)
        if sqlite and store.config.entity_key_serialization_version == 3:
            out.update(_sqlite_read(store, provider.online_store, table, keys, names))
            continue
        found = provider.online_read(
            config=store.config, table=table, entity_keys=_entity_keys(keys), requested_features=names
        )
        for name in names:
            out[name] = [None if values is None else _python_value(values.get(name)) for _, values in found]
    return out


def _entity_keys(keys: list[tuple[str, str]]) -> list:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    join_keys = list(COMMIT_KEYS)
    return [
        EntityKey(join_keys=join_keys, entity_values=[Value(string_val=repo), Value(string_val=sha)])
        for repo, sha in keys
    ]


def _string_keys_v3(keys: list[tuple[str, str]]) -> list[bytes]:
    """The commit keys as Feast serializes an entity key of string values, version 3
    (`feast.infra.key_encoding_utils.serialize_entity_key`: the key count, each join key's type, length and
    name in sorted order, then each value's type, length and bytes, all little-endian uint32), without a
    protobuf per key; tests check it against Feast's own."""
    import struct

    from feast.protos.feast.types.Value_pb2 import ValueType

    if list(COMMIT_KEYS) != sorted(COMMIT_KEYS):  # Feast writes the values in the join keys' sorted order
        raise AwoError(f"commit keys {COMMIT_KEYS} are not in sorted order")
    typed = struct.Struct("<II")
    prefix = struct.pack("<I", len(COMMIT_KEYS)) + b"".join(
        typed.pack(ValueType.STRING, len(n.encode())) + n.encode() for n in COMMIT_KEYS
    )
    out = []
    for repo, sha in keys:
        repo_bytes, sha_bytes = repo.encode(), sha.encode()
        out.append(
            b"".join(
                (
                    prefix,
                    typed.pack(ValueType.STRING, len(repo_bytes)),
                    repo_bytes,
                    typed.pack(ValueType.STRING, len(sha_bytes)),
                    sha_bytes,
                )
            )
        )
    return out


def _sqlite_read(
    store: FeatureStore, online: Any, table: Any, keys: list[tuple[str, str]], names: list[str]
) -> dict[str, list[Any]]:
    """`names` of `table` per key from Feast's SQLite online store, as Python values."""
    blobs = _sqlite_blobs(store, online, table, keys, names)
    return {name: [_blob_value(blob) for blob in column] for name, column in blobs.items()}


def _blob_value(blob: bytes | None) -> Any:
    """The Python value of a serialized ValueProto (None: not stored)."""
    if blob is None:
        return None
    from feast.protos.feast.types.Value_pb2 import Value

    found = _double_list(blob)
    return _python_value(Value.FromString(blob)) if found is None else found


def _sqlite_blobs(
    store: FeatureStore, online: Any, table: Any, keys: list[tuple[str, str]], names: list[str]
) -> dict[str, list[bytes | None]]:
    """The serialized ValueProto of `names` of `table` per key (None: not stored), from Feast's SQLite
    online store with its own connection and table naming, as SqliteOnlineStore.online_write stores them
    (a row per entity key and feature name); one query per 999 keys."""
    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    config = store.config
    conn = online._get_conn(config)
    quoted = _quote_id(
        _table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
    )
    serialized = _string_keys_v3(keys)
    position = {key: i for i, key in enumerate(serialized)}
    column: dict[str, list[bytes | None]] = {name: [None] * len(keys) for name in names}
    wanted = ",".join("?" * len(names))
    for start in range(0, len(serialized), SQLITE_KEYS_PER_QUERY):
        chunk = serialized[start : start + SQLITE_KEYS_PER_QUERY]
        cursor = conn.execute(
            f"SELECT entity_key, feature_name, value FROM {quoted} "
            f"WHERE entity_key IN ({','.join('?' * len(chunk))}) AND feature_name IN ({wanted})",
            [*chunk, *names],
        )
        for key, name, value in cursor.fetchall():
            column[name][position[key]] = value
    return column


def online_vectors(
    store: FeatureStore, service_name: str, entity_rows: list[dict[str, Any]]
) -> np.ndarray | None:
    """The packed CHANGE_RISK_V1 vector of each entity row as one float matrix (NaN where a value is missing,
    a row of NaN for an entity the store does not hold): online_features' values for a packed service that
    reads nothing outside the vector, without a dict per row (the scoring core's batch path); None for any
    other service or rows that are not the commit keys (ask online_features)."""
    if service_name not in PACKED or any(row.keys() != set(COMMIT_KEYS) for row in entity_rows):
        return None
    references, unpacked = _packed_plan(store, service_name)
    if unpacked:
        return None
    view, field_name = PACKED[service_name]
    width = len(CHANGE_RISK_V1)
    matrix = np.full((len(entity_rows), width), np.nan)
    keys = [(str(row["repo"]), str(row["sha"])) for row in entity_rows]
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = getattr(store._get_provider(), "online_store", None)
    if isinstance(online, SqliteOnlineStore) and store.config.entity_key_serialization_version == 3:
        blobs = _sqlite_blobs(store, online, _feature_view(store, view), keys, [field_name])[field_name]
        for i, blob in enumerate(blobs):
            if blob is None:
                continue
            span = _double_list_span(blob)
            if span is not None and span[1] == width:
                matrix[i] = np.frombuffer(blob, dtype="<f8", count=width, offset=span[0])
            else:
                _fill(matrix, i, _blob_value(blob), view, service_name)
        return matrix
    for i, vector in enumerate(_read_online(store, references, entity_rows)[field_name]):
        _fill(matrix, i, vector, view, service_name)
    return matrix


def _fill(matrix: np.ndarray, i: int, vector: list[float] | None, view: str, service_name: str) -> None:
    if vector is None:
        return
    if len(vector) != matrix.shape[1]:
        raise AwoError(
            f"{view} holds vectors of another length than {service_name}: run `awo features build`"
        )
    matrix[i] = np.array(vector, dtype=float)


_DOUBLE_LIST_TAG = 15 << 3 | 2  # ValueProto's double_list_val: field 15, length-delimited
_REPEATED_VAL_TAG = 1 << 3 | 2  # DoubleList's packed `repeated double val = 1`


def _varint(blob: bytes, at: int) -> tuple[int, int]:
    """The protobuf varint at `at` and the position after it."""
    value = shift = 0
    while True:
        byte = blob[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _double_list_span(blob: bytes) -> tuple[int, int] | None:
    """Where the doubles of a serialized ValueProto that holds exactly a packed double_list_val (the packed
    vectors) start, and how many there are; None for any other layout (Feast's parse then)."""
    if len(blob) < 2 or blob[0] != _DOUBLE_LIST_TAG:
        return None
    size, at = _varint(blob, 1)
    if at + size != len(blob):
        return None
    if size == 0:
        return at, 0
    if blob[at] != _REPEATED_VAL_TAG:
        return None
    size, at = _varint(blob, at + 1)
    if at + size != len(blob) or size % 8:
        return None
    return at, size // 8


def _double_list(blob: bytes) -> list[float] | None:
    """The doubles of a packed double_list_val read as one little-endian float64 buffer: Python's protobuf
    builds a float object per element on iteration (about 10 us per 44-value vector); None for another
    layout."""
    span = _double_list_span(blob)
    if span is None:
        return None
    return np.frombuffer(blob, dtype="<f8", count=span[1], offset=span[0]).tolist()


# Value kinds whose Python value is the field itself, or the list of its repeated field (as Feast's
# feast_value_type_to_python_type answers them); any other kind goes through Feast's conversion.
_PLAIN_SCALARS = frozenset(("double_val", "float_val", "int64_val", "int32_val", "string_val", "bool_val"))
_PLAIN_LISTS = frozenset(
    (
        "double_list_val",
        "float_list_val",
        "int64_list_val",
        "int32_list_val",
        "string_list_val",
        "bool_list_val",
    )
)


def _python_value(value: Any) -> Any:
    """A ValueProto's Python value as Feast converts it (None for an absent or empty value)."""
    if value is None:
        return None
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _PLAIN_LISTS:
        return list(getattr(value, kind).val)
    if kind in _PLAIN_SCALARS:
        return getattr(value, kind)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)


def _feature_view(store: FeatureStore, name: str):
    """A feature view of the registry, looked up once per store."""
    cached = _SERVICES.setdefault(store, {})
    key = ("view", name)
    if key not in cached:
        cached[key] = store.get_feature_view(name)
    return cached[key]


@dataclass
class OnlineResult:
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def online_features(
    store: FeatureStore,
    service_name: str,
    entity_rows: list[dict[str, Any]],
    settings: Settings | None = None,
) -> OnlineResult:
    """The feature vector of each entity row, by feature name. An entity missing from the store gets
    explicit nulls (None, never 0) and a warning; a missing value inside a vector is None too; a stale store
    (materialized before the newest source data) is reported. A service with a packed vector is read
    through it: one value per entity instead of one per feature."""
    service, names = _service_and_names(store, service_name)
    if service_name in PACKED:
        view, field_name = PACKED[service_name]
        references, unpacked = _packed_plan(store, service_name)
        response = _read_online(store, references, entity_rows)
        vectors = response[field_name]
        if any(v is not None and len(v) != len(CHANGE_RISK_V1) for v in vectors):
            raise AwoError(
                f"{view} holds vectors of another length than {service_name}: run `awo features build`"
            )
        empty = [None] * len(CHANGE_RISK_V1)
        rows = [dict(zip(CHANGE_RISK_V1, v if v is not None else empty, strict=True)) for v in vectors]
        for name in unpacked:
            for row, value in zip(rows, response[name], strict=True):
                row[name] = value
    else:
        response = store.get_online_features(features=service, entity_rows=entity_rows).to_dict()
        rows = [{name: response[name][i] for name in names} for i in range(len(entity_rows))]
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows
    ]
    warnings = [
        f"no features for {entity} in the online store"
        for row, entity in zip(rows, entity_rows, strict=True)
        if all(v is None for v in row.values())
    ]
    if settings is not None:
        warnings += staleness(store, settings, service)
    return OnlineResult(rows, warnings)


def staleness(store: FeatureStore, settings: Settings, service) -> list[str]:
    """Warnings for views whose online data ends before the newest row of their source."""
    warnings = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        newest = newest_event(settings, view.name)
        done = max((i[1] for i in view.materialization_intervals), default=None)
        if newest is not None and (done is None or done < newest.to_pydatetime()):
            warnings.append(
                f"online store is stale for {view.name}: materialized up to {done or 'never'}, "
                f"newest data at {newest}; run `awo features materialize`"
            )
    return warnings


def newest_event(settings: Settings, table: str) -> pd.Timestamp | None:
    import pyarrow.parquet as pq

    path = sources_dir(settings) / f"{table}.parquet"
    if not path.exists():
        return None
    # Only the time column: the commit_code source holds every mined line.
    names = pq.read_schema(path).names
    ts_col = next(c for c in ("committed_at", "event_at", "started_at") if c in names)
    frame = pq.read_table(path, columns=[ts_col]).to_pandas()
    return frame[ts_col].max() if len(frame) else None


def training_set(store: FeatureStore, entities: pd.DataFrame, service_name: str) -> pd.DataFrame:
    """Point-in-time correct features for `entities` (join keys + `event_timestamp`)."""
    service = feature_service(store, service_name)
    if "event_timestamp" not in entities.columns:
        raise AwoError("the entities need an event_timestamp column (the time each row is scored as of)")
    # Feast would fail deep in dask with a FileNotFoundError on the first source not built yet.
    missing = [source_path(store, store.get_feature_view(p.name)) for p in service.feature_view_projections]
    missing = [path for path in missing if not path.exists()]
    if missing:
        raise AwoError(
            f"feature service {service_name!r} reads sources that are not built yet "
            f"({', '.join(str(p) for p in missing)}): run `awo features build --data DIR` first"
        )
    frame = store.get_historical_features(entity_df=entities, features=service).to_df()
    on_ray = store.config.offline_store.type == "ray"
    names = feature_names(store, service_name)
    numeric = [n for n in names if n not in set(_non_numeric_features(service))]
    frame = _as_file_store_gives(
        frame, list(entities.columns), names, _array_features(service), on_ray, numeric
    )
    # Feast's offline store gives array features as numpy arrays and a missing string as NaN: the code
    # features come out as online reads give them (lists of str, str, None where the commit has none).
    # Numeric services (v1) have no such fields and skip this.
    for name in _non_numeric_features(service):
        frame[name] = [
            v.tolist() if isinstance(v, np.ndarray) else (v if isinstance(v, list | str) else None)
            for v in frame[name]
        ]
    return frame


def _as_file_store_gives(
    frame: pd.DataFrame,
    entity_columns: list[str],
    names: list[str],
    arrays: list[str],
    ray: bool = False,
    numeric: list[str] | None = None,
) -> pd.DataFrame:
    """A training set as Feast's file offline store gives it, whichever store computed it. Feast 0.67's
    Ray offline store differs in two ways (tests/test_feast_ray.py): it adds the sources' timestamp
    column (`committed_at`, `started_at`) to the result, and an array feature of exactly one element comes
    back as that element (Ray Data stores the column as pickled Python objects, and a one-element array
    loses its dimension on the way), while longer and empty arrays keep theirs. And it keeps an entity row
    that has no feature row at or before its timestamp, all features null, where the file store drops it:
    from the Ray store (`ray`) a row whose every numeric feature (`numeric`, default all) is null is
    dropped (its array features are not null there). The file store's frames pass unchanged."""
    checked = names if numeric is None else numeric
    if ray and checked:
        frame = frame[frame[checked].notna().any(axis=1)].reset_index(drop=True)
    extra = [c for c in frame.columns if c not in entity_columns and c not in names]
    if extra:
        frame = frame.drop(columns=extra)
    for name in arrays:
        if any(isinstance(v, str) for v in frame[name]):
            frame[name] = [[v] if isinstance(v, str) else v for v in frame[name]]
    return frame


def _array_features(service) -> list[str]:
    from feast.types import Array

    return [
        f.name for p in service.feature_view_projections for f in p.features if isinstance(f.dtype, Array)
    ]


def _non_numeric_features(service) -> list[str]:
    """Names of a feature service's features that are not scalars of a numeric type (arrays, strings)."""
    from feast.types import Array, PrimitiveFeastType

    numeric = {PrimitiveFeastType.FLOAT64, PrimitiveFeastType.FLOAT32, PrimitiveFeastType.INT64,
               PrimitiveFeastType.INT32, PrimitiveFeastType.BOOL}  # fmt: skip
    return [
        f.name
        for p in service.feature_view_projections
        for f in p.features
        if isinstance(f.dtype, Array) or f.dtype not in numeric
    ]
