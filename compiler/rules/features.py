"""Rules about the feature (activation) loss: beta, layer indices, model structure (DC12x)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import beta_zero, feature_on, model_label, node, same_model, schedule_values, written

if TYPE_CHECKING:
    from distillc.compiler.check import Context
    from distillc.compiler.spec import Layers


@rule(
    "DC120",
    Severity.ERROR,
    "beta starts at 0 and can never ramp up",
    needs=("loss",),
    hint="Start beta at a tiny positive value (e.g. start: 1.0e-6) and set end to your target. (MaxText's "
    "trainer compiles the sow in or out once, from distill_beta's start value.)",
    targets=("maxtext",),
)
def beta_cannot_ramp(ctx: Context) -> Iterator[Finding]:
    """MaxText's trainer skips the sow when distill_beta (the start value) is 0, and that is decided
    when the step is compiled: a schedule that starts at 0 and rises never turns the feature loss
    on there (the per-layer activations are never sown, so there is nothing to align). The distillc
    runtime compiles the feature path whenever beta is positive at some step, so a ramp from 0
    works with `--target distillc`.

    Fails::

        loss:
          beta: {start: 0.0, end: 0.5, schedule: cosine}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: {start: 1.0e-6, end: 0.5, schedule: cosine}
          layers: {strategy: first_n, count: 1}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    beta = ctx.spec.loss.beta
    if beta.schedule in ("linear", "cosine") and beta.start == 0 and (beta.end or 0) > 0:
        yield Finding(f"beta starts at 0 and rises to {beta.end}: the feature loss is never enabled", ("loss", "beta", "start"))
    elif beta.schedule == "piecewise" and beta.points[0][1] == 0 and max(v for _, v in beta.points) > 0:
        yield Finding("beta's first point is 0: the feature loss is never enabled", ("loss", "beta", "points", 0))


@rule(
    "DC121",
    Severity.ERROR,
    "feature loss needs scanned layers and NNX",
    needs=("loss", "runtime"),
    hint="Set runtime.scan_layers: true and runtime.enable_nnx: true: MaxText's trainer asserts both when "
    "distill_beta > 0.",
    targets=("maxtext",),
)
def feature_needs_scan_nnx(ctx: Context) -> Iterator[Finding]:
    """With beta > 0 MaxText's trainer collects each layer's attention out-projection activations
    with `sow(nnx.Intermediate, ...)` inside a scan over the stacked layers, and the loss takes the
    selected layers along the scan axis (`jnp.take(features, layer_indices, axis=0)`). Unscanned
    layers have no such axis, and `sow` into `nnx.Intermediate` exists only in NNX: the trainer
    asserts `scan_layers` and `enable_nnx` at config time (the guide's first troubleshooting row).
    Logit-only runs (beta = 0) have no such constraint, and neither has the distillc runtime, which
    collects the selected layers' features scanned or unscanned (`--target distillc`).

    Fails::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: first_n, count: 1}
        runtime:
          scan_layers: false

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: first_n, count: 1}
        runtime:
          scan_layers: true
          enable_nnx: true
    """
    assert ctx.spec.loss is not None and ctx.spec.runtime is not None  # needs: the registry runs the rule only then
    if not feature_on(ctx.spec.loss):
        return
    rt = ctx.spec.runtime
    for key, value in (("scan_layers", rt.scan_layers), ("enable_nnx", rt.enable_nnx)):
        if not value:
            yield Finding(f"beta > 0 (feature loss) requires runtime.{key}: true", ("runtime", key))


