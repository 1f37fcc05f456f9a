"""GGUF checkpoints (llama.cpp's format): the tiny fixtures (tests/fixtures/make_gguf_fixtures.py,
written the way llama.cpp's converter writes a Llama: q/k permuted, F32 or Q8_0/F16/Q4_1) load to the
function transformers' own GGUF loader reads from the same files (max KL <= 1e-5 in float32, scanned
and unscanned, and sharded over a mesh); one file per dense family, converted from the Hugging Face
fixtures as llama.cpp converts that family (llama, qwen2, qwen3, gemma, gemma2, gemma3 architectures),
loads to the Hugging Face goldens; the header is checked against the spec's architecture; a
truncated, corrupt or mismatched file is one CheckpointError naming the path and the tensor;
sentencepiece vocabularies give transformers' token ids."""

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
from tests.test_hf_models import FIXTURES as HF_FIXTURES, fixture_arch, forward, max_kl, side

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


# ----------------------------------------------------------------------------- every dense family

GGUF_FAMILIES = ["llama2", "llama3.1", "mistral", "qwen2.5", "qwen3", "gemma", "gemma2", "gemma3"]
ARCHITECTURES = {"llama2": "llama", "llama3.1": "llama", "mistral": "llama", "qwen2.5": "qwen2", "qwen3": "qwen3",
                 "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3"}


def family_file(family: str) -> str:
    return str(FIXTURES / f"family-{family}.gguf")


def family_arch(family: str) -> ModelArch:
    """The Hugging Face fixture's architecture as llama.cpp reads its GGUF: gemma2/gemma3 scale queries
    by head_dim^-1/2 below 27B (no query_pre_attn_scalar in GGUF), the fixtures' 24 is not written."""
    arch = fixture_arch(family)
    return arch.model_copy(update={"query_pre_attn_scalar": float(arch.head_dim)}) if family in ("gemma2", "gemma3") else arch


def family_goldens(family: str) -> tuple[np.ndarray, np.ndarray]:
    own = FIXTURES / f"family-{family}.golden.jsonl"
    path = own if own.exists() else HF_FIXTURES / family / "golden.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return np.array([r["tokens"] for r in rows], np.int32), np.array([r["logits"] for r in rows], np.float32)


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_each_family_loads_to_the_hugging_face_goldens(family):
    """Each family's GGUF (q/k permuted for llama only, gemma norms stored as 1 + w, rope_freqs, biases,
    q/k norms, soft-caps and windows as metadata) gives transformers' logits of the source model."""
    tokens, golden = family_goldens(family)
    ours = forward(family_arch(family), family_file(family), True, tokens)
    assert max_kl(golden, ours) <= MAX_KL
    assert (ours.argmax(-1) == golden.argmax(-1)).all()


@pytest.mark.parametrize("family", ["llama3.1", "gemma3"])
def test_unscanned_layers_load_the_same(family):
    tokens, golden = family_goldens(family)
    assert max_kl(golden, forward(family_arch(family), family_file(family), False, tokens)) <= MAX_KL


def test_family_fixtures_are_what_llama_cpp_writes():
    """The architecture each file names, and the conventions it holds that the loader undoes."""
    for family in GGUF_FAMILIES:
        h = gguf_meta.read_header(family_file(family))
        assert h.architecture == ARCHITECTURES[family] and gguf_meta.arch_differences(h, family_arch(family)) == []
    assert "rope_freqs.weight" in gguf_meta.read_header(family_file("llama3.1")).tensors
    from distillc.runtime.convert.hf import HFCheckpoint

    for name, hf_name in (("output_norm.weight", "model.norm.weight"), ("blk.1.attn_q_norm.weight",
                                                                      "model.layers.1.self_attn.q_norm.weight")):
        family = "gemma" if name.startswith("output") else "gemma3"
        stored = GGUFCheckpoint(family_file(family)).tensor(name).read()
        np.testing.assert_array_equal(stored, HFCheckpoint(str(HF_FIXTURES / family)).tensor(hf_name).read() + 1)
    q_hf = HFCheckpoint(str(HF_FIXTURES / "qwen2.5")).tensor("model.layers.0.self_attn.q_proj.bias").read()
    np.testing.assert_array_equal(GGUFCheckpoint(family_file("qwen2.5")).tensor("blk.0.attn_q.bias").read(), q_hf)
    assert gguf_meta.read_header(family_file("gemma2")).metadata["gemma2.attn_logit_softcapping"] == 0.5


@pytest.mark.parametrize("family,convention", [("mistral", "permutation"), ("gemma", "norm shift"),
                                               ("gemma2", "query scaling"), ("llama3.1", "rope_freqs")])
