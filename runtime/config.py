"""The compiled runtime config: the contract between the compiler and the runtime.

Pure pydantic, no jax: the compiler writes it, the runtime reads it, and both import this one
module. Every value is concrete (the resolver leaves nothing to defaults), the schema is versioned,
and teacher and student are separate objects so that nothing meant for one side reaches the other
(the guide's pitfall where command-line overrides silently never reached the teacher).

The schedule numerics live here as plain Python (`Schedule.value`) so the compiler's plan table
and the runtime's jitted schedule are checked against one definition.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillc.runtime.arch import ModelArch, feature_loss_on  # noqa: F401  (part of the contract)
from distillc.runtime.bounds import MAX_STEPS, alpha_problem, beta_problem, held_out_problem, temperature_problem

CONFIG_VERSION = 1


class _Frozen(BaseModel):
    # defer_build: the schemas build on first use (`distillc validate` needs only runtime/arch.py).
    # No NaN or infinity anywhere; `load` below also makes the types strict ("4", true and 4.0 are
    # not a step count), as the spec's are.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, allow_inf_nan=False)


# ---------------------------------------------------------------- schedules

ScheduleKind = Literal["constant", "linear", "cosine", "piecewise"]


class Schedule(_Frozen):
    """A value over training steps. progress = clip(step / max_steps, 0, 1).

    constant: start. linear: start + (end - start) * p. cosine: end + (start - end) * 0.5 *
    (1 + cos(pi * p)). piecewise: linear interpolation between (step, value) points, holding the
    first value before them and the last value after them.
    """

    kind: ScheduleKind
    start: float = 0.0
    end: float = 0.0
    max_steps: int = Field(1, gt=0, le=MAX_STEPS)
    points: tuple[tuple[int, float], ...] = ()

    @model_validator(mode="after")
    def _points_sorted(self) -> "Schedule":
        if self.kind == "piecewise":
            steps = [s for s, _ in self.points]
            if not steps or steps != sorted(set(steps)):
                raise ValueError("piecewise points must be non-empty with strictly increasing steps")
        return self

    def value(self, step: int | float) -> float:
        if self.kind == "constant":
            return self.start
        if self.kind == "piecewise":
            return _piecewise(self.points, float(step))
        p = min(max(float(step) / self.max_steps, 0.0), 1.0)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value the schedule takes (monotone pieces: the endpoints)."""
        if self.kind == "constant":
            return (self.start, self.start)
        if self.kind == "piecewise":
            vals = [v for _, v in self.points]
            return (min(vals), max(vals))
        return (min(self.start, self.end), max(self.start, self.end))


def _piecewise(points: tuple[tuple[int, float], ...], step: float) -> float:
    if step <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if step <= s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return points[-1][1]


# ---------------------------------------------------------------- sides, loss, data

Dtype = Literal["float32", "bfloat16"]
CheckpointFormat = Literal["hf", "maxtext", "distillc", "gguf"]


class SideConfig(_Frozen):
    """One model of the pair. The teacher is frozen; only the student has an optimizer."""

    role: Literal["teacher", "student"]
    arch: ModelArch
    checkpoint: Optional[str] = Field(None, description="Checkpoint to restore; None = random init (see train/params).")
    format: Optional[CheckpointFormat] = Field(None, description="hf | maxtext | distillc | gguf; None = detected from the path.")
    weight_dtype: Dtype
    activation_dtype: Dtype
    remat: Literal["none", "minimal", "full"]
    init_seed: int
    pruned_layers: tuple[int, ...] = Field((), description="Teacher layers removed to make this student.")
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Side-only passthrough fields (MaxText overrides)."
    )


class LayerPair(_Frozen):
    teacher: int = Field(ge=0)
    student: int = Field(ge=0)


class LossConfig(_Frozen):
    """total = alpha * KL(t_T || s_T) * T^2 + (1 - alpha) * CE + beta * feature."""

    alpha: Schedule
    temperature: Schedule
    beta: Schedule
    feature_loss: Literal["cosine", "l2"]
    layer_pairs: tuple[LayerPair, ...] = ()
    compare_vocab: int = Field(gt=0, description="Logits are compared over token ids [0, compare_vocab).")

    @property
    def feature_enabled(self) -> bool:
        """The feature loss (and the sow) exists iff beta is ever positive and layers were compiled."""
        return feature_loss_on(self.beta.bounds()) and bool(self.layer_pairs)

    @model_validator(mode="after")
    def _weights(self) -> "LossConfig":
        """The spec's bounds (rules DC130/DC131, runtime/bounds.py) on every value a schedule takes
        (ramps are monotone: their extremes are their bounds)."""
        for name, schedule, problem in (("alpha", self.alpha, alpha_problem), ("beta", self.beta, beta_problem),
                                        ("temperature", self.temperature, temperature_problem)):
            for value in schedule.bounds():
                if (why := problem(value)) is not None:
                    raise ValueError(f"{name}: {why}")
        return self


