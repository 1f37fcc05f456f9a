"""Rules about the distillation mode: online vs offline top-k, and the offline section (DC11x)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import beta_zero, node, written

if TYPE_CHECKING:
    from distillc.compiler.check import Context


def _offline_anchor(ctx: Context) -> tuple:
    """Where to point when an offline key is missing: the section if written, else `mode`."""
    return ("offline",) if written(ctx, "offline") else node(ctx, "mode")


@rule(
    "DC110",
    Severity.ERROR,
    "teacher without a checkpoint",
    needs=("teacher", "mode"),
    hint="Set teacher.checkpoint to the teacher's Orbax checkpoint (gs://.../0/items, or a local path). For the "
    "tiny catalog models, `distillc launch --local` trains the teacher into that path once.",
)
def teacher_checkpoint(ctx: Context) -> Iterator[Finding]:
    """A randomly initialized teacher has nothing to teach: the soft loss would pull the student
    toward noise. Online runs the teacher every step; offline runs it once to capture the top-k
    cache; both restore it from `teacher.checkpoint` (MaxText's load_parameters_path in
    teacher_overrides, the guide's "load_parameters_path not set for teacher" row). There is no
    exception for the tiny local models: the quickstart names a path, and `launch --local` trains
    the teacher into it the first time, so the spec always says which teacher it means.

    Fails::

        teacher:
          checkpoint: null

    Passes::

        teacher:
          checkpoint: gs://bucket/teacher/0/items
    """
    assert ctx.spec.teacher is not None and ctx.spec.mode is not None  # needs: the registry runs the rule only then
    if not (ctx.spec.teacher.checkpoint or "").strip():
        where = "every step" if ctx.spec.mode == "online" else "once, to capture the top-k cache"
        yield Finding(f"teacher.checkpoint is not set, but the teacher runs {where}", ("teacher",), key=True)


@rule(
    "DC111",
    Severity.ERROR,
    "feature loss in offline mode",
    needs=("mode", "loss"),
    hint="Set beta: 0 for offline distillation, or use mode: online for feature alignment.",
)
def offline_no_features(ctx: Context) -> Iterator[Finding]:
    """Offline distillation trains the student on cached teacher logits (top-k); the teacher's
    intermediate activations are not cached, so there is nothing to align the student's layers
    with. Feature loss needs the teacher running in the same step: online mode.

    Fails::

        mode: offline
        offline: {top_k: 16, data_dir: /tmp/topk}
        loss:
          beta: 1.0

    Passes::

        mode: offline
        offline: {top_k: 16, data_dir: /tmp/topk}
        loss:
          beta: 0.0
    """
    assert ctx.spec.mode is not None and ctx.spec.loss is not None  # needs: the registry runs the rule only then
    if ctx.spec.mode == "offline" and not beta_zero(ctx.spec.loss):
        yield Finding("offline mode has no teacher activations: beta must be 0", node(ctx, "loss", "beta"))


@rule(
    "DC112",
    Severity.ERROR,
    "offline mode without top_k",
    needs=("mode",),
    hint="Add offline.top_k, e.g. 64 (the teacher logits kept per token).",
)
def offline_top_k(ctx: Context) -> Iterator[Finding]:
    """Offline mode caches the teacher's k most likely tokens per position; k sets the cache size
    and how much of the teacher's distribution the student sees. There is no safe default.

    Fails::

        mode: offline
        offline: {data_dir: /tmp/topk}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk}
    """
    assert ctx.spec.mode is not None  # needs: the registry runs the rule only then
    if ctx.spec.mode != "offline" or "offline" in ctx.spec.failed:
        return
    off = ctx.spec.offline
    if off is None or off.top_k is None:
        yield Finding("mode offline needs offline.top_k", _offline_anchor(ctx), key=True)


@rule(
    "DC113",
    Severity.ERROR,
    "offline mode without data_dir",
    needs=("mode",),
    hint="Add offline.data_dir: where the top-k cache is written (gs://... for cluster runs).",
)
def offline_data_dir(ctx: Context) -> Iterator[Finding]:
    """The capture stage writes the teacher's top-k logits to `offline.data_dir` and the training
    stage reads them back; both workloads must agree on that location.

    Fails::

        mode: offline
        offline: {top_k: 64}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk}
    """
    assert ctx.spec.mode is not None  # needs: the registry runs the rule only then
    if ctx.spec.mode != "offline" or "offline" in ctx.spec.failed:
        return
    off = ctx.spec.offline
    if off is None or not (off.data_dir or "").strip():
        yield Finding("mode offline needs offline.data_dir", _offline_anchor(ctx), key=True)


@rule(
    "DC114",
    Severity.WARNING,
    "offline section in online mode",
    needs=("mode", "offline"),
    hint="Set mode: offline to use it, or remove the offline section.",
)
def offline_section_ignored(ctx: Context) -> Iterator[Finding]:
    """Online mode runs the teacher every step and never reads a top-k cache; an offline section
    there is ignored, which usually means `mode: offline` was forgotten.

    Fails::

        mode: online
        offline: {top_k: 64, data_dir: /tmp/topk}

    Passes::

        mode: online
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None  # needs: the registry runs the rule only then
    if ctx.spec.mode == "online" and written(ctx, "offline"):
        yield Finding("the offline section is ignored in online mode", ("offline",), key=True)