def test_each_convention_matters(family, convention, monkeypatch):
    """Without undoing each convention (or with the HF fixture's query scaling, which the file cannot
    state) the logits differ from the goldens by far more than the bound."""
    from distillc.runtime.convert import gguf as gguf_loader

    arch = family_arch(family)
    if convention == "permutation":
        monkeypatch.setattr(Unpermuted, "read", lambda self, index=(): self.inner.read(index))
    elif convention == "norm shift":
        monkeypatch.setattr(gguf_loader.Shifted, "read", lambda self, index=(): self.inner.read(index))
    elif convention == "query scaling":
        arch = fixture_arch(family)
        monkeypatch.setattr(gguf_meta, "arch_differences", lambda h, a: [])
    else:
        arch = arch.model_copy(update={"rope_scaling": None})
        monkeypatch.setattr(gguf_meta, "arch_differences", lambda h, a: [])
    tokens, golden = family_goldens(family)
    assert max_kl(golden, forward(arch, family_file(family), True, tokens)) > 10 * MAX_KL


def test_architecture_from_the_header_alone():
    """`distillc logits FILE.gguf` without --model: every feature from the header, as llama.cpp reads it."""
    skip = ("name", "family", "tokenizer", "source")
    for family in GGUF_FAMILIES:
        if family == "llama3.1":
            continue
        ours = gguf_meta.arch_from_gguf(gguf_meta.read_header(family_file(family)), family)
        want = family_arch(family)
        assert {k: v for k, v in ours.model_dump().items() if k not in skip} == \
            {k: v for k, v in want.model_dump().items() if k not in skip}, family
    # the tiny Llama 3.1's head_dim 16 leaves one interpolated frequency: the band is not determined
    with pytest.raises(gguf_meta.GGUFError, match=r"rope_freqs.weight does not determine the llama3 RoPE scaling"):
        gguf_meta.arch_from_gguf(gguf_meta.read_header(family_file("llama3.1")), "x")


def test_a_sliding_window_pattern_in_the_metadata_must_be_the_family_one(tmp_path):
    """Newer llama.cpp files may state the pattern (an int period or a bool per layer, True = sliding):
    gemma3's 5:1 is accepted in either form, another pattern is refused naming the key."""
    import gguf

    h = gguf_meta.read_header(family_file("gemma3"))
    for pattern, ok in ((6, True), ([True] * 5 + [False, True], True), (2, False), ([True] * 7, False)):
        path = tmp_path / "p.gguf"
        w = gguf.GGUFWriter(str(path), "gemma3")
        for key, value in h.metadata.items():
            if key.startswith("gemma3.") and isinstance(value, (int, float)) and not isinstance(value, bool):
                (w.add_uint32 if isinstance(value, int) else w.add_float32)(key, value)
        if isinstance(pattern, list):
            w.add_sliding_window_pattern(pattern)
        else:
            w.add_uint32("gemma3.attention.sliding_window_pattern", pattern)
        w.add_vocab_size(96)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        header = gguf_meta.read_header(str(path))
        if ok:
            assert gguf_meta.gguf_arch_fields(header)["local_global_ratio"] == "5:1"
        else:
            with pytest.raises(gguf_meta.GGUFError, match=r"sliding_window_pattern .* is not gemma3's 5:1 pattern"):
                gguf_meta.gguf_arch_fields(header)


