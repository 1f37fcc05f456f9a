"""Spec schedules -> the runtime's Schedule (one definition of the numerics, runtime/config.py).

A spec schedule is written relative to training (`{start, end, schedule}` or a piecewise table);
the plan pins it to `max_steps = train.steps`, so progress = clip(step / train.steps, 0, 1) and
the value freezes at `end` after the last step. Every field is filled: a constant carries
end = start, and a linear or cosine ramp written without `end` holds its start (the rules report
it), so the runtime never meets a missing value.
"""

from __future__ import annotations

from typing import Any, Sequence

from distillc.runtime.config import LossConfig, Schedule


def to_runtime(schedule: Any, max_steps: int) -> Schedule:
    """A spec Schedule (Constant | Linear | Cosine | Piecewise) as a concrete runtime Schedule."""
    kind = schedule.schedule
    if kind == "piecewise":
        points = tuple((int(s), float(v)) for s, v in schedule.points)
        return Schedule(kind="piecewise", start=points[0][1], end=points[-1][1], max_steps=max_steps, points=points)
    start = float(schedule.start)
    if kind == "constant" or schedule.end is None:
        return Schedule(kind=kind, start=start, end=start, max_steps=max_steps)
    return Schedule(kind=kind, start=start, end=float(schedule.end), max_steps=max_steps)


def table_steps(max_steps: int, rows: int = 11) -> tuple[int, ...]:
    """`rows` steps from 0 to max_steps, evenly spaced and rounded down (distinct, both ends kept)."""
    if max_steps < rows - 1:
        return tuple(range(max_steps + 1))
    return tuple(sorted({i * max_steps // (rows - 1) for i in range(rows)}))


def schedule_table(loss: LossConfig, steps: Sequence[int]) -> tuple[tuple[int, float, float, float], ...]:
    """(step, alpha, temperature, beta) at each step: what `distillc plan` prints."""
    return tuple((s, loss.alpha.value(s), loss.temperature.value(s), loss.beta.value(s)) for s in steps)


def describe(schedule: Schedule) -> str:
    """A one-line form: 'cosine 0.9 -> 0.5', 'constant 1', 'piecewise [(0, 0.9), (2000, 0.7)]'."""
    if schedule.kind == "constant":
        return f"constant {schedule.start:g}"
    if schedule.kind == "piecewise":
        pts = ", ".join(f"({s}, {v:g})" for s, v in schedule.points)
        return f"piecewise [{pts}]"
    return f"{schedule.kind} {schedule.start:g} -> {schedule.end:g} over {schedule.max_steps} steps"
