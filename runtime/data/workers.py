"""Tokenization in chunks, in this process or in `data.workers` worker processes, in document order.

    documents -> TokenizeChunks(CHUNK_DOCS documents at a time) -> tokenized documents, in order

The documents are read in chunks of CHUNK_DOCS; a chunk is tokenized in this process
(data.workers = 0) or split over a pool of worker processes (each loads the tokenizer once) and
put back in order. With workers, AHEAD chunks are read ahead and handed to them, so they tokenize
while this process packs; each worker encodes on one thread and sends back one int32 array of ids
and the documents' lengths. The output, and the iterator's state (the documents' state before the current
chunk, and the position in it), are the same for every worker count: a run resumes exactly under
another data.workers. Restoring re-reads and re-tokenizes at most one chunk (and drops the chunks
read ahead).

Why a pool of our own rather than Grain's `mp_prefetch`: mp_prefetch gives each worker a slice of
the dataset and interleaves their outputs, so the order (and the packed rows) would depend on the
worker count; here the workers only tokenize and the order stays the reader's. Workers are spawned
(never forked: the training process holds JAX's threads), once per iterator, and shut down with it;
they import examples.py and the tokenizer library only (no Grain, no jax), so they start in about
a second.
"""

from __future__ import annotations

import collections
import multiprocessing
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Optional

import grain
import numpy as np

from distillc.runtime.data.examples import init_worker, tokenize_in_worker, unpack

CHUNK_DOCS = 256  # documents tokenized together: the unit of work, and of re-reading on restore
AHEAD = 2  # chunks with the workers while this process packs the current one

Example = dict[str, np.ndarray]

class TokenizeChunks(grain.IterDataset):
    """The parent's documents tokenized by `tokenize` (a pipeline.Tokenize: in-process) or by `workers`
    processes."""

    def __init__(self, parent: grain.IterDataset, tokenize: Any, tokenizer_name: str,
                 workers: int, chunk_docs: int = CHUNK_DOCS):
        super().__init__(parent)
        self.tokenize, self.tokenizer_name = tokenize, tokenizer_name
        self.workers, self.chunk_docs = workers, chunk_docs

    def __iter__(self) -> "TokenizeChunksIterator":
        return TokenizeChunksIterator(self)


class TokenizeChunksIterator(grain.DatasetIterator):
    def __init__(self, ds: TokenizeChunks):
        super().__init__(ds._parent.__iter__())
        self._ds = ds
        self._before = self._parent.get_state()  # the documents' state before the current chunk
        self._chunk: list[Example] = []
        self._offset = 0
        self._pool: Optional[ProcessPoolExecutor] = None
        # chunks read and handed to the workers, not yet used: (documents' state before it, its slices)
        self._ahead: collections.deque[tuple[Any, list[Future]]] = collections.deque()
        self._read_all = False

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ds = self._ds
            self._pool = ProcessPoolExecutor(ds.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker, initargs=(ds.tokenizer_name,))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def _read(self) -> tuple[Any, list[Any]]:
        """The documents' state, then the next chunk of documents (empty at the end)."""
        state, docs = self._parent.get_state(), []
        for _ in range(self._ds.chunk_docs):
            doc = next(self._parent, None)
            if doc is None:
                break
            docs.append(doc)
        return state, docs

    def _fill(self) -> None:
        """Keep AHEAD chunks with the workers, so they tokenize while this process reads and packs."""
        ds = self._ds
        while len(self._ahead) < AHEAD and not self._read_all:
            state, docs = self._read()
            if not docs:
                self._read_all = True
                break
            n = max(1, -(-len(docs) // (ds.workers * 2)))  # contiguous slices, a few per worker, joined in order
            slices = [docs[i : i + n] for i in range(0, len(docs), n)]
            self._ahead.append((state, [self._executor().submit(tokenize_in_worker, s) for s in slices]))

    def _next_chunk(self) -> None:
        if self._ds.workers == 0:
            self._before, docs = self._read()
            if not docs:
                raise StopIteration
            self._chunk, self._offset = self._ds.tokenize.many(docs), 0
            return
        self._fill()
        if not self._ahead:
            raise StopIteration
        self._before, slices = self._ahead.popleft()
        self._chunk, self._offset = [ex for f in slices for ex in unpack(*f.result())], 0
        self._fill()

    def __next__(self) -> Example:
        if self._offset >= len(self._chunk):
            self._next_chunk()
        self._offset += 1
        return self._chunk[self._offset - 1]

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._before, "offset": self._offset if self._chunk else 0}

    def set_state(self, state: dict[str, Any]) -> None:
        for _, slices in self._ahead:  # read ahead from the old position: dropped
            for f in slices:
                f.cancel()
        self._ahead.clear()
        self._read_all = False
        self._parent.set_state(state["parent"])
        self._before, self._chunk, self._offset = state["parent"], [], 0
        offset = int(state["offset"])
        if offset:
            self._next_chunk()
            self._offset = offset
