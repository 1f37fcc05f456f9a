"""Scanned (`nnx.scan`) vs unrolled layers on this machine: compile time and steady-state throughput.

    python bench/scan_vs_loop.py [--model tiny-teacher] [--steps 150] [--repeats 2]

Trains the same catalog model (CE only, the quickstart's batch 16 x 64 bytes) with both layouts,
alternating A/B/A/B in one process so that both see the same machine, and prints compile seconds
and tokens/s after compilation, with the loop/scan ratio. This is the measurement behind
specs/quickstart.yaml's `runtime: {scan_layers: false}`: on a CPU the unrolled loop of a 2-layer
model compiles and runs faster; on GPUs and TPUs, and for deep models, scanning is what keeps
compile time and memory flat in depth (MaxText's default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-teacher", help="catalog model (default: the quickstart teacher)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    import jax

    from distillc.compiler.catalog import model as catalog_model
    from distillc.runtime.train.trainer import train
    from tests.runtime_configs import make_config

    arch = catalog_model(args.model)
    if arch is None:
        print(f"error: no catalog model {args.model!r} (`distillc models` lists them)", file=sys.stderr)
        return 2
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for scan in (True, False):
            cfg = make_config(tempfile.mkdtemp(prefix="scan-vs-loop-"), teacher=arch, student=arch, alpha=0.0,
                              steps=args.steps, seq_len=64, batch=16, log_every=args.steps // 3,
                              checkpoint_every=args.steps).model_copy(update={"scan_layers": scan})
            r = train(cfg, console=False)
            results[scan].append((r.compile_s, r.tokens_per_sec))
    print(f"{args.model}: {args.steps} steps x {args.repeats} repeats per layout, batch 16 x 64, "
          f"{jax.devices()[0].device_kind} x {jax.device_count()}")
    print(f"{'layers':<8} {'compile s (median)':>19} {'tokens/s (median)':>18}")
    med = {s: (statistics.median(c for c, _ in v), statistics.median(t for _, t in v)) for s, v in results.items()}
    for scan in (True, False):
        print(f"{'scan' if scan else 'loop':<8} {med[scan][0]:>19.2f} {med[scan][1]:>18.0f}")
    print(f"loop/scan: compile {med[False][0] / med[True][0]:.2f}x, throughput {med[False][1] / med[True][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
