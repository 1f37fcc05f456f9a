"""Data pipeline: determinism, per-process shards, resumable iterator state, splits, masks, tokenizers."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import CorpusError, load_documents, tokenize
from distillc.runtime.data.pipeline import DataError, DataPipeline, Shard
from distillc.runtime.data.tokenizers import ByteTokenizer, TokenizerError, load_tokenizer


def cfg(**kw) -> DataConfig:
    base = dict(source="builtin:pydoc_topics", tokenizer="byte", seq_len=32, global_batch_size=8,
                eval_fraction=0.1, packing=True, shuffle_seed=0)
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def pipe() -> DataPipeline:
    return DataPipeline(cfg())


def take(it, n):
    return [next(it) for _ in range(n)]


class TestCorpus:
    def test_builtin_is_pythons_pydoc_topics(self):
        from pydoc_data.topics import topics

        docs = load_documents("builtin:pydoc_topics")
        assert docs == [topics[k] for k in sorted(topics)]
        assert sum(len(d) for d in docs) > 400_000

    def test_unknown_builtin(self):
        with pytest.raises(CorpusError, match="unknown builtin"):
            load_documents("builtin:nope")

    def test_txt_and_jsonl(self, tmp_path):
        (tmp_path / "a.txt").write_text("hello world")
        (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
        assert load_documents(str(tmp_path / "a.txt")) == ["hello world"]
        assert load_documents(str(tmp_path / "b.jsonl")) == ["one", "two"]
        assert load_documents(str(tmp_path)) == ["hello world", "one", "two"]

    def test_bad_jsonl_names_the_line(self, tmp_path):
        (tmp_path / "c.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{not json}\n")
        with pytest.raises(CorpusError, match=r"c\.jsonl:2"):
            load_documents(str(tmp_path / "c.jsonl"))

    def test_missing_path(self, tmp_path):
        with pytest.raises(CorpusError, match="does not exist"):
            load_documents(str(tmp_path / "nope.txt"))

    def test_contiguous_split(self):
        stream = tokenize(["abcd", "efgh"], ByteTokenizer())  # "abcd\n\nefgh": 10 tokens
        train, held = stream.split(0.3)
        assert len(train.tokens) == 7 and len(held.tokens) == 3
        np.testing.assert_array_equal(np.concatenate([train.tokens, held.tokens]), stream.tokens)
        assert list(train.doc_starts) == [0, 6] and list(held.doc_starts) == [0]


class TestTokenizers:
    def test_byte_roundtrip(self):
        tok = load_tokenizer("byte")
        text = "naïve café — Python"
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(text.encode())
        assert tok.decode(ids) == text

    def test_unknown_tokenizer(self):
        with pytest.raises(TokenizerError, match="unknown data.tokenizer"):
            load_tokenizer("gpt2")

    @pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece installed")
    def test_sentencepiece_missing_says_what_to_install(self, tmp_path):
        (tmp_path / "t.model").write_bytes(b"x")
        with pytest.raises(TokenizerError, match="pip install sentencepiece"):
            load_tokenizer(str(tmp_path / "t.model"))

    @pytest.mark.skipif(importlib.util.find_spec("tokenizers") is not None, reason="tokenizers installed")
    def test_hf_missing_says_what_to_install(self, tmp_path):
        (tmp_path / "tokenizer.json").write_text("{}")
        with pytest.raises(TokenizerError, match="pip install tokenizers"):
            load_tokenizer(str(tmp_path / "tokenizer.json"))


class TestPipeline:
    def test_labels_are_next_tokens_and_split_sizes(self, pipe):
        b = next(pipe.train_iterator())
        assert b["inputs"].shape == b["labels"].shape == b["mask"].shape == (8, 32)
        np.testing.assert_array_equal(b["labels"][:, :-1], b["inputs"][:, 1:])
        assert b["mask"].all()
        total = pipe.train_tokens + pipe.eval_tokens
        assert abs(pipe.eval_tokens / total - 0.1) < 1e-3

    def test_window_is_a_slice_of_the_train_stream(self, pipe):
        w = pipe.train_windows[5]
        stream = tokenize(load_documents("builtin:pydoc_topics"), ByteTokenizer()).tokens
        np.testing.assert_array_equal(w["inputs"], stream[5 * 32 : 6 * 32])
        np.testing.assert_array_equal(w["labels"], stream[5 * 32 + 1 : 6 * 32 + 1])

    def test_same_seed_same_batches_other_seed_differs(self, pipe):
        a = take(pipe.train_iterator(), 5)
        b = take(DataPipeline(cfg()).train_iterator(), 5)
        c = take(DataPipeline(cfg(shuffle_seed=1)).train_iterator(), 5)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
        assert any((x["inputs"] != z["inputs"]).any() for x, z in zip(a, c))

    @pytest.mark.parametrize("count", [2, 4])
    def test_shards_concatenate_to_the_global_batch(self, pipe, count):
        glob = take(pipe.train_iterator(), 6)
        shards = [take(DataPipeline(cfg(), Shard(i, count)).train_iterator(), 6) for i in range(count)]
        for step, g in enumerate(glob):
            for k in g:
                np.testing.assert_array_equal(np.concatenate([s[step][k] for s in shards]), g[k])

    def test_iterator_state_resumes_exactly(self, pipe):
        it = pipe.train_iterator()
        take(it, 7)
        state = it.get_state()
        assert state == {"next_index": 7}
        expected = take(it, 4)
        fresh = DataPipeline(cfg()).train_iterator()
        fresh.set_state(json.loads(json.dumps(state)))  # through JSON, as in the checkpoint
        for x, y in zip(expected, take(fresh, 4)):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])

    def test_state_means_the_same_for_another_shard_count(self, pipe):
        it = pipe.train_iterator()
        take(it, 3)
        state = it.get_state()
        g = next(it)
        parts = []
        for i in range(2):
            sh = DataPipeline(cfg(), Shard(i, 2)).train_iterator()
            sh.set_state(state)
            parts.append(next(sh)["inputs"])
        np.testing.assert_array_equal(np.concatenate(parts), g["inputs"])

    def test_each_epoch_is_a_permutation_and_epochs_differ(self):
        small = DataPipeline(cfg(seq_len=512, global_batch_size=4))
        n = len(small.train_windows)
        per_epoch = n // 4
        rows = [r for b in take(small.train_iterator(), 2 * per_epoch) for r in b["inputs"]]
        key = lambda r: r.tobytes()  # noqa: E731
        first = [key(r) for r in rows[: per_epoch * 4]]
        assert len(set(first)) == len(first)  # no window twice within an epoch
        second = [key(r) for r in rows[n : n + 40]]
        assert second != [key(r) for r in rows[:40]]

    def test_eval_batches_cover_held_out_once_with_masked_padding(self, pipe):
        batches = list(pipe.eval_batches())
        assert len(batches) == pipe.eval_batch_count()
        n = len(pipe.eval_windows)
        assert sum(int(b["mask"][:, 0].sum()) for b in batches) == n
        limited = list(pipe.eval_batches(2))
        assert len(limited) == 2
        np.testing.assert_array_equal(limited[1]["inputs"], batches[1]["inputs"])

    def test_unpacked_documents_pad_and_mask(self):
        p = DataPipeline(cfg(packing=False, seq_len=128))
        rows = [p.train_windows[i] for i in range(len(p.train_windows))]
        assert any(not r["mask"].all() for r in rows)
        for r in rows[:200]:
            m = r["mask"]
            # valid labels form a prefix; padded label ids are 0
            assert not (np.diff(m.astype(int)) > 0).any()
            assert (r["labels"][~m] == 0).all()

    def test_batch_must_split_over_shards(self):
        with pytest.raises(DataError, match="does not divide"):
            DataPipeline(cfg(global_batch_size=6), Shard(0, 4))

    def test_corpus_smaller_than_a_batch(self, tmp_path):
        (tmp_path / "tiny.txt").write_text("x" * 100)
        with pytest.raises(DataError, match="fewer than one global batch"):
            DataPipeline(cfg(source=str(tmp_path / "tiny.txt")))
