"""Rules about the loss-weight schedules alpha, temperature and beta (DC13x).

Each schedule is a constant, a linear or cosine ramp from start to end, or a piecewise table; the
values a schedule takes lie between the values it names (see `_util.schedule_values`), so checking
those values checks every step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import SCHEDULES, end_value, fmt, node, schedule_values, start_value
from distillc.runtime.bounds import MIN_TEMPERATURE, alpha_problem, beta_problem, temperature_problem

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC130",
    Severity.ERROR,
    "alpha outside [0, 1] or beta negative",
    needs=("loss",),
    hint="alpha weighs the soft loss against the hard loss: keep it in [0, 1]. beta is a non-negative weight.",
)
def weight_range(ctx: Context) -> Iterator[Finding]:
    """total = alpha * KL * T^2 + (1 - alpha) * CE + beta * feature. alpha outside [0, 1] gives
    one of the two terms a negative weight: the optimizer then maximizes that loss. A negative
    beta rewards the student for moving its activations away from the teacher's. Every value the
    schedule names is checked (start, end, each piecewise point).

    Fails::

        loss:
          alpha: {start: 1.2, end: 0.5, schedule: cosine}

    Passes::

        loss:
          alpha: {start: 1.0, end: 0.5, schedule: cosine}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for name, problem in (("alpha", alpha_problem), ("beta", beta_problem)):
        for path, value in schedule_values(ctx, name):
            if (why := problem(value)) is not None:
                yield Finding(why, path)


@rule(
    "DC131",
    Severity.ERROR,
    "temperature not positive, or too small to distil",
    needs=("loss",),
    hint=f"Use a temperature >= {MIN_TEMPERATURE:g}: 1 is the raw softmax, 2 is the usual starting point.",
)
def temperature_positive(ctx: Context) -> Iterator[Finding]:
    """The soft loss compares softmax(logits / T) of both models: T = 0 divides by zero, a
    negative T inverts the distributions (the least likely token becomes the most likely), and an
    infinite one flattens both to uniform. Below 0.01 both softmaxes are one-hot in float32 and the
    T^2 factor scales the term toward 0 (at 1e-30 it is exactly 0: CE alone trains). The runtime
    config refuses the same values (runtime/bounds.py).

    Fails::

        loss:
          temperature: 0.0

    Passes::

        loss:
          temperature: 1.0
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for path, value in schedule_values(ctx, "temperature"):
        if (why := temperature_problem(value)) is not None:
            yield Finding(why, path)


@rule(
    "DC132",
    Severity.WARNING,
    "temperature above 8",
    needs=("loss",),
    hint="Start at T = 2 and anneal toward 1 (the guide's common pattern); 4 is already very flat.",
)
def temperature_high(ctx: Context) -> Iterator[Finding]:
    """A higher temperature softens both distributions and transfers more "dark knowledge", but
    past about 4 they are very flat, and past 8 the soft loss's gradient all but vanishes even
    with the T^2 scaling: the student learns little from the teacher.

    Fails::

        loss:
          temperature: 10.0

    Passes::

        loss:
          temperature: {start: 2.0, end: 1.0, schedule: cosine}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for path, value in schedule_values(ctx, "temperature"):
        if 8.0 < value < math.inf:
            yield Finding(f"temperature {fmt(value)} flattens both distributions almost to uniform", path)


