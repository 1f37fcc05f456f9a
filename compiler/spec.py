"""The spec language v1: typed pydantic models for `spec.yaml`.

Models hold types and single-field bounds only. Every constraint that relates two fields, two
sections or a catalog lives in exactly one rule (rules/*.py), so it is reported with a stable code,
a position and a fix, and never twice. Unknown keys are forbidden everywhere.

The key paths of design.md's sketch are the public v1 contract: add fields freely, never rename.
"""

# No `from __future__ import annotations`: real types let pydantic skip evaluating ~100 string
# annotations at import (a measurable part of `distillc validate`'s start-up).
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from distillc.runtime.arch import ModelArch
from distillc.runtime.bounds import MAX_STEPS


class _Model(BaseModel):
    # defer_build: a validator is built on first use, and a nested model is built inside its
    # section's, so `distillc validate` builds one per section it reads (and one per model a
    # default instantiates), not one per class besides.
    # List and dict defaults are literals, which pydantic copies per instance: a builtin
    # default_factory costs a signature parse at import.
    # strict: YAML's types are the spec's (`true` is not a batch size of 1, "400" is not a number of
    # steps); only a [step, value] list becomes a tuple. No inf/nan anywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, strict=True, allow_inf_nan=False)


# ---------------------------------------------------------------- schedules (alpha, temperature, beta)


class _Ramp(_Model):
    start: float = Field(description="Value at step 0.")
    end: Optional[float] = Field(None, description="Value at train.steps (ignored by constant).")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"schedule": "constant", "start": v}
        return v


class Constant(_Ramp):
    """A fixed value. A bare number means this."""

    schedule: Literal["constant"] = "constant"


class Linear(_Ramp):
    """start + (end - start) * progress."""

    schedule: Literal["linear"]


class Cosine(_Ramp):
    """end + (start - end) * 0.5 * (1 + cos(pi * progress)): holds near start longer than linear."""

    schedule: Literal["cosine"]


class Piecewise(_Model):
    """A schedule table: linear between (step, value) points, the last value held after them."""

    schedule: Literal["piecewise"]
    points: list[Annotated[tuple[int, float], Field(strict=False)]] = Field(min_length=1, description="[[step, value], ...]")


def _schedule_tag(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("schedule", "constant"))
    if isinstance(v, BaseModel):
        return str(getattr(v, "schedule", "constant"))
    return "constant"


class _NumberOrSchedule:
    """JSON Schema of a Schedule: a bare number (a Constant, read by Constant's before-validator,
    which the generated schema cannot show) or one of the schedule mappings."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        js = dict(handler(core_schema))
        branches = js.pop("oneOf", None) or [{k: js.pop(k) for k in list(js) if k not in ("title", "description")}]
        js["oneOf"] = [{"type": "number"}, *branches]
        return js


Schedule = Annotated[
    Union[
        Annotated[Constant, Tag("constant")],
        Annotated[Linear, Tag("linear")],
        Annotated[Cosine, Tag("cosine")],
        Annotated[Piecewise, Tag("piecewise")],
    ],
    Discriminator(_schedule_tag),
    _NumberOrSchedule(),
]


# ---------------------------------------------------------------- models


class InlineArch(ModelArch):
    """An architecture given in the spec instead of by catalog name."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True, strict=True, allow_inf_nan=False)
    name: str = "inline"
    family: str = "inline"


def _model_tag(v: Any) -> str:
    return "name" if isinstance(v, str) else "inline"


ModelRef = Annotated[
    Union[Annotated[str, Tag("name")], Annotated[InlineArch, Tag("inline")]],
    Discriminator(_model_tag),
]


class Overrides(_Model):
    """Fields for one side only. Nothing here reaches the other side."""

    weight_dtype: Optional[Literal["float32", "bfloat16"]] = Field(
        None, description="Parameter dtype. Default: teacher bfloat16 (frozen), student float32."
    )
    activation_dtype: Optional[Literal["float32", "bfloat16"]] = None
    remat: Optional[Literal["none", "minimal", "full"]] = Field(None, description="Rematerialization policy.")
    init_seed: Optional[int] = None
    maxtext: dict[str, Union[str, int, float, bool]] = Field(
        {}, description="Extra MaxText keys for this side (--target maxtext only)."
    )


