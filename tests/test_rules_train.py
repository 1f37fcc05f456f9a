"""DC14x: training, data and path settings. One class per rule."""

from __future__ import annotations

import pytest

from tests.conftest import at, check_text, codes, find, spec_text, where

CLUSTER = "teacher: {checkpoint: gs://b/teacher/0/items}\ntrain: {output_dir: gs://b/runs}\nresources: {accelerator: v5p-8}\n"


class TestDC140WarmupTooLong:
    def test_fails(self):
        text = spec_text("train: {steps: 400, warmup_steps: 500}")
        d = find(check_text(text), "DC140")
        assert where(d) == at(text, "warmup_steps:", "500")

    def test_passes(self):
        assert "DC140" not in codes(check_text(spec_text("train: {steps: 400, warmup_steps: 399}")))


class TestDC141IntervalTooLong:
    def test_fails(self):
        text = spec_text("train: {checkpoint_every: 500, eval_every: 1000}")
        hits = [d for d in check_text(text).diagnostics if d.code == "DC141"]
        assert [d.path for d in hits] == [("train", "checkpoint_every"), ("train", "eval_every")]
        assert where(hits[0]) == at(text, "checkpoint_every:", "500")

    def test_passes_default_not_written(self):
        # the default checkpoint_every (1000) is longer than 400 steps, but the user did not write it
        text = spec_text("").replace("  checkpoint_every: 200\n", "")
        assert "DC141" not in codes(check_text(text))


class TestDC142SeqLenContext:
    def test_fails(self):
        text = spec_text(
            "teacher: {model: gemma2-9b}\nstudent: {model: gemma2-2b}\ndata: {tokenizer: /t.model, seq_len: 16384}"
        )
        d = find(check_text(text), "DC142")
        assert where(d) == at(text, "seq_len:", "16384")

    def test_passes(self):
        text = spec_text("teacher: {model: gemma2-9b}\nstudent: {model: gemma2-2b}\ndata: {tokenizer: /t.model, seq_len: 8192}")
        assert "DC142" not in codes(check_text(text))


class TestDC143DataTokenizer:
    def test_fails_default_byte_is_shown_at_the_section(self):
        text = spec_text("teacher: {model: llama3.1-8b}\nstudent: {model: llama3.2-1b}\n").replace("  tokenizer: byte\n", "")
        d = find(check_text(text), "DC143")
        assert d.path == ("data", "tokenizer") and where(d) == at(text, "\ndata:", "data:")

    def test_fails_byte_for_llama(self):
        text = spec_text("teacher: {model: llama3.1-8b}\nstudent: {model: llama3.2-1b}\n")
        d = find(check_text(text), "DC143")
        # data.tokenizer is written in the base spec as `byte`
        assert where(d) == at(text, "tokenizer:", "byte")

    def test_fails_file_for_byte_models(self):
        text = spec_text("data: {tokenizer: /data/tokenizer.model}")
        assert where(find(check_text(text), "DC143")) == at(text, "tokenizer:", "/data")

    def test_passes(self):
        text = spec_text("teacher: {model: llama3.1-8b}\nstudent: {model: llama3.2-1b}\ndata: {tokenizer: /d/tokenizer.model}")
        assert "DC143" not in codes(check_text(text))


class TestDC144LocalPathOnCluster:
    def test_fails(self):
        text = spec_text(CLUSTER + "data: {source: /home/me/corpus.jsonl}")
        d = find(check_text(text), "DC144")
        assert where(d) == at(text, "source:", "/home")
        assert d.path == ("data", "source")

    def test_fails_default_output_dir(self):
        text = spec_text("teacher: {checkpoint: gs://b/t}\nresources: {accelerator: v5p-8}").replace("  output_dir: runs\n", "")
        d = find(check_text(text), "DC144")
        # the default output_dir is not written: the key path is still output_dir, shown at `train:`
        assert d.path == ("train", "output_dir")
        assert where(d) == at(text, "\ntrain:", "train:")

    def test_passes_cluster(self):
        assert "DC144" not in codes(check_text(spec_text(CLUSTER)))

    def test_passes_local(self):
        assert "DC144" not in codes(check_text(spec_text("train: {output_dir: /tmp/runs}")))

    @pytest.mark.parametrize("accelerator", ["h100-80gb-1", "h200-141gb-1", "b200-1"])
    def test_passes_one_local_gpu(self, accelerator):
        """A single-GPU machine runs `launch --local`: its local paths are right, and the spec is clean."""
        text = spec_text(f"train: {{output_dir: runs}}\nresources: {{accelerator: {accelerator}}}")
        assert [d.code for d in check_text(text).diagnostics if d.severity.value != "note"] == []


