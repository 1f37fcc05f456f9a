"""`distillc data prepare` and prepared / ArrayRecord sources: the rows equal the streaming pipeline's,
a killed prepare resumes to the same bytes, changed settings and damaged shards are clear errors,
training from prepared rows resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import CorpusError, expand, read_documents
from distillc.runtime.data.pipeline import DataError, DataPipeline, Shard
from distillc.runtime.data.prepared import Prepared, PreparedError, prepare, run_prepare

ROWS_PER_SHARD = 1000


def cfg(**kw) -> DataConfig:
    base = dict(source="builtin:pydoc_topics", tokenizer="byte", seq_len=32, global_batch_size=8,
                eval_fraction=0.1, packing=True, shuffle_seed=0)
    base.update(kw)
    return DataConfig(**base)


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "p"
    prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet)
    return out


def shards(path: Path) -> dict[str, str]:
    m = json.loads((path / "manifest.json").read_text())
    return {e["file"]: e["sha256"] for s in m["splits"].values() for e in s["shards"]}


def write_arecord(path: Path, records: list[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    w = ArrayRecordWriter(str(path), "group_size:1")
    for r in records:
        w.write(r)
    w.close()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class TestArrayRecordSources:
    def test_text_json_and_tokens_records(self, tmp_path):
        f = tmp_path / "a.arecord"
        write_arecord(f, [b"plain text", json.dumps({"text": "json text"}).encode(),
                          json.dumps({"tokens": [5, 6, 7]}).encode()])
        got = list(read_documents(str(f)))
        assert got[:2] == ["plain text", "json text"]
        assert got[2].dtype == np.int32 and got[2].tolist() == [5, 6, 7]
        assert [d if isinstance(d, str) else d.tolist() for d in read_documents(str(f), start=2)] == [[5, 6, 7]]
        assert expand(str(tmp_path)) == [str(f)]

    def test_tokens_train_as_they_are(self, tmp_path):
        f = tmp_path / "t.array_record"
        docs = [list(range(1, 20)), list(range(30, 50))]
        write_arecord(f, [json.dumps({"tokens": d}).encode() for d in docs])
        p = DataPipeline(cfg(source=str(f), eval_fraction=0.0, seq_len=8, global_batch_size=1))
        rows = list(p._rows(p._documents([str(f)], "all", Shard(), 1, "data.source")))
        stream = np.concatenate([r["inputs"][r["mask"]] for r in rows]).tolist()
        assert stream == docs[0][:-1] + docs[1][:-1]  # inputs = doc[:-1], no markers added
        assert {int(s) for r in rows for s in r["segment_ids"]} <= {0, 1, 2}

    def test_token_outside_the_vocabulary(self, tmp_path):
        f = tmp_path / "t.arecord"
        write_arecord(f, [json.dumps({"tokens": [1, 300]}).encode()])
        p = DataPipeline(cfg(source=str(f), eval_fraction=0.0))
        with pytest.raises(DataError, match="token id 300.*256-token vocabulary"):
            next(p.train_iterator())

    def test_bad_records_name_the_record(self, tmp_path):
        f = tmp_path / "b.arecord"
        write_arecord(f, [b"ok", json.dumps({"other": 1}).encode(), b"\xff\xfe"])
        it = read_documents(str(f))
        assert next(it) == "ok"
        with pytest.raises(CorpusError, match=r"b.arecord record 1: expected a string field 'text'"):
            next(it)
        with pytest.raises(CorpusError, match=r"record 2: neither JSON nor UTF-8"):
            next(read_documents(str(f), start=2))

    def test_a_file_that_is_not_array_record(self, tmp_path):
        f = tmp_path / "bad.arecord"
        for content in (b"not an ArrayRecord file", np.random.default_rng(0).bytes(70_000)):
            f.write_bytes(content)
            with pytest.raises(CorpusError, match=r"bad.arecord: not a readable ArrayRecord file .*replace or remove"):
                next(read_documents(str(f)))

    def test_a_prepared_shard_named_as_a_file_points_at_its_directory(self, prepared):
        with pytest.raises(CorpusError, match="point data.source .* at the prepared directory"):
            next(read_documents(str(prepared / "train-00000.arecord")))


class TestPrepare:
    def test_rows_are_the_streaming_pipelines(self, prepared):
        stream = DataPipeline(cfg())
        rows = stream._rows(stream._documents(stream.train_files[0][0], "train", Shard(), 1, "data.source"))
        src = Prepared(str(prepared)).source("train")
        expected = list(rows)
        assert len(src) == len(expected)
        assert all(same(src[i], expected[i]) for i in (0, 1, 500, 999, 1000, len(src) - 1))
        from_prepared = DataPipeline(cfg(prepared=str(prepared)))
        assert len(from_prepared.eval_rows()) == len(stream.eval_rows())
        assert all(same(a, b) for a, b in zip(from_prepared.eval_rows(), stream.eval_rows()))

    def test_manifest(self, prepared):
        m = json.loads((prepared / "manifest.json").read_text())
        ident = m["identity"]
        assert ident["tokenizer"]["name"] == "byte" and len(ident["tokenizer"]["sha256"]) == 64
        assert (ident["seq_len"], ident["packing"], ident["bos_id"], ident["eos_id"]) == (32, True, None, None)
        assert ident["sources"] == [{"path": "builtin:pydoc_topics", "bytes": None}]
        assert ident["pipeline_version"] >= 1 and ident["rows_per_shard"] == ROWS_PER_SHARD
        train = m["splits"]["train"]
        assert [e["records"] for e in train["shards"][:-1]] == [ROWS_PER_SHARD] * (len(train["shards"]) - 1)
        assert 0.999 < m["efficiency"] <= 1.0 and train["tokens"] == round(m["efficiency"] * train["records"] * 32)
        assert not (prepared / "progress.json").exists()
        assert not list(prepared.glob(".*.tmp"))

    def test_killed_prepare_resumes_to_the_same_bytes(self, prepared, tmp_path):
        out = tmp_path / "p"
        r = prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet, stop_after_shards=3)
        assert not (out / "manifest.json").exists() and (out / "progress.json").exists()
        # a shard being written when the process died: left as a temporary file, never a shard
        (out / ".train-00003.arecord.tmp").write_bytes(b"partial")
        lines: list[str] = []
        r = prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=lines.append)
        assert r.resumed_shards == 3 and any("resuming after 3 finished shard(s)" in ln for ln in lines)
        assert shards(out) == shards(prepared)
        assert Prepared(str(out)).digest == Prepared(str(prepared)).digest

    def test_killed_after_the_training_rows_resumes_with_the_held_out_rows(self, prepared, tmp_path, monkeypatch):
        from distillc.runtime.data import prepared as prep_mod

        out, real = tmp_path / "p", prep_mod._write_shard

        def dies_at_eval(out_, split, *a):
            if split == "eval":
                raise KeyboardInterrupt  # the process is stopped here
            return real(out_, split, *a)

        monkeypatch.setattr(prep_mod, "_write_shard", dies_at_eval)
        with pytest.raises(KeyboardInterrupt):
            prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet)
        monkeypatch.setattr(prep_mod, "_write_shard", real)
        assert json.loads((out / "progress.json").read_text())["train_complete"]
        prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet)
        assert shards(out) == shards(prepared)

    def test_a_damaged_finished_shard_is_redone(self, prepared, tmp_path):
        out = tmp_path / "p"
        prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet, stop_after_shards=3)
        (out / "train-00001.arecord").write_bytes(b"garbage")
        lines: list[str] = []
        r = prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=lines.append)
        assert r.resumed_shards == 1 and any("train-00001.arecord is missing or damaged" in ln for ln in lines)
        assert shards(out) == shards(prepared)

    def test_finished_prepare_is_left_alone(self, prepared):
        before = (prepared / "manifest.json").read_bytes()
        r = prepare(cfg(), str(prepared), log=quiet)  # no rows_per_shard: the directory's own
        assert r.skipped and (prepared / "manifest.json").read_bytes() == before

    @pytest.mark.parametrize("partial", [False, True])
    def test_other_settings_name_the_fields(self, prepared, tmp_path, partial):
        out = tmp_path / "p"
        if partial:
            prepare(cfg(), str(out), rows_per_shard=ROWS_PER_SHARD, log=quiet, stop_after_shards=1)
        else:
            shutil.copytree(prepared, out)
        with pytest.raises(PreparedError, match=r"(unfinished prepare )?for other settings \(.*seq_len: prepared 32, "
                                                r"now 64.*\): prepare into another directory"):
            prepare(cfg(seq_len=64, eval_fraction=0.2), str(out), log=quiet)
        assert run_prepare(cfg(packing=False), str(out)) == 2

    def test_mixture_is_refused(self, tmp_path):
        from distillc.runtime.config import WeightedSource

        mix = (WeightedSource(source="builtin:pydoc_topics", weight=1.0),) * 2
        with pytest.raises(PreparedError, match="weighted mixture"):
            prepare(cfg(sources=mix), str(tmp_path / "p"), log=quiet)


class TestTrainingFromPrepared:
    def test_batches_resume_exactly_through_json(self, prepared):
        p = DataPipeline(cfg(prepared=str(prepared)))
        it = p.train_iterator()
        for _ in range(5):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        want = [next(it) for _ in range(3)]
        again = DataPipeline(cfg(prepared=str(prepared))).train_iterator()
        again.set_state(state)
        assert all(same(a, next(again)) for a in want)

    def test_epochs_reshuffle_and_cover_every_row(self, prepared, tmp_path):
        small = tmp_path / "s"
        prepare(cfg(seq_len=4096, eval_fraction=0.0), str(small), log=quiet)
        n = Prepared(str(small)).records("train")
        p = DataPipeline(cfg(seq_len=4096, eval_fraction=0.0, global_batch_size=1, prepared=str(small)))
        it = p.train_iterator()
        epochs = [[bytes(next(it)["inputs"][0]) for _ in range(n)] for _ in range(2)]
        src = Prepared(str(small)).source("train")
        rows = sorted(bytes(src[i]["inputs"]) for i in range(n))
        assert sorted(epochs[0]) == rows == sorted(epochs[1]) and epochs[0] != epochs[1]

    def test_processes_take_their_block_of_each_global_batch(self, prepared):
        whole = next(DataPipeline(cfg(prepared=str(prepared))).train_iterator())
        parts = [next(DataPipeline(cfg(prepared=str(prepared)), Shard(i, 2)).train_iterator()) for i in range(2)]
        assert all(np.array_equal(whole[k], np.concatenate([q[k] for q in parts])) for k in whole)

    def test_a_streaming_state_is_refused(self, prepared):
        streaming = DataPipeline(cfg()).train_iterator()
        next(streaming)
        with pytest.raises(DataError, match="resume with the same"):
            DataPipeline(cfg(prepared=str(prepared))).train_iterator().set_state(streaming.get_state())

    def test_a_corpus_directory_with_another_manifest_is_a_corpus(self, tmp_path):
        (tmp_path / "manifest.json").write_text('{"format": "someone-elses"}')
        (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello there " * 20}) + "\n")
        p = DataPipeline(cfg(source=str(tmp_path), eval_fraction=0.0, global_batch_size=1))
        assert p.prepared is None and p.train_files[0][0] == [str(tmp_path / "a.jsonl")]

    def test_source_naming_the_prepared_directory(self, prepared):
        named = next(DataPipeline(cfg(source=str(prepared))).train_iterator())
        assert same(named, next(DataPipeline(cfg(prepared=str(prepared))).train_iterator()))

    def test_spec_mismatch_names_the_fields(self, prepared):
        with pytest.raises(PreparedError, match=r"data.seq_len: prepared 32, spec 64.*data.eval_fraction"):
            DataPipeline(cfg(prepared=str(prepared), seq_len=64, eval_fraction=0.2))

    def test_missing_or_unfinished_prepared_data(self, tmp_path):
        with pytest.raises(PreparedError, match="no prepared data .*run `distillc data prepare SPEC` first"):
            DataPipeline(cfg(prepared=str(tmp_path / "nothing")))
        prepare(cfg(), str(tmp_path / "half"), rows_per_shard=ROWS_PER_SHARD, log=quiet, stop_after_shards=1)
        with pytest.raises(PreparedError, match="an unfinished prepare"):
            DataPipeline(cfg(prepared=str(tmp_path / "half")))

    def test_damaged_shard_is_named_when_read(self, prepared, tmp_path):
        out = tmp_path / "p"
        shutil.copytree(prepared, out)
        shard = out / "train-00002.arecord"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        src = Prepared(str(out)).source("train")
        assert same(src[0], Prepared(str(prepared)).source("train")[0])  # other shards read fine
        with pytest.raises(PreparedError, match=r"train-00002.arecord: sha256 .* the shard is damaged"):
            src[2 * ROWS_PER_SHARD + 5]

    def test_edited_manifest_is_refused(self, prepared, tmp_path):
        out = tmp_path / "p"
        shutil.copytree(prepared, out)
        m = json.loads((out / "manifest.json").read_text())
        m["splits"]["train"]["records"] += 1
        (out / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(PreparedError, match="does not match its digest"):
            Prepared(str(out))


class TestCli:
    SPEC = """version: 1
