"""DC18x: the checkpoints the runtime loads. One class per rule."""

from __future__ import annotations

import json

from tests.conftest import ROOT, at, check_text, codes, find, spec_text, where
from tests.published_configs import gemma3_published


class TestDC180StudentCheckpointMissing:
    def test_fails_on_a_missing_local_path_at_the_value(self, tmp_path):
        missing = tmp_path / "no-such-student"
        text = spec_text(f"student:\n  checkpoint: {missing}\n")
        d = find(check_text(text), "DC180")
        assert where(d) == at(text, "student:", "checkpoint:", str(missing))
        assert d.path == ("student", "checkpoint") and d.is_error

    def test_passes_an_existing_local_path(self, tmp_path):
        text = spec_text(f"student:\n  checkpoint: {tmp_path}\n")
        assert "DC180" not in codes(check_text(text))

    def test_passes_remote_paths_unchecked(self):
        text = spec_text("student:\n  checkpoint: gs://bucket/student/0/items\n")
        assert "DC180" not in codes(check_text(text))


FIXTURES = "tests/fixtures/hf"
LLAMA2_INLINE = ("{num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 4, head_dim: 16, mlp_dim: 96, "
                 "vocab_size: 96, tokenizer: byte, tie_embeddings: true, norm_eps: 1.0e-5}")


