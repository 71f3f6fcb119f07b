"""Models in MLflow: tracking and registry in `<data root>/mlflow.db` by default (MLFLOW_TRACKING_URI or
the `mlflow_tracking_uri` setting override, e.g. a tracking server with Postgres), artifacts under
`<data root>/mlartifacts` — never relative to the current directory.

A trained RiskModel is logged as one pyfunc model: it carries the booster, the calibrator, the threshold
and the name of its feature service; `predict` returns the calibrated probability and, with
`params={"contributions": True}`, the per-feature contributions. A new version becomes `challenger`; the
first version also becomes `champion`; `promote` moves `champion` only when the challenger is at least as
good on the same held-out period."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from features.errors import AwoError
from features.settings import Settings
from models.risk_model import RiskModel

CHAMPION, CHALLENGER = "champion", "challenger"


class RegistryError(AwoError):
    pass


class RegistryUnavailable(RegistryError):
    """The registry did not answer (unreachable, locked, failing): nothing may be decided on a guess, least
    of all that a model has no champion."""


def registry_failures() -> tuple[type[BaseException], ...]:
    """What a registry that is away or failing raises: MLflow's own errors (its REST client wraps most
    transport errors in them), requests' and urllib3's connection errors, and OSError (sockets, files of
    a local store or artifact root). Anything else is a bug and must not be reported as "registry away"."""
    import requests
    import urllib3
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.RequestException, urllib3.exceptions.HTTPError, OSError)


# MLflow (3.x SQL and file stores, and a tracking server relaying them) signals a missing alias as
# INVALID_PARAMETER_VALUE "Registered model alias X not found." and a missing model as
# RESOURCE_DOES_NOT_EXIST "Registered Model with name=X not found".
_ALIAS_NOT_FOUND = re.compile(r"alias .+ not found", re.IGNORECASE)


def _alias_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    message = str(getattr(exc, "message", exc))
    return code == "INVALID_PARAMETER_VALUE" and _ALIAS_NOT_FOUND.search(message) is not None


def _model_not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def redacted_uri(uri: str) -> str:
    """`uri` fit for a message that anyone may read (`/readyz` is anonymous): the user, password and
    query (where tokens travel) are replaced by `***`; scheme, host, port and path stay."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed IPv6 bracket: nothing of it can be shown safely
        return "<unparseable URI>"
    _, at, hostport = parts.netloc.rpartition("@")
    if not at and not parts.query and not parts.fragment:
        return uri  # nothing secret in it; urlunsplit would also drop the empty authority of sqlite:///path
    netloc = f"***@{hostport}" if at else hostport
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redacted(text: str) -> str:
    """`text` with every URI in it passed through `redacted_uri`: MLflow's and requests' messages quote
    the URL they failed on, credentials included."""
    return _URI_IN_TEXT.sub(lambda found: redacted_uri(found.group()), text)


# mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into this process's environment; a value we
# put there ourselves must not override the store of a later connect (another data root).
_SET_BY_US: set[str] = set()


def tracking_uri(settings: Settings) -> str:
    """MLFLOW_TRACKING_URI set by the user, else the `mlflow_tracking_uri` setting, else SQLite."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env not in _SET_BY_US:
        return from_env
    return settings.mlflow_tracking_uri or f"sqlite:///{(settings.data_dir / 'mlflow.db').resolve()}"


def connect(settings: Settings) -> str:
    import mlflow

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # MLflow prints "View run ..." links to stdout at the end of a run on a tracking server: the CLI's stdout
    # carries its own summary (or JSON).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _SET_BY_US.add(uri)
    return uri


def experiment(settings: Settings, name: str) -> str:
    """The id of experiment `name`, created with its artifacts under the data root when the registry is a
    local database; a tracking server (http, https, databricks) keeps artifacts where it was told to
    (`--artifacts-destination`), so clients on other machines can read them."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    if mlflow.get_tracking_uri().split(":", 1)[0] in ("http", "https", "databricks"):
        return mlflow.create_experiment(name)
    location = (settings.data_dir / "mlartifacts" / name).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _pyfunc_class():
    from mlflow.pyfunc import PythonModel

    class RiskPyfunc(PythonModel):
        """A calibrated risk model: probability, and contributions on request."""

        def load_context(self, context) -> None:
            import joblib

            self.model: RiskModel = joblib.load(context.artifacts["risk_model"])
            self.meta = json.loads(Path(context.artifacts["meta"]).read_text())

        def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            out = pd.DataFrame(
                {"probability": self.model.predict_proba(model_input)}, index=model_input.index
            )
            if params and params.get("contributions"):
                out = out.join(self.model.contributions(model_input).add_prefix("contribution:"))
            return out

    return RiskPyfunc


