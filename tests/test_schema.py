"""`distillc schema`: the JSON Schema describes what the spec language accepts (bare-number schedules
included), and every shipped spec validates against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distillc.compiler.cli import app
from distillc.compiler.loader import load_file, load_text
from tests.test_specs import _e_notation

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")
SCHEDULE_FIELDS = ("alpha", "temperature", "beta")


@pytest.fixture(scope="module")
def schema() -> dict:
    r = CliRunner().invoke(app, ["schema"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _branches(prop: dict) -> list[dict]:
    return list(prop.get("oneOf", [])) + list(prop.get("anyOf", []))


@pytest.mark.parametrize("field", SCHEDULE_FIELDS)
def test_schedule_accepts_a_number(schema, field):
    prop = schema["$defs"]["Loss"]["properties"][field]
    assert {"type": "number"} in _branches(prop)
    refs = {b.get("$ref") for b in _branches(prop)}
    assert {"#/$defs/Constant", "#/$defs/Linear", "#/$defs/Cosine", "#/$defs/Piecewise"} <= refs


@pytest.mark.parametrize("field", SCHEDULE_FIELDS)
def test_schedule_default_is_a_number(schema, field):
    prop = schema["$defs"]["Loss"]["properties"][field]
    assert isinstance(prop["default"], float)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_specs_validate(schema, path):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    jsonschema.validate(load_file(path).data, schema)  # as distillc (and a YAML 1.2 editor) reads it
    jsonschema.validate(load_text(_e_notation(path.read_text(), dotted=False)[0]).data, schema)  # 3e-4 is a number


def test_schema_says_numbers_follow_yaml_1_2(schema):
    assert "YAML 1.2" in schema["description"] and "1e-5 is a number" in schema["description"]


def test_defaults_validate_against_their_own_schema(schema):
    jsonschema = pytest.importorskip("jsonschema")
    for name in SCHEDULE_FIELDS:
        prop = schema["$defs"]["Loss"]["properties"][name]
        sub = {"$defs": schema["$defs"], **{k: v for k, v in prop.items() if k != "default"}}
        jsonschema.validate(prop["default"], sub)


def test_schema_rejects_a_bad_schedule(schema):
    jsonschema = pytest.importorskip("jsonschema")
    spec = yaml.safe_load(SPECS[0].read_text())
    spec.setdefault("loss", {})["alpha"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema)
