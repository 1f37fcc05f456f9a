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

    def test_a_manifest_without_identity_or_a_file_as_destination(self, tmp_path):
        """Once a KeyError traceback ('identity') and '[Errno 17] File exists' with no word of --out."""
        out = tmp_path / "p"
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"format": "distillc-prepared"}))
        for call in (lambda: prepare(cfg(), str(out), log=quiet), lambda: Prepared(str(out))):
            with pytest.raises(PreparedError, match="manifest.json: a distillc-prepared file without its identity"):
                call()
        (tmp_path / "f").write_text("x")
        with pytest.raises(PreparedError, match=r"f is a file: data.prepared \(or --out\) names the directory"):
            prepare(cfg(), str(tmp_path / "f"), log=quiet)


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

    def test_parts_through_the_cli(self, tmp_path):
        r = self.run(tmp_path, 32, True, "--process-index", "1", "--process-count", "2")
        assert r.exit_code == 0 and "waiting for part(s) 0 of 2" in r.output, r.output
        r = self.run(tmp_path, 32, True, "--process-index", "2", "--process-count", "2")
        assert r.exit_code == 2 and "process index 2 is outside [0, 2)" in r.output
        r = self.run(tmp_path, 32, True, "--mixture-stop", "longest")
        assert r.exit_code == 2 and "expected first_exhausted or all_exhausted" in r.output
        r = self.run(tmp_path, 32, True, "--mixture-stop", "all_exhausted")  # one data.source: no mixture to stop
        assert r.exit_code == 2 and "has one data.source, not a data.sources mixture" in r.output


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


def write_jsonl(path: Path, prefix: str, n: int) -> Path:
    path.write_text("".join(json.dumps({"text": f"{prefix} {i} " + "ab" * (i % 23)}) + "\n" for i in range(n)))
    return path


class TestExampleRecords:
    """ArrayRecord shards of tf.train.Example protos (MaxText's and TFDS's format)."""

    def test_text_and_token_features(self, tmp_path):
        from tests.example_encoder import bytes_feature, example, float_feature, int64_feature

        f = tmp_path / "e.arecord"
        write_arecord(f, [example(text=bytes_feature("héllo".encode()), score=float_feature([0.5])),
                          example(tokens=int64_feature([5, 6, 7])),
                          example(text=int64_feature([8, 9], packed=False))])  # MaxText's pre-tokenized form
        got = list(read_documents(str(f)))
        assert got[0] == "héllo" and got[1].tolist() == [5, 6, 7] and got[2].tolist() == [8, 9]
        assert [d.tolist() for d in read_documents(str(f), start=1)] == [[5, 6, 7], [8, 9]]
        body = tmp_path / "b.arecord"
        write_arecord(body, [example(body=bytes_feature(b"x"))])
        assert list(read_documents(str(body), "body")) == ["x"]

    def test_the_same_rows_as_json_records(self, tmp_path):
        from tests.example_encoder import bytes_feature, example

        texts = [f"document {i} " + "xy" * (i % 17) for i in range(300)]
        (tmp_path / "ex").mkdir(), (tmp_path / "js").mkdir()
        write_arecord(tmp_path / "ex" / "a.arecord", [example(text=bytes_feature(t.encode())) for t in texts])
        write_arecord(tmp_path / "js" / "a.arecord", [json.dumps({"text": t}).encode() for t in texts])
        rows = []
        for d in ("ex", "js"):
            p = DataPipeline(cfg(source=str(tmp_path / d)))
            rows.append(list(p._rows(p._documents(p.train_files[0][0], "train", Shard(), 1, "data.source"))))
        assert len(rows[0]) == len(rows[1]) > 100 and all(same(a, b) for a, b in zip(*rows))

    def test_tfds_shard_names_are_found_as_maxtext_globs_them(self, tmp_path):
        """TFDS writes `c4-train.array_record-00000-of-01024`; MaxText's docs name them with
        `grain_train_files=.../c4-train.array_record*`. That glob (and the directory) once matched no file."""
        from tests.example_encoder import bytes_feature, example

        d = tmp_path / "c4"
        d.mkdir()
        for i in range(2):
            write_arecord(d / f"c4-train.array_record-{i:05d}-of-00002", [example(text=bytes_feature(f"doc {i}".encode()))])
        (d / "c4-train.array_record-00000-of-00002.json").write_text("{}")  # TFDS metadata beside them: not a shard
        names = [f"c4-train.array_record-{i:05d}-of-00002" for i in range(2)]
        for source in (str(d / "c4-train.array_record*"), str(d)):
            files = expand(source)
            assert [Path(f).name for f in files] == names
            assert [doc for f in files for doc in read_documents(f)] == ["doc 0", "doc 1"]

    def test_malformed_records_name_shard_and_record(self, tmp_path):
        from tests.example_encoder import bytes_feature, example, int64_feature

        f = tmp_path / "e.arecord"
        good = example(text=bytes_feature(b"ok"))
        write_arecord(f, [good, good[:-3], example(other=bytes_feature(b"x"), n=int64_feature([1])),
                          example(text=bytes_feature(b"a", b"b")), example(tokens=int64_feature([3, -1])),
                          b"plain text"])
        errors = {1: r"e.arecord record 1: not a tf.train.Example \(.*\), as the shard's first record is",
                  2: r"record 2: a tf.train.Example without .* 'text' .*\(it has: n \(int64_list\), other \(bytes_list\)\)",
                  3: r"record 3: feature 'text' holds 2 values", 4: r"record 4: feature 'tokens' holds -1",
                  5: r"record 5: not a tf.train.Example"}
        for i, pattern in errors.items():
            with pytest.raises(CorpusError, match=pattern):
                next(read_documents(str(f), start=i))


