"""GGUF checkpoints (llama.cpp's format): the tiny fixtures (tests/fixtures/make_gguf_fixtures.py,
written the way llama.cpp's converter writes a Llama: q/k permuted, F32 or Q8_0/F16/Q4_1) load to the
function transformers' own GGUF loader reads from the same files (max KL <= 1e-5 in float32, scanned
and unscanned, and sharded over a mesh); the header is checked against the spec's architecture; a
truncated, corrupt or mismatched file is one CheckpointError naming the path and the tensor."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distillc.runtime.arch import ModelArch
from distillc.runtime.convert import gguf_meta
from distillc.runtime.convert.gguf import GGUFCheckpoint, Unpermuted
from distillc.runtime.train import distributed
from distillc.runtime.train.checkpoints import CheckpointError
from distillc.runtime.train.params import load_params

from tests.conftest import ROOT, xla_env
from tests.runtime_configs import make_config
from tests.test_hf_models import forward, max_kl, side

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gguf"
FILES = ["tiny-llama-f32", "tiny-llama-quant"]
MAX_KL = 1e-5  # both: transformers and we dequantize the same blocks to the same float32 weights


def arch_of(stem: str) -> ModelArch:
    return gguf_meta.arch_from_gguf(gguf_meta.read_header(str(FIXTURES / f"{stem}.gguf")), stem)


def goldens(stem: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (FIXTURES / f"{stem}.golden.jsonl").read_text().splitlines()]
    return np.array([r["tokens"] for r in rows], np.int32), np.array([r["logits"] for r in rows], np.float32)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("stem", FILES)
def test_logits_equal_transformers_gguf_loader(stem, scan):
    tokens, golden = goldens(stem)
    ours = forward(arch_of(stem), str(FIXTURES / f"{stem}.gguf"), scan, tokens)
    assert max_kl(golden, ours) <= MAX_KL
    assert (ours.argmax(-1) == golden.argmax(-1)).all()


def test_fixtures_exercise_the_features():
    f32, quant = arch_of("tiny-llama-f32"), arch_of("tiny-llama-quant")
    assert f32.num_kv_heads < f32.num_heads and not f32.tie_embeddings and quant.tie_embeddings
    types = {t.ggml_type for t in gguf_meta.read_header(str(FIXTURES / "tiny-llama-quant.gguf")).tensors.values()}
    assert types == {0, 1, 3, 8}  # F32, F16, Q4_1, Q8_0


def test_without_undoing_the_permutation_the_logits_differ(monkeypatch):
    """The q/k permutation matters: reading the rows as stored gives another function."""
    monkeypatch.setattr(Unpermuted, "read", lambda self, index=(): self.inner.read(index))
    tokens, golden = goldens("tiny-llama-f32")
    ours = forward(arch_of("tiny-llama-f32"), str(FIXTURES / "tiny-llama-f32.gguf"), True, tokens)
    assert max_kl(golden, ours) > 1e-3


def test_format_is_detected_from_the_suffix():
    tokens, golden = goldens("tiny-llama-quant")
    cfg = make_config("/tmp/unused", mesh=(1, 1, 1))
    from flax import nnx

    graphdef, params = load_params(side(arch_of("tiny-llama-quant"), str(FIXTURES / "tiny-llama-quant.gguf")),
                                   True, distributed.make_mesh(cfg.mesh))
    ours = np.asarray(nnx.merge(graphdef, params)(np.asarray(tokens)).logits)
    assert max_kl(golden, ours) <= MAX_KL


SHARDED_CHECK = """
import json
from flax import nnx
from tests.test_gguf import FIXTURES, arch_of, goldens
from tests.test_hf_models import forward, max_kl, side
from tests.runtime_configs import make_config
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params
tokens, golden = goldens("tiny-llama-quant")
arch, path = arch_of("tiny-llama-quant"), str(FIXTURES / "tiny-llama-quant.gguf")
mesh = distributed.make_mesh(make_config("/tmp/unused", mesh=(1, 2, 2)).mesh)
_, params = load_params(side(arch, path), True, mesh)
k = nnx.to_pure_dict(params)["layers"]["attn"]["k"]
print(json.dumps({"kl": max_kl(golden, forward(arch, path, True, tokens, mesh_shape=(1, 2, 2))),
                  "k": list(k.shape), "shard": sorted({tuple(s.data.shape) for s in k.addressable_shards})}))
