"""Grain input pipelines: tokenized windows, a seeded shuffle, per-process shards, resumable state.

An example is a window of seq_len + 1 tokens: `inputs` are its first seq_len tokens, `labels` the
next token at every position, and `mask` is True where the label is a real token (False on
padding, which the losses exclude). With `packing` the documents are one stream cut into
back-to-back windows (every position counts); without it every document is cut on its own and
its last window is padded.

Sharding keeps the global batch independent of the number of processes: the shuffled stream is
cut into blocks of per_process = global_batch / shards examples, and shard s of step n is block
n * shards + s. Concatenating the shards in shard order gives the 1-process global batch exactly,
so a 2-process run sees the same batches as a 1-process run, and an iterator's state (the number
of batches it has returned, equal on every process) means the same thing for any process count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import grain
import numpy as np

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import TokenStream, load_documents, tokenize
from distillc.runtime.data.tokenizers import Tokenizer, load_tokenizer

Batch = dict[str, np.ndarray]  # inputs [B, T] int32, labels [B, T] int32, mask [B, T] bool


class DataError(ValueError):
    """The corpus is too small for the configured shapes, or the shards do not divide the batch."""


class PackedWindows:
    """Random-access source over one token stream: window i = stream[i*S : i*S + S + 1]."""

    def __init__(self, stream: TokenStream, seq_len: int):
        self._tokens = stream.tokens
        self._seq_len = seq_len
        self._len = max((len(stream.tokens) - 1) // seq_len, 0)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        if not 0 <= i < self._len:
            raise IndexError(i)
        s = self._seq_len
        w = self._tokens[i * s : i * s + s + 1]
        return {"inputs": w[:-1].copy(), "labels": w[1:].copy(), "mask": np.ones(s, np.bool_)}


class DocumentWindows:
    """Random-access source with each document cut alone; a document's last window is padded."""

    def __init__(self, stream: TokenStream, seq_len: int):
        s = seq_len
        bounds = list(stream.doc_starts) + [len(stream.tokens)]
        rows, valid = [], []
        for a, b in zip(bounds, bounds[1:]):
            doc = stream.tokens[a:b]
            for start in range(0, max(len(doc) - 1, 0), s):
                w = doc[start : start + s + 1]
                row = np.zeros(s + 1, np.int32)
                row[: len(w)] = w
                v = np.zeros(s + 1, np.bool_)
                v[: len(w)] = True
                rows.append(row)
                valid.append(v)
        self._rows = np.asarray(rows, np.int32).reshape(-1, s + 1)
        self._valid = np.asarray(valid, np.bool_).reshape(-1, s + 1)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row, v = self._rows[int(i)], self._valid[int(i)]
        return {"inputs": row[:-1].copy(), "labels": row[1:].copy(), "mask": v[1:].copy()}


def _empty_example(seq_len: int) -> dict[str, np.ndarray]:
    z = np.zeros(seq_len, np.int32)
    return {"inputs": z, "labels": z.copy(), "mask": np.zeros(seq_len, np.bool_)}


@dataclass(frozen=True)
class Shard:
    """This process's share of every global batch: block `index` of `count` equal blocks."""

    index: int = 0
    count: int = 1


class DataPipeline:
    """The training stream and the held-out batches of one DataConfig, for one shard."""

    def __init__(self, cfg: DataConfig, shard: Shard = Shard(), tokenizer: Tokenizer | None = None):
        if cfg.global_batch_size % shard.count:
            raise DataError(
                f"data.global_batch_size {cfg.global_batch_size} does not divide into {shard.count} data shards"
            )
        self.cfg = cfg
        self.shard = shard
        self.local_batch_size = cfg.global_batch_size // shard.count
        self.tokenizer = tokenizer or load_tokenizer(cfg.tokenizer)
        stream = tokenize(load_documents(cfg.source), self.tokenizer)
        train, held_out = stream.split(cfg.eval_fraction)
        windows = PackedWindows if cfg.packing else DocumentWindows
        self.train_windows = windows(train, cfg.seq_len)
        self.eval_windows = windows(held_out, cfg.seq_len) if cfg.eval_fraction > 0 else None
        self.train_tokens = int(len(train.tokens))
        self.eval_tokens = int(len(held_out.tokens)) if cfg.eval_fraction > 0 else 0
        if len(self.train_windows) < cfg.global_batch_size:
            raise DataError(
                f"{cfg.source}: {len(self.train_windows)} training windows of {cfg.seq_len + 1} tokens, "
                f"fewer than one global batch of {cfg.global_batch_size}"
            )

    def train_dataset(self) -> grain.MapDataset:
        """Infinite, reshuffled every epoch (grain reseeds shuffle per epoch), this shard's batches."""
        ds = grain.MapDataset.source(self.train_windows).shuffle(seed=self.cfg.shuffle_seed).repeat()
        ds = ds.batch(self.local_batch_size, drop_remainder=True)
        return ds[self.shard.index :: self.shard.count]

    def train_iterator(self) -> grain.DatasetIterator:
        """A checkpointable iterator: `get_state()` / `set_state()` ({"next_index": batches returned})."""
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
        return iter(self.train_dataset().to_iter_dataset(read))

    def eval_batch_count(self) -> int:
        """Global batches that cover the held-out windows (the last one padded with masked rows)."""
        if self.eval_windows is None:
            return 0
        return math.ceil(len(self.eval_windows) / self.cfg.global_batch_size)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[Batch]:
        """This shard's part of the held-out batches, in order; all of them when max_batches is None."""
        if self.eval_windows is None:
            return
        n = self.eval_batch_count() if max_batches is None else min(max_batches, self.eval_batch_count())
        g, b = self.cfg.global_batch_size, self.local_batch_size
        for step in range(n):
            start = step * g + self.shard.index * b
            rows = [
                self.eval_windows[i] if i < len(self.eval_windows) else _empty_example(self.cfg.seq_len)
                for i in range(start, start + b)
            ]
            yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
