"""The runtime's entry point: `python -m distillc.runtime.main --config run.json`.

    --config PATH          the compiled RuntimeConfig (JSON written by `distillc launch`)
    --coordinator H:P      multi-process runs without a launcher's environment: process 0's address,
    --num-processes N      the number of processes,
    --process-id I         and this process's id (all three together)
    --no-progress          no progress bar (one line per logging window instead, as when stdout
                           is not a terminal)
    --restart              move an earlier run of another plan aside (never deleted) and start afresh
                           (single-process runs)

Exit codes: 0 done; 2 the config or the command line is wrong (a message, no traceback);
3 a loss went non-finite (the message names the step and the term; the update was not applied);
4 the config's stage/mode is not available in this build. Anything else is a bug: traceback, 1.

Stages are an explicit table keyed by (mode, stage); each entry names a module and function, imported
only when that stage runs. The run manifest (resolved config, exact command, plan digest) is
written when a run starts; a run directory holding another plan's run is refused (train/rundir.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from distillc.runtime.config import RuntimeConfig, load as parse_config

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_UNAVAILABLE = 0, 2, 3, 4

# (mode, stage) -> "module:function"; the function takes (config, console: bool) and returns None.
STAGES: dict[tuple[str, str], str] = {
    ("online", "train"): "distillc.runtime.main:run_train",
    ("offline", "train"): "distillc.runtime.main:run_train",  # the trainer's objective dispatch picks top-k
    ("offline", "save_topk"): "distillc.runtime.offline.save:run_stage",
}


class ConfigError(ValueError):
    """A config file that is missing, not JSON, or not a valid RuntimeConfig."""


class StageUnavailable(RuntimeError):
    pass


def load_config(path: str | Path) -> RuntimeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        json.loads(text)  # for the line and column of a syntax error
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    try:
        return parse_config(text)
    except ValidationError as e:
        lines = [f"{path}: not a valid runtime config ({e.error_count()} error(s)):"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def check_gs_credentials(config: RuntimeConfig) -> None:
    """A config with gs:// paths on a machine without Google credentials stops here (exit 2, naming
    the first path), not after gcsfs's own probing and retries (about 50 s, with logged tracebacks)."""
    from distillc.runtime.gcs_credentials import missing_credentials

    problem = missing_credentials(config.model_dump(mode="json"))
    if problem is not None:
        raise ConfigError(problem)


def stage_function(config: RuntimeConfig) -> Callable[[RuntimeConfig, bool], None]:
    target = STAGES.get((config.mode, config.stage))
    if target is None:
        raise StageUnavailable(f"stage {config.stage!r} in mode {config.mode!r} is not a runtime stage")
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise StageUnavailable(
            f"stage {config.stage!r} (mode {config.mode!r}) is not available in this build ({module_name} is missing)"
        ) from None
    return getattr(module, func)


def run_train(config: RuntimeConfig, console: bool = True) -> None:
    from distillc.runtime.train.trainer import train

    result = train(config, console=console)
    import jax

    if jax.process_index() == 0:
        ev = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.eval.items()) if k.endswith(("loss", "_ce", "kl_T1")))
        ev = ev or "none (data.eval_fraction 0 and no data.eval_source)"
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
        print(f"{config.name}: trained to step {result.final_step}{resumed} in {result.wall_s:.1f} s; "
              f"held-out {ev}", flush=True)


def user_errors() -> tuple[type[Exception], ...]:
    """Mesh / data / tokenizer / checkpoint / top-k cache mismatches: the user's to fix, reported as
    one message (exit 2), never a traceback."""
    from distillc.runtime.train.checkpoints import CheckpointError
    from distillc.runtime.train.rundir import RunDirError
    from distillc.runtime.data.corpus import CorpusError
    from distillc.runtime.data.pipeline import DataError
    from distillc.runtime.data.prepared import PreparedError
    from distillc.runtime.train.distributed import MeshError
    from distillc.runtime.data.tokenizers import TokenizerError
    from distillc.runtime.offline.store import CacheError
    from distillc.runtime.train.run_lock import LockHeld

    # OSError: a full disk, a permission, a run directory under a file (its message names the path)
    return (CacheError, CheckpointError, CorpusError, DataError, LockHeld, MeshError, OSError, PreparedError,
            RunDirError, TokenizerError)


def run(config: RuntimeConfig, argv: list[str], *, console: bool = True, restart: bool = False,
        extra: dict | None = None) -> int:
    """Runs one config's stage in this (already initialized) process; returns the exit code."""
    from distillc.runtime.train.objectives import TeacherUnavailable
    import jax

    from distillc.runtime.train.halts import Halted
    from distillc.runtime.train.run_lock import RunLock
    from distillc.runtime.train.rundir import open_run

    try:
        fn = stage_function(config)
        with RunLock(config.output.run_dir, enabled=jax.process_index() == 0):  # before the run directory is touched
            open_run(config, argv, extra, restart=restart)
            fn(config, console)
    except StageUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except TeacherUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except Halted as e:
        print(f"error: {config.name}: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except user_errors() as e:
        print(f"error: {config.name}: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m distillc.runtime.main", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="compiled runtime config (JSON)")
    parser.add_argument("--coordinator", help="host:port of process 0 (multi-process runs)")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--restart", action="store_true",
                        help="move an earlier run of another plan aside (kept) and start afresh")
    args = parser.parse_args(argv)
    flags = (args.coordinator, args.num_processes, args.process_id)
    if any(f is not None for f in flags) and not all(f is not None for f in flags):
        parser.error("--coordinator, --num-processes and --process-id go together")
    if args.restart and (args.num_processes or 1) > 1:
        parser.error("--restart is for single-process runs: move the run directory aside by hand, then start all processes")
    try:
        config = load_config(args.config)
        check_gs_credentials(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    from distillc.runtime.train import distributed

    distributed.tune_host_allocator()
    coordinator = None
    if args.coordinator is not None:
        if not 0 <= args.process_id < args.num_processes:
            parser.error(f"--process-id {args.process_id} is not in [0, {args.num_processes})")
        coordinator = distributed.Coordinator(args.coordinator, args.num_processes, args.process_id)
    try:
        distributed.initialize(coordinator)
    except distributed.MeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    command = [sys.executable, "-m", "distillc.runtime.main", *argv]
    return run(config, command, console=not args.no_progress, restart=args.restart)


if __name__ == "__main__":
    sys.exit(main())
