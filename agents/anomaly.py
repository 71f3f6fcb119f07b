"""Online anomaly score for one metric stream (no canary to compare with): the surprise of each point against
a slow mean, the recent level and a weekly profile, turned into Numenta's anomaly likelihood (Ahmad et al.
2017, "Unsupervised real-time anomaly detection for streaming data") plus its out-of-range rule, one alarm
per incident."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from features.errors import BadConfig

EPOCH = datetime(1970, 1, 1)
LOG_FLOOR = math.log(1e-10)  # Numenta's log-likelihood scale: likelihood 1 - 1e-10 maps to 1


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector learns; time constants count points. Defaults were chosen on NAB (see
    benchmarks/results/nab.json); `threshold` on `StreamDetector` goes with them.

    fast: horizon of the recent level (its residual catches jumps and spikes)
    slow: horizon of the slow mean and variance, and of every predictor's squared error
    short: raw scores averaged before the likelihood (Numenta: 10)
    history: horizon of the likelihood's mean and variance of averaged raw scores (Numenta: 8640 points)
    learn: points scored 0 while the baselines fill
    alarm: a score at or above it starts a hold; hold_share, max_hold: the hold lasts that share of the
        points seen so far, at most max_hold points; scores inside it are 0 (NAB counts only the first
        detection in a window and charges each later one outside it)
    min_var: Numenta's floor on the likelihood's variance, so a nearly perfect prediction is not fragile
    raw_scale: z / raw_scale inside erf turns a z-score into a raw score in [0, 1)
    season_s, bucket_s, season_rate: the profile's period, bucket width (seconds) and EW rate per bucket
    season_trust: profile predictions seen before it may replace the slow mean
    spatial: a value beyond the range seen by more than this share of it scores 1 (NAB's numenta
        detector's spatial anomaly, same 5% tolerance); 0 turns it off
    """

    fast: float = 4.0
    slow: float = 800.0
    short: int = 10
    history: float = 8000.0
    learn: int = 150
    alarm: float = 0.3
    hold_share: float = 0.05
    max_hold: int = 1000
    min_var: float = 0.0003
    raw_scale: float = 20.0
    season_s: int = 604800
    bucket_s: int = 300
    season_rate: float = 0.3
    season_trust: int = 100
    spatial: float = 0.05


