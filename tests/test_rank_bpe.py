"""The tiktoken fast path for byte-level BPE tokenizer.json files (runtime/data/rank_bpe.py): taken only
where exact, and then the same ids as the tokenizers library on real text, edge cases and every code
point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distillc.runtime.data.rank_bpe import GPT2_PATTERN, byte_decoder, rank_encoder, ranks_match
from distillc.runtime.data.tokenizers import _LLAMA3_PATTERN, HFTokenizer

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n", "a", " a", "a ", "  a  b   c    ", "\t\tx\t", "x\r\ny\r\n\r\n", "\n \n  \n",
    "trailing   ", "   leading", "It's, I'M, we've, they'll, she'd, 'tis, ''s", "don't 's 't 're 'RE",
    "x=1; y = [1,2,3]\n    return f(x)  # comment\n\tdef g():\n\t\tpass", "1234567 12,345.67 ٣٤٥ ⅫⅢ ²³ ½",
    "naïve café résumé Ångström", "e\u0301 a\u0308 n\u0303 (combining marks)", "日本語のテキスト、中文文本。한국어",
    "emoji 👩‍👩‍👧‍👦 🇫🇷 ✨🙂 👍🏽", "RTL العربية עברית", "non\u00a0breaking\u2003em\u3000ideographic\u2028line\u2029para",
    "zero\u200bwidth\u200djoiner\ufeffbom", "control \x00\x01\x07\x1b[31m\x7f chars", "<|endoftext|> inside text",
    "tabs\tand\u000bvertical\u000cform", "a" * 3000, " " * 500 + "x", "ab" * 700, "\U0010FFFF\U000E0001 planes",
    "Ⅻ ǅungla ǈ titlecase ΣΑΣ σας", "mixed123abc 123abc abc123 __init__ --flag=val", "...!!!???,,,;;;",
]


def _train(tmp_path, pre_tokenizer, name):
    """A byte-level BPE trained by the tokenizers library on real text (Python's pydoc topics)."""
    from pydoc_data.topics import topics
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if pre_tokenizer == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:  # Llama 3's form: its regex, then bytes
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([topics[k] for k in sorted(topics)],
                            trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path / f"{name}.json"
    tok.save(str(path))
    return str(path), tok


@pytest.fixture(scope="module", params=["gpt2", "llama3"])
def trained(request, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("bpe"), request.param, request.param)


def _reference(tok, texts):
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def _spec(vocab, merges, **model):
    return {"normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                                  "use_regex": True},
            "added_tokens": [], "model": {"type": "BPE", "vocab": vocab, "merges": merges, **model}}


def _bytes_vocab():
    return {ch: i for i, ch in enumerate(sorted(byte_decoder(), key=lambda c: byte_decoder()[c]))}


class TestExactOnRealText:
    def test_trained_vocabularies_take_the_fast_path(self, trained):
        path, _ = trained
        tok = HFTokenizer(path)
        assert tok.fast, tok.slow_reason

    def test_same_ids_as_the_tokenizers_library(self, trained):
        from pydoc_data.topics import topics

        path, ref = trained
        texts = [topics[k] for k in sorted(topics)] + EDGE_CASES
        tok = HFTokenizer(path, threads=2)
        got = tok.encode_batch(texts)
        assert [g.tolist() for g in got] == _reference(ref, texts)
        assert [tok.encode(t).tolist() for t in EDGE_CASES] == _reference(ref, EDGE_CASES)

    def test_added_token_text_is_the_added_token(self, trained):
        path, ref = trained
        tok = HFTokenizer(path)
        ids = tok.encode("a<|endoftext|>b").tolist()
        assert ids == ref.encode("a<|endoftext|>b", add_special_tokens=False).ids and ref.token_to_id("<|endoftext|>") in ids

    @staticmethod
    def _code_points(path, ref, step):
        """Code points (surrogates aside; below U+3100 all, above every `step`-th) alone, after a letter,
        a space and a digit, and doubled: the two regex engines and the byte mapping agree on them."""
        chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and (c < 0x3100 or c % step == 0)]
        texts = ["".join(f"{c} a{c}{c} 1{c}\n{c}" for c in chars[i : i + 2048]) for i in range(0, len(chars), 2048)]
        got = HFTokenizer(path, threads=2).encode_batch(texts)
        want = [np.asarray(e.ids) for e in ref.encode_batch_fast(texts, add_special_tokens=False)]
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))

    def test_code_points(self, trained):
        self._code_points(*trained, step=101)

    @pytest.mark.slow  # all 1.1 M code points through the tokenizers library: 1-2 minutes here
    def test_every_code_point(self, trained):
        self._code_points(*trained, step=1)


