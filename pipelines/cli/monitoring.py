"""`awo benchmark nab`: the single-stream anomaly detector scored on NAB-format corpora."""

from __future__ import annotations
