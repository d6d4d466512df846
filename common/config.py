"""Load a component's typed config: TOML file, then environment overrides, then validation.

Each component (broker, edge, cloud, web UI, retraining) has one pydantic
model whose sections forbid unknown keys. ``EMQ_EDGE__MQTT__PORT=8884``
overrides ``[mqtt] port`` of the edge config (double underscore = nesting);
lists and tables are given as JSON, everything else as text that pydantic
converts to the field's type. Every problem is reported at once, with where the value came from.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

ConfigModel = TypeVar("ConfigModel", bound=BaseModel)


class StrictSettings(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ConfigError(ValueError):
    """The config is invalid; ``str()`` lists every problem, one per line."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _parse_env_value(text: str) -> Any:
    """Lists and tables as JSON; anything else stays text and pydantic converts it
    to the field's type ("8884" -> 8884 for an int, but "7" stays "7" for a name)."""
    if text.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[tuple, str]]:
    """Nested dict from ``<prefix>A__B=value`` variables, and where each came from."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    origins: dict[tuple, str] = {}
    for name, value in environ.items():
        if not name.startswith(prefix) or name == prefix:
            continue
        path = tuple(part.lower() for part in name[len(prefix):].split("__"))
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name} conflicts with another variable setting {key}")
        node[path[-1]] = _parse_env_value(value)
        origins[path] = name
    return tree, origins


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(error: ValidationError, origins: dict[tuple, str], source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors(include_url=False):
        location = tuple(str(part) for part in item["loc"])
        where = origins.get(location)
        suffix = f" (from {where})" if where else ""
        lines.append(f"  {'.'.join(location) or '<root>'}: {item['msg']}{suffix}")
    return "\n".join(lines)


def load_config(
    model: type[ConfigModel],
    path: Path | None = None,
    *,
    env_prefix: str,
    overrides: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigModel:
    """Build ``model`` from an optional TOML file, environment and explicit overrides (in that order)."""
    data = read_toml(path) if path is not None else {}
    from_env, origins = env_overrides(env_prefix, environ)
    data = deep_merge(deep_merge(data, from_env), overrides or {})
    source = str(path) if path is not None else "defaults"
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, origins, source)) from None
