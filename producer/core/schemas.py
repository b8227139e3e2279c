"""The public objects' JSON Schemas, published in producer/core/schema/: what
`videoqueue status --json`, `batch-status --json` and webhooks' `data` carry.

Generated from the models; `python -m producer.core.schemas` writes them again after a model
changes (tests/unit/test_public_schema.py fails while the committed files differ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from producer.core.records import BatchRecord, PublicJob

SCHEMA_DIR = Path(__file__).parent / "schema"
_MODELS: dict[str, type[BaseModel]] = {"job": PublicJob, "batch": BatchRecord}


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of public object `name` (job, batch), as its public() dump is."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_MODELS[name].model_json_schema(mode="serialization"),
    }


def schema_text(name: str) -> str:
    """The schema as its file holds it."""
    return json.dumps(schema(name), indent=2) + "\n"


def schema_path(name: str) -> Path:
    return SCHEMA_DIR / f"{name}.schema.json"


if __name__ == "__main__":
    for model_name in _MODELS:
        schema_path(model_name).write_text(schema_text(model_name))
        print(schema_path(model_name))
