"""How much accelerator memory one chip needs for a distillation stage: a pure-Python estimate.

Used by rule DC152/DC153 (does the spec fit the accelerator?) and by the resolver's plan. It is an
estimate of the steady-state peak, per chip, in bytes; it errs on the side of too much. Every
assumption is listed here, in one place.

Sharding (the mesh is data x fsdp x tensor over chips * num_slices devices):
  * parameters, gradients and optimizer state are sharded over fsdp * tensor (ZeRO-3-style FSDP
    plus tensor parallelism) and replicated over `data`: that is what distinguishes the data axis
    from the fsdp axis (as in MaxText, whose logical rules never shard weights over `data`);
  * the batch is sharded over data * fsdp; the hidden/head dimensions over tensor; the logits'
    vocabulary dimension over tensor.

Components (P = parameters, from the catalog; bytes per parameter in brackets):
  * teacher weights: frozen, no gradients or optimizer: P_t * [2] in bfloat16 (our default), or
    P_t * [4] where `teacher.overrides.weight_dtype: float32` (MaxText's default weight_dtype is
    float32, so a MaxText-style teacher costs twice our default);
  * student weights + gradients + optimizer: float32 master weights [4] + a bfloat16 compute copy
    [2] + float32 gradients [4] + Adam's two moments in float32 [8] = [18]; with
    `student.overrides.weight_dtype: bfloat16`: weights [2] + gradients [2] + moments [8] = [12];
  * activations, from Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", eq. 2 and table 2): one transformer layer of a micro-batch of b
    sequences of length s, hidden size h, a heads, tensor-parallel degree t keeps
        s*b*h*(10 + 24/t + 5*a*s/(h*t))  bytes      (16-bit activations; t = 1: s*b*h*(34 + 5*a*s/h))
    for its backward pass. The student (L layers) keeps, by remat policy:
        none:    L * that
        minimal: L * s*b*h*(10 + 24/t) + one layer's attention scores (selective recomputation)
        full:    L * 2*s*b*h (only each layer's input) + one full layer (recomputed in backward)
    The teacher runs forward only, so one layer's activations are live at a time. The feature loss
    adds the sown out-projection activations, 2*s*b*h per selected layer on each side. The formula
    assumes a 4h MLP and materialized attention scores (no flash attention): an overestimate for
    flash/splash attention, and roughly right for SwiGLU MLPs of ~3.5h. float32 activations
    double it;
  * logits: [tokens x vocab] in float32 per model: teacher logits, student logits and the
    gradient of the student's logits (3 copies online; 2 offline, plus the cached top-k values
    and ids; 1 when only the teacher runs, to capture top-k), vocabulary sharded over tensor.

Usable memory is the accelerator's HBM per chip times its usable fraction (catalog).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Literal, NamedTuple, Optional

from distillc.compiler.side_defaults import DEFAULT_REMAT, settings_of

if TYPE_CHECKING:  # pragma: no cover
    from distillc.compiler.catalog import Accelerator
    from distillc.compiler.parse import PartialSpec
    from distillc.compiler.spec import Loss, Spec
    from distillc.runtime.arch import ModelArch
    from distillc.runtime.config import RuntimeConfig

GiB = float(1 << 30)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
Remat = Literal["none", "minimal", "full"]


class MeshShape(NamedTuple):
    """Concrete mesh axis sizes (after `data: -1` is resolved)."""

    data: int
    fsdp: int
    tensor: int

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        """Data-parallel ways: the batch is split over data * fsdp."""
        return self.data * self.fsdp

    @property
    def param_shards(self) -> int:
        """Ways each parameter tensor is split: fsdp * tensor (replicated over data)."""
        return self.fsdp * self.tensor


def resolve_mesh(data: int, fsdp: int, tensor: int, devices: int) -> Optional[MeshShape]:
    """The mesh for `devices` devices, or None if invalid. At most one of data and fsdp may be -1:
    it takes what the other two axes leave (devices / their product, which must divide); every
    other axis is at least 1."""
    if devices < 1 or tensor < 1 or (data == -1 and fsdp == -1):
        return None
    if (data < 1 and data != -1) or (fsdp < 1 and fsdp != -1):
        return None
    if data == -1:
        if devices % (fsdp * tensor):
            return None
        data = devices // (fsdp * tensor)
    elif fsdp == -1:
        if devices % (data * tensor):
            return None
        fsdp = devices // (data * tensor)
    if data * fsdp * tensor != devices:
        return None
    return MeshShape(data, fsdp, tensor)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per chip, by component, for one stage (see the module docstring for the model)."""

    teacher_weights: float
    student_weights: float  # master weights + compute copy
    student_grads: float
    student_optimizer: float
    activations: float
    logits: float
    usable: float
    accelerator: str = ""
    devices: int = 1

    @property
    def total(self) -> float:
        return (
            self.teacher_weights
            + self.student_weights
            + self.student_grads
            + self.student_optimizer
            + self.activations
            + self.logits
        )

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def components(self) -> dict[str, float]:
        """Non-zero components, largest first, in bytes."""
        parts = {
            "teacher weights": self.teacher_weights,
            "student weights": self.student_weights,
            "student gradients": self.student_grads,
            "student optimizer": self.student_optimizer,
            "activations": self.activations,
            "logits": self.logits,
        }
        return dict(sorted(((k, v) for k, v in parts.items() if v > 0), key=lambda kv: -kv[1]))

    def breakdown(self) -> str:
        """'teacher weights 94.3 GiB, logits 6.1 GiB, ...'"""
        return ", ".join(f"{k} {v / GiB:.1f} GiB" for k, v in self.components().items())