def mixture_cfg(tmp_path: Path, weights=(3.0, 1.0), **kw) -> DataConfig:
    from distillc.runtime.config import WeightedSource

    a = write_jsonl(tmp_path / "a.jsonl", "alpha", 600)
    b = write_jsonl(tmp_path / "b.jsonl", "beta", 120)
    mix = (WeightedSource(source=str(a), weight=weights[0]), WeightedSource(source=str(b), weight=weights[1]))
    return cfg(source="mixture", sources=mix, eval_fraction=0.0, **kw)


class TestMixture:
    """A data.sources mixture prepared in its documented order (runtime/data/mixture.py)."""

    @staticmethod
    def documents(c: DataConfig, stop: str) -> list[str]:
        from distillc.runtime.data.mixture import MixtureDocuments

        p = DataPipeline(c)
        parts = [p._documents(files, "train", Shard(), 1, "data.sources") for files, _ in p.train_files]
        return list(MixtureDocuments(parts, [w for _, w in p.train_files], stop))

    def test_order_and_stop(self, tmp_path):
        c = mixture_cfg(tmp_path)
        first = self.documents(c, "first_exhausted")
        beta = [d.startswith("beta") for d in first]
        # beta's turns are documents 3, 7, 11, ... (1-based): its 120th is document 479, and the mixture ends at
        # its next turn (483), where it has run out
        assert sum(beta) == 120 and len(first) == 482 and [i for i, b in enumerate(beta) if b][:2] == [2, 6]
        for k in range(1, len(first) + 1):  # every prefix within one document of its share
            assert abs(sum(beta[:k]) - k / 4) <= 1
        every = self.documents(c, "all_exhausted")
        assert every[:482] == first and sum(not d.startswith("beta") for d in every) == 600
        assert sorted(set(every)) == sorted(set(read_documents(str(tmp_path / "a.jsonl")))
                                            | set(read_documents(str(tmp_path / "b.jsonl"))))
        assert sum(d.startswith("beta") for d in every) == 200  # beta repeats, as in streaming training

    @pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
    def test_prepared_rows_manifest_and_resume(self, tmp_path, stop):
        c = mixture_cfg(tmp_path, seq_len=64)
        whole = prepare(c, str(tmp_path / "whole"), rows_per_shard=60, log=quiet, mixture_stop=stop)
        ident = json.loads((tmp_path / "whole" / "manifest.json").read_text())["identity"]
        assert ident["sources"] is None and ident["mixture"]["stop"] == stop
        assert [(m["weight"], [f["path"] for f in m["files"]]) for m in ident["mixture"]["sources"]] == [
            (3.0, [str(tmp_path / "a.jsonl")]), (1.0, [str(tmp_path / "b.jsonl")])]
        pipe = DataPipeline(c)
        from distillc.runtime.data.mixture import MixtureDocuments

        parts = [pipe._documents(files, "train", Shard(), 1, "data.sources") for files, _ in pipe.train_files]
        expected = list(pipe._rows(MixtureDocuments(parts, [3.0, 1.0], stop)))
        src = Prepared(str(tmp_path / "whole")).source("train")
        assert whole.records["train"] == len(expected) > 3 * 60
        assert all(same(src[i], expected[i]) for i in range(len(src)))
        killed = tmp_path / "killed"
        prepare(c, str(killed), rows_per_shard=60, log=quiet, stop_after_shards=2, mixture_stop=stop)
        r = prepare(c, str(killed), rows_per_shard=60, log=quiet, mixture_stop=stop)
        assert r.resumed_shards == 2 and shards(killed) == shards(tmp_path / "whole") and r.digest == whole.digest

    def test_training_checks_the_mixture(self, tmp_path):
        c = mixture_cfg(tmp_path)
        prepare(c, str(tmp_path / "p"), rows_per_shard=500, log=quiet)
        assert next(DataPipeline(c.model_copy(update={"prepared": str(tmp_path / "p")})).train_iterator())
        # the weight named on its own, not inside the JSON of every source's file list (cut at 160 characters)
        with pytest.raises(PreparedError, match=r"data.sources\[0\].weight: prepared 3.0, spec 2.0\): run") as e:
            DataPipeline(mixture_cfg(tmp_path, (2.0, 1.0), prepared=str(tmp_path / "p")))
        assert "files:" not in str(e.value)
        with pytest.raises(PreparedError, match=r"number of data.sources: prepared 2, spec 1"):
            DataPipeline(cfg(source=str(tmp_path / "a.jsonl"), eval_fraction=0.0, prepared=str(tmp_path / "p")))
        with pytest.raises(PreparedError, match=r"mixture.stop: prepared \"first_exhausted\", now \"all_exhausted\""):
            prepare(c, str(tmp_path / "p"), log=quiet, mixture_stop="all_exhausted")
        # preparing again with another weight names it (once cut off after the first source's file list)
        with pytest.raises(PreparedError, match=r"mixture.sources\[0\].weight: prepared 3.0, now 2.0\)"):
            prepare(mixture_cfg(tmp_path, (2.0, 1.0)), str(tmp_path / "p"), log=quiet)


