"""Which cells to build: grid (the full product), staged (the guide's priority order, one stage at
a time) and random (a reproducible sample of the grid). Cells are drafts: tuples of
(axis index, value index). Counts are known before anything is expanded."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from distillc.compiler.ablation.axes import Axis
from distillc.compiler.diagnostics import one_line
from distillc.compiler.ablation.priority import Priority
from distillc.compiler.loader import MAX_BYTES

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
    ({name: metric}, or a list of {"name", "metric"} objects, or {"cells": [...]} of those). A name
    given twice, a metric that is not a finite number, or a file that is not such a table is a
    StrategyError: a result silently dropped would pick a wrong winner."""
    p = Path(path)
    where = f"--best {one_line(str(p))}"
    text = _read_text(p, where)
    if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            doc = json.loads(text, object_pairs_hook=lambda pairs: _no_repeats(pairs, where))
        except json.JSONDecodeError as exc:
            raise StrategyError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise StrategyError(f"{where}: the JSON nests too deeply") from None
        if isinstance(doc, dict) and isinstance(doc.get("cells"), list):
            doc = doc["cells"]
        if not isinstance(doc, (dict, list)):
            raise StrategyError(f"{where}: expected {{name: metric}} or a list of {{\"name\", \"metric\"}} objects")
        pairs = doc.items() if isinstance(doc, dict) else [(_get(r, "name", where), _get(r, "metric", where)) for r in doc]
    else:
        try:
            rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        except csv.Error as exc:
            raise StrategyError(f"{where}: not a CSV table ({exc})") from None
        pairs = _csv_pairs(rows, where)
    out: dict[str, float] = {}
    for name, metric in pairs:
        name = str(name).strip()
        try:
            value = float(metric) if not isinstance(metric, bool) else None  # JSON true is no metric
        except (TypeError, ValueError):
            value = None
        if value is None:
            raise StrategyError(f"{where}: metric of {name!r} is not a number ({metric!r})")
        if not math.isfinite(value):
            raise StrategyError(f"{where}: metric of {name!r} is {'NaN' if math.isnan(value) else 'infinite'}")
        if name in out:
            raise StrategyError(f"{where}: {name!r} is listed twice (give each cell one result)")
        out[name] = value
    return out


def _read_text(p: Path, where: str) -> str:
    """The file as text, read as loader.load_file reads a spec: a regular file only (a FIFO would
    block, /dev/zero never ends), at most MAX_BYTES, UTF-8 without NULs; else one StrategyError.
    O_NONBLOCK: opening a FIFO does not wait for a writer before fstat can refuse it."""
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise StrategyError(f"{where}: not a regular file")
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise StrategyError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise StrategyError(f"{where}: too large for a results file (limit {MAX_BYTES // 1024} KiB)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StrategyError(f"{where}: not UTF-8 text (byte {exc.start}); is this a binary file?") from None
    if "\x00" in text:
        raise StrategyError(f"{where}: looks like a binary file, not CSV or JSON")
    return text


def _no_repeats(pairs: list[tuple[str, Any]], where: str) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (json.loads would keep the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrategyError(f"{where}: {key!r} is listed twice (give each cell one result)")
        out[key] = value
    return out


def _get(row: Any, key: str, where: str) -> Any:
    if not isinstance(row, dict) or key not in row:
        raise StrategyError(f"{where}: each entry needs '{key}' (got {row!r})")
    return row[key]


def _csv_pairs(rows: list[list[str]], where: str) -> list[tuple[str, str]]:
    """(name, metric) per row: two columns without a header, or a header naming them (name, cell or
    run; metric, value, loss or score). A header naming neither is refused, not guessed."""
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    if len(head) < 2:
        raise StrategyError(f"{where}: expected two columns, name and metric (got {one_line(','.join(rows[0]))!r})")
    try:
        float(rows[0][1])
        has_header = False
    except ValueError:
        has_header = True
    if not has_header:
        return [(r[0], r[1] if len(r) > 1 else "") for r in rows]
    name_col = next((head.index(k) for k in ("name", "cell", "run") if k in head), None)
    metric_col = next((head.index(k) for k in ("metric", "value", "loss", "score") if k in head), None)
    if name_col is None or metric_col is None:
        got = one_line(",".join(rows[0]))
        raise StrategyError(f"{where}: the header needs a name column (name, cell or run) and a metric column "
                            f"(metric, value, loss or score), got `{got}`")
    return [(r[name_col] if len(r) > name_col else "", r[metric_col] if len(r) > metric_col else "") for r in rows[1:]]
