"""The Grain input pipeline: streamed documents -> tokens -> packed rows -> shuffled batches.

    documents (DocumentDataset: this process's files, read lazily, in a seeded order per epoch;
               the held-out documents, chosen by hash, left out)
      -> mixture (grain IterDataset.mix, by weight, when data.sources names several)
      -> tokenize (bos/eos per tokenizer; inputs = doc[:-1], labels = doc[1:]), 256 documents at a
         time, in this process or in data.workers worker processes (workers.py), in document order
      -> pack (grain ConcatThenSplitIterDataset: rows of seq_len with segment_ids and positions)
         or, packing off, each document cut alone into padded rows
      -> window shuffle (grain WindowShuffleIterDataset, seeded) -> batch of local_batch_size

A row is `inputs`, `labels` (the next token at every position), `segment_ids` (0 = padding,
documents numbered from 1 in each row), `positions` (restarting at 0 for each document) and `mask`
(True where the label is a real token; the losses exclude the rest). A document that does not fit
a row is continued in the next row, its positions restarting at 0 there (MaxText's and Grain's
concat-then-split). Attention never crosses a segment: the objectives pass segment_ids and
positions to the models.

Sharding: each process reads its own files (file i goes to process i mod P); where there are
fewer files than processes, every process reads every file and keeps the documents whose index in
the file is its own mod P. The order is deterministic for a given seed and process count.

Resume: `train_iterator().get_state()` is Grain's iterator state (file, document, the packer's
buffer, the shuffle window's position), JSON-serialisable, per process; `set_state` continues with
exactly the next batch. It records the process count and batch shape, and restoring it under other
ones is a DataError (the data order would change).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import CorpusError, Document, expand, held_out, read_documents
from distillc.runtime.data.prepared import Prepared, PreparedError, prepared_dir
from distillc.runtime.data.prepared import train_dataset as prepared_train_dataset
from distillc.runtime.data.examples import DOC_SEPARATOR, DataError, Tokenize  # noqa: F401  (re-exported)
from distillc.runtime.data.tokenizers import Tokenizer, load_tokenizer
from distillc.runtime.data.workers import TokenizeChunks

Batch = dict[str, np.ndarray]  # inputs, labels, segment_ids, positions [B, T] int32; mask [B, T] bool
# 2: tokenization in chunks (workers.TokenizeChunks); a state of version 1 does not restore into it
STATE_VERSION = 2
SHUFFLE_WINDOW_TOKENS = 1 << 20  # rows held by the window shuffle: this many tokens' worth (about 17 MB)


@dataclass(frozen=True)
class Shard:
    """This process's share of every global batch: block `index` of `count` equal blocks."""

    index: int = 0
    count: int = 1


# ---------------------------------------------------------------- documents


class DocumentDataset(grain.IterDataset):
    """The documents of some files for one process, lazily, epoch after epoch (or one epoch)."""

    def __init__(self, files: Sequence[str], *, text_field: str, keep: str, fraction: float, shard: Shard,
                 seed: int, epochs: int | None, name: str, shuffle_files: bool = True):
        super().__init__()
        self.shuffle_files = shuffle_files
        self.files, self.text_field, self.keep, self.fraction = list(files), text_field, keep, fraction
        self.seed, self.epochs, self.name = seed, epochs, name
        self.row_split = len(self.files) < shard.count  # fewer files than processes: split rows
        self.shard = shard

    def order(self, epoch: int) -> list[str]:
        """This process's files in epoch `epoch`: a seeded permutation, then every P-th file."""
        files = self.files
        if self.shuffle_files:
            files = [files[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(files))]
        return files if self.row_split else files[self.shard.index :: self.shard.count]

    def __iter__(self) -> "DocumentIterator":
        return DocumentIterator(self)


class DocumentIterator(grain.DatasetIterator):
    def __init__(self, ds: DocumentDataset):
        super().__init__()
        self._ds = ds
        self._epoch, self._file, self._doc = 0, 0, 0  # the next document: epoch, file in order, index in file
        self._reader: Iterator[Document] | None = None
        self._yielded_in_epoch = False

    def __next__(self) -> Document:
        ds = self._ds
        while True:
            if ds.epochs is not None and self._epoch >= ds.epochs:
                raise StopIteration
            files = ds.order(self._epoch)
            if self._file >= len(files):
                if not self._yielded_in_epoch and ds.epochs is None:  # an endless loop over nothing
                    raise DataError(f"{ds.name}: no documents for process {ds.shard.index} of {ds.shard.count} "
                                    "(every document is held out, or the files are empty): add data or "
                                    "lower data.eval_fraction")
                self._epoch, self._file, self._doc, self._reader = self._epoch + 1, 0, 0, None
                self._yielded_in_epoch = False
                continue
            if self._reader is None:
                self._reader = read_documents(files[self._file], ds.text_field, self._doc)
            text = next(self._reader, None)
            if text is None:
                self._file, self._doc, self._reader = self._file + 1, 0, None
                continue
            index = self._doc
            self._doc += 1
            if ds.row_split and index % ds.shard.count != ds.shard.index:
                continue
            if ds.keep != "all" and held_out(text, ds.fraction) != (ds.keep == "eval"):
                continue
            self._yielded_in_epoch = True
            return text

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "file": self._file, "doc": self._doc, "yielded": self._yielded_in_epoch}

    def set_state(self, state: dict[str, Any]) -> None:
        self._epoch, self._file, self._doc = int(state["epoch"]), int(state["file"]), int(state["doc"])
        self._yielded_in_epoch = bool(state.get("yielded", True))
        self._reader = None


