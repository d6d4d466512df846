"""Helpers shared by the tests/test_deploy_*.py files (no tests of its own).

They read docker-compose.yml, deploy/.env.example, the Dockerfiles and
pyproject.toml the way Docker Compose, BuildKit and pip would, closely enough
to check them on a machine without a Docker engine.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

yaml = pytest.importorskip("yaml", reason="PyYAML parses docker-compose.yml: pip install pyyaml (test extra)")

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / "deploy" / ".env.example"
PYPROJECT = REPO_ROOT / "pyproject.toml"
VENV_BIN = Path(sys.executable).parent

# Console scripts the compose file uses before their owners add them to pyproject.toml.
PLANNED_SCRIPTS = {
    "emq-webui": "the web UI's console script (webui/cli.py) is not in [project.scripts] yet",
}

# Which typed config reads which environment prefix (common.config.load_config).
CONFIG_MODELS = {
    "EMQ_BROKER__": ("broker.config", "BrokerSettings"),
    "EMQ_EDGE__": ("edge.config", "EdgeConfig"),
    "EMQ_INGEST__": ("cloud.config", "IngestConfig"),
    "EMQ_WEBUI__": ("webui.config", "WebUIConfig"),
    "EMQ_RETRAIN__": ("models.retrain", "RetrainConfig"),
}
COMPONENT_VARIABLE = re.compile(r"^EMQ_[A-Z]+__")


# -- docker-compose.yml ------------------------------------------------------------------------
@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_example() -> dict[str, str]:
    """deploy/.env.example as Compose reads a .env file (KEY=VALUE, # comments)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# $$ (a literal $), ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, environment: dict[str, str]) -> Any:
    """Compose's variable substitution over strings, lists and mappings."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda match: _substitute(match, environment), value)
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    return value


def _substitute(match: re.Match, environment: dict[str, str]) -> str:
    if match["escaped"]:
        return "$"
    name = match["braced"] or match["bare"]
    value, operator, argument = environment.get(name), match["operator"], match["argument"]
    if operator == ":-":
        return value if value else argument
    if operator == "-":
        return argument if value is None else value
    if operator in (":?", "?") and (value is None or (operator == ":?" and not value)):
        raise InterpolationError(f"{name}: {argument}")
    return value or ""


def referenced_variables(text: str) -> set[str]:
    return {match["braced"] or match["bare"] for match in _INTERPOLATION.finditer(text) if not match["escaped"]}


def resolved_service(name: str, environment: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(services()[name], env_example() if environment is None else environment)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def as_argv(command: Any) -> list[str]:
    if command is None:
        return []
    return command.split() if isinstance(command, str) else list(command)


def service_argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint (when the service sets one) followed by command."""
    return as_argv(service.get("entrypoint")) + as_argv(service.get("command"))


def duration_seconds(text: str) -> float:
    """Compose durations: 30s, 1m30s, 500ms, 2h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(number + unit for number, unit in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# -- pyproject.toml --------------------------------------------------------------------------------
@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def console_scripts() -> dict[str, str]:
    return pyproject()["project"]["scripts"]


def optional_extras() -> set[str]:
    return set(pyproject()["project"]["optional-dependencies"])


def packages() -> list[str]:
    return [pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]


# Planned console scripts whose code already runs as ``python -m <module>``.
MODULE_ENTRY_POINTS = {"emq-webui": "webui"}


def script_launcher(name: str) -> list[str]:
    """How to run one of our console scripts here: the script beside the interpreter,
    else ``python -m`` for a planned one whose module exists, else skip with the reason."""
    script = VENV_BIN / name
    if script.exists():
        return [str(script)]
    module = MODULE_ENTRY_POINTS.get(name)
    if module and importlib.util.find_spec(f"{module}.__main__") is not None:
        return [sys.executable, "-m", module]
    reason = PLANNED_SCRIPTS.get(name, "the package is not installed in this environment (pip install -e .)")
    pytest.skip(f"{name} not installed: {reason}")


# -- Dockerfiles -------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [argument for keyword, argument in self.instructions if keyword == "RUN"]

    def copies(self) -> list[str]:
        return [argument for keyword, argument in self.instructions if keyword == "COPY"]

    def env_names(self) -> list[str]:
        names = []
        for keyword, argument in self.instructions:
            if keyword == "ENV":
                names += re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", argument)
        return names


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with line continuations joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        pending += (" " if pending else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, argument = pending.partition(" ")
            instructions.append((keyword.upper(), argument.strip()))
            pending = ""
    return instructions


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, argument in dockerfile_instructions(path):
        if keyword == "FROM":
            words = [word for word in argument.split() if not word.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, words[0])
        elif current is not None:
            current.instructions.append((keyword, argument))
    return stages


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The target and every stage it is built FROM, nearest first."""
    chain = []
    while target in stages:
        chain.append(stages[target])
        target = stages[target].base
    return chain


def extras_installed(stage: Stage) -> set[str]:
    """Extras named in ``pip install "...[a,b]"`` lines of a stage."""
    extras: set[str] = set()
    for command in stage.runs():
        for group in re.findall(r'pip install[^;&]*?\[([a-z,_-]+)\]"', command):
            extras |= set(group.split(","))
    return extras


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]


# -- typed configs -------------------------------------------------------------------------------
def config_model(prefix: str) -> type[BaseModel] | None:
    module_name, class_name = CONFIG_MODELS[prefix]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    return getattr(module, class_name)


def field_path_problem(model: type[BaseModel], parts: list[str]) -> str | None:
    """None if ``parts`` (lower-cased env name pieces) lead to a field of ``model``, else why not."""
    head, rest = parts[0], parts[1:]
    if head not in model.model_fields:
        return f"{model.__name__} has no field {head!r} (fields: {', '.join(sorted(model.model_fields))})"
    if not rest:
        return None
    return annotation_path_problem(model.model_fields[head].annotation, rest, f"{model.__name__}.{head}")


def annotation_path_problem(annotation: Any, rest: list[str], where: str) -> str | None:
    for candidate in _unwrapped(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return field_path_problem(candidate, rest)
        if typing.get_origin(candidate) is dict:
            value_type = typing.get_args(candidate)[1]
            return None if len(rest) == 1 else annotation_path_problem(value_type, rest[1:], f"{where}[{rest[0]}]")
    return f"{where} is a plain value; nothing below it ({'.'.join(rest)})"


def _unwrapped(annotation: Any) -> list[Any]:
    """Union members (X | None), Annotated stripped."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _unwrapped(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for argument in typing.get_args(annotation) for member in _unwrapped(argument)]
    return [annotation]
