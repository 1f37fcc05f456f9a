"""Run every registered rule over a parsed spec and collect Diagnostics (never raise, never stop early).

The Context binds the spec to the catalogs: catalog names become architectures, the accelerator
name becomes its Accelerator. A rule declares what it needs; it is skipped when any of that failed
to parse or bind, so one mistake yields one diagnostic, not a cascade.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Optional

from distillc.compiler.catalog import Accelerator, Catalog, load_catalog
from distillc.compiler.diagnostics import Diagnostic, KeyPath, sort_key
from distillc.compiler.loader import Loaded, SourceMap
from distillc.compiler.parse import PartialSpec, did_you_mean, parse
from distillc.compiler.registry import CODES, Stage, Target, load_rules, make
from distillc.compiler.remote import Remote
from distillc.runtime.arch import ModelArch


@dataclass(frozen=True)
class Context:
    """What every rule reads: the parsed spec, its source positions and the resolved catalog entries."""

    spec: PartialSpec
    source: SourceMap
    catalog: Catalog
    teacher_arch: Optional[ModelArch] = None  # as published (catalog or inline)
    student_arch: Optional[ModelArch] = None  # after student.pruned_layers are removed
    accelerator: Optional[Accelerator] = None
    cluster_note: str = ""  # set when a cluster entry replaced the spec's accelerator
    target: Target = "distillc"  # what the spec compiles for: rules state their target's limits
    remote: Optional[Remote] = None  # reads gs:// checkpoints (validate); None: remote paths are not read

    def get(self, name: str) -> Any:
        if name in ("teacher_arch", "student_arch", "accelerator"):
            return getattr(self, name)
        return getattr(self.spec, name)

    def source_for(self, path: KeyPath) -> SourceMap:
        """The file a finding at `path` points into (a spec rule reads one file)."""
        return self.source


def _bind_model(side: Any, role: str, catalog: Catalog, source: SourceMap, diags: list[Diagnostic]) -> Optional[ModelArch]:
    if side is None:
        return None
    if isinstance(side.model, str):
        arch = catalog.models.get(side.model)
        if arch is None:
            hint = did_you_mean(side.model, catalog.models) or "run `distillc models` for the catalog"
            path = (role, "model")
            diags.append(make("DC013", f"unknown model '{side.model}'", path=path, span=source.span(path), file=source.file, hint=hint))
            return None
    else:
        arch = ModelArch(**side.model.model_dump())
    return arch


def _pruned(arch: Optional[ModelArch], pruned: list[int]) -> Optional[ModelArch]:
    """The student's own depth: its catalog architecture minus the pruned layers."""
    if arch is None or not pruned:
        return arch
    if any(not 0 <= i < arch.num_layers for i in pruned):
        return None  # DC105 reports it; rules needing the student's depth are skipped
    depth = arch.num_layers - len(set(pruned))
    if depth <= 0:
        return None
    return arch.model_copy(update={"num_layers": depth, "params": None})


def bind(
    spec: PartialSpec, source: SourceMap, accelerator: Optional[str] = None, target: Target = "distillc",
    remote: Optional[Remote] = None,
) -> tuple[Context, list[Diagnostic]]:
    catalog = load_catalog()
    diags: list[Diagnostic] = []
    teacher = _bind_model(spec.teacher, "teacher", catalog, source, diags)
    student = _bind_model(spec.student, "student", catalog, source, diags)
    if spec.student is not None:
        student = _pruned(student, spec.student.pruned_layers)
    acc = None
    if spec.resources is not None:
        name = accelerator or spec.resources.accelerator
        acc = catalog.accelerators.get(name)
        if acc is None:
            path = ("resources", "accelerator")
            hint = did_you_mean(name, catalog.accelerators) or "run `distillc accelerators` for the catalog"
            diags.append(make("DC014", f"unknown accelerator '{name}'", path=path, span=source.span(path), file=source.file, hint=hint))
    ctx = Context(spec, source, catalog, teacher, student, acc, target=target, remote=remote)
    return ctx, diags


def run_rules(ctx: Context, select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Diagnostic]:
    return run_stage(ctx, "spec", select, ignore)


def run_stage(ctx: Any, stage: Stage, select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Diagnostic]:
    """Every registered rule of `stage` over `ctx` (its context: Context, clusters.ClusterContext
    or plan_check.PlanContext), less the codes --select/--ignore leave out."""
    load_rules(stage)
    select, ignore = tuple(select), tuple(ignore)
    codes = [code for code in sorted(CODES) if CODES[code].at(stage) and _wanted(code, select, ignore)]
    return list(run_codes(ctx, codes, stage=stage))


