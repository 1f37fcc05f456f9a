"""Plan rules of `--target maxtext` (DC420-DC432): what the pinned MaxText version can express.

What MaxText cannot express is a diagnostic for this target, never an approximation (maxtext.py
renders the config only when these pass). Each reads a plan_check.PlanContext when `launch`
renders artifacts; the examples are spec fragments on tests/fixtures/base.yaml, launched with
`--target maxtext` on the entry `example` of tests/fixtures/clusters.yaml; `At::` is where the
failing one is reported. Findings point at a block mapping's key (Finding.block).
"""

from __future__ import annotations

import functools
from typing import Iterator

from distillc.compiler import maxtext
from distillc.compiler.diagnostics import KeyPath, Severity
from distillc.compiler.plan_check import PlanContext
from distillc.compiler.registry import Finding, Target, rule

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE
MT: tuple[Target, ...] = ("maxtext",)
RENDERED = ("artifacts", "plan", "spec")  # launch renders the config; the spec resolved
VERSIONED = (*RENDERED, "maxtext_version")  # ... for a MaxText version distillc knows


def at(message: str, *path: str | int, hint: str | None = None) -> Finding:
    p: KeyPath = tuple(path)
    return Finding(message, p, hint, block=True)


def pinned(ctx: PlanContext) -> str:
    assert ctx.spec is not None
    return ctx.spec.maxtext.version


@rule("DC420", E, "MaxText version distillc cannot render for", stage="plan", needs=RENDERED, targets=MT,
      hint="Set maxtext.version to one of the versions listed.")
def known_version(ctx: PlanContext) -> Iterator[Finding]:
    """distillc renders the distillation config of the MaxText releases it knows (their keys and
    models differ release by release); maxtext.version names one of them.

    Fails::

        maxtext: {version: v0.1.0}

    Passes::

        maxtext: {version: v0.2.4}

    At:: version: v0.1.0 > v0.1.0
    """
    if ctx.maxtext_version is None:
        known = ", ".join(maxtext.VERSIONS)
        yield at(f"no MaxText distillation config is known for version '{pinned(ctx)}' (known: {known})",
                 "maxtext", "version", hint=f"Set maxtext.version to one of: {known}.")


# DC421's two checks share one registration
DC421 = functools.partial(rule, "DC421", E, "a schedule MaxText cannot express", stage="plan", needs=VERSIONED, targets=MT)


@DC421(hint="Use a constant, linear or cosine schedule (MaxText has no schedule tables), or --target distillc.")
def schedules(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's distill_alpha, distill_temperature and distill_beta are constant, linear or cosine
    from a start to an end value (from v0.2.2; constant before): no schedule tables.

    Fails::

        loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [200, 0.5]]}}

    Passes::

        loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}

    At:: schedule: piecewise > piecewise
    """
    assert ctx.plan is not None and ctx.maxtext_version is not None
    for name in ("alpha", "temperature", "beta"):
        s = getattr(ctx.plan.train.loss, name)
        if s.kind == "piecewise":
            yield at(f"loss.{name} is a piecewise schedule table: MaxText has constant, linear and cosine only",
                     "loss", name, "schedule")
        elif s.kind != "constant" and s.start != s.end and not ctx.maxtext_version.schedules:
            yield at(f"loss.{name} is a {s.kind} schedule: MaxText {pinned(ctx)} has no distill_{name}_end "
                     "(schedules arrived in v0.2.2)", "loss", name)


@DC421()
def feature_loss_type(ctx: PlanContext) -> Iterator[Finding]:
    """Before v0.2.2 MaxText's feature loss is the cosine distance only (no distill_feature_loss_type).

    Fails::

        maxtext: {version: v0.2.1}
        student: {model: tiny-teacher}
        loss: {beta: 0.05, feature_loss: l2, layers: {strategy: first_n, count: 1}}

    Passes::

        maxtext: {version: v0.2.1}
        student: {model: tiny-teacher}
        loss: {beta: 0.05, feature_loss: cosine, layers: {strategy: first_n, count: 1}}

    At:: feature_loss: l2 > l2
    """
    assert ctx.plan is not None and ctx.maxtext_version is not None
    loss = ctx.plan.train.loss
    if loss.feature_enabled and loss.feature_loss != "cosine" and not ctx.maxtext_version.feature_loss_type:
        yield at(f"feature_loss {loss.feature_loss}: MaxText {pinned(ctx)} has the cosine feature loss only",
                 "loss", "feature_loss")


@rule("DC422", E, "a layer mapping MaxText cannot express", stage="plan", needs=VERSIONED, targets=MT,
      hint="MaxText aligns the same layer index on both sides; use --target distillc for other mappings.")
def aligned_layers(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's distill_layer_indices index the teacher's and the student's scanned layers alike
    (the trainer cannot map student layer i to teacher layer f(i)). A plan whose pairs are not all
    (i, i) cannot be written as distill_layer_indices without aligning different layers.

    Fails::

        student: {model: tiny-teacher, pruned_layers: [0]}
        loss: {beta: 0.05, layers: {strategy: straddle_pruned}}

    Passes::

        student: {model: tiny-teacher}
        loss: {beta: 0.05, layers: {strategy: first_n, count: 1}}

    At:: loss: > layers:
    """
    assert ctx.plan is not None
    mismatched = [(p.teacher, p.student) for p in ctx.plan.train.loss.layer_pairs if p.teacher != p.student]
    if mismatched:
        shown = ", ".join(f"teacher {t} <-> student {s}" for t, s in mismatched[:4])
        yield at(f"the layer pairs align different layers ({shown}): MaxText's distill_layer_indices "
                 "index both models alike", "loss", "layers")