name: prep-test
mode: online
teacher: {{model: tiny-teacher, checkpoint: {tmp}/teacher}}
student: {{model: tiny-student}}
data: {{source: builtin:pydoc_topics, tokenizer: byte, seq_len: {seq}, global_batch_size: 8{prepared}}}
train: {{steps: 4, learning_rate: 0.001}}
"""

    def run(self, tmp_path, seq=32, prepared=True, *extra):
        from typer.testing import CliRunner

        from distillc.compiler.cli import app

        spec = tmp_path / "spec.yaml"
        spec.write_text(self.SPEC.format(tmp=tmp_path, seq=seq,
                                         prepared=f", prepared: {tmp_path}/prep" if prepared else ""))
        return CliRunner().invoke(app, ["data", "prepare", str(spec), *extra], catch_exceptions=False)

    def test_prepare_then_changed_spec_is_exit_2(self, tmp_path):
        r = self.run(tmp_path, 32, True, "--rows-per-shard", "4000")
        assert r.exit_code == 0, r.output
        assert Prepared(str(tmp_path / "prep")).records("train") > 4000
        r = self.run(tmp_path, 64)
        assert r.exit_code == 2 and "seq_len: prepared 32, now 64" in r.output and "Traceback" not in r.output

    def test_no_destination_is_exit_2(self, tmp_path):
        r = self.run(tmp_path, 32, False)
        assert r.exit_code == 2 and "set data.prepared" in r.output


class TestWorkers:
    """data.workers: tokenization in worker processes gives the same batches and states as in-process."""

    def test_same_batches_and_states_for_any_worker_count(self, tmp_path):
        f = tmp_path / "c.jsonl"
        f.write_text("".join(json.dumps({"text": f"document {i} " + "xy" * (i % 37)}) + "\n" for i in range(2000)))
        base = cfg(source=str(f), eval_fraction=0.0, seq_len=64)
        inproc = DataPipeline(base).train_iterator()
        want = [next(inproc) for _ in range(12)]
        pooled = DataPipeline(base.model_copy(update={"workers": 2})).train_iterator()
        got = [next(pooled) for _ in range(6)]
        state = json.loads(json.dumps(pooled.get_state()))
        assert all(same(a, b) for a, b in zip(want[:6], got))
        resumed = DataPipeline(base).train_iterator()  # in-process, from the workers' state
        resumed.set_state(state)
        assert all(same(a, next(resumed)) for a in want[6:])

    def test_bpe_workers_read_ahead_and_restore_in_place(self, tmp_path):
        """An HF BPE (the tiktoken fast path) in 2 workers, chunks read ahead: the in-process batches, and a
        state restored into the same pooled iterator (its read-ahead dropped) continues exactly."""
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        from distillc.runtime.data.tokenizers import load_tokenizer

        texts = [f"the teacher {i} distils the student, layer {i * 7} of the model " + "kd " * (i % 41) for i in range(1500)]
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.train_from_iterator(texts[:100], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        hf.save(str(tmp_path / "tokenizer.json"))
        assert load_tokenizer(str(tmp_path / "tokenizer.json")).fast
        f = tmp_path / "c.jsonl"
        f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        base = cfg(source=str(f), eval_fraction=0.0, seq_len=64, tokenizer=str(tmp_path / "tokenizer.json"))
        inproc = DataPipeline(base).train_iterator()
        want = [next(inproc) for _ in range(10)]
        pooled = DataPipeline(base.model_copy(update={"workers": 2})).train_iterator()
        got = [next(pooled) for _ in range(5)]
        state = json.loads(json.dumps(pooled.get_state()))
        got += [next(pooled) for _ in range(3)]
        assert all(same(a, b) for a, b in zip(want, got))
        pooled.set_state(state)
        assert all(same(a, next(pooled)) for a in want[5:])

    def test_worker_errors_reach_the_caller(self, tmp_path):
        f = tmp_path / "t.arecord"
        write_arecord(f, [json.dumps({"tokens": [1, 2]}).encode()] * 3 + [json.dumps({"tokens": [1, 999]}).encode()])
        it = DataPipeline(cfg(source=str(f), eval_fraction=0.0, workers=2)).train_iterator()
        with pytest.raises(DataError, match="token id 999"):
            next(it)

    def test_a_worker_imports_no_grain_or_jax(self):
        import subprocess
        import sys

        code = ("import sys; from distillc.runtime.data.examples import init_worker, tokenize_in_worker, unpack; "
                "init_worker('byte'); assert unpack(*tokenize_in_worker(['ab']))[0]['labels'].tolist() == [98, 10, 10]; "
                "print(sorted({m.split('.')[0] for m in sys.modules} & {'grain', 'jax', 'jaxlib', 'flax'}))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"

    def test_a_state_of_the_previous_pipeline_is_refused(self):
        it = DataPipeline(cfg()).train_iterator()
        state = it.get_state()
        state["layout"].pop("state_version")
        with pytest.raises(DataError, match="resume with the same"):
            DataPipeline(cfg()).train_iterator().set_state(state)


def test_batch_encoding_gives_the_ids_of_one_at_a_time(tmp_path):
    """Tokenize.many hands the texts to the HF batch encoder: the same examples as one by one, with
    the family's markers, and pre-tokenized documents kept in their place."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from distillc.runtime.data.pipeline import Tokenize
    from distillc.runtime.data.tokenizers import load_tokenizer

    texts = [f"the teacher {i} distils the student, layer {i * 7} of the model" for i in range(50)]
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenize(load_tokenizer(str(tmp_path / "tokenizer.json")))
    docs = texts[:5] + [np.asarray([3, 4, 5], np.int32)] + texts[5:9]
    many = tok.many(docs)
    for ex, d in zip(many, docs):
        if isinstance(d, str):  # <s> + the ids of encoding this text alone + </s>
            ids = np.concatenate([ex["inputs"], ex["labels"][-1:]]).tolist()
            assert ids == [0] + tok.tokenizer.encode(d).tolist() + [1]
            assert len(ids) > 3
    assert many[5]["inputs"].tolist() == [3, 4]
