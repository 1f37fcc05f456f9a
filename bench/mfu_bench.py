"""Online-distillation train-step throughput and MFU on one accelerator.

Builds a catalog-shaped student (default llama3.2-1b: ~1.24B parameters, random weights) and a
frozen teacher (default llama3.1-8b, bfloat16 weights), runs jitted train steps -- teacher forward,
student forward + backward through `distill_loss`, optax AdamW update -- on a fixed random batch, and
prints tokens/s and MFU.

    python bench/mfu_bench.py                            # ~1B student on a GPU (H100: peak from the catalog)
    python bench/mfu_bench.py --teacher llama3.2-1b      # same-size teacher
    python bench/mfu_bench.py --tiny                     # tiny catalog models, a CPU smoke run
    python bench/mfu_bench.py --peak-tflops 989 --attention cudnn --remat minimal

MFU = model FLOPs / s / peak, model FLOPs per token = student training (6N + causal attention, see
`runtime.model.flops_per_token`) + teacher forward (2N + attention). Remat recomputation is not
counted (it is hardware work, not model work). "student MFU" counts the student's FLOPs only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from distillc.runtime.train import losses  # noqa: E402
from distillc.runtime.config import ModelArch, SideConfig  # noqa: E402
from distillc.runtime.models.transformer import build_model, count_params, flops_per_token  # noqa: E402

# Used when the catalog does not list the model (yet).
FALLBACK = {
    "llama3.2-1b": ModelArch(
        name="llama3.2-1b", family="llama3.2", tokenizer="llama3-tiktoken", vocab_size=128256, num_layers=16,
        emb_dim=2048, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192, tie_embeddings=True,
        rope_theta=500000.0, source="HF meta-llama/Llama-3.2-1B config.json; MaxText configs/models/llama3.2-1b.yml",
    ),
}


def arch_named(name: str) -> ModelArch:
    try:
        from distillc.compiler.catalog import model as catalog_model

        found = catalog_model(name)
    except Exception:  # noqa: BLE001 - the catalog is optional for a benchmark
        found = None
    if found is not None:
        return found
    if name in FALLBACK:
        return FALLBACK[name]
    raise SystemExit(f"unknown model {name!r} (not in the catalog nor in {sorted(FALLBACK)})")


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak per chip: --peak-tflops, else the accelerator catalog by device kind."""
    if override:
        return override, "--peak-tflops"
    kind = device.device_kind.lower()
    try:
        from distillc.compiler.catalog import load_catalog

        for acc in load_catalog().accelerators.values():
            if acc.kind == "gpu" and acc.generation in kind:
                return acc.peak_bf16_tflops, f"catalog {acc.generation}"
            if acc.kind == "tpu" and acc.generation.replace("v", "v") in kind.replace(" ", ""):
                return acc.peak_bf16_tflops, f"catalog {acc.generation}"
    except Exception:  # noqa: BLE001
        pass
    return None, "unknown (pass --peak-tflops)"


