"""DC183/DC184: GGUF checkpoints at validate time, read by the header reader the runtime uses
(no numpy, no gguf package, no jax: validate stays fast)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, check_text, codes, find, spec_text

TINY = "tests/fixtures/gguf/tiny-llama-f32.gguf"
TINY_INLINE = ("{num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 2, head_dim: 16, mlp_dim: 96, "
               "vocab_size: 96, tokenizer: byte, tie_embeddings: false, norm_eps: 1.0e-5, rope_theta: 10000.0}")


def test_matching_inline_architecture_passes():
    text = spec_text(f"teacher:\n  model: {TINY_INLINE}\n  checkpoint: {TINY}\n")
    assert "DC183" not in codes(check_text(text))


def test_each_disagreeing_field_is_reported_at_the_checkpoint():
    inline = TINY_INLINE.replace("num_kv_heads: 2", "num_kv_heads: 4").replace("norm_eps: 1.0e-5", "norm_eps: 1.0e-6")
    text = spec_text(f"teacher:\n  model: {inline}\n  checkpoint: {TINY}\n  format: gguf\n")
    messages = [d.message for d in check_text(text).diagnostics if d.code == "DC183"]
    assert any("num_kv_heads: checkpoint 2, model 4" in m for m in messages)
    assert any("norm_eps: checkpoint" in m and "model 1e-06" in m for m in messages)
    assert len(messages) == 2
    assert find(check_text(text), "DC183").path == ("teacher", "checkpoint")


def test_a_corrupt_file_is_reported(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\3\0\0\0" + b"\xff" * 16)
    text = spec_text(f"teacher:\n  model: {TINY_INLINE}\n  checkpoint: {bad}\n")
    d = find(check_text(text), "DC183")
    assert "bad.gguf: truncated GGUF header" in d.message


def test_missing_student_gguf_is_dc180_and_a_missing_teacher_is_left_to_the_runtime(tmp_path):
    missing = tmp_path / "none.gguf"
    text = spec_text(f"student:\n  checkpoint: {missing}\n")
    assert "DC180" in codes(check_text(text)) and "DC183" not in codes(check_text(text))
    text = spec_text(f"teacher:\n  model: {TINY_INLINE}\n  checkpoint: {missing}\n")
    assert "DC183" not in codes(check_text(text))


def test_maxtext_target_refuses_gguf():
    text = spec_text("teacher:\n  checkpoint: gs://b/m.gguf\n")
    assert "DC184" in codes(check_text(text, target="maxtext"))
    assert "DC184" not in codes(check_text(text))


PROBE = """
import json, sys
from distillc.compiler.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
print(json.dumps({"rc": rc, "heavy": sorted({m.split('.')[0] for m in sys.modules} & {"jax", "numpy", "gguf"})}))
"""


def test_validate_reads_a_gguf_without_numpy_or_the_gguf_package(tmp_path):
    """The header is read (DC183 reports the field) and neither numpy nor gguf (nor jax) is imported."""
    spec = tmp_path / "s.yaml"
    inline = TINY_INLINE.replace("num_kv_heads: 2", "num_kv_heads: 4")
    spec.write_text(spec_text(f"teacher:\n  model: {inline}\n  checkpoint: {ROOT / TINY}\n"))
    out = subprocess.run([sys.executable, "-c", PROBE, "validate", str(spec), "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    *diagnostics, last = out.stdout.strip().splitlines()
    result = json.loads(last)
    found = [d for d in json.loads("\n".join(diagnostics)) if d["code"] == "DC183"]
    assert result["rc"] == 1 and result["heavy"] == []
    assert len(found) == 1 and "num_kv_heads: checkpoint 2, model 4" in found[0]["message"]


GEMMA2 = "tests/fixtures/gguf/family-gemma2.gguf"
GEMMA2_INLINE = ("{num_layers: 3, emb_dim: 64, num_heads: 4, num_kv_heads: 2, head_dim: 32, mlp_dim: 96, vocab_size: 96, "
                 "tokenizer: byte, tie_embeddings: true, norm_eps: 1.0e-6, rope_theta: 10000.0, activation: gelu_tanh, "
                 "norm_plus_one: true, embed_scale: true, post_norms: true, attention: local_global, "
                 "local_global_ratio: '1:1', sliding_window: 8, attn_logit_softcap: 0.5, final_logit_softcap: 2.5}")
LLAMA31 = "tests/fixtures/gguf/family-llama3.1.gguf"
LLAMA31_INLINE = ("{num_layers: 2, emb_dim: 64, num_heads: 4, num_kv_heads: 2, head_dim: 16, mlp_dim: 96, vocab_size: 96, "
                  "tokenizer: byte, norm_eps: 1.0e-5, rope_theta: 500000.0, rope_scaling: {factor: 8.0, "
                  "low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 16}}")


def test_other_families_are_checked_field_by_field():
    """A gemma2 file: soft-caps, window and pattern from its metadata, and the query scaling llama.cpp
    uses (head_dim below 27B): a spec asking for query_pre_attn_scalar 24 is told the file's 32."""
    assert "DC183" not in codes(check_text(spec_text(f"teacher:\n  model: {GEMMA2_INLINE}\n  checkpoint: {GEMMA2}\n")))
    inline = GEMMA2_INLINE.replace("}", ", query_pre_attn_scalar: 24.0}").replace("sliding_window: 8", "sliding_window: 4")
    result = check_text(spec_text(f"teacher:\n  model: {inline}\n  checkpoint: {GEMMA2}\n"))
    messages = sorted(d.message for d in result.diagnostics if d.code == "DC183")
    assert len(messages) == 2
    assert "query_pre_attn_scalar: checkpoint 32.0, model 24.0" in messages[0]
    assert "sliding_window: checkpoint 8, model 4" in messages[1]


