"""Rules about the checkpoints the runtime loads (DC18x)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.runtime.convert.hf_config import HFConfigError, config_differences, local_config
from distillc.runtime.convert.shipped_tokenizer import tokenizer_disagreement

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC180",
    Severity.ERROR,
    "student checkpoint not found",
    needs=(),
    hint="Fix the path, or remove student.checkpoint to start the student from a random init (or, with "
    "student.pruned_layers, from the teacher minus those layers).",
)
def student_checkpoint_missing(ctx: Context) -> Iterator[Finding]:
    """The runtime loads `student.checkpoint` as the student's starting parameters (a warm start, or
    a pruned model for prune recovery). A local path that does not exist would stop the job at its
    start; here it is reported before anything is queued. This is the one check that reads the
    filesystem: local paths only (relative ones from the current directory), never the network, so
    gs:// paths are checked by the runtime when it starts (exit 2, naming the path). The teacher's
    local path may be empty on purpose: `distillc launch --local` trains and caches the teacher there.

    Fails::

        student:
          checkpoint: /nonexistent/distillc/student-checkpoint

    Passes::

        student:
          checkpoint: gs://bucket/student/0/items
    """
    side = ctx.spec.student
    path = side.checkpoint if side is not None else None
    if path is None or "://" in path or not path.strip():
        return  # remote: the runtime checks it; empty: DC145 reports it
    if not os.path.exists(path):
        yield Finding(f"student.checkpoint {path!r} does not exist", ("student", "checkpoint"))


@rule(
    "DC181",
    Severity.ERROR,
    "checkpoint's config.json disagrees with the model",
    needs=(),
    targets=("distillc",),
    hint="Point the checkpoint at the model the spec names, or name the model the checkpoint holds "
    "(`distillc models`, or an inline architecture with its config.json's values).",
)
def hf_config_mismatch(ctx: Context) -> Iterator[Finding]:
    """A Hugging Face checkpoint (a local directory with config.json beside *.safetensors) must hold
    the model the spec names: its model type must be the family's, and every field that changes the
    function (shapes, vocabulary, norm eps, RoPE theta and scaling, tied embeddings, biases, q/k
    norms, activation, norm and embedding conventions) must equal the catalog's or inline values.
    The runtime refuses a mismatch when it starts; this reports each disagreeing field before
    anything is queued. The same code reads config.json in both places (runtime/convert/hf_config.py,
    no jax). Local paths only; a gs:// checkpoint is checked by the runtime at start.

    Fails::

        teacher:
          model: tiny-teacher
          checkpoint: tests/fixtures/hf/llama2

    Passes::

        teacher:
          model: tiny-teacher
          checkpoint: gs://bucket/hf/tiny-teacher
    """
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        side = getattr(ctx.spec, role)
        if side is None or arch is None or side.checkpoint is None or side.format not in (None, "hf"):
            continue
        try:
            config = local_config(side.checkpoint)
            if config is None:
                continue
            why = config_differences(config, arch)
        except HFConfigError as e:
            why = [str(e)]
        for field in why:
            yield Finding(f"{role}.checkpoint {side.checkpoint!r} holds another model than {arch.name}: {field}",
                          (role, "checkpoint"))


@rule(
    "DC182",
    Severity.ERROR,
    "MaxText cannot load a Hugging Face checkpoint",
    needs=(),
    targets=("maxtext",),
    hint="Convert it with MaxText's checkpoint conversion (to .../0/items) and point the checkpoint there, "
    "or run the distillc target, which loads Hugging Face directories.",
)
def hf_checkpoint_for_maxtext(ctx: Context) -> Iterator[Finding]:
    """MaxText's trainer restores `load_parameters_path` as an Orbax checkpoint; a Hugging Face
    directory (config.json + *.safetensors, named by `format: hf` or found at a local path) there
    fails on the cluster after the queue. The distillc runtime loads it directly.

    Fails::

        teacher:
          checkpoint: gs://bucket/hf/Llama-3.1-8B
          format: hf

    Passes::

        teacher:
          checkpoint: gs://bucket/llama3.1-8b/0/items
    """
    for role in ("teacher", "student"):
        side = getattr(ctx.spec, role)
        if side is None or side.checkpoint is None or side.format not in (None, "hf"):
            continue
        try:
            hf = side.format == "hf" or local_config(side.checkpoint) is not None
        except HFConfigError:
            hf = True  # a config.json beside safetensors, unreadable: still not an Orbax checkpoint
        if hf:
            yield Finding(f"{role}.checkpoint {side.checkpoint!r} is a Hugging Face checkpoint, which MaxText's "
                          "load_parameters_path cannot restore", (role, "checkpoint"))


@rule(
    "DC185",
    Severity.ERROR,
    "data.tokenizer is not the tokenizer the checkpoint ships",
    needs=(),
    hint="Point data.tokenizer at the tokenizer.json (or tokenizer.model) beside the checkpoint's config.json, "
    "or point the checkpoint at a model trained with data.tokenizer.",
)
def shipped_tokenizer_mismatch(ctx: Context) -> Iterator[Finding]:
    """A Hugging Face checkpoint's token ids mean what the tokenizer shipped beside it says; data
    tokenized by another file feeds the model ids it reads as other tokens, and nothing fails (the
    vocabulary sizes can be equal). When a side's checkpoint is a local directory holding
    config.json and tokenizer.json (or tokenizer.model) and data.tokenizer names a local file of the
    same kind, their sha256 must match; data.tokenizer 'byte' disagrees with a shipped tokenizer
    unless the model's own tokenizer (catalog or inline) is byte. Local paths only, hashed only
    when both are files (a few MB: milliseconds); gs:// paths are checked by the runtime before it
    loads the checkpoint (exit 2, naming both files). A .gguf data.tokenizer, or a kind the
    checkpoint does not ship, is not compared.

    Fails::

        teacher:
          checkpoint: tests/fixtures/tokenizers/hf
        data:
          tokenizer: tests/fixtures/tokenizers/other.json

    Passes::

        teacher:
          checkpoint: tests/fixtures/tokenizers/hf
        data:
          tokenizer: tests/fixtures/tokenizers/hf/tokenizer.json
    """
    data = ctx.spec.data
    if data is None:
        return  # DC012 reports the missing section
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        side = getattr(ctx.spec, role)
        if side is None or side.checkpoint is None or side.format not in (None, "hf") or not side.checkpoint.strip():
            continue
        try:
            why = tokenizer_disagreement(role, side.checkpoint, data.tokenizer,
                                         arch.tokenizer if arch is not None else None, local_only=True)
        except OSError:
            continue  # a file it cannot read (a permission): the runtime's loader says why, at start
        if why is not None:
            yield Finding(why, (role, "checkpoint"))
