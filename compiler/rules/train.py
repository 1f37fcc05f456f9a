"""Rules about training and data settings: steps, intervals, sequence length, tokenizer, paths (DC14x)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.rules._util import finding, model_label, written
from distillc.runtime.bounds import held_out_problem

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC140",
    Severity.ERROR,
    "warmup as long as the run",
    needs=("train",),
    hint="Make warmup_steps a small part of train.steps (1-10% is usual).",
)
def warmup_too_long(ctx: Context) -> Iterator[Finding]:
    """The learning rate ramps up for warmup_steps and then decays until train.steps; with a
    warmup of the whole run the decay never starts and the schedule never reaches its peak.

    Fails::

        train:
          steps: 400
          warmup_steps: 400

    Passes::

        train:
          steps: 400
          warmup_steps: 20
    """
    assert ctx.spec.train is not None  # needs: the registry runs the rule only then
    tr = ctx.spec.train
    if tr.warmup_steps >= tr.steps:
        yield Finding(f"warmup_steps {tr.warmup_steps} is not less than train.steps {tr.steps}", ("train", "warmup_steps"))


@rule(
    "DC141",
    Severity.WARNING,
    "interval longer than the run",
    needs=("train",),
    hint="Choose checkpoint_every / eval_every / log_every below train.steps.",
)
def interval_too_long(ctx: Context) -> Iterator[Finding]:
    """An interval longer than the run never fires during it: checkpoint_every > steps leaves only
    the final checkpoint (a preempted job restarts from scratch), eval_every > steps evaluates only
    at the end, log_every > steps logs nothing along the way. Only values written in the spec are
    checked; the defaults are fine for any real run.

    Fails::

        train:
          steps: 400
          checkpoint_every: 1000

    Passes::

        train:
          steps: 400
          checkpoint_every: 200
    """
    assert ctx.spec.train is not None  # needs: the registry runs the rule only then
    tr = ctx.spec.train
    for key in ("checkpoint_every", "eval_every", "log_every"):
        value = getattr(tr, key)
        if written(ctx, "train", key) and value > tr.steps:
            yield Finding(f"train.{key} {value} is longer than the run ({tr.steps} steps)", ("train", key))


@rule(
    "DC142",
    Severity.WARNING,
    "sequence longer than a model's context",
    needs=("data", "teacher_arch", "student_arch"),
    hint="Lower data.seq_len to the shorter model's context length.",
)
def seq_len_context(ctx: Context) -> Iterator[Finding]:
    """Past its trained context length a model's positional encoding (RoPE) is out of
    distribution: the teacher's predictions degrade and the student is taught from them.

    Fails::

        teacher:
          model: {num_layers: 2, emb_dim: 128, num_heads: 4, num_kv_heads: 4, head_dim: 32, mlp_dim: 512, vocab_size: 256, tokenizer: byte, max_seq_len: 32}

    Passes::

        teacher:
          model: {num_layers: 2, emb_dim: 128, num_heads: 4, num_kv_heads: 4, head_dim: 32, mlp_dim: 512, vocab_size: 256, tokenizer: byte, max_seq_len: 2048}
    """
    assert ctx.spec.data is not None and ctx.teacher_arch is not None and ctx.student_arch is not None  # needs: the registry runs the rule only then
    seq = ctx.spec.data.seq_len
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        if arch.max_seq_len and seq > arch.max_seq_len:
            yield finding(
                ctx, f"seq_len {seq} exceeds the {role} {model_label(arch)}'s context of {arch.max_seq_len} tokens", "data", "seq_len"
            )
            return


@rule(
    "DC143",
    Severity.ERROR,
    "data tokenizer does not match the models",
    needs=("data", "teacher_arch"),
    hint="Set data.tokenizer to the models' tokenizer file (a sentencepiece .model or an HF tokenizer.json); "
    "'byte' is only for the byte-level local models.",
)
def data_tokenizer(ctx: Context) -> Iterator[Finding]:
    """The data pipeline turns text into the token ids both models read; they must be the ids of
    the models' own tokenizer. The byte tokenizer (ids 0-255) fits only the byte-level models, and
    a byte-level model cannot read ids from a real tokenizer's 32k-256k vocabulary.

    Fails::

        data:
          tokenizer: gs://bucket/tokenizer.model

    Passes::

        data:
          tokenizer: byte
    """
    assert ctx.spec.data is not None and ctx.teacher_arch is not None  # needs: the registry runs the rule only then
    arch = ctx.teacher_arch
    tok = ctx.spec.data.tokenizer
    if (tok == "byte") != (arch.tokenizer == "byte"):
        if tok == "byte":
            msg = f"data.tokenizer is 'byte' but {model_label(arch)} uses tokenizer '{arch.tokenizer}'"
        else:
            msg = f"{model_label(arch)} is byte-level but data.tokenizer is {tok!r}"
        yield finding(ctx, msg, "data", "tokenizer")


def _paths(ctx: Context) -> Iterator[tuple[tuple, str]]:
    """(key path, value) of every path-like field that is set."""
    sp = ctx.spec
    for role in ("teacher", "student"):
        side = getattr(sp, role)
        if side is not None and side.checkpoint is not None:
            yield (role, "checkpoint"), side.checkpoint
    if sp.data is not None:
        d = sp.data
        for names, key in ((d.source, ("data", "source")), (d.eval_source, ("data", "eval_source"))):
            for value in ([names] if isinstance(names, str) else names or []):
                yield key, value
        for i, w in enumerate(d.sources or []):
            for value in [w.source] if isinstance(w.source, str) else w.source:
                yield ("data", "sources", i, "source"), value
        if d.prepared is not None:
            yield ("data", "prepared"), d.prepared
        yield ("data", "tokenizer"), d.tokenizer
    if sp.offline is not None and sp.offline.data_dir is not None:
        yield ("offline", "data_dir"), sp.offline.data_dir
    if sp.train is not None:
        yield ("train", "output_dir"), sp.train.output_dir


def _is_source(key: tuple) -> bool:
    return key[:2] in (("data", "source"), ("data", "sources"), ("data", "eval_source"))


def _is_local(key: tuple, value: str) -> bool:
    if _is_source(key) and value.startswith("builtin:"):
        return False
    if key == ("data", "tokenizer") and value == "byte":
        return False
    return "://" not in value


@rule(
    "DC144",
    Severity.WARNING,
    "local path on a cluster accelerator",
    needs=("accelerator",),
    hint="Use gs:// paths (or a filesystem mounted on every host) for cluster runs.",
)
def local_path_on_cluster(ctx: Context) -> Iterator[Finding]:
    """A cluster workload runs in containers on other machines: a local path such as
    `runs` or `/home/me/ckpt` names a directory inside each container, so inputs are missing
    and outputs vanish with the pod. Checkpoints, data, the tokenizer, the top-k cache and the
    output directory should live in a bucket every host can reach. Local-only accelerators (`cpu`,
    the one-GPU `h100-80gb-1`, ...) run on this machine, where local paths are right.

    Fails::

        resources:
          accelerator: v5p-8
        train:
          output_dir: runs

    Passes::

        teacher:
          checkpoint: gs://bucket/teacher/0/items
        resources:
          accelerator: v5p-8
        train:
          output_dir: gs://bucket/runs
    """
    assert ctx.accelerator is not None  # needs: the registry runs the rule only then
    if ctx.accelerator.local_only:
        return
    for key, value in _paths(ctx):
        if key == ("offline", "data_dir") and ctx.spec.mode != "offline":
            continue
        if value.strip() and _is_local(key, value):
            yield finding(ctx, f"{'.'.join(key)} {value!r} is a local path, not visible to {ctx.accelerator.name} hosts", *key)


# What the runtime reads (runtime/data/corpus.py, runtime/data/tokenizers.py): kept in sync by test_rules_train.
BUILTIN_SOURCES = ("pydoc_topics",)
REMOTE_SCHEMES = ("gs", "s3")
SOURCE_SUFFIXES = (".txt", ".jsonl", ".gz", ".zst", ".parquet", ".arecord", ".array_record", ".tfrecord")  # .jsonl.gz, .jsonl.zst
TFDS_SHARD = re.compile(r"\.(array_record|tfrecord)-\d+-of-\d+\Z")  # TFDS's shard names: x.array_record-00000-of-01024
TOKENIZER_SUFFIXES = (".model", ".json", ".gguf")  # .gguf: the byte-level BPE in its metadata
_SCHEME = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://(.*)\Z", re.S)


_GCS_BUCKET = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")


def _gcs_bucket_problem(bucket: str) -> str | None:
    """Why `bucket` cannot be a Cloud Storage bucket name, or None: Google's naming rules allow
    lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most
    63 characters (222 with dots, 63 between them). (Names under 3 characters are not refused
    here: the runtime's "no such bucket" names them.)"""
    if not _GCS_BUCKET.fullmatch(bucket):
        return ("is not a Cloud Storage bucket name (lowercase letters, digits, '-', '_' and '.', starting "
                "and ending with a letter or digit)")
    parts = bucket.split(".")
    if len(bucket) > (222 if len(parts) > 1 else 63) or max(map(len, parts)) > 63:
        return "is not a Cloud Storage bucket name (at most 63 characters; 222 with dots, 63 between them)"
    return None


def _path_problem(key: tuple, value: str) -> str | None:
    if not value.strip():
        return "is empty"
    if value != value.strip():
        return "has leading or trailing whitespace"
    if _is_source(key) and value.startswith("builtin:"):
        name = value[len("builtin:") :]
        if name not in BUILTIN_SOURCES:
            known = ", ".join("builtin:" + b for b in BUILTIN_SOURCES)
            return f"names no built-in corpus (known: {known})"
        return None
    if key == ("data", "tokenizer") and value == "byte":
        return None
    if key == ("data", "prepared") and (value.startswith("builtin:") or any(c in value for c in "*?[")):
        return "is not a directory path (data.prepared is where `distillc data prepare` writes its shards)"
    m = _SCHEME.match(value)
    if m:
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme not in REMOTE_SCHEMES:
            return f"uses {scheme}://, which the runtime cannot read (use gs:// or a local path)"
        bucket = rest.split("/")[0]
        if not bucket:
            return f"has no bucket after {scheme}://"
        if scheme == "gs" and (why := _gcs_bucket_problem(bucket)):
            return f"names bucket {bucket!r}, which {why}"
    elif "://" in value or value.startswith(":"):
        return "is not a valid path or URL"
    tail = value.rstrip("/").rsplit("/", 1)[-1]
    suffix = "." + tail.rsplit(".", 1)[-1].lower() if "." in tail else ""
    if shard := TFDS_SHARD.search(tail):
        suffix = "." + shard.group(1)
    if key == ("data", "tokenizer") and suffix not in TOKENIZER_SUFFIXES:
        return "is neither 'byte' nor a sentencepiece .model, an HF tokenizer .json or a .gguf file"
    if _is_source(key) and suffix and not value.endswith("/") and suffix not in SOURCE_SUFFIXES and "*" not in tail:
        return (f"is a {suffix} file; the runtime reads .txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet, "
                ".arecord and .tfrecord files (or a directory or glob of them, or a prepared directory)")
    if key == ("data", "prepared") and suffix in SOURCE_SUFFIXES:
        return f"names a {suffix} file; data.prepared is a directory (where `distillc data prepare` writes)"
    return None


@rule(
    "DC145",
    Severity.ERROR,
    "malformed path",
    needs=(),
    hint="Use builtin:pydoc_topics, a local path or gs://bucket/...; a tokenizer is 'byte', a .model, a .json or a .gguf file.",
)
def malformed_path(ctx: Context) -> Iterator[Finding]:
    """Paths are read by the runtime on the accelerator hosts, long after validation: a typo
    there costs a queued job. The runtime reads local paths and gs:// (s3:// with a backend);
    data.source (and each of data.sources, data.eval_source) also takes builtin:<name>, and reads
    .txt, .jsonl(.gz/.zst), .parquet, ArrayRecord (.arecord, .array_record, TFDS's
    x.array_record-00000-of-01024) and TFRecord (.tfrecord, x.tfrecord-00000-of-01024) files,
    directories and globs of them,
    or a directory `distillc data prepare` wrote; data.prepared is a directory (no glob, no builtin,
    no corpus-file suffix); data.tokenizer is 'byte', a sentencepiece or tiktoken .model, an HF
    tokenizer.json or a GGUF checkpoint (the tokenizer in its metadata). A gs:// bucket name follows
    Cloud Storage's naming rules (`gs://My_Bucket!/x` is no bucket). This rule checks the form only:
    it never touches the filesystem or the network.

    Fails::

        data:
          source: builtin:pydoc

    Passes::

        data:
          source: builtin:pydoc_topics
    """
    for key, value in _paths(ctx):
        problem = _path_problem(key, value)
        if problem:
            yield finding(ctx, f"{'.'.join(key)} {value!r} {problem}", *key)


@rule(
    "DC146",
    Severity.ERROR,
    "data needs exactly one of source and sources",
    needs=("data",),
    hint="Name the training documents once: data.source (a path, glob or list) or data.sources "
    "(a weighted mixture [{source, weight}]).",
)
def data_source_or_sources(ctx: Context) -> Iterator[Finding]:
    """The training documents come from data.source (one path, directory, glob, or a list read in
    turn) or from data.sources (a weighted mixture); with both, which one trains is ambiguous, and
    with neither there is nothing to train on.

    Fails::

        data:
          source: gs://bucket/fineweb/*.jsonl.gz
          sources:
            - {source: gs://bucket/code/*.parquet, weight: 1}

    Passes::

        data:
          source: null
          sources:
            - {source: gs://bucket/fineweb/*.jsonl.gz, weight: 3}
            - {source: gs://bucket/code/*.parquet, weight: 1}
    """
    assert ctx.spec.data is not None  # needs: the registry runs the rule only then
    d = ctx.spec.data
    if d.source is not None and d.sources:
        yield finding(ctx, "data.source and data.sources are both set; the runtime would read only data.sources",
                      "data", "sources")
    elif d.source is None and not d.sources:
        yield finding(ctx, "data names no training documents: set data.source or data.sources", "data")


@rule(
    "DC147",
    Severity.ERROR,
    "evaluation without a held-out set",
    needs=("data", "train"),
    hint="Keep a held-out fraction (data.eval_fraction: 0.01) or name held-out files (data.eval_source), "
    "or set train.eval_every: 0.",
)
def eval_without_held_out(ctx: Context) -> Iterator[Finding]:
    """train.eval_every evaluates the held-out set every that many steps; with data.eval_fraction 0
    and no data.eval_source there is none, and the runtime config refuses the pair
    (runtime/bounds.py, the same check).

    Fails::

        data:
          eval_fraction: 0
        train:
          eval_every: 100

    Passes::

        data:
          eval_fraction: 0.01
        train:
          eval_every: 100
    """
    assert ctx.spec.data is not None and ctx.spec.train is not None  # needs: the registry runs the rule only then
    d, tr = ctx.spec.data, ctx.spec.train
    why = held_out_problem(tr.eval_every, d.eval_fraction, d.eval_source)
    if why is not None:
        yield finding(ctx, why, "train", "eval_every")
