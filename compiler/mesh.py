"""The device mesh of a plan: concrete axis sizes, the per-chip batch, and the slice split.

The spec names axes (data, fsdp, tensor; `data: -1` takes what the others leave); the accelerator
and the number of slices give the device count. `memory.resolve_mesh` owns the arithmetic (the
validator's mesh rules and the memory estimate use it too); this module adds what the plan and the
renderers need on top: the batch each chip holds, and how the axes split between the fast links
inside a slice (ICI) and the network between slices (DCN), which is how MaxText names them.

Slices are spent on the data axis first, then on fsdp; tensor parallelism never crosses the slow
network. A mesh whose data and fsdp axes cannot absorb the slice count has no such split (the
MaxText renderer reports it for its target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Optional

from distillc.compiler.catalog import Accelerator
from distillc.compiler.memory import MeshShape, resolve_mesh
from distillc.runtime.config import MeshConfig


@dataclass(frozen=True)
class MeshPlan:
    data: int
    fsdp: int
    tensor: int
    num_slices: int
    chips_per_slice: int
    global_batch_size: int

    @property
    def devices(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """The batch is split over data * fsdp; tensor-parallel chips share their sequences."""
        return self.data * self.fsdp

    @property
    def per_chip_batch(self) -> Fraction:
        """Sequences each data shard holds per step (a fraction when the batch does not divide)."""
        return Fraction(self.global_batch_size, self.batch_shards)

    @property
    def per_device_batch(self) -> Fraction:
        """MaxText's per_device_batch_size: global batch over every device, tensor axis included."""
        return Fraction(self.global_batch_size, self.devices)

    def dcn_split(self) -> Optional[tuple[int, int]]:
        """(data, fsdp) ways across slices, multiplying to num_slices: as many slices as possible
        on the data axis, the rest on fsdp. None when no such split exists."""
        dcn_data = math.gcd(self.data, self.num_slices)
        rest = self.num_slices // dcn_data
        if self.fsdp % rest:
            return None
        return dcn_data, rest

    def shape(self) -> MeshShape:
        return MeshShape(self.data, self.fsdp, self.tensor)

    def config(self) -> MeshConfig:
        return _mesh_config(self.data, self.fsdp, self.tensor)


@lru_cache(maxsize=64)
def _mesh_config(data: int, fsdp: int, tensor: int) -> MeshConfig:
    return MeshConfig(data=data, fsdp=fsdp, tensor=tensor)


def plan_mesh(data: int, fsdp: int, tensor: int, accelerator: Accelerator, num_slices: int, global_batch_size: int) -> Optional[MeshPlan]:
    """The concrete mesh over accelerator.chips * num_slices devices, or None when the axes do
    not multiply to the device count (a validation error the rules report)."""
    return _plan_mesh(data, fsdp, tensor, accelerator.chips, num_slices, global_batch_size)


@lru_cache(maxsize=256)
def _plan_mesh(data: int, fsdp: int, tensor: int, chips: int, num_slices: int, global_batch_size: int) -> Optional[MeshPlan]:
    """plan_mesh on integers (cached: an ablation plans the same few meshes thousands of times)."""
    shape = resolve_mesh(data, fsdp, tensor, chips * num_slices)
    if shape is None:
        return None
    return MeshPlan(shape.data, shape.fsdp, shape.tensor, num_slices, chips, global_batch_size)


def format_batch(value: Fraction) -> str:
    """'4' for whole numbers, else the exact fraction and its decimal: '3/2 (1.5)'."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator} ({float(value):.4g})"
