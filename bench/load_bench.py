"""Loading a Hugging Face checkpoint onto a mesh: time and peak host memory.

Writes a synthetic Llama-layout checkpoint (random float32 weights, sharded safetensors with an
index; --gb sets its size), then loads it in fresh processes (each measures its own peak RSS):

  ours      distillc's loader onto an 8-device CPU mesh with fsdp 8 (scanned layers): each device's
            callback reads its own slice of each tensor (runtime/convert/hf.py)
  full      every tensor read whole into host memory (what safetensors.numpy.load_file does; that
            function itself is used when the safetensors package is installed)

and `export` of it back to a Hugging Face directory (loaded sharded over the 8 devices, each tensor
gathered, converted, written into its shard and dropped in turn). On CPU the "devices" are host
memory, so the loaded model itself counts in the RSS: the target is peak RSS <= model bytes +
largest tensor + 0.5 GB.

    python bench/load_bench.py [--gb 2] [--dir /tmp/distillc-load-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ARCH = dict(name="bench-llama", family="llama3", tokenizer="bench", vocab_size=32000, emb_dim=2048, num_heads=16,
            num_kv_heads=8, head_dim=128, mlp_dim=5632, rope_theta=500000.0, norm_eps=1e-5, tie_embeddings=False)


def layer_bytes() -> int:
    d, h, kv, hd, f = (ARCH[k] for k in ("emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"))
    return 4 * (2 * d * h * hd + 2 * d * kv * hd + 3 * d * f + 2 * d)


def write_checkpoint(out: Path, gb: float) -> dict:
    import numpy as np

    from distillc.runtime.arch import ModelArch
    from distillc.runtime.convert.export import _write_safetensors, hf_config
    from distillc.runtime.convert.hf import INDEX, LAYER_MAP, hf_shape

    fixed = 4 * (2 * ARCH["vocab_size"] * ARCH["emb_dim"] + ARCH["emb_dim"])
    layers = max(1, round((gb * 1e9 - fixed) / layer_bytes()))
    arch = ModelArch(num_layers=layers, **ARCH)
    d, hd = arch.emb_dim, arch.head_dim
    ours = {"q": (d, arch.num_heads, hd), "k": (d, arch.num_kv_heads, hd), "v": (d, arch.num_kv_heads, hd),
            "o": (arch.num_heads, hd, d), "gate": (d, arch.mlp_dim), "up": (d, arch.mlp_dim),
            "down": (arch.mlp_dim, d), "scale": (d,)}
    rng = np.random.default_rng(0)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    weight_map, total, largest = {}, 0, 0

    def tensor(kind: str, shape: tuple) -> "np.ndarray":
        return (rng.random(hf_shape(kind, shape), dtype=np.float32) - 0.5) * 0.05

    shards = [[("model.embed_tokens.weight", tensor("same", (arch.vocab_size, d)))]]
    for i in range(layers):
        shard = []
        for path, (suffix, kind) in LAYER_MAP.items():
            if "bias" in path[-1] or "q_norm" in path or "k_norm" in path:
                continue
            shard.append((f"model.layers.{i}.{suffix}", tensor(kind, ours[path[-1]])))
        shards.append(shard)
    shards.append([("model.norm.weight", tensor("same", (d,))), ("lm_head.weight", tensor("transpose", (d, arch.vocab_size)))])
    n = len(shards)
    for j, shard in enumerate(shards, 1):
        name = f"model-{j:05d}-of-{n:05d}.safetensors"
        _write_safetensors(out / name, [(k, a.shape, lambda a=a: a) for k, a in shard], "float32")
        for k, a in shard:
            weight_map[k] = name
            total += a.nbytes
            largest = max(largest, a.nbytes)
        shard.clear()
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(hf_config(arch, "float32")))
    return {"layers": layers, "bytes": total, "largest": largest}


CHILD = r"""
import json, os, resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode == "full":
    try:
        from safetensors.numpy import load_file
        impl = "safetensors.numpy.load_file"
    except ImportError:
        load_file, impl = None, "whole-tensor reads"
    import glob
    tensors = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        if load_file is not None:
            tensors.update(load_file(f))
        else:
            from distillc.runtime.convert.hf import read_header
            from etils import epath
            for name, t in read_header(epath.Path(f)).items():
                tensors[name] = t.read()
    n = sum(a.nbytes for a in tensors.values())
elif mode == "export":
    from distillc.runtime.convert.export import export_hf
    done = export_hf(path, sys.argv[3], dtype="float32", max_shard_size="1GB")
    impl, n = "distillc export (loaded fsdp 8 over 8 CPU devices, 1 GB shards, gathered tensor by tensor)", done.bytes
else:
    import jax
    from distillc.runtime.config import MeshConfig, SideConfig
    from distillc.runtime.convert.hf import HFCheckpoint, arch_from_hf_config
    from distillc.runtime.train import distributed
    from distillc.runtime.train.params import load_params
    arch = arch_from_hf_config(HFCheckpoint(path).config, "bench")
    side = SideConfig(role="teacher", arch=arch, checkpoint=path, format="hf", weight_dtype="float32",
                      activation_dtype="float32", remat="none", init_seed=0)
    mesh = distributed.make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    _, params = load_params(side, True, mesh)
    jax.block_until_ready(params)
    impl = "distillc load (fsdp 8, 8 CPU devices, streamed)"
    n = sum(x.nbytes for x in jax.tree.leaves(params))
print(json.dumps({"impl": impl, "s": time.perf_counter() - t0, "bytes": n,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def run_child(code: str, mode: str, *args: str) -> dict:
    """Runs one measurement `code` in a fresh process on 8 CPU host devices (so each row's peak RSS
    is its own) and returns the JSON record it prints last."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code, mode, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def child(mode: str, *args: str) -> dict:
    return run_child(CHILD, mode, *args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dir", default="/tmp/distillc-load-bench")
    args = ap.parse_args()
    root = Path(args.dir)
    t0 = time.perf_counter()
    info = write_checkpoint(root / "hf", args.gb)
    print(f"synthetic checkpoint: {info['layers']} layers, {info['bytes'] / 1e9:.2f} GB float32, largest tensor "
          f"{info['largest'] / 1e6:.0f} MB (written in {time.perf_counter() - t0:.1f} s)")
    target = info["bytes"] + info["largest"] + 0.5e9
    print(f"target peak RSS <= model + largest tensor + 0.5 GB = {target / 1e9:.2f} GB\n")
    print("| load | time | peak RSS | within target |")
    print("|---|---:|---:|---|")
    shutil.rmtree(root / "export", ignore_errors=True)
    for mode, extra in (("full", ()), ("ours", ()), ("export", (str(root / "export"),))):
        r = child(mode, str(root / "hf"), *extra)
        print(f"| {r['impl']} | {r['s']:.1f} s | {r['rss'] / 1e9:.2f} GB | {'yes' if r['rss'] <= target else 'no'} |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
