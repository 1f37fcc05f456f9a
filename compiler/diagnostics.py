"""Diagnostics: what every stage reports instead of raising (mypy's errors.py is the model).

A Diagnostic is frozen data: a stable code, a severity that belongs to the code (see
registry.py), a message, a fix hint, the dotted key path and the file span. Formatting lives
here too, so every command prints them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, NamedTuple, Sequence, Union

KeyPath = tuple[Union[str, int], ...]


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


class Span(NamedTuple):
    """A 1-based position in the source (start, and the end where known): a plain value."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


def dotted(path: Sequence[str | int]) -> str:
    """('loss', 'beta', 'start') -> 'loss.beta.start'; list indices as [i]."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class Diagnostic:
    """One finding at one place: a code with its severity, the message, the fix and the position."""

    code: str
    severity: Severity
    message: str
    hint: str = ""
    path: KeyPath = ()
    file: str = ""
    span: Span = Span(1, 1)
    notes: tuple[str, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape: {code, severity, message, hint, path, line, column} (+ file)."""
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "hint": self.hint,
            "path": dotted(self.path),
            "line": self.span.line,
            "column": self.span.column,
            "file": self.file,
        }


def sort_key(d: Diagnostic) -> tuple[Any, ...]:
    return (d.file, d.span.line, d.span.column, d.code)


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)


# ---------------------------------------------------------------- formatting

_COLORS = {Severity.ERROR: "\x1b[1;31m", Severity.WARNING: "\x1b[1;33m", Severity.NOTE: "\x1b[1;36m"}
_BOLD, _BLUE, _RESET = "\x1b[1m", "\x1b[1;34m", "\x1b[0m"


def one_line(s: str) -> str:
    """`s` with its control characters escaped (a newline as \\n): a value quoted from the spec
    cannot start a line of its own, so it cannot pass for a diagnostic, and in a generated file it
    cannot end a comment (render.comment_text). When anything is escaped, backslashes are too, as
    repr does, so an escape shown is never the user's own backslash text."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in s)


def format_concise(d: Diagnostic) -> str:
    """`file:line:col: severity: CODE message [path]` (one line, like gcc and mypy)."""
    where = f"{d.file}:{d.span.line}:{d.span.column}" if d.file else f"{d.span.line}:{d.span.column}"
    path = f" [{dotted(d.path)}]" if d.path else ""
    return one_line(f"{where}: {d.severity.value}: {d.code} {d.message}{path}")


WINDOW = 100  # characters of a long source line shown around the caret
_ELLIPSIS = "..."


def window(line: str, col: int, width: int, size: int = WINDOW) -> tuple[str, int, int]:
    """A long source line cut to `size` characters around (1-based) `col`, with ellipses where
    it was cut: (text, the caret's column in it, the caret's width). A flow-style table can put
    a whole spec (tens of KB) on one line."""
    if len(line) <= size + 2 * len(_ELLIPSIS):
        return line, col, width
    start = max(0, min(col - 1 - size // 3, len(line) - size))
    end = start + size
    head = _ELLIPSIS if start > 0 else ""
    tail = _ELLIPSIS if end < len(line) else ""
    width = max(1, min(width, end - (col - 1)))
    return f"{head}{line[start:end]}{tail}", col - start + len(head), width


def format_rich(d: Diagnostic, source_line: str = "", color: bool = False) -> str:
    """rustc-style: header, location arrow, the source line with a caret, then hint and notes."""
    c = (lambda s, k: f"{k}{s}{_RESET}") if color else (lambda s, k: s)
    head = c(f"{d.severity.value}[{d.code}]", _COLORS[d.severity]) + c(f": {d.message}", _BOLD if color else "")
    where = f"{d.file}:{d.span.line}:{d.span.column}" if d.file else f"line {d.span.line}:{d.span.column}"
    gutter = " " * len(str(d.span.line))
    lines = [head, f"{gutter}{c('-->', _BLUE)} {where}" + (f"  ({dotted(d.path)})" if d.path else "")]
    if source_line:
        col = max(d.span.column, 1)
        width = 1
        if d.span.end_line == d.span.line and d.span.end_column and d.span.end_column > col:
            width = d.span.end_column - col
        width = max(1, min(width, max(1, len(source_line) - col + 1)))
        shown, col, width = window(source_line, col, width)
        lines += [
            f"{gutter} {c('|', _BLUE)}",
            f"{c(str(d.span.line), _BLUE)} {c('|', _BLUE)} {shown}",
            f"{gutter} {c('|', _BLUE)} {' ' * (col - 1)}{c('^' * width, _COLORS[d.severity])}",
        ]
    if d.hint:
        lines.append(f"{gutter} {c('=', _BLUE)} {c('help', _BOLD if color else '')}: {d.hint}")
    for note in d.notes:
        lines.append(f"{gutter} {c('=', _BLUE)} note: {note}")
    return "\n".join(lines)


def format_github(d: Diagnostic) -> str:
    """A GitHub Actions workflow command, so findings show up as annotations on the PR."""
    kind = {"error": "error", "warning": "warning", "note": "notice"}[d.severity.value]

    def esc(s: str) -> str:
        return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def esc_property(s: str) -> str:  # GitHub's escaping of property values: ':' and ',' end them
        return esc(s).replace(":", "%3A").replace(",", "%2C")

    props = f"file={esc_property(d.file)},line={d.span.line},col={d.span.column},title={d.code}"
    text = d.message + (f" (help: {d.hint})" if d.hint else "")
    return f"::{kind} {props}::{esc(text)}"


def to_json(diags: Iterable[Diagnostic]) -> str:
    return json.dumps([d.to_json() for d in diags], indent=2, ensure_ascii=False)


def summary(diags: Sequence[Diagnostic]) -> str:
    errors = sum(d.is_error for d in diags)
    warnings = sum(d.severity is Severity.WARNING for d in diags)
    if not errors and not warnings:
        return "ok: no problems found"
    plural = lambda n, w: f"{n} {w}{'s' if n != 1 else ''}"  # noqa: E731
    return f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"
