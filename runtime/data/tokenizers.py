"""Tokenizers named by `data.tokenizer`: 'byte', a sentencepiece or tiktoken `.model`, an HF `tokenizer.json`,
or a `.gguf` checkpoint (the byte-level BPE or sentencepiece vocabulary in its metadata,
runtime/convert/gguf_tokenizer.py).

The byte tokenizer (vocab 256, id = UTF-8 byte) needs nothing and serves every local run. The
others wrap the sentencepiece, tiktoken and tokenizers packages (dependencies of distillc), imported
only when such a file is named. A `.model` file is a sentencepiece protobuf or, as Llama 3 ships
its `tokenizer.model`, a tiktoken ranks file (lines `base64-token rank`): told apart by content. Files are read through etils.epath, so gs:// paths work (gcsfs).
An HF tokenizer.json whose byte-level BPE merges follow its ids is encoded by tiktoken, with the same
ids (rank_bpe.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from distillc.compiler.diagnostics import one_line


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
    def __init__(self, path: str, data: bytes):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as e:
            raise TokenizerError(f"data.tokenizer {path!r} is not a readable sentencepiece model "
                                 f"({one_line(str(e).strip())}); point it at the model's tokenizer.model") from e
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
    """An HF tokenizer.json. Where its byte-level BPE merges follow its ids (rank_bpe.py), tiktoken
    encodes it, with the same ids, about 5x faster per CPU-second here; else the tokenizers library."""

    def __init__(self, path: str, text: str | None = None, threads: int | None = None):
        """The tokenizer.json at `path`, or its `text` when given (built from a GGUF file's metadata);
        `threads` > 1 (the default where this process may use several CPUs): the tokenizers library
        encodes a batch on its own threads; 1: one text at a time (a tokenizer worker)."""
        import json

        from tokenizers import Tokenizer as _Tok

        from distillc.runtime.data.rank_bpe import added_token_regex, rank_encoder

        try:
            text = text if text is not None else _read_bytes(path).decode("utf-8")
            self._tok = _Tok.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"data.tokenizer {path!r} is not a readable Hugging Face tokenizer.json "
                                 f"({one_line(str(e).strip())}); point it at the model's tokenizer.json") from e
        self.name = path
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.bos_id = self._first_id("<s>", "<|begin_of_text|>", "<bos>")  # GPT-2 style BPEs have none
        self.eos_id = self._first_id("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")
        spec = json.loads(text)
        self._fast, self.slow_reason = rank_encoder(spec)
        self._added = added_token_regex(spec)
        self.threads = max(1, threads if threads is not None else len(os.sched_getaffinity(0)))

    @property
    def fast(self) -> bool:
        """Whether tiktoken encodes it (rank_bpe.py); `slow_reason` says why not."""
        return self._fast is not None

    def _first_id(self, *candidates: str) -> int | None:
        for cand in candidates:
            tid = self._tok.token_to_id(cand)
            if tid is not None:
                return int(tid)
        return None

    def encode(self, text: str) -> np.ndarray:
        if self._fast is not None and (self._added is None or self._added.search(text) is None):
            try:
                return np.asarray(self._fast.encode_ordinary(text), dtype=np.int32)
            except Exception:  # e.g. a lone surrogate: the tokenizers library decides (and says what is wrong)
                pass
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Many texts in one call; the same ids as one at a time. tiktoken holds the GIL while it
        encodes (measured: 2 Python threads ran at 0.6x of 1), so the fast path goes one text at a time
        (data.workers is its parallelism); the tokenizers library encodes a batch on its own Rust
        threads when `threads` > 1."""
        if self._fast is not None or self.threads == 1 or len(texts) < 2:
            return [self.encode(t) for t in texts]
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # no offsets: the same ids
        return [np.asarray(e.ids, dtype=np.int32) for e in batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)])


# Llama 3's tokenizer.model: the pre-tokenizer split and the 256 special tokens that follow the
# 128,000 ranks (meta-llama/llama3, llama/tokenizer.py)
_LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])