def human(n: int) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def side(role: str, arch: ModelArch, weight_dtype: str, act_dtype: str, remat: str, seed: int) -> SideConfig:
    return SideConfig(role=role, arch=arch, weight_dtype=weight_dtype, activation_dtype=act_dtype, remat=remat,
                      init_seed=seed)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="llama3.2-1b")
    ap.add_argument("--teacher", default="llama3.1-8b")
    ap.add_argument("--tiny", action="store_true", help="tiny-student / tiny-teacher, seq 64, batch 8 (CPU)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--remat", default="minimal", choices=["none", "minimal", "full"])
    ap.add_argument("--student-weights", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--teacher-weights", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--activations", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
    ap.add_argument("--loss", default="dense", choices=["dense", "chunked"],
                    help="distill_loss on [B,T,V] logits, or chunked_distill_loss on hidden states (fused lm head)")
    ap.add_argument("--chunk", type=int, default=256, help="sequence positions per chunk (--loss chunked)")
    ap.add_argument("--feature-layers", default="", help="e.g. '3,7,11,15' (student = teacher indices)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", action="store_true", help="also print the row as JSON")
    args = ap.parse_args(argv)
    if args.tiny:  # a CPU smoke run: tiny catalog models unless named, short rows
        args.student = "tiny-student" if args.student == ap.get_default("student") else args.student
        args.teacher = "tiny-teacher" if args.teacher == ap.get_default("teacher") else args.teacher
        args.seq, args.batch, args.activations = 64, 8, "float32"

    s_arch, t_arch = arch_named(args.student), arch_named(args.teacher)
    compare_vocab = min(s_arch.shared_vocab, t_arch.shared_vocab)
    feats = tuple(int(i) for i in args.feature_layers.split(",") if i.strip())
    if feats and s_arch.emb_dim != t_arch.emb_dim:
        raise SystemExit(f"--feature-layers needs equal widths (student {s_arch.emb_dim}, teacher {t_arch.emb_dim})")
    s_side = side("student", s_arch, args.student_weights, args.activations, args.remat, 0)
    t_side = side("teacher", t_arch, args.teacher_weights, args.activations, "none", 1)

    t0 = time.perf_counter()
    student = nnx.jit(lambda: build_model(s_side, scan_layers=True, attention_impl=args.attention))()
    teacher = nnx.jit(lambda: build_model(t_side, scan_layers=True, attention_impl=args.attention))()
    n_student, n_teacher = count_params(student), count_params(teacher)
    s_graph, s_params = nnx.split(student)
    t_graph, t_params = nnx.split(teacher)
    del student, teacher
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, b1=0.9, b2=0.95, weight_decay=0.1))
    opt_state = jax.jit(tx.init)(s_params)
    jax.block_until_ready((s_params, t_params, opt_state))
    init_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    toks = rng.integers(0, compare_vocab, size=(args.batch, args.seq + 1), dtype=np.int32)
    batch = {"inputs": jnp.asarray(toks[:, :-1]), "labels": jnp.asarray(toks[:, 1:]),
             "mask": jnp.ones((args.batch, args.seq), bool)}

    chunked = args.loss == "chunked"
    hp = dict(alpha=0.5, temperature=2.0, beta=1.0 if feats else 0.0, feature_kind="cosine",
              compare_vocab=compare_vocab)

    def train_step(s_params, opt_state, t_params, batch):
        teacher = nnx.merge(t_graph, t_params)
        t_out = teacher(batch["inputs"], feature_layers=feats, return_hidden=chunked)
        t_out = jax.tree.map(jax.lax.stop_gradient, t_out)
        t_head = jax.lax.stop_gradient(teacher.head())

        def loss_fn(p):
            student = nnx.merge(s_graph, p)
            out = student(batch["inputs"], feature_layers=feats, return_hidden=chunked)
            if chunked:
                return losses.chunked_distill_loss(out, t_out, batch["labels"], batch["mask"],
                                                   student_head=student.head(), teacher_head=t_head,
                                                   chunk_size=args.chunk, **hp)
            return losses.distill_loss(out, t_out, batch["labels"], batch["mask"], **hp)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(s_params)
        updates, opt_state = tx.update(grads, opt_state, s_params)
        return optax.apply_updates(s_params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = step.lower(s_params, opt_state, t_params, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp_gib = getattr(mem, "temp_size_in_bytes", 0) / 2**30 if mem is not None else float("nan")

    for _ in range(args.warmup):
        s_params, opt_state, loss = compiled(s_params, opt_state, t_params, batch)
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        s_params, opt_state, loss = compiled(s_params, opt_state, t_params, batch)
    jax.block_until_ready(loss)
    step_s = (time.perf_counter() - t0) / args.steps

    tokens = args.batch * args.seq
    s_flops = flops_per_token(s_arch, args.seq) * tokens
    t_flops = flops_per_token(t_arch, args.seq, training=False) * tokens
    device = jax.devices()[0]
    peak, peak_src = peak_tflops(device, args.peak_tflops)
    achieved = (s_flops + t_flops) / step_s / 1e12
    row = {
        "device": device.device_kind,
        "student": f"{s_arch.name} ({human(n_student)})",
        "teacher": f"{t_arch.name} ({human(n_teacher)})",
        "batch x seq": f"{args.batch} x {args.seq}",
        "dtypes (s w / t w / act)": f"{args.student_weights} / {args.teacher_weights} / {args.activations}",
        "remat / attention": f"{args.remat} / {args.attention}",
        "loss": args.loss + (f" (chunk {args.chunk})" if chunked else ""),
        "feature layers": ",".join(map(str, feats)) or "none",
        "init s": round(init_s, 2),
        "compile s": round(compile_s, 2),
        "XLA temp GiB": round(temp_gib, 2),
        "step ms": round(step_s * 1e3, 2),
        "tokens/s": round(tokens / step_s, 1),
        "model TFLOP/s": round(achieved, 3),
        "peak TFLOP/s": f"{peak} ({peak_src})" if peak else peak_src,
        "MFU (student+teacher)": f"{100 * achieved / peak:.1f}%" if peak else "n/a",
        "MFU (student only)": f"{100 * s_flops / step_s / 1e12 / peak:.1f}%" if peak else "n/a",
        "final loss": round(float(loss), 4),
    }
    width = max(map(len, row))
    print("online distillation train step")
    print("-" * (width + 40))
    for k, v in row.items():
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 40))
    if args.json:
        print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
