"""`ablate`: axes -> cells -> validated, resolved, deduplicated, named. The CLI and the bench call it.

Flow: check the base spec (it must load, parse and bind; rule errors are allowed, since an axis may
fix them), read and check the axes, pick the cells of the strategy (counted before expansion,
against max_cells), then evaluate every cell: pruned when the validator reports an error, a
duplicate when its plan key was already seen, valid otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

from distillc.compiler.ablation.axes import Axis, check_axis, cli_axes, cli_source, merge, not_finite, spec_axes, value_id
from distillc.compiler.ablation.evaluate import Draft, Evaluator
from distillc.compiler.ablation.names import Namer, name_limit
from distillc.compiler.ablation.patch import lookup
from distillc.compiler.ablation.plan import PlanKeys, Unresolvable
from distillc.compiler.ablation.priority import load_priority
from distillc.compiler.ablation.strategies import (
    StagePlan,
    StrategyError,
    grid,
    grid_size,
    plan_stage,
    random_sample,
    stage_drafts,
    stage_groups,
)
from distillc.compiler.check import Checked, check_loaded
from distillc.compiler.diagnostics import Diagnostic, one_line, sort_key
from distillc.compiler.loader import Loaded, SourceMap
from distillc.compiler.registry import CODES, Target, make

STRATEGIES = ("grid", "staged", "random")
DEFAULT_MAX_CELLS = 1000


@dataclass(frozen=True)
class Options:
    strategy: Optional[str] = None  # overrides ablation.strategy
    samples: Optional[int] = None
    seed: Optional[int] = None
    max_cells: Optional[int] = None
    stage: Optional[int] = None
    results: Optional[Mapping[str, float]] = None  # --best: cell name -> metric
    maximize: bool = False
    parallel: Optional[bool] = None  # None: forked workers for large ablations; False: never
    target: Target = "distillc"  # the rules of this target's limits check every cell


@dataclass(frozen=True)
class Cell:
    name: str
    status: str  # valid | pruned | duplicate
    values: dict[str, Any]  # every axis value the cell sets
    diff: tuple[tuple[str, Any], ...]  # the values that differ from the base spec
    draft: Draft
    reason: Optional[str] = None
    code: Optional[str] = None
    duplicate_of: Optional[str] = None
    aliases: tuple[str, ...] = ()
    result: Optional[float] = None  # its metric in --best: it already ran (launch_all.sh skips it)

    def to_json(self) -> dict[str, Any]:
        """The public shape ({name, status, values, reason, duplicate_of}) plus code, aliases and result."""
        return {
            "name": self.name,
            "status": self.status,
            "values": dict(self.values),
            "reason": self.reason,
            "duplicate_of": self.duplicate_of,
            "code": self.code,
            "aliases": list(self.aliases),
            "result": self.result,
        }


@dataclass(frozen=True)
class Ablation:
    loaded: Loaded
    strategy: str = "grid"
    axes: tuple[Axis, ...] = ()
    cells: tuple[Cell, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    sources: dict[str, SourceMap] = field(default_factory=dict)
    stage: Optional[StagePlan] = None
    notes: tuple[str, ...] = ()
    evaluator: Optional[Evaluator] = None
    plans_resolved: int = 0
    rule_runs: int = 0
    target: Target = "distillc"  # the child specs of --out are checked for it too

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)

    @property
    def base_name(self) -> str:
        data = self.loaded.data if isinstance(self.loaded.data, dict) else {}
        return str(data.get("name") or "cell")

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cells)


def on_cluster(loaded: Loaded, accelerator: str, num_slices: int) -> Loaded:
    """The base spec as it runs on a cluster entry: its accelerator and slice count written into
    resources (positions kept), so every cell is validated, and every child spec written, for
    the machine `distillc launch --cluster` will use."""
    data = loaded.data
    if not isinstance(data, dict) or not isinstance(data.get("resources", {}), dict):
        return loaded
    resources = {**(data.get("resources") or {}), "accelerator": accelerator, "num_slices": num_slices}
    return replace(loaded, data={**data, "resources": resources})


def _structural(d: Diagnostic) -> bool:
    info = CODES.get(d.code)
    return d.is_error and (info is None or info.func is None)


def ablate(loaded: Loaded, axis_args: Sequence[str] = (), options: Options = Options()) -> Ablation:
    """Expand, validate, resolve and dedupe the cells of `loaded`'s ablation (plus `axis_args`)."""
    sources = {loaded.source.file: loaded.source}
    base = check_loaded(loaded, target=options.target)
    stop = [d for d in base.diagnostics if _structural(d)]
    if stop or base.context is None:
        return Ablation(loaded, diagnostics=tuple(stop or base.diagnostics), sources=sources)
    block = base.spec.ablation

    from_cli, diags = cli_axes(axis_args)
    _refuse_non_finite(from_cli, axis_args)
    if axis_args:
        sources["--axis"] = cli_source(axis_args)
    axes_in, merge_diags = merge(spec_axes(loaded), from_cli)
    diags += merge_diags
    axes: list[Axis] = []
    for a in axes_in:
        checked, d = check_axis(a)
        diags += d
        if checked is not None:
            axes.append(checked)
    if not axes_in and not diags:
        diags.append(make("DC172", "nothing to ablate: add an `ablation: {axes: ...}` block or pass --axis KEY=V1,V2",
                          span=loaded.source.span(("ablation",)), file=loaded.source.file))
    strategy = options.strategy or (block.strategy if block else "grid")
    implied = options.strategy is None and options.samples is not None and strategy != "random"
    if implied:  # --samples alone means a random sample (an explicit --strategy still wins)
        strategy = "random"
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy '{strategy}' (choose {', '.join(STRATEGIES)})")
    result = Ablation(loaded, strategy, tuple(axes), (), tuple(sorted(diags, key=sort_key)), sources, target=options.target)
    if not result.ok:
        return result

    priority = load_priority()
    evaluator = Evaluator(loaded, base, axes)
    differs = _differs(loaded.data, axes)
    base_name = result.base_name

    # names list values in the guide's priority order, so a staged run's names grow by suffix
    rank = {a: (*priority.rank(ax.key), a) for a, ax in enumerate(axes)}

    order = sorted(range(len(axes)), key=rank.__getitem__)

    def diffs_of(drafts: list[Draft]) -> list[tuple[tuple[int, int], ...]]:
        """Each cell's values that differ from the base and that its spec keeps (count under
        straddle_pruned is dropped: it does not affect the cell, so its name leaves it out). A
        cell that is then the same as an earlier one of the list shows every value it sets."""
        out = []
        seen: set[tuple[tuple[int, int], ...]] = set()
        for d in drafts:
            at = dict(d)
            shown = tuple((a, at[a]) for a in order if a in at and differs[a][at[a]])
            kept = tuple(p for p in shown if evaluator.kept(d, p[0])) if shown else shown
            out.append(shown if kept in seen else kept)
            seen.add(kept)
        return out

    namer = Namer(base_name, axes, priority, name_limit(_super_slicing(base, axes)))

    def names_of(drafts: list[Draft]) -> list[str]:
        return namer.names(diffs_of(drafts))

    max_cells = options.max_cells or (block.max_cells if block else DEFAULT_MAX_CELLS)
    notes: list[str] = [f"--samples {options.samples} without --strategy: sampling (--strategy random)"] if implied else []
    ignored = [flag for flag, given, used_by in (
        ("--samples", options.samples is not None, "random"),
        ("--seed", options.seed is not None, "random"),
        ("--best", options.results is not None, "staged"),
        ("--stage", options.stage is not None, "staged"),
        ("--maximize", options.maximize, "staged"),
    ) if given and strategy != used_by]
    if ignored:
        notes.append(f"warning: {', '.join(ignored)}: not used by the {strategy} strategy (ignored)")
    stage: Optional[StagePlan] = None
    if strategy == "grid":
        count = grid_size(axes)
    elif strategy == "random":
        samples = options.samples or (block.samples if block else None)
        if not samples:
            raise StrategyError("the random strategy needs --samples N (or ablation.samples)")
        count = min(samples, grid_size(axes))
        if samples > count:
            notes.append(f"--samples {samples} is more than the grid's {count} cells: every cell is listed")
    else:
        groups = stage_groups(axes, priority)
        def unchanged(draft: Draft, group: Any) -> bool:
            return not any(differs[a][v] and evaluator.kept(draft, a) for a, v in draft if a in group.axes)

        stage = plan_stage(axes, groups, names_of, unchanged, options.results or {}, options.stage, options.maximize)
        count = 1 if stage.complete else grid_size(axes, stage.group.axes)
    if count > max_cells:
        sizes = " x ".join(str(len(a.values)) for a in axes)
        what = f"stage {stage.number} ({stage.group.name})" if stage else f"the {strategy} ablation"
        span_path = ("ablation", "max_cells") if block and "max_cells" in (loaded.data.get("ablation") or {}) else ("ablation",)
        msg = f"{what} has {count:,} cells (axes {sizes}), more than max_cells {max_cells:,}"
        too_many = make("DC173", msg, path=span_path, span=loaded.source.span(span_path), file=loaded.source.file)
        return replace(result, diagnostics=(*result.diagnostics, too_many), stage=stage)

    if strategy == "grid":
        drafts = list(grid(axes))
    else:
        drafts = random_sample(axes, count, options.seed if options.seed is not None else (block.seed if block else 0))
    prior: list[tuple[Draft, str]] = []
    if strategy == "staged":
        assert stage is not None  # planned above for the staged strategy
        drafts = stage_drafts(axes, stage)
        if stage.complete:
            notes.append("every stage has a winner in --best: the cell below combines them")
        prior, known = _earlier_cells(axes, stage, names_of, options.results or {})
        unknown = sorted(set(options.results or {}) - known - set(names_of(drafts)))
        if unknown:
            shown_names = ", ".join(map(one_line, unknown[:8])) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
            notes.append(f"warning: --best names cells that are not cells of this ablation (ignored): {shown_names}")
    shown = diffs_of(drafts)
    diffs = [tuple((axes[a].key, axes[a].values[v]) for a, v in d) for d in shown]
    cells, resolved, rule_runs = evaluate_cells(evaluator, drafts, namer.names(shown), diffs, options.parallel, prior)
    base_errors = [d for d in base.diagnostics if d.is_error]
    if base_errors and cells and all(c.status == "pruned" for c in cells):
        said = {f"{d.code} {d.message}" for d in base_errors}
        if all(any(c.reason == m or (c.reason or "").startswith(m + " (") for m in said) for c in cells):
            # the base spec's own error, which no axis fixes: reported once, not blamed on each cell
            return replace(result, diagnostics=tuple(sorted((*result.diagnostics, *base_errors), key=sort_key)), stage=stage)
    if options.results:
        res = options.results
        def with_result(c: Cell) -> Cell:
            for name in (c.name, c.duplicate_of):
                if name is not None and name in res:
                    return replace(c, result=res[name])
            return c

        cells = [with_result(c) for c in cells]
    return replace(
        result, cells=tuple(cells), stage=stage, notes=tuple(notes), evaluator=evaluator, plans_resolved=resolved, rule_runs=rule_runs
    )