class OfflineConfig(_Frozen):
    top_k: int = Field(gt=0)
    data_dir: str
    loss: Literal["tail_bucket", "renormalized", "sampled"]
    sampling: Literal["top_k", "random"]
    num_samples: int = Field(gt=0)
    capture_temperature: float = Field(gt=0)
    dtype: Dtype


SourceNames = str | tuple[str, ...]  # a path, directory or glob (or builtin:<name>), or a list of them


class WeightedSource(_Frozen):
    """One part of a mixture: documents drawn from `source` with probability weight / sum(weights)."""

    source: SourceNames
    weight: float = Field(gt=0)


class DataConfig(_Frozen):
    """One data stream, shared by both sides by construction: same tokens, same positions."""

    source: str = Field(description="builtin:<name>, a path, directory or glob (local or gs://); where `sources` "
                                    "is set, a description of it (they are read instead).")
    tokenizer: str = Field(description="'byte', or a sentencepiece .model / HF tokenizer.json path.")
    seq_len: int = Field(gt=0)
    global_batch_size: int = Field(gt=0)
    eval_fraction: float = Field(ge=0, lt=1, description="Held-out documents, chosen by a hash of their text.")
    packing: bool
    shuffle_seed: int
    sources: tuple[WeightedSource, ...] = Field((), description="A list of sources or a weighted mixture; when set "
                                                                "it replaces `source`.")
    text_field: str = Field("text", description="The jsonl field / Parquet column that holds a document's text.")
    eval_source: Optional[SourceNames] = Field(None, description="Held-out documents; then eval_fraction is unused.")
    eval_tokens: int = Field(1_000_000, gt=0, description="The held-out set stops after this many tokens.")
    workers: int = Field(0, ge=0, description="Tokenizer worker processes (0: in the training process); the "
                                              "batches and the data state are the same for any count.")
    prepared: Optional[str] = Field(None, description="A directory of `distillc data prepare` shards: written "
                                                      "there by prepare, read instead of the sources by training.")

    def mixture(self) -> tuple[WeightedSource, ...]:
        """The training sources with their weights (one source: weight 1)."""
        return self.sources or (WeightedSource(source=self.source, weight=1.0),)


class OptimizerConfig(_Frozen):
    name: Literal["adamw"]
    learning_rate: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    decay: Literal["cosine", "linear", "constant"]
    end_learning_rate: float = Field(ge=0)
    weight_decay: float = Field(ge=0)
    b1: float = Field(ge=0, lt=1, description="Adam's first-moment decay.")
    b2: float = Field(ge=0, lt=1, description="Adam's second-moment decay.")
    eps: float = Field(gt=0, description="Adam's denominator floor (0 divides by zero on a zero gradient).")
    grad_clip: float = Field(ge=0, description="Global-norm clip; 0 disables.")


class DivergenceConfig(_Frozen):
    """When a finite run has diverged (train/hooks.DivergenceHook): the spec's train.divergence."""

    factor: float = Field(10.0, gt=1, description="A total loss above factor x its recent median is a spike.")
    window: int = Field(50, gt=0, description="Steps the median is taken over.")
    collapse_steps: int = Field(10, gt=0, description="Steps in a row with a gradient norm of exactly 0.")
    policy: Literal["stop", "warn"] = "stop"


class TrainConfig(_Frozen):
    steps: int = Field(gt=0, le=MAX_STEPS)
    checkpoint_every: int = Field(gt=0)
    log_every: int = Field(gt=0)
    eval_every: int = Field(ge=0, description="0 = evaluate only at the end.")
    eval_batches: int = Field(gt=0)
    seed: int
    max_checkpoints: int = Field(gt=0)
    divergence: DivergenceConfig = Field(default_factory=DivergenceConfig)


class MeshConfig(_Frozen):
    """Concrete axis sizes; data * fsdp * tensor == number of devices."""

    data: int = Field(gt=0)
    fsdp: int = Field(gt=0)
    tensor: int = Field(gt=0)

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor


class OutputConfig(_Frozen):
    run_dir: str
    checkpoint_dir: str
    tensorboard_dir: str
    metrics_file: str


# ---------------------------------------------------------------- the objective and the loss path

Objective = Literal["distill", "cross_entropy"]
LossImpl = Literal["auto", "dense", "chunked"]

