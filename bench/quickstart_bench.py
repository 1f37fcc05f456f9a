"""Times the embedded default end to end and prints its table.

    python bench/quickstart_bench.py [--spec specs/quickstart.yaml] [--out DIR] [--seeds 0 1 2]
                                     [--warm] [--json FILE]

What is timed is exactly `distillc launch SPEC --local` from a cold start: the spec is compiled for
--local, the teacher checkpoint, every run directory and the compilation cache are moved under a
fresh directory (so the teacher is trained, not loaded, and nothing is compiled ahead), then
`run_local` trains the teacher, distils the student, trains the CE-only baseline and prints the
table. `--warm` keeps the teacher and compilation caches of a previous bench run in --out.
`--seeds` repeats the student runs (KD and CE-only) with other student seeds and data orders, with
the same teacher, and reports the spread of the KD - CE-only gap.

Besides wall time it prints the process CPU time and the load average before and after: on a
shared machine the wall time depends on what else runs, the CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _relocate(cfg, root: Path, seed: int):
    run = root / "runs" / (cfg.name if seed == 0 else f"{cfg.name}-seed{seed}")
    teacher = cfg.teacher
    if teacher.checkpoint is not None and "://" not in teacher.checkpoint:
        teacher = teacher.model_copy(update={"checkpoint": str(root / "cache" / Path(teacher.checkpoint).name)})
    update = dict(teacher=teacher, output=cfg.output.model_copy(update=dict(
        run_dir=str(run), checkpoint_dir=str(run / "checkpoints"), tensorboard_dir=str(run / "tensorboard"),
        metrics_file=str(run / "metrics.jsonl"))))
    if seed:
        update.update(
            name=f"{cfg.name}-seed{seed}",
            student=cfg.student.model_copy(update={"init_seed": cfg.student.init_seed + seed}),
            data=cfg.data.model_copy(update={"shuffle_seed": cfg.data.shuffle_seed + seed}),
            train=cfg.train.model_copy(update={"seed": cfg.train.seed + seed}),
        )
    return cfg.model_copy(update=update)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "specs" / "quickstart.yaml")
    ap.add_argument("--out", type=Path, help="bench directory (default: a new temporary one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--warm", action="store_true", help="keep the teacher and compilation caches in --out")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from distillc.compiler.launch import compile_launch

    compiled = compile_launch(args.spec, cluster_name=None, local=True)
    if not compiled.ok:
        for d in compiled.diagnostics:
            print(f"{d.code} {d.message}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="distillc-quickstart-bench-"))
    if args.out and not args.warm and out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty (use --warm to reuse its caches, or another --out)", file=sys.stderr)
        return 2
    os.environ["DISTILLC_CACHE"] = str(out / "cache")
    configs = [_relocate(c, out, seed) for seed in args.seeds for c in compiled.build.plan.configs]

    from distillc.runtime.local import run_local

    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), _cpu_s()
    code = run_local(configs, args.spec)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    load1 = os.getloadavg()
    print(f"\nbench: {args.spec.name} end to end {wall:.1f} s wall, {cpu:.1f} s CPU (this process, all threads); "
          f"load average {load0[0]:.1f} before, {load1[0]:.1f} after, on {os.cpu_count()} CPUs; outputs in {out}")
    report_file = Path(configs[0].output.run_dir) / "local_report.json"
    figures = {"wall_s": wall, "cpu_s": cpu, "load_before": load0[0], "load_after": load1[0],
               "cpus": os.cpu_count(), "exit_code": code, "out": str(out)}
    if report_file.exists():
        report = json.loads(report_file.read_text())
        figures["report"] = report
        gaps = [delta for _, delta in report["comparisons"]]
        if len(gaps) > 1:
            print(f"bench: KD - CE-only over seeds {args.seeds}: mean {sum(gaps) / len(gaps):+.3f}, "
                  f"spread {max(gaps) - min(gaps):.3f} nats")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