def run_codes(ctx: Any, codes: Iterable[str], view: Any = None, stage: Stage = "spec") -> Iterator[Diagnostic]:
    """The Diagnostics of the `stage` rules of `codes` (registered rule codes) over `ctx`, in that order.

    A rule is skipped when something it `needs` is None on the context, or when it states another
    target's limit than `ctx.target`; a rule that raises gives
    DC900 (a bug in one rule must not hide the others' diagnostics). `view` is what the rules
    read instead of `ctx` (the ablation passes a proxy recording what they read); spans and the
    file always come from `ctx.source_for(path)`."""
    for code in codes:
        for r in CODES[code].at(stage):
            if ctx.target not in r.targets or any(ctx.get(n) is None for n in r.needs):
                continue
            try:
                findings = list(r.func(ctx if view is None else view))
            except Exception as exc:
                msg = f"internal error in rule {code}: {type(exc).__name__}: {exc}"
                yield make("DC900", msg, file=ctx.source.file)
                continue
            for f in findings:
                source = ctx.source_for(f.path)
                span = source.key_span(f.path) if f.key else source.point(f.path) if f.block else source.span(f.path)
                yield make(code, f.message, path=f.path, span=span, file=source.file, hint=f.hint, notes=f.notes)


def always_reported(code: str) -> bool:
    """Load and structure problems (DC0xx: YAML syntax, empty, too large, unknown key, invalid
    value, missing key, unknown model/accelerator, version): --select/--ignore never hide them, so
    a file that cannot be parsed never passes."""
    return code.startswith("DC0")


def shown(diags: Iterable[Diagnostic], select: Iterable[str] = (), ignore: Iterable[str] = (), stopped: bool = False) -> list[Diagnostic]:
    """The diagnostics --select/--ignore leave; when a stage `stopped` (nothing could be made) and
    none of those is an error, every error too: an option that hides a problem never hides why a
    command made nothing."""
    diags = list(diags)
    select, ignore = tuple(select), tuple(ignore)
    out = [d for d in diags if _wanted(d.code, select, ignore)]
    if stopped and not any(d.is_error for d in out):
        out = [d for d in diags if d.is_error or d in out]
    return out


def _wanted(code: str, select: tuple[str, ...], ignore: tuple[str, ...]) -> bool:
    if always_reported(code):
        return True
    if select and not any(code.startswith(s) for s in select):
        return False
    return not any(code.startswith(i) for i in ignore)


@dataclass(frozen=True)
class Checked:
    """The result of the front end: a typed spec, its binding to the catalogs, and diagnostics."""

    spec: PartialSpec
    context: Optional[Context]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


def check_loaded(
    loaded: Loaded,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
    accelerator: Optional[str] = None,
    target: Target = "distillc",
    remote: Optional[Remote] = None,
) -> Checked:
    """load -> parse -> bind -> rules (those of `target`). Structural problems stop before the rules run.
    With `remote`, the rules read gs:// checkpoints through it (validate); without, only local paths."""
    with _no_pydantic_plugins():
        return _check(loaded, tuple(select), tuple(ignore), accelerator, target, remote)


@contextmanager
def _no_pydantic_plugins() -> Iterator[None]:
    """Third-party pydantic plugins (observability hooks found through package entry points) have no
    part in checking a spec, and finding them reads every installed package's metadata: ~8 ms of
    `distillc validate` where the runtime is installed. Typer switches them off for its own
    validators the same way; here too only while checking, and never over a value the user set."""
    if "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        yield
        return
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    try:
        yield
    finally:
        os.environ.pop("PYDANTIC_DISABLE_PLUGINS", None)


def _check(
    loaded: Loaded, select: tuple[str, ...], ignore: tuple[str, ...], accelerator: Optional[str], target: Target,
    remote: Optional[Remote] = None,
) -> Checked:
    diags = [d for d in loaded.diagnostics if _wanted(d.code, select, ignore)]
    if loaded.data is None or any(d.code in ("DC000", "DC004") for d in loaded.diagnostics):
        return Checked(PartialSpec(), None, tuple(sorted(diags, key=sort_key)))
    spec, parse_diags = parse(loaded)
    ctx, bind_diags = bind(spec, loaded.source, accelerator, target, remote)
    refused = loaded.refused  # a value refused for its YAML tag (DC001) is not also "invalid"
    diags += [
        d for d in (*parse_diags, *bind_diags)
        if _wanted(d.code, select, ignore) and not any(d.path[: len(r)] == r for r in refused)
    ]
    diags += run_rules(ctx, select, ignore)
    return Checked(spec, ctx, tuple(sorted(diags, key=sort_key)))


def with_file(diags: Iterable[Diagnostic], file: str) -> list[Diagnostic]:
    return [replace(d, file=file) for d in diags]
