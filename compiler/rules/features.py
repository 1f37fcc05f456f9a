"""Rules about the feature (activation) loss: beta, layer indices, model structure."""

from __future__ import annotations

from typing import Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule


@rule(
    "DC120",
    Severity.ERROR,
    "beta starts at 0 and can never ramp up",
    needs=("loss",),
    hint="Start beta at a tiny positive value (e.g. start: 1.0e-6) and set end to your target.",
)
def beta_cannot_ramp(ctx) -> Iterator[Finding]:
    """beta = 0 at the start switches feature extraction off entirely (the per-layer activations
    are never sown, so there is nothing to align), and it is decided when the step is compiled:
    a schedule that starts at 0 and rises never turns the feature loss on. This mirrors MaxText's
    trainer, which skips the sow when distill_beta is 0.

    Fails::

        loss:
          beta: {start: 0.0, end: 0.5, schedule: cosine}

    Passes::

        loss:
          beta: {start: 1.0e-6, end: 0.5, schedule: cosine}
    """
    beta = ctx.spec.loss.beta
    if beta.schedule in ("linear", "cosine") and beta.start == 0 and (beta.end or 0) > 0:
        yield Finding(f"beta starts at 0 and rises to {beta.end}: the feature loss is never enabled", ("loss", "beta", "start"))
    elif beta.schedule == "piecewise" and beta.points[0][1] == 0 and max(v for _, v in beta.points) > 0:
        yield Finding("beta's first point is 0: the feature loss is never enabled", ("loss", "beta", "points", 0))
