"""The one strict pydantic base and the one way a validation error becomes a `ConfigError`.

Run, serve and sweep configs all come from YAML files and `key.path=value` overrides, so they share
the rule (an unknown key is an error) and the message (where it came from, then each field).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from xqg_ray.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def validate(model: type[Model], data: Any, source: str) -> Model:
    """`model` from `data`; a bad field raises a `ConfigError` naming `source` and each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
