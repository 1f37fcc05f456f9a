"""Small helpers the rules share: schedule values with their key paths, beta on/off, the real node."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from distillc.compiler.diagnostics import KeyPath

SCHEDULES = ("alpha", "temperature", "beta")


def node(ctx: Any, *path: Any) -> KeyPath:
    """The deepest prefix of `path` written in the file (a bare `alpha: 0.9` has no `.start`)."""
    p = tuple(path)
    while p and p not in ctx.source.spans:
        p = p[:-1]
    return p


def finding(ctx: Any, message: str, *path: Any, hint: Optional[str] = None) -> Any:
    """A Finding for the key path `path`: at its value if the user wrote it; else (a default) at
    the key of its nearest written ancestor: a defaulted `data.tokenizer` is shown at `data:`."""
    from distillc.compiler.registry import Finding

    return Finding(message, tuple(path), hint=hint, key=not written(ctx, *path))


def written(ctx: Any, *path: Any) -> bool:
    """Whether the user wrote this key (as opposed to a default filling it in)."""
    return tuple(path) in ctx.source.spans


def named_values(sched: Any) -> Iterator[tuple[KeyPath, float]]:
    """Every value a spec schedule names, with its key path below the schedule.

    constant: start; linear/cosine: start and end; piecewise: each point's value. The schedule
    takes no value outside these (linear and cosine move monotonically between their ends).
    """
    if sched.schedule == "piecewise":
        for i, (_, value) in enumerate(sched.points):
            yield ("points", i, 1), value
        return
    yield ("start",), sched.start
    if sched.schedule != "constant" and sched.end is not None:
        yield ("end",), sched.end


def schedule_values(ctx: Any, name: str) -> Iterator[tuple[KeyPath, float]]:
    """named_values of a loss schedule, each with the key path of the node written in the file."""
    for sub, value in named_values(getattr(ctx.spec.loss, name)):
        yield node(ctx, "loss", name, *sub), value


def start_value(sched: Any) -> float:
    """The value at step 0 (a piecewise table holds its first value before its first point)."""
    return sched.points[0][1] if sched.schedule == "piecewise" else sched.start


def end_value(sched: Any) -> float:
    """The value at the end of training (a constant, or a ramp without end, keeps its start)."""
    if sched.schedule == "piecewise":
        return sched.points[-1][1]
    if sched.schedule == "constant" or sched.end is None:
        return sched.start
    return sched.end


def feature_on(loss: Any) -> bool:
    """The spec asks for the feature loss: runtime/arch.feature_loss_on over beta's values (the
    runtime contract's one definition; a ramp from 0 counts)."""
    from distillc.runtime.arch import feature_loss_on

    return feature_loss_on(v for _, v in named_values(loss.beta))


def beta_zero(loss: Any) -> bool:
    """Beta is 0 at every point: a logit-only run."""
    sched = loss.beta
    if sched.schedule == "piecewise":
        return all(v == 0 for _, v in sched.points)
    return sched.start == 0 and (sched.schedule == "constant" or not sched.end)


def same_model(ctx: Any) -> bool:
    """Teacher and student name the same catalog model, or the same inline architecture."""
    t, s = ctx.spec.teacher.model, ctx.spec.student.model
    if isinstance(t, str) or isinstance(s, str):
        return t == s
    return t.model_dump() == s.model_dump()


def base_arch(ctx: Any, role: str) -> Optional[Any]:
    """The side's architecture as published (catalog or inline), before any pruning."""
    side = getattr(ctx.spec, role)
    if side is None:
        return None
    if role == "teacher":
        return ctx.teacher_arch
    if isinstance(side.model, str):
        return ctx.catalog.models.get(side.model)
    from distillc.runtime.arch import ModelArch

    return ModelArch(**side.model.model_dump())


def model_label(arch: Any) -> str:
    return arch.name if arch.name != "inline" else "the inline architecture"


def gib(x: float) -> str:
    return f"{x / float(1 << 30):.1f} GiB"


def fmt(x: float) -> str:
    """A number as the user would have written it."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"
