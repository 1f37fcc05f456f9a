"""Schedules as jnp functions of a (possibly traced) step, equal to `config.Schedule.value`.

The definition lives in `runtime.config` as plain Python (the compiler's plan table uses it); this
module evaluates the same formulas with jnp so they run inside jit with a traced step. Tests check
equality at every step. Also: the learning-rate schedule of `OptimizerConfig` as an optax schedule.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distillc.runtime.config import LossConfig, OptimizerConfig, Schedule

Array = jax.Array


def schedule_fn(s: Schedule) -> Callable[[Array], Array]:
    """step (int or float, scalar, traced or not) -> float32 scalar equal to `s.value(step)`.

    progress p = clip(step / max_steps, 0, 1); constant: start; linear: start + (end - start) p;
    cosine: end + (start - end) (1 + cos(pi p)) / 2; piecewise: linear interpolation between the
    (step, value) points, holding the first value before them and the last after them.
    """
    start, end, max_steps = float(s.start), float(s.end), float(s.max_steps)
    if s.kind == "constant":
        return lambda step: jnp.full((), start, jnp.float32)
    if s.kind == "piecewise":
        xs = np.asarray([p[0] for p in s.points], np.float32)
        ys = np.asarray([p[1] for p in s.points], np.float32)
        # jnp.interp holds ys[0] left of xs[0] and ys[-1] right of xs[-1], as Schedule.value does.
        return lambda step: jnp.interp(jnp.asarray(step, jnp.float32), xs, ys).astype(jnp.float32)

    def progress(step):
        return jnp.clip(jnp.asarray(step, jnp.float32) / max_steps, 0.0, 1.0)

    if s.kind == "linear":
        return lambda step: start + (end - start) * progress(step)
    if s.kind == "cosine":
        return lambda step: end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress(step)))
    raise ValueError(f"unknown schedule kind {s.kind!r}")


def loss_weights(loss: LossConfig) -> Callable[[Array], tuple[Array, Array, Array]]:
    """step -> (alpha, temperature, beta) for the loss config, jit-friendly."""
    fa, ft, fb = schedule_fn(loss.alpha), schedule_fn(loss.temperature), schedule_fn(loss.beta)
    return lambda step: (fa(step), ft(step), fb(step))


def learning_rate_schedule(opt: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> learning_rate over warmup_steps, then `decay` to end_learning_rate at total_steps.

    decay: cosine (half cosine), linear, or constant (stays at learning_rate; end ignored).
    """
    lr, end, warm = opt.learning_rate, opt.end_learning_rate, opt.warmup_steps
    decay_steps = max(total_steps - warm, 1)
    if opt.decay == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr)
    elif opt.decay == "linear":
        after = optax.linear_schedule(lr, end, decay_steps)
    elif opt.decay == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown decay {opt.decay!r}")
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])
