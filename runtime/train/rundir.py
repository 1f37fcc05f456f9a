"""A run directory's identity: which training plan it holds, its manifest, and moving it aside.

A run directory is only ever resumed by the plan that started it. Its manifest.json (written once,
when the run starts, never rewritten) records the resolved config, the exact command and
`plan_digest`: a sha256 over every field that changes the function trained (models, checkpoints,
loss and schedules, data, optimizer, steps, seeds), but not over logging, evaluation cadence,
paths, the mesh or the loss's memory layout, which a resume may change freely. A run whose
manifest names another digest is refused (`RunDirError`, exit 2) with the fields that differ and
the ways out; `restart=True` moves the old directory aside (never deletes it) and starts afresh.

Nothing here imports jax at module level: the digest is plain pydantic + hashlib.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from distillc.runtime.config import RuntimeConfig

MANIFEST = "manifest.json"

# Fields that do not change the function trained: names and paths, logging and evaluation cadence,
# checkpoint cadence, the device layout (a resume on other devices is exact), the loss's memory path
# (dense and chunked compute the same values), rematerialization and the MFU figure. The stage is
# not either: each stage has its own directory (`stage_dir`), and before this record existed an
# offline run's train stage found the save stage's manifest in the run directory.
NOT_IDENTITY: dict[str, Any] = {
    "name": True, "output": True, "mesh": True, "scan_layers": True, "enable_nnx": True, "stage": True,
    "loss_impl": True, "loss_chunk_size": True, "peak_flops": True,
    "train": {"checkpoint_every", "log_every", "eval_every", "eval_batches", "max_checkpoints"},
    "teacher": {"remat"}, "student": {"remat"},
}

# What a run directory holds once distillc has written into it (besides the manifest).
WRITTEN = ("checkpoints", "metrics.jsonl", "tensorboard", "local_report.json", "teacher.json")


class RunDirError(ValueError):
    """A run directory that holds another plan's run, or files distillc did not write."""


def plan_identity(config: RuntimeConfig) -> dict[str, Any]:
    """The fields that change the function trained, flattened to dotted keys (`loss.alpha.start`)."""
    return dotted(config.model_dump(mode="json", exclude=NOT_IDENTITY))


def plan_digest(config: RuntimeConfig) -> str:
    """sha256 of `plan_identity` as canonical JSON: equal iff the same function is trained."""
    text = json.dumps(plan_identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf of a nested dict (`{"loss": {"alpha": {"start": 0.9}}}` ->
    `{"loss.alpha.start": 0.9}`): what a message can name field by field."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(dotted(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def plan_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every identity field that differs (absent on one side: `(none)`)."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _NONE) != new.get(k, _NONE))
    return [f"{k}: {_show(old.get(k, _NONE))} -> {_show(new.get(k, _NONE))}" for k in keys]


_NONE = object()


def _show(v: Any) -> str:
    return "(none)" if v is _NONE else json.dumps(v)


def stage_dir(config: RuntimeConfig) -> Path:
    """Where a stage's manifest lives: the run directory for training, `<run_dir>/<stage>` for the
    others (the resolver puts their outputs there), so an offline spec's two stages keep two records."""
    run = Path(config.output.run_dir)
    return run if config.stage == "train" else run / config.stage


@dataclass(frozen=True)
class OpenedRun:
    directory: Path
    new: bool  # no earlier run here: the manifest was written now
    moved_aside: Optional[Path] = None  # where --restart put the previous run


def open_run(config: RuntimeConfig, argv: list[str], extra: Optional[dict] = None, *,
             restart: bool = False) -> OpenedRun:
    """Checks that the stage's directory is new or holds this plan's run; with `restart` (one process
    only: the caller's to ensure), moves any earlier run aside first. Writes the manifest when the
    run is new; a resumed run keeps the manifest that started it."""
    directory = stage_dir(config)
    moved = None
    if restart and has_run(directory):
        moved = move_aside(directory)
    held = _held_plan(directory, config)
    if held is not None:
        why = plan_differences(held, plan_identity(config))
        if why:
            raise RunDirError(_mismatch(directory, why))
        return OpenedRun(directory, new=False)
    write_manifest(config, argv, extra)
    return OpenedRun(directory, new=True, moved_aside=moved)


def has_run(directory: Path) -> bool:
    """A manifest or anything distillc writes into a run directory is there."""
    return (directory / MANIFEST).exists() or any((directory / name).exists() for name in WRITTEN)


def _held_plan(directory: Path, config: RuntimeConfig) -> Optional[dict[str, Any]]:
    """The identity of the run already in `directory` (None: no run there yet)."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        found = [name for name in WRITTEN if (directory / name).exists()]
        if found:
            raise RunDirError(
                f"{directory} holds {', '.join(found)} but no {MANIFEST}: distillc cannot tell which plan "
                f"wrote it and will not write over it; {_WAYS_OUT}")
        return None
    try:
        recorded = json.loads(manifest.read_text())["config"]
        return plan_identity(RuntimeConfig.model_validate(recorded))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(f"{manifest} is not a distillc run manifest this version reads ({e}); {_WAYS_OUT}") from None


_WAYS_OUT = ("give this run a new `name` or `train.output_dir` in the spec, or rerun with --restart to move "
             "the old run aside (it is kept, not deleted) and train afresh")


def _mismatch(directory: Path, why: list[str]) -> str:
    shown = "; ".join(why[:8]) + (f"; and {len(why) - 8} more" if len(why) > 8 else "")
    return f"{directory} holds a run of a different plan ({shown}); {_WAYS_OUT}"


def move_aside(directory: Path) -> Path:
    """Renames a run directory to `<dir>.old-<UTC time>` (a free name), never deleting anything."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory.with_name(f"{directory.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = directory.with_name(f"{directory.name}.old-{stamp}-{n}")
    directory.rename(target)
    print(f"{directory}: the previous run was moved to {target}", flush=True)
    return target


def write_manifest(config: RuntimeConfig, argv: list[str], extra: Optional[dict] = None) -> Path:
    """The run manifest (resolved config, exact command, plan digest), written atomically."""
    import jax

    directory = stage_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": json.loads(config.model_dump_json()),
        "plan_digest": plan_digest(config),
        "command": list(argv),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest.update(extra or {})
    index = jax.process_index()
    path = directory / (MANIFEST if index == 0 else f"manifest.process{index}.json")
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Writes a file through a temporary name in its directory, renamed when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
