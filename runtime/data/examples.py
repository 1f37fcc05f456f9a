"""Documents to training examples: token ids with the tokenizer family's markers, inputs and labels.

Kept apart from the Grain pipeline (pipeline.py) so that tokenizer worker processes (workers.py)
import only this, numpy and the tokenizer libraries: no Grain, no jax.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from distillc.runtime.data.corpus import Document
from distillc.runtime.data.tokenizers import Tokenizer, encode_batch

DOC_SEPARATOR = "\n\n"  # ends every document for tokenizers without an eos token (byte)


class DataError(ValueError):
    """The data cannot make the configured batches (empty split, shards that do not divide the batch,
    a checkpointed data state from another layout)."""



class Tokenize:
    """doc -> {"inputs": ids[:-1], "labels": ids[1:]} with bos/eos (or a blank line) around it."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: Document) -> dict[str, np.ndarray]:
        return self.many([text])[0]

    def many(self, docs: Sequence[Document]) -> list[dict[str, np.ndarray]]:
        """Several documents at once: the texts go to the tokenizer's batch encoder; the same ids as one
        at a time."""
        return [example(ids) for ids in self.ids(docs)]

    def ids(self, docs: Sequence[Document]) -> list[np.ndarray]:
        """Each document's token ids with bos/eos (or a blank line) around it, int32."""
        tok = self.tokenizer
        texts = [d + DOC_SEPARATOR if tok.eos_id is None else d for d in docs if isinstance(d, str)]
        encoded = iter(encode_batch(tok, texts))
        return [self._marked(next(encoded)) if isinstance(d, str) else self._pretokenized(d) for d in docs]

    def _pretokenized(self, doc: np.ndarray) -> np.ndarray:
        """A pre-tokenized document (an ArrayRecord `tokens` record): the ids as they are."""
        tok = self.tokenizer
        ids = np.asarray(doc, np.int32)
        if ids.size and int(ids.max()) >= tok.vocab_size:
            raise DataError(f"a pre-tokenized document holds token id {int(ids.max())}, outside the "
                            f"{tok.vocab_size}-token vocabulary of data.tokenizer {tok.name!r}: set "
                            "data.tokenizer to the tokenizer the corpus was made with")
        return ids

    def _marked(self, ids: np.ndarray) -> np.ndarray:
        tok = self.tokenizer
        head = [tok.bos_id] if tok.bos_id is not None else []
        tail = [tok.eos_id] if tok.eos_id is not None else []
        if head or tail:
            ids = np.concatenate([np.asarray(head, np.int32), ids, np.asarray(tail, np.int32)])
        return ids.astype(np.int32, copy=False)


def example(ids: np.ndarray) -> dict[str, np.ndarray]:
    """A document's ids -> {"inputs": ids[:-1], "labels": ids[1:]} (views of one array)."""
    return {"inputs": ids[:-1], "labels": ids[1:]}


def unpack(flat: np.ndarray, lengths: np.ndarray) -> list[dict[str, np.ndarray]]:
    """A worker's answer (all documents' ids in one array, and their lengths) -> examples."""
    return [example(ids) for ids in np.split(flat, np.cumsum(lengths)[:-1])] if len(lengths) else []


# ---------------------------------------------------------------- in a tokenizer worker process (workers.py)

_WORKER_TOKENIZE: Optional[Tokenize] = None  # a worker process's own (workers.py)


def init_worker(tokenizer_name: str) -> None:
    """Loads the tokenizer once per worker process (by name: tokenizer objects need not pickle), on one
    thread: the workers are the parallelism."""
    global _WORKER_TOKENIZE
    from distillc.runtime.data.tokenizers import load_tokenizer

    _WORKER_TOKENIZE = Tokenize(load_tokenizer(tokenizer_name, threads=1))


def tokenize_in_worker(docs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids as one int32 array and their lengths (two arrays pickle at memory speed; a
    list of per-document dicts does not)."""
    assert _WORKER_TOKENIZE is not None  # set by init_worker
    ids = _WORKER_TOKENIZE.ids(docs)
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    return flat, np.asarray([len(i) for i in ids], np.int64)