def test_llama3_factors_round_trip_the_published_scaling():
    """Llama 3.1 8B's scaling (theta 5e5, head_dim 128, factor 8, low 1, high 4, context 8192) gives
    six interpolated frequencies; the fit recovers it exactly, and llama3.2's factor 32 too."""
    from distillc.runtime.arch import RopeScaling

    for factor, hd in ((8.0, 128), (32.0, 64)):
        s = RopeScaling(factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
        assert gguf_meta.fit_llama3(gguf_meta.llama3_factors(5e5, hd, s), 5e5, hd, "f") == s


def test_a_mismatched_rope_scaling_is_named():
    h = gguf_meta.read_header(family_file("llama3.1"))
    arch = family_arch("llama3.1")
    other = arch.rope_scaling.model_copy(update={"original_max_position": 32})  # type: ignore[union-attr]
    assert gguf_meta.arch_differences(h, arch.model_copy(update={"rope_scaling": other}))[0].startswith(
        "rope_scaling: checkpoint rope_freqs.weight [")
    assert gguf_meta.arch_differences(h, arch.model_copy(update={"rope_scaling": None})) == [
        "rope_scaling: checkpoint llama3 (rope_freqs.weight), model None"]


def test_a_family_mismatch_is_named():
    why = gguf_meta.arch_differences(gguf_meta.read_header(family_file("qwen2.5")), fixture_arch("llama2"))
    assert why[0] == "general.architecture 'qwen2' is not family 'llama2'"
    assert "attention_bias: checkpoint True, model False" in why


def test_gemma_padded_vocabulary_reads_zeros_past_the_file():
    """gemma's catalog embedding is padded (256128 rows over the tokenizer's 256000): a file with the
    tokenizer's rows loads with zeros past them, as from Hugging Face."""
    from flax import nnx

    arch = family_arch("gemma").model_copy(update={"vocab_size": 128, "real_vocab_size": 96})
    assert gguf_meta.arch_differences(gguf_meta.read_header(family_file("gemma")), arch) == []
    cfg = make_config("/tmp/unused", mesh=(1, 1, 1))
    _, params = load_params(side(arch, family_file("gemma")), True, distributed.make_mesh(cfg.mesh))
    embed = np.asarray(nnx.to_pure_dict(params)["embed"])
    assert embed.shape == (128, 64) and not embed[96:].any() and embed[:96].any()


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
    bad = tmp_path / "mamba.gguf"
    bad.write_bytes(data.replace(key, key[:-13] + struct.pack("<Q", 5) + b"mamba"))
    with pytest.raises(CheckpointError, match=r"general.architecture 'mamba' is not loaded from GGUF by this runtime "
                       r"\(llama, qwen2, qwen3, gemma, gemma2, gemma3 are\)"):
        _load(arch_of("tiny-llama-f32"), str(bad))




# ----------------------------------------------------------------------------- tokenizer


def test_data_tokenizer_may_name_the_gguf_file():
    """The tiny fixtures carry a byte-level BPE of 96 symbols (no merges): 'B', 'C', ... are ids 0, 1, ..."""
    from distillc.runtime.data.tokenizers import load_tokenizer

    tok = load_tokenizer(str(FIXTURES / "tiny-llama-f32.gguf"))
    assert tok.vocab_size == 96
    assert tok.encode("BCD").tolist() == [0, 1, 2] and tok.decode([0, 1, 2]) == "BCD"


class _RemoteGGUF:
    """An etils.epath.Path stand-in for gs://bucket/NAME served from `files`, counting the bytes read."""

    read = 0

    def __init__(self, files: dict, path: str):
        self.local = files.get(str(path).removeprefix("gs://bucket/"))

    def exists(self) -> bool:
        return self.local is not None

    def open(self, mode: str):
        f = open(self.local, mode)
        real_read = f.read

        def counted(n=-1):
            data = real_read(n)
            _RemoteGGUF.read += len(data)
            return data

        f.read = counted
        return f


def test_a_gs_gguf_tokenizer_reads_the_header_by_ranges(tmp_path, monkeypatch):
    """data.tokenizer naming a gs:// GGUF: the vocabulary is built from the header, read by ranges
    (from 256 bytes here, x4), never the tensor data and never copied to a local file."""
    from etils import epath

    from distillc.runtime.data.tokenizers import load_tokenizer

    big = tmp_path / "big.gguf"
    big.write_bytes((FIXTURES / "family-llama2.gguf").read_bytes() + bytes(8 << 20))
    monkeypatch.setattr(epath, "Path", lambda p: _RemoteGGUF({"m.gguf": big}, p))
    monkeypatch.setattr(gguf_meta, "FIRST_READ", 256)
    monkeypatch.setattr(gguf_meta.tempfile, "mkstemp", lambda *a, **k: pytest.fail("copied the whole file"))
    _RemoteGGUF.read = 0
    remote = load_tokenizer("gs://bucket/m.gguf")
    local = load_tokenizer(str(FIXTURES / "family-llama2.gguf"))
    assert 256 < _RemoteGGUF.read < 1 << 20
    for text in ("Hello world", "line\nnext été", "  two  spaces"):
        assert remote.encode(text).tolist() == local.encode(text).tolist()
    with pytest.raises(gguf_meta.GGUFError, match="does not exist"):
        gguf_meta.header("gs://bucket/missing.gguf")


def test_a_gs_gguf_checkpoint_is_copied_once_and_removed_at_exit(tmp_path, monkeypatch):
    """A gs:// GGUF checkpoint's weights are memory-mapped from one local copy per process (the
    teacher and a later export reuse it), which is deleted when the process exits."""
    from etils import epath

    monkeypatch.setattr(epath, "Path", lambda p: _RemoteGGUF({"m.gguf": FIXTURES / "tiny-llama-f32.gguf"}, p))
    monkeypatch.setattr(gguf_meta, "_COPIES", {})
    monkeypatch.setattr(gguf_meta.tempfile, "tempdir", str(tmp_path))
    first = gguf_meta.local_copy("gs://bucket/m.gguf")
    assert gguf_meta.local_copy("gs://bucket/m.gguf") == first
    assert Path(first).read_bytes() == (FIXTURES / "tiny-llama-f32.gguf").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [Path(first).name]
    gguf_meta._remove_copies()  # what atexit runs
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stem", ["family-llama2", "family-gemma"])
def test_sentencepiece_vocabularies_give_transformers_ids(stem):
    """A sentencepiece vocabulary (tokenizer.ggml.model llama; Llama's Metaspace, Gemma's own space
    handling and merge order) gives the ids transformers' GGUF tokenizer gives (spm-tokens.json):
    unicode through byte fallback, unknown characters, runs of spaces, control tokens kept whole."""
    from distillc.runtime.data.tokenizers import load_tokenizer

    expected = json.loads((FIXTURES / "spm-tokens.json").read_text(encoding="utf-8"))[stem]
    tok = load_tokenizer(str(FIXTURES / f"{stem}.gguf"))
    assert tok.vocab_size == 96
    for text, ids in expected.items():
        assert tok.encode(text).tolist() == ids, text
    assert tok.decode(expected["Hello world"]) == "Hello world"
    assert tok.decode(expected["line\nnext été"]) == "line\nnext été"  # \n through its <0x0A> byte piece


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


def test_damaged_tokenizer_metadata_is_a_tokenizer_error(tmp_path):
    """Ids where token strings belong, a merge of one piece, a merge of an unknown piece: once a
    TypeError or the tokenizers library's bare Exception, as a traceback out of `data prepare`."""
    from distillc.runtime.data.tokenizers import TokenizerError, load_tokenizer

    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x)) + x.encode()

    def strings(key: str, items: list[str]) -> bytes:
        return s(key) + struct.pack("<IIQ", 9, 8, len(items)) + b"".join(s(i) for i in items)

    head = [s("general.architecture") + struct.pack("<I", 8) + s("llama"),
            s("tokenizer.ggml.model") + struct.pack("<I", 8) + s("gpt2")]
    cases = {"ids": [s("tokenizer.ggml.tokens") + struct.pack("<IIQ3I", 9, 4, 3, 1, 2, 3)],
             "one-piece": [strings("tokenizer.ggml.tokens", ["a", "b", "ab"]), strings("tokenizer.ggml.merges", ["ab"])],
             "unknown": [strings("tokenizer.ggml.tokens", ["a", "b", "ab"]), strings("tokenizer.ggml.merges", ["a z"])]}
    for name, kvs in cases.items():
        f = tmp_path / f"{name}.gguf"
        f.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(head) + len(kvs)) + b"".join(head + kvs) + b"\0" * 32)
        with pytest.raises(TokenizerError, match=rf"{name}\.gguf: its tokenizer metadata cannot be built"):
            load_tokenizer(str(f))


