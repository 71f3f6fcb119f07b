"""The service map: which paths belong to which service, and what the agents need to know of each service
(dependencies, owners, criticality, business value, SLOs). One YAML file (`AWO_SERVICE_MAP`), documented
by the JSON Schema in `docs/schemas/service-map.schema.json` (generated from these models)."""

from __future__ import annotations

import graphlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from features.errors import BadConfig
from features.yamlfile import load_yaml_model

Criticality = Literal["low", "medium", "high", "critical"]
CRITICALITY_LEVEL: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "service-map.schema.json"


class Slo(BaseModel):
    """Service-level objectives over a rolling window (the Google SRE book's error-budget model)."""

    model_config = ConfigDict(extra="forbid")
    availability: float = Field(
        default=0.999, gt=0, lt=1, description="target share of good requests (0.999 = three nines)"
    )
    latency_p99_ms: float | None = Field(default=None, gt=0, description="target 99th-percentile latency, ms")
    window_days: float = Field(default=28, gt=0, le=366, description="rolling window of the error budget")


def _paths_only(value: Any) -> Any:
    """The short form `payments: ["services/payments/*"]` (or one glob) means paths only."""
    if isinstance(value, str):
        return {"paths": [value]}
    if isinstance(value, list):
        return {"paths": value}
    return value


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="fnmatch globs of the service's files (`*` also crosses `/`)"
    )
    depends_on: list[str] = Field(
        default_factory=list, description="services this one calls; they deploy first and roll back last"
    )
    owners: list[str] = Field(default_factory=list, description="teams or people who own the service")
    criticality: Criticality = Field(default="medium", description="how much an outage hurts")
    business_value: float = Field(
        default=1.0, ge=0, le=100, description="relative value of the service's traffic (weights its risk)"
    )
    slos: Slo = Field(default_factory=Slo, description="the service's objectives")


ServiceEntry = Annotated[
    Service, BeforeValidator(_paths_only, json_schema_input_type=Service | str | list[str])
]


class Topology(BaseModel):
    """The service-map file. `services:` maps a name to its paths (short form) or to a full entry."""

    model_config = ConfigDict(extra="forbid", title="awo service map")
    version: int = Field(default=1, ge=1, description="format version of this file")
    services: dict[str, ServiceEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dependencies_exist(self) -> Topology:
        for name, service in self.services.items():
            unknown = [d for d in service.depends_on if d not in self.services]
            if unknown:
                raise ValueError(f"services.{name}.depends_on: unknown service(s) {unknown}")
            if name in service.depends_on:
                raise ValueError(f"services.{name}.depends_on: a service cannot depend on itself")
        return self

    def path_rules(self) -> list[tuple[str, str]]:
        return [(glob, name) for name, service in self.services.items() for glob in service.paths]

    def service(self, name: str) -> Service:
        """A declared service, or the defaults for one the map does not declare (a top-level folder)."""
        return self.services.get(name) or Service()

    def deploy_order(self, services: list[str] | set[str]) -> list[str]:
        """Dependencies first (`graphlib`, standard library); among the changed services only, following
        dependencies through services that are not changed. A cycle is an error naming it."""
        wanted = set(services)
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for name in sorted(wanted | set(self.services)):
            sorter.add(name, *sorted(self.service(name).depends_on))
        try:
            order = list(sorter.static_order())
        except graphlib.CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise BadConfig(f"service map: dependency cycle {cycle}") from None
        return [name for name in order if name in wanted]


def topology_schema() -> dict[str, Any]:
    return Topology.model_json_schema()


def load_topology(path: Path | None) -> Topology:
    """The service map, or an empty one. A bad file is an error naming the file and the field."""
    if path is None:
        return Topology()
    return load_yaml_model(Path(path), Topology, "service map", empty={})


def write_schema(path: Path = SCHEMA_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(topology_schema(), indent=2, sort_keys=True) + "\n")
