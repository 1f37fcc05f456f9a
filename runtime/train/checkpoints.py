"""Orbax checkpoints: the resumable training state, and plain parameter checkpoints.

A training checkpoint (CheckpointManager, one directory per step, written to a temporary name and
renamed when complete, so a killed job never leaves a half checkpoint that looks finished) holds
  params     the student's nnx.Param state
  opt_state  the optax state
  data       the input iterator's state ({"next_index": batches returned}, equal on every process)
  meta       {"step", "config_name", "tokens_seen", ...}: a JSON record
The teacher is never in it: it is frozen and restored read-only from its own checkpoint.

A parameter checkpoint (`save_params` / `restore_params`) is one PyTree directory holding a
model's nnx.Param state: what a trained teacher is cached as. `restore_params` also accepts the
root of a training run's checkpoint directory (it takes the latest step's `params`).

Every checkpoint gets an integrity record once it is complete (integrity.py: each file's size and
sha256), verified before a restore: a damaged training step is skipped for the newest intact one
(the trainer says so), a damaged parameter checkpoint is refused.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx
from etils import epath

from distillc.runtime.train import integrity
from distillc.runtime.train.rundir import dotted


class _DropMissingMetadata(logging.Filter):
    """orbax warns "Metadata file does not exist" (through absl) whenever it reads a checkpoint that
    was written without the optional step metadata, ours included: the warning says nothing the
    user can act on, so it is not shown. Every other absl record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


logging.getLogger("absl").addFilter(_DropMissingMetadata())


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not fit the model; the message names the path."""


# What the OS says when a write fails for a reason the user must fix; orbax/tensorstore wrap it in a
# ValueError("RESOURCE_EXHAUSTED: ... [os_error_code=28]") raised from a background thread.
_IO_REASONS = re.compile(r"No space left on device|Disk quota exceeded|Permission denied|Read-only file system|"
                         r"Not a directory|Input/output error")


class _OneLineOrbaxErrors(logging.Filter):
    """Orbax logs each failed background write with its traceback before the save's future raises
    it again (33 tracebacks for one full disk); the trainer reports that failure once, so the log
    keeps orbax's one-line message without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "/orbax/" in (record.pathname or ""):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("absl").addFilter(_OneLineOrbaxErrors())


def _late_callback(exc_type: type[BaseException], exc: BaseException, tb: Any) -> bool:
    """A tensorstore read or write that completes after orbax closed its event loop (a failed save
    or restore) calls back into the closed loop; the C side prints that through sys.excepthook as a
    traceback (or as an unraisable exception), once per pending operation. It is a consequence of the failure already reported."""
    if exc_type is not RuntimeError or str(exc) != "Event loop is closed":
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"


_previous_excepthook = sys.excepthook


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    if not _late_callback(exc_type, exc, tb):
        _previous_excepthook(exc_type, exc, tb)


sys.excepthook = _excepthook

_previous_unraisablehook = sys.unraisablehook


def _unraisablehook(unraisable: Any) -> None:
    """The same late callbacks, when the C side reports them as unraisable ("Exception ignored in:
    None") instead of through sys.excepthook."""
    if not _late_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
        _previous_unraisablehook(unraisable)


sys.unraisablehook = _unraisablehook


def _write_failed(directory: epath.Path, e: BaseException) -> CheckpointError:
    """A failed checkpoint write as one message naming the directory and the OS's reason; the
    unfinished (temporary) step directories are removed: nothing half-written looks finished."""
    text = "".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    found = _IO_REASONS.search(text)
    reason = found.group(0) if found else (text.strip().splitlines() or [type(e).__name__])[0][:200]
    if jax.process_index() == 0 and directory.exists():
        for tmp in directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return CheckpointError(f"cannot write checkpoints to {directory}: {reason} (finished checkpoints are intact)")


def _abs(path: str | os.PathLike) -> epath.Path:
    p = epath.Path(path)
    return p if str(p).startswith(("gs://", "s3://")) or p.is_absolute() else epath.Path(os.path.abspath(p))


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays: a restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@dataclass(frozen=True)
class Restored:
    step: int
    params: Any
    opt_state: Any
    data_state: dict
    meta: dict


