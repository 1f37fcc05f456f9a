"""The tokenizer a GGUF file carries, as a Hugging Face `tokenizers` tokenizer (tokenizer.json).

A GGUF has no tokenizer.json: llama.cpp stores the vocabulary (`tokenizer.ggml.tokens`), the BPE
merges, each token's type and the pre-tokenizer's name (`tokenizer.ggml.pre`) as metadata. For a
byte-level BPE (`tokenizer.ggml.model` = gpt2: GPT-2, SmolLM, Llama 3, Qwen, ...) that is the whole
tokenizer: BPE over the byte-to-unicode alphabet, the text split first by the pre-tokenizer's
regular expressions (the ones llama.cpp's llama-vocab.cpp applies for that name), control tokens
(type 3) matched whole as special tokens and user-defined ones (type 4) as added tokens, as
transformers' GGUF tokenizer converter does. So `data.tokenizer` may name the teacher's .gguf file
itself (runtime/data/tokenizers.py), or `write_tokenizer_json` saves it beside an exported model.

Sentencepiece vocabularies (`tokenizer.ggml.model` = llama: Llama 2, Mistral v0.1-0.3, Gemma) store
pieces (spelled with U+2581 for a space), a score per piece and each piece's type, and no merges.
llama.cpp's SPM tokenizer merges the adjacent pair whose union is the best-scored piece, which is BPE
with merges ranked by the union's score: built here as transformers' GGUF converter builds it
(integrations/gguf: `generate_merges` over the scores, byte fallback to the <0xNN> pieces, unknown
text to the unknown piece), with Llama's Metaspace (a space prepended to the text unless the file's
`tokenizer.ggml.add_space_prefix` is false) or, for the gemma architectures, Gemma's own (spaces
replaced, nothing prepended; merges ranked by the order of the pieces in the file, and pieces of
several spaces respelled with U+2581, as transformers does for Gemma's files).
"""

from __future__ import annotations

import json
from typing import Any

from distillc.runtime.convert import gguf_meta

_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_SPACE = "\u2581"
_CONTROL, _USER_DEFINED = 3, 4
# llama.cpp's pre-tokenizers (llama-vocab.cpp) by `tokenizer.ggml.pre`: GPT-2's split alone, or
# with every digit isolated first (smollm, starcoder, refact, codeshell, command-r), or Llama 3's
GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "jais")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3", "dbrx")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class GGUFTokenizerError(ValueError):
    """A GGUF file whose tokenizer cannot be built; the message names the file and the way out."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE vocabularies use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _pre_tokenizer(pre: str, path: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre in GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in LLAMA3_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise GGUFTokenizerError(f"{path}: tokenizer.ggml.pre {pre!r} is not built here (built: "
                             f"{', '.join(GPT2_PRE + DIGITS_PRE + LLAMA3_PRE)}); give data.tokenizer the model's "
                             "tokenizer.json instead")


def build_tokenizer(path: str) -> Any:
    """The `tokenizers.Tokenizer` the GGUF file at `path` (local, or gs:// read by ranges: the
    header only) describes (GGUFTokenizerError when it is neither a byte-level BPE nor a
    sentencepiece vocabulary this builds)."""
    try:
        header = gguf_meta.header(path, keep_arrays=_KEYS)
    except gguf_meta.GGUFError as e:
        raise GGUFTokenizerError(str(e)) from e
    try:
        return _build(path, header)
    except GGUFTokenizerError:
        raise
    except Exception as e:  # damaged metadata (ids for token strings, a merge of one piece): whatever
        # Python or the tokenizers library raises on it is a reason, never a traceback
        why = " ".join(str(e).split())
        why = why if len(why) <= 160 else why[:157] + "..."
        raise GGUFTokenizerError(f"{path}: its tokenizer metadata cannot be built ({type(e).__name__}: {why}): a "
                                 "damaged file; give data.tokenizer the model's tokenizer.json or tokenizer.model") from e


def _build(path: str, header: gguf_meta.GGUFHeader) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models

    m = header.metadata
    kind = m.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise GGUFTokenizerError(f"{path}: tokenizer.ggml.model {kind!r} is not built from GGUF here (gpt2, a "
                                 "byte-level BPE, and llama, a sentencepiece vocabulary, are); give data.tokenizer the "
                                 "model's tokenizer.model or tokenizer.json")
    tokens: list[str] = list(m.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise GGUFTokenizerError(f"{path}: no tokenizer.ggml.tokens")
    types: list[int] = list(m.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    if kind == "llama":
        return _sentencepiece(header, tokens, types)
    spelled = bytes_to_unicode()
    alphabet = set(spelled.values())
    vocab = {t if set(t) <= alphabet else "".join(spelled[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)}
    merges = [tuple(x.split(" ", 1)) for x in m.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(str(m.get("tokenizer.ggml.pre", "default")), path)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == _USER_DEFINED and t in vocab])
    return tok


def spm_merges(vocab: dict[str, int], ranks: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges a sentencepiece vocabulary implies (transformers' `generate_merges`): every split of
    each piece into two pieces of the vocabulary, best-ranked union first (then shorter left, right)."""
    merges: list[tuple[str, str, float]] = []
    for piece, rank in ranks.items():
        local = [(piece[:i], piece[i:], rank) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges.sort(key=lambda x: (x[2], len(x[0]), len(x[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _sentencepiece(header: gguf_meta.GGUFHeader, tokens: list[str], types: list[int]) -> Any:
    """The sentencepiece vocabulary of a GGUF (tokenizer.ggml.model llama) as a `tokenizers` BPE (see
    the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    m = header.metadata
    gemma = header.architecture in gguf_meta.GEMMAS
    if gemma:
        tokens = [_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    if m.get("tokenizer.ggml.merges"):
        merges = [tuple(x.split(" ", 1)) for x in m["tokenizer.ggml.merges"]]
    else:
        scores: list[float] = list(m.get("tokenizer.ggml.scores") or [])
        if not gemma and len(scores) != len(tokens):
            raise GGUFTokenizerError(f"{header.path}: a sentencepiece vocabulary without a score per piece "
                                     "(tokenizer.ggml.scores)")
        ranks = {t: -float(i) for i, t in enumerate(tokens)} if gemma else dict(zip(tokens, map(float, scores)))
        merges = spm_merges(vocab, ranks)
    unk = m.get("tokenizer.ggml.unknown_token_id")
    unk_token = tokens[int(unk)] if gemma and unk is not None and 0 <= int(unk) < len(tokens) else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, unk_token=unk_token))
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tok.normalizer = normalizers.Replace(" ", _SPACE)
        tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    else:
        prefix = bool(m.get("tokenizer.ggml.add_space_prefix", True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first" if prefix else "never",
                                                     split=False)
        steps += [decoders.Strip(content=" ", left=1)] if prefix else []
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])
    return tok


def tokenizer_json(path: str) -> str:
    """tokenizer.json's text for the GGUF file at `path`."""
    return str(build_tokenizer(path).to_str())


def write_tokenizer_json(path: str, out: str) -> None:
    """Writes the GGUF file's tokenizer to `out` as a tokenizer.json (pretty-printed)."""
    with open(out, "w", encoding="utf-8") as f:
        json.dump(json.loads(tokenizer_json(path)), f, ensure_ascii=False, indent=1)
        f.write("\n")
