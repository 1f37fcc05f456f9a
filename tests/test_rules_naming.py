"""DC16x: the spec name as an xpk workload name, and compiler/naming.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillc.compiler.naming import (
    MAX_SUPER_SLICING_NAME,
    MAX_WORKLOAD_NAME,
    WORKLOAD_NAME_PATTERN,
    is_valid_workload_name,
    name_problem,
    stage_suffixes,
    workload_name,
)
from tests.conftest import at, check_text, codes, find, spec_text, where

XPK = re.compile(rf"\A{WORKLOAD_NAME_PATTERN}\Z")


class TestDC160NamePattern:
    @pytest.mark.parametrize("name", ["Llama-8B", "llama_8b", "8b-llama", "llama-", "llama.8b", "'-x'", "lläma"])
    def test_fails(self, name):
        text = spec_text(f"name: {name}")
        d = find(check_text(text), "DC160")
        line, col = at(text, "\nname:", "name:")
        assert where(d) == (line, col + len("name: "))  # the value, quoted or not
        assert XPK.match(d.hint.split("'")[-2])  # the suggestion is itself valid

    def test_passes(self):
        assert "DC160" not in codes(check_text(spec_text("name: llama31-8b-prune")))


class TestDC161NameLength:
    def test_fails_online(self):
        name = "a" * 41
        text = spec_text(f"name: {name}")
        d = find(check_text(text), "DC161")
        assert where(d) == at(text, "name:", name)
        assert "40" in d.message

    def test_fails_offline_suffix(self):
        # 35 characters fit online, but not with '-train'
        name = "b" * 35
        assert "DC161" not in codes(check_text(spec_text(f"name: {name}")))
        text = spec_text(f"name: {name}\nmode: offline\noffline: {{top_k: 8, data_dir: /tmp/t}}")
        assert "DC161" in codes(check_text(text))

    def test_fails_super_slicing(self):
        from distillc.compiler.catalog import load_catalog

        sups = [a for a in load_catalog().accelerators.values() if a.super_slicing]
        if not sups:
            pytest.skip("the catalog lists no super-slicing accelerator type")
        text = spec_text(f"name: {'c' * 30}\nresources: {{accelerator: {sups[0].name}}}")
        d = find(check_text(text), "DC161")
        assert str(MAX_SUPER_SLICING_NAME) in d.message

    def test_passes_exactly_40(self):
        assert "DC161" not in codes(check_text(spec_text(f"name: {'d' * 40}")))


class TestWorkloadName:
    def test_valid_names_are_kept(self):
        assert workload_name("llama31-8b-prune") == "llama31-8b-prune"
        assert workload_name("llama31-8b-prune", "-train") == "llama31-8b-prune-train"

    def test_stage_suffixes(self):
        assert stage_suffixes("online") == ("",)
        assert stage_suffixes("offline") == ("-topk", "-train")

    def test_long_names_are_truncated_and_hashed(self):
        a, b = workload_name("x" * 60 + "a", "-topk"), workload_name("x" * 60 + "b", "-topk")
        assert a != b and len(a) == len(b) == MAX_WORKLOAD_NAME
        assert a.endswith("-topk")
        # the stages of one spec share the tag
        assert workload_name("x" * 60 + "a", "-train")[:-6].rsplit("-", 1)[1] == a[:-5].rsplit("-", 1)[1]

    def test_deterministic(self):
        assert workload_name("My Experiment #3", "-a1") == workload_name("My Experiment #3", "-a1")

    def test_problem_descriptions(self):
        assert name_problem("ok-name") is None
        assert name_problem("") and name_problem("Ab") and name_problem("a_b") and name_problem("1a") and name_problem("a-")

    @settings(max_examples=300, deadline=None)
    @given(
        name=st.text(max_size=80),
        suffix=st.sampled_from(["", "-topk", "-train", "-a12", "_cell 3"]),
        max_len=st.sampled_from([MAX_WORKLOAD_NAME, MAX_SUPER_SLICING_NAME]),
    )
    def test_always_valid(self, name, suffix, max_len):
        out = workload_name(name, suffix, max_len)
        assert XPK.match(out) and len(out) <= max_len
        assert is_valid_workload_name(out, max_len)
        if is_valid_workload_name(name + suffix, max_len) and XPK.match(name):
            assert out == name + suffix