class TrainCheckpoints:
    """Save every `every` steps (and on demand), keep the newest `max_to_keep`, resume from the latest."""

    def __init__(self, directory: str, *, every: int, max_to_keep: int, async_save: bool = True):
        self.directory = _abs(directory)
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=1,  # the trainer decides when; see should_save
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "data", "meta")
        )
        self._unsealed: list[int] = []  # saved steps whose integrity record is not written yet

    def should_save(self, step: int) -> bool:
        return step % self.every == 0

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def steps(self) -> list[int]:
        """Every finished step, newest first."""
        return sorted(self._mngr.all_steps(), reverse=True)

    def verify(self, step: int) -> bool:
        """True when the step's integrity record checks out, False when it has none (raises
        integrity.IntegrityError naming the damaged file)."""
        return integrity.verify(self.directory / str(step))

    def set_aside(self, step: int) -> str:
        """Moves a damaged step out of the way (renamed, never deleted: it may be worth a look), so
        the run can write that step again; returns where it went."""
        target = self.directory / f"damaged-{step}-{int(time.time())}"
        if jax.process_index() == 0:
            (self.directory / str(step)).rename(target)
        self._mngr.reload()
        return str(target)

    def _seal(self) -> None:
        """Waits for the saves in flight, then records the integrity of each finished step (process
        0, which writes the shared files; the previous save has had a whole interval to finish)."""
        if not self._unsealed:
            return
        self._wait()
        if jax.process_index() == 0:
            for step in self._unsealed:
                step_dir = self.directory / str(step)
                if step_dir.exists():  # not already rotated out by max_to_keep
                    try:
                        integrity.record(step_dir)
                    except OSError as e:
                        raise _write_failed(self.directory, e) from e
        self._unsealed.clear()

    def save(self, step: int, *, params, opt_state, data_state: dict, meta: dict) -> None:
        """Starts the save (asynchronously by default); values are snapshotted before it returns."""
        self._seal()
        self._unsealed.append(step)
        try:
            self._save(step, params, opt_state, data_state, meta)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - orbax reports a failed write as whatever tensorstore raised
            raise _write_failed(self.directory, e) from e

    def _wait(self) -> None:
        """Waits for the saves in flight; a failed one is one CheckpointError (see _write_failed)."""
        try:
            self._mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._unsealed.clear()
            raise _write_failed(self.directory, e) from e

    def _save(self, step: int, params, opt_state, data_state: dict, meta: dict) -> None:
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                data=ocp.args.JsonSave(dict(data_state)),
                meta=ocp.args.JsonSave(dict(meta, step=step)),
            ),
            force=True,
        )

    def restore(self, step: int, *, params_like, opt_state_like) -> Restored:
        """Restores onto the shardings and dtypes of the given (abstract or concrete) trees."""
        out = self._mngr.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract(params_like)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return Restored(step, out.params, out.opt_state, dict(out.data), dict(out.meta))

    def wait(self) -> None:
        self._wait()
        self._seal()

    def close(self) -> None:
        try:
            self._wait()
            self._seal()
        finally:
            self._mngr.close()


def save_params(path: str, params: Any) -> None:
    """Writes a parameter checkpoint to a fresh temporary name next to `path`, renamed into place when
    complete. Only an empty directory or a distillc parameter checkpoint of the same model (names and
    shapes) is replaced; anything else at `path` is the user's and is refused (`CheckpointError`)."""
    target = _abs(path)
    why = _not_replaceable(path, params)
    if why:
        raise CheckpointError(f"will not save a checkpoint to {path}: it {why}; choose another path "
                              "(nothing there was changed)")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(tmp, params)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    if jax.process_index() == 0:
        integrity.record(tmp)  # recorded before the rename: the record lives inside the directory
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)  # ours (checked above): out of the way, removed once the new one is in place
    tmp.rename(target)
    if old.exists():
        old.rmtree()


def _not_replaceable(path: str, params: Any) -> str:
    """Why `path` must not be replaced by a checkpoint of `params` ("" when it may)."""
    p = _abs(path)
    if not p.exists():
        return ""
    if not p.is_dir():
        return "is a file"
    if not any(p.iterdir()):
        return ""
    if not (p / "_CHECKPOINT_METADATA").exists():
        return "is a non-empty directory that is not a distillc parameter checkpoint"
    try:
        why = "; ".join(_differences(stored_tree(path), params))
    except CheckpointError as e:
        return f"holds a checkpoint whose parameters cannot be read ({e})"
    return f"holds a checkpoint of a different model ({why})" if why else ""


def is_checkpoint(path: str) -> bool:
    """A finished parameter checkpoint or a training-run checkpoint root with a finished step."""
    p = _abs(path)
    if not p.exists():
        return False
    if (p / "_CHECKPOINT_METADATA").exists():
        return True
    return _latest_step_dir(p) is not None


