"""Every rule's docstring examples: the `Fails::` fragment triggers its code, `Passes::` does not."""

from __future__ import annotations

import pytest

from distillc.compiler.registry import TARGETS, iter_codes
from tests.conftest import check_text, codes, spec_text

RULES = [c for c in iter_codes() if c.func is not None]


@pytest.mark.parametrize("code", RULES, ids=lambda c: c.code)
def test_rule_has_both_examples(code):
    assert set(code.examples) == {"fails", "passes"}, f"{code.code} docstring needs Fails:: and Passes:: blocks"


@pytest.mark.parametrize("code", RULES, ids=lambda c: c.code)
def test_failing_example_triggers(code):
    assert code.code in codes(check_text(spec_text(code.examples["fails"]), target=code.targets[0]))


@pytest.mark.parametrize("code", RULES, ids=lambda c: c.code)
def test_passing_example_is_clean_of_the_code(code):
    assert code.code not in codes(check_text(spec_text(code.examples["passes"]), target=code.targets[0]))


@pytest.mark.parametrize("code", [c for c in RULES if len(c.targets) == 1], ids=lambda c: c.code)
def test_a_target_rule_is_silent_for_the_other_target(code):
    other = next(t for t in TARGETS if t not in code.targets)
    assert code.code not in codes(check_text(spec_text(code.examples["fails"]), target=other))
