"""Input pipeline at scale (issue 14): peak RSS, time to the first batch, tokens/s, packing efficiency.

    python bench/data_bench.py [--sizes-mb 100 1000] [--batches 200] [--seq-len 2048] [--batch 16]

Generates synthetic .jsonl corpora of the given sizes (random English-like words, documents of
200-20000 bytes) in a temp dir, then for each size runs the training pipeline (byte tokenizer,
packing on) in a fresh subprocess and prints a table: peak RSS of that process, seconds from
constructing the pipeline to the first batch, tokens/s over all the batches (the first included), and packing
efficiency (real tokens / row slots). Not yet here: the Parquet copies and the HF BPE tokenizer
(the `tokenizers` package is not a dependency).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORDS = ("the of and to in is for that with as on by this are be from at or it an which can value "
         "function return class module import data model token layer loss teacher student").split()

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from distillc.runtime.config import DataConfig
from distillc.runtime.data.pipeline import DataPipeline
path, seq, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t_import = time.perf_counter()
cfg = DataConfig(source=path, tokenizer="byte", seq_len=seq, global_batch_size=batch, eval_fraction=0.0,
                 packing=True, shuffle_seed=0)
it = DataPipeline(cfg).train_iterator()
b = next(it)
t_first = time.perf_counter()
real, slots = int(b["mask"].sum()), b["mask"].size
for _ in range(n):
    b = next(it)
    real += int(b["mask"].sum()); slots += b["mask"].size
t_end = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "first_batch_s": t_first - t_import,
                  "tokens_per_s": (n + 1) * seq * batch / (t_end - t_import),  # first batch included
                  "packing": real / slots, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_corpus(path: Path, mb: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    target, written = mb * 1_000_000, 0
    with path.open("w") as f:
        while written < target:
            n = rng.randint(40, 4000)
            line = json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n))}) + "\n"
            f.write(line)
            written += len(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.sizes_mb:
            path = Path(tmp) / f"corpus_{mb}mb.jsonl"
            make_corpus(path, mb)
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.seq_len), str(args.batch),
                                  str(args.batches)], capture_output=True, text=True, check=True)
            rows.append((mb, json.loads(out.stdout.strip().splitlines()[-1])))
            path.unlink()
    print(f"{'corpus':>8}  {'peak RSS':>9}  {'first batch':>11}  {'tokens/s (byte)':>15}  {'packing':>7}")
    for mb, r in rows:
        print(f"{mb:>6}MB  {r['peak_rss_mb']:>7.0f}MB  {r['first_batch_s']:>10.2f}s  {r['tokens_per_s']:>15,.0f}  "
              f"{100 * r['packing']:>6.2f}%")


if __name__ == "__main__":
    main()