def _layer_bytes(s: float, b: float, h: int, a: int, t: int) -> float:
    """Korthikanti et al. 2022: activation bytes one layer keeps for backward (16-bit)."""
    return s * b * h * (10.0 + 24.0 / t + 5.0 * a * s / (h * t))


def estimate_memory(
    teacher: Optional["ModelArch"],
    student: Optional["ModelArch"],
    *,
    accelerator: "Accelerator",
    mesh: MeshShape,
    seq_len: int,
    global_batch_size: int,
    teacher_dtype: str = "bfloat16",
    student_dtype: str = "float32",
    activation_dtype: str = "bfloat16",
    remat: str = DEFAULT_REMAT,
    feature_layers: int = 0,
    top_k: Optional[int] = None,
) -> MemoryEstimate:
    """Per-chip memory of one stage. `teacher`/`student` is None when that model is not loaded.

    Online training: both. Offline training: student only (pass `top_k`). Top-k capture: teacher only.
    `mesh` is the concrete mesh over every device (chips * num_slices); `remat` is the student's
    policy; `feature_layers` the number of aligned layers (0 = logit-only).
    """
    shards = mesh.param_shards
    t = mesh.tensor
    s = float(seq_len)
    b = math.ceil(global_batch_size / mesh.batch_shards)  # sequences per chip
    tokens = s * b
    act_scale = DTYPE_BYTES.get(activation_dtype, 2) / 2.0

    teacher_w = 0.0
    teacher_act = 0.0
    if teacher is not None:
        teacher_w = teacher.param_count() * DTYPE_BYTES.get(teacher_dtype, 2) / shards
        teacher_act = _layer_bytes(s, b, teacher.emb_dim, teacher.num_heads, t)
        teacher_act += feature_layers * 2 * s * b * teacher.emb_dim

    student_w = student_g = student_o = student_act = 0.0
    if student is not None:
        p = student.param_count() / shards
        w = DTYPE_BYTES.get(student_dtype, 4)
        student_w = p * (w + (2 if w == 4 else 0))  # master + bf16 compute copy
        student_g = p * w
        student_o = p * 8  # Adam mu and nu in float32
        h, a, n = student.emb_dim, student.num_heads, student.num_layers
        full_layer = _layer_bytes(s, b, h, a, t)
        if remat == "none":
            student_act = n * full_layer
        elif remat == "minimal":
            student_act = n * s * b * h * (10.0 + 24.0 / t) + s * b * h * 5.0 * a * s / (h * t)
        else:
            student_act = n * 2 * s * b * h + full_layer
        student_act += feature_layers * 2 * s * b * h

    vocab = max((m.vocab_size for m in (teacher, student) if m is not None), default=0)
    copies = (1 if teacher is not None else 0) + (2 if student is not None else 0)
    logits = copies * tokens * vocab * 4.0 / t
    if top_k and teacher is None and student is not None:
        logits += tokens * top_k * 8.0  # cached float32 values + int32 ids

    return MemoryEstimate(
        teacher_weights=teacher_w,
        student_weights=student_w,
        student_grads=student_g,
        student_optimizer=student_o,
        activations=(teacher_act + student_act) * act_scale,
        logits=logits,
        usable=accelerator.usable_hbm_bytes,
        accelerator=accelerator.name,
        devices=mesh.size,
    )


# ---------------------------------------------------------------- from a compiled config


