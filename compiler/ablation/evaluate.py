"""Validate and key thousands of cells fast, with the same answers as check_loaded on each.

A cell is the base spec plus a few assignments, so almost all of its work was already done for
the base or for another cell:
- sections: a section no axis touches is the base's parsed object; a touched section is parsed
  once per distinct set of values it receives (pydantic on one section, not the whole spec);
- binding to the catalogs is redone only when teacher, student or resources changed;
- rules: each rule runs through proxies that record the key paths it reads (track.py); its
  findings are then keyed on the values of only the axes that can reach those paths. A rule
  about beta runs once per distinct beta value, however many alpha, layer or learning-rate
  values vary. Rules with the same relevant axes are looked up together, one dict hit per group.
A cell's source map is the base's, with each touched section's keys replaced by the keys the
cell's data holds (a rule asking "was loss.layers written?" gets the answer the cell's own YAML
would give); new keys point at the axis value that set them, and are mapped only when a rule
or an error needs a position. Sections are parsed and their errors reported by parse.py's own
functions, and rules run through check.run_codes, the code check.run_rules runs; tests compare
every cell of small grids with check_loaded on the cell's own YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Hashable, Optional, Sequence

from pydantic import ValidationError

from distillc.compiler.ablation.axes import Axis
from distillc.compiler.ablation.axes import value_id
from distillc.compiler.ablation.patch import CannotApply, apply, footprint, lookup
from distillc.compiler.ablation.track import Recorder, TrackedContext, overlaps
from distillc.compiler.check import Checked, Context, bind, run_codes
from distillc.compiler.diagnostics import Diagnostic, KeyPath, Span, dotted, sort_key
from distillc.compiler.loader import Loaded, SourceMap
from distillc.compiler.parse import PartialSpec, parse_section, recover_section, section_diagnostics
from distillc.compiler.registry import CODES, load_rules, make
from distillc.compiler.spec import SECTIONS

Draft = tuple[tuple[int, int], ...]  # (axis index, value index) for every axis the cell sets
Vals = tuple[int, ...]  # the same as one value index per axis, -1 where the cell leaves the base
_BINDS = ("teacher", "student", "resources")
Spans = dict[KeyPath, Span]


@dataclass(frozen=True)
class Outcome:
    """A cell's validation: its Checked (spec, context, diagnostics)."""

    checked: Checked
    vals: Vals

    @property
    def ok(self) -> bool:
        return self.checked.ok

    @property
    def first_error(self) -> Optional[Diagnostic]:
        return next((d for d in self.checked.diagnostics if d.is_error), None)


@dataclass
class _Section:
    """One section of a cell: parsed once per distinct set of values it receives."""

    token: int
    value: Any
    diags: tuple[Diagnostic, ...]
    raw: Any  # the section's data in the cell
    items: tuple[tuple[int, int], ...]
    applied: bool = True  # False: the values could not be applied (DC175), the section has no keys
    # (spans, key_spans) of the keys `raw` holds: built when a source map is (rarely) needed
    spans: Optional[tuple[Spans, Spans]] = None


