"""Objectives: how the teacher's signal (if any) reaches the student's loss.

The trainer dispatches explicitly on the compiled config, never on what a batch happens to hold:

  config.objective == "cross_entropy"   labels only: a CE baseline or a teacher's own training;
  config.mode == "online"               the teacher runs forward in the step; its params are a jit
                                        argument (`frozen`), never differentiated, never in the
                                        optimizer state;
  config.mode == "offline"              the cached top-k teacher (runtime/offline/: its batches
                                        carry the teacher's signal).

Each objective runs the student's forward pass itself, so it decides how logits are formed:
`dense` materializes [B, T, V] logits, `chunked` keeps the final hidden state and computes the
loss chunk by chunk over positions (losses.chunked_distill_loss, losses.chunked_logit_sums), so
[B, T, V] never exists at once. Both give the same loss, metrics and gradients (tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillc.runtime.config import RuntimeConfig
from distillc.runtime.data.pipeline import DataError, DataPipeline, Shard
from distillc.runtime.models.transformer import Transformer, flops_per_token
from distillc.runtime.train import losses
from distillc.runtime.train.params import check_tokenizer, load_teacher

Weights = tuple[jax.Array, jax.Array, jax.Array]  # (alpha, temperature, beta) at this step


class TeacherUnavailable(RuntimeError):
    """The configured mode's teacher signal is not available in this build."""


class BatchSource(Protocol):
    """Where batches come from (data/pipeline.DataPipeline, or a cached-teacher pipeline)."""

    local_batch_size: int

    def train_iterator(self) -> Any: ...  # checkpointable: get_state() -> dict, set_state(dict)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]: ...

    def eval_batch_count(self) -> int: ...


class Objective(Protocol):
    """Both methods are traced inside the jitted step: `teacher` outside the student's gradient,
    `loss` inside it (it runs the student's forward pass)."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> BatchSource: ...

    @property
    def frozen(self) -> Any: ...  # pytree of arrays passed to `teacher` each step (teacher params), or None

    @property
    def teacher_flops_per_token(self) -> float: ...  # forward FLOPs the objective adds per token (0 if none)

    def teacher(self, frozen: Any, batch: dict) -> Any: ...  # the teacher signal for this batch (no grad)

    def loss(self, student: nnx.Module, signal: Any, batch: dict, weights: Weights) -> tuple[jax.Array, dict]: ...


def packed(batch: dict) -> dict:
    """The model's packing arguments from a batch: attention stays inside a document and positions restart
    per document (data/pipeline.py). Batches without them (old caches) run as one sequence per row."""
    return {k: batch[k] for k in ("segment_ids", "positions") if k in batch}


def student_token_sums(config: RuntimeConfig, student: Transformer, batch: dict, fields: dict,
                       terms: Callable[[jax.Array, dict], tuple[jax.Array, ...]]) -> tuple[jax.Array, ...]:
    """Runs the student and sums its per-token `terms(logits, fields)` (each 0 where fields["mask"] is
    False) over the batch: from [B, T, V] logits (dense), or chunk by chunk without them (chunked),
    as config.loss_path() says. The CE-only and offline objectives' one way to form logits."""
    chunked = config.loss_path() == "chunked"
    out = student(batch["inputs"], **packed(batch), return_hidden=chunked)
    if chunked:
        assert out.hidden is not None  # asked for with return_hidden
        return losses.chunked_logit_sums(terms, out.hidden, student.head(), fields, chunk_size=config.loss_chunk_size,
                                         softcap=student.arch.final_logit_softcap)
    assert out.logits is not None
    return tuple(losses.masked_mean_parts(t, fields["mask"])[0] for t in terms(out.logits, fields))


def _schedule_metrics(alpha, temperature, beta) -> dict:
    one = jnp.ones((), jnp.float32)
    return {"alpha": (alpha, one), "temperature": (temperature, one), "beta": (beta, one)}