"""


def test_sharded_load_on_a_mesh_equals_transformers():
    """fsdp 2 x tensor 2 over 4 host devices: each device dequantizes its own rows (one k head each)."""
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=xla_env(4), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kl"] <= MAX_KL
    assert result["k"] == [2, 64, 2, 16] and result["shard"] == [[2, 32, 1, 16]]


# ----------------------------------------------------------------------------- errors


def _load(arch: ModelArch, path: str) -> None:
    cfg = make_config("/tmp/unused", mesh=(1, 1, 1))
    load_params(side(arch, path, "gguf"), True, distributed.make_mesh(cfg.mesh))


def test_truncated_file_names_the_path_and_tensor(tmp_path):
    src = FIXTURES / "tiny-llama-f32.gguf"
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(src.read_bytes()[:200_000])
    with pytest.raises(CheckpointError, match=r"cut\.gguf: truncated: tensor 'blk\.\d\.[a-z_]+\.weight'"):
        _load(arch_of("tiny-llama-f32"), str(bad))


def test_truncated_header_and_non_gguf_files(tmp_path):
    bad = tmp_path / "head.gguf"
    bad.write_bytes((FIXTURES / "tiny-llama-f32.gguf").read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"head\.gguf: truncated GGUF header"):
        _load(arch_of("tiny-llama-f32"), str(bad))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"other\.gguf: not a GGUF file"):
        _load(arch_of("tiny-llama-f32"), str(other))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.gguf' does not exist"):
        _load(arch_of("tiny-llama-f32"), str(tmp_path / "nope.gguf"))


def _with_dims(tmp_path: Path, name: str, dims: tuple[int, ...]) -> Path:
    """A copy of the F32 fixture whose header gives tensor `name` other dims (same element count)."""
    data = bytearray((FIXTURES / "tiny-llama-f32.gguf").read_bytes())
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    n = struct.unpack_from("<I", data, at)[0]
    assert n == len(dims)
    struct.pack_into(f"<{n}Q", data, at + 4, *dims)
    out = tmp_path / "reshaped.gguf"
    out.write_bytes(bytes(data))
    return out


def test_wrong_shape_names_the_tensor(tmp_path):
    path = _with_dims(tmp_path, "blk.1.ffn_up.weight", (96, 64))  # [in, out] swapped
    with pytest.raises(CheckpointError, match=r"reshaped\.gguf: tensor 'blk\.1\.ffn_up\.weight' has shape \(64, 96\)"):
        _load(arch_of("tiny-llama-f32"), str(path))


def test_architecture_that_disagrees_names_each_field():
    arch = arch_of("tiny-llama-f32").model_copy(update=dict(num_kv_heads=4, rope_theta=500000.0))
    with pytest.raises(CheckpointError, match=r"num_kv_heads: checkpoint 2, model 4; rope_theta: checkpoint 10000"):
        _load(arch, str(FIXTURES / "tiny-llama-f32.gguf"))


def test_tied_model_refuses_an_untied_file():
    arch = arch_of("tiny-llama-f32").model_copy(update=dict(tie_embeddings=True))
    with pytest.raises(CheckpointError, match=r"tie_embeddings: checkpoint False, model True"):
        _load(arch, str(FIXTURES / "tiny-llama-f32.gguf"))


def test_float32_metadata_equals_the_decimal_a_config_writes():
    """GGUF stores eps and theta as float32 (1e-5 reads 9.99999975e-06): equal to the catalog's 1e-5."""
    h = gguf_meta.read_header(str(FIXTURES / "tiny-llama-f32.gguf"))
    assert h.metadata["llama.attention.layer_norm_rms_epsilon"] != 1e-5
    assert gguf_meta.arch_differences(h, arch_of("tiny-llama-f32").model_copy(update=dict(norm_eps=1e-5))) == []
    assert gguf_meta.arch_differences(h, arch_of("tiny-llama-f32").model_copy(update=dict(norm_eps=1e-6)))


