"""What the routes of the risk API share, and the typed dependency aliases that hand it to them
(as in the FastAPI full-stack template's `api/deps.py`): a route's signature says what it needs."""

from __future__ import annotations

import logging
import threading
from typing import Annotated

from fastapi import Depends, Request

from features.settings import Settings
from models.registry import LoadedModel
from serving.champions import Champions
from serving.compiled import COMPILED_DIR, PlainScorer, Scorer, fast_scorer
from serving.core import is_code_model
from serving.predictions import PredictionLog
from serving.scoring import Staleness
from serving.telemetry import Telemetry

log = logging.getLogger(__name__)


class State:
    """What every request shares: settings, the feature store, the champions and their fast scorers (the
    forest compiled at load, serving.compiled; `fast_scoring=False`: the models' own methods), the
    prediction log."""

    def __init__(self, settings: Settings, fast_scoring: bool = True) -> None:
        from features.store import open_store

        self.settings = settings
        self.fast_scoring = fast_scoring
        self._scorers: dict[tuple[str, str], Scorer] = {}
        self.store = open_store(settings)
        self.champions = Champions(settings)
        self.telemetry = Telemetry()
        self.predictions = PredictionLog(
            settings.data_dir / "predictions.db", on_drop=self.telemetry.prediction_log_dropped.inc
        )
        self.staleness = Staleness()
        self._stop = threading.Event()

    def start_reload_timer(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.settings.model_reload_seconds):
                # The thread's top level: an uncaught error would end it for good while the API kept
                # serving stale models in silence. Say it loudly, show it on /readyz, try again next tick.
                try:
                    self.reload()
                except Exception as exc:
                    log.exception(
                        "champion reload failed; retrying in %ss", self.settings.model_reload_seconds
                    )
                    self.champions.reload_failed(exc)

        threading.Thread(target=loop, name="champion-reload", daemon=True).start()

    def reload(self):
        report = self.champions.reload()
        for name, version in report.loaded.items():
            self.telemetry.model_version.labels(name).set(float(version))
        # compiled at load, not on a request; the versions no longer served are dropped
        served = self.champions.models
        self._scorers = {(m.name, m.version): self.scorer(m) for m in served.values()}
        return report

    def scorer(self, loaded: LoadedModel) -> Scorer:
        """The fast scorer of a served model version (built on first use if a reload has not built it)."""
        key = (loaded.name, loaded.version)
        found = self._scorers.get(key)
        if found is None:
            if self.fast_scoring and not is_code_model(loaded.model):  # a code model scores itself
                cache = self.settings.data_dir / COMPILED_DIR
                found = fast_scorer(loaded.model, cache, f"{loaded.name}-{loaded.version}")
            else:
                found = PlainScorer(loaded.model)
            self._scorers = {**self._scorers, key: found}  # swapped in one assignment, as Champions.served
        return found

    def stop(self) -> None:
        self._stop.set()
        self.predictions.close()


def get_state(request: Request) -> State:
    return request.app.state.awo


StateDep = Annotated[State, Depends(get_state)]