def _with(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace for the frozen PartialSpec and Context, without its per-call field
    introspection (a cell builds two of each; 10,000 cells made replace a visible cost)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def getter(rel: tuple[int, ...]) -> Callable[[Vals], Hashable]:
    if not rel:
        return lambda vals: ()
    return itemgetter(*rel)


class Relevance:
    """Which axes can reach a key path: those whose footprint overlaps it (cached per path)."""

    def __init__(self, footprints: Sequence[KeyPath]) -> None:
        self.footprints = list(footprints)
        self._cache: dict[KeyPath, frozenset[int]] = {}
        self._sets: dict[frozenset[KeyPath], tuple[int, ...]] = {}

    def of(self, rec: Recorder) -> tuple[int, ...]:
        if rec.everything:
            return tuple(range(len(self.footprints)))
        paths = frozenset(rec.paths)
        rel = self._sets.get(paths)
        if rel is None:
            found: set[int] = set()
            for p in paths:
                hit = self._cache.get(p)
                if hit is None:
                    hit = self._cache[p] = frozenset(a for a, fp in enumerate(self.footprints) if overlaps(fp, p))
                found |= hit
            rel = self._sets[paths] = tuple(sorted(found))
        return rel


class DepMemo:
    """Results of one deterministic function of a cell, keyed on the axes that reach what it read.

    Each run stores its result under the values of the axes relevant to what that run read; a
    later cell that agrees on those values makes the function read the same values, take the same
    branches and return the same result. Runs that read different paths (beta 0: no layers) give
    separate tables, tried in turn."""

    def __init__(self, relevance: Relevance) -> None:
        self.relevance = relevance
        self.tables: dict[tuple[int, ...], tuple[Callable[[Vals], Hashable], dict]] = {}
        self.union: Optional[tuple[int, ...]] = None  # every axis any run found relevant
        self.runs = 0

    def lookup(self, vals: Vals) -> Any:
        for get_key, table in self.tables.values():
            hit = table.get(get_key(vals))
            if hit is not None:
                return hit
        return None

    def store(self, vals: Vals, rec: Recorder, result: Any) -> bool:
        """Store a run's result; True when the union of relevant axes grew."""
        self.runs += 1
        rel = self.relevance.of(rec)
        entry = self.tables.get(rel)
        if entry is None:
            entry = self.tables[rel] = (getter(rel), {})
        entry[1][entry[0](vals)] = result
        if self.union is not None and set(rel) <= set(self.union):
            return False
        self.union = tuple(sorted(set(rel) | set(self.union or ())))
        return True


@dataclass
class _Group:
    relevant: Optional[tuple[int, ...]]  # None: rules not run yet
    codes: tuple[str, ...]
    get_key: Callable[[Vals], Hashable]
    table: dict


def _walk(value: Any, path: KeyPath, out: list[KeyPath]) -> None:
    """Every key path inside `value` (mapping keys and list indices), `path` included."""
    out.append(path)
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, (*path, k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, (*path, i), out)


class Evaluator:
    """Validates cells of one base spec. `base` must have parsed and bound without errors."""

    def __init__(self, loaded: Loaded, base: Checked, axes: Sequence[Axis], accelerator: Optional[str] = None) -> None:
        assert base.context is not None
        load_rules("spec")
        self.loaded, self.base, self.axes, self.accelerator = loaded, base, list(axes), accelerator
        self.source = loaded.source
        self.data = loaded.data
        self.footprints = [footprint(a.path) for a in self.axes]
        self._axis_section = [a.section for a in self.axes]
        self._sections: dict[Hashable, _Section] = {}
        self._binds: dict[tuple[int, ...], tuple[Any, Any, Any, tuple[Diagnostic, ...]]] = {}
        self._rules = {code: CODES[code] for code in sorted(CODES) if CODES[code].at("spec")}
        self.relevance = Relevance(self.footprints)
        self._memos = {code: DepMemo(self.relevance) for code in self._rules}
        self._needs = sorted({n for info in self._rules.values() for n in info.needs})
        self._plans: dict[frozenset[str], list[_Group]] = {}
        self._base_missing = frozenset(n for n in self._needs if base.context.get(n) is None)
        self._touched: dict[tuple[str, ...], frozenset[str]] = {}
        self._by_section: dict[str, tuple[Spans, Spans]] = {}
        for which, spans in ((0, self.source.spans), (1, self.source.key_spans)):
            for p, span in spans.items():
                if p and p[0] in SECTIONS:
                    self._by_section.setdefault(p[0], ({}, {}))[which][p] = span
        self._next_token = 1

    @property
    def rule_runs(self) -> int:
        """How often a rule function actually ran (the bench reports it)."""
        return sum(m.runs for m in self._memos.values())

    def vals(self, draft: Draft) -> Vals:
        out = [-1] * len(self.axes)
        for a, v in draft:
            out[a] = v
        return tuple(out)

    # ------------------------------------------------------------ a cell's data

    def cell_data(self, draft: Draft, name: Optional[str] = None) -> dict:
        """The cell's whole spec as data (what a child spec file holds): no ablation block."""
        out = dict(self.data)
        by_section: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
        for a, v in draft:
            path = self.axes[a].path
            by_section.setdefault(path[0], []).append((path[1:], self.axes[a].values[v]))
        for section, items in by_section.items():
            out[section] = apply(self.data.get(section), items, (section,))
        out.pop("ablation", None)
        if name is not None:
            out["name"] = name
        return out

    def kept(self, draft: Draft, axis: int) -> bool:
        """Whether the cell's spec holds axis `axis`'s value: False when applying the cell's values
        dropped it (loss.layers.count under a strategy without a count), so the value does not
        affect the cell and its name leaves it out."""
        section = self._axis_section[axis]
        items = tuple(p for p in draft if self._axis_section[p[0]] == section)
        entry = self._section(section, items)
        if not entry.applied:
            return True
        v = dict(draft)[axis]
        present, value = lookup(entry.raw, self.axes[axis].path[1:])
        return present and value_id(value) == value_id(self.axes[axis].values[v])

    def beta_off(self, draft: Draft) -> bool:
        """Whether the cell's beta is 0 throughout (no feature loss: layer choices do not matter)."""
        items = tuple(p for p in draft if self._axis_section[p[0]] == "loss")
        raw = self._section("loss", items).raw if items else self.data.get("loss")
        beta = raw.get("beta", 0) if isinstance(raw, dict) else None
        if isinstance(beta, dict):
            points = beta.get("points")
            values = [beta.get("start", 0), beta.get("end", 0)] if points is None else [
                p[1] for p in points if isinstance(p, (list, tuple)) and len(p) == 2
            ]
            return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0 for v in values)
        return isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta == 0

    # ------------------------------------------------------------ sections

    def _section(self, section: str, items: tuple[tuple[int, int], ...]) -> _Section:
        key = (section, items)
        hit = self._sections.get(key)
        if hit is not None:
            return hit
        assignments = [(self.axes[a].path[1:], self.axes[a].values[v]) for a, v in items]
        token, self._next_token = self._next_token, self._next_token + 1
        try:
            raw = apply(self.data.get(section), assignments, (section,))
        except CannotApply as exc:
            msg = f"cannot set a key inside {dotted(exc.path)}: it is {exc.value!r}, not a mapping"
            diag = make("DC175", msg, path=exc.path, span=self.source.span(exc.path), file=self.source.file)
            entry = _Section(token, None, (diag,), None, items, applied=False)
        else:
            try:
                entry = _Section(token, parse_section(section, raw), (), raw, items)
            except ValidationError as exc:
                entry = _Section(token, recover_section(section, raw, exc), (), raw, items)
                src = SourceMap(self.source.file, self.source.text, *self._merged({section: entry}))
                entry.diags = tuple(section_diagnostics(section, exc, raw, src))
        self._sections[key] = entry
        return entry

    def _spans(self, section: str, raw: Any, items: tuple[tuple[int, int], ...]) -> tuple[Spans, Spans]:
        """The section's spans as the cell's YAML would have them: base positions where the base
        wrote the key, else the position of the axis value that put it there."""
        base_spans, base_keys = self._by_section.get(section, ({}, {}))
        paths: list[KeyPath] = []
        _walk(raw, (section,), paths)
        origin = []
        for a, v in items:
            axis = self.axes[a]
            where = axis.value_spans[v] if axis.file == self.source.file and v < len(axis.value_spans) else None
            origin.append((axis.path, where))
        spans: Spans = {}
        keys: Spans = {}
        for p in paths:
            if p in base_spans:
                spans[p] = base_spans[p]
                if p in base_keys:
                    keys[p] = base_keys[p]
                continue
            where = next((w for ap, w in origin if p[: len(ap)] == ap and w is not None), None)
            spans[p] = keys[p] = where or self.source.span(p)
        return spans, keys

    def _merged(self, overlays: dict[str, _Section]) -> tuple[Spans, Spans]:
        """The base's spans, with each overlaid section's replaced by the cell's."""
        spans = {p: s for p, s in self.source.spans.items() if not (p and p[0] in overlays)}
        keys = {p: s for p, s in self.source.key_spans.items() if not (p and p[0] in overlays)}
        for section, entry in overlays.items():
            if not entry.applied:
                continue
            if entry.spans is None:
                entry.spans = self._spans(section, entry.raw, entry.items)
            spans.update(entry.spans[0])
            keys.update(entry.spans[1])
        return spans, keys

    # ------------------------------------------------------------ a cell

    def evaluate(self, draft: Draft) -> Outcome:
        vals = self.vals(draft)
        by_section: dict[str, list[tuple[int, int]]] = {}
        sec = self._axis_section
        for a, v in draft:
            items = by_section.get(sec[a])
            if items is None:
                by_section[sec[a]] = [(a, v)]
            else:
                items.append((a, v))
        if not by_section:
            return Outcome(self.base, vals)
        entries = {section: self._section(section, tuple(items)) for section, items in by_section.items()}
        changed = {section: e.value for section, e in entries.items()}
        diags: list[Diagnostic] = []
        failed = [section for section, e in entries.items() if e.diags and e.value is None]
        for e in entries.values():
            diags += e.diags
        spec = _with(self.base.spec, **changed, failed=frozenset(failed))
        source = _LazySource(self, entries)
        ctx = self._bind(spec, source, entries, diags)
        missing = self._base_missing
        touched = self._needs_touched(changed)
        if touched:
            missing = (missing - touched) | {n for n in touched if ctx.get(n) is None}
        diags += self._run_rules(ctx, vals, missing)
        if len(diags) > 1:
            diags.sort(key=sort_key)
        return Outcome(Checked(spec, ctx, tuple(diags)), vals)

    def _bind(self, spec: PartialSpec, source: Any, entries: dict, diags: list[Diagnostic]) -> Context:
        base_ctx = self.base.context
        if not any(s in entries for s in _BINDS):
            return _with(base_ctx, spec=spec, source=source)
        key = tuple(entries[s].token if s in entries else 0 for s in _BINDS)
        hit = self._binds.get(key)
        if hit is None:
            ctx, bdiags = bind(spec, source.real, self.accelerator)
            hit = self._binds[key] = (ctx.teacher_arch, ctx.student_arch, ctx.accelerator, tuple(bdiags))
        diags += hit[3]
        return _with(base_ctx, spec=spec, source=source, teacher_arch=hit[0], student_arch=hit[1], accelerator=hit[2])

    # ------------------------------------------------------------ rules

    def _needs_touched(self, changed: dict) -> frozenset[str]:
        """The `needs` names a cell's changed sections can make present or absent."""
        key = tuple(changed)
        hit = self._touched.get(key)
        if hit is None:
            names = set(changed)
            if any(s in changed for s in _BINDS):
                names |= {"teacher_arch", "student_arch", "accelerator"}
            hit = self._touched[key] = frozenset(n for n in self._needs if n in names)
        return hit

    def _plan(self, missing: frozenset[str]) -> list[_Group]:
        """The rules that run for a cell (their `needs` are present), grouped by relevant axes."""
        plan = self._plans.get(missing)
        if plan is None:
            groups: dict[Optional[tuple[int, ...]], list[str]] = {}
            for code, info in self._rules.items():
                if not missing.intersection(info.needs):
                    groups.setdefault(self._memos[code].union, []).append(code)
            plan = self._plans[missing] = [
                _Group(rel, tuple(codes), getter(rel or ()), {}) for rel, codes in groups.items()
            ]
        return plan

    def _run_rules(self, ctx: Context, vals: Vals, missing: frozenset[str]) -> list[Diagnostic]:
        """check.run_rules, with each rule's diagnostics (check.run_codes) cached under the axes
        it depends on. `missing`: the `needs` names that are None in this cell (their rules are
        skipped)."""
        out: list[Diagnostic] = []
        regroup = False
        for group in self._plan(missing):
            key = group.get_key(vals)
            hit = group.table.get(key) if group.relevant is not None else None
            if hit is None:
                found: list[Diagnostic] = []
                grew = group.relevant is None
                for code in group.codes:
                    memo = self._memos[code]
                    h = memo.lookup(vals)
                    if h is None:
                        rec = Recorder()
                        h = self._run_rule(code, ctx, rec)
                        grew |= memo.store(vals, rec, h)
                    found += h
                hit = tuple(found)
                if grew:
                    regroup = True
                else:
                    group.table[key] = hit
            out += hit
        if regroup:
            self._plans.clear()
        return out

    def _run_rule(self, code: str, ctx: Context, rec: Recorder) -> tuple[Diagnostic, ...]:
        return tuple(run_codes(ctx, (code,), TrackedContext(ctx, rec)))


class _LazySource:
    """A cell's SourceMap, built only when a rule actually runs and reads its spans."""

    __slots__ = ("_ev", "_overlays", "_real")

    def __init__(self, ev: Evaluator, overlays: dict[str, _Section]) -> None:
        self._ev, self._overlays = ev, overlays
        self._real: Optional[SourceMap] = None

    @property
    def file(self) -> str:
        return self._ev.source.file

    @property
    def real(self) -> SourceMap:
        if self._real is None:
            src = self._ev.source
            self._real = SourceMap(src.file, src.text, *self._ev._merged(self._overlays))
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