def log_model(
    model: RiskModel,
    registered_name: str,
    feature_service: str,
    input_example: pd.DataFrame,
    meta: dict[str, Any],
) -> str:
    """Log `model` in the active run and register it; returns the new version (now `challenger`, and
    `champion` too when it is the first)."""
    import joblib
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    meta = {
        **meta,
        "feature_service": feature_service,
        "features": model.features,
        "threshold": model.threshold_,
        "risk_reference": getattr(model, "reference_", None),  # the gate's training-period quantiles
    }
    # a code model reads the code columns beside its metric features
    example = input_example[getattr(model, "input_columns", model.features)].head(5)
    output = pd.DataFrame({"probability": model.predict_proba(example)})
    signature = infer_signature(example, output, params={"contributions": False})
    with tempfile.TemporaryDirectory() as tmp:
        joblib.dump(model, Path(tmp) / "risk_model.joblib")
        (Path(tmp) / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_class()(),
            artifacts={
                "risk_model": str(Path(tmp) / "risk_model.joblib"),
                "meta": str(Path(tmp) / "meta.json"),
            },
            signature=signature,
            input_example=example,
            registered_model_name=registered_name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_model_version_tag(registered_name, version, "feature_service", feature_service)
    client.set_model_version_tag(registered_name, version, "model_kind", str(meta.get("model_kind", "")))
    client.set_registered_model_alias(registered_name, CHALLENGER, version)
    # Only a registry that says "no champion" makes the first version champion; one that fails to answer
    # raises RegistryUnavailable, else any transient error would skip the champion/challenger gate. The
    # model was registered a moment ago, so "no such model" can only come from a lagging replica.
    try:
        no_champion = alias_version(registered_name, CHAMPION, registered=True) is None
    except RegistryUnavailable as exc:
        raise RegistryUnavailable(
            f"version {version} of {registered_name!r} is registered as challenger, but {exc}; run "
            f"`awo promote {registered_name}` once the registry answers"
        ) from exc
    if no_champion:
        client.set_registered_model_alias(registered_name, CHAMPION, version)
    return version


def alias_version(name: str, alias: str, *, registered: bool = False) -> str | None:
    """The version behind `alias`; None only when the registry says the alias (or, unless the model is
    known to be `registered`, the model) does not exist. A registry that fails to answer raises
    RegistryUnavailable."""
    import mlflow
    from mlflow import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except registry_failures() as exc:
        if _alias_not_found(exc) or (_model_not_found(exc) and not registered):
            return None
        raise RegistryUnavailable(
            f"could not read alias {alias!r} of model {name!r} from the registry at "
            f"{redacted_uri(mlflow.get_registry_uri())}: {_describe(exc)}"
        ) from exc


def _describe(exc: BaseException) -> str:
    """One line: the error code (or type) and the first line of the message (SQL errors add the query)."""
    code = getattr(exc, "error_code", None)
    lines = str(getattr(exc, "message", exc)).strip().splitlines() or [""]
    return f"{code or type(exc).__name__}: {redacted(lines[0])}"


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str
    model: RiskModel
    meta: dict[str, Any]

    @property
    def feature_service(self) -> str:
        return self.meta["feature_service"]


def load(name: str, alias: str = CHAMPION) -> LoadedModel:
    """The registered model version behind `alias`, with everything serving needs."""
    import mlflow

    version = alias_version(name, alias)
    if version is None:
        where = redacted_uri(mlflow.get_tracking_uri())
        raise RegistryError(
            f"no {alias} of model {name!r} in the registry at {where}: run `awo train {name}`"
        )
    return load_version(name, version, alias)


def load_version(name: str, version: str, alias: str) -> LoadedModel:
    """Version `version` of model `name`, reported as `alias`. Loaded by number, not by alias: an alias
    moved by a promotion in between would serve one version under another's number."""
    import mlflow.pyfunc

    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    except registry_failures() as exc:
        raise RegistryUnavailable(
            f"could not load {alias} (version {version}) of model {name!r} from "
            f"{redacted_uri(mlflow.get_tracking_uri())}: {_describe(exc)}"
        ) from exc
    inner = pyfunc.unwrap_python_model()
    return LoadedModel(name, version, alias, inner.model, inner.meta)


def promote(
    name: str, score: Callable[[LoadedModel], dict[str, float]], brier_tolerance: float = 0.01
) -> dict[str, Any]:
    """Compare challenger and champion with `score(model) -> metrics` on the same held-out period; move
    `champion` to the challenger only when its AUC is at least the champion's and its Brier score is not
    worse by more than `brier_tolerance`."""
    from mlflow import MlflowClient

    champion, challenger = load(name, CHAMPION), load(name, CHALLENGER)
    if champion.version == challenger.version:
        return {"promoted": False, "reason": f"version {champion.version} is already champion",
                "champion": champion.version, "challenger": challenger.version, "metrics": {}}  # fmt: skip
    metrics = {"champion": score(champion), "challenger": score(challenger)}
    better_auc = metrics["challenger"]["auc"] >= metrics["champion"]["auc"]
    calibrated = metrics["challenger"]["brier"] <= metrics["champion"]["brier"] + brier_tolerance
    promoted = better_auc and calibrated
    if promoted:
        MlflowClient().set_registered_model_alias(name, CHAMPION, challenger.version)
        reason = "challenger at least as good on AUC and Brier"
    else:
        reason = "challenger has lower AUC" if not better_auc else "challenger is worse calibrated (Brier)"
    return {"promoted": promoted, "reason": reason, "champion": champion.version,
            "challenger": challenger.version, "metrics": metrics}  # fmt: skip
