"""The value bounds that the spec and the runtime config share: one definition, two readers.

The compiler reports a spec value outside them as a diagnostic at its key (rules DC130/DC131, the
spec's field constraints); runtime/config.py refuses a runtime config outside them (exit 2), so a
hand-edited or generated config cannot train what the spec would have refused. Pure Python: both
`distillc validate` and the runtime import it.
"""

from __future__ import annotations

import math
from typing import Optional, Union

# The step counter is int32 inside jitted code (optax's count, the schedules' step): a run longer
# than this would wrap to negative steps.
MAX_STEPS = 2**31 - 1

ALPHA_RANGE = (0.0, 1.0)

# Below this the soft loss stops being a distillation signal in float32: logits / T turn a logit
# gap of 1 into exp(-100) ~ 4e-44 (past float32's normal range), so both softmaxes are one-hot and
# the term sees only whether the argmaxes agree; the T^2 factor then scales it toward 0 (at
# T = 1e-30 it is exactly 0, and the run silently trains on CE alone).
MIN_TEMPERATURE = 0.01


def alpha_problem(value: float) -> Optional[str]:
    """Why `value` cannot be alpha (the soft loss's weight against CE), or None."""
    lo, hi = ALPHA_RANGE
    return None if lo <= value <= hi else f"alpha {value:g} is outside [{lo:g}, {hi:g}]"


def beta_problem(value: float) -> Optional[str]:
    """Why `value` cannot be beta (the feature loss's weight), or None."""
    return None if value >= 0.0 and math.isfinite(value) else f"beta {value:g} is not a non-negative finite number"


def temperature_problem(value: float) -> Optional[str]:
    """Why `value` cannot be the distillation temperature, or None."""
    if not (value > 0.0 and math.isfinite(value)):
        return f"temperature {value:g} is not a positive finite number"
    if value < MIN_TEMPERATURE:
        return (f"temperature {value:g} is below {MIN_TEMPERATURE:g}: both softmaxes are one-hot in float32 "
                "and the T^2 factor scales the soft loss toward 0")
    return None


def held_out_problem(eval_every: int, eval_fraction: float,
                     eval_source: Union[str, list[str], tuple[str, ...], None]) -> Optional[str]:
    """Why periodic evaluation cannot run (it needs a held-out set), or None."""
    if eval_every > 0 and eval_fraction == 0 and not eval_source:
        return (f"train.eval_every {eval_every} evaluates a held-out set, but there is none "
                "(data.eval_fraction 0 and no data.eval_source)")
    return None
