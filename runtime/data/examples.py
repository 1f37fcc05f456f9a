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
        """Several documents at once: the texts go to the tokenizer's batch encoder (HF tokenizers
        encode a batch on all cores, in Rust); the same ids as one at a time."""
        tok = self.tokenizer
        texts = [d + DOC_SEPARATOR if tok.eos_id is None else d for d in docs if isinstance(d, str)]
        encoded = iter(encode_batch(tok, texts))
        return [self._example(next(encoded)) if isinstance(d, str) else self._pretokenized(d) for d in docs]

    def _pretokenized(self, doc: np.ndarray) -> dict[str, np.ndarray]:
        """A pre-tokenized document (an ArrayRecord `tokens` record): the ids as they are."""
        tok = self.tokenizer
        ids = np.asarray(doc, np.int32)
        if ids.size and int(ids.max()) >= tok.vocab_size:
            raise DataError(f"a pre-tokenized document holds token id {int(ids.max())}, outside the "
                            f"{tok.vocab_size}-token vocabulary of data.tokenizer {tok.name!r}: set "
                            "data.tokenizer to the tokenizer the corpus was made with")
        return {"inputs": ids[:-1], "labels": ids[1:]}

    def _example(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        tok = self.tokenizer
        head = [tok.bos_id] if tok.bos_id is not None else []
        tail = [tok.eos_id] if tok.eos_id is not None else []
        if head or tail:
            ids = np.concatenate([np.asarray(head, np.int32), ids, np.asarray(tail, np.int32)])
        ids = ids.astype(np.int32)
        return {"inputs": ids[:-1], "labels": ids[1:]}


# ---------------------------------------------------------------- in a tokenizer worker process (workers.py)

_WORKER_TOKENIZE: Optional[Tokenize] = None  # a worker process's own (workers.py)


def init_worker(tokenizer_name: str) -> None:
    """Loads the tokenizer once per worker process (by name: tokenizer objects need not pickle)."""
    global _WORKER_TOKENIZE
    from distillc.runtime.data.tokenizers import load_tokenizer

    _WORKER_TOKENIZE = Tokenize(load_tokenizer(tokenizer_name))


def tokenize_in_worker(docs: list[Any]) -> list[dict[str, np.ndarray]]:
    assert _WORKER_TOKENIZE is not None  # set by init_worker
    return _WORKER_TOKENIZE.many(docs)
