"""Ablation axes: dotted key paths with their values, from the spec's `ablation:` block and from
`--axis KEY=V1,V2` on the command line, each value checked against the spec language's type.

Every problem is a Diagnostic with a position: in the spec file for the block, and in a small
source named `--axis` (line n = the n-th --axis option) for the command line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional, Sequence

from pydantic import ValidationError

from distillc.compiler.ablation import codes  # noqa: F401  (declares DC170-DC176)
from distillc.compiler.ablation.patch import Path, adapters, field_types
from distillc.compiler.diagnostics import Diagnostic, Span, one_line
from distillc.compiler.loader import Loaded, SourceMap, load_text
from distillc.compiler.parse import did_you_mean, error_loc
from distillc.compiler.registry import make

CLI_FILE = "--axis"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Axis:
    key: str  # dotted key path
    values: tuple[Any, ...]
    file: str = ""
    key_span: Span = Span(1, 1)
    value_spans: tuple[Span, ...] = ()

    @cached_property
    def path(self) -> Path:
        return tuple(self.key.split("."))

    @cached_property
    def section(self) -> str:
        return self.path[0]


def value_id(v: Any) -> str:
    """Equality for axis values: 1 and 1.0 are one value, True and 1 are not."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(float(v))
    return json.dumps(v, sort_keys=True, default=str)


# ---------------------------------------------------------------- reading


def spec_axes(loaded: Loaded) -> list[Axis]:
    """The axes of the spec's `ablation.axes` block, in file order, with their positions."""
    data = loaded.data if isinstance(loaded.data, dict) else {}
    block = (data.get("ablation") or {}).get("axes") if isinstance(data.get("ablation"), dict) else None
    if not isinstance(block, dict):
        return []
    src = loaded.source
    out = []
    for key, values in block.items():
        base = ("ablation", "axes", key)
        values = values if isinstance(values, list) else [values]
        spans = tuple(src.span((*base, i)) for i in range(len(values)))
        out.append(Axis(str(key), tuple(values), src.file, src.key_span(base), spans))
    return out


def cli_source(args: Sequence[str]) -> SourceMap:
    """One line per --axis option. A control character (a newline in a value) is shown as U+FFFD,
    one character for one, so it neither splits a line nor moves a column the spans point at."""
    return SourceMap(file=CLI_FILE, text="\n".join("".join(c if c.isprintable() else "\ufffd" for c in a) for a in args))


def _split(text: str) -> list[tuple[int, str]]:
    """Split on commas outside brackets and quotes: (offset, piece) pairs."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append((start, text[start:i]))
            start = i + 1
    out.append((start, text[start:]))
    return out


def _value(text: str) -> tuple[Any, str]:
    """An --axis value read as the spec reader reads it (YAML 1.2, safe tags, bounded): (value,
    '') or (None, what is wrong)."""
    loaded = load_text(text, CLI_FILE)
    problem = next((d.message for d in loaded.diagnostics if d.is_error), "")
    return (None, problem) if problem else (loaded.data, "")


def cli_axes(args: Sequence[str]) -> tuple[list[Axis], list[Diagnostic]]:
    """Parse `--axis KEY=V1,V2` options (line n of the `--axis` source is the n-th option)."""
    axes: list[Axis] = []
    diags: list[Diagnostic] = []
    for line, arg in enumerate(args, 1):
        where = Span(line, 1, line, len(arg) + 1)
        if "=" not in arg:
            diags.append(make("DC172", f"--axis {arg!r} has no '=': expected KEY=V1,V2,...", span=where, file=CLI_FILE))
            continue
        key, _, rest = arg.partition("=")
        lead = len(key) - len(key.lstrip())
        key_span = Span(line, 1 + lead, line, len(key.rstrip()) + 1)
        values, spans = [], []
        offset = len(key) + 1
        for start, piece in _split(rest):
            col = offset + start + 1
            span = Span(line, col, line, col + len(piece))
            if not piece.strip():
                diags.append(make("DC172", f"--axis {one_line(key.strip())}: empty value", path=(), span=span, file=CLI_FILE))
                continue
            value, problem = _value(piece)
            if problem:
                msg = f"--axis {one_line(key.strip())}: {piece!r} is not a YAML value ({problem})"
                diags.append(make("DC172", msg, span=span, file=CLI_FILE))
                continue
            values.append(value)
            spans.append(span)
        if values:
            axes.append(Axis(key.strip(), tuple(values), CLI_FILE, key_span, tuple(spans)))
    return axes, diags


# ---------------------------------------------------------------- checking


def merge(spec: list[Axis], cli: list[Axis]) -> tuple[list[Axis], list[Diagnostic]]:
    """Spec axes then command-line axes; a command-line axis replaces the spec's axis of the same key."""
    diags: list[Diagnostic] = []
    given: dict[str, Axis] = {}
    for a in cli:
        if a.key in given:
            msg = f"--axis {one_line(a.key)} is given twice; list all its values in one option"
            diags.append(make("DC172", msg, span=a.key_span, file=a.file))
            continue
        given[a.key] = a
    in_spec = {a.key for a in spec}
    out = [given.get(a.key, a) for a in spec] + [a for a in given.values() if a.key not in in_spec]
    return out, diags


