"""An exact, faster encoder for byte-level BPE tokenizer.json files whose merges follow their ids.

The `tokenizers` library encodes the bench's BPE at 0.3-0.8 M tokens per CPU-second here, tiktoken's
BPE at 2.2-2.6 M (docs/data.md, Throughput). tiktoken merges, at each step, the adjacent pair whose concatenation
is the token of lowest id (leftmost on a tie); the HF BPE model merges the adjacent pair of lowest
merge rank (leftmost on a tie). `rank_encoder` builds a tiktoken Encoding from a tokenizer.json
only where the two give the same ids, and returns None (use the tokenizers library) otherwise.
The conditions, all checked on the file:

1. byte-level BPE: no normalizer; no dropout, unk token, subword prefix/suffix or byte fallback;
   the pre-tokenizer is ByteLevel with its GPT-2 regex (GPT-2 style), or Split(regex, Isolated)
   then ByteLevel without regex (Llama 3 style), without add_prefix_space (tiktoken splits with the
   same regex); every byte that UTF-8 text can hold is a token;
2. each merge a + b is made of tokens, a and b have lower ids than a + b, and along the merge list
   the results' ids never decrease (the lowest-rank merge is a lowest-id one; a merge only makes
   pairs of higher id);
3. the merges rebuild every token (but the added tokens) from its bytes;
4. where two different merges giving one token can overlap ([a, b, z], a + b == b + z), the left
   one ranks first (both algorithms then take the left one).

Why that suffices: by (3), two adjacent HF parts x, y never concatenate to a token unless (x, y) is
a merge (the merges confined to x + y's bytes are the ones the merges do on those bytes alone, which
end in the token, not in [x, y]); so both algorithms see the same candidate pairs, and by (2) both
merge the candidates of the lowest id k first, and no merge makes a new candidate of id k; within
id k the candidates are disjoint, or overlap as equal pairs (both go left to right) or as in (4).
So they take the same steps. Trained vocabularies (the tokenizers library's BpeTrainer) and files
converted from tiktoken ranks usually meet (1)-(4); a file that does not is encoded by the
tokenizers library, as before (HFTokenizer.slow_reason says why).

A document holding an added token's text (`<|endoftext|>` ...) is encoded by the tokenizers
library, which turns it into the added token's id; so is one tiktoken refuses (a lone surrogate).
tests/test_rank_bpe.py compares the ids with the tokenizers library's on real text, unicode and
whitespace edge cases and every code point.
"""

from __future__ import annotations

import re
from typing import Any, Optional

NEVER_IN_UTF8 = frozenset([0xC0, 0xC1, *range(0xF5, 0x100)])  # bytes no UTF-8 text holds: need not be tokens
# the pre-tokenizer regex of ByteLevel(use_regex=True) (tokenizers, pre_tokenizers/byte_level.rs)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def byte_decoder() -> dict[str, int]:
    """ByteLevel's printable stand-in character -> the byte it stands for (GPT-2's bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _pattern(pre: Optional[dict[str, Any]]) -> Optional[str]:
    """The split regex tiktoken needs for this pre-tokenizer, or None where it has no exact equivalent."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space", False) else None
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, level = pre["pretokenizers"]
        if (split.get("type") == "Split" and "Regex" in (split.get("pattern") or {})
                and split.get("behavior") == "Isolated" and not split.get("invert", False)
                and level.get("type") == "ByteLevel" and not level.get("use_regex", True)
                and not level.get("add_prefix_space", False)):
            return str(split["pattern"]["Regex"])
    return None


def _pair(merge: Any) -> tuple[str, str]:
    """A merges entry: "a b" (older files) or ["a", "b"]."""
    if isinstance(merge, str):
        a, _, b = merge.partition(" ")
        return a, b
    return str(merge[0]), str(merge[1])


def ranks_match(vocab: dict[str, int], merges: list[tuple[str, str]], added: frozenset[str] = frozenset()) -> Optional[str]:
    """None when tiktoken's lowest-id merging gives the same ids as these merges (the conditions in the
    module docstring), else why not. `added`: the (byte-level) added tokens, which need not be rebuilt
    (a document holding one is not encoded by tiktoken)."""
    rank = {m: r for r, m in enumerate(merges)}
    if len(rank) != len(merges):
        return "a merge is listed twice"
    last = -1
    for r, (a, b) in enumerate(merges):
        t = vocab.get(a + b)
        if t is None or a not in vocab or b not in vocab:
            return f"merge {a!r} + {b!r} is not made of tokens"
        if vocab[a] >= t or vocab[b] >= t:
            return f"merge {a!r} + {b!r} has a part with a higher id than its result"
        if t < last:
            return f"merge {a!r} + {b!r} comes after a merge with a higher result id"
        last = t
        # an overlap [a, b, z] with a + b == b + z: the left pair must rank first
        z = (a + b)[len(b):]
        if (a + b).startswith(b) and (b, z) != (a, b) and rank.get((b, z), r) < r:
            return f"token {a + b!r}: merge {b!r} + {z!r} ranks before the overlapping {a!r} + {b!r}"
    from tokenizers.models import BPE

    model = BPE(vocab=vocab, merges=merges, ignore_merges=False)  # the merges alone, as the library does them
    for tok in vocab:
        if len(tok) > 1 and tok not in added and [t.value for t in model.tokenize(tok)] != [tok]:
            return f"the merges do not rebuild token {tok!r} from its bytes"
    return None


def rank_encoder(spec: dict[str, Any]) -> tuple[Optional[Any], str]:
    """(a tiktoken Encoding giving the same ids as this tokenizer.json, or None; why not). `spec` is
    the parsed tokenizer.json."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None, "not a BPE model"
    if spec.get("normalizer"):
        return None, "it has a normalizer"
    if model.get("dropout") or model.get("unk_token") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("byte_fallback"):
        return None, "its BPE model uses dropout, an unk token, subword affixes or byte fallback"
    pattern = _pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return None, "its pre-tokenizer has no tiktoken equivalent"
    decode = byte_decoder()
    vocab: dict[str, int] = model.get("vocab") or {}
    if any(ch not in decode for tok in vocab for ch in tok):
        return None, "a token is not byte-level"
    if any(ch not in vocab for ch, b in decode.items() if b not in NEVER_IN_UTF8):
        return None, "a byte that UTF-8 text can hold is not a token"
    encode = {b: ch for ch, b in decode.items()}
    added = frozenset("".join(encode[b] for b in str(t["content"]).encode("utf-8")) for t in spec.get("added_tokens") or [])
    why = ranks_match(vocab, [_pair(m) for m in model.get("merges") or []], added)
    if why is not None:
        return None, why
    import tiktoken

    ranks = {bytes(decode[ch] for ch in tok): tid for tok, tid in vocab.items()}
    try:
        enc = tiktoken.Encoding("distillc-rank-bpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    except Exception as e:  # a regex tiktoken's engine cannot compile
        return None, f"tiktoken cannot use it ({e})"
    return enc, ""


def added_token_regex(spec: dict[str, Any]) -> Optional[re.Pattern[str]]:
    """Matches any added token's text (the tokenizers library turns those into their ids inside a
    document; such documents go to it), or None when there are none."""
    contents = sorted({str(t["content"]) for t in spec.get("added_tokens") or [] if t.get("content")}, key=len,
                      reverse=True)
    return re.compile("|".join(map(re.escape, contents))) if contents else None