@rule(
    "DC133",
    Severity.WARNING,
    "temperature below 1",
    needs=("loss",),
    hint="Use T >= 1: 1 matches the dominant token fastest, 2 transfers more of the teacher's ranking.",
)
def temperature_low(ctx: Context) -> Iterator[Finding]:
    """T < 1 sharpens both distributions beyond the raw softmax, so the soft loss sees mostly the
    teacher's top token and little of the relative ranking of the others, the "dark knowledge"
    distillation is for; it also narrows the teacher's distribution (the guide's "teacher
    distribution too narrow" row, whose fix is to raise the temperature).

    Fails::

        loss:
          temperature: 0.5

    Passes::

        loss:
          temperature: 1.0
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for path, value in schedule_values(ctx, "temperature"):
        if MIN_TEMPERATURE <= value < 1.0:
            yield Finding(f"temperature {fmt(value)} sharpens the teacher's distribution", path)


@rule(
    "DC134",
    Severity.WARNING,
    "end given to a constant schedule",
    needs=("loss",),
    hint="Add schedule: cosine (or linear) to move from start to end, or remove end.",
)
def constant_end_ignored(ctx: Context) -> Iterator[Finding]:
    """A constant schedule stays at `start`; its `end` is ignored. A schedule without a
    `schedule:` key is constant, so `{start: 0.9, end: 0.5}` never decays: a common slip (in
    MaxText's flat keys, `distill_alpha_end` with the default `constant` schedule does nothing).

    Fails::

        loss:
          alpha: {start: 0.9, end: 0.5}

    Passes::

        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for name in SCHEDULES:
        sched = getattr(ctx.spec.loss, name)
        if sched.schedule == "constant" and sched.end is not None and sched.end != sched.start:
            how = "has no schedule key, so it is constant" if ("loss", name, "schedule") not in ctx.source.spans else "is constant"
            yield Finding(f"{name} {how}: end {fmt(sched.end)} is ignored", node(ctx, "loss", name, "end"))


@rule(
    "DC135",
    Severity.ERROR,
    "ramp schedule without an end",
    needs=("loss",),
    hint="Add end: the value at train.steps (e.g. alpha {start: 0.9, end: 0.5, schedule: cosine}).",
)
def ramp_needs_end(ctx: Context) -> Iterator[Finding]:
    """linear and cosine move from `start` at step 0 to `end` at train.steps; without an end
    there is nowhere to go (MaxText silently keeps the value fixed when *_end is None).

    Fails::

        loss:
          alpha: {start: 0.9, schedule: cosine}

    Passes::

        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for name in SCHEDULES:
        sched = getattr(ctx.spec.loss, name)
        if sched.schedule in ("linear", "cosine") and sched.end is None:
            yield Finding(f"{name} has schedule {sched.schedule} but no end", node(ctx, "loss", name, "schedule"))


@rule(
    "DC136",
    Severity.ERROR,
    "piecewise steps not strictly increasing",
    needs=("loss",),
    hint="List points as [step, value] with steps >= 0 in strictly increasing order.",
)
def piecewise_order(ctx: Context) -> Iterator[Finding]:
    """A schedule table interpolates linearly between consecutive (step, value) points; that needs
    steps that start at 0 or later and strictly increase (two points at one step would make the
    value jump, and a step going back is ambiguous).

    Fails::

        loss:
          alpha: {schedule: piecewise, points: [[0, 0.9], [2000, 0.7], [1000, 0.5]]}

    Passes::

        loss:
          alpha: {schedule: piecewise, points: [[0, 0.9], [100, 0.7], [300, 0.5]]}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    for name in SCHEDULES:
        sched = getattr(ctx.spec.loss, name)
        if sched.schedule != "piecewise":
            continue
        prev = None
        for i, (step, _) in enumerate(sched.points):
            path = node(ctx, "loss", name, "points", i, 0)
            if step < 0:
                yield Finding(f"{name} point {i} has a negative step {step}", path)
            elif prev is not None and step <= prev:
                yield Finding(f"{name} point {i} at step {step} does not come after step {prev}", path)
            prev = step if prev is None else max(prev, step)


@rule(
    "DC137",
    Severity.WARNING,
    "piecewise point beyond train.steps",
    needs=("loss", "train"),
    hint="Put the last point at or before train.steps; the value at train.steps is what the run ends with.",
)
def piecewise_beyond_end(ctx: Context) -> Iterator[Finding]:
    """Training stops at train.steps: a point after it is never reached, and the run ends on a
    value interpolated toward it rather than on the value the table names.

    Fails::

        loss:
          alpha: {schedule: piecewise, points: [[0, 0.9], [1000, 0.5]]}

    Passes::

        loss:
          alpha: {schedule: piecewise, points: [[0, 0.9], [400, 0.5]]}
    """
    assert ctx.spec.loss is not None and ctx.spec.train is not None  # needs: the registry runs the rule only then
    steps = ctx.spec.train.steps
    for name in SCHEDULES:
        sched = getattr(ctx.spec.loss, name)
        if sched.schedule != "piecewise":
            continue
        for i, (step, _) in enumerate(sched.points):
            if step > steps:
                yield Finding(f"{name} point at step {step} is after the last step ({steps})", node(ctx, "loss", name, "points", i, 0))
                break


@rule(
    "DC138",
    Severity.WARNING,
    "alpha rises instead of decaying",
    needs=("loss",),
    hint="Decay alpha high to low, e.g. {start: 0.9, end: 0.5, schedule: cosine}.",
)
def alpha_rising(ctx: Context) -> Iterator[Finding]:
    """Early on, a damaged or small student learns most from the teacher's dense distribution
    (high alpha); late in training the KL has diminishing returns and the teacher's errors start
    to bake in, so alpha should come down toward the labels (the guide's alpha schedule table:
    every recommended schedule is constant or decays).

    Fails::

        loss:
          alpha: {start: 0.5, end: 0.9, schedule: cosine}

    Passes::

        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    sched = ctx.spec.loss.alpha
    if sched.schedule != "constant" and end_value(sched) > start_value(sched):
        path = node(ctx, "loss", "alpha", *(("points", len(sched.points) - 1, 1) if sched.schedule == "piecewise" else ("end",)))
        yield Finding(f"alpha rises from {fmt(start_value(sched))} to {fmt(end_value(sched))}", path)


def _shape_params(arch) -> int:
    return arch.model_copy(update={"params": None}).param_count()


@rule(
    "DC139",
    Severity.WARNING,
    "alpha never decays in a same-size run",
    needs=("loss", "teacher_arch", "student_arch"),
    hint="Decay alpha, e.g. {start: 0.9, end: 0.5, schedule: cosine} (the guide's same-size default).",
)
def alpha_locked(ctx: Context) -> Iterator[Finding]:
    """When student and teacher are about the same size (pruning recovery, self-distillation),
    an alpha that stays at 0.8 or above for the whole run locks the student into the teacher's
    behaviour, errors included, and it cannot overtake the teacher on label-grounded tasks (the
    guide's "student plateaus at the teacher" row: decay alpha). Constant alpha = 1.0 is right for
    a large teacher and a much smaller student, which this rule leaves alone. An alpha outside
    [0, 1] is DC130's error, not this warning.

    Fails::

        student:
          model: tiny-teacher
        loss:
          alpha: 0.9

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
    """
    assert ctx.spec.loss is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    t, s = ctx.teacher_arch, ctx.student_arch
    if _shape_params(s) < 0.75 * _shape_params(t):
        return
    values = [v for _, v in schedule_values(ctx, "alpha")]
    if not all(0.0 <= v <= 1.0 for v in values):
        return  # DC130 reports an alpha outside [0, 1]; "locked at 1.5" would only repeat it
    low = min(values)
    if low >= 0.8:
        yield Finding(
            f"alpha stays at or above {fmt(low)} for the whole run of a same-size student", node(ctx, "loss", "alpha")
        )
