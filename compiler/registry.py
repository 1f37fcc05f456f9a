"""The code registry: every diagnostic code, its severity, title, default hint and explanation.

Severity belongs to the code (mypy's errorcodes.py), so `--select` / `--ignore` work on codes and a
rule cannot report the same problem at two severities. Rules (rules/*.py) register themselves
with `@rule`; structural codes (YAML, schema) are declared here with `declare`.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator, Literal

from distillc.compiler.diagnostics import Diagnostic, KeyPath, Severity, Span

Target = Literal["distillc", "maxtext"]
TARGETS: tuple[Target, ...] = ("distillc", "maxtext")  # the first is the default of every command


@dataclass(frozen=True)
class Finding:
    """What a rule yields: the registry turns it into a Diagnostic with the code's severity."""

    message: str
    path: KeyPath
    hint: str | None = None
    notes: tuple[str, ...] = ()
    key: bool = False  # point at the key rather than its value


@dataclass(frozen=True)
class Code:
    """A diagnostic code: its severity, title, default fix and explanation; for a rule, its function."""

    code: str
    severity: Severity
    title: str
    hint: str
    raw_doc: str  # as written (a rule's docstring); `doc` is the cleaned text, made on first use
    func: Callable[..., Iterable[Finding]] | None = None
    needs: tuple[str, ...] = ()
    targets: tuple[Target, ...] = TARGETS  # the targets whose limit the rule states

    @property
    def target_note(self) -> str:
        """'' for a rule of every target, else the sentence the docs and `explain` show."""
        if self.targets == TARGETS:
            return ""
        return "Applies to " + " and ".join(f"`--target {t}`" for t in self.targets) + " only."

    @cached_property
    def doc(self) -> str:
        """The long explanation (`distillc explain`): only explain and the docs need it."""
        return inspect.cleandoc(self.raw_doc)

    @cached_property
    def examples(self) -> dict[str, str]:
        """{'fails': yaml, 'passes': yaml} from the docstring (parsed on first use, not at start-up)."""
        return _examples(self.doc)


CODES: dict[str, Code] = {}


def _examples(doc: str) -> dict[str, str]:
    """Pull the `Fails::` / `Passes::` YAML blocks out of a rule's docstring."""
    out: dict[str, str] = {}
    for label, block in re.findall(r"^(Fails|Passes)::\n\n((?:(?:    .*)?\n)+)", doc + "\n", re.M):
        out[label.lower()] = textwrap.dedent(block).strip("\n") + "\n"
    return out


def declare(code: str, severity: Severity, title: str, hint: str = "", doc: str = "") -> None:
    if code in CODES:
        raise ValueError(f"duplicate diagnostic code {code}")
    CODES[code] = Code(code, severity, title, hint, doc)


def rule(
    code: str,
    severity: Severity,
    title: str,
    *,
    needs: tuple[str, ...],
    hint: str = "",
    targets: tuple[Target, ...] = TARGETS,
):
    """Register a rule: a function (ctx) -> Iterable[Finding]. It runs only when every attribute
    named in `needs` parsed (is not None) on the context, so one mistake gives one error, and only
    for the `targets` whose limit it states (a MaxText limit is not our runtime's). Its docstring
    examples are checked for its first target."""

    def wrap(func: Callable[..., Iterable[Finding]]) -> Callable[..., Iterable[Finding]]:
        if code in CODES:
            raise ValueError(f"duplicate diagnostic code {code}")
        CODES[code] = Code(code, severity, title, hint, func.__doc__ or "", func, needs, targets)
        return func

    return wrap


def make(
    code: str,
    message: str,
    *,
    path: KeyPath = (),
    span: Span | None = None,
    file: str = "",
    hint: str | None = None,
    notes: tuple[str, ...] = (),
) -> Diagnostic:
    info = CODES[code]
    return Diagnostic(
        code=code,
        severity=info.severity,
        message=message,
        hint=info.hint if hint is None else hint,
        path=tuple(path),
        file=file,
        span=span or Span(1, 1),
        notes=notes,
    )


def load_rules() -> None:
    """Import every rules module once so its @rule decorators run."""
    import distillc.compiler.ablation.codes  # noqa: F401  (DC17x: ablation axes)
    import distillc.compiler.launch_codes  # noqa: F401  (DC4xx: launch, clusters, MaxText target)
    import distillc.compiler.rules  # noqa: F401  (the package imports its modules)


def explain(code: str) -> str | None:
    load_rules()
    info = CODES.get(code.upper())
    if info is None:
        return None
    head = f"{info.code} ({info.severity.value}): {info.title}"
    body = info.doc or "(no further explanation)"
    if info.target_note:
        body = f"{info.target_note}\n\n{body}"
    hint = f"\n\nFix: {info.hint}" if info.hint else ""
    return f"{head}\n\n{body}{hint}\n"


def unknown_selectors(selectors: Iterable[str]) -> list[str]:
    """The --select/--ignore entries (codes or prefixes) that match no registered code."""
    load_rules()
    return [s for s in selectors if not any(c.startswith(s.upper()) for c in CODES)]


def iter_codes() -> Iterator[Code]:
    load_rules()
    yield from sorted(CODES.values(), key=lambda c: c.code)


# ---------------------------------------------------------------- structural codes (stage: load/parse)

E, W = Severity.ERROR, Severity.WARNING

declare("DC000", E, "YAML syntax error", "Fix the YAML syntax at the position shown (indentation, quotes, colons).")
declare("DC001", E, "unsupported YAML construct", "Use plain `key: value` mappings; no complex keys or merge keys.")
declare("DC002", E, "duplicate key", "Remove one of the two keys; YAML would silently keep only the last.")
declare("DC003", E, "empty spec", "Start from one of the examples in specs/.")
declare(
    "DC004",
    E,
    "document too large",
    "A spec is a few KB. Remove YAML aliases that expand recursively, or split the table.",
    doc="Loading stops after 20,000 nodes (counted after alias expansion) or 64 levels of nesting, "
    "so a 'billion laughs' alias bomb costs milliseconds, not memory.",
)
declare("DC010", E, "unknown key", "Remove the key or fix its spelling; `distillc schema` lists every key.")
declare("DC011", E, "invalid value", "Give a value of the type shown; `distillc schema` describes every field.")
declare("DC012", E, "missing required key", "Add the key; see the examples in specs/.")
declare("DC013", E, "unknown model", "Use a model name from the catalog (`distillc models`) or an inline architecture.")
declare("DC014", E, "unknown accelerator", "Use an xpk device name from the catalog (`distillc accelerators`).")
declare("DC015", E, "unsupported spec version", "Set `version: 1`.")
declare(
    "DC900",
    E,
    "internal error in a rule",
    "This is a bug in distillc, not in the spec: please report it with the spec attached.",
    doc="A rule raised an exception. The other rules still ran and their diagnostics are shown; "
    "the spec is treated as invalid because one check could not be made.",
)


def code_info(code: str) -> Any:
    return CODES[code]
