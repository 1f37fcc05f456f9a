"""Input pipeline at scale (issue 14): peak RSS, time to the first batch, tokens/s, packing efficiency.

    python bench/data_bench.py [--sizes-mb 100 1000] [--batches 200] [--seq-len 2048] [--batch 16]
                               [--formats jsonl parquet example] [--tokenizers byte bpe bpe-lib] [--workers 0 2]
                               [--prepared]

Generates synthetic .jsonl corpora of the given sizes (random English-like words, documents of
200-20000 bytes) and their Parquet copies (row groups of 4096 documents) in a temp dir, and a
byte-level BPE tokenizer.json (asked for 8,192 tokens, trained with the `tokenizers` library on the
first 5 MB of the corpus; the corpus has 32 distinct words, so it stops at 381); `--formats example`
also writes an ArrayRecord copy whose records are tf.train.Example protos with a `text` bytes_list
(MaxText's / TFDS's format). `bpe` is that file
(which the tiktoken fast path encodes, runtime/data/rank_bpe.py); `bpe-lib` the same vocabulary
forced through the tokenizers library (an empty normalizer list). Then for each corpus, format and
tokenizer it runs the training pipeline (packing on) in a fresh subprocess and prints a table: that
process's peak RSS (its own VmHWM; tokenizer workers not counted), seconds from constructing the
pipeline to the first batch, tokens/s over all the batches (the first included) and after the first
batch, tokens per CPU-second of that process (all its threads; tokenizer workers not counted: on a
shared machine this says more than wall time), and packing efficiency (real tokens / row slots).
BPE rows run once per --workers value (data.workers: tokenizer worker processes; 0 tokenizes in the
training process). --raw also times the encoders alone. The load average is printed at the start and the end. With
--prepared it also prepares the smallest corpus (`distillc data prepare`'s runtime half, byte
tokenizer) and reads the prepared shards the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.example_encoder

WORDS = ("the of and to in is for that with as on by this are be from at or it an which can value "
         "function return class module import data model token layer loss teacher student").split()

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from distillc.runtime.config import DataConfig
from distillc.runtime.data.pipeline import DataPipeline
path, seq, batch, n, tok, prepared, workers = sys.argv[1:8]
seq, batch, n = int(seq), int(batch), int(n)
t_import = time.perf_counter()
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
cfg = DataConfig(source=path, tokenizer=tok, seq_len=seq, global_batch_size=batch, eval_fraction=0.0,
                 packing=True, shuffle_seed=0, prepared=prepared or None, workers=int(workers))
it = DataPipeline(cfg).train_iterator()
b = next(it)
t_first = time.perf_counter()
real, slots = int(b["mask"].sum()), b["mask"].size
for _ in range(n):
    b = next(it)
    real += int(b["mask"].sum()); slots += b["mask"].size
t_end = time.perf_counter()
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)  # all this process's threads
# VmHWM: this process's own peak (ru_maxrss would include the parent's RSS at fork time)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"import_s": t_import - t0, "first_batch_s": t_first - t_import,
                  "tokens_per_s": (n + 1) * seq * batch / (t_end - t_import),  # first batch included
                  "steady_tokens_per_s": n * seq * batch / (t_end - t_first),  # after the first batch
                  "packing": real / slots, "peak_rss_mb": hwm / 1024, "cpu_s": cpu,
                  "tokens_per_cpu_s": (n + 1) * seq * batch / cpu}))
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


def make_parquet(jsonl: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with jsonl.open() as f:
        texts = [json.loads(line)["text"] for line in f]
    pq.write_table(pa.table({"text": texts}), out, row_group_size=4096)


def make_example_arecord(jsonl: Path, out: Path) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    from tests.example_encoder import bytes_feature, example

    w = ArrayRecordWriter(str(out), "group_size:1")
    with jsonl.open() as f:
        for line in f:
            w.write(example(text=bytes_feature(json.loads(line)["text"].encode())))
    w.close()


def make_bpe(jsonl: Path, out: Path, vocab: int = 8192, sample_bytes: int = 5_000_000) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def sample():
        n = 0
        with jsonl.open() as f:
            for line in f:
                yield json.loads(line)["text"]
                n += len(line)
                if n >= sample_bytes:
                    return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sample(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(out))


def raw_rates(jsonl: Path, bpe: Path, docs: int = 2000) -> None:
    """The encoders alone on the corpus's first documents: tokens per second (wall) and per CPU-second
    (this process, all threads), the tokenizers library as the pipeline used it and the ways it can
    be called, and the tiktoken fast path."""
    import time

    from tokenizers import Tokenizer

    from distillc.runtime.data.tokenizers import HFTokenizer

    with jsonl.open() as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(docs), f)]
    lib = Tokenizer.from_file(str(bpe))
    fast = HFTokenizer(str(bpe))
    runs = {"tokenizers encode_batch (its own threads)": lambda: [e.ids for e in lib.encode_batch(texts, add_special_tokens=False)],
            "tokenizers encode_batch_fast (its own threads)": lambda: [e.ids for e in lib.encode_batch_fast(texts, add_special_tokens=False)],
            "tokenizers encode, one at a time": lambda: [lib.encode(t, add_special_tokens=False).ids for t in texts],
            "tiktoken fast path (HFTokenizer.encode_batch)": lambda: fast.encode_batch(texts)}
    for name, run in runs.items():
        t, c = time.perf_counter(), time.process_time()
        n = sum(len(ids) for ids in run())
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"raw: {name}: {n / wall / 1e6:.2f} M tokens/s, {n / cpu / 1e6:.2f} M per CPU-second ({n:,} tokens)",
              flush=True)


def library_only(bpe: Path, out: Path) -> None:
    """The same tokenizer with an empty normalizer list: the same ids, but not the tiktoken fast path
    (runtime/data/rank_bpe.py takes no file with a normalizer), so the tokenizers library encodes it."""
    spec = json.loads(bpe.read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": []}
    out.write_text(json.dumps(spec))


def describe(bpe: Path) -> None:
    from distillc.runtime.data.tokenizers import HFTokenizer

    tok = HFTokenizer(str(bpe))
    print(f"BPE tokenizer: {tok.vocab_size} tokens, tiktoken fast path: {tok.fast} {tok.slow_reason}", flush=True)


def run_child(path: Path, args, tokenizer: str, prepared: str = "", workers: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.seq_len), str(args.batch),
                          str(args.batches), tokenizer, prepared, str(workers)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet", "example"])
    ap.add_argument("--tokenizers", nargs="+", default=["byte", "bpe", "bpe-lib"], choices=["byte", "bpe", "bpe-lib"])
    ap.add_argument("--prepared", action="store_true")
    ap.add_argument("--raw", action="store_true", help="also time the BPE encoders alone (the first 2,000 documents)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="data.workers values to run (BPE rows)")
    args = ap.parse_args()
    rows = []
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bpe = Path(tmp) / "tokenizer.json"
        names = {"byte": "byte", "bpe": str(bpe), "bpe-lib": str(Path(tmp) / "tokenizer_lib.json")}
        for mb in args.sizes_mb:
            path = Path(tmp) / f"corpus_{mb}mb.jsonl"
            make_corpus(path, mb)
            if not bpe.exists() and {"bpe", "bpe-lib"} & set(args.tokenizers):
                make_bpe(path, bpe)
                library_only(bpe, Path(names["bpe-lib"]))
                describe(bpe)
                if args.raw:
                    raw_rates(path, bpe)
            files = {"jsonl": path}
            if "parquet" in args.formats:
                files["parquet"] = Path(tmp) / f"corpus_{mb}mb.parquet"
                make_parquet(path, files["parquet"])
            if "example" in args.formats:
                files["example"] = Path(tmp) / f"corpus_{mb}mb.arecord"
                make_example_arecord(path, files["example"])
            for fmt in args.formats:
                for tok in args.tokenizers:
                    for w in (args.workers if tok != "byte" else [0]):
                        rows.append((mb, fmt, tok, w, run_child(files[fmt], args, names[tok], workers=w)))
                        print(rows[-1], flush=True)
            if args.prepared and mb == min(args.sizes_mb):
                from distillc.runtime.config import DataConfig
                from distillc.runtime.data.prepared import prepare

                cfg = DataConfig(source=str(path), tokenizer="byte", seq_len=args.seq_len, global_batch_size=args.batch,
                                 eval_fraction=0.0, packing=True, shuffle_seed=0)
                prepare(cfg, str(Path(tmp) / "prepared"), log=lambda _: None)
                rows.append((mb, "prepared", "byte", 0, run_child(path, args, "byte", str(Path(tmp) / "prepared"))))
            for f in files.values():
                f.unlink()
    print(f"load average at end: {os.getloadavg()}")
    print(f"{'corpus':>8}  {'format':>8}  {'tokenizer':>9}  {'workers':>7}  {'peak RSS':>9}  {'first batch':>11}  "
          f"{'tokens/s':>12}  {'after 1st':>12}  {'tok/cpu-s':>12}  {'packing':>7}")
    for mb, fmt, tok, w, r in rows:
        print(f"{mb:>6}MB  {fmt:>8}  {tok:>9}  {w:>7}  {r['peak_rss_mb']:>7.0f}MB  {r['first_batch_s']:>10.2f}s  "
              f"{r['tokens_per_s']:>12,.0f}  {r['steady_tokens_per_s']:>12,.0f}  {r['tokens_per_cpu_s']:>12,.0f}  "
              f"{100 * r['packing']:>6.2f}%")


if __name__ == "__main__":
    main()