class TestDC145MalformedPath:
    @pytest.mark.parametrize(
        "fragment, key, needle",
        [
            ("data: {source: 'builtin:pydoc'}", ("data", "source"), "builtin:pydoc"),
            ("data: {source: 'http://example.com/x.txt'}", ("data", "source"), "http://"),
            ("data: {source: /data/corpus.csv}", ("data", "source"), "/data/corpus"),
            ("data: {eval_source: 'builtin:nope'}", ("data", "eval_source"), "builtin:nope"),
            ("data: {tokenizer: /data/tokenizer}", ("data", "tokenizer"), "/data/tokenizer"),
            ("teacher: {checkpoint: 'gs:///x'}", ("teacher", "checkpoint"), "gs:///x"),
            ("train: {output_dir: ''}", ("train", "output_dir"), "output_dir:"),
            ("student: {checkpoint: ' /tmp/x'}", ("student", "checkpoint"), "' /tmp/x'"),
            ("data: {prepared: 'gs://b/prep/*'}", ("data", "prepared"), "gs://b/prep/*"),
            ("data: {prepared: /data/corpus.jsonl}", ("data", "prepared"), "/data/corpus.jsonl"),
            ("data: {prepared: 'builtin:prep'}", ("data", "prepared"), "builtin:prep"),
            ("data: {prepared: 'ftp://b/prep'}", ("data", "prepared"), "ftp://b/prep"),
            ("teacher: {checkpoint: 'gs://My_Bucket!/ckpt'}", ("teacher", "checkpoint"), "gs://My_Bucket!"),
            ("data: {source: 'gs://bucket-/c.jsonl'}", ("data", "source"), "gs://bucket-/"),
            (f"data: {{source: 'gs://{'b' * 64}/c.jsonl'}}", ("data", "source"), "gs://bbb"),
        ],
    )
    def test_fails(self, fragment, key, needle):
        text = spec_text(fragment)
        d = find(check_text(text), "DC145")
        assert d.path == key
        if needle.endswith(":"):  # an empty value: the node is right after the key
            assert d.span.line == at(text, needle)[0]
        else:
            assert where(d) == at(text, "\n" + key[0] + ":", needle)

    @pytest.mark.parametrize(
        "fragment",
        [
            "data: {source: 'builtin:pydoc_topics'}",
            "data: {source: gs://bucket/corpus/}",
            "data: {source: /data/shards}",
            "data: {source: gs://bucket/c.jsonl}",
            "data: {source: [gs://bucket/a/*.jsonl.gz, /data/b.parquet, /data/c.jsonl.zst]}",
            "data: {source: null, sources: [{source: gs://b/x.jsonl, weight: 2}], eval_source: /data/ev.txt}",
            "teacher: {checkpoint: 's3://bucket/ckpt/0/items'}",
            "data: {source: [gs://bucket/a.arecord, /data/b.array_record], prepared: gs://bucket/prepared/v1}",
            "data: {prepared: /data/prepared/}",
            "data: {source: [gs://b/c4/c4-train.array_record-00000-of-01024, 'gs://b/c4/c4-train.array_record*']}",
            "data: {source: [gs://b/c4/c4-train.tfrecord-00000-of-01024, /data/c4/extra.tfrecord]}",
            f"data: {{source: 'gs://my-org.example_corpora.{'x' * 63}/c.jsonl'}}",
        ],
    )
    def test_passes(self, fragment):
        assert "DC145" not in codes(check_text(spec_text(fragment)))

    def test_suffixes_match_the_runtime(self):
        from distillc.compiler.rules.train import SOURCE_SUFFIXES
        from distillc.runtime.data.corpus import SUFFIXES

        assert {"." + s.rsplit(".", 1)[-1] for s in SUFFIXES} == set(SOURCE_SUFFIXES)

    def test_prepared_is_a_local_path_on_a_cluster(self):
        text = spec_text("data: {prepared: /data/prepared}\n" + CLUSTER)
        assert ("data", "prepared") in [d.path for d in check_text(text).diagnostics if d.code == "DC144"]

    def test_builtins_match_the_runtime(self):
        from distillc.compiler.rules.train import BUILTIN_SOURCES
        from distillc.runtime.data.corpus import BUILTINS

        assert tuple(BUILTIN_SOURCES) == tuple(BUILTINS)


class TestDC146SourceOrSources:
    def test_both(self):
        text = spec_text("data: {sources: [{source: gs://b/x.jsonl, weight: 1}]}")
        assert find(check_text(text), "DC146").path == ("data", "sources")

    def test_neither(self):
        text = spec_text("data: {source: null}")
        assert find(check_text(text), "DC146").path == ("data",)

    def test_one(self):
        assert "DC146" not in codes(check_text(spec_text("data: {source: [a.jsonl, b.jsonl]}")))

    def test_list_and_mixture_resolve_to_weighted_sources(self):
        from distillc.compiler.resolve import _data_config
        from distillc.compiler.spec import Data

        listed = _data_config(Data(source=["a.jsonl", "b/*.parquet"], seq_len=8, global_batch_size=2))
        assert listed.source == "a.jsonl, b/*.parquet" and listed.sources[0].source == ("a.jsonl", "b/*.parquet")
        mixed = _data_config(Data(sources=[{"source": "a.jsonl", "weight": 3}, {"source": ["b.jsonl"], "weight": 1}],
                                  seq_len=8, global_batch_size=2, eval_source="ev.jsonl", eval_tokens=10))
        assert [(w.source, w.weight) for w in mixed.sources] == [("a.jsonl", 3.0), (("b.jsonl",), 1.0)]
        assert mixed.eval_source == "ev.jsonl" and mixed.eval_tokens == 10