def estimate_config(
    cfg: "RuntimeConfig",
    accelerator: "Accelerator",
    mesh: MeshShape,
    *,
    teacher_runs: bool = True,
    estimate: Any = estimate_memory,
) -> MemoryEstimate:
    """estimate_memory for one compiled stage, with its resolved dtypes and remat: what the plan
    shows and what `launch --local` checks against the devices it finds. `teacher_runs` False for
    an online config that loads no teacher (a CE-only baseline); `estimate` is estimate_memory or
    a cached copy of it (the resolver's)."""
    t, s = cfg.teacher, cfg.student
    common = dict(accelerator=accelerator, mesh=mesh, seq_len=cfg.data.seq_len, global_batch_size=cfg.data.global_batch_size)
    if cfg.stage == "save_topk":
        return estimate(t.arch, None, teacher_dtype=t.weight_dtype, activation_dtype=t.activation_dtype, remat=t.remat, **common)
    if cfg.offline is not None or not teacher_runs:
        top_k = cfg.offline.top_k if cfg.offline is not None else None
        return estimate(None, s.arch, student_dtype=s.weight_dtype, activation_dtype=s.activation_dtype, remat=s.remat,
                        top_k=top_k, **common)
    act = "float32" if "float32" in (t.activation_dtype, s.activation_dtype) else "bfloat16"
    return estimate(t.arch, s.arch, teacher_dtype=t.weight_dtype, student_dtype=s.weight_dtype, activation_dtype=act,
                    remat=s.remat, feature_layers=len(cfg.loss.layer_pairs), **common)


# ---------------------------------------------------------------- from a spec


def feature_layer_count(loss: Loss, pruned_layers: Iterable[int] = ()) -> int:
    """How many layers the feature loss aligns (0 when beta is 0 throughout: nothing is sown)."""
    from distillc.compiler.rules._util import feature_on

    layers = loss.layers
    if not feature_on(loss) or layers is None:
        return 0
    if layers.strategy == "explicit":
        return len(layers.pairs or layers.indices or [])
    if layers.strategy == "straddle_pruned":
        blocks = 0
        prev = None
        for i in sorted(set(pruned_layers)):
            blocks += prev is None or i != prev + 1
            prev = i
        return 2 * blocks
    return int(layers.count)


def estimate_spec(
    spec: Spec | PartialSpec,
    teacher: "ModelArch",
    student: "ModelArch",
    accelerator: "Accelerator",
) -> Optional[dict[str, MemoryEstimate]]:
    """The estimate of every stage a spec runs, keyed 'train' (online), or 'save_topk' and 'train'
    (offline), with the resolver's defaults for what the spec leaves open (side_defaults.py).
    `spec` is a Spec, or a PartialSpec whose sections read here parsed (DC152's needs); `student` is
    the student's own architecture (pruned layers removed). None when the mesh does not resolve for
    the devices."""
    runtime, resources, data, loss = spec.runtime, spec.resources, spec.data, spec.loss
    teacher_side, student_side = spec.teacher, spec.student
    parsed = (runtime, resources, data, loss, teacher_side, student_side)
    assert runtime is not None and resources is not None and data is not None and loss is not None, parsed
    assert teacher_side is not None and student_side is not None, parsed  # parsed (see above)
    mesh_cfg = runtime.mesh
    devices = accelerator.chips * resources.num_slices
    mesh = resolve_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices)
    if mesh is None:
        return None
    cpu = accelerator.kind == "cpu"
    t = settings_of("teacher", teacher_side.overrides, cpu)
    s = settings_of("student", student_side.overrides, cpu)
    stage = partial(
        estimate_memory,
        accelerator=accelerator,
        mesh=mesh,
        seq_len=data.seq_len,
        global_batch_size=data.global_batch_size,
        teacher_dtype=t.weight_dtype,
        student_dtype=s.weight_dtype,
    )
    if spec.mode == "offline":
        top_k = spec.offline.top_k if spec.offline is not None else None
        return {
            "save_topk": stage(teacher, None, activation_dtype=t.activation_dtype, remat=t.remat),
            "train": stage(None, student, activation_dtype=s.activation_dtype, remat=s.remat, top_k=top_k),
        }
    features = feature_layer_count(loss, student_side.pruned_layers)
    act = "float32" if "float32" in (t.activation_dtype, s.activation_dtype) else "bfloat16"
    return {"train": stage(teacher, student, activation_dtype=act, remat=s.remat, feature_layers=features)}
