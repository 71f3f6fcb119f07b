"""Reading a YAML file into a pydantic model, with one-line errors naming the file and the field: the
service map, the decision policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from features.errors import BadConfig

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], what: str, empty: dict[str, Any] | None = None) -> M:
    """`model` validated from the YAML mapping in `path`; `what` names the file in errors (`policy`,
    `service map`). An empty file is `empty` when given, else an error."""
    import yaml

    try:
        doc: Any = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise BadConfig(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise BadConfig(f"{what} {path} is not valid YAML: {exc}") from None
    if doc is None and empty is not None:
        doc = empty
    if not isinstance(doc, dict):
        raise BadConfig(f"{what} {path}: expected a mapping at the top level")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise BadConfig(f"{what} {path}: {where}: {first['msg']}{more}") from None