def part_files(tmp_path: Path) -> DataConfig:
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(5):
        write_jsonl(d / f"c{i}.jsonl", f"file{i}", 100 + 30 * i)
    return cfg(source=str(d), eval_fraction=0.1, seq_len=64)


def input_tokens(path: Path) -> list[int]:
    src = Prepared(str(path)).source("train")
    return sorted(np.concatenate([src[i]["inputs"][src[i]["mask"]] for i in range(len(src))]).tolist())


class TestParts:
    """A prepare split over processes: each writes its part, the last to finish writes the manifest."""

    def test_parts_in_one_process(self, tmp_path):
        c = part_files(tmp_path)
        out = tmp_path / "two"
        r0 = prepare(c, str(out), rows_per_shard=40, log=quiet, part=0, parts=2)
        assert r0.waiting == (1,) and not (out / "manifest.json").exists()
        with pytest.raises(PreparedError, match=r"unfinished 2-process prepare .*part\(s\) 1 are not finished.*"
                                                r"--process-count 2 --process-index I"):
            DataPipeline(c.model_copy(update={"prepared": str(out)}))
        r1 = prepare(c, str(out), rows_per_shard=40, log=quiet, part=1, parts=2)
        assert r1.waiting == () and r1.digest == Prepared(str(out)).digest
        # the rows: part 0's stream (files 0, 2, 4), then part 1's (files 1, 3), each packed on its own
        pipe = DataPipeline(c)
        expected = [row for p in range(2) for row in pipe._rows(pipe._documents(pipe.train_files[0][0], "train",
                                                                                  Shard(p, 2), 1, "data.source"))]
        src = Prepared(str(out)).source("train")
        assert len(src) == len(expected) and all(same(src[i], expected[i]) for i in range(len(src)))
        one = tmp_path / "one"
        prepare(c, str(one), rows_per_shard=40, log=quiet)
        assert input_tokens(one) == input_tokens(out)  # the same documents as one process, packed per part
        assert Prepared(str(one)).records("eval") == Prepared(str(out)).records("eval")
        assert prepare(c, str(out), log=quiet, part=1, parts=2).skipped
        with pytest.raises(PreparedError, match=r"parts: prepared 2, now 3"):
            prepare(c, str(out), log=quiet, part=0, parts=3)

    @pytest.mark.slow  # two fresh interpreters import grain and jax (about 15 s on the busy 2-core VM)
    def test_two_processes_equal_the_parts_prepared_in_one(self, tmp_path):
        import subprocess
        import sys

        c = part_files(tmp_path)
        prepare(c, str(tmp_path / "seq"), rows_per_shard=40, log=quiet, part=1, parts=2)
        prepare(c, str(tmp_path / "seq"), rows_per_shard=40, log=quiet, part=0, parts=2)
        code = ("import sys; from distillc.runtime.config import DataConfig; "
                "from distillc.runtime.data.prepared import run_prepare; "
                "sys.exit(run_prepare(DataConfig.model_validate_json(sys.argv[1]), sys.argv[2], 40))")
        env = [{"JAX_PROCESS_ID": str(i), "JAX_NUM_PROCESSES": "2"} for i in range(2)]
        procs = [subprocess.Popen([sys.executable, "-c", code, c.model_dump_json(), str(tmp_path / "par")],
                                  env={**__import__("os").environ, **e}, stderr=subprocess.PIPE, text=True)
                 for e in env]
        logs = [p.communicate(timeout=300)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], logs
        assert sum("complete:" in log for log in logs) >= 1
        assert shards(tmp_path / "par") == shards(tmp_path / "seq")
        assert Prepared(str(tmp_path / "par")).digest == Prepared(str(tmp_path / "seq")).digest
        # training with 2 processes: disjoint blocks of every global batch, one epoch covers every row once
        tc = c.model_copy(update={"prepared": str(tmp_path / "par"), "global_batch_size": 2})
        n = Prepared(str(tmp_path / "par")).records("train")
        its = [DataPipeline(tc, Shard(i, 2)).train_iterator() for i in range(2)]
        seen = [bytes(next(it)["inputs"][0]) for _ in range(n // 2) for it in its]
        src = Prepared(str(tmp_path / "par")).source("train")
        rows = {bytes(src[i]["inputs"]) for i in range(n)}
        assert len(rows) == n and len(set(seen)) == len(seen) == n // 2 * 2 and set(seen) <= rows

    def test_a_killed_part_resumes_and_any_process_assembles(self, tmp_path):
        c = part_files(tmp_path)
        for p in range(2):
            prepare(c, str(tmp_path / "whole"), rows_per_shard=20, log=quiet, part=p, parts=2)
        out = tmp_path / "killed"
        prepare(c, str(out), rows_per_shard=20, log=quiet, part=1, parts=2, stop_after_shards=1)
        prepare(c, str(out), rows_per_shard=20, log=quiet, part=0, parts=2)
        with pytest.raises(PreparedError, match=r"part\(s\) 1 are not finished"):
            Prepared(str(out))
        r = prepare(c, str(out), rows_per_shard=20, log=quiet, part=1, parts=2)
        assert r.resumed_shards == 1 and shards(out) == shards(tmp_path / "whole")
        (out / "manifest.json").unlink()  # the last process died between its part file and the manifest
        with pytest.raises(PreparedError, match=r"every part is finished; run .*--process-index 0` to write it"):
            Prepared(str(out))
        r = prepare(c, str(out), log=quiet, part=0, parts=2)
        assert r.skipped and r.digest == Prepared(str(tmp_path / "whole")).digest

    def test_process_from_env(self):
        from distillc.runtime.data.prepared import process_from_env

        assert process_from_env({}) == (0, 1)
        assert process_from_env({"JAX_PROCESS_ID": "3", "JAX_NUM_PROCESSES": "4"}) == (3, 4)
        assert process_from_env({"NODE_RANK": "1", "NNODES": "2"}) == (1, 2)
        assert process_from_env({"TPU_WORKER_ID": "2", "TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == (2, 4)
        assert process_from_env({"TPU_WORKER_ID": "0", "TPU_WORKER_HOSTNAMES": "a"}) == (0, 1)
        with pytest.raises(PreparedError, match=r"JAX_PROCESS_ID='x' is not an integer"):
            process_from_env({"JAX_PROCESS_ID": "x", "JAX_NUM_PROCESSES": "2"})

    def test_bad_process_environment_or_count_is_one_message(self, tmp_path, monkeypatch, capsys):
        """Once a ValueError traceback; the flags are used as they are, whatever the environment says."""
        monkeypatch.setenv("JAX_PROCESS_ID", "x")
        monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
        c = cfg()
        assert run_prepare(c, str(tmp_path / "a")) == 2
        assert "JAX_PROCESS_ID='x' is not an integer" in capsys.readouterr().err
        monkeypatch.setenv("JAX_PROCESS_ID", "0")
        monkeypatch.setenv("JAX_NUM_PROCESSES", "0")
        assert run_prepare(c, str(tmp_path / "b")) == 2
        assert "process count 0" in capsys.readouterr().err
        assert run_prepare(c, str(tmp_path / "c"), process_index=1, process_count=1) == 2
        assert "--process-count" in capsys.readouterr().err

    def test_an_unfinished_prepare_with_another_part_count_is_refused(self, tmp_path):
        """A killed prepare rerun with another --process-count once wrote its parts beside the stale
        shards and progress file (docs/data.md promises exit 2): refused, naming the count to finish with."""
        c = part_files(tmp_path)
        one, two = tmp_path / "one", tmp_path / "two"
        prepare(c, str(one), rows_per_shard=20, log=quiet, stop_after_shards=1)
        with pytest.raises(PreparedError, match=r"split over 1 process\(es\) \(progress.json\).*--process-count 1"):
            prepare(c, str(one), rows_per_shard=20, log=quiet, part=0, parts=2)
        prepare(c, str(two), rows_per_shard=20, log=quiet, part=1, parts=2, stop_after_shards=1)
        for part, parts in ((0, 1), (2, 3)):
            with pytest.raises(PreparedError, match=r"split over 2 process\(es\).*--process-count 2"):
                prepare(c, str(two), rows_per_shard=20, log=quiet, part=part, parts=parts)
        assert not (one / "part-p00000of00002.json").exists() and not (two / "progress.json").exists()
        prepare(c, str(two), rows_per_shard=20, log=quiet, part=0, parts=2)  # the same count still finishes it
        assert prepare(c, str(two), rows_per_shard=20, log=quiet, part=1, parts=2).digest
