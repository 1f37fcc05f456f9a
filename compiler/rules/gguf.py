"""Rules about GGUF checkpoints (llama.cpp's format), DC183-DC184: read with the header reader the
runtime uses (runtime/convert/gguf_meta.py: struct over a memory map, no numpy, no gguf package), so
`validate` stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from distillc.compiler import checkpoint_files as files
from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.runtime.convert.gguf_meta import GGUFError, arch_differences, is_gguf_path

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC183",
    Severity.ERROR,
    "GGUF checkpoint holds another model",
    needs=(),
    targets=("distillc",),
    hint="Point the checkpoint at the .gguf file of the model the spec names, or name the model the file holds "
    "(an inline architecture with the values of its <architecture>.* metadata).",
)
def gguf_mismatch(ctx: Context) -> Iterator[Finding]:
    """A GGUF checkpoint (`format: gguf`, or a path ending in .gguf) is one file a published model
    ships as, loaded as it is (never trained into by `--local`). Its header must describe
    the model the spec names: a general.architecture of the spec's family (llama: the llama and
    mistral families; qwen2: qwen2.5; qwen3; gemma; gemma2; gemma3; another architecture is named
    as one this runtime does not load), and every field that changes the function, read as
    llama.cpp reads it, must equal the catalog's or inline values: layers, widths, heads, head_dim,
    vocabulary, RMSNorm eps and RoPE theta as float32, tied embeddings (no output.weight), q/k/v
    biases (attn_q.bias), q/k norms (attn_q_norm), RoPE scaling (rope.scaling.type linear, or
    Llama 3.1's rope_freqs.weight factors against those the spec's llama3 scaling gives), gemma2's
    soft-caps and gemma2/gemma3's sliding window, and what llama.cpp fixes instead of reading it:
    the 1:1 / 5:1 local/global patterns, gemma3's local RoPE base 10000, and the query scaling
    (head_dim^-1/2, (emb_dim / heads)^-1/2 for the 27B models), so a spec's other
    query_pre_attn_scalar is a mismatch. The runtime refuses a mismatch when it starts; this reports
    each field before anything is queued. Existing local files, and gs:// files validate reaches
    (the header only, by range requests from the file's start; DC186 notes one it cannot read); a
    file not there yet is checked by the runtime at start (a missing student checkpoint is DC180,
    a missing gs:// teacher DC187).

    Fails::

        teacher:
          model: tiny-teacher
          checkpoint: tests/fixtures/gguf/tiny-llama-f32.gguf

    Passes::

        teacher:
          model: tiny-teacher
          checkpoint: gs://bucket/gguf/tiny-teacher.gguf
    """
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        side = getattr(ctx.spec, role)
        if side is None or side.checkpoint is None or side.format not in (None, "gguf"):
            continue
        try:
            header = files.gguf_header(ctx, side.checkpoint, side.format)
            if header is None or arch is None:
                continue
            why = arch_differences(header, arch)
        except GGUFError as e:
            why = [str(e)]
        for field in why:
            yield Finding(f"{role}.checkpoint {side.checkpoint!r}: {field}", (role, "checkpoint"))


@rule(
    "DC184",
    Severity.ERROR,
    "MaxText cannot load a GGUF checkpoint",
    needs=(),
    targets=("maxtext",),
    hint="Run the distillc target, which loads GGUF files, or convert the model to a MaxText checkpoint "
    "(.../0/items) and point the checkpoint there.",
)
def gguf_for_maxtext(ctx: Context) -> Iterator[Finding]:
    """MaxText's trainer restores `load_parameters_path` as an Orbax checkpoint; a GGUF file there
    fails on the cluster after the queue. The distillc runtime loads it directly.

    Fails::

        teacher:
          checkpoint: gs://bucket/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

    Passes::

        teacher:
          checkpoint: gs://bucket/llama3.1-8b/0/items
    """
    for role in ("teacher", "student"):
        side = getattr(ctx.spec, role)
        if side is None or side.checkpoint is None:
            continue
        if side.format == "gguf" or (side.format is None and is_gguf_path(side.checkpoint)):
            yield Finding(f"{role}.checkpoint {side.checkpoint!r} is a GGUF file, which MaxText's "
                          "load_parameters_path cannot restore", (role, "checkpoint"))