# ---------------------------------------------------------------- tokens and rows


def _has_pairs(example: dict[str, np.ndarray]) -> bool:
    return len(example["inputs"]) > 0


def _row(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    seg = packed["inputs_segment_ids"].astype(np.int32)
    return {"inputs": packed["inputs"], "labels": packed["labels"], "segment_ids": seg,
            "positions": packed["inputs_positions"].astype(np.int32), "mask": seg > 0}


class DocumentRows(grain.IterDataset):
    """Packing off: each document cut alone into rows of seq_len, its last row padded."""

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        self.seq_len = seq_len

    def __iter__(self) -> "DocumentRowsIterator":
        return DocumentRowsIterator(self._parent.__iter__(), self.seq_len)


class DocumentRowsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._s = seq_len
        self._doc: dict[str, np.ndarray] | None = None
        self._before = self._parent.get_state()  # the parent's state before the current document
        self._offset = 0

    def __next__(self) -> dict[str, np.ndarray]:
        while self._doc is None or self._offset >= len(self._doc["inputs"]):
            self._before = self._parent.get_state()
            self._doc, self._offset = next(self._parent), 0
        s, a = self._s, self._offset
        self._offset += s
        n = min(s, len(self._doc["inputs"]) - a)
        row = {k: np.zeros(s, np.int32) for k in ("inputs", "labels", "segment_ids", "positions")}
        row["inputs"][:n] = self._doc["inputs"][a : a + n]
        row["labels"][:n] = self._doc["labels"][a : a + n]
        row["segment_ids"][:n] = 1
        row["positions"][:n] = np.arange(a, a + n)
        return {**row, "mask": row["segment_ids"] > 0}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._before, "offset": self._offset if self._doc is not None else 0}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._before, self._doc = state["parent"], None
        if state["offset"]:
            self._doc, self._offset = next(self._parent), int(state["offset"])


# ---------------------------------------------------------------- the pipeline


