"""`awo diagnose`: rank the culprits of an incident and propose a policy-allowed repair."""

from __future__ import annotations
