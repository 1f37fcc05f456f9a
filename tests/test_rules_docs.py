"""docs/rules.md is generated from the registry and must be current."""

from __future__ import annotations

from distillc.compiler.registry import iter_codes
from distillc.compiler.rules._docs import render_markdown
from tests.conftest import ROOT


def test_rules_page_is_up_to_date():
    page = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert page == render_markdown(), "regenerate it: distillc rules --markdown > docs/rules.md"


def test_every_code_has_a_section_with_its_examples():
    page = render_markdown()
    for c in iter_codes():
        assert f"### {c.code}: {c.title}" in page
        for block in c.examples.values():
            assert block.strip() in page
