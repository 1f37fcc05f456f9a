"""Resolve a checked spec into a Plan: every value concrete, nothing left to a default downstream.

The Plan is what the renderers (runtime config JSON, xpk commands, MaxText config) and `distillc
plan` read; none of them looks at the spec again. It holds one RuntimeConfig per stage (the
contract with the runtime, runtime/config.py), the workloads that run them, the mesh and the
memory estimate.

Resolution runs only on a spec the rules passed (no errors); it trusts them and does not
re-check. Defaults decided here, each visible in the plan:
  * weight dtype: teacher bfloat16 (frozen, forward only), student float32 (master weights);
  * activation dtype and remat: float32 / none on the CPU accelerator (small local runs, where
    bfloat16 is emulated and recomputation only costs time), bfloat16 / memory.DEFAULT_REMAT on
    TPUs and GPUs; `<side>.overrides` win on each side separately;
  * init seeds: student train.seed, teacher train.seed + 1 (so an uncheckpointed teacher and
    student of the same shape do not start identical);
  * optimizer: AdamW with b1 0.9, b2 0.95, eps 1e-8 (MaxText's defaults);
  * compare_vocab = min(teacher, student real vocabulary): logits are compared over the token ids
    both tokenizers emit; padding rows past it are ignored;
  * feature layers: resolved only when the feature loss is on (online mode, beta > 0 at step 0),
    else none (nothing is sown);
  * outputs under <train.output_dir>/<name>/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from distillc.compiler import layer_strategies, memory, naming
from distillc.compiler.catalog import Accelerator
from distillc.compiler.mesh import MeshPlan, plan_mesh
from distillc.compiler.plan_schedules import to_runtime
from distillc.runtime.config import (
    DataConfig,
    LayerPair,
    LossConfig,
    ModelArch,
    OfflineConfig,
    OptimizerConfig,
    OutputConfig,
    RuntimeConfig,
    SideConfig,
    TrainConfig,
)

Stage = Literal["save_topk", "train"]
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.95, 1e-8
CONFIG_FILES: dict[str, str] = {"save_topk": "config-save_topk.json", "train": "config-train.json"}


class PlanError(ValueError):
    """A spec that passed validation but cannot be resolved: a missing rule, i.e. a bug."""


@dataclass(frozen=True)
class Workload:
    """One xpk workload: a stage of the run, its compiled config file and what it waits for."""

    name: str
    stage: Stage
    config_file: str
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    name: str
    mode: Literal["online", "offline"]
    accelerator: Accelerator
    mesh: MeshPlan
    configs: tuple[RuntimeConfig, ...]  # one per workload, in run order
    workloads: tuple[Workload, ...]
    memory: dict[str, memory.MemoryEstimate] = field(default_factory=dict)  # by stage
    vocab_note: str = ""

    @property
    def train(self) -> RuntimeConfig:
        return self.configs[-1]

    def config_for(self, workload: Workload) -> RuntimeConfig:
        return self.configs[self.workloads.index(workload)]


def join_path(base: str, *parts: str) -> str:
    """Join with '/', for local paths and URLs (gs://bucket/x) alike; no normalisation."""
    out = base.rstrip("/") if base.rstrip("/") else base
    for part in parts:
        out = f"{out}/{part}" if out and not out.endswith("/") else f"{out}{part}"
    return out


def _side(role: str, side: Any, arch: ModelArch, cpu: bool, seed: int, pruned: tuple[int, ...] = ()) -> SideConfig:
    o = side.overrides
    default_weight = "bfloat16" if role == "teacher" else "float32"
    return SideConfig(
        role=role,
        arch=arch,
        checkpoint=side.checkpoint,
        weight_dtype=o.weight_dtype or default_weight,
        activation_dtype=o.activation_dtype or ("float32" if cpu else "bfloat16"),
        remat=o.remat or ("none" if cpu else memory.DEFAULT_REMAT),
        init_seed=o.init_seed if o.init_seed is not None else seed,
        pruned_layers=pruned,
        extra=dict(sorted(o.maxtext.items())),
    )


def _feature_on(spec: Any) -> bool:
    beta = spec.loss.beta
    start = beta.points[0][1] if beta.schedule == "piecewise" else beta.start
    return spec.mode == "online" and start > 0


def _outputs(run_dir: str, stage: Stage) -> OutputConfig:
    base = run_dir if stage == "train" else join_path(run_dir, "save_topk")
    return OutputConfig(
        run_dir=run_dir,
        checkpoint_dir=join_path(base, "checkpoints"),
        tensorboard_dir=join_path(base, "tensorboard"),
        metrics_file=join_path(base, "metrics.jsonl"),
    )


def vocab_note(teacher: ModelArch, student: ModelArch, compare_vocab: int) -> str:
    if teacher.vocab_size == student.vocab_size and teacher.shared_vocab == student.shared_vocab:
        return ""
    return (
        f"vocabularies differ (teacher {teacher.vocab_size} rows, {teacher.shared_vocab} real tokens; "
        f"student {student.vocab_size} rows, {student.shared_vocab} real tokens): logits are compared "
        f"over the {compare_vocab} shared real tokens"
    )


def resolve(
    spec: Any,
    teacher: ModelArch,
    student: ModelArch,
    accelerator: Accelerator,
    num_slices: Optional[int] = None,
) -> Plan:
    """The plan for a validated Spec. `teacher` is the teacher as published, `student` the
    student's own architecture (pruned layers removed), `accelerator` and `num_slices` what the
    run gets (a cluster entry overrides the spec's)."""
    slices = num_slices if num_slices is not None else spec.resources.num_slices
    m = spec.runtime.mesh
    mesh = plan_mesh(m.data, m.fsdp, m.tensor, accelerator, slices, spec.data.global_batch_size)
    if mesh is None:
        raise PlanError(f"mesh {m.data}x{m.fsdp}x{m.tensor} does not fit {accelerator.chips * slices} devices")
    steps = spec.train.steps
    cpu = accelerator.kind == "cpu"
    pruned = tuple(sorted(set(spec.student.pruned_layers)))

    pairs: tuple[tuple[int, int], ...] = ()
    if _feature_on(spec):
        try:
            pairs = layer_strategies.resolve_layers(spec.loss.layers, teacher.num_layers, student.num_layers, pruned)
        except ValueError as exc:
            raise PlanError(f"loss.layers: {exc}") from None
    compare_vocab = min(teacher.shared_vocab, student.shared_vocab)
    loss = LossConfig(
        alpha=to_runtime(spec.loss.alpha, steps),
        temperature=to_runtime(spec.loss.temperature, steps),
        beta=to_runtime(spec.loss.beta, steps),
        feature_loss=spec.loss.feature_loss,
        layer_pairs=tuple(LayerPair(teacher=t, student=s) for t, s in pairs),
        compare_vocab=compare_vocab,
    )
    offline = None
    if spec.mode == "offline":
        o = spec.offline
        if o is None or o.top_k is None or o.data_dir is None:
            raise PlanError("offline mode needs offline.top_k and offline.data_dir")
        offline = OfflineConfig(
            top_k=o.top_k,
            data_dir=o.data_dir,
            loss=o.loss,
            sampling=o.sampling,
            num_samples=o.num_samples if o.num_samples is not None else o.top_k,
            capture_temperature=o.capture_temperature,
            dtype=o.dtype,
        )
    d, t = spec.data, spec.train
    seed = t.seed
    common = dict(
        name=spec.name,
        mode=spec.mode,
        scan_layers=spec.runtime.scan_layers,
        enable_nnx=spec.runtime.enable_nnx,
        teacher=_side("teacher", spec.teacher, teacher, cpu, seed + 1),
        student=_side("student", spec.student, student, cpu, seed, pruned),
        loss=loss,
        data=DataConfig(
            source=d.source,
            tokenizer=d.tokenizer,
            seq_len=d.seq_len,
            global_batch_size=d.global_batch_size,
            eval_fraction=d.eval_fraction,
            packing=d.packing,
            shuffle_seed=d.shuffle_seed,
        ),
        optimizer=OptimizerConfig(
            name="adamw",
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_steps,
            decay=t.lr_schedule,
            end_learning_rate=t.end_learning_rate,
            weight_decay=t.weight_decay,
            b1=ADAM_B1,
            b2=ADAM_B2,
            eps=ADAM_EPS,
            grad_clip=t.grad_clip,
        ),
        train=TrainConfig(
            steps=steps,
            checkpoint_every=t.checkpoint_every,
            log_every=t.log_every,
            eval_every=t.eval_every,
            eval_batches=t.eval_batches,
            seed=seed,
            max_checkpoints=t.max_checkpoints,
        ),
        mesh=mesh.config(),
        offline=offline,
    )
    run_dir = join_path(t.output_dir, spec.name)
    stages: tuple[Stage, ...] = ("save_topk", "train") if spec.mode == "offline" else ("train",)
    max_len = naming.max_name_length(accelerator.super_slicing)
    configs, workloads = [], []
    for stage, suffix in zip(stages, naming.stage_suffixes(spec.mode)):
        configs.append(RuntimeConfig(stage=stage, output=_outputs(run_dir, stage), **common))
        name = naming.workload_name(spec.name, suffix, max_len)
        after = (workloads[-1].name,) if workloads else ()
        workloads.append(Workload(name=name, stage=stage, config_file=CONFIG_FILES[stage], depends_on=after))

    return Plan(
        name=spec.name,
        mode=spec.mode,
        accelerator=accelerator,
        mesh=mesh,
        configs=tuple(configs),
        workloads=tuple(workloads),
        memory=_estimate(configs, accelerator, mesh, offline),
        vocab_note=vocab_note(teacher, student, compare_vocab),
    )


def _estimate(configs: list[RuntimeConfig], acc: Accelerator, mesh: MeshPlan, offline: Optional[OfflineConfig]) -> dict[str, memory.MemoryEstimate]:
    """memory.estimate_memory for each stage, with the plan's resolved dtypes and remat."""
    out = {}
    for cfg in configs:
        t, s = cfg.teacher, cfg.student
        common = dict(accelerator=acc, mesh=mesh.shape(), seq_len=cfg.data.seq_len, global_batch_size=cfg.data.global_batch_size)
        if cfg.stage == "save_topk":
            est = memory.estimate_memory(t.arch, None, teacher_dtype=t.weight_dtype, activation_dtype=t.activation_dtype, remat=t.remat, **common)
        elif offline is not None:
            est = memory.estimate_memory(
                None, s.arch, student_dtype=s.weight_dtype, activation_dtype=s.activation_dtype, remat=s.remat, top_k=offline.top_k, **common
            )
        else:
            act = "float32" if "float32" in (t.activation_dtype, s.activation_dtype) else "bfloat16"
            est = memory.estimate_memory(
                t.arch,
                s.arch,
                teacher_dtype=t.weight_dtype,
                student_dtype=s.weight_dtype,
                activation_dtype=act,
                remat=s.remat,
                feature_layers=len(cfg.loss.layer_pairs),
                **common,
            )
        out[cfg.stage] = est
    return out


def resolve_checked(checked: Any, num_slices: Optional[int] = None) -> Plan:
    """The plan for a `check.Checked` without errors (its context binds models and accelerator)."""
    spec = checked.spec.full()
    ctx = checked.context
    if spec is None or ctx is None or None in (ctx.teacher_arch, ctx.student_arch, ctx.accelerator):
        raise PlanError("the spec did not parse and bind completely; validate it first")
    return resolve(spec, ctx.teacher_arch, ctx.student_arch, ctx.accelerator, num_slices)
