"""Rules about the mesh, the accelerator and memory (DC15x). The numbers come from the catalogs and
compiler/memory.py; validation never probes a device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional

from distillc.compiler.diagnostics import Severity
from distillc.compiler.memory import MemoryEstimate, MeshShape, estimate_spec, resolve_mesh
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import finding, gib, model_label

if TYPE_CHECKING:
    from distillc.compiler.check import Context


def _devices(ctx: Context) -> int:
    assert ctx.accelerator is not None and ctx.spec.resources is not None  # the callers' needs
    return ctx.accelerator.chips * ctx.spec.resources.num_slices


def _where(ctx: Context) -> str:
    assert ctx.accelerator is not None and ctx.spec.resources is not None  # the callers' needs
    n = ctx.spec.resources.num_slices
    slices = f" x {n} slices" if n > 1 else ""
    n = _devices(ctx)
    return f"{ctx.accelerator.name}{slices} ({n} device{'' if n == 1 else 's'})"


def _mesh(ctx: Context) -> Optional[MeshShape]:
    assert ctx.spec.runtime is not None  # the callers' needs
    m = ctx.spec.runtime.mesh
    return resolve_mesh(m.data, m.fsdp, m.tensor, _devices(ctx))


@rule(
    "DC150",
    Severity.ERROR,
    "mesh does not match the device count",
    needs=("runtime", "resources", "accelerator"),
    hint="Make data * fsdp * tensor equal chips * num_slices, or set one of data and fsdp to -1 to take what the "
    "other axes leave (fsdp: -1 with data: 1 fits every accelerator). "
    "v5p-N and v4-N count TensorCores: v5p-128 is 64 chips.",
)
def mesh_devices(ctx: Context) -> Iterator[Finding]:
    """Every device holds exactly one shard of the mesh, so the product of the axes must equal
    the number of devices: the accelerator's chips times num_slices (one JAX device per chip; a
    v5p-N or v4-N name counts TensorCores, two per chip). `data: -1` resolves to the devices
    left over by fsdp * tensor, which must divide them; `fsdp: -1` likewise takes what data * tensor
    leave (`{data: 1, fsdp: -1}` shards over every device of whatever accelerator the run gets).
    At most one of data and fsdp is -1; tensor, and any axis that is not -1, is at least 1.

    Fails::

        runtime:
          mesh: {data: 1, fsdp: 2, tensor: 1}

    Passes::

        runtime:
          mesh: {data: -1, fsdp: 1, tensor: 1}
    """
    assert ctx.spec.runtime is not None and ctx.spec.resources is not None and ctx.accelerator is not None  # needs: the registry runs the rule only then
    m = ctx.spec.runtime.mesh
    devices = _devices(ctx)
    bad = False
    if m.tensor < 1:
        bad = True
        yield finding(ctx, f"mesh axis tensor is {m.tensor}; it must be at least 1", "runtime", "mesh", "tensor")
    for axis in ("data", "fsdp"):
        value = getattr(m, axis)
        if value < 1 and value != -1:
            bad = True
            yield finding(ctx, f"mesh axis {axis} is {value}; it must be at least 1, or -1 for the rest", "runtime", "mesh", axis)
    if m.data == -1 and m.fsdp == -1:
        bad = True
        yield finding(ctx, "mesh axes data and fsdp are both -1; at most one axis may take the rest", "runtime", "mesh", "fsdp",
                      hint="Set fsdp: -1 with data: 1 (shard the weights over every device), or data: -1 with a fixed fsdp.")
    if bad:
        return
    rest = "data" if m.data == -1 else "fsdp" if m.fsdp == -1 else None
    if rest is not None:
        others = [(a, getattr(m, a)) for a in ("data", "fsdp", "tensor") if a != rest]
        product = others[0][1] * others[1][1]
        if devices % product:
            yield finding(
                ctx,
                f"{others[0][0]} {others[0][1]} x {others[1][0]} {others[1][1]} = {product} does not divide the "
                f"{devices} devices of {_where(ctx)} ({rest}: -1 takes the rest)",
                "runtime",
                "mesh",
            )
    elif m.data * m.fsdp * m.tensor != devices:
        yield finding(
            ctx,
            f"mesh data {m.data} x fsdp {m.fsdp} x tensor {m.tensor} = {m.data * m.fsdp * m.tensor} "
            f"device{'' if m.data * m.fsdp * m.tensor == 1 else 's'}, "
            f"but {_where(ctx)} has {devices}",
            "runtime",
            "mesh",
        )


@rule(
    "DC151",
    Severity.ERROR,
    "global batch not divisible by the data-parallel shards",
    needs=("data", "runtime", "resources", "accelerator"),
    hint="Make data.global_batch_size a multiple of data * fsdp (the ways the batch is split).",
)
def batch_divisible(ctx: Context) -> Iterator[Finding]:
    """The batch is split evenly over the data and fsdp mesh axes (tensor-parallel devices share
    their sequences), so every data-parallel shard gets the same number of whole sequences.

    Fails::

        resources:
          accelerator: v5p-8
        train:
          output_dir: gs://bucket/runs
        data:
          global_batch_size: 10

    Passes::

        teacher:
          checkpoint: gs://bucket/teacher/0/items
        resources:
          accelerator: v5p-8
        train:
          output_dir: gs://bucket/runs
        data:
          global_batch_size: 16
    """
    assert ctx.spec.data is not None and ctx.spec.runtime is not None and ctx.spec.resources is not None and ctx.accelerator is not None  # needs: the registry runs the rule only then
    mesh = _mesh(ctx)
    if mesh is None:
        return  # DC150 reports the mesh
    batch = ctx.spec.data.global_batch_size
    if batch % mesh.batch_shards:
        yield finding(
            ctx,
            f"global_batch_size {batch} is not divisible by {mesh.batch_shards} data-parallel shards "
            f"(data {mesh.data} x fsdp {mesh.fsdp})",
            "data",
            "global_batch_size",
        )


_MEMORY_NEEDS = ("teacher", "student", "loss", "data", "runtime", "resources", "mode", "teacher_arch", "student_arch", "accelerator")


def _estimates(ctx: Context) -> Optional[dict[str, MemoryEstimate]]:
    assert ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.accelerator is not None  # _MEMORY_NEEDS
    return estimate_spec(ctx.spec, ctx.teacher_arch, ctx.student_arch, ctx.accelerator)


_STAGE = {"train": "training", "save_topk": "top-k capture"}


@rule(
    "DC152",
    Severity.ERROR,
    "does not fit in accelerator memory",
    needs=_MEMORY_NEEDS,
    hint="Use mode: offline (top-k: the teacher runs alone, once), more chips or slices, a larger fsdp axis "
    "(runtime.mesh), student.overrides.remat: full, a shorter seq_len or a smaller global_batch_size.",
)
def memory_fit(ctx: Context) -> Iterator[Finding]:
    """The guide's "teacher OOMs at startup" row, caught before the job is queued. Per chip:

    * teacher weights, frozen: 2 bytes/parameter in bfloat16 (distillc's default), 4 where
      teacher.overrides.weight_dtype is float32 (MaxText's default weight_dtype is float32, so a
      teacher configured the MaxText way takes twice the memory);
    * student weights, gradients and Adam state: 18 bytes/parameter (float32 master 4 + bfloat16
      compute copy 2 + float32 gradients 4 + Adam moments 8), 12 with bfloat16 weights;
      weights and optimizer state are sharded over fsdp * tensor and replicated over data;
    * activations, Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) bytes per layer (bfloat16, no
      tensor parallelism; b = sequences per chip); remat full keeps only each layer's input,
      2*s*b*h per layer, plus one layer being recomputed; the teacher runs forward only;
    * logits, [tokens x vocab] in float32: teacher, student and the student's gradient.

    Offline mode checks its two stages apart (the teacher alone capturing top-k, then the student
    alone). The estimate and its assumptions are in compiler/memory.py; it errs high (it ignores
    flash attention). Local CPU runs are checked by DC153 instead.

    Fails::

        teacher:
          model: llama3.1-405b
          checkpoint: gs://bucket/llama3.1-405b/0/items
        student:
          model: llama3.1-8b
        data:
          tokenizer: gs://bucket/llama3/tokenizer.model
          seq_len: 4096
          global_batch_size: 32
        train:
          output_dir: gs://bucket/runs
        runtime:
          mesh: {data: 1, fsdp: 4, tensor: 1}
        resources:
          accelerator: v5p-8

    Passes::

        teacher:
          model: llama3.1-70b
          checkpoint: gs://bucket/llama3.1-70b/0/items
        student:
          model: llama3.1-8b
        data:
          tokenizer: gs://bucket/llama3/tokenizer.model
          seq_len: 4096
          global_batch_size: 128
        train:
          output_dir: gs://bucket/runs
        runtime:
          mesh: {data: 1, fsdp: 64, tensor: 1}
        resources:
          accelerator: v5p-128
    """
    assert ctx.spec.teacher is not None and ctx.spec.student is not None and ctx.spec.loss is not None and ctx.spec.data is not None and ctx.spec.runtime is not None and ctx.spec.resources is not None and ctx.spec.mode is not None and ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.accelerator is not None  # needs: the registry runs the rule only then
    if ctx.accelerator.kind == "cpu":
        return
    estimates = _estimates(ctx)
    if estimates is None:
        return  # DC150 reports the mesh
    for stage, est in estimates.items():
        if not est.fits:
            yield finding(
                ctx,
                f"{_STAGE[stage]} needs an estimated {gib(est.total)} per chip but {_where(ctx)} has "
                f"{gib(est.usable)} usable: {est.breakdown()}",
                "resources",
                "accelerator",
                hint=_memory_hint(ctx, stage),
            )


def _memory_hint(ctx: Context, stage: str) -> str:
    """The fixes that apply to this spec, most effective first."""
    spec = ctx.spec
    assert spec.runtime is not None and spec.teacher is not None and spec.student is not None  # _MEMORY_NEEDS
    mesh = spec.runtime.mesh
    fixes = []
    if spec.mode == "online":
        fixes.append("mode: offline (top-k: the teacher runs alone, once, and is not in memory while the student trains)")
    fixes.append("a larger accelerator or more slices (resources)")
    if mesh.data != 1 and mesh.fsdp != -1:
        fixes.append(f"more fsdp (runtime.mesh: data 1, fsdp -1 takes every device; fsdp now {mesh.fsdp}): "
                     "weights shard over fsdp, not data")
    if (spec.student.overrides.remat or "full") != "full" and stage == "train":
        fixes.append("student.overrides.remat: full")
    if spec.teacher.overrides.weight_dtype == "float32":
        fixes.append("teacher.overrides.weight_dtype: bfloat16 (MaxText's default weight_dtype is float32, twice the bytes)")
    fixes.append("a shorter data.seq_len or a smaller data.global_batch_size (activations and logits)")
    note = ""
    if (spec.mode == "online" or stage == "save_topk") and spec.teacher.overrides.weight_dtype != "float32":
        note = " (The teacher is counted in bfloat16, distillc's default; MaxText's default weight_dtype is float32.)"
    return "Use " + "; or ".join(fixes) + "." + note


@rule(
    "DC153",
    Severity.WARNING,
    "too large to run locally",
    needs=_MEMORY_NEEDS,
    hint="Run on a cluster accelerator (resources.accelerator, e.g. v5p-8), or use the tiny catalog models locally.",
)
def cpu_too_big(ctx: Context) -> Iterator[Finding]:
    """`accelerator: cpu` runs on this machine. The same estimate as DC152 (weights, gradients,
    optimizer state, activations, logits) is compared with the host memory the catalog budgets
    for local runs: a multi-billion-parameter model will swap or be killed, and would take days
    per step on a CPU anyway.

    Fails::

        teacher:
          model: llama3.1-8b
        student:
          model: llama3.1-8b
        data:
          tokenizer: /data/llama3/tokenizer.model

    Passes::

        teacher:
          model: tiny-teacher
        student:
          model: tiny-student
    """
    assert ctx.spec.teacher is not None and ctx.spec.student is not None and ctx.spec.loss is not None and ctx.spec.data is not None and ctx.spec.runtime is not None and ctx.spec.resources is not None and ctx.spec.mode is not None and ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.accelerator is not None  # needs: the registry runs the rule only then
    if ctx.accelerator.kind != "cpu":
        return
    estimates = _estimates(ctx)
    if estimates is None:
        return
    for stage, est in estimates.items():
        if not est.fits:
            yield finding(
                ctx,
                f"{_STAGE[stage]} needs an estimated {gib(est.total)} but a local CPU run is budgeted "
                f"{gib(est.usable)}: {est.breakdown()}",
                "resources",
                "accelerator",
            )
            return


@rule(
    "DC154",
    Severity.ERROR,
    "several slices of a local CPU",
    needs=("resources", "accelerator"),
    hint="Set num_slices: 1 for accelerator: cpu, or pick a cluster accelerator for multi-slice runs.",
)
def cpu_slices(ctx: Context) -> Iterator[Finding]:
    """`accelerator: cpu` is this one machine; there is no second slice to run on.

    Fails::

        resources:
          accelerator: cpu
          num_slices: 2

    Passes::

        resources:
          accelerator: cpu
          num_slices: 1
    """
    assert ctx.spec.resources is not None and ctx.accelerator is not None  # needs: the registry runs the rule only then
    if ctx.accelerator.kind == "cpu" and ctx.spec.resources.num_slices > 1:
        yield Finding(f"num_slices {ctx.spec.resources.num_slices} with accelerator cpu", ("resources", "num_slices"))


@rule(
    "DC155",
    Severity.ERROR,
    "tensor axis does not divide the attention heads",
    needs=("runtime", "teacher_arch", "student_arch"),
    hint="Choose a tensor axis that divides both models' num_heads (often 1, 2, 4 or 8).",
)
def tensor_heads(ctx: Context) -> Iterator[Finding]:
    """Tensor parallelism splits each attention layer's query heads across the tensor axis (and
    the MLP's hidden units with them); a head cannot be split, so the axis must divide both
    models' num_heads.

    Fails::

        runtime:
          mesh: {data: 1, fsdp: 1, tensor: 3}

    Passes::

        runtime:
          mesh: {data: -1, fsdp: 1, tensor: 1}
    """
    assert ctx.spec.runtime is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    t = ctx.spec.runtime.mesh.tensor
    if t <= 1:
        return
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        if arch.num_heads % t:
            yield finding(
                ctx, f"tensor {t} does not divide the {role} {model_label(arch)}'s {arch.num_heads} attention heads", "runtime", "mesh", "tensor"
            )
            return