# `loss_impl: auto` takes the chunked (fused) loss once one device's logits for a step reach this many
# elements: 64 MiB per float32 copy of [B, T, V], of which the dense path keeps several per side.
# Measured (2-core CPU, D=256, float32, value + grads): N=4096 x V=32000 dense 5.35 s / 3.9 GiB of
# XLA temporaries, chunked 2.38 s / 0.50 GiB; at the quickstart's 1024 x 256 the dense path is cheaper.
CHUNKED_LOSS_MIN_LOGITS = 1 << 24


def choose_loss_impl(impl: LossImpl, tokens_per_device: int, vocab: int) -> Literal["dense", "chunked"]:
    """The loss path a run takes: as configured, or for `auto` by the size of one device's logits."""
    if impl != "auto":
        return impl
    return "chunked" if tokens_per_device * vocab >= CHUNKED_LOSS_MIN_LOGITS else "dense"


def objective_of(mode: str, loss: LossConfig) -> Objective:
    """distill when any step's loss depends on the teacher (alpha or the feature term ever > 0, or a
    cached teacher); cross_entropy otherwise: labels only, no teacher is loaded."""
    if mode == "offline" or loss.alpha.bounds()[1] > 0.0 or loss.feature_enabled:
        return "distill"
    return "cross_entropy"


class RuntimeConfig(_Frozen):
    """Everything one runtime job needs; written as JSON by `distillc launch`."""

    version: Literal[1] = 1  # CONFIG_VERSION
    name: str = Field(pattern=r"^[^/\\\x00-\x1f\x7f]+$",
                      description="The run's name (the spec's or an ablation cell's): printed in every message and "
                                  "log line, so non-empty, one line, no path separator.")
    mode: Literal["online", "offline"]
    stage: Literal["train", "save_topk"]
    scan_layers: bool
    enable_nnx: bool
    teacher: SideConfig
    student: SideConfig
    loss: LossConfig
    data: DataConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    mesh: MeshConfig
    output: OutputConfig
    offline: Optional[OfflineConfig] = None
    objective: Objective = Field("distill", description="distill (a teacher signal) or cross_entropy (labels only).")
    loss_impl: LossImpl = Field("auto", description="dense logits, or chunked over positions (never [B, T, V]).")
    loss_chunk_size: int = Field(256, gt=0, description="Sequence positions per chunk of the chunked loss.")

    peak_flops: Optional[float] = Field(
        None, gt=0, description="Dense bf16 peak FLOP/s per device, from the accelerator catalog, for MFU; "
        "None where MFU is not reported (CPU runs).")

    def loss_path(self) -> Literal["dense", "chunked"]:
        """The loss path this run takes (loss_impl, with auto decided per device)."""
        shards = self.mesh.data * self.mesh.fsdp  # the batch is split over data x fsdp
        tokens = self.data.global_batch_size * self.data.seq_len // shards
        return choose_loss_impl(self.loss_impl, tokens, max(self.student.arch.vocab_size, self.teacher.arch.vocab_size))

    @model_validator(mode="after")
    def _sides(self) -> "RuntimeConfig":
        if self.teacher.role != "teacher" or self.student.role != "student":
            raise ValueError("teacher and student must carry their own roles")
        if self.mode == "offline" and self.offline is None:
            raise ValueError("offline mode needs an offline section")
        if self.stage == "save_topk" and self.mode != "offline":
            raise ValueError("stage save_topk writes the offline top-k cache: it needs mode offline")
        if (why := held_out_problem(self.train.eval_every, self.data.eval_fraction, self.data.eval_source)) is not None:
            raise ValueError(why)
        shared = min(self.teacher.arch.shared_vocab, self.student.arch.shared_vocab)
        if self.loss.compare_vocab > shared:
            raise ValueError(f"loss.compare_vocab {self.loss.compare_vocab} exceeds the vocabulary both models "
                             f"share ({shared}): the compiler sets it to min(teacher, student) real vocabulary")
        for i, pair in enumerate(self.loss.layer_pairs):
            for side, layer in (("teacher", pair.teacher), ("student", pair.student)):
                n = getattr(self, side).arch.num_layers
                if layer >= n:
                    raise ValueError(f"loss.layer_pairs[{i}].{side} {layer} is out of range: the {side} has "
                                     f"{n} layers (0..{n - 1})")
        return self


def load(text: str) -> RuntimeConfig:
    """A runtime config from its JSON text, with the spec's strictness: exact types (no "4", true
    or 4.0 for an integer), no NaN or infinity (JSON's NaN / Infinity extensions included), every
    bound above. Raises pydantic's ValidationError (main.load_config turns it into a message)."""
    return RuntimeConfig.model_validate_json(text, strict=True)
