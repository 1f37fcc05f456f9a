"""Rules about the teacher/student pair itself: vocabulary, tokenizer, sizes, pruning (DC10x)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import model_label, same_model
from distillc.runtime.arch import unbuildable

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC100",
    Severity.ERROR,
    "a model the distillc runtime cannot build",
    needs=(),
    targets=("distillc",),
    hint="Compile for MaxText instead (`distillc launch SPEC --target maxtext`), or pick a dense model "
    "without MLA (`distillc models`).",
)
def runtime_cannot_build(ctx: Context) -> Iterator[Finding]:
    """The distillc runtime builds dense decoders with grouped-query attention, global or
    interleaved sliding-window/global (gemma2, gemma3: soft-capping, post-block norms, two RoPE
    bases included, each family checked against transformers' logits). Mixture-of-experts MLPs and
    multi-head latent attention (DeepSeek) are listed so that memory and MaxText configs can be
    computed for them, but our runtime refuses them when it builds the model: without this rule
    such a spec validates and fails on the cluster after the queue. A family whose conventions the
    runtime does not reproduce exactly is refused too (never a silently different function).
    MaxText's trainer builds them, so `--target maxtext` is the way out.

    Fails::

        student:
          model: {num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 256, tokenizer: byte, num_experts: 4, experts_per_token: 2}

    Passes::

        student:
          model: {num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 256, tokenizer: byte}
    """
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        why = unbuildable(arch) if arch is not None else None
        if why is not None:
            yield Finding(f"{role} {model_label(arch)}: the distillc runtime cannot build {why}", (role, "model"))


@rule(
    "DC101",
    Severity.ERROR,
    "teacher and student use different tokenizers",
    needs=("teacher_arch", "student_arch"),
    hint="Pick a teacher and student of the same tokenizer family; logits cannot be matched across vocabularies.",
)
def tokenizer_mismatch(ctx: Context) -> Iterator[Finding]:
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
    assert ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    t, s = ctx.teacher_arch, ctx.student_arch
    if t.tokenizer != s.tokenizer:
        yield Finding(
            f"teacher tokenizer '{t.tokenizer}' ({t.name}) differs from student tokenizer '{s.tokenizer}' ({s.name})",
            ("student", "model"),
        )


@rule(
    "DC102",
    Severity.ERROR,
    "same tokenizer, different real vocabularies",
    needs=("teacher_arch", "student_arch"),
    hint="Set real_vocab_size on the inline architecture whose embedding is padded past the tokenizer's last id.",
)
def real_vocab_mismatch(ctx: Context) -> Iterator[Finding]:
    """Two architectures that name the same tokenizer must agree on how many real token ids it has
    (`real_vocab_size`, or `vocab_size` when no padding is declared): the logits are compared over
    exactly those ids. A disagreement means one side's vocabulary is described wrongly, usually an
    inline architecture whose embedding is padded (to a multiple of 128, say) without saying so.

    Fails::

        student:
          model: {num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 384, tokenizer: byte}

    Passes::

        student:
          model: {num_layers: 2, emb_dim: 64, num_heads: 2, num_kv_heads: 2, head_dim: 32, mlp_dim: 256, vocab_size: 384, real_vocab_size: 256, tokenizer: byte}
    """
    assert ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    t, s = ctx.teacher_arch, ctx.student_arch
    if t.tokenizer == s.tokenizer and t.shared_vocab != s.shared_vocab:
        yield Finding(
            f"teacher and student both use tokenizer '{t.tokenizer}' but declare {t.shared_vocab} and "
            f"{s.shared_vocab} real tokens",
            ("student", "model"),
        )


def _shape_params(arch) -> int:
    return arch.model_copy(update={"params": None}).param_count()


@rule(
    "DC103",
    Severity.WARNING,
    "student larger than the teacher",
    needs=("teacher_arch", "student_arch", "student"),
    hint="Swap teacher and student, or check the model names: distillation compresses into a smaller or equal model.",
)
def student_larger(ctx: Context) -> Iterator[Finding]:
    """Distillation transfers what a stronger model knows into a smaller (or equal, for pruning
    recovery) one. A student with more parameters than its teacher is almost always a swapped pair;
    and a teacher that is not clearly better than the student makes the soft loss hurt.

    Fails::

        teacher:
          model: tiny-student
        student:
          model: tiny-teacher

    Passes::

        teacher:
          model: tiny-teacher
        student:
          model: tiny-student
    """
    assert ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    if ctx.spec.student.pruned_layers:
        return  # the teacher minus layers: smaller by construction
    t, s = ctx.teacher_arch, ctx.student_arch
    tp, sp = t.param_count(), s.param_count()
    if t.params is None or s.params is None:  # compare like with like
        tp, sp = _shape_params(t), _shape_params(s)
    if sp > tp:
        yield Finding(
            f"the student ({model_label(s)}, {sp / 1e9:.3g}B parameters) is larger than the teacher "
            f"({model_label(t)}, {tp / 1e9:.3g}B)",
            ("student", "model"),
        )


@rule(
    "DC104",
    Severity.ERROR,
    "the teacher cannot be pruned",
    needs=("teacher",),
    hint="Move pruned_layers to the student: it lists the teacher layers removed to make the student.",
)
def teacher_pruned(ctx: Context) -> Iterator[Finding]:
    """`pruned_layers` describes how the student was made from the teacher (the teacher minus
    those layers); the teacher is the unmodified reference model and is loaded as published.

    Fails::

        teacher:
          pruned_layers: [1]

    Passes::

        teacher:
          pruned_layers: []
    """
    assert ctx.spec.teacher is not None  # needs: the registry runs the rule only then
    if ctx.spec.teacher.pruned_layers:
        yield Finding("teacher.pruned_layers is set; only the student can be pruned", ("teacher", "pruned_layers"), key=True)


@rule(
    "DC105",
    Severity.ERROR,
    "pruned layer outside the teacher's depth",
    needs=("teacher_arch", "student"),
    hint="Pruned layers are 0-based teacher layer indices: 0 to num_layers - 1.",
)
def pruned_out_of_range(ctx: Context) -> Iterator[Finding]:
    """`student.pruned_layers` lists the teacher's layers (0-based) that were removed to make the
    student; an index past the teacher's depth names a layer that does not exist, so the student's
    depth and the straddle_pruned layer map would be wrong.

    Fails::

        student:
          model: tiny-teacher
          pruned_layers: [2]

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [1]
    """
    assert ctx.teacher_arch is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    depth = ctx.teacher_arch.num_layers
    for i, layer in enumerate(ctx.spec.student.pruned_layers):
        if not 0 <= layer < depth:
            yield Finding(
                f"pruned layer {layer} is outside the teacher's {depth} layers (0-{depth - 1})",
                ("student", "pruned_layers", i),
            )


@rule(
    "DC106",
    Severity.ERROR,
    "pruned layer listed twice",
    needs=("student",),
    hint="List each removed layer once.",
)
def pruned_duplicate(ctx: Context) -> Iterator[Finding]:
    """A layer can be removed only once; a repeated index is usually a typo for a neighbouring
    layer, and it would make the student's depth (teacher depth minus removed layers) ambiguous.

    Fails::

        student:
          model: tiny-teacher
          pruned_layers: [1, 1]

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [1]
    """
    assert ctx.spec.student is not None  # needs: the registry runs the rule only then
    seen: set[int] = set()
    for i, layer in enumerate(ctx.spec.student.pruned_layers):
        if layer in seen:
            yield Finding(f"pruned layer {layer} is listed more than once", ("student", "pruned_layers", i))
        seen.add(layer)


@rule(
    "DC107",
    Severity.ERROR,
    "pruned student of a different model",
    needs=("teacher", "student"),
    hint="Set student.model to the teacher's model: a pruned student is the teacher minus pruned_layers.",
)
def pruned_other_model(ctx: Context) -> Iterator[Finding]:
    """`student.pruned_layers` says the student is the teacher with those layers removed: the
    student's depth, the straddle_pruned layer map (teacher layer t is student layer t minus the
    pruned layers below it) and the memory estimate all derive from the teacher's architecture.
    With a different student model these indices mean nothing.

    Fails::

        student:
          model: tiny-student
          pruned_layers: [1]

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [1]
    """
    assert ctx.spec.teacher is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    if ctx.spec.student.pruned_layers and not same_model(ctx):
        yield Finding(
            "student.pruned_layers is set but the student is not the teacher's model",
            ("student", "pruned_layers"),
            key=True,
        )


@rule(
    "DC108",
    Severity.ERROR,
    "pruning removes every layer",
    needs=("teacher_arch", "student"),
    hint="Keep at least one layer: prune fewer layers.",
)
def pruned_everything(ctx: Context) -> Iterator[Finding]:
    """A student with every layer pruned has no transformer layers left to train.

    Fails::

        student:
          model: tiny-teacher
          pruned_layers: [0, 1]

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [0]
    """
    assert ctx.teacher_arch is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    depth = ctx.teacher_arch.num_layers
    pruned = {i for i in ctx.spec.student.pruned_layers if 0 <= i < depth}
    if len(pruned) >= depth:
        yield Finding(f"all {depth} of the teacher's layers are pruned", ("student", "pruned_layers"), key=True)


@rule(
    "DC109",
    Severity.ERROR,
    "straddle_pruned without pruned layers",
    needs=("loss", "student"),
    hint="List the removed teacher layers in student.pruned_layers, or pick another layers.strategy.",
)
def straddle_needs_pruned(ctx: Context) -> Iterator[Finding]:
    """The straddle_pruned strategy aligns the layers just before and just after each pruned block
    (the most disturbed representations); it needs `student.pruned_layers` to know the blocks.

    Fails::

        loss:
          layers: {strategy: straddle_pruned}

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [1]
        loss:
          beta: 1.0
          layers: {strategy: straddle_pruned}
    """
    assert ctx.spec.loss is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    layers = ctx.spec.loss.layers
    if layers is not None and layers.strategy == "straddle_pruned" and not ctx.spec.student.pruned_layers:
        yield Finding("layers strategy straddle_pruned needs student.pruned_layers", ("loss", "layers", "strategy"))


@rule(
    "DC148",
    Severity.ERROR,
    "pruning breaks the local/global layer pattern",
    needs=("teacher_arch", "student"),
    hint="Prune whole repeats of the pattern from its start (gemma2: pairs 2k, 2k+1; gemma3: six layers "
    "6k..6k+5), so that the kept layers keep it.",
)
def pruned_breaks_pattern(ctx: Context) -> Iterator[Finding]:
    """A pruned student is the teacher minus `pruned_layers`, and its architecture is the
    teacher's with fewer layers: its local (sliding-window) and global layers follow the same
    `local_global_ratio` from layer 0 (gemma2: local, global, ...; gemma3: five local, one
    global). Unless whole repeats of the pattern are removed, a kept teacher layer lands where the
    student's pattern has the other kind, and the pruned model would run that layer's weights with
    the wrong window and RoPE base: a silently different function from "the teacher minus those
    layers".

    Fails::

        teacher:
          model: gemma2-2b
        student:
          model: gemma2-2b
          pruned_layers: [1]

    Passes::

        teacher:
          model: gemma2-2b
        student:
          model: gemma2-2b
          pruned_layers: [2, 3]
    """
    assert ctx.teacher_arch is not None and ctx.spec.student is not None  # needs: the registry runs the rule only then
    t = ctx.teacher_arch
    pruned = set(ctx.spec.student.pruned_layers)
    if t.attention != "local_global" or not pruned or any(not 0 <= i < t.num_layers for i in pruned):
        return  # nothing to break, or DC105 reports the index
    kept = [i for i in range(t.num_layers) if i not in pruned]
    if not kept:
        return  # DC108
    kinds = t.local_layers()
    want = t.model_copy(update={"num_layers": len(kept)}).local_layers()
    for j, (i, local) in enumerate(zip(kept, want)):
        if kinds[i] != local:
            kind = {True: "local", False: "global"}
            yield Finding(
                f"without layers {sorted(pruned)}, student layer {j} is teacher layer {i} ({kind[kinds[i]]}), but the "
                f"{t.local_global_ratio} local/global pattern makes student layer {j} {kind[local]}",
                ("student", "pruned_layers"),
                key=True,
            )
            return
