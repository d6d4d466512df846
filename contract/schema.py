"""Generate the JSON Schema files in ``contract/schema/`` from the pydantic models.

Run ``python -m contract.schema`` after changing :mod:`contract.messages`;
a test fails while the committed files differ from what this generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contract.messages import Command, ModelRelease, Reply, Result, Stats, StoredMark

SCHEMA_DIR = Path(__file__).parent / "schema"
MODELS = {"result": Result, "stats": Stats, "command": Command, "reply": Reply, "model-release": ModelRelease, "stored": StoredMark}


def render_schemas() -> dict[str, str]:
    """File name -> JSON text for every message type."""
    rendered = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(by_alias=True, mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        version = model.model_fields["schema_"].default.rsplit("/", 1)[1]
        schema["$id"] = f"urn:emotion-mqtt:{name}:{version}"
        rendered[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return rendered


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render_schemas().items():
        path = directory / file_name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        print(path)
    sys.exit(0)
