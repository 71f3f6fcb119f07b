"""Production's state for a decision: hourly traffic (a metrics file or Prometheus), its forecast, the error
budget left under each service's SLO, and open incidents. The arithmetic is pure; reading is at the edge.

Metrics frame schema (one row per service and hour): `service` (str), `timestamp` (datetime64[ns, UTC],
the hour's start), `requests` (float), `errors` (float, failed requests), optional `latency_p99_ms`."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from agents.context import OpenIncident, ServiceState
from features.errors import AwoError, BadConfig
from features.tables import as_utc
from features.topology import Slo

METRIC_COLUMNS = ("service", "timestamp", "requests", "errors")
OPEN_INCIDENT_SEVERITIES = ("high", "critical")


class MetricsUnavailable(AwoError):
    """Prometheus could not be queried."""


def read_metrics_file(path: Path) -> pd.DataFrame:
    """Hourly metrics from CSV or Parquet; a missing column or a bad value names the file and the column."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except FileNotFoundError:
        raise BadConfig(f"metrics file {path} does not exist") from None
    except (ValueError, OSError) as exc:
        raise BadConfig(f"metrics file {path} cannot be read: {exc}") from None
    missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
    if missing:
        raise BadConfig(f"metrics file {path}: missing column(s) {missing}")
    try:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise BadConfig(f"metrics file {path}: column 'timestamp': {exc}") from None
    for column in ("requests", "errors", "latency_p99_ms"):
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna() | (values < 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
            raise BadConfig(
                f"metrics file {path}: column {column!r}, line {row}: {frame[column].iloc[row - 2]!r}"
            )
        frame[column] = values.astype(float)
    frame["service"] = frame["service"].astype(str)
    return frame.sort_values(["service", "timestamp"], kind="stable").reset_index(drop=True)


def read_prometheus(
    url: str, services: list[str], requests_query: str, errors_query: str, end: datetime, days: float = 28
) -> pd.DataFrame:
    """Hourly requests and errors of each service over the last `days`, by the Prometheus HTTP API's
    `query_range` (step 1h). Unreachable or failing queries raise MetricsUnavailable naming the query."""
    import httpx

    start = end - timedelta(days=days)
    rows: list[dict[str, object]] = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=10.0) as client:
        for service in services:
            series: dict[str, dict[float, float]] = {}
            for column, template in (("requests", requests_query), ("errors", errors_query)):
                query = template.format(service=service)
                params: dict[str, str | float] = {
                    "query": query,
                    "start": start.timestamp(),
                    "end": end.timestamp(),
                    "step": "3600",
                }
                try:
                    response = client.get("/api/v1/query_range", params=params)
                    response.raise_for_status()
                    body = response.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise MetricsUnavailable(f"Prometheus {url}: query {query!r} failed: {exc}") from None
                if body.get("status") != "success":
                    raise MetricsUnavailable(f"Prometheus {url}: query {query!r}: {body.get('error')}")
                values: dict[float, float] = {}
                for result in body["data"]["result"]:
                    for stamp, value in result["values"]:
                        values[float(stamp)] = values.get(float(stamp), 0.0) + float(value)
                series[column] = values
            for stamp, requests in series["requests"].items():
                rows.append(
                    {
                        "service": service,
                        "timestamp": pd.Timestamp(stamp, unit="s", tz="UTC"),
                        "requests": requests,
                        "errors": series["errors"].get(stamp, 0.0),
                    }
                )
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def hour_of_week(stamps: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    index = pd.DatetimeIndex(stamps)
    return np.asarray(index.dayofweek * 24 + index.hour)


def traffic_profile(history: pd.DataFrame, weeks: int = 4) -> np.ndarray | None:
    """Mean requests per hour of the week (168 values) over the last `weeks` weeks: a seasonal-naive
    forecast (Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", ch. 5). Hours never
    seen take the mean of their hour of day, then of all hours. None without history."""
    if history.empty:
        return None
    newest = history["timestamp"].max()
    recent = history[history["timestamp"] > newest - pd.Timedelta(weeks=weeks)]
    how = hour_of_week(recent["timestamp"])
    sums = np.bincount(how, weights=recent["requests"].to_numpy(float), minlength=168)
    counts = np.bincount(how, minlength=168)
    profile = np.full(168, np.nan)
    np.divide(sums, counts, out=profile, where=counts > 0)
    by_hour = pd.Series(profile).groupby(np.arange(168) % 24).transform("mean").to_numpy()
    profile = np.where(np.isnan(profile), by_hour, profile)
    return np.where(np.isnan(profile), np.nanmean(profile), profile)


def forecast(profile: np.ndarray, start: datetime, hours: int) -> list[float]:
    first = pd.Timestamp(start).floor("h")
    how = hour_of_week(pd.date_range(first, periods=hours, freq="h"))
    return [float(v) for v in profile[how]]


def error_budget_left(history: pd.DataFrame, slo: Slo, now: datetime) -> float | None:
    """Share of the error budget left in the SLO window: 1 - failed / (allowed failure share x requests).
    1.0 = untouched, 0 = spent, negative = overspent. None without traffic in the window."""
    window = history[
        (history["timestamp"] > pd.Timestamp(now) - pd.Timedelta(days=slo.window_days))
        & (history["timestamp"] <= pd.Timestamp(now))
    ]
    requests = float(window["requests"].sum())
    if requests <= 0:
        return None
    allowed = (1.0 - slo.availability) * requests
    return 1.0 - float(window["errors"].sum()) / allowed


def open_incidents(incidents: pd.DataFrame | None, service: str, now: datetime) -> list[OpenIncident]:
    """High and critical incidents of the service that started by `now` and were not resolved by then."""
    if incidents is None or incidents.empty:
        return []
    at = pd.Timestamp(now)
    mine = incidents[(incidents["service"] == service) & incidents["severity"].isin(OPEN_INCIDENT_SEVERITIES)]
    if mine.empty:  # the common case, and the cheap one: no time columns converted
        return []
    started = pd.to_datetime(mine["started_at"], utc=True)
    resolved = pd.to_datetime(mine["resolved_at"], utc=True)
    rows = mine[(started <= at) & (resolved.isna() | (resolved > at))]
    return [
        OpenIncident(incident_id=str(r.incident_id), severity=str(r.severity), started_at=r.started_at)
        for r in rows.itertuples()
    ]


def service_states(
    services: list[str],
    metrics: pd.DataFrame | None,
    incidents: pd.DataFrame | None,
    slos: dict[str, Slo],
    now: datetime,
    horizon_hours: int,
) -> dict[str, ServiceState]:
    """Each service's state as of `now`, from metrics up to `now` only."""
    now = as_utc(now).to_pydatetime()
    states: dict[str, ServiceState] = {}
    for service in services:
        if metrics is None:
            states[service] = ServiceState(open_incidents=open_incidents(incidents, service, now))
            continue
        history = metrics[(metrics["service"] == service) & (metrics["timestamp"] <= pd.Timestamp(now))]
        profile = traffic_profile(history)
        states[service] = ServiceState(
            traffic_forecast=[] if profile is None else forecast(profile, now, horizon_hours),
            traffic_peak=None if profile is None else float(profile.max()),
            error_budget_left=error_budget_left(history, slos[service], now) if len(history) else None,
            open_incidents=open_incidents(incidents, service, now),
        )
    return states
