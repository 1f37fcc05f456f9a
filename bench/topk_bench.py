"""Offline top-k cache benchmarks: what it costs on disk, how fast it saves, what it buys.

    python bench/topk_bench.py bytes                 # (a) bytes/token vs full logits; capture throughput
    python bench/topk_bench.py interp                # error of the cached-temperature interpolation
    python bench/topk_bench.py quality [--steps N]   # (b) held-out CE: offline variants vs online KD vs CE-only
    python bench/topk_bench.py all

(a) The record size per token from the record layout (runtime/topk_store.RecordSpec) at k = 64 and
    V = 128256 (Llama 3), against the full-vocabulary logits in the same dtype; then a measured
    save of synthetic Llama-3-sized logits (capture + encode + ArrayRecord write, no teacher
    forward) for the real file bytes (compression and ArrayRecord framing included) and tokens/s.
(b) The quickstart setting (specs/quickstart-offline.yaml and specs/quickstart.yaml: tiny byte-level
    teacher -> tiny student, 400 steps, same data order and optimizer everywhere): one top-128
    cache (k = 8 and 32 read it through the exact fold of ranks k..127 into the tail), one random
    cache per n in {8, 32, 128}; students trained from each with tail_bucket, renormalized and
    sampled, next to online KD and a CE-only student. Held-out CE over the whole held-out split.
    Run from the repository root: the quickstart teacher is cached at .cache/distillc/quickstart-teacher
    (trained here first if it is not there, as `distillc launch specs/quickstart.yaml --local` does).
    Caches and runs live in --workdir; a student whose exact config, cache manifest and teacher
    already finished there is not retrained (--fresh retrains all). About 15 minutes from scratch
    on 2 cores (--steps shortens it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LLAMA3_VOCAB = 128256


# ---------------------------------------------------------------- (a) bytes and throughput


def bytes_table(seq_len: int = 2048) -> list[dict]:
    from distillc.runtime.offline import store as ts
    from distillc.runtime.config import Schedule

    rows = []
    grids = {"constant T": ts.temperature_grid(Schedule(kind="constant", start=1.0, end=1.0), 1.0),
             "cosine T 2->1": ts.temperature_grid(Schedule(kind="cosine", start=2.0, end=1.0, max_steps=10), 1.0)}
    for k in (8, 32, 64, 128):
        for dtype, width in (("float32", 4), ("bfloat16", 2)):
            for gname, grid in grids.items():
                spec = ts.RecordSpec("top_k", seq_len, k, len(grid), dtype)
                per_token = spec.nbytes / seq_len
                full = LLAMA3_VOCAB * width
                rows.append({"k": k, "dtype": dtype, "grid": f"{gname} ({len(grid)} T)", "bytes_per_token": per_token,
                             "full_logits_bytes": full, "fraction": per_token / full})
    return rows


def measured_save(k: int = 64, vocab: int = LLAMA3_VOCAB, seq_len: int = 512, batch: int = 2, batches: int = 8,
                  dtype: str = "float32") -> dict:
    """Synthetic Llama-3-sized teacher logits through capture + encode + SplitWriter (timed without
    the logits' generation, which stands in for the teacher forward)."""
    import jax
    import jax.numpy as jnp

    from distillc.runtime.offline import save as topk_save, store as ts

    spec = ts.RecordSpec("top_k", seq_len, k, 1, dtype)
    betas = np.array([1.0])
    rng = np.random.default_rng(0)
    # LM-like logits: a Zipfian prior over a random token order plus per-position noise.
    prior = jnp.asarray((-1.1 * np.log1p(np.arange(vocab))).astype(np.float32)[rng.permutation(vocab)])
    make = jax.jit(lambda key: prior + 2.0 * jax.random.normal(key, (batch, seq_len, vocab), jnp.float32))
    cap = jax.jit(lambda logits, labels, ids: topk_save.capture(logits, labels, ids, spec=spec, betas=betas,
                                                                 capture_temperature=1.0, seed=0))
    labels = jnp.asarray(rng.integers(0, vocab, (batch, seq_len)), jnp.int32)
    tokens = np.asarray(labels)
    jax.block_until_ready(cap(make(jax.random.key(99)), labels, jnp.arange(batch)))  # compile both
    tmp = Path(tempfile.mkdtemp(prefix="topk-bench-"))
    try:
        layout = ts.Layout(batch, 1, batches_per_shard=batches)
        w = ts.SplitWriter(str(tmp), "train", process=0, layout=layout, spec=spec, batches=batches,
                           provenance={"synthetic": True}, log=lambda *_: None)
        w.resume()
        timed = 0.0
        for n in range(batches):
            logits = jax.block_until_ready(make(jax.random.key(n)))
            t0 = time.perf_counter()
            out = jax.device_get(cap(logits, labels, jnp.arange(batch) + n * batch))
            rows = []
            for j in range(batch):
                rec = {"inputs": tokens[j], "labels": tokens[j], "mask": np.ones(seq_len, bool)}
                rec.update({name: v[j] for name, v in out.items()})
                rows.append(spec.encode(n * batch + j, rec))
            w.add_batch(n, rows)
            timed += time.perf_counter() - t0
        files = sum(p.stat().st_size for p in tmp.glob("*.arecord"))
        tokens_total = batches * batch * seq_len
        return {"k": k, "vocab": vocab, "dtype": dtype, "tokens": tokens_total,
                "file_bytes_per_token": files / tokens_total, "record_bytes_per_token": spec.nbytes / seq_len,
                "fraction_of_fp32_logits": files / tokens_total / (vocab * 4),
                "capture_write_tokens_per_s": tokens_total / timed}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_bytes() -> dict:
    table = bytes_table()
    print("(a) cache size per token, seq_len 2048, V = 128256 (Llama 3), record layout of runtime/offline/store.py")
    print(f"{'k':>4} {'values':>9} {'cached temperatures':>24} {'bytes/token':>12} {'full logits':>12} {'fraction':>10}")
    for r in table:
        print(f"{r['k']:>4} {r['dtype']:>9} {r['grid']:>24} {r['bytes_per_token']:>12.1f} "
              f"{r['full_logits_bytes']:>12,} {'1/%.0f' % (1 / r['fraction']):>10}")
    m = measured_save()
    print(f"\nmeasured: k={m['k']}, V={m['vocab']}, {m['tokens']} tokens of synthetic logits -> ArrayRecord files: "
          f"{m['file_bytes_per_token']:.1f} bytes/token on disk (record {m['record_bytes_per_token']:.1f}), "
          f"1/{1 / m['fraction_of_fp32_logits']:.0f} of fp32 logits; capture (top-k + tail log-sum-exp) + encode + "
          f"write {m['capture_write_tokens_per_s']:,.0f} tokens/s on this CPU (teacher forward excluded)")
    return {"table": table, "measured": m}


# ---------------------------------------------------------------- interpolation between cached temperatures


def interpolation_error(k: int = 32, rows: int = 16) -> dict:
    """The cached-grid approximation on the quickstart teacher: T cosine 2 -> 1 (5 cached
    temperatures), tail log-normalizer and tail_bucket KL (against a uniform student) from the
    Hermite interpolant vs computed exactly (float64) at 41 temperatures in [1, 2]."""
    import jax.numpy as jnp
    from flax import nnx

    from distillc.runtime.train import distributed
    from distillc.runtime.offline import losses as tl, store as ts
    from distillc.runtime.config import Schedule
    from distillc.runtime.data.pipeline import DataPipeline
    from distillc.runtime.train.params import load_teacher
    from distillc.runtime import local

    cfg = compile_configs(ROOT / "specs" / "quickstart-offline.yaml")[0]
    local.ensure_teacher(cfg, local.LocalReport(), console=False)
    graphdef, params = load_teacher(cfg.teacher, cfg.scan_layers, distributed.make_mesh(cfg.mesh))
    batch = next(iter(DataPipeline(cfg.data).eval_batches(1)))
    z = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(batch["inputs"][:rows])).logits, np.float64)
    z = z[..., : cfg.loss.compare_vocab]
    z -= z.max(-1, keepdims=True)
    grid = ts.temperature_grid(Schedule(kind="cosine", start=2.0, end=1.0, max_steps=10), 1.0)
    betas = ts.grid_betas(grid)
    idx = np.argsort(-z, axis=-1, kind="stable")[..., :k]
    tail = np.ones_like(z, bool)
    np.put_along_axis(tail, idx, False, -1)

    def f_exact(beta):
        x = np.where(tail, beta * z, -np.inf)
        m = x.max(-1, keepdims=True)
        e = np.exp(x - m)
        return (m[..., 0] + np.log(e.sum(-1))), (e * np.where(tail, z, 0)).sum(-1) / e.sum(-1)

    stats = [f_exact(b) for b in betas]
    lse = jnp.asarray(np.stack([s[0] for s in stats], -1), jnp.float32)
    slope = jnp.asarray(np.stack([s[1] for s in stats], -1), jnp.float32)
    vals = np.take_along_axis(z, idx, -1)
    uniform = jnp.zeros(z.shape, jnp.float32)
    worst_f, worst_kl, kl_scale = 0.0, 0.0, 0.0
    for t in np.linspace(1.0, 2.0, 41):
        exact = f_exact(1.0 / t)[0]
        approx = np.asarray(tl.interpolate_log_normalizer(lse, slope, betas, float(t)), np.float64)
        worst_f = max(worst_f, float(np.abs(approx - exact).max()))
        kl = [np.asarray(tl.tail_bucket_kl(uniform, tl.TopKTeacher(jnp.asarray(idx), jnp.asarray(vals, jnp.float32),
                                                                   jnp.asarray(f, jnp.float32)), float(t)))
              for f in (exact, approx)]
        worst_kl = max(worst_kl, float(np.abs(kl[0] - kl[1]).max()))
        kl_scale = max(kl_scale, float(np.abs(kl[0]).max()))
    out = {"k": k, "temperatures": list(grid), "max_abs_log_normalizer_error": worst_f,
           "max_abs_kl_error": worst_kl, "max_kl": kl_scale}
    print(f"interpolation (quickstart teacher, k={k}, T cosine 2->1 cached at {len(grid)} temperatures): "
          f"max |error| over T in [1, 2] of the tail log-normalizer {worst_f:.2e}, of the tail_bucket KL "
          f"{worst_kl:.2e} (KL values up to {kl_scale:.2f})")
    return out


