"""Rules about the checkpoints the runtime loads (DC18x).

They read local paths, and gs:// paths when validate reaches them (compiler/remote.py: within a
time budget; `--offline` reads none). In the examples below, gs://bucket/ is the tests' fake Cloud
Storage holding tests/fixtures/ (gs://bucket/hf/llama2 is tests/fixtures/hf/llama2), and
gs://no-access/ a bucket the credentials found may not read (tests/fake_gcs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from distillc.compiler import checkpoint_files as files
from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule
from distillc.compiler.remote import Unreachable, is_gs
from distillc.runtime.convert.hf_config import HFConfigError, config_differences

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
    a pruned model for prune recovery). A path that does not exist would stop the job at its start;
    here it is reported before anything is queued: a local path (relative ones from the current
    directory), or a gs:// one when validate can reach it. When it cannot tell (no credentials, no
    network, permission denied, out of time), DC186 says so and the runtime checks the path when it
    starts (exit 2, naming it); `--offline` reads no remote path. The teacher's local path may be
    empty on purpose: `distillc launch --local` trains and caches the teacher there (a missing
    gs:// teacher is DC187). In the examples of these checkpoint rules, gs://bucket/ is the tests'
    fake Cloud Storage holding tests/fixtures/ (tests/fake_gcs.py: gs://bucket/hf/llama2 is
    tests/fixtures/hf/llama2), and gs://no-access/ a bucket the credentials found may not read.

    Fails::

        student:
          checkpoint: gs://bucket/no-such-student/0/items

    Passes::

        student:
          checkpoint: gs://bucket/hf/llama2
    """
    side = ctx.spec.student
    path = side.checkpoint if side is not None else None
    if path is None or not path.strip():
        return  # empty: DC145 reports it
    if files.exists(ctx, path) is False:
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
    """A Hugging Face checkpoint (a directory with config.json beside *.safetensors) must hold
    the model the spec names: its model type must be the family's, and every field that changes the
    function (shapes, vocabulary, norm eps, RoPE theta and scaling, tied embeddings, biases, q/k
    norms, activation, norm and embedding conventions) must equal the catalog's or inline values.
    The runtime refuses a mismatch when it starts; this reports each disagreeing field before
    anything is queued. The same code reads config.json in both places (runtime/convert/hf_config.py,
    no jax). Local directories, and gs:// ones when validate reaches them (one listing and the
    config.json read; DC186 names a checkpoint it could not read).

    Fails::

        teacher:
          model: tiny-teacher
          checkpoint: gs://bucket/hf/llama2

    Passes::

        teacher:
          model: {num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 4, head_dim: 16, mlp_dim: 96,
                  vocab_size: 96, tokenizer: byte, tie_embeddings: true, norm_eps: 1.0e-5}
          checkpoint: gs://bucket/hf/llama2
    """
    for role, arch in (("teacher", ctx.teacher_arch), ("student", ctx.student_arch)):
        side = getattr(ctx.spec, role)
        if side is None or arch is None or side.checkpoint is None or side.format not in (None, "hf"):
            continue
        try:
            config = files.hf_config(ctx, side.checkpoint)
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
    directory (config.json + *.safetensors, named by `format: hf` or found at a local path or a
    gs:// one validate reaches) there fails on the cluster after the queue. The distillc runtime
    loads it directly.

    Fails::

        teacher:
          checkpoint: gs://bucket/hf/llama2

    Passes::

        teacher:
          checkpoint: gs://bucket/llama3.1-8b/0/items
    """
    for role in ("teacher", "student"):
        side = getattr(ctx.spec, role)
        if side is None or side.checkpoint is None or side.format not in (None, "hf"):
            continue
        try:
            hf = side.format == "hf" or files.hf_config(ctx, side.checkpoint) is not None
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
    vocabulary sizes can be equal). When a side's checkpoint is a directory holding config.json and
    tokenizer.json (or tokenizer.model) and data.tokenizer names a file of the same kind, their
    sha256 must match; data.tokenizer 'byte' disagrees with a shipped tokenizer unless the model's
    own tokenizer (catalog or inline) is byte. Local paths, and gs:// ones when validate reaches
    them (each file read whole, up to 64 MiB; DC186 names what it could not read); hashed only when
    both are files (a few MB: milliseconds). The runtime checks every path again before it loads
    the checkpoint (exit 2, naming both files). A .gguf data.tokenizer, or a kind the checkpoint
    does not ship, is not compared.

    Fails::

        teacher:
          checkpoint: gs://bucket/tokenizers/hf
        data:
          tokenizer: tests/fixtures/tokenizers/other.json

    Passes::

        teacher:
          checkpoint: gs://bucket/tokenizers/hf
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
        why = files.tokenizer_mismatch(ctx, role, side.checkpoint, data.tokenizer,
                                       arch.tokenizer if arch is not None else None)
        if why is not None:
            yield Finding(why, (role, "checkpoint"))


@rule(
    "DC186",
    Severity.NOTE,
    "a gs:// path could not be checked",
    needs=(),
    hint="The runtime checks it when it starts (exit 2, naming the path). To check it now: give validate "
    "Google credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS), or more "
    "time (--remote-timeout, DISTILLC_REMOTE_TIMEOUT); --offline (DISTILLC_OFFLINE=1) skips remote checks.",
)
def remote_unchecked(ctx: Context) -> Iterator[Finding]:
    """validate checks gs:// checkpoints as it checks local ones (DC180, DC181, DC183, DC185, DC187)
    when it can reach them: with Google credentials found without the network (the variables and
    files google-auth reads, or a Google Cloud machine), and within a time budget (5 s for the
    whole run, `--remote-timeout`). When it cannot tell whether a path exists or what it holds (no
    credentials, no network, permission denied, out of time), that is not an error: this note says
    which path and why, once per key, and the runtime checks it at start. Nothing is noted with
    `--offline`, which reads no remote path.

    Fails::

        student:
          checkpoint: gs://no-access/student/0/items

    Passes::

        student:
          checkpoint: gs://bucket/hf/llama2
    """
    remote = ctx.remote
    if remote is None:
        return
    keys = []
    for role in ("teacher", "student"):
        side = getattr(ctx.spec, role)
        if side is not None and side.checkpoint and is_gs(side.checkpoint):
            keys.append(((role, "checkpoint"), side.checkpoint))
            try:
                remote.exists(side.checkpoint)  # asked once for all rules (cached); what --select DC186 alone reads
            except Unreachable:
                pass
    if ctx.spec.data is not None and is_gs(ctx.spec.data.tokenizer):
        keys.append((("data", "tokenizer"), ctx.spec.data.tokenizer))
    for key, path in keys:
        root = path.rstrip("/")
        hits = [(p, why) for p, why in remote.unchecked.items() if p.rstrip("/") == root or p.startswith(root + "/")]
        if not hits:
            continue
        where, why = hits[0]
        what = "" if where.rstrip("/") == root else f" ({where.rsplit('/', 1)[-1]})"
        yield Finding(f"{'.'.join(key)} {path!r} was not checked{what}: {why}", key)


@rule(
    "DC187",
    Severity.ERROR,
    "teacher checkpoint not found",
    needs=(),
    hint="Fix the path (`gsutil ls` or `gcloud storage ls` shows what is there), or remove teacher.checkpoint "
    "to start the teacher from a random init.",
)
def remote_teacher_missing(ctx: Context) -> Iterator[Finding]:
    """The runtime restores a gs:// `teacher.checkpoint` as it is (only a local path is a place
    `distillc launch --local` trains and caches a teacher into, so a missing local teacher is not an
    error): a gs:// teacher that does not exist stops the job at its start. validate reports it
    before anything is queued when it reaches the path; when it cannot tell, DC186 says why.

    Fails::

        teacher:
          checkpoint: gs://bucket/no-such-teacher/0/items

    Passes::

        teacher:
          checkpoint: gs://bucket/hf/llama2
    """
    side = ctx.spec.teacher
    path = side.checkpoint if side is not None else None
    if path is None or not is_gs(path):
        return
    if files.exists(ctx, path) is False:
        yield Finding(f"teacher.checkpoint {path!r} does not exist", ("teacher", "checkpoint"))