class TiktokenTokenizer:
    """A tiktoken ranks file (Llama 3's tokenizer.model) with Llama 3's split pattern and special
    tokens; <|begin_of_text|> before each document, <|end_of_text|> after (Llama 3's pretraining)."""

    def __init__(self, path: str, data: bytes):
        import base64

        import tiktoken

        ranks: dict[bytes, int] = {}
        try:
            for i, line in enumerate(data.splitlines(), 1):
                if line.strip():
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerError(f"data.tokenizer {path!r}: line {i} is not 'base64-token rank' ({one_line(str(e).strip())}); "
                                 "point it at the model's tokenizer.model") from e
        specials = {t: len(ranks) + k for k, t in enumerate(_LLAMA3_SPECIAL)}
        self._enc = tiktoken.Encoding(name=path, pat_str=_LLAMA3_PATTERN, mergeable_ranks=ranks,
                                      special_tokens=specials)
        self.name = path
        self.vocab_size = len(ranks) + len(specials)
        self.bos_id: int | None = specials["<|begin_of_text|>"]
        self.eos_id: int | None = specials["<|end_of_text|>"]

    def encode(self, text: str) -> np.ndarray:
        # special-token strings inside a document are text, never control tokens
        return np.asarray(self._enc.encode(text, disallowed_special=()), dtype=np.int32)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """The tokenizer's batch encoder where it has one (HF tokenizer.json), else one text at a time;
    the same ids either way."""
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch is not None and texts else [tokenizer.encode(t) for t in texts]


def _is_tiktoken(data: bytes) -> bool:
    """A tiktoken ranks file starts with a printable 'base64 rank' line; a sentencepiece model is a
    binary protobuf."""
    first = data[:256].split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit() and all(32 < c < 127 for c in first[0])


def _read_bytes(path: str) -> bytes:
    from etils import epath

    p = epath.Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer file {path!r} does not exist")
    return p.read_bytes()


def load_tokenizer(name: str, threads: int | None = None) -> Tokenizer:
    """'byte' | '<path>.model' (sentencepiece or tiktoken) | '<path>.json' (HF tokenizers) | '<path>.gguf';
    `threads`: 1 makes an HF tokenizer encode one text at a time (HFTokenizer)."""
    if name == "byte":
        return ByteTokenizer()
    if name.endswith(".model"):
        data = _read_bytes(name)
        return TiktokenTokenizer(name, data) if _is_tiktoken(data) else SentencePieceTokenizer(name, data)
    if name.endswith(".json"):
        return HFTokenizer(name, threads=threads)
    if name.lower().endswith(".gguf"):  # the vocabulary a GGUF checkpoint carries (convert/gguf_tokenizer.py)
        from distillc.runtime.convert.gguf_meta import GGUFError
        from distillc.runtime.convert.gguf_tokenizer import GGUFTokenizerError, tokenizer_json

        try:  # the header alone: a gs:// file is read by ranges, never copied whole
            return HFTokenizer(name, tokenizer_json(name), threads=threads)
        except (GGUFTokenizerError, GGUFError) as e:
            raise TokenizerError(f"data.tokenizer: {e}") from e
    raise TokenizerError(
        f"unknown data.tokenizer {name!r}: use 'byte', a tokenizer.model (sentencepiece or tiktoken), an HF "
        "tokenizer.json or a .gguf checkpoint (its byte-level BPE or sentencepiece vocabulary)"
    )


def tokenizer_fingerprint(name: str) -> dict[str, str]:
    """Identity of data.tokenizer: its name and a sha256 of its definition (the file's bytes; for the
    byte tokenizer, of its fixed definition). The prepared-data and top-k manifests record it, so data
    tokenized by one file is never read as if by another."""
    import hashlib

    if name == "byte":
        return {"name": name, "sha256": hashlib.sha256(b"distillc byte tokenizer: UTF-8 bytes 0..255").hexdigest()}
    from etils import epath

    p = epath.Path(name)
    if not p.exists():
        raise TokenizerError(f"tokenizer file {name!r} does not exist")
    from distillc.runtime.file_digest import file_sha256

    # in blocks: data.tokenizer may name a GGUF checkpoint of several GB
    return {"name": name, "sha256": file_sha256(name)[0]}