class Side(_Model):
    model: ModelRef = Field(description="Catalog name (see `distillc models`) or an inline architecture.")
    checkpoint: Optional[str] = Field(
        None, description="Checkpoint path (gs:// or local): a Hugging Face directory, a .gguf file or a distillc checkpoint.")
    format: Optional[Literal["hf", "maxtext", "distillc", "gguf"]] = Field(
        None, description="Checkpoint format; detected from the path when absent (config.json + *.safetensors = hf, "
        "*.gguf = gguf).")
    pruned_layers: list[int] = Field(
        [], description="Student only: teacher layers removed to make this student."
    )
    overrides: Overrides = Field(default_factory=Overrides)


# ---------------------------------------------------------------- loss and layers


class Explicit(_Model):
    """Given indices, the same on both sides, or explicit [teacher, student] pairs."""

    strategy: Literal["explicit"]
    indices: Optional[list[int]] = None
    pairs: Optional[list[Annotated[tuple[int, int], Field(strict=False)]]] = None


class FirstN(_Model):
    """The first `count` layers (MaxText's launcher default: [0..7])."""

    strategy: Literal["first_n"]
    count: int = Field(gt=0)


class EvenlySpaced(_Model):
    """`count` layers spread over the whole depth, ending at the last layer."""

    strategy: Literal["evenly_spaced"]
    count: int = Field(gt=0)


class TopHeavy(_Model):
    """`count` layers, denser near the output, where semantic layers live."""

    strategy: Literal["top_heavy"]
    count: int = Field(gt=0)


class StraddlePruned(_Model):
    """The layers just before and just after each pruned block (student.pruned_layers)."""

    strategy: Literal["straddle_pruned"]


Layers = Annotated[
    Union[Explicit, FirstN, EvenlySpaced, TopHeavy, StraddlePruned], Field(discriminator="strategy")
]


class Loss(_Model):
    # validate_default: a default number becomes a Constant schedule, like a number written in the spec
    alpha: Schedule = Field(0.5, validate_default=True, description="Weight of the soft (KL) loss; 1 - alpha weights CE.")
    temperature: Schedule = Field(1.0, validate_default=True, description="Softmax temperature of the KL term.")
    beta: Schedule = Field(0.0, validate_default=True, description="Weight of the feature loss; 0 = logit-only (no sow).")
    feature_loss: Literal["cosine", "l2"] = "cosine"
    layers: Optional[Layers] = Field(None, description="Which layers the feature loss aligns.")


# ---------------------------------------------------------------- offline, data, train, runtime, resources


class Offline(_Model):
    top_k: Optional[int] = Field(None, gt=0, description="Teacher logits kept per token.")
    data_dir: Optional[str] = Field(None, description="Where the top-k cache is written and read.")
    loss: Literal["tail_bucket", "renormalized", "sampled"] = Field(
        "tail_bucket", description="tail_bucket: exact (k+1)-bucket KL; renormalized: MaxText's; sampled."
    )
    sampling: Literal["top_k", "random"] = "top_k"
    num_samples: Optional[int] = Field(None, gt=0, description="Tokens sampled per position (sampling: random).")
    capture_temperature: float = Field(1.0, gt=0)
    dtype: Literal["float32", "bfloat16"] = "float32"


class WeightedSource(_Model):
    source: Union[str, list[str]] = Field(description="A file, directory or glob (or a list of them).")
    weight: float = Field(gt=0, description="Documents are drawn with probability weight / sum of weights.")