def spec_axis_diagnostics(loaded: Loaded) -> list[Diagnostic]:
    """What `distillc ablate` would say about the spec's own `ablation.axes` (key paths, value
    types, finiteness, repeats), for `distillc validate`: a spec that validates clean ablates."""
    axes, diags = merge(spec_axes(loaded), [])
    for axis in axes:
        diags += check_axis(axis)[1]
    return diags


def check_axis(axis: Axis) -> tuple[Optional[Axis], list[Diagnostic]]:
    """Check the key path and every value; the axis with repeated values removed, or None."""
    diags: list[Diagnostic] = []
    path = axis.path
    apath = ("ablation", "axes", axis.key) if axis.file != CLI_FILE else ()

    def err(code: str, msg: str, span: Span, hint: Optional[str] = None, p=apath) -> None:
        diags.append(make(code, msg, path=p, span=span, file=axis.file, hint=hint))

    if not _KEY.fullmatch(axis.key):  # fullmatch: `$` alone would let a trailing newline through
        err("DC172", f"{axis.key!r} is not a dotted key path (like loss.alpha.end)", axis.key_span)
        return None, diags
    if path[0] in ("ablation", "name"):
        what = "the ablation block cannot ablate itself" if path[0] == "ablation" else "every cell gets its own name"
        err("DC172", f"'{axis.key}' cannot be an axis: {what}", axis.key_span)
        return None, diags
    if not axis.values:
        err("DC172", f"axis '{axis.key}' has no values", axis.key_span)
        return None, diags
    types, known = field_types(path)
    if not types:
        depth = _known_depth(path)
        bad = path[depth]
        hint = did_you_mean(bad, known) or (f"keys at {'.'.join(path[:depth]) or 'the top level'}: {', '.join(known)}" if known else
                                            f"'{'.'.join(path[:depth])}' is a value, not a section")
        err("DC170", f"unknown key path '{axis.key}': no key '{bad}' at {'.'.join(path[:depth]) or 'the top level'}", axis.key_span, hint)
        return None, diags
    kept: list[Any] = []
    spans: list[Span] = []
    ids: set[str] = set()
    for i, value in enumerate(axis.values):
        span = axis.value_spans[i] if i < len(axis.values) and i < len(axis.value_spans) else axis.key_span
        vpath = (*apath, i) if apath else ()
        problem = not_finite(value, path)
        if problem:
            err("DC171", f"{axis.key}: {problem}", span, FINITE_HINT, p=vpath)
            continue
        problem = _type_error(path, value)
        if problem:
            shown = value if not isinstance(value, (dict, list)) else json.dumps(value)
            err("DC171", f"{axis.key}: {problem} (got {shown!r})", span, p=vpath)
            continue
        vid = value_id(value)
        if vid in ids:
            err("DC174", f"{axis.key}: value {value!r} is listed twice", span, p=vpath)
            continue
        ids.add(vid)
        kept.append(value)
        spans.append(span)
    if any(d.is_error for d in diags):
        return None, diags
    return Axis(axis.key, tuple(kept), axis.file, axis.key_span, tuple(spans)), diags


FINITE_HINT = "An axis value must be a finite number: .inf and .nan (or 1e999, which reads as inf) cannot name or order a cell."


def not_finite(value: Any, path: Path = ()) -> str:
    """'' when every number in `value` is finite, as written and as the key path's type reads it
    (pydantic reads the string '1e999' as a float), else what is wrong. The spec language's floats
    accept .inf and .nan, but a cell is named after its values and compared by them."""
    bad = _bad_number(value)
    if bad is None and path:
        bad = _bad_number(_read_as(path, value))
        if bad is not None:
            return f"{value!r} reads as {_number_text(bad)}, which is not a finite number"
    return "" if bad is None else f"{_number_text(bad)} is not a finite number"


def _bad_number(value: Any) -> Any:
    """The first number in `value` with no finite float: inf, nan, or an int past 1.8e308."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((b for b in map(_bad_number, items) if b is not None), None)


def _number_text(n: Any) -> str:
    return repr(n) if isinstance(n, float) else f"an integer of {n.bit_length()} bits"


def _read_as(path: Path, value: Any) -> Any:
    """`value` as the first type the key path allows reads it (plain data), or None."""
    for adapter in adapters(path):
        try:
            return adapter.dump_python(adapter.validate_python(value))
        except ValidationError:
            continue
    return None


def _known_depth(path: Path) -> int:
    for n in range(len(path), 0, -1):
        if field_types(path[:n])[0]:
            return n
    return 0


def _type_error(path: Path, value: Any) -> str:
    """'' when some type the key path allows accepts `value`, else pydantic's first complaint."""
    first = ""
    for adapter in adapters(path):
        try:
            adapter.validate_python(value)
            return ""
        except ValidationError as exc:
            if not first:
                e = exc.errors()[0]
                loc = ".".join(str(p) for p in error_loc(e))
                first = (f"{loc}: " if loc else "") + e["msg"]
    return first or "not accepted"

