"""The loader: positions, duplicate keys, hostile input bounded in time and memory, clear errors."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import tracemalloc

import pytest
from typer.testing import CliRunner

from distillc.compiler.cli import app
from distillc.compiler.loader import MAX_BYTES, MAX_DEPTH, MAX_NODES, LoadError, dump, load_file, load_text, plain_value
from tests.conftest import ROOT

BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
) + "\n"


def codes(loaded):
    return [d.code for d in loaded.diagnostics]


def run_cli(*args):
    return CliRunner().invoke(app, list(args))


def assert_one_line_exit_2(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distillc: error: "), result.stderr
    for w in words:
        assert w in lines[0]


class TestPositions:
    def test_value_and_key_spans(self):
        loaded = load_text("a:\n  b: 1\n  cc:\n    - x\n    - {d: 2}\n")
        src = loaded.source
        assert loaded.data == {"a": {"b": 1, "cc": ["x", {"d": 2}]}}
        assert (src.span(("a", "b")).line, src.span(("a", "b")).column) == (2, 6)
        assert (src.key_span(("a", "cc")).line, src.key_span(("a", "cc")).column) == (3, 3)
        assert (src.span(("a", "cc", 1, "d")).line, src.span(("a", "cc", 1, "d")).column) == (5, 11)

    def test_missing_path_falls_back_to_the_nearest_ancestor(self):
        src = load_text("a:\n  b: 1\n").source
        assert src.span(("a", "b", "c", "d")).line == 2

    def test_bom_and_crlf(self, tmp_path):
        p = tmp_path / "s.yaml"
        p.write_bytes(b"\xef\xbb\xbfa: 1\r\nb:\r\n  c: 2\r\n")
        loaded = load_file(p)
        assert loaded.data == {"a": 1, "b": {"c": 2}}
        assert loaded.source.span(("b", "c")).line == 3


class TestMalformed:
    def test_syntax_error_has_a_position(self):
        loaded = load_text("a: [1, 2\nb: 3\n")
        (d,) = loaded.diagnostics
        assert d.code == "DC000" and d.span.line >= 2

    def test_tab_indentation(self):
        assert codes(load_text("a:\n\tb: 1\n")) == ["DC000"]

    def test_two_documents(self):
        assert codes(load_text("a: 1\n---\nb: 2\n")) == ["DC000"]

    def test_undefined_alias(self):
        assert codes(load_text("a: *nope\n")) == ["DC000"]

    def test_empty(self):
        assert codes(load_text("# nothing\n")) == ["DC003"]

    def test_python_tags_are_not_executed(self):
        loaded = load_text("a: !!python/object/apply:os.system ['echo pwned']\n")
        assert codes(loaded) == ["DC001"] and loaded.data == {"a": None}

    def test_cli_exit_1_with_position(self, tmp_path):
        p = tmp_path / "bad.yaml"
        p.write_text("name: x\nteacher: [\n")
        r = run_cli("validate", str(p), "--format", "concise")
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert f"{p}:" in r.stderr and "DC000" in r.stderr


class TestDuplicatesAndConstructs:
    def test_duplicate_key_points_at_the_second(self):
        loaded = load_text("a: 1\nb: 2\na: 3\n")
        (d,) = loaded.diagnostics
        assert (d.code, d.span.line, d.span.column) == ("DC002", 3, 1)
        assert "line 1" in d.message
        assert loaded.data == {"a": 1, "b": 2}

    def test_nested_duplicate(self):
        (d,) = load_text("loss:\n  alpha: 1\n  alpha: 2\n").diagnostics
        assert (d.code, d.path, d.span.line, d.span.column) == ("DC002", ("loss", "alpha"), 3, 3)

    def test_merge_key(self):
        assert codes(load_text("base: &b {x: 1}\nc:\n  <<: *b\n")) == ["DC001"]

    def test_complex_key(self):
        assert codes(load_text("? [1, 2]\n: x\n")) == ["DC001"]

    @pytest.mark.parametrize(
        "text, tag",
        [
            ("name: !!python/object/apply:os.system [ls]\n", "!!python/object/apply:os.system"),
            ("name: !!python/name:os.system ''\n", "!!python/name:os.system"),
            ("name: !custom x\n", "!custom"),
            ("loss: !!python/object:dict {a: 1}\n", "!!python/object:dict"),
        ],
    )
    def test_unsupported_tag_is_dc001(self, text, tag):
        loaded = load_text(text)
        (d,) = loaded.diagnostics
        assert d.code == "DC001" and f"unsupported YAML tag '{tag}'" in d.message
        assert (d.span.line, d.span.column) == (1, 7)
        assert loaded.refused == (d.path,)

    def test_standard_tags_are_plain_values(self):
        loaded = load_text("a: !!str 1\nb: !!int '2'\nc: 2024-01-01\n")
        assert loaded.diagnostics == () and loaded.data["a"] == "1" and loaded.data["b"] == 2

    def test_unsupported_tag_is_not_also_an_invalid_value(self):
        from tests.conftest import check_text, spec_text

        text = spec_text("").replace("name: ", "name: !!python/object/apply:os.system ", 1)
        got = [(d.code, d.path) for d in check_text(text).diagnostics]
        assert got == [("DC001", ("name",))]


class TestBounded:
    def test_billion_laughs(self):
        tracemalloc.start()
        t0 = time.perf_counter()
        loaded = load_text(BOMB)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert codes(loaded) == ["DC004"]
        assert loaded.data is None
        assert elapsed < 0.5 and peak < 20 * 2**20

    def test_recursive_alias(self):
        assert codes(load_text("a: &x [1, *x]\n")) == ["DC004"]

    def test_harmless_aliases_are_expanded(self):
        assert load_text("a: &x [1, 2]\nb: *x\n").data == {"a": [1, 2], "b": [1, 2]}

    def test_deep_nesting_does_not_crash_the_interpreter(self, tmp_path):
        # libyaml's composer recurses per level; 300k levels used to overflow the C stack (SIGSEGV)
        p = tmp_path / "deep.yaml"
        p.write_text("[" * 300_000 + "]" * 300_000)
        proc = subprocess.run(
            [sys.executable, "-m", "distillc.compiler.cli", "validate", str(p), "--format", "concise"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        # one located error, whichever reader noticed first (libyaml caps nesting itself since PyYAML
        # 6.0.3; the loader reports that as its own DC004 too, but the contract is the located error)
        assert proc.returncode == 1, proc.stderr[-500:]
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert re.fullmatch(rf"{re.escape(str(p))}:\d+:\d+: error: DC00[04] .*", line), line

    @pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 999, 1001, 300_000])  # ours, libyaml's cap (1000) either side
    def test_deep_nesting_is_dc004_at_any_depth(self, depth):
        (d,) = load_text("[" * depth + "]" * depth).diagnostics
        assert d.code == "DC004" and d.span.line == 1 and d.span.column > 1

    def test_block_nesting(self):
        assert codes(load_text("- " * 1000 + "x\n")) == ["DC004"]

    def test_wide_document(self):
        t0 = time.perf_counter()
        loaded = load_text("[" + "1," * 250_000 + "1]")  # 500 KB: under the size limit
        assert codes(loaded) == ["DC004"]
        assert time.perf_counter() - t0 < 2

    def test_largest_accepted_document_is_quick(self):
        t0 = time.perf_counter()
        assert codes(load_text("[" + "1," * (MAX_NODES - 10) + "1]")) == []
        assert time.perf_counter() - t0 < 5


class TestYaml12:
    """Plain scalars resolve by YAML 1.2's core schema (PyYAML alone is YAML 1.1)."""

    @pytest.mark.parametrize("text,value", [
        ("1e-5", 1e-5), ("3E-3", 3e-3), (".5", 0.5), ("+1.5e3", 1500.0), ("-2.", -2.0), ("1.0e-5", 1e-5),
        ("1e999", math.inf), (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf),
        ("0", 0), ("-17", -17), ("+3", 3), ("017", 17), ("0o17", 15), ("0x1F", 31), ("0x1f", 31),
        ("true", True), ("True", True), ("TRUE", True), ("false", False), ("FALSE", False),
        ("null", None), ("~", None), ("Null", None), ("", None),
        # strings in YAML 1.2 (numbers or booleans in 1.1, or in neither)
        ("1_000", "1_000"), ("0b101", "0b101"), ("1:30", "1:30"), ("0X1F", "0X1F"), ("-0x1", "-0x1"), ("0o8", "0o8"),
        ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("tRUE", "tRUE"), ("NO", "NO"),
        ("2024-01-01", "2024-01-01"), ("=", "="), ("1e", "1e"), ("e5", "e5"), ("1.2.3", "1.2.3"), ("inf", "inf"),
        ("\u0661\u0662", "\u0661\u0662"),  # Arabic-Indic digits: not [0-9]
    ])
    def test_plain_scalar(self, text, value):
        got = load_text(f"a: {text}\n").data["a"]
        assert type(got) is type(value) and (got == value or got != got), (text, got)
        assert plain_value(text) == value or text == ""

    def test_nan(self):
        assert all(math.isnan(load_text(f"a: {t}").data["a"]) for t in (".nan", ".NaN", ".NAN"))

    @pytest.mark.parametrize("text", ["'1e-5'", '"3e-3"', "'true'", '"0x1F"', "|\n  1e-5\n", "!!str 1e-5"])
    def test_quoted_block_and_str_tagged_scalars_stay_strings(self, text):
        assert isinstance(load_text(f"a: {text}\n").data["a"], str)

    @pytest.mark.parametrize("text,value", [("!!float 1", 1.0), ("!!int 0x10", 16), ("!!bool true", True), ("!!null null", None),
                                            ("!!int 1.5", "1.5"), ("!!bool yes", "yes"), ("!!float abc", "abc")])
    def test_explicit_tags_read_their_own_forms_only(self, text, value):
        got = load_text(f"a: {text}\n").data["a"]
        assert type(got) is type(value) and got == value

    def test_keys_resolve_too(self):
        assert load_text("1e3: a\nyes: b\n").data == {1000.0: "a", "yes": "b"}

    def test_timestamps_are_not_a_spec_type(self):
        assert codes(load_text("a: !!timestamp 2024-01-01\n")) == ["DC001"]

    def test_a_huge_integer_stays_text(self):
        assert load_text("a: " + "9" * 5000).data["a"] == "9" * 5000  # past Python's int-string limit

    def test_dump_reads_back_the_same_in_yaml_1_1_and_1_2(self):
        import yaml

        data = {"s": ["1e5", "yes", "0o17", "1_000", "", "null", ".5", "2024-01-01"], "f": [1e-5, 3.0, math.inf], "1e3": True}
        text = dump(data)
        assert load_text(text).data == data and yaml.safe_load(text) == data


