"""Diagnostic codes of `distillc launch` and `distillc plan` (DC4xx): clusters, xpk, MaxText target.

These are not spec rules (they need a cluster entry or a target, which `validate` does not have),
so they are declared here rather than registered with @rule; severity still belongs to the code.
DC400-DC409: the clusters file and what a cluster entry changes. DC410-DC419: what xpk and the
container can carry. DC420-DC439: what the pinned MaxText version can express (--target maxtext).
"""

from __future__ import annotations

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import CODES, declare

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE

_CODES = [
    ("DC400", N, "the cluster's accelerator replaces the spec's",
     "Set resources.accelerator to the cluster's accelerator to silence this note.",
     "A clusters-file entry fixes the hardware a run gets. When it names a different accelerator "
     "than the spec, the cluster wins, and every rule (memory fit, batch divisibility, mesh) runs "
     "again for the cluster's accelerator."),
    ("DC401", N, "the cluster's slice count replaces the spec's",
     "Set resources.num_slices to the cluster's num_slices to silence this note.", ""),
    ("DC402", E, "a cluster entry value xpk cannot take",
     "Use the form shown: a GCP project id, a zone such as us-central1-a, an xpk name, a docker image reference.",
     "xpk interpolates project, zone, cluster, image and names into gcloud and kubectl command lines "
     "it runs through a shell, and checks names against [a-z]([-a-z0-9]*[a-z0-9])?; a value outside "
     "these forms either fails inside xpk or changes the command it runs."),
    ("DC403", E, "the accelerator cannot be launched with xpk",
     "Pick an xpk device type (`distillc accelerators`), or run locally with `distillc launch --local`.", ""),
    ("DC404", E, "no container image for the workloads",
     "Set docker_image (an image with distillc installed) or base_docker_image in the cluster entry or under resources.", ""),
    ("DC405", W, "resources.script_dir is not used by launch",
     "Remove resources.script_dir: launch ships its build directory (the compiled configs) as the script dir.", ""),
    ("DC406", E, "a value cannot reach the container intact",
     "Remove the character shown from the value.",
     "xpk 1.16 pastes --command into a YAML block inside the JobSet manifest and, on GPU device types, "
     "also into a double-quoted YAML string: a newline breaks the manifest everywhere, and a double "
     "quote or a backslash breaks or changes it on GPUs. Values that distillc puts into the command "
     "are shell-quoted; these characters cannot be quoted around xpk."),
    ("DC420", E, "MaxText version distillc cannot render for",
     "Set maxtext.version to one of the versions listed.", ""),
    ("DC421", E, "a schedule MaxText cannot express",
     "Use a constant, linear or cosine schedule (MaxText has no schedule tables), or --target distillc.", ""),
    ("DC422", E, "a layer mapping MaxText cannot express",
     "MaxText aligns the same layer index on both sides; use --target distillc for other mappings.",
     "MaxText's distill_layer_indices index the teacher's and the student's scanned layers alike "
     "(the trainer cannot map student layer i to teacher layer f(i)). A plan whose pairs are not all "
     "(i, i) cannot be written as distill_layer_indices without aligning different layers."),
    ("DC423", E, "a model the pinned MaxText version does not have",
     "Use a model from MaxText's configs/models for that version, or --target distillc.", ""),
    ("DC424", E, "teacher and student vocabulary sizes differ",
     "MaxText's trainer asserts equal vocab_size; use --target distillc, which compares the shared real tokens.", ""),
    ("DC425", E, "a data source MaxText cannot read as written",
     "Give a .jsonl file (read with MaxText's Hugging Face json loader) or ArrayRecord/Parquet/TFRecord files for Grain.", ""),
    ("DC426", E, "a tokenizer MaxText cannot load",
     "Give a sentencepiece .model, a tiktoken file, a Hugging Face tokenizer.json or hub id.", ""),
    ("DC427", E, "a learning-rate schedule MaxText's distillation trainer cannot express",
     "MaxText's distillation optimizer is warmup + cosine decay; set train.lr_schedule: cosine, or use --target distillc.", ""),
    ("DC428", E, "an offline variant MaxText does not implement",
     "MaxText renormalizes the teacher's top-k (offline.loss: renormalized, sampling: top_k, capture_temperature: 1.0).", ""),
    ("DC429", W, "held-out evaluation is not rendered for MaxText",
     "Set data.eval_fraction: 0 for --target maxtext, or evaluate the checkpoints separately.", ""),
    ("DC430", E, "a mesh MaxText cannot express",
     "Make runtime.mesh.data times fsdp a multiple of the number of slices (tensor never crosses slices).", ""),
    ("DC431", W, "a data directory is read as its .jsonl files for MaxText",
     "Point data.source at a .jsonl file or a glob of them to make the MaxText run read the same documents.",
     "The distillc runtime reads a directory's .txt and .jsonl files; the MaxText config reads "
     "<dir>/*.jsonl with Hugging Face's json loader, so .txt files in it are not trained on."),
    ("DC432", N, "the default held-out evaluation is not rendered for MaxText",
     "Set data.eval_fraction: 0 to silence this note, or evaluate the checkpoints separately.",
     "The spec did not set data.eval_fraction, so distillc's default holds out a fraction of the data "
     "for evaluation; MaxText's loaders cannot, so its config trains on all of it. DC429 warns "
     "instead when the spec sets eval_fraction itself."),
]

for _code, _sev, _title, _hint, _doc in _CODES:
    if _code not in CODES:  # importing twice (tests reload modules) must not fail
        declare(_code, _sev, _title, _hint, _doc)
