"""Rules about the teacher/student pair itself: vocabulary, tokenizer, sizes."""

from __future__ import annotations

from typing import Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule


@rule(
    "DC101",
    Severity.ERROR,
    "teacher and student use different tokenizers",
    needs=("teacher_arch", "student_arch"),
    hint="Pick a teacher and student of the same tokenizer family; logits cannot be matched across vocabularies.",
)
def tokenizer_mismatch(ctx) -> Iterator[Finding]:
    """The KL term compares the two models' distributions token id by token id, so both must use
    the same tokenizer. Equal vocab_size is not enough (llama2-7b, mistral-7b and mixtral-8x7b all
    have 32000 tokens and different tokenizers); different vocab_size can still be fine when one
    embedding is padded past the tokenizer's real tokens (qwen2.5-7b has 152064 rows and
    qwen2.5-1.5b 151936, both over the same 151665 real tokens): the plan then compares logits over
    the shared real tokens. MaxText's trainer asserts equal vocab_size, which accepts the first
    kind of mistake and rejects the second kind of valid pair.

    Fails::

        teacher:
          model: {num_layers: 2, emb_dim: 128, num_heads: 4, num_kv_heads: 4, head_dim: 32, mlp_dim: 512, vocab_size: 256, tokenizer: other-bytes}

    Passes::

        teacher:
          model: tiny-teacher
    """
    t, s = ctx.teacher_arch, ctx.student_arch
    if t.tokenizer != s.tokenizer:
        yield Finding(
            f"teacher tokenizer '{t.tokenizer}' ({t.name}) differs from student tokenizer '{s.tokenizer}' ({s.name})",
            ("student", "model"),
        )