class TestWhenNotExact:
    """Each condition of rank_bpe.py, failing and passing: a file that fails one is not encoded by tiktoken."""

    def test_unreachable_token(self):
        # merges y+z, x+y, xy+z: the merges end "xyz" as [x, yz]; tiktoken would join x + yz into "xyz"
        v = {**_bytes_vocab()}
        v.update({"yz": 256, "xy": 257, "xyz": 258})
        why = ranks_match(v, [("y", "z"), ("x", "y"), ("xy", "z")])
        assert why is not None and "rebuild token 'xyz'" in why
        # with x + yz a merge the merges rebuild it: exact
        assert ranks_match(v, [("y", "z"), ("x", "y"), ("x", "yz"), ("xy", "z")]) is None

    def test_unreachable_token_really_differs(self):
        import tiktoken
        from tokenizers import Tokenizer

        v = {**_bytes_vocab(), "yz": 256, "xy": 257, "xyz": 258}
        spec = _spec(v, [["y", "z"], ["x", "y"], ["xy", "z"]])
        assert rank_encoder(spec)[0] is None
        ranks = {bytes(byte_decoder()[c] for c in t): i for t, i in v.items()}
        fast = tiktoken.Encoding("t", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        hf = Tokenizer.from_str(json.dumps(spec))
        assert hf.encode("xyz", add_special_tokens=False).ids == [v["x"], v["yz"]] != fast.encode_ordinary("xyz")

    def test_merge_order_against_ids(self):
        v = {**_bytes_vocab(), "ab": 256, "cd": 257}
        assert "higher result id" in ranks_match(v, [("c", "d"), ("a", "b")])
        assert ranks_match(v, [("a", "b"), ("c", "d")]) is None

    def test_part_with_higher_id(self):
        v = {**_bytes_vocab(), "abc": 256, "bc": 257}
        assert "higher id than its result" in ranks_match(v, [("a", "bc"), ("b", "c")])

    def test_overlapping_merges_rank_left_first(self):
        # "aaa" = a + aa = aa + a: in [a, aa, a] HF merges the lower rank, tiktoken the left pair, and
        # [aa, a, aa] wants the other order: with both merges no order is safe
        v = {**_bytes_vocab(), "aa": 256, "aaa": 257}
        assert "overlapping" in ranks_match(v, [("a", "a"), ("aa", "a"), ("a", "aa")])
        assert "overlapping" in ranks_match(v, [("a", "a"), ("a", "aa"), ("aa", "a")])
        assert ranks_match(v, [("a", "a"), ("aa", "a")]) is None
        # "aba" = ab + a = a + ba: only [ab, a, ba] overlaps, so ab + a must rank first
        v = {**_bytes_vocab(), "ab": 256, "ba": 257, "aba": 258}
        assert "overlapping" in ranks_match(v, [("a", "b"), ("b", "a"), ("a", "ba"), ("ab", "a")])
        assert ranks_match(v, [("a", "b"), ("b", "a"), ("ab", "a"), ("a", "ba")]) is None

    @pytest.mark.parametrize("change, why", [
        ({"normalizer": {"type": "NFC"}}, "normalizer"),
        ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}}, "pre-tokenizer"),
        ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}}, "pre-tokenizer"),
    ])
    def test_other_pipelines(self, change, why):
        spec = {**_spec({**_bytes_vocab(), "ab": 256}, [["a", "b"]]), **change}
        assert rank_encoder({**_spec({**_bytes_vocab(), "ab": 256}, [["a", "b"]])})[0] is not None
        enc, reason = rank_encoder(spec)
        assert enc is None and why in reason

    def test_dropout_and_missing_bytes(self):
        v = {**_bytes_vocab(), "ab": 256}
        assert rank_encoder(_spec(v, [["a", "b"]], dropout=0.1))[0] is None
        del v["a"]
        assert "byte" in rank_encoder(_spec(v, []))[1]

    def test_slow_path_gives_the_library_ids(self, tmp_path):
        path, _ = _train(tmp_path, "gpt2", "t")
        spec = json.loads(open(path).read())
        spec["normalizer"] = {"type": "NFC"}
        tok = HFTokenizer(path, text=json.dumps(spec), threads=2)
        assert not tok.fast and "normalizer" in tok.slow_reason
        from tokenizers import Tokenizer

        texts = EDGE_CASES
        assert [t.tolist() for t in tok.encode_batch(texts)] == _reference(Tokenizer.from_str(json.dumps(spec)), texts)
        assert [tok.encode(t).tolist() for t in texts] == _reference(Tokenizer.from_str(json.dumps(spec)), texts)
