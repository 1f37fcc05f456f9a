"""Which cells to build: grid (the full product), staged (the guide's priority order, one stage at
a time) and random (a reproducible sample of the grid). Cells are drafts: tuples of
(axis index, value index). Counts are known before anything is expanded."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from distillc.compiler.ablation.axes import Axis
from distillc.compiler.ablation.priority import Priority

Draft = tuple[tuple[int, int], ...]


class StrategyError(Exception):
    """A request that cannot be met (a missing winner, a stage out of range, bad results)."""


def grid_size(axes: Sequence[Axis], which: Sequence[int] | None = None) -> int:
    idx = range(len(axes)) if which is None else which
    return math.prod(len(axes[i].values) for i in idx)


def grid(axes: Sequence[Axis], which: Sequence[int] | None = None, fixed: Draft = ()) -> Iterator[Draft]:
    """The product over the axes `which` (all by default), with `fixed` assignments added, in
    axis order; the last axis varies fastest."""
    idx = list(range(len(axes))) if which is None else list(which)
    for combo in itertools.product(*(range(len(axes[i].values)) for i in idx)):
        yield tuple(sorted((*fixed, *zip(idx, combo))))


def random_sample(axes: Sequence[Axis], samples: int, seed: int) -> list[Draft]:
    """`samples` distinct cells of the grid drawn with Random(seed), in grid order; the grid is
    never materialized (an index is decoded into one value per axis)."""
    total = grid_size(axes)
    picks = sorted(random.Random(seed).sample(range(total), min(samples, total)))
    sizes = [len(a.values) for a in axes]
    out = []
    for n in picks:
        combo = []
        for size in reversed(sizes):
            n, r = divmod(n, size)
            combo.append(r)
        out.append(tuple(enumerate(reversed(combo))))
    return out


# ---------------------------------------------------------------- staged


@dataclass(frozen=True)
class StageGroup:
    name: str
    why: str
    axes: tuple[int, ...]  # axis indices, in axis order


@dataclass(frozen=True)
class Winner:
    stage: str
    cell: str
    metric: float
    values: Draft


@dataclass(frozen=True)
class StagePlan:
    number: int  # 1-based
    groups: tuple[StageGroup, ...]
    winners: tuple[Winner, ...]  # of the stages before `number`
    complete: bool = False  # every stage has a winner: the plan is their combination

    @property
    def group(self) -> StageGroup:
        return self.groups[min(self.number, len(self.groups)) - 1]

    @property
    def fixed(self) -> Draft:
        return tuple(sorted(p for w in self.winners for p in w.values))


def stage_groups(axes: Sequence[Axis], priority: Priority) -> list[StageGroup]:
    """The stages this ablation has, in priority order (stages without axes are skipped)."""
    by_stage: dict[str, list[int]] = {}
    for i, a in enumerate(axes):
        by_stage.setdefault(priority.stage_of(a.key), []).append(i)
    names = sorted(by_stage, key=priority.order)
    return [StageGroup(n, priority.why(n), tuple(by_stage[n])) for n in names]


def plan_stage(
    axes: Sequence[Axis],
    groups: Sequence[StageGroup],
    names_of: Callable[[list[Draft]], list[str]],
    unchanged: Callable[[Draft, StageGroup], bool],
    results: Mapping[str, float],
    stage: Optional[int] = None,
    maximize: bool = False,
) -> StagePlan:
    """Fix the winners of the stages before the one to run. With `stage`, every earlier stage must
    have a result among its cells; without it, the first stage with no result is next.
    `unchanged(draft, group)` says whether a cell keeps the group's axes at the base values."""
    if not groups:
        raise StrategyError("staged ablation needs at least one axis")
    if stage is not None and not 1 <= stage <= len(groups):
        raise StrategyError(f"--stage {stage}: this ablation has {len(groups)} stage(s) ({', '.join(g.name for g in groups)})")
    winners: list[Winner] = []
    for k, group in enumerate(groups, 1):
        if stage is not None and k == stage:
            return StagePlan(k, tuple(groups), tuple(winners))
        fixed = tuple(sorted(p for w in winners for p in w.values))
        drafts = list(grid(axes, group.axes, fixed))
        names = names_of(drafts)
        scored = [(results[n], i) for i, n in enumerate(names) if n in results]
        # the cell that keeps this stage's axes at the base values is an earlier stage's winner
        # (or the base itself): its result is reused, but it is no sign that this stage ran
        if not any(not unchanged(drafts[i], group) for _, i in scored):
            if stage is not None:
                raise StrategyError(
                    f"--stage {stage} needs the winner of stage {k} ({group.name}): --best has no result "
                    f"for any of its cells ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                )
            return StagePlan(k, tuple(groups), tuple(winners))
        metric, i = min(scored, key=lambda s: (-s[0] if maximize else s[0], s[1]))  # ties: the earlier cell
        own = tuple(p for p in drafts[i] if p[0] in group.axes)
        winners.append(Winner(group.name, names[i], metric, own))
    return StagePlan(len(groups) + 1, tuple(groups), tuple(winners), complete=True)


def stage_drafts(axes: Sequence[Axis], plan: StagePlan) -> list[Draft]:
    if plan.complete:
        return [plan.fixed]
    return list(grid(axes, plan.group.axes, plan.fixed))


# ---------------------------------------------------------------- results (--best)


def read_results(path: str | Path) -> dict[str, float]:
    """Cell name -> metric from a CSV (name and metric columns, a header optional) or a JSON file
    ({name: metric}, or a list of {"name", "metric"} objects, or {"cells": [...]} of those)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise StrategyError(f"--best {p}: cannot read ({exc.strerror or exc})") from None
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in "{[":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StrategyError(f"--best {p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(doc, dict) and isinstance(doc.get("cells"), list):
            doc = doc["cells"]
        pairs = doc.items() if isinstance(doc, dict) else [(_get(r, "name", p), _get(r, "metric", p)) for r in doc]
    else:
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        pairs = _csv_pairs(rows, p)
    out: dict[str, float] = {}
    for name, metric in pairs:
        try:
            value = float(metric)
        except (TypeError, ValueError):
            raise StrategyError(f"--best {p}: metric of '{name}' is not a number ({metric!r})") from None
        if math.isnan(value):
            raise StrategyError(f"--best {p}: metric of '{name}' is NaN")
        out[str(name).strip()] = value
    return out


def _get(row: Any, key: str, p: Path) -> Any:
    if not isinstance(row, dict) or key not in row:
        raise StrategyError(f"--best {p}: each entry needs '{key}' (got {row!r})")
    return row[key]


def _csv_pairs(rows: list[list[str]], p: Path) -> list[tuple[str, str]]:
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    if len(head) < 2:
        raise StrategyError(f"--best {p}: expected two columns, name and metric (got {rows[0]!r})")
    try:
        float(rows[0][1])
        has_header = False
    except ValueError:
        has_header = True
    if not has_header:
        return [(r[0], r[1] if len(r) > 1 else "") for r in rows]
    name_col = next((head.index(k) for k in ("name", "cell") if k in head), 0)
    metric_col = next((head.index(k) for k in ("metric", "value", "loss", "score") if k in head), None)
    if metric_col is None:
        if len(head) != 2:
            raise StrategyError(f"--best {p}: name the metric column 'metric' (columns: {', '.join(head)})")
        metric_col = 1 - name_col
    return [(r[name_col], r[metric_col] if len(r) > metric_col else "") for r in rows[1:]]
