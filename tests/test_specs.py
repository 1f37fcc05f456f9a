"""Every shipped spec validates with no errors and no warnings (clusters.yaml is not a spec)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from distillc.compiler.check import check_loaded
from distillc.compiler.loader import load_file, load_text
from tests.conftest import ROOT

SPECS = sorted(p for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")


def test_there_is_a_spec_per_starter_scenario():
    names = {p.name for p in SPECS}
    for expected in (
        "quickstart.yaml",
        "llama31-8b-prune-recovery.yaml",
        "llama31-8b-logit-only.yaml",
        "llama31-70b-to-8b.yaml",
        "llama31-70b-to-8b-offline.yaml",
        "qwen25-7b-to-1p5b-reasoning.yaml",
    ):
        assert expected in names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_spec_is_clean(path):
    checked = check_loaded(load_file(path))
    assert [(d.code, d.span.line, d.message) for d in checked.diagnostics] == []
    assert checked.spec.full() is not None


def test_scenarios_use_the_guides_schedules():
    def loss(name):
        return check_loaded(load_file(ROOT / "specs" / name)).spec.loss

    prune = loss("llama31-8b-prune-recovery.yaml")
    assert (prune.alpha.start, prune.alpha.end, prune.alpha.schedule) == (0.9, 0.5, "cosine")
    assert (prune.beta.start, prune.beta.end, prune.beta.schedule) == (1.0, 0.1, "cosine")
    assert (prune.temperature.start, prune.temperature.end) == (2.0, 1.0)
    assert loss("llama31-8b-logit-only.yaml").beta.start == 0
    big = loss("llama31-70b-to-8b.yaml")
    assert (big.alpha.start, big.alpha.schedule) == (1.0, "constant")
    off = loss("llama31-70b-to-8b-offline.yaml")
    assert (off.alpha.start, off.alpha.end) == (0.7, 0.3)
    reasoning = loss("qwen25-7b-to-1p5b-reasoning.yaml")
    assert (reasoning.alpha.start, reasoning.alpha.end) == (0.8, 0.2)


# ---------------------------------------------------------------- numbers follow YAML 1.2

_DECIMAL = re.compile(r"(?<![\w.\-+/:])(-?\d+\.\d+(?:[eE][-+]?\d+)?)(?![\w.])")  # a plain float: 0.0003, 2.0, 1.0e-5


def _e_notation(text: str, dotted: bool) -> tuple[str, int]:
    """Every decimal float literal of `text` rewritten in e-notation (0.0003 -> 3e-4, or 3.0E-4
    when `dotted`): the forms YAML 1.1 reads as strings and YAML 1.2 as floats."""

    def rewrite(m: re.Match) -> str:
        sign, digits, exp = Decimal(m.group(1)).normalize().as_tuple()
        mantissa = "-" * sign + "".join(map(str, digits))
        return f"{mantissa}.0E{exp}" if dotted else f"{mantissa}e{exp}"

    return _DECIMAL.subn(rewrite, text)


@pytest.mark.parametrize("dotted", [False, True], ids=["3e-4", "3.0E-4"])
@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_e_notation_reads_as_the_same_numbers(path, dotted):
    text = path.read_text()
    rewritten, n = _e_notation(text, dotted)
    assert n > 0, "every shipped spec has a float to rewrite"
    original = check_loaded(load_file(path))
    again = check_loaded(load_text(rewritten, str(path)))
    assert [(d.code, d.message) for d in again.diagnostics] == []
    assert again.spec.full().model_dump() == original.spec.full().model_dump()