def test_logits_and_export_take_a_gguf_source(tmp_path):
    """`distillc logits FILE.gguf` / `distillc export FILE.gguf`: the architecture comes from the header."""
    from distillc.runtime.convert.export import resolve_source

    s = resolve_source(str(FIXTURES / "tiny-llama-quant.gguf"), None, None)
    assert s.format == "gguf" and s.arch == arch_of("tiny-llama-quant").model_copy(update={"name": s.arch.name})
    g = resolve_source(family_file("gemma3"), None, None)
    assert g.arch.family == "gemma3" and g.arch.model_copy(update={"name": "x", "family": "x", "tokenizer": "x"}) == \
        family_arch("gemma3").model_copy(update={"name": "x", "family": "x", "tokenizer": "x"})
    with pytest.raises(CheckpointError, match=r"does not determine the llama3 RoPE scaling .*--model"):
        resolve_source(family_file("llama3.1"), None, None)
    assert resolve_source(family_file("llama3.1"), None, family_arch("llama3.1")).arch == family_arch("llama3.1")
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


def test_the_tokenizer_fingerprint_hashes_a_gguf_in_blocks(monkeypatch):
    """data.tokenizer may name a GGUF checkpoint of several GB: its sha256 (the prepared and top-k
    manifests' identity) once read the whole file into memory; the same digest, in blocks."""
    import hashlib

    from etils import epath

    from distillc.runtime.data.tokenizers import tokenizer_fingerprint

    path = FIXTURES / "tiny-llama-f32.gguf"
    want = hashlib.sha256(path.read_bytes()).hexdigest()

    def whole(self):
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(type(epath.Path(str(path))), "read_bytes", whole)
    assert tokenizer_fingerprint(str(path)) == {"name": str(path), "sha256": want}