@rule("DC423", E, "a model the pinned MaxText version does not have", stage="plan", needs=VERSIONED, targets=MT,
      hint="Use a model from MaxText's configs/models for that version, or --target distillc.")
def maxtext_models(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText builds both models from its configs/models/<name>.yml, which differ release by
    release; an inline architecture has no model_name.

    Fails::

        teacher: {model: tiny-teacher}

    Passes::

        teacher: {model: qwen3-0.6b}
        student: {model: qwen3-0.6b}
        data: {tokenizer: gs://b/qwen3/tokenizer.json}

    At:: model: tiny-teacher > tiny-teacher
    """
    assert ctx.spec is not None and ctx.plan is not None and ctx.maxtext_version is not None
    for role in ("teacher", "student"):
        side = getattr(ctx.spec, role)
        name = getattr(ctx.plan.train, role).arch.name
        if not isinstance(side.model, str):
            yield at(f"{role}.model is an inline architecture: MaxText needs a model_name", role, "model")
        elif name not in ctx.maxtext_version.models:
            yield at(f"MaxText {pinned(ctx)} has no model '{name}' (configs/models/{name}.yml)", role, "model")


@rule("DC424", E, "teacher and student vocabulary sizes differ", stage="plan", needs=VERSIONED, targets=MT,
      hint="MaxText's trainer asserts equal vocab_size; use --target distillc, which compares the shared real tokens.")
def same_vocab(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's distillation trainer asserts that the teacher's and the student's vocab_size are equal.

    Fails::

        teacher: {model: qwen2.5-7b}
        student: {model: qwen2.5-1.5b}
        data: {tokenizer: gs://b/q/tokenizer.json}

    Passes::

        teacher: {model: qwen2.5-1.5b}
        student: {model: qwen2.5-1.5b}
        data: {tokenizer: gs://b/q/tokenizer.json}

    At:: model: qwen2.5-1.5b > qwen2.5-1.5b
    """
    assert ctx.plan is not None
    t, s = ctx.plan.train.teacher.arch, ctx.plan.train.student.arch
    if t.vocab_size != s.vocab_size:
        yield at(f"vocab_size differs (teacher {t.vocab_size}, student {s.vocab_size}): MaxText's trainer "
                 "asserts they are equal", "student", "model")


@rule("DC425", E, "a data source MaxText cannot read as written", stage="plan", needs=VERSIONED, targets=MT,
      hint="Give a .jsonl file (read with MaxText's Hugging Face json loader) or ArrayRecord/Parquet/TFRecord files for Grain.")
def readable_source(ctx: PlanContext) -> Iterator[Finding]:
    """The MaxText config reads data.source with Hugging Face's json loader (.jsonl) or with Grain
    (ArrayRecord, Parquet, TFRecord); a .txt file or a builtin corpus has no MaxText loader.

    Fails::

        data: {source: gs://b/corpus.txt}

    Passes::

        data: {source: gs://b/d.jsonl}

    At:: source: gs://b/corpus.txt > gs://
    """
    assert ctx.plan is not None
    source = ctx.plan.train.data.source
    if maxtext.data_keys(source) is None:
        yield at(f"data.source {source!r}: MaxText reads .jsonl files (HF json loader) or "
                 "ArrayRecord/Parquet/TFRecord files (Grain)", "data", "source")


@rule("DC426", E, "a tokenizer MaxText cannot load", stage="plan", needs=VERSIONED, targets=MT,
      hint="Give a sentencepiece .model, a tiktoken file, a Hugging Face tokenizer.json or hub id.")
def loadable_tokenizer(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText loads sentencepiece, tiktoken and Hugging Face tokenizers; distillc's byte tokenizer
    is not one of them.

    Fails::

        data: {tokenizer: byte}

    Passes::

        teacher: {model: qwen3-0.6b}
        student: {model: qwen3-0.6b}
        data: {tokenizer: gs://b/qwen3/tokenizer.json}

    At:: tokenizer: byte > byte
    """
    assert ctx.plan is not None
    if maxtext.tokenizer_keys(ctx.plan.train.data.tokenizer) is None:
        yield at("data.tokenizer 'byte' has no MaxText tokenizer", "data", "tokenizer")


@rule("DC427", E, "a learning-rate schedule MaxText's distillation trainer cannot express", stage="plan",
      needs=VERSIONED, targets=MT,
      hint="MaxText's distillation optimizer is warmup + cosine decay; set train.lr_schedule: cosine, or use --target distillc.")
def cosine_decay(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's distillation optimizer warms up linearly, then decays with a cosine.

    Fails::

        train: {lr_schedule: linear}

    Passes::

        train: {lr_schedule: cosine}

    At:: lr_schedule: linear > linear
    """
    assert ctx.plan is not None
    decay = ctx.plan.train.optimizer.decay
    if decay != "cosine":
        yield at(f"train.lr_schedule {decay}: MaxText's distillation optimizer is warmup + cosine decay",
                 "train", "lr_schedule")


@rule("DC428", E, "an offline variant MaxText does not implement", stage="plan", needs=VERSIONED, targets=MT,
      hint="MaxText renormalizes the teacher's top-k (offline.loss: renormalized, sampling: top_k, capture_temperature: 1.0).")
def offline_variant(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's offline distillation (from v0.2.1) saves the teacher's raw top-k logits and
    renormalizes them over the k tokens: no tail bucket, no random sampling, no capture temperature.

    Fails::

        mode: offline
        loss: {alpha: 0.5}
        offline: {top_k: 8, data_dir: gs://b/k, loss: tail_bucket}

    Passes::

        mode: offline
        loss: {alpha: 0.5}
        offline: {top_k: 8, data_dir: gs://b/k, loss: renormalized}

    At:: loss: tail_bucket > tail_bucket
    """
    assert ctx.plan is not None and ctx.maxtext_version is not None
    o = ctx.plan.train.offline
    if o is None:
        return
    if not ctx.maxtext_version.offline:
        yield at(f"MaxText {pinned(ctx)} has no offline distillation (offline_data_dir arrived in v0.2.1)", "mode")
    if o.loss != "renormalized":
        yield at(f"offline.loss {o.loss}: MaxText renormalizes the teacher's top-k (offline.loss: renormalized)",
                 "offline", "loss")
    if o.sampling != "top_k":
        yield at(f"offline.sampling {o.sampling}: MaxText saves the teacher's top-k only", "offline", "sampling")
    if o.capture_temperature != 1.0:
        yield at(f"offline.capture_temperature {o.capture_temperature:g}: MaxText saves raw logits (temperature 1)",
                 "offline", "capture_temperature")


@rule("DC429", W, "held-out evaluation is not rendered for MaxText", stage="plan", needs=VERSIONED, targets=MT,
      hint="Set data.eval_fraction: 0 for --target maxtext, or evaluate the checkpoints separately.")
def eval_fraction_written(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText's loaders cannot hold out a fraction of one source, so the MaxText config trains on
    all of it and does not evaluate, although the spec asks for a held-out split.

    Fails::

        data: {eval_fraction: 0.1}

    Passes::

        data: {eval_fraction: 0}

    At:: eval_fraction: 0.1 > 0.1
    """
    assert ctx.plan is not None
    fraction = ctx.plan.train.data.eval_fraction
    if fraction > 0 and ("data", "eval_fraction") in ctx.source.spans:
        yield at(f"data.eval_fraction {fraction:g}: MaxText's loaders cannot hold out a fraction of "
                 "one source; the MaxText config trains on all of it and does not evaluate", "data", "eval_fraction")


@rule("DC430", E, "a mesh MaxText cannot express", stage="plan", needs=VERSIONED, targets=MT,
      hint="Make runtime.mesh.data times fsdp a multiple of the number of slices (tensor never crosses slices).")
def slice_split(ctx: PlanContext) -> Iterator[Finding]:
    """MaxText puts the data axis, then fsdp, across slices (dcn_*_parallelism), and takes the batch
    as a per_device_batch_size: the mesh must split over the slices that way, and the global batch
    must be that size times the devices.

    Cluster::

        num_slices: 4

    Fails::

        teacher: {model: qwen3-0.6b}
        student: {model: qwen3-0.6b}
        data: {tokenizer: gs://b/qwen3/tokenizer.json}
        runtime: {mesh: {data: 2, fsdp: 1, tensor: 8}}

    Passes::

        teacher: {model: qwen3-0.6b}
        student: {model: qwen3-0.6b}
        data: {tokenizer: gs://b/qwen3/tokenizer.json}
        runtime: {mesh: {data: 2, fsdp: 2, tensor: 4}}

    At:: runtime: > mesh:
    """
    assert ctx.plan is not None
    mesh, batch = ctx.plan.mesh, ctx.plan.train.data.global_batch_size
    if mesh.dcn_split() is None:
        yield at(f"mesh data {mesh.data} x fsdp {mesh.fsdp} does not split over {mesh.num_slices} slices "
                 "(MaxText puts the data axis, then fsdp, across slices)", "runtime", "mesh")
    pdb = mesh.per_device_batch
    if pdb.denominator != 1 and int(float(pdb) * mesh.devices) != batch:
        yield at(f"global batch {batch} over {mesh.devices} devices is not a per_device_batch_size "
                 "MaxText can represent", "data", "global_batch_size")


@rule("DC431", W, "a data directory is read as its .jsonl files for MaxText", stage="plan", needs=VERSIONED, targets=MT,
      hint="Point data.source at a .jsonl file or a glob of them to make the MaxText run read the same documents.")
def jsonl_of_directory(ctx: PlanContext) -> Iterator[Finding]:
    """The distillc runtime reads a directory's .txt and .jsonl files; the MaxText config reads
    <dir>/*.jsonl with Hugging Face's json loader, so .txt files in it are not trained on.

    Fails::

        data: {source: gs://b/corpus/}

    Passes::

        data: {source: gs://b/corpus/d.jsonl}

    At:: source: gs://b/corpus/ > gs://
    """
    assert ctx.plan is not None
    source = ctx.plan.train.data.source
    if maxtext.data_keys(source) is not None and maxtext.is_directory(source):
        yield at(f"data.source {source!r} is a directory: MaxText reads its *.jsonl files "
                 "(the distillc runtime also reads its .txt files)", "data", "source")


@rule("DC432", N, "the default held-out evaluation is not rendered for MaxText", stage="plan", needs=VERSIONED,
      targets=MT, hint="Set data.eval_fraction: 0 to silence this note, or evaluate the checkpoints separately.")
def eval_fraction_default(ctx: PlanContext) -> Iterator[Finding]:
    """The spec did not set data.eval_fraction, so distillc's default holds out a fraction of the data
    for evaluation; MaxText's loaders cannot, so its config trains on all of it. DC429 warns
    instead when the spec sets eval_fraction itself.

    Fails::

        name: quickstart

    Passes::

        data: {eval_fraction: 0}

    At:: data:
    """
    assert ctx.plan is not None
    fraction = ctx.plan.train.data.eval_fraction
    if fraction > 0 and ("data", "eval_fraction") not in ctx.source.spans:
        yield at(f"the default data.eval_fraction {fraction:g} is not rendered: the MaxText config "
                 "trains on all of data.source and does not evaluate", "data", "eval_fraction")
