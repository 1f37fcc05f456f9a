"""Ablation axes: dotted key paths with their values, from the spec's `ablation:` block and from
`--axis KEY=V1,V2` on the command line, each value checked against the spec language's type.

Every problem is a Diagnostic with a position: in the spec file for the block, and in a small
source named `--axis` (line n = the n-th --axis option) for the command line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional, Sequence

import yaml
from pydantic import ValidationError

from distillc.compiler.ablation import codes  # noqa: F401  (declares DC170-DC176)
from distillc.compiler.ablation.patch import Path, adapters, field_types
from distillc.compiler.diagnostics import Diagnostic, Span
from distillc.compiler.loader import Loaded, SourceMap
from distillc.compiler.parse import did_you_mean, error_loc
from distillc.compiler.registry import make

CLI_FILE = "--axis"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")  # 1e-6: a float in YAML 1.2, a string in 1.1


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
    return SourceMap(file=CLI_FILE, text="\n".join(args))


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


def _scalar(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def cli_axes(args: Sequence[str]) -> tuple[list[Axis], list[Diagnostic]]:
    """Parse `--axis KEY=V1,V2` options (line n of the `--axis` source is the n-th option)."""
    axes: list[Axis] = []
    diags: list[Diagnostic] = []
    for line, arg in enumerate(args, 1):
        where = Span(line, 1, line, len(arg) + 1)
        if "=" not in arg:
            diags.append(make("DC172", f"--axis '{arg}' has no '=': expected KEY=V1,V2,...", span=where, file=CLI_FILE))
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
                diags.append(make("DC172", f"--axis {key.strip()}: empty value", path=(), span=span, file=CLI_FILE))
                continue
            try:
                values.append(_scalar(piece))
            except yaml.YAMLError as exc:
                problem = getattr(exc, "problem", None) or "invalid YAML"
                diags.append(make("DC172", f"--axis {key.strip()}: {piece!r} is not a YAML value ({problem})", span=span, file=CLI_FILE))
                continue
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
            diags.append(make("DC172", f"--axis {a.key} is given twice; list all its values in one option", span=a.key_span, file=a.file))
            continue
        given[a.key] = a
    in_spec = {a.key for a in spec}
    out = [given.get(a.key, a) for a in spec] + [a for a in given.values() if a.key not in in_spec]
    return out, diags


def check_axis(axis: Axis) -> tuple[Optional[Axis], list[Diagnostic]]:
    """Check the key path and every value; the axis with repeated values removed, or None."""
    diags: list[Diagnostic] = []
    path = axis.path
    apath = ("ablation", "axes", axis.key) if axis.file != CLI_FILE else ()

    def err(code: str, msg: str, span: Span, hint: Optional[str] = None, p=apath) -> None:
        diags.append(make(code, msg, path=p, span=span, file=axis.file, hint=hint))

    if not _KEY.match(axis.key):
        err("DC172", f"'{axis.key}' is not a dotted key path (like loss.alpha.end)", axis.key_span)
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

