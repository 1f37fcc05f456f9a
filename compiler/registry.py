"""The code registry: every diagnostic code, its severity, title, default hint and explanation.

Severity belongs to the code (mypy's errorcodes.py), so `--select` / `--ignore` work on codes and a
rule cannot report the same problem at two severities. Rules (rules/*.py) register themselves
with `@rule`; structural codes (YAML, schema) are declared here with `declare`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator, Literal

from distillc.compiler.diagnostics import Diagnostic, KeyPath, Severity, Span

Target = Literal["distillc", "maxtext"]
TARGETS: tuple[Target, ...] = ("distillc", "maxtext")  # the first is the default of every command

# What a rule reads. spec: the parsed spec and the catalogs (check.Context; `validate` runs these).
# cluster: one clusters-file entry (clusters.ClusterContext). plan: the resolved plan, the spec it
# came from and the cluster it runs on (plan_check.PlanContext; `plan` and `launch`). A later stage
# reads what the earlier ones made and never changes it.
Stage = Literal["spec", "cluster", "plan"]


@dataclass(frozen=True)
class Finding:
    """What a rule yields: the registry turns it into a Diagnostic with the code's severity."""

    message: str
    path: KeyPath
    hint: str | None = None
    notes: tuple[str, ...] = ()
    key: bool = False  # point at the key rather than its value
    block: bool = False  # SourceMap.point: a block mapping's key rather than its first entry


@dataclass(frozen=True)
class Rule:
    """One rule function of a code: the stage whose context it reads, what it needs, its targets."""

    code: str
    func: Callable[..., Iterable[Finding]]
    stage: Stage
    needs: tuple[str, ...]
    targets: tuple[Target, ...]
    raw_doc: str

    @cached_property
    def examples(self) -> dict[str, str]:
        """{'fails': yaml, 'passes': yaml, and for cluster and plan rules 'cluster' and 'at'}."""
        return _examples(inspect.cleandoc(self.raw_doc))


@dataclass(frozen=True)
class Code:
    """A diagnostic code: its severity, title, default fix and explanation; for a rule, its function.

    A code has one rule function, or one per closely related group of checks made at different
    stages (DC402: a clusters-file value, and the spec's image where the cluster names none):
    `func`, `needs`, `targets` and `stage` are the first's, `also` holds the others."""

    code: str
    severity: Severity
    title: str
    hint: str
    raw_doc: str  # as written (a rule's docstring); `doc` is the cleaned text, made on first use
    func: Callable[..., Iterable[Finding]] | None = None
    needs: tuple[str, ...] = ()
    targets: tuple[Target, ...] = TARGETS  # the targets whose limit the rule states
    stage: Stage = "spec"
    also: tuple[Rule, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        if self.func is None:
            return ()
        own = self.raw_doc if not self.also else (self.func.__doc__ or "")
        return (Rule(self.code, self.func, self.stage, self.needs, self.targets, own), *self.also)

    def at(self, stage: Stage) -> tuple[Rule, ...]:
        """The code's rules that read `stage`'s context."""
        return tuple(r for r in self.rules if r.stage == stage)

    @property
    def target_note(self) -> str:
        """'' for a rule of every target, else the sentence the docs and `explain` show."""
        if set(self.targets) == set(TARGETS):
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


EXAMPLE_BLOCK = re.compile(r"^(Fails|Passes|Cluster)::\n\n((?:(?:    .*)?\n)+)", re.M)
AT_LINE = re.compile(r"^At:: (.+)\n?", re.M)


def _examples(doc: str) -> dict[str, str]:
    """Pull the `Fails::` / `Passes::` YAML blocks out of a rule's docstring; a cluster or plan
    rule's also has `Cluster::` (an entry of the clusters file its examples run on) and `At::`
    (where the failing example is reported: text in that file, `a > b` for b after a)."""
    out: dict[str, str] = {}
    for label, block in EXAMPLE_BLOCK.findall(doc + "\n"):
        out[label.lower()] = textwrap.dedent(block).strip("\n") + "\n"
    at = AT_LINE.search(doc)
    if at:
        out["at"] = at.group(1).strip()
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
    stage: Stage = "spec",
):
    """Register a rule: a function (ctx) -> Iterable[Finding] over its `stage`'s context. It runs
    only when every attribute named in `needs` is not None on the context (one mistake gives one
    error), and only for the `targets` whose limit it states (a MaxText limit is not our
    runtime's). Its docstring examples are checked for its first target.

    A second rule for a code already registered adds a group of checks at another place (same
    severity and title); its docstring is appended to the code's."""

    def wrap(func: Callable[..., Iterable[Finding]]) -> Callable[..., Iterable[Finding]]:
        doc = func.__doc__ or ""
        old = CODES.get(code)
        if old is None:
            CODES[code] = Code(code, severity, title, hint, doc, func, needs, targets, stage)
            return func
        if old.func is None or (old.severity, old.title) != (severity, title) or hint:
            raise ValueError(f"duplicate diagnostic code {code}")
        if any(r.func.__qualname__ == func.__qualname__ and r.func.__module__ == func.__module__ for r in old.rules):
            return func  # its module was imported again
        more = Rule(code, func, stage, needs, targets, doc)
        joined = inspect.cleandoc(old.raw_doc) + "\n\n" + inspect.cleandoc(doc)
        CODES[code] = dataclasses.replace(old, raw_doc=joined, also=(*old.also, more))
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


def load_rules(stage: Stage | None = None) -> None:
    """Import the rules modules of `stage` (every stage when None) so their @rule decorators run.

    `validate` loads the spec rules only: the cluster and plan rules import the resolver and the
    MaxText mappings, which a spec check does not need."""
    import distillc.compiler.ablation.codes  # noqa: F401  (DC17x: ablation axes)
    import distillc.compiler.rules  # noqa: F401  (the package imports its spec-rule modules)

    if stage in (None, "cluster", "plan"):  # before launch: its DC402 extends the cluster rule's registration
        import distillc.compiler.rules.cluster  # noqa: F401  (DC402, DC403: a clusters-file entry)
    if stage in (None, "plan"):
        import distillc.compiler.rules.launch  # noqa: F401  (DC400-DC406: the plan on its cluster)
        import distillc.compiler.rules.maxtext  # noqa: F401  (DC420-DC432: the MaxText target)


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
    """The --select/--ignore entries (codes or prefixes) that match no registered code (the spec
    rules first: the other stages are loaded only for a selector they alone can match)."""
    def unknown() -> list[str]:
        return [s for s in selectors if not any(c.startswith(s.upper()) for c in CODES)]

    load_rules("spec")
    if unknown():
        load_rules()
    return unknown()


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
