"""Diagnostics and the code registry: formats, JSON shape, severities, explanations, internal errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from distillc.compiler import diagnostics as D
from distillc.compiler.diagnostics import Diagnostic, Severity, Span
from distillc.compiler.registry import CODES, Code, explain, iter_codes, load_rules, make
from tests.conftest import check_text, codes, spec_text

load_rules()

DIAG = Diagnostic(
    code="DC130",
    severity=Severity.ERROR,
    message="alpha 1.2 is outside [0, 1]",
    hint="keep it in [0, 1]",
    path=("loss", "alpha", "start"),
    file="s.yaml",
    span=Span(4, 12, 4, 15),
    notes=("a note",),
)


class TestFormats:
    def test_concise(self):
        assert D.format_concise(DIAG) == "s.yaml:4:12: error: DC130 alpha 1.2 is outside [0, 1] [loss.alpha.start]"

    def test_rich_has_caret_under_the_span(self):
        src = "    start: 1.2"  # the value 1.2 spans columns 12-14
        out = D.format_rich(DIAG, src, color=False).splitlines()
        assert out[0] == "error[DC130]: alpha 1.2 is outside [0, 1]"
        assert out[1].endswith("--> s.yaml:4:12  (loss.alpha.start)")
        caret = out[4]
        assert caret.index("^") - caret.index("|") - 2 == 11 and caret.count("^") == 3
        assert any(line.strip().startswith("= help: keep it") for line in out)
        assert any("note: a note" in line for line in out)
        assert "\x1b[" not in "\n".join(out)

    def test_rich_color(self):
        assert "\x1b[" in D.format_rich(DIAG, "x", color=True)

    def test_github_escapes(self):
        d = make("DC130", "50% bad\nsecond line", path=("loss",), span=Span(2, 3), file="a.yaml")
        out = D.format_github(d)
        assert out.startswith("::error file=a.yaml,line=2,col=3,title=DC130::")
        assert "50%25 bad%0Asecond line" in out and "\n" not in out

    def test_json_shape(self):
        (obj,) = json.loads(D.to_json([DIAG]))
        assert {"code", "severity", "message", "hint", "path", "line", "column"} <= set(obj)
        assert obj["path"] == "loss.alpha.start" and (obj["line"], obj["column"]) == (4, 12)
        assert obj["severity"] == "error"

    def test_dotted_with_indices(self):
        assert D.dotted(("loss", "layers", "pairs", 1, 0)) == "loss.layers.pairs[1][0]"

    def test_summary(self):
        w = make("DC132", "hot", path=("loss",))
        assert D.summary([]) == "ok: no problems found"
        assert D.summary([DIAG, w, w]) == "1 error, 2 warnings"


class TestRegistry:
    def test_severity_belongs_to_the_code(self):
        assert make("DC132", "x").severity is Severity.WARNING
        assert make("DC130", "x").severity is Severity.ERROR

    def test_default_hint(self):
        assert make("DC130", "x").hint == CODES["DC130"].hint
        assert make("DC130", "x", hint="custom").hint == "custom"

    def test_codes_are_unique_and_ranged(self):
        rules = [c for c in iter_codes() if c.func is not None]
        assert len(rules) >= 45
        for c in rules:
            ranged = r"DC1[0-68]\d" if c.stage == "spec" else r"DC4[0-3]\d"  # spec rules (DC17x: ablation); cluster and plan rules
            assert re.fullmatch(ranged, c.code), c.code
            assert c.title and c.hint and c.doc, c.code
            assert "Fails::" in c.doc and "Passes::" in c.doc

    def test_plan_rules_then_cluster_rules_load_in_one_process(self):
        """`distillc plan` then `plan --cluster` in one process (CliRunner tests): DC402's cluster
        registration (with its hint) must come before the plan rule that extends it."""
        code = ("from distillc.compiler.registry import load_rules; load_rules('plan'); load_rules('cluster'); "
                "print('ok')")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.stdout.strip() == "ok", p.stderr[-2000:]

    def test_duplicate_code_is_rejected(self):
        from distillc.compiler.registry import declare

        with pytest.raises(ValueError):
            declare("DC130", Severity.ERROR, "again")

    def test_explain(self):
        text = explain("dc120")
        assert text.startswith("DC120 (error): beta starts at 0")
        assert "Fails::" in text and "Fix:" in text
        assert explain("DC999") is None


class TestInternalError:
    def test_a_crashing_rule_becomes_dc900_and_the_others_still_run(self, monkeypatch):
        def boom(ctx):
            raise ZeroDivisionError("division by zero")
            yield  # pragma: no cover

        monkeypatch.setitem(CODES, "DC199", Code("DC199", Severity.ERROR, "boom", "", "", boom, ("loss",)))
        checked = check_text(spec_text("loss: {alpha: 3}"))
        assert "DC900" in codes(checked) and "DC130" in codes(checked)
        d = next(d for d in checked.diagnostics if d.code == "DC900")
        assert "DC199" in d.message and "ZeroDivisionError" in d.message
        assert not checked.ok


class TestSelectIgnore:
    def test_select_prefix(self):
        checked = check_text(spec_text("loss: {alpha: 3, temperature: 20}"), select=("DC13",))
        assert sorted(codes(checked)) == ["DC130", "DC132"]
        assert codes(check_text(spec_text("loss: {alpha: 3, temperature: 20}"), select=("DC132",))) == ["DC132"]

    def test_ignore(self):
        assert codes(check_text(spec_text("loss: {alpha: 3, temperature: 20}"), ignore=("DC130",))) == ["DC132"]

    def test_sorted_by_position(self):
        checked = check_text(spec_text("name: Bad_Name\nloss: {alpha: 3}"))
        lines = [d.span.line for d in checked.diagnostics]
        assert lines == sorted(lines)


class TestLongLines:
    """A flow-style table can be one 89 KB line: only a window around the caret is shown."""

    LINE = "{" + ", ".join(f"k{i}: {i}" for i in range(12000)) + "}"

    def render(self, col: int, end: int) -> list[str]:
        d = Diagnostic("DC010", Severity.ERROR, "unknown key", span=Span(1, col, 1, end), file="f.yaml")
        return D.format_rich(d, self.LINE).splitlines()

    def test_middle_is_windowed_with_ellipses(self):
        assert len(self.LINE) > 80_000
        col = self.LINE.index("k9000:") + 1
        lines = self.render(col, col + 5)
        src, caret = lines[3], lines[4]
        assert len(src) < 130 and src.startswith("1 | ...") and src.endswith("...")
        i = caret.index("^")
        assert caret[i:] == "^^^^^" and src[i : i + 5] == "k9000"

    def test_start_has_no_leading_ellipsis(self):
        src, caret = self.render(2, 4)[3:5]
        assert src.startswith("1 | {k0: 0") and src.endswith("...") and len(src) < 130
        assert src[caret.index("^") : caret.index("^") + 2] == "k0"

    def test_end_has_no_trailing_ellipsis(self):
        col = len(self.LINE)
        src, caret = self.render(col, col + 1)[3:5]
        assert src.startswith("1 | ...") and src.endswith("}") and src[caret.index("^")] == "}"

    def test_caret_width_is_clipped_to_the_window(self):
        col = self.LINE.index("k9000:") + 1
        src, caret = self.render(col, col + 50_000)[3:5]
        assert len(caret) <= len(src)

    def test_short_lines_are_unchanged(self):
        line = "x" * 105
        assert D.window(line, 3, 2) == (line, 3, 2)


def test_hostile_values_stay_inside_their_diagnostic():
    """A file name or a value with newlines, ':' or ',' cannot forge another line or annotation."""
    from distillc.compiler.diagnostics import Diagnostic, Severity, format_concise, format_github

    d = Diagnostic(code="DC011", severity=Severity.ERROR, message="bad\nx.yaml:1:1: error: DC000 fake",
                   file="g,line=99::x.yaml", path=("a",))
    gh = format_github(d)
    assert "\n" not in gh and gh.startswith("::error file=g%2Cline=99%3A%3Ax.yaml,line=1,col=1,title=DC011::bad%0A")
    concise = format_concise(d)
    assert "\n" not in concise and concise.endswith("DC011 bad\\nx.yaml:1:1: error: DC000 fake [a]")


def test_one_line_escapes_control_characters_unambiguously():
    from distillc.compiler.diagnostics import one_line

    assert one_line("gs://b/x") == "gs://b/x" and one_line("C:\\runs") == "C:\\runs"  # nothing to escape
    assert one_line("a\nb") == "a\\nb" and "\n" not in one_line("a\r\n\x1b[2J\u2028b")
    assert one_line("a\\nb\n") != one_line("a\nb\n")  # the user's backslash-n is not a newline shown
