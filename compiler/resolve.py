"""Resolve a checked spec into a Plan: every value concrete, nothing left to a default downstream.

The Plan is what the renderers (runtime config JSON, xpk commands, MaxText config) and `distillc
plan` read; none of them looks at the spec again. It holds one RuntimeConfig per stage (the
contract with the runtime, runtime/config.py), the workloads that run them, the mesh and the
memory estimate.

Resolution runs only on a spec the rules passed (no errors); it trusts them and does not
re-check. Defaults decided here, each visible in the plan:
  * weight and activation dtypes and remat: side_defaults.py (the memory rules use the same),
    `<side>.overrides` winning on each side separately;
  * init seeds: student train.seed, teacher train.seed + 1 (so an uncheckpointed teacher and
    student of the same shape do not start identical);
  * optimizer: AdamW with b1 0.9, b2 0.95, eps 1e-8 (MaxText's defaults);
  * compare_vocab = min(teacher, student real vocabulary): logits are compared over the token ids
    both tokenizers emit; padding rows past it are ignored;
  * feature layers: resolved only when the feature loss is on (online mode, beta positive at some
    step: runtime/arch.feature_loss_on), else none (nothing is sown);
  * outputs under <train.output_dir>/<name>/.

The resolver is a pure function, and an ablation calls it thousands of times on specs that share
most of their sections; the pieces (side, data, optimizer, loss configs, mesh, layer pairs,
memory estimates, workloads) are built by helpers cached on their hashable, frozen inputs, so a
repeated piece is the same frozen object rather than a fresh, re-validated one (plans share it:
a side's `extra` dict is read, never changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, TypeVar

from distillc.compiler import layer_strategies, memory, naming
from distillc.compiler.side_defaults import side_settings
from distillc.compiler.spec import Data, Loss, Offline, Side, Spec, Train
from distillc.compiler.spec import Schedule as SpecSchedule
from distillc.compiler.catalog import Accelerator
from distillc.compiler.mesh import MeshPlan, plan_mesh
from distillc.compiler.plan_schedules import to_runtime
from distillc.compiler.rules._util import feature_on
from distillc.runtime.config import (
    DataConfig,
    DivergenceConfig,
    WeightedSource,
    LayerPair,
    LossConfig,
    ModelArch,
    OfflineConfig,
    OptimizerConfig,
    OutputConfig,
    RuntimeConfig,
    SideConfig,
    TrainConfig,
    choose_loss_impl,
    objective_of,
)

if TYPE_CHECKING:  # pragma: no cover  (check imports the catalogs and rules; resolve runs after it)
    from distillc.compiler.check import Checked

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


def _float_signs(model: Any) -> tuple[bool, ...]:
    """Which float fields of a frozen model are negative. A cache keyed on the model alone would
    take -0.0 for 0.0 (they are ==), which a plan prints differently; the keys carry these too."""
    return tuple(math.copysign(1.0, v) < 0 for v in model.__dict__.values() if type(v) is float)


T = TypeVar("T")


def _per_section(build: Callable[[Any], T]) -> Callable[[Any], T]:
    """Cache a builder of one spec section (a frozen pydantic model of scalars) on its value. A
    section that cannot be hashed (a list inside) is built every time."""
    cached = lru_cache(maxsize=256)(lambda section, _signs: build(section))

    @wraps(build)
    def call(section: Any) -> T:
        try:
            return cached(section, _float_signs(section))
        except TypeError:  # unhashable (a TypeError inside `build` is raised again below)
            return build(section)

    return call


def _side(role: str, side: Side, arch: ModelArch, cpu: bool, seed: int, pruned: tuple[int, ...] = ()) -> SideConfig:
    o = side.overrides
    # the extra keys as a cache key: their type and the sign of a zero float tell apart values == merges
    extra = tuple((k, v, type(v), type(v) is float and math.copysign(1.0, v) < 0) for k, v in sorted(o.maxtext.items()))
    return _side_config(role, arch, side.checkpoint, side.format, o.weight_dtype, o.activation_dtype, o.remat, o.init_seed, extra, cpu, seed, pruned)


@lru_cache(maxsize=256)
def _side_config(
    role: str,
    arch: ModelArch,
    checkpoint: Optional[str],
    fmt: Optional[str],
    weight_dtype: Optional[str],
    activation_dtype: Optional[str],
    remat: Optional[str],
    init_seed: Optional[int],
    extra: tuple[tuple[str, Any, type, bool], ...],
    cpu: bool,
    seed: int,
    pruned: tuple[int, ...],
) -> SideConfig:
    settings = side_settings(role, weight_dtype, activation_dtype, remat, cpu)
    return SideConfig(
        role=role,
        arch=arch,
        checkpoint=checkpoint,
        format=fmt,
        weight_dtype=settings.weight_dtype,
        activation_dtype=settings.activation_dtype,
        remat=settings.remat,
        init_seed=init_seed if init_seed is not None else seed,
        pruned_layers=pruned,
        extra={k: v for k, v, _, _ in extra},
    )


def _feature_on(spec: Spec) -> bool:
    """Layer pairs are compiled iff the run has a teacher alongside (online) and beta is ever positive."""
    return spec.mode == "online" and feature_on(spec.loss)


@lru_cache(maxsize=256)
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
    spec: Spec,
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
    loss = _loss(spec.loss, steps, pairs, compare_vocab)
    offline = None
    if spec.mode == "offline":
        o = spec.offline
        if o is None or o.top_k is None or o.data_dir is None:
            raise PlanError("offline mode needs offline.top_k and offline.data_dir")
        offline = _offline_config(o)
    t = spec.train
    seed = t.seed
    optimizer, train = _train_configs(t)
    mesh_config = mesh.config()
    tokens_per_device = spec.data.global_batch_size * spec.data.seq_len // (mesh_config.data * mesh_config.fsdp)
    common = dict(
        name=spec.name,
        mode=spec.mode,
        scan_layers=spec.runtime.scan_layers,
        enable_nnx=spec.runtime.enable_nnx,
        teacher=_side("teacher", spec.teacher, teacher, cpu, seed + 1),
        student=_side("student", spec.student, student, cpu, seed, pruned),
        loss=loss,
        data=_data_config(spec.data),
        optimizer=optimizer,
        train=train,
        mesh=mesh_config,
        offline=offline,
        objective=objective_of(spec.mode, loss),
        loss_impl=choose_loss_impl(spec.runtime.loss_impl, tokens_per_device, max(teacher.vocab_size, student.vocab_size)),
        peak_flops=_peak_flops(accelerator),
    )
    run_dir = join_path(t.output_dir, spec.name)
    workloads = _workloads(spec.name, spec.mode, accelerator.super_slicing)
    configs = [RuntimeConfig(stage=w.stage, output=_outputs(run_dir, w.stage), **common) for w in workloads]

    return Plan(
        name=spec.name,
        mode=spec.mode,
        accelerator=accelerator,
        mesh=mesh,
        configs=tuple(configs),
        workloads=workloads,
        memory=_estimate(configs, accelerator, mesh),
        vocab_note=vocab_note(teacher, student, compare_vocab),
    )


def _peak_flops(accelerator: Accelerator) -> Optional[float]:
    """The catalog's dense bf16 peak per chip, which the runtime's MFU divides by. None on the CPU:
    its catalog figure is nominal, and MFU is not reported for local runs."""
    return None if accelerator.kind == "cpu" else accelerator.peak_bf16_tflops * 1e12


def _loss(loss: Loss, steps: int, pairs: tuple[tuple[int, int], ...], compare_vocab: int) -> LossConfig:
    alpha, temperature, beta = loss.alpha, loss.temperature, loss.beta
    schedules = (alpha, temperature, beta)
    if any(s.schedule == "piecewise" for s in schedules):  # a table (a list inside): not hashable
        return _loss_config(alpha, temperature, beta, steps, loss.feature_loss, pairs, compare_vocab)
    signs = tuple(_float_signs(s) for s in schedules)
    return _ramp_loss_config(alpha, temperature, beta, signs, steps, loss.feature_loss, pairs, compare_vocab)


def _loss_config(alpha: SpecSchedule, temperature: SpecSchedule, beta: SpecSchedule, steps: int, feature_loss: str, pairs: tuple[tuple[int, int], ...], compare_vocab: int) -> LossConfig:
    return LossConfig(
        alpha=to_runtime(alpha, steps),
        temperature=to_runtime(temperature, steps),
        beta=to_runtime(beta, steps),
        feature_loss=feature_loss,
        layer_pairs=tuple(LayerPair(teacher=t, student=s) for t, s in pairs),
        compare_vocab=compare_vocab,
    )


@lru_cache(maxsize=4096)
def _ramp_loss_config(
    alpha: SpecSchedule, temperature: SpecSchedule, beta: SpecSchedule, signs: tuple, steps: int, feature_loss: str, pairs: tuple[tuple[int, int], ...], compare_vocab: int
) -> LossConfig:
    """_loss_config for schedules without tables, cached (`signs` only keys the cache)."""
    return _loss_config(alpha, temperature, beta, steps, feature_loss, pairs, compare_vocab)


@_per_section
def _offline_config(o: Offline) -> OfflineConfig:
    return OfflineConfig(
        top_k=o.top_k,
        data_dir=o.data_dir,
        loss=o.loss,
        sampling=o.sampling,
        num_samples=o.num_samples if o.num_samples is not None else o.top_k,
        capture_temperature=o.capture_temperature,
        dtype=o.dtype,
    )


@_per_section
def _data_config(d: Data) -> DataConfig:
    names = lambda v: v if isinstance(v, str) else tuple(v)  # noqa: E731
    if d.sources:
        mixture = tuple(WeightedSource(source=names(w.source), weight=w.weight) for w in d.sources)
    elif isinstance(d.source, list):
        mixture = (WeightedSource(source=tuple(d.source), weight=1.0),)
    else:
        mixture = ()
    flat = [n for w in mixture for n in ((w.source,) if isinstance(w.source, str) else w.source)]
    return DataConfig(
        source=d.source if isinstance(d.source, str) else ", ".join(flat),
        sources=mixture,
        text_field=d.text_field,
        tokenizer=d.tokenizer,
        seq_len=d.seq_len,
        global_batch_size=d.global_batch_size,
        eval_fraction=d.eval_fraction,
        eval_source=None if d.eval_source is None else names(d.eval_source),
        eval_tokens=d.eval_tokens,
        packing=d.packing,
        shuffle_seed=d.shuffle_seed,
        prepared=d.prepared,
        workers=d.workers,
    )


@_per_section
def _train_configs(t: Train) -> tuple[OptimizerConfig, TrainConfig]:
    optimizer = OptimizerConfig(
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
    )
    train = TrainConfig(
        steps=t.steps,
        checkpoint_every=t.checkpoint_every,
        log_every=t.log_every,
        eval_every=t.eval_every,
        eval_batches=t.eval_batches,
        seed=t.seed,
        max_checkpoints=t.max_checkpoints,
        divergence=DivergenceConfig(**t.divergence.model_dump()),
    )
    return optimizer, train


@lru_cache(maxsize=256)
def _workloads(name: str, mode: str, super_slicing: bool) -> tuple[Workload, ...]:
    """The run's workloads in order, each waiting for the one before."""
    stages: tuple[Stage, ...] = ("save_topk", "train") if mode == "offline" else ("train",)
    max_len = naming.max_name_length(super_slicing)
    out: list[Workload] = []
    for stage, suffix in zip(stages, naming.stage_suffixes(mode)):
        after = (out[-1].name,) if out else ()
        out.append(Workload(name=naming.workload_name(name, suffix, max_len), stage=stage, config_file=CONFIG_FILES[stage], depends_on=after))
    return tuple(out)


# memory.estimate_memory is pure and its inputs hashable (architectures, accelerator, mesh shape, numbers)
_estimate_memory = lru_cache(maxsize=1024)(memory.estimate_memory)


def _estimate(configs: list[RuntimeConfig], acc: Accelerator, mesh: MeshPlan) -> dict[str, memory.MemoryEstimate]:
    """memory.estimate_config for each stage, with the plan's resolved dtypes and remat."""
    return {cfg.stage: memory.estimate_config(cfg, acc, mesh.shape(), estimate=_estimate_memory) for cfg in configs}


def resolve_checked(checked: Checked, num_slices: Optional[int] = None) -> Plan:
    """The plan for a `check.Checked` without errors (its context binds models and accelerator)."""
    spec = checked.spec.full()
    ctx = checked.context
    if spec is None or ctx is None or ctx.teacher_arch is None or ctx.student_arch is None or ctx.accelerator is None:
        raise PlanError("the spec did not parse and bind completely; validate it first")
    return resolve(spec, ctx.teacher_arch, ctx.student_arch, ctx.accelerator, num_slices)