@rule(
    "DC115",
    Severity.ERROR,
    "top_k larger than the vocabulary",
    needs=("mode", "offline", "teacher_arch"),
    hint="Choose top_k well below the vocabulary size (16-128 is typical).",
)
def top_k_vocab(ctx: Context) -> Iterator[Finding]:
    """The cache keeps the teacher's k most likely tokens out of its real vocabulary; k cannot
    exceed that vocabulary (padding rows are never real tokens).

    Fails::

        mode: offline
        offline: {top_k: 300, data_dir: /tmp/topk}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk}
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None and ctx.teacher_arch is not None  # needs: the registry runs the rule only then
    off = ctx.spec.offline
    vocab = ctx.teacher_arch.shared_vocab
    if ctx.spec.mode == "offline" and off.top_k is not None and off.top_k > vocab:
        yield Finding(f"top_k {off.top_k} exceeds the teacher's {vocab} real tokens", ("offline", "top_k"))


@rule(
    "DC116",
    Severity.ERROR,
    "random sampling without num_samples",
    needs=("mode", "offline"),
    hint="Add offline.num_samples (tokens sampled per position), or use sampling: top_k.",
)
def sampling_needs_num_samples(ctx: Context) -> Iterator[Finding]:
    """`sampling: random` stores tokens sampled from the teacher's distribution instead of its top
    k; how many per position is `offline.num_samples`, which has no default.

    Fails::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, sampling: random}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, sampling: random, num_samples: 32}
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None  # needs: the registry runs the rule only then
    off = ctx.spec.offline
    if ctx.spec.mode == "offline" and off.sampling == "random" and off.num_samples is None:
        yield Finding("sampling: random needs offline.num_samples", ("offline", "sampling"))


@rule(
    "DC117",
    Severity.WARNING,
    "renormalized top-k loss ignores the student's tail",
    needs=("mode", "offline"),
    hint="Use offline.loss: tail_bucket (the default): exact for the top-k tokens plus one 'rest' bucket.",
)
def renormalized_loss(ctx: Context) -> Iterator[Finding]:
    """`offline.loss: renormalized` is MaxText's sparse KL: both distributions restricted to the
    teacher's top-k tokens and renormalized there. It ignores every student logit outside the
    top k (zero gradient), so the student may put any probability mass on the tail at no cost,
    and its value is not comparable with the dense KL (the reviewer's normalization concern on
    offline top-k distillation). `tail_bucket` compares the top-k tokens plus one "rest" bucket,
    both sides normalized over the full vocabulary, using the teacher's stored log-normalizer:
    exact for that coarsening and never larger than the dense KL.

    Fails::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, loss: renormalized}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, loss: tail_bucket}
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None  # needs: the registry runs the rule only then
    if ctx.spec.mode == "offline" and ctx.spec.offline.loss == "renormalized":
        yield Finding(
            "offline.loss renormalized compares the top-k tokens only: the student's tail mass goes unpenalized",
            ("offline", "loss"),
        )


@rule(
    "DC118",
    Severity.WARNING,
    "num_samples ignored by top-k sampling",
    needs=("mode", "offline"),
    hint="Remove offline.num_samples, or set sampling: random.",
)
def num_samples_ignored(ctx: Context) -> Iterator[Finding]:
    """`offline.num_samples` only applies to `sampling: random`; with the default `top_k`
    sampling the cache holds exactly top_k tokens per position and num_samples is ignored.

    Fails::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, num_samples: 32}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk}
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None  # needs: the registry runs the rule only then
    off = ctx.spec.offline
    if ctx.spec.mode == "offline" and off.sampling == "top_k" and off.num_samples is not None:
        yield Finding("offline.num_samples is ignored with sampling: top_k", ("offline", "num_samples"), key=True)


@rule(
    "DC119",
    Severity.ERROR,
    "offline loss does not match the cache's sampling",
    needs=("mode", "offline"),
    hint="Use loss: sampled with sampling: random; tail_bucket or renormalized with sampling: top_k.",
)
def loss_matches_sampling(ctx: Context) -> Iterator[Finding]:
    """The offline loss reads what the capture stage stored. `sampled` is the importance-weighted
    estimate over tokens drawn from the teacher's distribution (`sampling: random`); `tail_bucket`
    and `renormalized` need the teacher's k most likely tokens and its log-normalizer
    (`sampling: top_k`). Any other pairing is refused by the runtime when training starts, after
    the capture stage has already spent the teacher's forward passes.

    Fails::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, loss: sampled}

    Passes::

        mode: offline
        offline: {top_k: 64, data_dir: /tmp/topk, loss: sampled, sampling: random, num_samples: 32}
    """
    assert ctx.spec.mode is not None and ctx.spec.offline is not None  # needs: the registry runs the rule only then
    off = ctx.spec.offline
    if ctx.spec.mode != "offline":
        return
    needs = "random" if off.loss == "sampled" else "top_k"
    if off.sampling != needs:
        yield Finding(f"offline.loss {off.loss} needs sampling: {needs}, not {off.sampling}", ("offline", "loss"))