class TestDC181HFConfigMismatch:
    def test_a_path_the_os_refuses_is_not_an_internal_error(self):
        """A checkpoint name longer than the OS allows (ENAMETOOLONG from the probe): not a Hugging
        Face directory this can read; never DC900 (found by tests/test_fuzz_validate.py)."""
        text = spec_text("teacher:\n  model: tiny-teacher\n  checkpoint: " + "a" * 300 + "\n")
        assert not {"DC181", "DC900"} & set(codes(check_text(text)))

    def test_fails_each_disagreeing_field_at_the_checkpoint(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        text = spec_text(f"teacher:\n  model: tiny-teacher\n  checkpoint: {FIXTURES}/llama2\n")
        hits = [d for d in check_text(text).diagnostics if d.code == "DC181"]
        assert {d.path for d in hits} == {("teacher", "checkpoint")}
        assert where(hits[0]) == at(text, "teacher:", "checkpoint:", f"{FIXTURES}/llama2")
        fields = {d.message.rsplit(": ", 2)[-2].split()[-1] for d in hits}
        assert fields == {"vocab_size", "emb_dim", "head_dim", "mlp_dim", "tie_embeddings"}

    def test_fails_another_family(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        text = spec_text(f"teacher:\n  model: llama2-7b\n  checkpoint: {FIXTURES}/qwen3\n")
        messages = [d.message for d in check_text(text).diagnostics if d.code == "DC181"]
        assert any("model_type 'qwen3' is not family 'llama2'" in m for m in messages)

    def test_passes_the_model_it_holds(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        text = spec_text(f"teacher:\n  model: {LLAMA2_INLINE}\n  checkpoint: {FIXTURES}/llama2\n")
        assert "DC181" not in codes(check_text(text))

    def test_passes_other_formats_and_remote_paths(self, monkeypatch, tmp_path):
        monkeypatch.chdir(ROOT)
        for ckpt in (str(tmp_path), "gs://bucket/hf/model"):
            text = spec_text(f"teacher:\n  model: tiny-teacher\n  checkpoint: {ckpt}\n")
            assert "DC181" not in codes(check_text(text))


    def test_reads_a_gemma3_multimodal_text_config(self, tmp_path):
        """Gemma 3's published multimodal config.json (the text decoder in text_config, most of it left
        to transformers' defaults): gemma3-27b's passes, gemma3-12b is each disagreeing field."""
        (tmp_path / "config.json").write_text(json.dumps(gemma3_published("gemma3-27b")))
        (tmp_path / "model-00001-of-00012.safetensors").write_bytes(b"")
        text = spec_text(f"teacher:\n  model: gemma3-27b\n  checkpoint: {tmp_path}\n")
        assert "DC181" not in codes(check_text(text))
        text = spec_text(f"teacher:\n  model: gemma3-12b\n  checkpoint: {tmp_path}\n")
        hits = [d for d in check_text(text).diagnostics if d.code == "DC181"]
        assert {d.path for d in hits} == {("teacher", "checkpoint")}
        fields = {d.message.rsplit(": ", 2)[-2].split()[-1] for d in hits}
        assert fields == {"num_layers", "emb_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                          "query_pre_attn_scalar"}

    def test_a_gemma3_text_config_of_another_model_type_is_one_diagnostic(self, tmp_path):
        config = {"model_type": "gemma3", "text_config": {"model_type": "llama"}}
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "model.safetensors").write_bytes(b"")
        text = spec_text(f"teacher:\n  model: gemma3-4b\n  checkpoint: {tmp_path}\n")
        diagnostics = check_text(text).diagnostics
        assert "DC900" not in {d.code for d in diagnostics}
        assert any(d.code == "DC181" and "not a gemma3_text config" in d.message for d in diagnostics)


class TestDC182HFCheckpointForMaxText:
    def test_fails_a_named_hf_format_at_the_checkpoint(self):
        text = spec_text("teacher:\n  checkpoint: gs://bucket/hf/model\n  format: hf\n")
        d = find(check_text(text, target="maxtext"), "DC182")
        assert where(d) == at(text, "teacher:", "checkpoint:", "gs://bucket/hf/model")

    def test_fails_a_detected_local_hf_directory(self, monkeypatch):
        monkeypatch.chdir(ROOT)
        text = spec_text(f"student:\n  checkpoint: {FIXTURES}/llama2\n")
        assert ("student", "checkpoint") in {d.path for d in check_text(text, target="maxtext").diagnostics
                                             if d.code == "DC182"}

    def test_passes_for_the_distillc_target_and_orbax_paths(self):
        text = spec_text("teacher:\n  checkpoint: gs://bucket/hf/model\n  format: hf\n")
        assert "DC182" not in codes(check_text(text))
        text = spec_text("teacher:\n  checkpoint: gs://bucket/llama/0/items\n")
        assert "DC182" not in codes(check_text(text, target="maxtext"))


TOKENIZERS = "tests/fixtures/tokenizers"


def _hf_dir(root, **files: bytes):
    """A Hugging Face model directory (config.json) shipping `files` (tokenizer.json, tokenizer.model)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    for name, data in files.items():
        (root / name.replace("_", ".")).write_bytes(data)
    return root


class TestDC185ShippedTokenizerMismatch:
    def test_fails_another_file_at_the_checkpoint_naming_both(self, tmp_path):
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b'{"a": 1}')
        (tmp_path / "other.json").write_bytes(b'{"a": 2}')
        text = spec_text(f"student:\n  checkpoint: {ckpt}\ndata:\n  tokenizer: {tmp_path / 'other.json'}\n")
        d = find(check_text(text), "DC185")
        assert d.path == ("student", "checkpoint") and d.is_error
        assert where(d) == at(text, "student:", "checkpoint:", str(ckpt))
        assert str(tmp_path / "other.json") in d.message and str(ckpt / "tokenizer.json") in d.message

    def test_passes_the_same_content_at_another_path(self, tmp_path):
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b'{"a": 1}')
        (tmp_path / "copy.json").write_bytes(b'{"a": 1}')
        text = spec_text(f"teacher:\n  checkpoint: {ckpt}\ndata:\n  tokenizer: {tmp_path / 'copy.json'}\n")
        assert "DC185" not in codes(check_text(text))

    def test_compares_a_model_file_with_the_shipped_tokenizer_model(self, tmp_path):
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}", tokenizer_model=b"sp-one")
        (tmp_path / "tokenizer.model").write_bytes(b"sp-two")
        text = spec_text(f"teacher:\n  checkpoint: {ckpt}\ndata:\n  tokenizer: {tmp_path / 'tokenizer.model'}\n")
        assert "tokenizer.model" in find(check_text(text), "DC185").message
        (tmp_path / "tokenizer.model").write_bytes(b"sp-one")
        assert "DC185" not in codes(check_text(text))

    def test_a_kind_the_checkpoint_does_not_ship_is_not_compared(self, tmp_path):
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}")
        (tmp_path / "tokenizer.model").write_bytes(b"sp")
        text = spec_text(f"teacher:\n  checkpoint: {ckpt}\ndata:\n  tokenizer: {tmp_path / 'tokenizer.model'}\n")
        assert "DC185" not in codes(check_text(text))

    def test_byte_fails_for_a_model_with_a_real_tokenizer_and_passes_a_byte_model(self, tmp_path):
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}")
        real = spec_text(f"teacher:\n  model: llama2-7b\n  checkpoint: {ckpt}\ndata:\n  tokenizer: byte\n")
        assert "'byte'" in find(check_text(real), "DC185").message
        byte_model = spec_text(f"teacher:\n  model: tiny-teacher\n  checkpoint: {ckpt}\ndata:\n  tokenizer: byte\n")
        assert "DC185" not in codes(check_text(byte_model))

    def test_no_config_json_remote_paths_and_gguf_are_not_read(self, tmp_path):
        bare = tmp_path / "bare"
        bare.mkdir()
        (bare / "tokenizer.json").write_bytes(b"{}")
        (tmp_path / "other.json").write_bytes(b"{1}")
        ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}")
        for checkpoint, tokenizer, fmt in ((bare, tmp_path / "other.json", ""),
                                           ("gs://bucket/hf/model", tmp_path / "other.json", ""),
                                           (ckpt, "gs://bucket/hf/model/tokenizer.json", ""),
                                           (ckpt, tmp_path / "other.json", "\n  format: gguf")):
            text = spec_text(f"teacher:\n  checkpoint: {checkpoint}{fmt}\ndata:\n  tokenizer: {tokenizer}\n")
            assert "DC185" not in codes(check_text(text)), (checkpoint, tokenizer, fmt)

    def test_the_fixture_pair_differs_only_in_content(self, monkeypatch):
        """The docstring examples' fixtures: two valid tokenizer.json files, same size, other ids."""
        monkeypatch.chdir(ROOT)
        from distillc.runtime.convert.shipped_tokenizer import tokenizer_disagreement

        why = tokenizer_disagreement("teacher", f"{TOKENIZERS}/hf", f"{TOKENIZERS}/other.json", None, local_only=True)
        assert why is not None and "sha256" in why
        assert tokenizer_disagreement("teacher", f"{TOKENIZERS}/hf", f"{TOKENIZERS}/hf/tokenizer.json", None,
                                      local_only=True) is None


def test_remote_paths_are_read_through_epath_when_not_local_only(tmp_path, monkeypatch):
    """The runtime's check (local_only=False) reads gs:// paths through etils.epath; here epath is
    pointed at tmp_path for gs://bucket, so no network is touched."""
    from etils import epath

    from distillc.runtime.convert.shipped_tokenizer import tokenizer_disagreement

    real = epath.Path
    monkeypatch.setattr(epath, "Path", lambda p: real(str(p).replace("gs://bucket", str(tmp_path))))
    _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}")
    (tmp_path / "other.json").write_bytes(b"{1}")
    why = tokenizer_disagreement("teacher", "gs://bucket/ckpt", "gs://bucket/other.json", None, local_only=False)
    assert why is not None and "gs://bucket/other.json" in why and "gs://bucket/ckpt/tokenizer.json" in why
    assert tokenizer_disagreement("teacher", "gs://bucket/ckpt", "gs://bucket/other.json", None, local_only=True) is None


def test_gs_paths_go_through_epath_to_the_gcsfs_backend():
    """gcsfs is a dependency so that epath reads gs:// (tokenizers, checkpoints): epath picks its
    fsspec backend for a gs:// path, and fsspec's class for 'gs' is gcsfs's. Nothing is opened and
    no filesystem is instantiated (that would look for credentials on the network)."""
    import fsspec
    import gcsfs
    from etils import epath
    from etils.epath import backend

    p = epath.Path("gs://bucket/tokenizer.json")
    assert isinstance(p._backend, backend._FileSystemSpecBackend)  # not tensorflow's, not the local os
    assert fsspec.get_filesystem_class("gs") is gcsfs.GCSFileSystem


def test_dc185_an_unreadable_tokenizer_is_not_an_internal_error(tmp_path, monkeypatch):
    import builtins

    ckpt = _hf_dir(tmp_path / "ckpt", tokenizer_json=b"{}")
    (tmp_path / "other.json").write_bytes(b"{1}")
    real_open = builtins.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("other.json"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    text = spec_text(f"teacher:\n  checkpoint: {ckpt}\ndata:\n  tokenizer: {tmp_path / 'other.json'}\n")
    assert not {"DC185", "DC900"} & set(codes(check_text(text)))
