"""`distillc launch SPEC --local`: run a compiled spec on this machine's devices and compare.

For every online training config:
1. the teacher: when `teacher.checkpoint` names a local path that holds no checkpoint yet, the
   teacher is first trained on the same corpus with cross-entropy only, for TEACHER_STEPS_FACTOR x
   the student's steps (same batch, sequence length, learning rate and schedule shape; warm-up
   scaled by the same factor), and its parameters are cached at that path (its run directory, with
   metrics and TensorBoard files, next to it as `<path>-run`). A cached teacher is loaded as is.
   For the quickstart that is 600 steps at lr 3e-3 with 30 warm-up steps and cosine decay.
2. the distillation run itself (the config as compiled);
3. a baseline: the same student, seed, data order, optimizer and steps with cross-entropy only
   (alpha = 0, beta = 0), so the table can say what distillation bought;
then one table: held-out cross-entropy and perplexity of the teacher, each distilled student and
its CE-only baseline, and each distilled student's KL to the teacher at T = 1, all over the whole
held-out split. Other stages (offline top-k) run through the runtime's stage table.

The mesh is fitted to the devices JAX sees (all of them on the data axis) when the compiled mesh
does not match, and a config whose models do not fit in the devices' memory is refused before
anything runs. Runs resume from their checkpoints like any runtime job: a finished run directory
is evaluated again, not retrained (the timing line says so). A run directory whose manifest holds
another plan (train/rundir.py: a different plan digest) is refused, exit 2; `--restart` moves the
spec's earlier runs aside (never deletes them) and trains afresh. A teacher path that holds anything
but a loadable checkpoint is an error: nothing the user put there is written over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distillc.runtime.arch import human_count
from distillc.runtime.config import LossConfig, MeshConfig, RuntimeConfig, Schedule

# A local teacher trains this many times the student's steps. Measured on the quickstart (held-out
# nats/byte, teacher / KD student / CE-only student): x1.0 1.526 / 1.698 / 1.785; x1.5 1.414 / 1.662 /
# 1.785; x2.0 1.359 / 1.678 / 1.785. x1.5 gives the best distilled student at 3/4 of x2's teacher cost.
TEACHER_STEPS_FACTOR = 1.5
MEMORY_HEADROOM = 0.8  # refuse configs whose estimate exceeds this fraction of device memory


@dataclass
class Row:
    label: str
    model: str
    params: int
    steps: int | None
    ce: float
    kl_t1: float | None = None
    note: str = ""


@dataclass
class LocalReport:
    rows: list[Row] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    comparisons: list[tuple[str, float]] = field(default_factory=list)  # (label, KD CE - baseline CE)
    unit: str = "nats/token"
    corpus: str = ""
    teachers: dict[str, str] = field(default_factory=dict)  # checkpoint path -> how this run got it


def _const(v: float, steps: int) -> Schedule:
    return Schedule(kind="constant", start=v, end=v, max_steps=steps)


def _ce_only_loss(cfg: RuntimeConfig, steps: int) -> LossConfig:
    return LossConfig(alpha=_const(0.0, steps), temperature=_const(1.0, steps), beta=_const(0.0, steps),
                      feature_loss=cfg.loss.feature_loss, layer_pairs=(), compare_vocab=cfg.loss.compare_vocab)


def _outputs(cfg: RuntimeConfig, run_dir: str):
    return cfg.output.model_copy(update=dict(
        run_dir=run_dir, checkpoint_dir=f"{run_dir}/checkpoints", tensorboard_dir=f"{run_dir}/tensorboard",
        metrics_file=f"{run_dir}/metrics.jsonl"))


def teacher_config(cfg: RuntimeConfig, steps_factor: float = TEACHER_STEPS_FACTOR) -> RuntimeConfig:
    """The config that trains the teacher on the corpus with cross-entropy (its own run directory)."""
    steps = int(round(steps_factor * cfg.train.steps))
    student = cfg.teacher.model_copy(update=dict(role="student", checkpoint=None, weight_dtype="float32",
                                                 pruned_layers=()))
    return cfg.model_copy(update=dict(
        name=f"{cfg.name}-teacher",
        mode="online", stage="train", offline=None,  # the teacher trains on the corpus, whatever the spec's mode
        objective="cross_entropy",
        student=student,
        loss=_ce_only_loss(cfg, steps),
        optimizer=cfg.optimizer.model_copy(update=dict(
            warmup_steps=int(round(cfg.optimizer.warmup_steps * steps_factor)))),
        train=cfg.train.model_copy(update=dict(steps=steps, checkpoint_every=steps, eval_every=0)),
        output=_outputs(cfg, f"{cfg.teacher.checkpoint}-run"),
    ))


def baseline_config(cfg: RuntimeConfig) -> RuntimeConfig:
    """The same student, data and optimizer with cross-entropy only."""
    return cfg.model_copy(update=dict(
        name=f"{cfg.name}-ce-baseline", loss=_ce_only_loss(cfg, cfg.loss.alpha.max_steps),
        mode="online", stage="train", offline=None, objective="cross_entropy",  # labels only: no teacher, no cache
        output=_outputs(cfg, f"{cfg.output.run_dir}-ce-baseline")))


def fit_mesh(cfg: RuntimeConfig, n_devices: int) -> tuple[RuntimeConfig, str | None]:
    """The config with its mesh put on the local devices (all on the data axis) if it does not fit."""
    if cfg.mesh.size == n_devices:
        return cfg, None
    from distillc.runtime.train.distributed import MeshError

    if cfg.data.global_batch_size % n_devices:
        raise MeshError(f"{cfg.name}: global batch {cfg.data.global_batch_size} does not split over the "
                        f"{n_devices} local devices")
    m = cfg.mesh
    note = (f"{cfg.name}: mesh data={m.data} fsdp={m.fsdp} tensor={m.tensor} is for {m.size} devices; "
            f"running on the {n_devices} local device(s) as data={n_devices}")
    return cfg.model_copy(update=dict(mesh=MeshConfig(data=n_devices, fsdp=1, tensor=1))), note


def memory_estimate(cfg: RuntimeConfig) -> int:
    """Bytes the stage needs over all its devices: the compiler's estimate (compiler/memory.py, the
    model the plan and rules DC152/DC153 use) per device, times the devices of its mesh."""
    from distillc.compiler.catalog import load_catalog
    from distillc.compiler.memory import MeshShape, estimate_config
    from distillc.runtime.train.objectives import uses_teacher

    m = cfg.mesh
    cpu = load_catalog().accelerators["cpu"]  # only the bytes are read, not the catalog's capacity
    est = estimate_config(cfg, cpu, MeshShape(m.data, m.fsdp, m.tensor), teacher_runs=uses_teacher(cfg))
    return int(est.total * m.size)


def available_memory() -> tuple[int, str]:
    import jax

    devs = jax.devices()
    stats = devs[0].memory_stats() if hasattr(devs[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) * len(devs), f"{len(devs)} x {devs[0].device_kind}"
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 << 30
    return int(avail), "host memory"


def _teacher_steps(cfg: RuntimeConfig) -> int | None:
    """Steps the cached teacher was trained for, from the record written next to it (if any)."""
    record = Path(f"{cfg.teacher.checkpoint}-run", "teacher.json")
    try:
        return int(json.loads(record.read_text())["config"]["train"]["steps"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _is_remote(path: str) -> bool:
    return "://" in path


def _empty_dir(p: Path) -> bool:
    return p.is_dir() and not any(p.iterdir())


def ensure_teacher(cfg: RuntimeConfig, report: LocalReport, console: bool,
                   steps_factor: float = TEACHER_STEPS_FACTOR, restart: bool = False) -> str:
    """Trains and caches the teacher when its local checkpoint path does not exist yet (or is an
    empty directory); says which happened. A path that holds anything else is the user's: an error
    (CheckpointError), never a place to train a teacher into."""
    from distillc.runtime.convert.gguf_meta import is_gguf_path
    from distillc.runtime.convert.hf import is_hf_checkpoint
    from distillc.runtime.train.checkpoints import CheckpointError, is_checkpoint, save_params
    from distillc.runtime.train.rundir import open_run, write_text_atomic
    from distillc.runtime.train.trainer import train

    path = cfg.teacher.checkpoint
    if path is None:
        return "random init"
    if _is_remote(path):
        return "restored"
    if path in report.teachers:  # an offline spec's second stage: said once, as stage one found it
        return report.teachers[path]
    if (cfg.teacher.format in ("hf", "gguf") or is_hf_checkpoint(path)
            or (cfg.teacher.format is None and is_gguf_path(path))):  # a published model: loaded, never trained here
        report.teachers[path] = "restored"
        return "restored"
    if is_checkpoint(path):
        print(f"teacher: using the cached checkpoint {path}", flush=True)
        report.teachers[path] = "cached"
        return "cached"
    if Path(path).exists() and not _empty_dir(Path(path)):
        raise CheckpointError(
            f"teacher.checkpoint {path} exists but is not a checkpoint distillc can load (no Orbax parameter "
            f"checkpoint or run with saved steps there); point teacher.checkpoint at one, or at a path that does "
            f"not exist yet to train and cache a teacher there (nothing at {path} was changed)")
    tcfg = teacher_config(cfg, steps_factor)
    print(f"teacher: no checkpoint at {path}; training {cfg.teacher.arch.name} on {cfg.data.source} with "
          f"cross-entropy for {tcfg.train.steps} steps, then caching it there", flush=True)
    open_run(tcfg, [*sys.argv], {"local": True, "teacher_of": cfg.name, "cached_at": path}, restart=restart)
    result = train(tcfg, console=console)
    save_params(path, result.params)
    record = {"config": json.loads(tcfg.model_dump_json()), "held_out": result.eval, "wall_s": result.wall_s}
    write_text_atomic(Path(tcfg.output.run_dir, "teacher.json"), json.dumps(record, indent=2) + "\n")
    report.timings.append((f"teacher training ({tcfg.train.steps} steps)", result.wall_s))
    report.teachers[path] = "trained now"
    return "trained now"


def run_local(configs: list[RuntimeConfig], spec_path: Path, *,
              teacher_steps_factor: float = TEACHER_STEPS_FACTOR, restart: bool = False) -> int:
    """Runs the compiled configs of one spec here; prints the comparison table (and writes it as
    local_report.json in the first run directory); returns an exit code. `restart`: earlier runs in
    the spec's run directories (and its baselines') are moved aside first, never deleted."""
    import jax

    from distillc.runtime import main as runtime_main
    from distillc.runtime.train.objectives import uses_teacher
    from distillc.runtime.train.halts import Halted
    from distillc.runtime.train.rundir import open_run, write_text_atomic
    from distillc.runtime.train.trainer import train
    from distillc.runtime.train.distributed import tune_host_allocator

    tune_host_allocator()
    _enable_compile_cache()
    t_all = time.perf_counter()
    report = LocalReport()
    console = sys.stdout.isatty()
    argv = [*sys.argv]
    code = 0
    baselines: dict[str, float] = {}
    if restart:
        move_runs_aside(configs)
    for cfg in configs:
        cfg, note = fit_mesh(cfg, jax.device_count())
        if note:
            print(f"note: {note}", flush=True)
        need, (have, where) = memory_estimate(cfg), available_memory()
        if need > MEMORY_HEADROOM * have:
            print(f"error: {cfg.name}: needs about {need / 2**30:.1f} GiB, more than {MEMORY_HEADROOM:.0%} of the "
                  f"{have / 2**30:.1f} GiB of {where}; run it on a cluster (distillc launch SPEC --cluster NAME)",
                  file=sys.stderr)
            return runtime_main.EXIT_USAGE
        if cfg.mode == "offline" and cfg.stage == "save_topk":
            try:
                ensure_teacher(cfg, report, console, teacher_steps_factor, restart)  # stage one runs the teacher: train and cache it first
            except Halted as e:
                print(f"error: {e}", file=sys.stderr)
                return runtime_main.EXIT_NONFINITE
            except runtime_main.user_errors() as e:
                print(f"error: {cfg.name}: {e}", file=sys.stderr)
                return runtime_main.EXIT_USAGE
        if cfg.stage != "train":
            t_stage = time.perf_counter()
            code = runtime_main.run(cfg, argv, console=console, extra={"spec": str(spec_path), "local": True})
            if code:
                return code
            report.timings.append((f"{cfg.stage.replace('_', ' ')} ({cfg.name})", time.perf_counter() - t_stage))
            continue
        report.unit = "nats/byte" if cfg.data.tokenizer == "byte" else "nats/token"
        report.corpus = cfg.data.source
        try:
            teacher_note = (ensure_teacher(cfg, report, console, teacher_steps_factor, restart)
                            if uses_teacher(cfg) else "")
            open_run(cfg, argv, {"spec": str(spec_path), "local": True})
            kd = train(cfg, console=console, eval_all_at_end=True)
            report.timings.append((_timing_label(cfg.name, kd), kd.wall_s))
            if not uses_teacher(cfg):
                report.rows.append(Row(cfg.name, cfg.student.arch.name, cfg.student.arch.param_count(),
                                       cfg.train.steps, kd.eval["hard_loss"]))
                continue
            if not any(r.label == "teacher" and r.model == cfg.teacher.arch.name for r in report.rows):
                report.rows.append(Row("teacher", cfg.teacher.arch.name, cfg.teacher.arch.param_count(),
                                       _teacher_steps(cfg), kd.eval["teacher_ce"], note=teacher_note))
            report.rows.append(Row(f"KD student ({cfg.name})", cfg.student.arch.name,
                                   cfg.student.arch.param_count(), cfg.train.steps, kd.eval["hard_loss"],
                                   kd.eval.get("kl_T1")))  # absent offline: the dense KL needs full logits
            bcfg = baseline_config(cfg)
            key = bcfg.model_dump_json(exclude={"name", "output", "teacher"})
            if key not in baselines:
                open_run(bcfg, argv, {"spec": str(spec_path), "local": True, "baseline_of": cfg.name})
                base = train(bcfg, console=console, eval_all_at_end=True)
                report.timings.append((_timing_label("CE-only baseline", base), base.wall_s))
                baselines[key] = base.eval["hard_loss"]
                report.rows.append(Row("CE-only student", cfg.student.arch.name, cfg.student.arch.param_count(),
                                       cfg.train.steps, base.eval["hard_loss"]))
            report.comparisons.append((cfg.name, kd.eval["hard_loss"] - baselines[key]))
        except Halted as e:
            print(f"error: {e}", file=sys.stderr)
            code = runtime_main.EXIT_NONFINITE
            break
        except runtime_main.user_errors() as e:
            print(f"error: {cfg.name}: {e}", file=sys.stderr)
            code = runtime_main.EXIT_USAGE
            break
    report.timings.append(("total", time.perf_counter() - t_all))
    if not report.rows:
        return code
    print(format_report(report, spec_path), flush=True)
    if jax.process_index() == 0:
        run_dir = Path(next(c.output.run_dir for c in configs if c.stage == "train"))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "local_report.json", json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return code


def move_runs_aside(configs: list[RuntimeConfig]) -> None:
    """--restart: every run directory this spec trains in (its own and its CE-only baselines') that
    holds an earlier run is renamed aside, never deleted. The cached teacher stays: it is an input."""
    from distillc.runtime.train.rundir import has_run, move_aside

    dirs = {Path(c.output.run_dir) for c in configs}
    dirs |= {Path(baseline_config(c).output.run_dir) for c in configs if c.stage == "train"}
    for d in sorted(dirs):
        if has_run(d):
            move_aside(d)


def _timing_label(name: str, result) -> str:
    """`quickstart (400 steps)`, or what a rerun did when the run had finished before."""
    steps = result.config.train.steps
    if result.resumed_from is not None and result.resumed_from >= steps:
        return f"{name} (trained earlier to {steps} steps; evaluated only)"
    if result.resumed_from:
        return f"{name} (steps {result.resumed_from}-{steps}, resumed)"
    return f"{name} ({steps} steps)"


def format_report(report: LocalReport, spec_path: Path) -> str:
    u = report.unit
    head = ("model", "arch", "params", "steps", f"held-out CE ({u})", "perplexity", "KL(teacher||student), T=1")
    rows = [head]
    for r in report.rows:
        label = r.label + (f" [{r.note}]" if r.note else "")
        rows.append((label, r.model, human_count(r.params), "-" if r.steps is None else str(r.steps), f"{r.ce:.3f}", f"{_exp(r.ce):.2f}",
                     "-" if r.kl_t1 is None else f"{r.kl_t1:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [f"{spec_path}: held-out split of {report.corpus}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, delta in report.comparisons:
        verdict = "distillation helped" if delta < 0 else "distillation did NOT help: check the teacher and the recipe"
        lines.append(f"{name}: KD - CE-only = {delta:+.3f} {u} ({verdict})")
    lines.append("wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in report.timings))
    return "\n".join(lines)


def _exp(x: float) -> float:
    import math

    return math.exp(x) if x < 700 else float("inf")


def _enable_compile_cache() -> None:
    """Compiled steps are cached under .cache/distillc/jax (a second local run skips compilation)."""
    import jax

    cache = Path(os.environ.get("DISTILLC_CACHE", ".cache/distillc")) / "jax"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
