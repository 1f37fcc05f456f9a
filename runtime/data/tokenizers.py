"""Tokenizers named by `data.tokenizer`: 'byte', a sentencepiece `.model`, or an HF `tokenizer.json`.

The byte tokenizer (vocab 256, id = UTF-8 byte) needs nothing and serves every local run. The
other two wrap optional packages that are imported only when such a file is named, with an error
that says what to install. Files are read through etils.epath, so gs:// paths work wherever an
epath backend for them is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded; the message says why and what to do."""


class Tokenizer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...  # put before each document when set

    @property
    def eos_id(self) -> int | None: ...  # appended after each document when set

    def encode(self, text: str) -> np.ndarray: ...  # [N] int32

    def decode(self, ids) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; documents are separated by a blank line, not an eos id."""

    name: str = "byte"
    vocab_size: int = 256
    bos_id: int | None = None
    eos_id: int | None = None

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in np.asarray(ids).reshape(-1)).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    def __init__(self, path: str):
        try:
            import sentencepiece as spm  # optional dependency
        except ImportError as e:
            raise TokenizerError(
                f"data.tokenizer {path!r} is a sentencepiece model, but the sentencepiece package is "
                "not installed: pip install sentencepiece"
            ) from e
        self._sp = spm.SentencePieceProcessor(model_proto=_read_bytes(path))
        self.name = path
        self.vocab_size = int(self._sp.get_piece_size())
        bos, eos = int(self._sp.bos_id()), int(self._sp.eos_id())
        self.bos_id = bos if bos >= 0 else None  # Llama 2 / Gemma convention: <s> before, </s> after
        self.eos_id = eos if eos >= 0 else None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])


class HFTokenizer:
    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer as _Tok  # optional dependency
        except ImportError as e:
            raise TokenizerError(
                f"data.tokenizer {path!r} is a Hugging Face tokenizer.json, but the tokenizers package "
                "is not installed: pip install tokenizers"
            ) from e
        self._tok = _Tok.from_str(_read_bytes(path).decode("utf-8"))
        self.name = path
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = self._first_id("<s>", "<|begin_of_text|>", "<bos>")  # GPT-2 style BPEs have none
        self.eos_id = self._first_id("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")

    def _first_id(self, *candidates: str) -> int | None:
        for cand in candidates:
            tid = self._tok.token_to_id(cand)
            if tid is not None:
                return int(tid)
        return None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def _read_bytes(path: str) -> bytes:
    from etils import epath

    p = epath.Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer file {path!r} does not exist")
    return p.read_bytes()


def load_tokenizer(name: str) -> Tokenizer:
    """'byte' | '<path>.model' (sentencepiece) | '<path>.json' (HF tokenizers)."""
    if name == "byte":
        return ByteTokenizer()
    if name.endswith(".model"):
        return SentencePieceTokenizer(name)
    if name.endswith(".json"):
        return HFTokenizer(name)
    raise TokenizerError(
        f"unknown data.tokenizer {name!r}: use 'byte', a sentencepiece .model file or an HF tokenizer.json"
    )