class DataIterator:
    """The training batches of one process, with a checkpointable state (see the module docstring)."""

    def __init__(self, inner: grain.DatasetIterator, layout: dict[str, Any]):
        self._it, self._layout = inner, layout

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> Batch:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        return {"layout": dict(self._layout), "grain": self._it.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        if "grain" not in state:
            raise DataError("the checkpoint's data state was written by an older distillc (a window index, not a "
                            "stream position): start the run in a new output_dir")
        if state["layout"] != self._layout:
            was, now = state["layout"], self._layout
            raise DataError(f"the checkpoint read the data as {was}, this run as {now}: resume with the same "
                            "number of processes, data.global_batch_size and data.seq_len (or start a new run)")
        self._it.set_state(_tuples(state["grain"]))


def _tuples(state: Any) -> Any:
    """Grain's packer compares its `remainder_slices` with tuples; a state that went through JSON (the
    checkpoint) holds lists there. Everything else is kept as it is."""
    if isinstance(state, dict):
        return {k: ({f: tuple(v) for f, v in x.items()} if k == "remainder_slices" else _tuples(x))
                for k, x in state.items()}
    return state


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
        self._eval_rows: list[dict[str, np.ndarray]] | None = None
        self.prepared: Prepared | None = None
        where = prepared_dir(cfg)
        if where is not None:  # the rows come from `distillc data prepare`'s shards, checked against the spec
            self.prepared = Prepared(where)
            named_itself = cfg.prepared is None  # data.source is the prepared directory: no sources to compare
            self.train_files = [] if named_itself else [
                (expand(w.source, "data.sources" if cfg.sources else "data.source"), w.weight) for w in cfg.mixture()]
            self.eval_files = (expand(cfg.eval_source, "data.eval_source")
                               if cfg.eval_source is not None and not named_itself else None)
            self.prepared.check(cfg, self.tokenizer, None if named_itself else self.train_files, self.eval_files)
            return
        self.train_files = [(expand(w.source, "data.sources" if cfg.sources else "data.source"), w.weight)
                            for w in cfg.mixture()]
        self.eval_files = expand(cfg.eval_source, "data.eval_source") if cfg.eval_source is not None else None
        for files, _ in self.train_files:
            if len(files) < shard.count and shard.index == 0:
                print(f"warning: {len(files)} file(s) for {shard.count} processes: each process reads every file "
                      "and keeps every P-th document (split the corpus into more files to read less)",
                      file=sys.stderr)

    @property
    def has_eval(self) -> bool:
        if self.prepared is not None:
            return self.prepared.records("eval") > 0
        return self.eval_files is not None or self.cfg.eval_fraction > 0

    def _documents(self, files: list[str], keep: str, shard: Shard, epochs: int | None, name: str) -> DocumentDataset:
        # the held-out set (one epoch) reads the files in their own order, whatever the seed
        return DocumentDataset(files, text_field=self.cfg.text_field, keep=keep, fraction=self.cfg.eval_fraction,
                               shard=shard, seed=self.cfg.shuffle_seed, epochs=epochs, name=name,
                               shuffle_files=epochs is None)

    def _rows(self, docs: grain.IterDataset) -> grain.IterDataset:
        s = self.cfg.seq_len
        # in chunks, in this process or data.workers processes: the same rows and states for any count
        ds = TokenizeChunks(docs, Tokenize(self.tokenizer), self.cfg.tokenizer, self.cfg.workers).filter(_has_pairs)
        if self.cfg.packing:
            packed = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"inputs": s, "labels": s})
            return packed.map(_row)
        return DocumentRows(ds, s)

    def train_dataset_documents(self) -> list[DocumentDataset]:
        """This shard's training documents, one dataset per source of the mixture."""
        keep = "all" if self.eval_files is not None else "train"
        return [self._documents(files, keep, self.shard, None, "data.source") for files, _ in self.train_files]

    def train_dataset(self) -> grain.IterDataset:
        """Infinite: this shard's batches, epoch after epoch (files reordered each epoch; prepared rows
        index-shuffled each epoch)."""
        if self.prepared is not None:
            return prepared_train_dataset(self.prepared.source("train"), self.cfg.shuffle_seed,
                                          self.local_batch_size, self.shard.index, self.shard.count)
        parts = self.train_dataset_documents()
        docs = parts[0] if len(parts) == 1 else grain.IterDataset.mix(parts, [w for _, w in self.train_files])
        rows = self._rows(docs)
        window = max(1, SHUFFLE_WINDOW_TOKENS // self.cfg.seq_len)
        rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=window, seed=self.cfg.shuffle_seed)
        return rows.batch(self.local_batch_size, drop_remainder=True)

    def train_iterator(self, skip_batches: int = 0) -> DataIterator:
        """A checkpointable iterator over this process's training batches (after `skip_batches`)."""
        layout: dict[str, Any] = {"state_version": STATE_VERSION, "processes": self.shard.count, "process": self.shard.index,
                  "local_batch_size": self.local_batch_size, "seq_len": self.cfg.seq_len}
        if self.prepared is not None:  # a state of other prepared rows (or of the streaming pipeline) is refused
            layout["prepared"] = self.prepared.digest
        it = DataIterator(self.train_dataset().__iter__(), layout)
        for _ in range(skip_batches):
            next(it)
        return it

    def eval_rows(self) -> list[dict[str, np.ndarray]]:
        """The held-out rows, the same on every process: held-out documents in file order, packed, until
        data.eval_tokens real tokens (read once, kept: the set is bounded)."""
        if self._eval_rows is None and self.prepared is not None:
            src = self.prepared.source("eval")
            self._eval_rows = [src[i] for i in range(len(src))]
        if self._eval_rows is None:
            self._eval_rows = []
            if self.has_eval:
                if self.eval_files is not None:
                    parts = [self._documents(self.eval_files, "all", Shard(), 1, "data.eval_source")]
                else:
                    parts = [self._documents(files, "eval", Shard(), 1, "data.source") for files, _ in self.train_files]
                tokens = 0
                for part in parts:
                    for row in self._rows(part):
                        self._eval_rows.append(row)
                        tokens += int(row["mask"].sum())
                        if tokens >= self.cfg.eval_tokens:
                            break
                    if tokens >= self.cfg.eval_tokens:
                        break
        return self._eval_rows

    def eval_batch_count(self) -> int:
        """Global batches that cover the held-out rows (the last one padded with masked rows)."""
        return math.ceil(len(self.eval_rows()) / self.cfg.global_batch_size) if self.has_eval else 0

    def eval_batches(self, max_batches: int | None = None) -> Iterator[Batch]:
        """This shard's part of the held-out batches, in order; all of them when max_batches is None."""
        rows = self.eval_rows()
        n = self.eval_batch_count() if max_batches is None else min(max_batches, self.eval_batch_count())
        g, b = self.cfg.global_batch_size, self.local_batch_size
        for step in range(n):
            start = step * g + self.shard.index * b
            chunk = [rows[i] if i < len(rows) else _empty_row(self.cfg.seq_len) for i in range(start, start + b)]
            yield {k: np.stack([r[k] for r in chunk]) for k in chunk[0]}


def _empty_row(seq_len: int) -> dict[str, np.ndarray]:
    z = np.zeros(seq_len, np.int32)
    return {"inputs": z, "labels": z.copy(), "segment_ids": z.copy(), "positions": z.copy(),
            "mask": np.zeros(seq_len, np.bool_)}


__all__ = ["Batch", "CorpusError", "DataError", "PreparedError", "DataIterator", "DataPipeline", "Shard"]
