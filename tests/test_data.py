"""Data pipeline: lazy sources, packing with segments, determinism, per-process files, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import CorpusError, expand, held_out, read_documents
from distillc.runtime.data.pipeline import DataError, DataPipeline, Shard
from distillc.runtime.data.tokenizers import TokenizerError, load_tokenizer


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


def docs(source, **kw):
    return [d for f in expand(source) for d in read_documents(f, **kw)]


def jsonl(path, texts, opener=open):
    with opener(path, "wt") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "id": 1}) + "\n")


class TestCorpus:
    def test_builtin_is_pythons_pydoc_topics(self):
        from pydoc_data.topics import topics

        got = docs("builtin:pydoc_topics")
        assert got == [topics[k] for k in sorted(topics)]
        assert sum(len(d) for d in got) > 400_000

    def test_unknown_builtin(self):
        with pytest.raises(CorpusError, match="unknown builtin"):
            expand("builtin:nope")

    def test_txt_jsonl_gz_dir_glob_and_list(self, tmp_path):
        import gzip

        (tmp_path / "a.txt").write_text("hello\nworld\n\n\nsecond paragraph\n")
        (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
        jsonl(tmp_path / "c.jsonl.gz", ["three"], gzip.open)
        (tmp_path / "notes.md").write_text("not a corpus file")
        assert docs(str(tmp_path / "a.txt")) == ["hello\nworld", "second paragraph"]
        assert list(read_documents(str(tmp_path / "a.txt"), start=1)) == ["second paragraph"]
        assert docs(str(tmp_path / "b.jsonl")) == ["one", "two"]
        assert docs(str(tmp_path)) == ["hello\nworld", "second paragraph", "one", "two", "three"]
        assert docs(str(tmp_path / "*.jsonl*")) == ["one", "two", "three"]
        assert docs([str(tmp_path / "c.jsonl.gz"), str(tmp_path / "a.txt")]) == ["three", "hello\nworld", "second paragraph"]

    def test_reading_starts_at_a_document_without_parsing_the_ones_before(self, tmp_path):
        (tmp_path / "d.jsonl").write_text("{broken\n" + json.dumps({"text": "kept"}) + "\n")
        assert list(read_documents(str(tmp_path / "d.jsonl"), start=1)) == ["kept"]

    def test_text_field(self, tmp_path):
        (tmp_path / "e.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
        assert docs(str(tmp_path / "e.jsonl"), text_field="content") == ["x"]
        with pytest.raises(CorpusError, match=r"e\.jsonl:1: .*data.text_field"):
            docs(str(tmp_path / "e.jsonl"))

    def test_bad_jsonl_names_the_line(self, tmp_path):
        (tmp_path / "c.jsonl").write_text(json.dumps({"text": "ok"}) + "\n{not json}\n")
        with pytest.raises(CorpusError, match=r"c\.jsonl:2"):
            docs(str(tmp_path / "c.jsonl"))

    def test_corrupt_gzip_names_the_file(self, tmp_path):
        import gzip

        jsonl(tmp_path / "f.jsonl.gz", ["a" * 1000] * 50, gzip.open)
        data = (tmp_path / "f.jsonl.gz").read_bytes()
        (tmp_path / "f.jsonl.gz").write_bytes(data[: len(data) // 2])
        with pytest.raises(CorpusError, match=r"f\.jsonl\.gz: cannot read"):
            docs(str(tmp_path / "f.jsonl.gz"))

    def test_missing_path_and_empty_glob(self, tmp_path):
        with pytest.raises(CorpusError, match="does not exist"):
            expand(str(tmp_path / "nope.txt"))
        with pytest.raises(CorpusError, match="matches no"):
            expand(str(tmp_path / "*.jsonl"))

    def test_held_out_by_hash_is_deterministic_and_near_the_fraction(self):
        texts = [f"document {i}" for i in range(4000)]
        picked = [t for t in texts if held_out(t, 0.1)]
        assert picked == [t for t in texts if held_out(t, 0.1)]
        assert 300 < len(picked) < 500
        assert not any(held_out(t, 0.0) for t in texts)


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

    @pytest.mark.parametrize("name, content, expect", [
        ("t.model", b"\x00\x01not a protobuf", "not a readable sentencepiece model"),
        ("t.model", b"aGVsbG8= 0\nd29ybGQ= x\n", "line 2 is not 'base64-token rank'"),
        ("tokenizer.json", b"{}", "not a readable Hugging Face tokenizer.json"),
    ])
    def test_corrupt_tokenizer_file_is_one_clear_error(self, tmp_path, name, content, expect):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(TokenizerError, match=expect):
            load_tokenizer(str(tmp_path / name))

    def test_tiktoken_model_file(self, tmp_path):
        """Llama 3's tokenizer.model is a tiktoken ranks file, not sentencepiece: read as tiktoken,
        with the 256 special tokens after the ranks and <|begin_of_text|> / <|end_of_text|>."""
        import base64

        ranks = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello", b" w", b" wo"]
        (tmp_path / "tokenizer.model").write_bytes(
            b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ranks)))
        tok = load_tokenizer(str(tmp_path / "tokenizer.model"))
        assert tok.vocab_size == len(ranks) + 256
        assert (tok.bos_id, tok.eos_id) == (len(ranks), len(ranks) + 1)
        ids = tok.encode("hello world <|eot_id|>")
        assert ids[0] == ranks.index(b"hello") and ids[1] == ranks.index(b" wo")
        assert tok.decode(ids) == "hello world <|eot_id|>"  # a special token's text stays text
        assert max(ids) < len(ranks)


@pytest.fixture
def tiny_corpus_window(monkeypatch):
    """A shuffle window for corpora of a few hundred bytes: the default holds 2^20 tokens, which a
    tiny corpus fills only by cycling through it thousands of times (a minute of reading before the
    first batch), and what these tests check does not depend on the window's size."""
    from distillc.runtime.data import pipeline

    monkeypatch.setattr(pipeline, "SHUFFLE_WINDOW_TOKENS", 1 << 11)