# ---------------------------------------------------------------- (b) held-out CE on the quickstart


def compile_configs(spec: Path):
    from distillc.compiler import launch

    fr = launch.front(spec)
    if not fr.ok:
        raise SystemExit(f"{spec} does not compile: " + "; ".join(d.message for d in fr.diagnostics))
    return list(launch.plan_for(fr).configs)


def _outputs(cfg, run_dir: Path):
    return cfg.output.model_copy(update=dict(run_dir=str(run_dir), checkpoint_dir=str(run_dir / "checkpoints"),
                                             tensorboard_dir=str(run_dir / "tensorboard"),
                                             metrics_file=str(run_dir / "metrics.jsonl")))


def run_quality(steps: int | None, workdir: Path, ks=(8, 32, 128), fresh_runs: bool = False) -> dict:
    from distillc.runtime import local
    from distillc.runtime.offline import save as topk_save
    from distillc.runtime.train.trainer import train

    online = compile_configs(ROOT / "specs" / "quickstart.yaml")[0]
    save_cfg, train_cfg = compile_configs(ROOT / "specs" / "quickstart-offline.yaml")
    if steps is not None:
        def with_steps(c):
            sched = {k: getattr(c.loss, k).model_copy(update={"max_steps": steps}) for k in ("alpha", "temperature", "beta")}
            return c.model_copy(update={"train": c.train.model_copy(update={"steps": steps, "checkpoint_every": steps}),
                                        "loss": c.loss.model_copy(update=sched)})
        online, save_cfg, train_cfg = with_steps(online), with_steps(save_cfg), with_steps(train_cfg)
    report = local.LocalReport()
    local.ensure_teacher(online, report, console=False)
    runs = workdir / "runs"
    results: dict = {"steps": online.train.steps, "rows": [], "caches": {}}

    def fresh(cfg, name):
        return cfg.model_copy(update={"name": name, "output": _outputs(cfg, runs / name)})

    def trained(cfg):
        """The finished run's result when this exact config (and cache, and teacher) already ran
        here, else a fresh training run (its directory wiped first)."""
        from distillc.runtime.offline import store as topk_store

        key = {"config": json.loads(cfg.model_dump_json()),
               "teacher": topk_store.checkpoint_fingerprint(cfg.teacher.checkpoint),
               "cache": (Path(cfg.offline.data_dir) / "manifest.json").read_text() if cfg.offline else None}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        done = runs / f"{cfg.name}.result.json"
        if not fresh_runs and done.exists():
            prev = json.loads(done.read_text())
            if prev["digest"] == digest:
                return argparse.Namespace(**prev["result"])
        shutil.rmtree(runs / cfg.name, ignore_errors=True)
        res = train(cfg, console=False, eval_all_at_end=True)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"digest": digest, "result": {"eval": res.eval, "wall_s": res.wall_s}}))
        return res

    def save_cache(cfg):
        """A cache in the bench's own --workdir, saved again when the one there is for other settings
        (another teacher, after the quickstart teacher was retrained): the runtime refuses to
        overwrite a cache, and here that is the point of rerunning."""
        from distillc.runtime.offline.store import CacheError

        try:
            return topk_save.save_topk(cfg, console=False, log=lambda *_: None)
        except CacheError as e:
            print(f"  {cfg.offline.data_dir}: stale ({str(e).splitlines()[-1].strip()[:80]}...); saving again", flush=True)
            shutil.rmtree(cfg.offline.data_dir)
            return topk_save.save_topk(cfg, console=False, log=lambda *_: None)

    def record(name, method, k, res, cache_bpt=None, extra=None):
        ev = res.eval
        kl = ev.get("kl_T1", ev.get("kl_T1_buckets", ev.get("kl_T1_sampled")))
        kl_kind = "dense" if "kl_T1" in ev else ("(k+1)-bucket" if "kl_T1_buckets" in ev else "sampled est." if kl is not None else "")
        record_bpt = None
        if k is not None:
            from distillc.runtime.offline import store as topk_store

            kind = "random" if method == "sampled" else "top_k"
            record_bpt = topk_store.RecordSpec(kind, train_cfg.data.seq_len, k, 1, "float32").nbytes / train_cfg.data.seq_len
        row = {"name": name, "method": method, "k": k, "ce": ev["hard_loss"], "kl_t1": kl, "kl_kind": kl_kind,
               "teacher_ce": ev.get("teacher_ce"), "record_bytes_per_token": record_bpt,
               "cache_read_file_bytes_per_token": cache_bpt, "train_s": res.wall_s}
        row.update(extra or {})
        results["rows"].append(row)
        print(f"  {name}: held-out CE {row['ce']:.4f}  ({res.wall_s:.0f} s)", flush=True)

    print(f"(b) quickstart, {online.train.steps} steps per student", flush=True)
    record("ce_only", "CE only", None, trained(fresh(local.baseline_config(online), "ce_only")))
    record("online_kd", "online KD", None, trained(fresh(online, "online_kd")))

    kmax = max(ks)
    topk_dir = workdir / f"cache-topk{kmax}"
    off = save_cfg.offline.model_copy(update={"top_k": kmax, "data_dir": str(topk_dir), "sampling": "top_k",
                                              "loss": "tail_bucket"})
    saved = save_cache(save_cfg.model_copy(update={"offline": off}))
    results["caches"][f"top_k {kmax}"] = {"bytes_per_token": saved.bytes_per_token, "tokens_per_s": saved.tokens_per_sec,
                                          "skipped": saved.skipped}
    for k in ks:
        for loss in ("tail_bucket", "renormalized"):
            o = off.model_copy(update={"top_k": k, "loss": loss})
            cfg = fresh(train_cfg.model_copy(update={"offline": o}), f"{loss}_k{k}")
            record(cfg.name, loss, k, trained(cfg), saved.bytes_per_token)
        rdir = workdir / f"cache-random{k}"
        ro = save_cfg.offline.model_copy(update={"top_k": k, "num_samples": k, "data_dir": str(rdir),
                                                 "sampling": "random", "loss": "sampled"})
        rs = save_cache(save_cfg.model_copy(update={"offline": ro}))
        results["caches"][f"random {k}"] = {"bytes_per_token": rs.bytes_per_token, "tokens_per_s": rs.tokens_per_sec,
                                            "skipped": rs.skipped}
        cfg = fresh(train_cfg.model_copy(update={"offline": ro}), f"sampled_n{k}")
        record(cfg.name, "sampled", k, trained(cfg), rs.bytes_per_token)
    print_quality(results)
    return results