class StreamDetector:
    """Feed points in arrival order with `update(timestamp, value)`; each returns an anomaly score in [0, 1]
    computed only from that point and earlier ones. A score >= `threshold` is an alarm."""

    #: alarm threshold: NAB's standard-profile threshold tuned over all 58 files was 0.3017 (nab.json)
    threshold = 0.3

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        if c.fast < 1 or c.slow < c.fast or c.history < 1 or c.short < 1 or c.learn < 0 or c.max_hold < 0:
            raise BadConfig(f"detector config: inconsistent time constants {c}")
        if not (
            0 < c.alarm <= 1 and 0 <= c.hold_share < 1 and c.raw_scale > 0 and c.min_var > 0 <= c.spatial
        ):
            raise BadConfig(f"detector config: alarm, hold_share, raw_scale or min_var out of range {c}")
        if not (0 < c.bucket_s <= c.season_s and 0 < c.season_rate <= 1 and c.season_trust >= 0):
            raise BadConfig(f"detector config: bad weekly profile settings {c}")
        self._a_fast = 1.0 / c.fast
        self._a_slow = 1.0 / c.slow
        self._a_hist = 1.0 / c.history
        self.seen = 0
        self._level = 0.0  # fast EW mean of the value
        self._mean = 0.0  # slow EW mean
        self._var = 0.0  # slow EW variance around `_mean`
        self._err = 0.0  # slow EW mean squared residual from the fast level
        self._recent: deque[float] = deque(maxlen=c.short)
        self._recent_sum = 0.0
        self._a_mean = 0.0
        self._a_var = 0.0
        self._since_alarm = math.inf
        self._min = self._max = 0.0  # range of the values seen
        buckets = max(1, c.season_s // c.bucket_s)
        self._season = [math.nan] * buckets  # EW mean of the value per time of week
        self._season_err = 0.0  # slow EW mean squared residual from the seasonal profile
        self._level_err = 0.0  # slow EW mean squared residual from the slow mean
        self._season_seen = 0  # points that had a profile value to compare with

    def update(self, timestamp: object, value: float) -> float:
        """The anomaly score of `value`, then learn from it. `timestamp` (datetime, numpy datetime64,
        pandas Timestamp, epoch seconds, or None) places the point in the weekly profile."""
        return self._step(_seconds(timestamp), value)

    def _step(self, seconds: float | None, value: float) -> float:
        x = float(value)
        if not math.isfinite(x):
            raise BadConfig(f"anomaly detector: value {value!r} at {seconds} s is not a finite number")
        c = self.config
        n = self.seen
        self.seen = n + 1
        if n == 0:
            self._level = self._mean = self._min = self._max = x
            return 0.0
        scale = max(abs(self._mean), 1e-9) * 1e-3
        floor = scale * scale
        z_level = abs(x - self._mean) / math.sqrt(self._var + floor)
        bucket = -1 if seconds is None else int(seconds // c.bucket_s) % len(self._season)
        expected = self._season[bucket] if bucket >= 0 else math.nan
        if expected == expected:  # not NaN: this time of week was seen before
            e = x - expected
            # the profile must have predicted this stream better than the slow mean over enough points;
            # its error is an EW mean started at 0, divided by the weight seen so far (as in Adam)
            if self._season_seen >= c.season_trust and self._season_err < self._level_err:
                weight = 1.0 - (1.0 - self._a_slow) ** self._season_seen
                z_level = abs(e) / math.sqrt(self._season_err / weight + floor)
            self._season_seen += 1
            self._season_err += self._a_slow * (e * e - self._season_err)
            self._level_err += self._a_slow * ((x - self._mean) ** 2 - self._level_err)
            self._season[bucket] = expected + c.season_rate * e
        elif bucket >= 0:
            self._season[bucket] = x
        z_jump = abs(x - self._level) / math.sqrt(self._err + scale * scale)
        z = max(z_level, z_jump)
        raw = math.erf(z / c.raw_scale)
        # learn the value's baselines after scoring it (the score of x never depends on x's own update)
        d = x - self._mean
        self._mean += self._a_slow * d
        self._var = (1 - self._a_slow) * (self._var + self._a_slow * d * d)
        r = x - self._level
        self._err += self._a_slow * (r * r - self._err)
        self._level += self._a_fast * r
        # Numenta's anomaly likelihood: how unusual the recent mean raw score is against its history
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._recent_sum -= recent[0]
        recent.append(raw)
        self._recent_sum += raw
        short = self._recent_sum / len(recent)
        da = short - self._a_mean  # Numenta fits the distribution of the averaged scores
        tail = 0.0
        if n > c.learn:
            # Numenta's lower bounds: a near-perfectly predicted stream does not make every wobble unusual
            sd = math.sqrt(max(self._a_var, c.min_var))
            tail = 0.5 * math.erfc((short - max(self._a_mean, 0.03)) / sd / math.sqrt(2.0))
        self._a_mean += self._a_hist * da
        self._a_var = (1 - self._a_hist) * (self._a_var + self._a_hist * da * da)
        score = min(1.0, math.log(max(tail, 1e-300) + 1e-10) / LOG_FLOOR) if n > c.learn else 0.0
        score = max(0.0, score)
        # NAB's numenta detector's "spatial anomaly": a value beyond the range seen so far by more than a
        # share of that range is an anomaly whatever the likelihood says
        span = self._max - self._min
        tolerance = c.spatial * span
        if n > c.learn and c.spatial > 0 and (x > self._max + tolerance or x < self._min - tolerance):
            score = 1.0
        self._max = max(self._max, x)
        self._min = min(self._min, x)
        # one alarm per incident: NAB counts only the first detection in a window and charges the others
        self._since_alarm += 1
        if self._since_alarm <= min(c.hold_share * self.seen, c.max_hold):
            score = 0.0
        elif score >= c.alarm:
            self._since_alarm = 0
        return score

    def score_series(
        self, values: Sequence[float] | np.ndarray, timestamps: Sequence[object] | np.ndarray | None = None
    ) -> np.ndarray:
        """Scores of a whole series, continuing from the current state: exactly `update` applied point by
        point (it is that loop), for replaying a stored metric or a benchmark corpus."""
        data = np.asarray(values, dtype=float)
        if data.ndim != 1:
            raise BadConfig(f"anomaly detector: expected a 1-d series of values, got shape {data.shape}")
        if timestamps is not None and len(timestamps) != len(data):
            raise BadConfig(f"anomaly detector: {len(timestamps)} timestamps for {len(data)} values")
        seconds: list[float | None] = [None] * len(data) if timestamps is None else _seconds_of(timestamps)
        step = self._step
        return np.fromiter(
            (step(t, v) for t, v in zip(seconds, data.tolist(), strict=True)), float, len(data)
        )


def _seconds(timestamp: object) -> float | None:
    """Epoch seconds of a timestamp (time zone ignored: only the time of day matters here)."""
    if timestamp is None:
        return None
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        return float(timestamp)
    if isinstance(timestamp, np.datetime64):
        return float(timestamp.astype("datetime64[ms]").astype(np.int64)) / 1000.0
    if isinstance(timestamp, datetime):
        return (timestamp.replace(tzinfo=None) - EPOCH).total_seconds()
    raise BadConfig(f"anomaly detector: timestamp {timestamp!r} is not a datetime or epoch seconds")


def _seconds_of(timestamps: Sequence[object] | np.ndarray) -> list[float | None]:
    array = np.asarray(timestamps)
    if np.issubdtype(array.dtype, np.datetime64):
        return (array.astype("datetime64[ms]").astype(np.int64) / 1000.0).tolist()
    return [_seconds(t) for t in timestamps]


def windowed_gaussian_scores(values: Sequence[float] | np.ndarray, window: int = 6400) -> np.ndarray:
    """Baseline in the spirit of NAB's `windowedGaussian` detector: erf(|z|/sqrt 2) of each value against
    the mean and standard deviation of the `window` points before it (0 until two points are seen)."""
    x = np.asarray(values, dtype=float)
    if window < 2:
        raise BadConfig(f"windowed gaussian: window {window} must be at least 2")
    sums = np.r_[0.0, np.cumsum(x)]
    squares = np.r_[0.0, np.cumsum(x * x)]
    end = np.arange(len(x))
    start = np.maximum(0, end - window)
    count = end - start
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums[end] - sums[start]) / count
        var = (squares[end] - squares[start]) / count - mean * mean
        z = np.abs(x - mean) / np.sqrt(np.maximum(var, 0.0))
    z = np.where(count >= 2, np.nan_to_num(z, nan=0.0, posinf=1e6), 0.0)
    return np.asarray([math.erf(v / math.sqrt(2.0)) for v in z.tolist()])