def test_llama31_rope_factors_are_compared_with_the_spec_scaling():
    assert "DC183" not in codes(check_text(spec_text(f"teacher:\n  model: {LLAMA31_INLINE}\n  checkpoint: {LLAMA31}\n")))
    inline = LLAMA31_INLINE.replace("original_max_position: 16", "original_max_position: 64")
    d = find(check_text(spec_text(f"teacher:\n  model: {inline}\n  checkpoint: {LLAMA31}\n")), "DC183")
    assert "rope_scaling: checkpoint rope_freqs.weight [" in d.message and d.path == ("teacher", "checkpoint")


def test_an_architecture_the_runtime_does_not_build_is_reported(tmp_path):
    data = (ROOT / TINY).read_bytes().replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00mamba", 1)
    bad = tmp_path / "mamba.gguf"
    bad.write_bytes(data)
    d = find(check_text(spec_text(f"teacher:\n  model: {TINY_INLINE}\n  checkpoint: {bad}\n")), "DC183")
    assert "general.architecture 'mamba' is not loaded from GGUF by this runtime" in d.message


def _header_only(*kvs: bytes) -> bytes:
    """A GGUF v3 file of metadata only (no tensors), from encoded (key, type, value) entries."""
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs) + b"\0" * 32


def _kv(key: str, kind: int, value: bytes) -> bytes:
    import struct

    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value


def test_a_damaged_alignment_is_a_dc183_error_not_an_internal_one(tmp_path):
    """general.alignment 0 once divided by zero (DC900 here, a traceback in the runtime)."""
    import struct

    from distillc.runtime.convert.gguf_meta import GGUFError, read_header

    arch = _kv("general.architecture", 8, struct.pack("<Q", 5) + b"llama")
    for name, value in (("zero", _kv("general.alignment", 4, struct.pack("<I", 0))),
                        ("text", _kv("general.alignment", 8, struct.pack("<Q", 2) + b"32"))):
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(_header_only(arch, value))
        result = check_text(spec_text(f"teacher:\n  model: {TINY_INLINE}\n  checkpoint: {bad}\n"))
        assert "DC900" not in codes(result)
        assert "general.alignment" in find(result, "DC183").message
        with pytest.raises(GGUFError, match="general.alignment"):
            read_header(str(bad))


def test_missing_or_mistyped_metadata_is_named_not_an_internal_error(tmp_path):
    """A gemma2 file without its sliding window once raised TypeError outside the reader's checks
    (DC900 here, a traceback at start); a missing block_count read 'without a readable int() argument...'."""
    from distillc.runtime.convert.gguf_meta import GGUFError, gguf_arch_fields, read_header

    data = (ROOT / GEMMA2).read_bytes()
    key = b"gemma2.attention.sliding_window"
    assert data.count(key) == 1
    nowin = tmp_path / "nowin.gguf"
    nowin.write_bytes(data.replace(key, b"gemma2.attention.sliding_wXndow"))
    result = check_text(spec_text(f"teacher:\n  model: {GEMMA2_INLINE}\n  checkpoint: {nowin}\n"))
    assert "DC900" not in codes(result)
    assert "without a readable 'gemma2.attention.sliding_window'" in find(result, "DC183").message
    key = b"gemma2.block_count"
    blocks = tmp_path / "noblocks.gguf"
    blocks.write_bytes(data.replace(key, b"gemma2.block_cXunt", 1))
    with pytest.raises(GGUFError, match="without a readable 'gemma2.block_count'"):
        gguf_arch_fields(read_header(str(blocks)))
