"""MaxText checkpoints: `export --to maxtext` and loading one onto a mesh, time and peak host memory.

Writes the synthetic Llama-layout Hugging Face checkpoint of bench/load_bench.py (--gb sets its
size), then, each in a fresh process that measures its own peak RSS:

  export    `distillc export --to maxtext` of it (float32, scanned): the model loaded fsdp 8 over
            the 8 devices, each leaf converted there into its MaxText tensor (the source leaf
            dropped), written by Orbax from the devices
  load      that MaxText checkpoint onto an 8-device CPU mesh with fsdp 8 (scanned run): Orbax
            restores each device's shard, one jitted function undoes the conventions on the mesh

On CPU the devices are host memory, so the loaded model counts in the RSS.

    python bench/maxtext_bench.py [--gb 1] [--dir /tmp/distillc-maxtext-bench]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
mode, path = sys.argv[1], sys.argv[2]
import jax
from distillc.runtime.config import MeshConfig, SideConfig
from distillc.runtime.convert.hf import HFCheckpoint, arch_from_hf_config
arch = arch_from_hf_config(HFCheckpoint(path).config, "bench")
if mode == "export":
    from distillc.runtime.convert.maxtext import export_maxtext
    done = export_maxtext(path, sys.argv[3], dtype="float32", model=arch)
    impl, n = "distillc export --to maxtext (float32, scanned)", done.bytes
else:
    from distillc.runtime.train import distributed
    from distillc.runtime.train.params import load_params
    side = SideConfig(role="teacher", arch=arch, checkpoint=sys.argv[3], format="maxtext", weight_dtype="float32",
                      activation_dtype="float32", remat="none", init_seed=0)
    mesh = distributed.make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))
    _, params = load_params(side, True, mesh)
    jax.block_until_ready(params)
    impl = "distillc load of it (fsdp 8, 8 CPU devices)"
    n = sum(x.nbytes for x in jax.tree.leaves(params))
print(json.dumps({"impl": impl, "s": time.perf_counter() - t0, "bytes": n,
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(mode: str, *args: str) -> dict:
    from bench.load_bench import run_child

    return run_child(CHILD, mode, *args)


def main() -> int:
    from bench.load_bench import write_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default="/tmp/distillc-maxtext-bench")
    args = ap.parse_args()
    root = Path(args.dir)
    t0 = time.perf_counter()
    info = write_checkpoint(root / "hf", args.gb)
    print(f"synthetic checkpoint: {info['layers']} layers, {info['bytes'] / 1e9:.2f} GB float32, largest tensor "
          f"{info['largest'] / 1e6:.0f} MB (written in {time.perf_counter() - t0:.1f} s)\n")
    print("| | time | peak RSS | peak RSS / model |")
    print("|---|---:|---:|---:|")
    mt = str(root / "maxtext")
    for mode, extra in (("export", (mt,)), ("load", (mt,))):
        r = child(mode, str(root / "hf"), *extra)
        print(f"| {r['impl']} | {r['s']:.1f} s | {r['rss'] / 1e9:.2f} GB | {r['rss'] / info['bytes']:.2f} |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
