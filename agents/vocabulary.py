"""The words decisions are made of, shared by the policy, the context and the plans."""

from __future__ import annotations

from typing import Literal

Gate = Literal["fast_track", "standard", "senior_review", "block"]
GATES: tuple[Gate, ...] = ("fast_track", "standard", "senior_review", "block")  # loosest to tightest
Band = Literal["low", "medium", "high", "critical"]
BANDS: tuple[Band, ...] = ("low", "medium", "high", "critical")
Strategy = Literal["full", "rolling", "canary", "blue-green", "recreate"]  # the deployment schema's words
FileKindName = Literal["code", "test", "docs", "config", "migration", "ui_text"]


def gate_level(gate: Gate) -> int:
    return GATES.index(gate)


def tighter(a: Gate, b: Gate) -> Gate:
    return a if gate_level(a) >= gate_level(b) else b
