"""The logit-distillation loss with its lm-head matmuls: dense vs chunked (fused), value + gradients.

The shapes and math of ../shared/bench/anchor_bench_gpu.py (alpha*KL(t_T || s_T)*T^2 +
(1-alpha)*CE, gradients w.r.t. the student hidden state and head), through
`runtime/train/losses.distill_loss` on materialized logits and `chunked_distill_loss`.
Prints one row per implementation: median / min ms, XLA temp memory, loss.

    python bench/loss_bench.py                 # anchor shapes N=8192 D=4096 V=128256, bf16 (GPU)
    python bench/loss_bench.py --small         # N=1024 D=256 V=8192 (CPU)
    python bench/loss_bench.py --chunks 128,256,512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from distillc.runtime.train import losses  # noqa: E402
from distillc.runtime.models.transformer import ModelOutput  # noqa: E402


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4, help="rows; tokens = batch * seq")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--chunks", default="256,1024", help="sequence positions per chunk")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args(argv)
    if args.small:
        args.tokens, args.dim, args.vocab, args.dtype, args.chunks, args.reps = 1024, 256, 8192, "float32", "32,128", 3
    b, t = args.batch, args.tokens // args.batch
    dt = jnp.dtype(args.dtype)
    k = jax.random.split(jax.random.key(0), 5)
    hs = jax.random.normal(k[0], (b, t, args.dim), dt)
    ws = (jax.random.normal(k[1], (args.dim, args.vocab), jnp.float32) * 0.02).astype(dt)
    ht = jax.random.normal(k[2], (b, t, args.dim), dt)
    wt = (jax.random.normal(k[3], (args.dim, args.vocab), jnp.float32) * 0.02).astype(dt)
    labels = jax.random.randint(k[4], (b, t), 0, args.vocab)
    hp = dict(alpha=0.5, temperature=2.0, beta=0.0, compare_vocab=args.vocab)

    # teacher tensors and labels are arguments, not closure constants (XLA would constant-fold them)
    def dense(hs, ws, ht, wt, labels):
        zs = jnp.einsum("btd,dv->btv", hs, ws, preferred_element_type=jnp.float32)
        zt = jnp.einsum("btd,dv->btv", ht, wt, preferred_element_type=jnp.float32)
        return losses.distill_loss(ModelOutput(zs, None), ModelOutput(zt, None), labels, None, **hp)[0]

    def chunked(c):
        def f(hs, ws, ht, wt, labels):
            return losses.chunked_distill_loss(ModelOutput(None, None, hs), ModelOutput(None, None, ht), labels, None,
                                               student_head=ws, teacher_head=wt, chunk_size=c, **hp)[0]
        return f

    impls = [("dense (distill_loss)", dense)] + [(f"chunked c={c}", chunked(int(c))) for c in args.chunks.split(",")]
    print(f"device {jax.devices()[0].device_kind}; N={b * t} (B={b}, T={t}) D={args.dim} V={args.vocab} {args.dtype}")
    print(f"{'implementation':<24}{'median ms':>11}{'min ms':>10}{'temp GiB':>10}{'loss':>12}")
    rows = []
    for name, f in impls:
        fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
        try:
            call = (hs, ws, ht, wt, labels)
            compiled = fn.lower(*call).compile()
            mem = compiled.memory_analysis()
            temp = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem is not None else float("nan")
            out = compiled(*call)
            jax.block_until_ready(out)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                out = compiled(*call)
                jax.block_until_ready(out)
                times.append((time.perf_counter() - t0) * 1e3)
        except Exception as e:  # noqa: BLE001 - a measuring tool reports and goes on (e.g. out of memory)
            print(f"{name:<24}FAILED {type(e).__name__}: {str(e)[:200]}")
            continue
        row = dict(impl=name, median_ms=statistics.median(times), min_ms=min(times), temp_gib=temp,
                   loss=float(out[0]))
        rows.append(row)
        print(f"{name:<24}{row['median_ms']:>11.2f}{row['min_ms']:>10.2f}{temp:>10.3f}{row['loss']:>12.5f}")
    flops = 8 * b * t * args.dim * args.vocab
    print(f"4-GEMM floor: {flops / 1e12:.2f} TFLOP per call")
    return rows


if __name__ == "__main__":
    main()