def rows_of(batches):
    return [{k: b[k][i] for k in b} for b in batches for i in range(len(b["inputs"]))]


class TestPipeline:
    def test_rows_labels_segments_positions(self, pipe):
        b = next(pipe.train_iterator())
        for k in ("inputs", "labels", "segment_ids", "positions", "mask"):
            assert b[k].shape == (8, 32), k
        assert b["mask"].dtype == np.bool_
        for r in rows_of([b]):
            seg, pos = r["segment_ids"], r["positions"]
            assert (r["mask"] == (seg > 0)).all()
            same = seg[1:] == seg[:-1]
            # inside a document the next input is this label, and positions count up by one
            np.testing.assert_array_equal(r["labels"][:-1][same], r["inputs"][1:][same])
            np.testing.assert_array_equal(pos[1:][same], pos[:-1][same] + 1)
            assert (pos[1:][~same & (seg[1:] > 0)] == 0).all()  # a new document starts at position 0

    def test_documents_get_their_own_segments(self, tmp_path, tiny_corpus_window):
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abc", "defgh", "ij"] * 30))
        p = DataPipeline(cfg(source=str(tmp_path / "d.jsonl"), eval_fraction=0.0, seq_len=16, global_batch_size=2))
        rows = rows_of([next(p.train_iterator()) for _ in range(3)])
        assert all(r["mask"].all() for r in rows)  # packed back to back: no padding
        r = rows[0]
        text = bytes(int(i) for i in r["inputs"]).decode()
        starts = [i for i in range(16) if r["positions"][i] == 0]
        assert r["segment_ids"][starts[-1]] == len(starts)
        assert "abc\ndefgh\n" in text  # "abc\n\n": the blank line ends a document; its last byte is a label only

    def test_same_seed_same_batches_other_seed_differs(self, pipe):
        a = take(pipe.train_iterator(), 5)
        b = take(DataPipeline(cfg()).train_iterator(), 5)
        c = take(DataPipeline(cfg(shuffle_seed=1)).train_iterator(), 5)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
        assert any((x["inputs"] != z["inputs"]).any() for x, z in zip(a, c))

    @pytest.mark.parametrize("n", [3, 700, 2100])
    def test_iterator_state_resumes_exactly(self, n):
        """Through JSON, as in the checkpoint; inside the first shuffle window, and past an epoch."""
        it = DataPipeline(cfg()).train_iterator()
        take(it, n)
        state = json.loads(json.dumps(it.get_state()))
        expected = take(it, 4)
        fresh = DataPipeline(cfg()).train_iterator()
        fresh.set_state(state)
        for x, y in zip(expected, take(fresh, 4)):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])

    def test_resume_under_another_layout_is_an_error(self):
        it = DataPipeline(cfg()).train_iterator()
        take(it, 2)
        state = it.get_state()
        with pytest.raises(DataError, match="same number of processes"):
            DataPipeline(cfg(), Shard(0, 2)).train_iterator().set_state(state)
        with pytest.raises(DataError, match="older distillc"):
            DataPipeline(cfg()).train_iterator().set_state({"next_index": 3})

    def test_processes_read_their_own_files(self, tmp_path, tiny_corpus_window):
        """Each epoch the files are permuted (seeded) and dealt out: disjoint per process, all covered."""
        for i in range(5):
            jsonl(tmp_path / f"part{i}.jsonl", [f"file {i} doc {j} " * 3 for j in range(20)])
        src = str(tmp_path / "*.jsonl")
        for epoch in range(3):
            parts = []
            for s in range(2):
                p = DataPipeline(cfg(source=src, eval_fraction=0.0, global_batch_size=4), Shard(s, 2))
                parts.append(p.train_dataset_documents()[0].order(epoch))
            assert sorted(parts[0] + parts[1]) == sorted(expand(src)) and not set(parts[0]) & set(parts[1])
        p = DataPipeline(cfg(source=src, eval_fraction=0.0, global_batch_size=4), Shard(1, 2))
        text = bytes(int(t) for t in next(p.train_iterator())["inputs"].reshape(-1)).decode()
        assert any(f"file {i} " in text for i in range(5))

    def test_fewer_files_than_processes_split_documents(self, tmp_path, tiny_corpus_window):
        jsonl(tmp_path / "one.jsonl", [f"doc{j:03d}." for j in range(40)])
        texts = []
        for s in range(2):
            p = DataPipeline(cfg(source=str(tmp_path / "one.jsonl"), eval_fraction=0.0, global_batch_size=2,
                                 seq_len=64, shuffle_seed=3), Shard(s, 2))
            texts.append("".join(bytes(int(t) for t in b["inputs"].reshape(-1)).decode()
                                 for b in take(p.train_iterator(), 4)))
        even = {f"doc{j:03d}" for j in range(0, 40, 2)}
        assert any(d in texts[0] for d in even) and not any(d in texts[1] for d in even)

    def test_held_out_documents_never_train(self, tmp_path, tiny_corpus_window):
        import re

        jsonl(tmp_path / "d.jsonl", [f"<doc{i:04d}>" for i in range(300)])
        p = DataPipeline(cfg(source=str(tmp_path / "d.jsonl"), eval_fraction=0.3, global_batch_size=4))

        def found(rows):  # the documents whose start and number lie in one segment of a row
            names = set()
            for r in rows:
                for seg in set(r["segment_ids"][r["mask"]].tolist()):
                    text = bytes(int(t) for t in r["inputs"][r["segment_ids"] == seg]).decode()
                    names |= set(re.findall(r"^<doc(\d{4})>", text))
            return names

        held = found(p.eval_rows())
        train = found(rows_of(take(p.train_iterator(), 200)))
        assert held <= {f"{i:04d}" for i in range(300) if held_out(f"<doc{i:04d}>", 0.3)}
        assert len(held) > 50 and len(train) > 150 and not held & train

    def test_eval_batches_cover_held_out_once_with_masked_padding(self, pipe):
        batches = list(pipe.eval_batches())
        assert len(batches) == pipe.eval_batch_count()
        assert sum(int(b["mask"].any(axis=1).sum()) for b in batches) == len(pipe.eval_rows())
        limited = list(pipe.eval_batches(2))
        assert len(limited) == 2
        np.testing.assert_array_equal(limited[1]["inputs"], batches[1]["inputs"])

    def test_eval_tokens_bound_the_held_out_set(self):
        p = DataPipeline(cfg(eval_tokens=1000))
        rows = p.eval_rows()
        assert 1000 <= sum(int(r["mask"].sum()) for r in rows) < 1000 + 32

    def test_eval_source(self, tmp_path):
        jsonl(tmp_path / "ev.jsonl", ["held out text " * 10])
        p = DataPipeline(cfg(eval_source=str(tmp_path / "ev.jsonl")))
        text = bytes(int(t) for t in p.eval_rows()[0]["inputs"]).decode()
        assert text.startswith("held out text")

    def test_mixture_follows_the_weights(self, tmp_path):
        jsonl(tmp_path / "a.jsonl", ["a" * 30] * 50)
        jsonl(tmp_path / "b.jsonl", ["b" * 30] * 50)
        mix = [{"source": str(tmp_path / "a.jsonl"), "weight": 3.0}, {"source": str(tmp_path / "b.jsonl"), "weight": 1.0}]
        p = DataPipeline(cfg(sources=mix, eval_fraction=0.0, global_batch_size=8))
        tokens = np.concatenate([b["inputs"].reshape(-1) for b in take(p.train_iterator(), 20)])
        share = (tokens == ord("a")).sum() / ((tokens == ord("a")).sum() + (tokens == ord("b")).sum())
        assert 0.68 < share < 0.82

    def test_unpacked_documents_pad_and_mask(self):
        p = DataPipeline(cfg(packing=False, seq_len=128))
        rows = rows_of(take(p.train_iterator(), 20))
        assert any(not r["mask"].all() for r in rows)
        for r in rows:
            m = r["mask"]
            assert not (np.diff(m.astype(int)) > 0).any()  # valid labels form a prefix
            assert (r["labels"][~m] == 0).all() and set(np.unique(r["segment_ids"])) <= {0, 1}

    def test_unpacked_resume(self):
        it = DataPipeline(cfg(packing=False, seq_len=128)).train_iterator()
        take(it, 9)
        state = json.loads(json.dumps(it.get_state()))
        expected = take(it, 3)
        fresh = DataPipeline(cfg(packing=False, seq_len=128)).train_iterator()
        fresh.set_state(state)
        for x, y in zip(expected, take(fresh, 3)):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])

    def test_batch_must_split_over_shards(self):
        with pytest.raises(DataError, match="does not divide"):
            DataPipeline(cfg(global_batch_size=6), Shard(0, 4))

    def test_everything_held_out_is_a_data_error(self, tmp_path):
        (tmp_path / "empty.jsonl").write_text("\n")
        with pytest.raises(DataError, match="no documents"):
            next(DataPipeline(cfg(source=str(tmp_path / "empty.jsonl"))).train_iterator())