@rule(
    "DC122",
    Severity.ERROR,
    "feature loss without a layer selection",
    needs=("loss",),
    hint="Set loss.layers, e.g. {strategy: evenly_spaced, count: 8}; with explicit, give indices or pairs.",
)
def feature_needs_layers(ctx: Context) -> Iterator[Finding]:
    """With beta > 0 the feature loss aligns the activations of selected layers; it needs exactly
    one selection: a strategy with a count, straddle_pruned, or explicit indices (the same index on
    both sides) or pairs ([teacher, student]) but not both. distillc does not copy MaxText's
    launcher default (the first 8 layers, whatever the depth): the guide shows better choices.

    Fails::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: evenly_spaced, count: 2}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    loss = ctx.spec.loss
    if not feature_on(loss):
        return
    layers = loss.layers
    if layers is None:
        yield Finding("beta > 0 but loss.layers is not set: the feature loss has no layers to align", node(ctx, "loss", "beta"))
    elif layers.strategy == "explicit":
        if layers.indices and layers.pairs:
            yield Finding("explicit layers give both indices and pairs; give one", ("loss", "layers", "pairs"), key=True)
        elif not layers.indices and not layers.pairs:
            yield Finding("explicit layers need a non-empty indices or pairs list", node(ctx, "loss", "layers"))


def _selection(ctx: Context) -> tuple[int, int, Optional[Layers]]:
    """(teacher depth, student depth, the layers section)."""
    assert ctx.teacher_arch is not None and ctx.student_arch is not None and ctx.spec.loss is not None  # the callers' needs
    return ctx.teacher_arch.num_layers, ctx.student_arch.num_layers, ctx.spec.loss.layers


@rule(
    "DC123",
    Severity.ERROR,
    "layer index outside a model's depth",
    needs=("loss", "teacher_arch", "student_arch"),
    hint="Layer indices are 0-based and must exist in both models; a count can be at most the student's depth.",
)
def layer_out_of_range(ctx: Context) -> Iterator[Finding]:
    """Each selected layer must exist in both models: explicit indices in the shallower of the two,
    a pair's teacher index in the teacher and its student index in the student (after pruning),
    and first_n / evenly_spaced / top_heavy counts at most the student's depth. Past the depth the
    runtime's `take` along the scan axis would clamp or fail.

    Fails::

        loss:
          layers: {strategy: explicit, indices: [0, 2]}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: explicit, indices: [0, 1]}
    """
    assert ctx.spec.loss is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    tdepth, sdepth, layers = _selection(ctx)
    if layers is None or layers.strategy == "straddle_pruned":
        return
    base = ("loss", "layers")
    if layers.strategy == "explicit":
        both = min(tdepth, sdepth)
        who = "student" if sdepth <= tdepth else "teacher"
        for i, idx in enumerate(layers.indices or []):
            if not 0 <= idx < both:
                yield Finding(f"layer {idx} is outside the {who}'s {both} layers (0-{both - 1})", (*base, "indices", i))
        for i, (t, s) in enumerate(layers.pairs or []):
            if not 0 <= t < tdepth:
                yield Finding(f"teacher layer {t} is outside the teacher's {tdepth} layers (0-{tdepth - 1})", (*base, "pairs", i, 0))
            if not 0 <= s < sdepth:
                yield Finding(f"student layer {s} is outside the student's {sdepth} layers (0-{sdepth - 1})", (*base, "pairs", i, 1))
        return
    limit = min(tdepth, sdepth)
    if layers.count > limit:
        yield Finding(f"{layers.strategy} count {layers.count} exceeds the {limit} layers available", (*base, "count"))


@rule(
    "DC124",
    Severity.WARNING,
    "layer selected twice",
    needs=("loss",),
    hint="Remove the repeated entry; to weight a layer more, raise beta instead.",
)
def layer_duplicate(ctx: Context) -> Iterator[Finding]:
    """A repeated index (or pair) silently counts that layer twice in the mean feature loss; it is
    usually a typo for a neighbouring layer.

    Fails::

        loss:
          layers: {strategy: explicit, indices: [1, 1]}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: explicit, indices: [0, 1]}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    layers = ctx.spec.loss.layers
    if layers is None or layers.strategy != "explicit":
        return
    for key, items in (("indices", layers.indices or []), ("pairs", [tuple(p) for p in layers.pairs or []])):
        seen: set = set()
        for i, item in enumerate(items):
            if item in seen:
                shown = list(item) if isinstance(item, tuple) else item
                yield Finding(f"layer {shown} is selected more than once", ("loss", "layers", key, i))
            seen.add(item)


def _blocks(pruned: Iterable[int]) -> list[list[int]]:
    """Contiguous runs [a, b] of the sorted unique pruned layers."""
    out: list[list[int]] = []
    for i in sorted(set(pruned)):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


