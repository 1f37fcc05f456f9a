"""When two cells are one experiment: they resolve to the same plan.

Every valid cell is resolved (compiler/resolve.py) under the base spec's name, and the plan is
reduced to a fingerprint of what the runs would do:
- the runtime configs, the workloads, the accelerator and the mesh;
- a schedule that cannot move is a constant (a linear or cosine ramp whose end equals its start,
  a table whose values are all equal): `end` does not matter for a constant schedule;
- without a feature loss (beta 0 at step 0, or no layers) `feature_loss` and the layer pairs are
  dropped: layer choices do not matter when beta is 0.
The resolver reads the loss section through the recording proxy of the rules (track.py; every
other section counts as read), so a cell that agrees with an earlier one on everything the
resolver read reuses its fingerprint: with beta 0 the resolver never looks at loss.layers, so the
layer choices of a logit-only cell are resolved once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Union

from distillc.compiler.ablation.evaluate import DepMemo, Relevance, _with
from distillc.compiler.ablation.track import FieldReads, Recorder
from distillc.compiler.check import Checked
from distillc.compiler.resolve import PlanError, resolve, resolve_checked
from distillc.compiler.spec import SECTIONS
from distillc.runtime.config import LossConfig


class Unresolvable(str):
    """The resolver's message for a cell it rejected (kept in the memo like a fingerprint)."""


def _schedule(s: Any) -> tuple:
    """A runtime Schedule as a tuple; one that cannot move is a constant."""
    kind, start, end, points = s.kind, s.start, s.end, s.points
    if kind in ("linear", "cosine") and start == end:
        kind = "constant"
    elif kind == "piecewise" and len({v for _, v in points}) == 1:
        kind, start, end, points = "constant", points[0][1], points[0][1], ()
    return (kind, start, end, s.max_steps, points)


def fingerprint(plan: Any) -> tuple:
    """What the plan's runs would do, as a hashable value (names are the base's for every cell)."""
    parts: list[Any] = [plan.accelerator.name, plan.mesh, plan.workloads]
    for cfg in plan.configs:
        loss = cfg.loss
        on = loss.feature_enabled
        parts += [
            cfg.model_dump_json(exclude=_LOSS),
            tuple(_schedule(getattr(loss, k)) for k in ("alpha", "temperature", "beta")),
            loss.feature_loss if on else None,
            tuple((p.teacher, p.student) for p in loss.layer_pairs) if on else (),
            tuple(getattr(loss, f) for f in _OTHER_LOSS),
        ]
    return tuple(parts)


_LOSS = {"loss"}
_CANONICAL = ("alpha", "temperature", "beta", "feature_loss", "layer_pairs")
_OTHER_LOSS = tuple(f for f in LossConfig.model_fields if f not in _CANONICAL)  # kept as they are
_NOT_LOSS = tuple((s,) for s in SECTIONS if s != "loss")


class PlanKeys:
    """Plan fingerprints of checked cells, memoized on the axes the resolver read."""

    def __init__(self, relevance: Any) -> None:
        self.memo = DepMemo(relevance if isinstance(relevance, Relevance) else Relevance(relevance))

    @property
    def resolved(self) -> int:
        return self.memo.runs

    def __call__(self, checked: Checked, vals: tuple[int, ...]) -> Union[bytes, Unresolvable]:
        """A 16-byte digest of the cell's plan fingerprint, or why it could not be resolved."""
        hit = self.memo.lookup(vals)
        if hit is not None:
            return hit
        rec = Recorder()
        # Every section but loss counts as read whole (a superset of what the resolver reads, so
        # sound, and free); loss is tracked field by field, where the conditional axes live.
        rec.paths.update(_NOT_LOSS)
        ctx = checked.context
        # The resolver reads the spec's sections as attributes; the PartialSpec has them all (a
        # valid cell has none missing), so it stands in for Spec.model_construct at a tenth the cost.
        spec = _with(checked.spec, loss=FieldReads(checked.spec.loss, ("loss",), rec))
        try:
            plan = resolve(spec, ctx.teacher_arch, ctx.student_arch, ctx.accelerator)
        except PlanError as exc:
            key: Union[bytes, Unresolvable] = Unresolvable(str(exc))
        else:
            key = digest(plan)
        self.memo.store(vals, rec, key)
        return key


def digest(plan: Any) -> bytes:
    """16 bytes for the fingerprint: what the memo keeps and forked workers send back."""
    return hashlib.blake2b(repr(fingerprint(plan)).encode(), digest_size=16).digest()


def plan_key(checked: Checked) -> bytes:
    """The digest of one checked, valid spec's plan, through resolve_checked (no memo)."""
    return digest(resolve_checked(checked))