class TestUnreadable:
    def test_missing_file(self, tmp_path):
        with pytest.raises(LoadError, match="no such file"):
            load_file(tmp_path / "nope.yaml")
        assert_one_line_exit_2(run_cli("validate", str(tmp_path / "nope.yaml")), "no such file")

    def test_directory(self, tmp_path):
        assert_one_line_exit_2(run_cli("validate", str(tmp_path)), "not a regular file")

    def test_binary_junk(self, tmp_path):
        p = tmp_path / "junk.yaml"
        p.write_bytes(bytes(range(256)) * 64)
        assert_one_line_exit_2(run_cli("validate", str(p)), str(p))

    def test_binary_utf8_with_nul(self, tmp_path):
        p = tmp_path / "nul.yaml"
        p.write_bytes(b"name: x\x00\x00\n")
        assert_one_line_exit_2(run_cli("validate", str(p)), "binary")

    def test_100_mb_file_is_not_read(self, tmp_path):
        p = tmp_path / "huge.yaml"
        with open(p, "wb") as f:
            f.truncate(100 * 2**20)  # sparse: costs no disk
        t0 = time.perf_counter()
        assert_one_line_exit_2(run_cli("validate", str(p)), "too large")
        assert time.perf_counter() - t0 < 2
        assert os.path.getsize(p) > MAX_BYTES

    def test_unreadable(self, tmp_path):
        if os.geteuid() == 0:
            pytest.skip("root reads everything")
        p = tmp_path / "secret.yaml"
        p.write_text("a: 1\n")
        p.chmod(0)
        assert_one_line_exit_2(run_cli("validate", str(p)), "permission denied")

    def test_one_bad_file_among_good_ones(self, tmp_path):
        r = run_cli("validate", str(ROOT / "specs" / "quickstart.yaml"), str(tmp_path / "nope.yaml"))
        assert r.exit_code == 2


def test_an_integer_past_pythons_digit_limit_is_a_value_not_a_crash():
    """int() refuses more than 4300 digits (CPython's limit): the scalar stays text for the spec's
    types to refuse at its position."""
    from distillc.compiler.check import check_loaded

    loaded = load_text("train: {steps: " + "9" * 5000 + "}\n", "spec.yaml")
    assert loaded.data == {"train": {"steps": "9" * 5000}}
    steps = [d for d in check_loaded(loaded).diagnostics if d.path == ("train", "steps")]
    assert [(d.code, d.span.line, d.span.column) for d in steps] == [("DC011", 1, 16)]
