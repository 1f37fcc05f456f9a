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
import operator
from itertools import repeat
from typing import Any, Callable, Optional, Sequence, Union, cast

from pydantic import BaseModel

from distillc.compiler.ablation.evaluate import DepMemo, Relevance, _with
from distillc.compiler.ablation.track import FieldReads, Recorder
from distillc.compiler.check import Checked
from distillc.compiler.resolve import PlanError, resolve, resolve_checked
from distillc.compiler.spec import SECTIONS, Spec
from distillc.runtime.config import LossConfig, RuntimeConfig


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


def fingerprint(plan: Any, parts: Optional[Callable[[Sequence[Any]], tuple]] = None) -> tuple:
    """What the plan's runs would do, as a hashable value (names are the base's for every cell):
    the accelerator's name, then the mesh, the workloads and each runtime config's fields, every
    part that is not a scalar reduced to 16 bytes (`parts` maps values to their `part_digest`s)."""
    parts = parts or _digests
    out: list[Any] = [plan.accelerator.name, *parts((plan.mesh, plan.workloads))]
    for cfg in plan.configs:
        out.append(parts(_config_fields(cfg)))
    return tuple(out)


def _digests(values: Sequence[Any]) -> tuple:
    return tuple(map(part_digest, values))


def part_digest(value: Any) -> Any:
    """A part of a plan in its fingerprint: a scalar as it is; a config as a digest of its JSON
    (the loss of its canonical form); anything else (mesh, workloads) of its repr."""
    if value is None or isinstance(value, _SCALARS):
        return value
    if isinstance(value, LossConfig):
        return _blake(repr(_loss_part(value)))
    if isinstance(value, BaseModel):
        return _blake(value.model_dump_json())
    return _blake(repr(value))


def _loss_part(loss: LossConfig) -> tuple:
    on = loss.feature_enabled
    return (
        tuple(_schedule(getattr(loss, k)) for k in ("alpha", "temperature", "beta")),
        loss.feature_loss if on else None,
        tuple((p.teacher, p.student) for p in loss.layer_pairs) if on else (),
        tuple(getattr(loss, f) for f in _OTHER_LOSS),
    )


def _blake(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_SCALARS = (str, int, float, bool)
_MISSING = object()
_config_fields = operator.attrgetter(*RuntimeConfig.model_fields)
_CANONICAL = ("alpha", "temperature", "beta", "feature_loss", "layer_pairs")
_OTHER_LOSS = tuple(f for f in LossConfig.model_fields if f not in _CANONICAL)  # kept as they are
_NOT_LOSS = tuple((s,) for s in SECTIONS if s != "loss")


class PlanKeys:
    """Plan fingerprints of checked cells, memoized on the axes the resolver read."""

    def __init__(self, relevance: Any) -> None:
        self.memo = DepMemo(relevance if isinstance(relevance, Relevance) else Relevance(relevance))
        # fingerprint parts by identity: the resolver's caches hand the same frozen sub-configs
        # to many plans. `_alive` holds each object, so that no other object takes its id.
        self._part_of: dict[int, Any] = {}
        self._alive: list[Any] = []

    def _parts(self, values: Sequence[Any]) -> tuple:
        """part_digest of each value, memoized by identity (the lookups run in C: a plan has
        about twenty parts, and all but one or two were seen in an earlier plan)."""
        ids = tuple(map(id, values))
        found = tuple(map(self._part_of.get, ids, repeat(_MISSING)))
        if _MISSING not in found:
            return found
        for value, i in zip(values, ids):
            if i not in self._part_of:
                self._part_of[i] = part_digest(value)
                self._alive.append(value)
        return tuple(map(self._part_of.__getitem__, ids))

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
        # Only cells that check clean are resolved: every section parsed and bound.
        assert ctx is not None and checked.spec.loss is not None
        assert ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.accelerator is not None
        # The resolver reads the spec's sections as attributes; the PartialSpec has them all (a
        # valid cell has none missing), so it stands in for Spec.model_construct at a tenth the cost.
        spec = _with(checked.spec, loss=FieldReads(checked.spec.loss, ("loss",), rec))
        try:
            plan = resolve(cast(Spec, spec), ctx.teacher_arch, ctx.student_arch, ctx.accelerator)
        except PlanError as exc:
            key: Union[bytes, Unresolvable] = Unresolvable(str(exc))
        else:
            key = digest(plan, self._parts)
        self.memo.store(vals, rec, key)
        return key


def digest(plan: Any, parts: Optional[Callable[[Sequence[Any]], tuple]] = None) -> bytes:
    """16 bytes for the fingerprint: what the memo keeps and forked workers send back."""
    return _blake(repr(fingerprint(plan, parts)))


def plan_key(checked: Checked) -> bytes:
    """The digest of one checked, valid spec's plan, through resolve_checked (no memo)."""
    return digest(resolve_checked(checked))