def test_header_reader_agrees_with_the_gguf_package():
    path = str(FIXTURES / "tiny-llama-quant.gguf")
    ours = gguf_meta.read_header(path)
    ckpt = GGUFCheckpoint(path)
    from gguf import GGUFReader

    theirs = {t.name: t for t in GGUFReader(path).tensors}
    assert set(ours.tensors) == set(theirs) == set(ckpt.tensors)
    for name, t in ours.tensors.items():
        assert t.offset == theirs[name].data_offset and t.ggml_type == int(theirs[name].tensor_type)
        assert ckpt.tensors[name].shape == t.shape


def test_other_architectures_are_refused(tmp_path):
    data = (FIXTURES / "tiny-llama-f32.gguf").read_bytes()
    key = struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<I", 8) + struct.pack("<Q", 5) + b"llama"
    assert key in data
    bad = tmp_path / "qwen.gguf"
    bad.write_bytes(data.replace(key, key[:-13] + struct.pack("<Q", 5) + b"qwen2"))
    with pytest.raises(CheckpointError, match=r"general.architecture 'qwen2' is not loaded from GGUF"):
        _load(arch_of("tiny-llama-f32"), str(bad))




# ----------------------------------------------------------------------------- tokenizer


def test_data_tokenizer_may_name_the_gguf_file():
    """The tiny fixtures carry a byte-level BPE of 96 symbols (no merges): 'B', 'C', ... are ids 0, 1, ..."""
    from distillc.runtime.data.tokenizers import load_tokenizer

    tok = load_tokenizer(str(FIXTURES / "tiny-llama-f32.gguf"))
    assert tok.vocab_size == 96
    assert tok.encode("BCD").tolist() == [0, 1, 2] and tok.decode([0, 1, 2]) == "BCD"


def test_a_tokenizer_this_does_not_build_is_a_tokenizer_error(tmp_path):
    from distillc.runtime.data.tokenizers import TokenizerError, load_tokenizer

    data = (FIXTURES / "tiny-llama-f32.gguf").read_bytes()
    key = b"tokenizer.ggml.model" + struct.pack("<I", 8) + struct.pack("<Q", 4) + b"gpt2"
    assert key in data
    bad = tmp_path / "spm.gguf"
    bad.write_bytes(data.replace(key, key[:-4] + b"bert"))
    with pytest.raises(TokenizerError, match=r"spm\.gguf: tokenizer.ggml.model 'bert' is not built from GGUF"):
        load_tokenizer(str(bad))
    with pytest.raises(TokenizerError, match=r"nope\.gguf' does not exist"):
        load_tokenizer(str(tmp_path / "nope.gguf"))


def test_logits_and_export_take_a_gguf_source(tmp_path):
    """`distillc logits FILE.gguf` / `distillc export FILE.gguf`: the architecture comes from the header."""
    from distillc.runtime.convert.export import resolve_source

    s = resolve_source(str(FIXTURES / "tiny-llama-quant.gguf"), None, None)
    assert s.format == "gguf" and s.arch == arch_of("tiny-llama-quant").model_copy(update={"name": s.arch.name})
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all, but long enough")
    with pytest.raises(CheckpointError, match=r"bad\.gguf: not a GGUF file"):
        resolve_source(str(bad), None, None)


def test_local_launch_restores_a_gguf_teacher_and_never_trains_into_its_path(tmp_path):
    """`--local` trains and caches a teacher only at a distillc path that is still empty; a .gguf
    path is a published model: restored as it is, and a missing one is the loader's exit 2."""
    from distillc.runtime.local import LocalReport, ensure_teacher

    cfg = make_config(tmp_path / "run", teacher=arch_of("tiny-llama-f32"),
                      teacher_checkpoint=str(FIXTURES / "tiny-llama-f32.gguf"))
    assert ensure_teacher(cfg, LocalReport(), console=False) == "restored"
    missing = make_config(tmp_path / "run2", teacher=arch_of("tiny-llama-f32"),
                          teacher_checkpoint=str(tmp_path / "not-fetched.gguf"))
    assert ensure_teacher(missing, LocalReport(), console=False) == "restored"
    assert not (tmp_path / "not-fetched.gguf").exists()
    with pytest.raises(CheckpointError, match=r"not-fetched\.gguf' does not exist"):
        _load(arch_of("tiny-llama-f32"), str(tmp_path / "not-fetched.gguf"))