def _refuse_non_finite(axes: Sequence[Axis], args: Sequence[str]) -> None:
    """A non-finite --axis value (.inf, .nan, 1e999) is a usage error, like a bad option value: no
    cell can be named or compared by it (in ablation.axes it is DC171, at the value's line)."""
    for a in axes:
        for value, span in zip(a.values, a.value_spans):
            problem = not_finite(value, a.path)
            if problem:
                end = span.end_column if span.end_column is not None else len(args[span.line - 1]) + 1
                text = args[span.line - 1][span.column - 1 : end - 1].strip()
                text = text if len(text) <= 40 else text[:37] + "..."
                raise StrategyError(f"--axis {one_line(a.key)}: value {text!r}: {problem} (axis values must be finite)")


def _earlier_cells(
    axes: Sequence[Axis], stage: StagePlan, names_of: Any, results: Mapping[str, float]
) -> tuple[list[tuple[Draft, str]], set[str]]:
    """The cells of the stages before `stage` that have a result in --best (they ran: a cell of
    this stage with the same plan is a duplicate of one of them), and every earlier cell's name."""
    prior: list[tuple[Draft, str]] = []
    known: set[str] = set()
    for k, group in enumerate(stage.groups[: stage.number - 1]):
        fixed = tuple(sorted(p for w in stage.winners[:k] for p in w.values))
        drafts = list(grid(axes, group.axes, fixed))
        names = names_of(drafts)
        known.update(names)
        prior += [(d, n) for d, n in zip(drafts, names) if n in results]
    return prior, known