def _latest_step_dir(root: epath.Path) -> epath.Path | None:
    steps = []
    for child in root.iterdir():
        if child.name.isdigit() and (child / "params").exists():
            steps.append(int(child.name))
    return root / str(max(steps)) / "params" if steps else None


def _params_dir(path: str) -> epath.Path:
    """The parameter checkpoint directory `path` names: itself, one run step, or a run's latest step."""
    p = _abs(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if (p / "params" / "_METADATA").exists():  # one step of a training run
        return p / "params"
    if (p / "_CHECKPOINT_METADATA").exists():
        return p
    step_dir = _latest_step_dir(p)
    if step_dir is None:
        raise CheckpointError(f"{path!r} is neither a parameter checkpoint nor a run with saved steps")
    return step_dir


def metadata_tree(directory: Any, where: str) -> dict:
    """The nested-dict structure an Orbax PyTree checkpoint directory records in its metadata (no
    arrays read); `where` names it in the error. One reader for our checkpoints and MaxText's."""
    ckptr = ocp.PyTreeCheckpointer()
    try:
        meta = ckptr.metadata(directory)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{where} has unreadable Orbax metadata: {e}") from e
    finally:
        ckptr.close()
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    if not isinstance(tree, dict):
        raise CheckpointError(f"{where} has no parameter tree in its Orbax metadata")
    return tree


def stored_tree(path: str) -> dict:
    """The nested-dict structure of a parameter checkpoint, read from its metadata (no arrays)."""
    return metadata_tree(_params_dir(path), f"checkpoint {path!r}")


def _leaves(tree: Any) -> dict[str, Any]:
    """Dotted path -> leaf of a nested dict (checkpoint metadata or a pure-dict parameter tree)."""
    # an nnx Variable is stored as {"value": array}
    return {path.removesuffix(".value"): leaf for path, leaf in dotted(tree).items()}


def _differences(stored: dict, params_like: Any) -> list[str]:
    """A short account of how a checkpoint's tree differs from the model's (not orbax's full dump):
    empty when the names and shapes agree."""
    want = _leaves(nnx.to_pure_dict(params_like) if isinstance(params_like, nnx.State) else params_like)
    have = _leaves(stored)
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    shapes = [f"{k}: checkpoint {tuple(have[k].shape)}, model {tuple(want[k].shape)}" for k in sorted(want.keys() & have.keys())
              if hasattr(have[k], "shape") and hasattr(want[k], "shape") and tuple(have[k].shape) != tuple(want[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} model parameter(s) not in the checkpoint, e.g. {', '.join(missing[:3])}")
    if extra:
        parts.append(f"{len(extra)} checkpoint entr(ies) the model lacks, e.g. {', '.join(extra[:3])}")
    if shapes:
        parts.append(f"{len(shapes)} shape(s) differ, e.g. {'; '.join(shapes[:2])}")
    return parts


def param_differences(path: str, params_like: Any, stored: Optional[dict] = None) -> str:
    """How the parameters stored at `path` differ from `params_like` in names and shapes, from the
    checkpoint's metadata (`stored`, when the caller has read it already); "" when they agree or
    the metadata has no tree. Checked before a restore: one that fails midway leaves orbax's reads
    pending."""
    try:
        return "; ".join(_differences(stored if stored is not None else stored_tree(path), params_like))
    except CheckpointError:
        return ""


def restore_params(path: str, params_like: Any, stored: Optional[dict] = None) -> Any:
    """Restores a parameter checkpoint (or a run's latest `params`) onto `params_like`'s shardings
    and dtypes (a bfloat16 target casts float32 weights on load). `stored`: its tree metadata, when
    the caller has read it already."""
    p = _params_dir(path)
    checked = p.parent if p.name == "params" and (p.parent / integrity.RECORD).exists() else p
    try:
        integrity.verify(checked)
    except integrity.IntegrityError as e:
        raise CheckpointError(f"checkpoint {path!r} is damaged: {e}; restore it from a copy, or train it again") from e
    why = param_differences(path, params_like, stored)
    if why:
        raise CheckpointError(f"checkpoint {path!r} does not match the model: {why}")
    ckptr = ocp.StandardCheckpointer()
    try:
        return ckptr.restore(p, abstract(params_like))
    except (ValueError, KeyError) as e:  # names and shapes agreed: the tree's nesting or dtypes differ
        raise CheckpointError(
            f"checkpoint {path!r} does not match the model: its parameters are nested differently (e.g. plain "
            f"arrays saved where the model has nnx Variables) or have other dtypes") from e
    finally:
        ckptr.close()