def print_quality(results: dict) -> None:
    rows = results["rows"]
    base = next(r["ce"] for r in rows if r["method"] == "CE only")
    teacher = next((r["teacher_ce"] for r in rows if r.get("teacher_ce") is not None), None)
    print(f"\nheld-out CE (nats/byte) after {results['steps']} steps; teacher {teacher:.4f}" if teacher else "")
    print(f"| {'student':<22} | {'k / n':>5} | {'held-out CE':>11} | {'vs CE-only':>10} | {'KL(t||s) T=1':>22} | {'record B/token':>14} |")
    print(f"|{'-' * 24}|{'-' * 7}|{'-' * 13}|{'-' * 12}|{'-' * 24}|{'-' * 16}|")
    for r in rows:
        kl = "-" if r["kl_t1"] is None else f"{r['kl_t1']:.4f} ({r['kl_kind']})"
        bpt = "-" if r["record_bytes_per_token"] is None else f"{r['record_bytes_per_token']:.0f}"
        k = "-" if r["k"] is None else str(r["k"])
        print(f"| {r['method']:<22} | {k:>5} | {r['ce']:>11.4f} | {r['ce'] - base:>+10.4f} | {kl:>22} | {bpt:>14} |")
    print("record B/token: the uncompressed record of a cache saved at that k / n (float32, one cached T); "
          "k = 8 and 32 were read from the top-128 cache (exact: ranks k..127 fold into the tail)")
    for name, c in results["caches"].items():
        speed = "" if c["skipped"] else f", save {c['tokens_per_s']:,.0f} tokens/s (teacher forward + capture + write)"
        print(f"cache {name}: {c['bytes_per_token']:.0f} bytes/token on disk (zstd){speed}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("bytes", "interp", "quality", "all"))
    p.add_argument("--steps", type=int, default=None, help="student steps (default: the specs' 400)")
    p.add_argument("--workdir", type=Path, default=Path(".cache/distillc/topk-bench"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--fresh", action="store_true", help="retrain every student (default: reuse a finished run "
                   "of the identical config, cache and teacher from --workdir)")
    args = p.parse_args(argv)
    out = {}
    if args.what in ("bytes", "all"):
        out["bytes"] = run_bytes()
    if args.what in ("interp", "all"):
        out["interpolation"] = interpolation_error()
    if args.what in ("quality", "all"):
        args.workdir.mkdir(parents=True, exist_ok=True)
        out["quality"] = run_quality(args.steps, args.workdir, fresh_runs=args.fresh)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