def _super_slicing(base: Checked, axes: Sequence[Axis]) -> bool:
    """Whether any cell may run on a super-slicing type (xpk's shorter name limit applies)."""
    ctx = base.context
    assert ctx is not None  # the base spec parsed (structural errors stop before this)
    names = [a.values for a in axes if a.key == "resources.accelerator"]
    accs = [ctx.catalog.accelerators.get(str(v)) for vs in names for v in vs] + [ctx.accelerator]
    return any(a is not None and a.super_slicing for a in accs)


def _differs(data: Any, axes: Sequence[Axis]) -> list[list[bool]]:
    """differs[a][v]: whether value v of axis a differs from the base spec's value at that path."""
    out = []
    for a in axes:
        present, base = lookup(data, a.path)
        bid = value_id(base) if present else None
        out.append([not present or value_id(v) != bid for v in a.values])
    return out


PARALLEL_MIN_CELLS = 2048  # below this, forking workers costs more than it saves

# (error code, reason, plan digest, the draft evaluated instead when the layer choices were dropped)
Verdict = tuple[Optional[str], Optional[str], Optional[bytes], Optional[Draft]]


def verdicts(evaluator: Evaluator, drafts: Sequence[Draft]) -> tuple[list[Verdict], int, int]:
    """Validate each cell and resolve the valid ones: (code, reason, None) for a pruned cell,
    (None, None, plan digest) for a valid one; with the plans resolved and rules run."""
    keys = PlanKeys(evaluator.relevance)
    runs = evaluator.rule_runs
    out: list[Verdict] = []
    for draft in drafts:
        outcome = evaluator.evaluate(draft)
        err = outcome.first_error
        instead: Optional[Draft] = None
        if err is not None and _in_layers(err) and evaluator.beta_off(draft):
            # beta 0: the layer choices cannot matter, so a cell whose only fault is in
            # loss.layers is the cell with the base's layers (a duplicate of it, not pruned)
            without = tuple(p for p in draft if evaluator.axes[p[0]].path[:2] != _LAYERS)
            if without != draft:
                instead = without
                outcome = evaluator.evaluate(without)
                err = outcome.first_error
        if err is not None:
            reason = f"{err.code} {err.message}"
            if _in_layers(err) and err.code == "DC012":
                set_by = [evaluator.axes[a].key for a, _ in draft if evaluator.axes[a].path[:2] == _LAYERS]
                reason += (f" (set by {', '.join(set_by)}; neither the base spec nor another axis gives it:"
                           f" add it to the base's loss.layers or as an axis)") if set_by else ""
            out.append((err.code, reason, None, None))
            continue
        key = keys(outcome.checked, outcome.vals)
        if isinstance(key, Unresolvable):
            out.append(("DC176", f"DC176 {key}", None, None))
        else:
            out.append((None, None, key, instead))
    return out, keys.resolved, evaluator.rule_runs - runs