@rule(
    "DC125",
    Severity.WARNING,
    "layer selection ignores the pruning pattern",
    needs=("loss", "student", "teacher_arch"),
    hint="Use {strategy: straddle_pruned}, or explicit pairs [teacher, student] that account for the removed layers.",
)
def layers_ignore_pruning(ctx: Context) -> Iterator[Finding]:
    """In a pruned student, teacher layer t is student layer t - (pruned layers below t). Explicit
    indices compare layer i with layer i, which past the first pruned layer are different layers;
    a pair [t, s] whose s is not t's copy aligns unrelated layers; and a selection that never
    touches the layers next to the pruned region misses the representations the prune disturbed
    most (the guide's "feature loss rises: wrong layer indices for the pruning pattern" row).

    Fails::

        student:
          model: tiny-teacher
          pruned_layers: [0]
        loss:
          beta: 1.0
          layers: {strategy: explicit, indices: [0]}

    Passes::

        student:
          model: tiny-teacher
          pruned_layers: [0]
        loss:
          beta: 1.0
          layers: {strategy: straddle_pruned}
    """
    assert ctx.spec.loss is not None and ctx.spec.student is not None and ctx.teacher_arch is not None  # needs: the registry runs the rule only then
    pruned = sorted({i for i in ctx.spec.student.pruned_layers if 0 <= i < ctx.teacher_arch.num_layers})
    layers = ctx.spec.loss.layers
    if not pruned or layers is None or not feature_on(ctx.spec.loss):
        return
    depth = ctx.teacher_arch.num_layers
    base = ("loss", "layers")
    if layers.strategy == "explicit" and layers.indices:
        shifted = [i for i in layers.indices if i >= pruned[0]]
        if shifted:
            yield Finding(
                f"explicit indices compare layer i with layer i, but from layer {pruned[0]} on the student's "
                f"layer i is the teacher's layer i + (layers pruned below it): {shifted[:4]} are misaligned",
                (*base, "indices"),
                key=True,
            )
        return
    if layers.strategy == "explicit" and layers.pairs:
        for i, (t, s) in enumerate(layers.pairs):
            if t in pruned:
                yield Finding(f"teacher layer {t} was pruned: the student has no copy of it", (*base, "pairs", i, 0))
            elif 0 <= t < depth and s != t - sum(p < t for p in pruned):
                copy = t - sum(p < t for p in pruned)
                yield Finding(
                    f"pair [{t}, {s}]: the student's copy of teacher layer {t} is layer {copy}", (*base, "pairs", i, 1)
                )
        return
    if layers.strategy == "first_n":
        neighbours = {n for a, b in _blocks(pruned) for n in (a - 1, b + 1) if 0 <= n < depth}
        if neighbours and not neighbours & set(range(layers.count)):
            yield Finding(
                f"first_n {layers.count} aligns layers 0-{layers.count - 1}, none next to the pruned layers "
                f"{_show(pruned)}",
                (*base, "strategy"),
            )


def _show(pruned) -> str:
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in _blocks(pruned))


@rule(
    "DC126",
    Severity.ERROR,
    "feature loss between different hidden sizes",
    needs=("loss", "teacher_arch", "student_arch"),
    hint="Use a student with the teacher's emb_dim (same family and size, e.g. a pruned teacher), or set beta: 0 "
    "for logit-only distillation. (An implementation limit: neither distillc nor MaxText's trainer has a learned "
    "projection between hidden sizes.)",
)
def feature_hidden_size(ctx: Context) -> Iterator[Finding]:
    """The feature loss compares the two models' activations element by element (cosine distance
    or L2 over the hidden dimension), so both need the same hidden size (emb_dim). There is no
    learned projection between sizes, in distillc or in MaxText's trainer.

    Fails::

        loss:
          beta: 1.0
          layers: {strategy: first_n, count: 1}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: first_n, count: 1}
    """
    assert ctx.spec.loss is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    t, s = ctx.teacher_arch, ctx.student_arch
    if feature_on(ctx.spec.loss) and t.emb_dim != s.emb_dim:
        yield Finding(
            f"feature loss needs equal hidden sizes: teacher emb_dim {t.emb_dim}, student emb_dim {s.emb_dim}",
            ("student", "model"),
        )