class Data(_Model):
    source: Union[str, list[str], None] = Field(
        None, description="builtin:pydoc_topics, a .txt/.jsonl(.gz/.zst)/.parquet file, a directory or a glob "
        "(local or gs://), or a list of them.")
    sources: Optional[list[WeightedSource]] = Field(None, description="A weighted mixture, instead of source.")
    text_field: str = Field("text", description="The jsonl field / Parquet column that holds the text.")
    tokenizer: str = Field("byte", description="'byte', or a sentencepiece .model / HF tokenizer.json path.")
    seq_len: int = Field(gt=0)
    global_batch_size: int = Field(gt=0)
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out documents, chosen by a hash of their text.")
    eval_source: Union[str, list[str], None] = Field(None, description="Held-out files, instead of eval_fraction.")
    eval_tokens: int = Field(1_000_000, gt=0, description="The held-out set stops after this many tokens.")
    packing: bool = True
    shuffle_seed: int = 0
    workers: int = Field(0, ge=0, description="Tokenizer worker processes per host (0: in the training process); "
                         "the batches are the same for any count.")
    prepared: Optional[str] = Field(
        None, description="A directory for `distillc data prepare` to write the tokenized, packed shards to; "
        "training then reads them instead of the sources (local or gs://).")


class Divergence(_Model):
    """A finite run that has left the rails stops (exit 3, naming the step and the values) or warns."""

    factor: float = Field(10.0, gt=1, description="A total loss above factor x its median over the window is a spike.")
    window: int = Field(50, gt=0, description="Steps the median is taken over.")
    collapse_steps: int = Field(10, gt=0, description="Steps in a row with a gradient norm of exactly 0: a collapse.")
    policy: Literal["stop", "warn"] = "stop"


class Train(_Model):
    steps: int = Field(gt=0, le=MAX_STEPS, description="Optimizer steps (the step counter is int32).")
    learning_rate: float = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    end_learning_rate: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    checkpoint_every: int = Field(1000, gt=0)
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0)
    eval_batches: int = Field(8, gt=0)
    max_checkpoints: int = Field(3, gt=0)
    seed: int = 0
    output_dir: str = Field("runs", description="Runs go to <output_dir>/<name>/.")
    divergence: Divergence = Field(default_factory=Divergence)


class Mesh(_Model):
    data: int = Field(-1, description="-1: whatever the other axes leave.")
    fsdp: int = 1
    tensor: int = 1


class RuntimeSettings(_Model):
    scan_layers: bool = True
    enable_nnx: bool = True
    mesh: Mesh = Field(default_factory=Mesh)
    loss_impl: Literal["auto", "dense", "chunked"] = Field(
        "auto", description="dense [B, T, V] logits, or chunked over positions; auto: chunked when one "
        "device's logits per step reach 2^24 elements.")


class Resources(_Model):
    accelerator: str = Field("cpu", description="xpk device name, e.g. v5p-128, h100-80gb-8; cpu for local.")
    num_slices: int = Field(1, gt=0)
    docker_image: Optional[str] = None
    base_docker_image: Optional[str] = None
    script_dir: Optional[str] = None


class Ablation(_Model):
    strategy: Literal["grid", "staged", "random"] = "grid"
    axes: dict[str, list[Any]] = Field({}, description="Dotted key path -> values.")
    samples: Optional[int] = Field(None, gt=0, description="random: cells to draw.")
    seed: int = 0
    max_cells: int = Field(1000, gt=0)


class MaxTextTarget(_Model):
    version: str = Field(
        "v0.2.4", description="The MaxText release (git tag maxtext-vX.Y.Z) the --target maxtext output is for."
    )
    base_config: str = "base.yml"


class Spec(_Model):
    """A distillation experiment."""

    version: Literal[1] = 1
    name: str = Field(description="Becomes workload names: [a-z]([-a-z0-9]*[a-z0-9])?, <= 40 characters.")
    mode: Literal["online", "offline"] = "online"
    teacher: Side
    student: Side
    loss: Loss = Field(default_factory=Loss)
    offline: Optional[Offline] = None
    data: Data
    train: Train
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    resources: Resources = Field(default_factory=Resources)
    ablation: Optional[Ablation] = None
    maxtext: MaxTextTarget = Field(default_factory=MaxTextTarget)


SECTIONS: tuple[str, ...] = tuple(Spec.model_fields)