_LAYERS = ("loss", "layers")


def _in_layers(d: Diagnostic) -> bool:
    return tuple(d.path[:2]) == _LAYERS


_JOB: Optional[tuple[Evaluator, Sequence[Draft]]] = None  # what forked workers read (no pickling)


def _work(span: tuple[int, int]) -> tuple[list[Verdict], int, int]:
    assert _JOB is not None
    evaluator, drafts = _JOB
    return verdicts(evaluator, drafts[span[0] : span[1]])


def _workers() -> int:
    """Worker processes for a large ablation: the CPUs this process may use, where fork exists."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def all_verdicts(evaluator: Evaluator, drafts: Sequence[Draft], parallel: Optional[bool] = None) -> tuple[list[Verdict], int, int]:
    """verdicts() over every cell, split over forked worker processes when the ablation is large
    (or `parallel` is True). Each worker validates and resolves a contiguous slice with its own
    caches; verdicts are plain tuples, so the results equal the sequential ones."""
    workers = _workers() if parallel is not False else 1
    if workers < 2 or (parallel is None and len(drafts) < PARALLEL_MIN_CELLS):
        return verdicts(evaluator, drafts)
    global _JOB
    chunks = workers * 2
    step = -(-len(drafts) // chunks)
    spans = [(i, min(i + step, len(drafts))) for i in range(0, len(drafts), step)]
    _JOB = (evaluator, drafts)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_work, spans)
    finally:
        _JOB = None
    out: list[Verdict] = []
    for part, _, _ in parts:
        out += part
    return out, sum(p[1] for p in parts), sum(p[2] for p in parts)


def evaluate_cells(
    evaluator: Evaluator,
    drafts: Sequence[Draft],
    names: Sequence[str],
    diffs: Sequence[Any],
    parallel: Optional[bool] = None,
    prior: Sequence[tuple[Draft, str]] = (),
) -> tuple[list[Cell], int, int]:
    """Validate each cell, resolve the valid ones, and fold cells with the same plan into the
    first (its aliases listed); returns the cells, the plans resolved and the rules run.
    `prior`: (draft, name) of cells that already ran (a staged run's earlier stages, from
    --best); a cell with the same plan as one of them is a duplicate of it."""
    found, resolved, rule_runs = all_verdicts(evaluator, [*(d for d, _ in prior), *drafts], parallel)
    ran = {v[2]: name for (_, name), v in zip(prior, found) if v[2] is not None}
    found = found[len(prior):]
    axes = evaluator.axes
    first: dict[bytes, int] = {}
    cells: list[Cell] = []
    aliases: dict[int, list[str]] = {}
    for draft, name, diff, (code, reason, key, instead) in zip(drafts, names, diffs, found):
        values = {axes[a].key: axes[a].values[v] for a, v in draft}
        draft = draft if instead is None else instead  # beta 0: the child spec keeps the base's layers
        if key is None:
            cells.append(Cell(name, "pruned", values, diff, draft, reason=reason, code=code))
        elif key in ran and ran[key] != name:
            why: Optional[str] = f"resolves to the same plan as {ran[key]}, which already ran"
            cells.append(Cell(name, "duplicate", values, diff, draft, reason=why, duplicate_of=ran[key]))
        elif key in first:
            j = first[key]
            aliases.setdefault(j, []).append(name)
            why = f"resolves to the same plan as {cells[j].name}"
            cells.append(Cell(name, "duplicate", values, diff, draft, reason=why, duplicate_of=cells[j].name))
        else:
            first[key] = len(cells)
            why = None if instead is None else "beta 0: the layer choices do not apply (the base's layers are kept)"
            cells.append(Cell(name, "valid", values, diff, draft, reason=why))
    out = [replace(c, aliases=tuple(aliases[i])) if i in aliases else c for i, c in enumerate(cells)]
    return out, resolved, rule_runs
