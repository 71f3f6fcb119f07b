"""Prometheus metrics and structured JSON request logs with a request id. With several workers
(`AWO_WORKER_METRICS_DIR` and `PROMETHEUS_MULTIPROC_DIR` set by `awo serve`), /metrics aggregates every
worker's counts."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger("awo.api")

# Set by `awo serve --workers N` only. PROMETHEUS_MULTIPROC_DIR alone does not say the API runs several
# workers: Feast sets it (to a temporary folder of its own) in any process that imports feast.metrics, e.g.
# on materialize, which would make /metrics aggregate Feast's empty folder instead of our counts.
WORKER_METRICS_DIR = "AWO_WORKER_METRICS_DIR"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def configure_json_logging() -> None:
    if any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "awo_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "awo_request_seconds",
            "request latency",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.predictions = Counter("awo_predictions_total", "scores served", ["model", "band"], registry=r)
        self.prediction_log_dropped = Counter(
            "awo_prediction_log_dropped",
            "scores not written to the prediction log because its queue was full (serving.predictions)",
            registry=r,
        )
        self.model_version = Gauge(
            "awo_model_version", "model version served", ["model"], registry=r, multiprocess_mode="livemax"
        )

    def exposition(self) -> tuple[bytes, str]:
        directory = os.environ.get(WORKER_METRICS_DIR)
        if directory:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def request_middleware(telemetry: Telemetry):
    async def middleware(request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        # Matched routes are labelled by their full path (no route has path parameters, so the label set
        # stays small); anything else is one "unmatched" label, whatever was asked.
        path = request.url.path if request.scope.get("route") is not None else "unmatched"
        telemetry.requests.labels(request.method, path, str(response.status_code)).inc()
        telemetry.latency.labels(path).observe(elapsed)
        response.headers["x-request-id"] = request_id
        # Which worker process answered: with several workers, logs and load spread can be told apart.
        response.headers["x-awo-worker"] = str(os.getpid())
        log.info(
            "request",
            extra={
                "fields": {
                    "request_id": request_id,
                    "method": request.method,
                    "path": path,
                    "status": response.status_code,
                    "worker": os.getpid(),
                    "ms": round(elapsed * 1000, 2),
                }
            },
        )
        return response

    return middleware
