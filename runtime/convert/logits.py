"""`distillc logits CHECKPOINT --golden F.jsonl`: the conversion check MaxText users know from its
forward_pass_logit_checker. Golden files use MaxText's format: one JSON object per line,
{"prompt": str, "tokens": [int], "logits": [[float] * V] * len(tokens)} (float32). Our forward
pass runs on the same tokens; per prompt we report max over positions of KL(golden || ours), the
max |logit difference| and top-1 agreement. `--out` writes our logits in the same format.
`--prompts "a;b" --tokenizer PATH` makes new goldens from text instead: each prompt tokenized by
the runtime's tokenizers (bos first when the tokenizer has one), our logits written with --out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillc.runtime.arch import ModelArch
from distillc.runtime.config import MeshConfig
from distillc.runtime.convert.export import resolve_source
from distillc.runtime.train.checkpoints import CheckpointError


@dataclass(frozen=True)
class Row:
    prompt: str
    tokens: list[int]
    logits: Optional[np.ndarray]  # [T, V] float32, None when only tokens were given


@dataclass(frozen=True)
class Compared:
    prompt: str
    max_kl: float
    max_abs: float
    top1: float  # fraction of positions whose argmax agrees


def read_golden(path: str) -> list[Row]:
    """The rows of a golden file; a malformed line is a CheckpointError naming path:line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise CheckpointError(f"golden file {path!r}: {e.strerror or e}") from e
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            tokens = [int(t) for t in obj["tokens"]]
            logits = np.asarray(obj["logits"], np.float32) if "logits" in obj else None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}:{i}: not a golden row {{prompt, tokens, logits}} ({e!r})") from e
        if not tokens or (logits is not None and (logits.ndim != 2 or logits.shape[0] != len(tokens))):
            raise CheckpointError(f"{path}:{i}: logits must be [len(tokens), V]; got {None if logits is None else logits.shape} "
                                  f"for {len(tokens)} tokens")
        rows.append(Row(str(obj.get("prompt", "")), tokens, logits))
    if not rows:
        raise CheckpointError(f"golden file {path!r} has no rows")
    return rows


def split_prompts(prompts: str) -> list[str]:
    """The prompts of `--prompts "a;b"`; an empty one (";;", a trailing ';') is an error, since a
    row without tokens has no logits to compare."""
    parts = prompts.split(";")
    for i, p in enumerate(parts, 1):
        if not p.strip():
            raise CheckpointError(f"--prompts: prompt {i} of {len(parts)} is empty; separate non-empty prompts with ';'")
    return parts


def rows_from_prompts(prompts: list[str], tokenizer_name: str) -> tuple[list[Row], Any]:
    """Golden rows (tokens, no logits) for text prompts, tokenized as training tokenizes data: the
    runtime's tokenizers (runtime/data/tokenizers.py), bos first when the tokenizer has one. Also
    returns the tokenizer, to decode the next tokens. A tokenizer that cannot be loaded, or a
    prompt that tokenizes to nothing, is a CheckpointError naming it."""
    from distillc.runtime.data.tokenizers import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(tokenizer_name)
    except TokenizerError as e:
        raise CheckpointError(f"--tokenizer: {e}") from e
    rows = []
    for p in prompts:
        ids = [int(t) for t in tok.encode(p)]
        if tok.bos_id is not None:
            ids = [int(tok.bos_id)] + ids
        if not ids:
            raise CheckpointError(f"--prompts: {p!r} tokenizes to no tokens with {tokenizer_name!r}")
        rows.append(Row(p, ids, None))
    return rows, tok


def top_next(logits: np.ndarray, tokenizer: Any, k: int = 5) -> list[tuple[int, str, float]]:
    """The k most likely next tokens after the last position: id, decoded text and probability
    (the id too, since a lone byte of a multi-byte character decodes to U+FFFD)."""
    last = _log_softmax(logits[-1:])[0]
    ids = np.argsort(-last, kind="stable")[:k]
    return [(int(i), tokenizer.decode([int(i)]), float(np.exp(last[i]))) for i in ids]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(prompt: str, golden: np.ndarray, ours: np.ndarray) -> Compared:
    """KL(golden || ours) per position in float64 (over the golden's vocabulary: rows past it in
    ours are a padded embedding), max |difference| and top-1 agreement."""
    ours = ours[:, : golden.shape[1]]
    p, q = _log_softmax(golden), _log_softmax(ours)
    kl = (np.exp(p) * (p - q)).sum(-1)
    return Compared(prompt, float(kl.max()), float(np.abs(golden - ours).max()),
                    float((golden.argmax(-1) == ours.argmax(-1)).mean()))


def run_logits(checkpoint: str, rows: list[Row], *, model: Optional[ModelArch] = None, dtype: str = "float32",
               step: Optional[int] = None) -> list[np.ndarray]:
    """Our logits [T, V] float32 for each row's tokens."""
    from distillc.runtime.train import distributed
    from distillc.runtime.train.params import load_params

    side = resolve_source(checkpoint, step, model)
    side = side.model_copy(update=dict(role="teacher", weight_dtype=dtype, activation_dtype=dtype))
    vocab = side.arch.vocab_size
    for r in rows:
        if max(r.tokens) >= vocab or min(r.tokens) < 0:
            raise CheckpointError(f"prompt {r.prompt!r}: token id {max(r.tokens)} outside {side.arch.name}'s "
                                  f"vocabulary of {vocab}")
        if r.logits is not None and r.logits.shape[1] > vocab:
            raise CheckpointError(f"prompt {r.prompt!r}: golden logits have {r.logits.shape[1]} columns, "
                                  f"{side.arch.name} has {vocab}")
    mesh = distributed.make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    graphdef, params = load_params(side, True, mesh)
    model_ = nnx.merge(graphdef, params)
    forward = nnx.jit(lambda m, t: m(t).logits)
    return [np.asarray(forward(model_, jnp.asarray([r.tokens], jnp.int32))[0], np.float32) for r in rows]


def write_rows(path: str, rows: list[Row], logits: list[np.ndarray]) -> None:
    """Our logits in MaxText's golden format, written atomically (a temporary file renamed)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w") as f:
        for r, x in zip(rows, logits):
            obj: dict[str, Any] = {"prompt": r.prompt, "tokens": r.tokens, "logits": [[float(v) for v in row] for row in x]}
            f.write(json.dumps(obj) + "\n")
    os.replace(tmp, target)