@rule(
    "DC127",
    Severity.WARNING,
    "feature loss on interleaved-attention or MLA models",
    needs=("loss", "teacher", "student", "teacher_arch", "student_arch"),
    hint="Prefer logit-only distillation (beta: 0) for these models, or align only layers of the same kind "
    "with explicit pairs.",
)
def feature_structure(ctx: Context) -> Iterator[Finding]:
    """Layer-for-layer alignment assumes layer i does the same kind of computation on both sides.
    gemma2/gemma3 (and gpt-oss) interleave sliding-window (local) and global attention layers: a
    local layer sees a window of tokens, a global one the whole context, so their outputs are not
    comparable, and once layers are pruned or the depths differ the local/global pattern no longer
    lines up. DeepSeek's MLA attends through a compressed latent KV and mixes dense and MoE
    layers, so an index does not name a comparable computation either; and not every attention
    implementation sows the out-projection activations the loss reads (the guide's "model
    architecture doesn't sow" row). Self-distillation of the very same model is exempt. Both
    targets: the distillc runtime builds gemma2/gemma3 with the same interleaving (and refuses MLA
    models outright, DC100).

    Fails::

        teacher:
          model: {num_layers: 2, emb_dim: 128, num_heads: 4, num_kv_heads: 4, head_dim: 32, mlp_dim: 512, vocab_size: 256, tokenizer: byte, attention: local_global, local_global_ratio: "1:1", sliding_window: 16}
        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: first_n, count: 1}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 1.0
          layers: {strategy: first_n, count: 1}
    """
    assert ctx.spec.loss is not None and ctx.spec.teacher is not None and ctx.spec.student is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    if not feature_on(ctx.spec.loss):
        return
    if same_model(ctx) and not ctx.spec.student.pruned_layers:
        return
    why = {"local_global": "interleaves local and global attention layers", "mla": "uses multi-head latent attention (MLA)"}
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        if arch.attention in why:
            yield Finding(
                f"{role} {model_label(arch)} {why[arch.attention]}: a layer-for-layer feature loss is not meaningful",
                (role, "model"),
            )


_BETA_RANGE = {"cosine": (0.1, 2.0), "l2": (0.01, 0.1)}


@rule(
    "DC128",
    Severity.WARNING,
    "beta outside the usual range for the feature loss",
    needs=("loss",),
    hint="cosine: peak beta of order 0.1-2.0 (1.0 is the default recommendation); l2: 0.01-0.1 (0.05).",
)
def beta_magnitude(ctx: Context) -> Iterator[Finding]:
    """beta adds the feature loss to the logit losses instead of trading off against them, so its
    absolute size matters. The cosine distance is bounded in [0, 2] per element: a peak beta of
    order 0.1-2.0 is typical. L2 is unbounded: 0.01-0.1. Much higher and the feature term dominates
    the gradients (the guide's "feature loss dominates" row); much lower and it does nothing. The
    peak of the schedule is checked: decaying to a small end value is intended, and so is a tiny
    positive start (1e-6) that ramps the feature loss on.

    Fails::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: 10.0
          layers: {strategy: first_n, count: 1}

    Passes::

        student:
          model: tiny-teacher
        loss:
          alpha: {start: 0.9, end: 0.5, schedule: cosine}
          beta: {start: 1.0, end: 0.1, schedule: cosine}
          layers: {strategy: first_n, count: 1}
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    loss = ctx.spec.loss
    if not feature_on(loss):
        return
    values = list(schedule_values(ctx, "beta"))
    path, peak = max(values, key=lambda pv: pv[1])
    lo, hi = _BETA_RANGE[loss.feature_loss]
    if not lo <= peak <= hi:
        side = "above" if peak > hi else "below"
        yield Finding(
            f"beta peaks at {peak:g}, {side} the usual {lo:g}-{hi:g} for the {loss.feature_loss} feature loss",
            path,
        )


@rule(
    "DC129",
    Severity.WARNING,
    "layer selection without feature loss",
    needs=("loss",),
    hint="Set beta > 0 (e.g. {start: 1.0, end: 0.1, schedule: cosine}) to use the feature loss, or remove loss.layers.",
)
def layers_without_beta(ctx: Context) -> Iterator[Finding]:
    """With beta = 0 everywhere nothing is sown and `loss.layers` and `loss.feature_loss` are
    ignored: the run is logit-only. Setting them without beta usually means beta was forgotten.

    Fails::

        loss:
          beta: 0.0
          layers: {strategy: first_n, count: 1}

    Passes::

        loss:
          beta: 0.0
    """
    assert ctx.spec.loss is not None  # needs: the registry runs the rule only then
    loss = ctx.spec.loss
    if not beta_zero(loss):
        return
    for key in ("layers", "feature_loss"):
        if written(ctx, "loss", key):
            yield Finding(f"loss.{key} is set but beta is 0: the run is logit-only and it is ignored", ("loss", key), key=True)
