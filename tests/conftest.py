"""Shared test helpers: build specs from the base fixture plus a YAML fragment."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BASE_TEXT = (FIXTURES / "base.yaml").read_text()


def deep_merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def spec_text(fragment: str = "", base: str = BASE_TEXT) -> str:
    """The base spec with `fragment` merged in, dumped back to YAML (block style, stable order)."""
    data = deep_merge(yaml.safe_load(base), yaml.safe_load(fragment) or {})
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def check_text(text: str, file: str = "spec.yaml", **kw):
    from distillc.compiler.check import check_loaded
    from distillc.compiler.loader import load_text

    return check_loaded(load_text(text, file), **kw)


def codes(checked) -> list[str]:
    return [d.code for d in checked.diagnostics]


def find(checked, code: str):
    hits = [d for d in checked.diagnostics if d.code == code]
    assert hits, f"{code} not reported; got {[(d.code, d.message) for d in checked.diagnostics]}"
    return hits[0]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (to assert positions without magic numbers)."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


@pytest.fixture
def base_text() -> str:
    return BASE_TEXT