@dataclasses.dataclass
class OnlineObjective:
    """The teacher runs forward every step on the same batch (guide: online distillation)."""

    config: RuntimeConfig
    data: BatchSource
    teacher_graphdef: Any
    frozen: Any
    name: str = "online"

    def __post_init__(self) -> None:
        pairs = self.config.loss.layer_pairs if self.config.loss.feature_enabled else ()
        self.student_feature_layers = tuple(p.student for p in pairs)
        self.teacher_feature_layers = tuple(p.teacher for p in pairs)
        self.chunked = self.config.loss_path() == "chunked"
        self.teacher_flops_per_token = flops_per_token(self.config.teacher.arch, self.config.data.seq_len,
                                                       training=False)

    def teacher(self, frozen, batch):
        teacher = nnx.merge(self.teacher_graphdef, frozen)
        out = teacher(batch["inputs"], **packed(batch), feature_layers=self.teacher_feature_layers,
                      return_hidden=self.chunked)
        signal = (out, teacher.head()) if self.chunked else out
        return jax.tree.map(jax.lax.stop_gradient, signal)

    def loss(self, student, signal, batch, weights):
        alpha, temperature, beta = weights
        out = student(batch["inputs"], **packed(batch), feature_layers=self.student_feature_layers,
                      return_hidden=self.chunked)
        common = dict(alpha=alpha, temperature=temperature, beta=beta, feature_kind=self.config.loss.feature_loss,
                      compare_vocab=self.config.loss.compare_vocab)
        if self.chunked:
            t_out, t_head = signal
            return losses.chunked_distill_loss(out, t_out, batch["labels"], batch["mask"], student_head=student.head(),
                                               teacher_head=t_head, chunk_size=self.config.loss_chunk_size,
                                               student_softcap=self.config.student.arch.final_logit_softcap,
                                               teacher_softcap=self.config.teacher.arch.final_logit_softcap, **common)
        return losses.distill_loss(out, signal, batch["labels"], batch["mask"], **common)


@dataclasses.dataclass
class CrossEntropyObjective:
    """Labels only: a CE baseline or a teacher's own training (config.objective == "cross_entropy")."""

    config: RuntimeConfig
    data: BatchSource
    frozen: Any = None
    name: str = "cross_entropy"
    teacher_flops_per_token: float = 0.0

    def teacher(self, frozen, batch):
        return None

    def loss(self, student, signal, batch, weights):
        alpha, temperature, beta = weights
        where = batch["mask"]

        def terms(logits, f):
            return (losses.cross_entropy(logits, f["labels"], f["mask"]),)

        (ce_sum,) = student_token_sums(self.config, student, batch, {"labels": batch["labels"], "mask": where}, terms)
        count = jnp.sum(where.astype(jnp.float32))
        total_sum = (1.0 - alpha) * ce_sum
        metrics = {"hard_loss": (ce_sum, count), "total_loss": (total_sum, count),
                   "tokens": (count, jnp.ones((), jnp.float32)), **_schedule_metrics(alpha, temperature, beta)}
        return total_sum / jnp.maximum(count, 1.0), metrics


def uses_teacher(config: RuntimeConfig) -> bool:
    """Whether the run needs a teacher: the objective is distillation (decided by the compiler)."""
    return config.objective == "distill"


def build_objective(config: RuntimeConfig, mesh, shard: Shard) -> Objective:
    """The explicit dispatch: CE only, online teacher forward, or offline cached teacher."""
    if config.objective == "cross_entropy":
        data = DataPipeline(config.data, shard)
        check_vocab(config, data.tokenizer.vocab_size)
        return CrossEntropyObjective(config, data)
    if config.mode == "online":
        check_tokenizer(config.teacher, config.data.tokenizer)  # before the data is read
        data = DataPipeline(config.data, shard)
        check_vocab(config, data.tokenizer.vocab_size)
        graphdef, frozen = load_teacher(config.teacher, config.scan_layers, mesh)
        return OnlineObjective(config, data, graphdef, frozen)
    if config.mode == "offline":
        try:
            from distillc.runtime.offline import objective as offline_objective
        except ImportError as e:
            raise TeacherUnavailable("offline (cached top-k) training is not available in this build") from e
        return offline_objective.build_objective(config, mesh, shard)
    raise ValueError(f"unknown mode {config.mode!r}")


def check_vocab(config: RuntimeConfig, tokenizer_vocab: int) -> None:
    """Every token id the tokenizer can produce must be a row of both models' embeddings."""
    for side in (config.student, config.teacher):
        if tokenizer_vocab > side.arch.vocab_size:
            raise DataError(
                f"tokenizer {config.data.tokenizer!r} has {tokenizer_vocab} tokens but the {side.role} "
                f"{side.arch.name} has vocab_size {side.arch.vocab_size}"
            )
