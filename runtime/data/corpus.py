"""Text corpora named by `data.source`, read into documents, tokenized and split train/held-out.

Sources:
- `builtin:pydoc_topics`: the help topics of Python's own `pydoc_data.topics` (about 465 KB of
  English and code; ships with CPython, so nothing is downloaded). Topics in key order.
- a `.txt` file (one document) or a `.jsonl` file (one document per line, its "text" field), local
  or any path etils.epath can open (gs:// with a backend installed);
- a directory of such files (sorted by name).

The split is contiguous over the token stream: the first (1 - eval_fraction) of the tokens train,
the rest is held out, so no held-out text is ever seen in training, shuffled or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from distillc.runtime.data.tokenizers import Tokenizer

BUILTINS = ("pydoc_topics",)
DOC_SEPARATOR = "\n\n"


class CorpusError(ValueError):
    """A data.source that cannot be read; the message names it."""


def load_documents(source: str) -> list[str]:
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name == "pydoc_topics":
            from pydoc_data.topics import topics

            return [topics[k] for k in sorted(topics)]
        raise CorpusError(f"unknown builtin corpus {source!r}; known: {', '.join('builtin:' + b for b in BUILTINS)}")
    from etils import epath

    path = epath.Path(source)
    if not path.exists():
        raise CorpusError(f"data.source {source!r} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise CorpusError(f"data.source directory {source!r} holds no .txt or .jsonl files")
        return [doc for f in files for doc in _read_file(f)]
    return _read_file(path)


def _read_file(path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".txt":
        return [text]
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i}: not JSON ({e.msg})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise CorpusError(f"{path}:{i}: expected an object with a string field 'text'")
            docs.append(obj["text"])
        return docs
    raise CorpusError(f"data.source {str(path)!r}: expected a .txt or .jsonl file (or builtin:pydoc_topics)")


@dataclass(frozen=True)
class TokenStream:
    """Documents tokenized and concatenated; `doc_starts[i]` is where document i begins."""

    tokens: np.ndarray  # [N] int32
    doc_starts: np.ndarray  # [D] int64, ascending, doc_starts[0] == 0

    def split(self, eval_fraction: float) -> tuple["TokenStream", "TokenStream"]:
        """Contiguous split: the first (1 - eval_fraction) of the tokens, and the rest."""
        n = len(self.tokens)
        cut = int(round(n * (1.0 - eval_fraction)))
        train = TokenStream(self.tokens[:cut], self.doc_starts[self.doc_starts < cut])
        rest = self.doc_starts[self.doc_starts >= cut] - cut
        if len(rest) == 0 or rest[0] != 0:  # the document cut in two starts the held-out part
            rest = np.concatenate([[0], rest])
        return train, TokenStream(self.tokens[cut:], rest.astype(np.int64))


def tokenize(documents: list[str], tokenizer: Tokenizer) -> TokenStream:
    pieces, starts, pos = [], [], 0
    for i, doc in enumerate(documents):
        if tokenizer.eos_id is None and i < len(documents) - 1:
            doc = doc + DOC_SEPARATOR
        ids = tokenizer.encode(doc)
        if tokenizer.eos_id is not None:
            ids = np.concatenate([ids, np.asarray([tokenizer.eos_id], np.int32)])
        pieces.append(ids)
        starts.append(pos)
        pos += len(ids)
    if pos == 0:
        raise CorpusError("the corpus is empty")
    return TokenStream(np.concatenate(pieces).astype(np.int32), np.asarray(starts, np.int64))
