"""Hugging Face checkpoints: every exact family reproduces transformers' logits (golden fixtures from
tests/fixtures/make_hf_fixtures.py, max KL <= 1e-5 in float32), scanned and unscanned, loaded
streamed onto a mesh; a mismatched checkpoint is one clear error naming the path and the tensor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from distillc.runtime.arch import ModelArch
from distillc.runtime.config import SideConfig
from distillc.runtime.convert.hf import HFCheckpoint, arch_from_hf_config
from distillc.runtime.train import distributed
from distillc.runtime.train.checkpoints import CheckpointError
from distillc.runtime.train.params import load_params

from tests.conftest import ROOT, xla_env
from tests.published_configs import GEMMA3_MM_HF, gemma3_published
from tests.runtime_configs import make_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.json").exists())
MAX_KL = 1e-5


def fixture_arch(family: str) -> ModelArch:
    config = json.loads((FIXTURES / family / "config.json").read_text())
    return arch_from_hf_config(config, f"fixture-{family}").model_copy(update={"family": family.removesuffix("-byte").removesuffix("-mm").removesuffix("-pairs")})


def side(arch: ModelArch, checkpoint: str, fmt: str | None = None) -> SideConfig:
    return SideConfig(role="teacher", arch=arch, checkpoint=checkpoint, format=fmt, weight_dtype="float32",
                      activation_dtype="float32", remat="none", init_seed=0)


def goldens(family: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (FIXTURES / family / "golden.jsonl").read_text().splitlines()]
    return np.array([r["tokens"] for r in rows], np.int32), np.array([r["logits"] for r in rows], np.float32)


def max_kl(golden: np.ndarray, ours: np.ndarray) -> float:
    """max over positions of KL(golden || ours), in float64."""
    def logp(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = logp(golden), logp(ours)
    return float((np.exp(p) * (p - q)).sum(-1).max())


def forward(arch: ModelArch, checkpoint: str, scan: bool, tokens: np.ndarray, mesh_shape=(1, 1, 1)) -> np.ndarray:
    cfg = make_config("/tmp/unused", mesh=mesh_shape)
    mesh = distributed.make_mesh(cfg.mesh)
    graphdef, params = load_params(side(arch, checkpoint), scan, mesh)
    model = nnx.merge(graphdef, params)
    return np.asarray(model(jax.numpy.asarray(tokens)).logits)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_transformers(family, scan):
    tokens, golden = goldens(family)
    ours = forward(fixture_arch(family), str(FIXTURES / family), scan, tokens)
    assert max_kl(golden, ours) <= MAX_KL
    assert (ours.argmax(-1) == golden.argmax(-1)).all()


def test_every_feature_is_exercised():
    archs = {f: fixture_arch(f) for f in FAMILIES}
    assert set(archs) >= {"gemma", "llama2", "llama3.1", "mistral", "qwen2.5", "qwen3"}
    g = archs["gemma"]
    assert g.activation == "gelu_tanh" and g.norm_plus_one and g.embed_scale and g.num_kv_heads == 1
    assert archs["llama3.1"].rope_scaling is not None and archs["llama3.1"].num_kv_heads < archs["llama3.1"].num_heads
    assert archs["llama2"].tie_embeddings and not archs["llama3.1"].tie_embeddings
    assert archs["qwen2.5"].attention_bias and archs["qwen3"].qk_norm
    assert archs["qwen3"].head_dim * archs["qwen3"].num_heads != archs["qwen3"].emb_dim
    assert (FIXTURES / "llama3.1" / "model.safetensors.index.json").exists()  # sharded with an index
    seq = goldens("gemma2")[0].shape[1]
    g2, g3 = archs["gemma2"], archs["gemma3"]
    assert g2.post_norms and g2.attn_logit_softcap and g2.final_logit_softcap and g2.tie_embeddings
    assert (g2.attention, g2.local_global_ratio) == ("local_global", "1:1") and g2.sliding_window < seq
    assert g2.query_pre_attn_scalar != g2.head_dim and g2.head_dim * g2.num_heads != g2.emb_dim
    assert g2.num_kv_heads < g2.num_heads and g2.num_layers % 2  # GQA; the pattern restarts on layer 2
    assert g3.post_norms and g3.qk_norm and g3.num_kv_heads == 1 and g3.attn_logit_softcap is None
    assert (g3.attention, g3.local_global_ratio) == ("local_global", "5:1") and g3.sliding_window < seq
    assert g3.local_layers() == (True,) * 5 + (False, True)  # layer 5 global, 6 local again
    assert g3.rope_local_theta != g3.rope_theta and g3.rope_scaling is not None and g3.rope_scaling.kind == "linear"
    assert g3.query_pre_attn_scalar != g3.head_dim
    mm = archs["gemma3-mm"]  # the multimodal checkpoint's text decoder: every gemma3 feature as well
    same = ("post_norms", "qk_norm", "attention", "local_global_ratio", "sliding_window", "rope_theta",
            "rope_local_theta", "rope_scaling", "query_pre_attn_scalar", "attn_logit_softcap", "tie_embeddings")
    assert mm.family == "gemma3" and all(getattr(mm, k) == getattr(g3, k) for k in same)
    assert mm.query_pre_attn_scalar != mm.head_dim and mm.local_layers() == g3.local_layers()
    mm_config = json.loads((FIXTURES / "gemma3-mm" / "config.json").read_text())
    assert mm_config["model_type"] == "gemma3" and "vision_config" in mm_config
    tensors = HFCheckpoint(str(FIXTURES / "gemma3-mm")).tensors
    assert any(n.startswith("vision_tower.") for n in tensors) and any(n.startswith("multi_modal_projector.")
                                                                       for n in tensors)
    assert goldens("gemma3-mm")[0].max() < mm_config["image_token_index"] < mm.vocab_size  # rows past the text ids


def test_a_padded_vocabulary_loads_with_zero_rows():
    """Gemma's catalog embedding has 256128 rows over the checkpoint's 256000: the rows past the
    checkpoint's are zeros and the real tokens' logits are transformers'."""
    tokens, golden = goldens("gemma")
    arch = fixture_arch("gemma").model_copy(update={"vocab_size": 128, "real_vocab_size": 96})
    ours = forward(arch, str(FIXTURES / "gemma"), True, tokens)
    assert max_kl(golden, ours[..., :96]) <= MAX_KL
    np.testing.assert_array_equal(ours[..., 96:], 0.0)  # tied: the zero rows give zero logits


def test_gemma3_multimodal_text_rows_load_as_the_text_vocabulary():
    """The published multimodal embedding has 262208 rows over text ids < 262144 (its image token) and
    the catalog's gemma3 models 262144: a model of the image token's id rows reads the first rows, and
    its logits are transformers' on them; any other short vocabulary is a disagreement."""
    tokens, golden = goldens("gemma3-mm")
    image_token = json.loads((FIXTURES / "gemma3-mm" / "config.json").read_text())["image_token_index"]
    arch = fixture_arch("gemma3-mm").model_copy(update={"vocab_size": image_token})
    ours = forward(arch, str(FIXTURES / "gemma3-mm"), False, tokens)
    assert ours.shape[-1] == image_token
    np.testing.assert_allclose(ours, golden[..., :image_token], atol=1e-5)
    msg = _load_error(arch.model_copy(update={"vocab_size": image_token + 1}), FIXTURES / "gemma3-mm")
    assert f"vocab_size: checkpoint 96, model {image_token + 1}" in msg


def _renamed(tmp_path: Path, family: str, rename: dict[str, str]) -> Path:
    """A copy of a one-file fixture whose tensors' name prefixes are renamed (`rename`: old -> new),
    the bytes unchanged."""
    d = _copy(tmp_path, family)
    raw = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])

    def new(name: str) -> str:
        old = next((o for o in rename if name.startswith(o)), None)
        return rename[old] + name[len(old):] if old is not None else name

    text = json.dumps({new(k): v for k, v in header.items()}).encode()
    text += b" " * (-len(text) % 8)
    (d / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    return d


TRANSFORMERS5_NAMES = {"language_model.model.": "model.language_model.", "vision_tower.": "model.vision_tower.",
                       "multi_modal_projector.": "model.multi_modal_projector."}


def test_gemma3_multimodal_transformers5_names_load(tmp_path):
    """The same checkpoint with transformers 5's names (model.language_model.*, model.vision_tower.*)
    gives the same logits."""
    d = _renamed(tmp_path, "gemma3-mm", TRANSFORMERS5_NAMES)
    assert any(n.startswith("model.language_model.layers.") for n in HFCheckpoint(str(d)).tensors)
    tokens, golden = goldens("gemma3-mm")
    assert max_kl(golden, forward(fixture_arch("gemma3-mm"), str(d), True, tokens)) <= MAX_KL


def test_gemma3_multimodal_mistakes_are_one_clear_error(tmp_path):
    """A text_config field that disagrees with the spec's model names the field; a multimodal
    checkpoint without text decoder tensors, or a text_config of another model type, says so."""
    msg = _load_error(fixture_arch("gemma3-mm").model_copy(update={"query_pre_attn_scalar": 16.0}),
                      FIXTURES / "gemma3-mm")
    assert "query_pre_attn_scalar: checkpoint 24.0, model 16.0" in msg and "gemma3-mm" in msg
    d = _copy(tmp_path, "gemma3-mm")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "text_config": {**config["text_config"], "num_key_value_heads": 2}}))
    assert "num_kv_heads: checkpoint 2, model 1" in _load_error(fixture_arch("gemma3-mm"), d)
    (d / "config.json").write_text(json.dumps({**config, "text_config": {**config["text_config"], "model_type": "gemma2"}}))
    assert "text_config is not a gemma3_text config" in _load_error(fixture_arch("gemma3-mm"), d)
    (d / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    assert "ties its embeddings in one place and not the other" in _load_error(fixture_arch("gemma3-mm"), d)
    d = _renamed(tmp_path / "x", "gemma3-mm", {"language_model.model.": "decoder."})
    msg = _load_error(fixture_arch("gemma3-mm"), d)
    assert "holds no text decoder tensors" in msg and "language_model.model.*" in msg


@pytest.mark.parametrize("family, change", [
    ("gemma2", {"attn_logit_softcap": None}),
    ("gemma2", {"final_logit_softcap": None}),
    ("gemma2", {"query_pre_attn_scalar": None}),
    ("gemma3", {"attention": "global", "local_global_ratio": None, "sliding_window": None}),
    ("gemma3", {"rope_local_theta": None}),
    ("gemma3", {"rope_scaling": None}),
], ids=["attn-softcap", "final-softcap", "query-scale", "window", "local-rope", "rope-scaling"])
def test_each_gemma_feature_changes_the_logits(monkeypatch, family, change):
    """Every gemma2/gemma3 convention moves the fixture's logits far past MAX_KL (so the goldens check
    each), and a spec whose model lacks it is refused at load, naming the field."""
    from distillc.runtime.convert import hf as hf_module

    tokens, golden = goldens(family)
    wrong = fixture_arch(family).model_copy(update=change)
    assert set(change) & {d.split(":")[0] for d in hf_module.config_differences(
        json.loads((FIXTURES / family / "config.json").read_text()), wrong)}
    monkeypatch.setattr(hf_module, "config_differences", lambda config, arch: [])
    assert max_kl(golden, forward(wrong, str(FIXTURES / family), True, tokens)) > 10 * MAX_KL


# google/gemma-2-{2b,9b,27b} config.json as published (transformers 4.42: no layer_types, no
# tie_word_embeddings, rope_theta beside the rest), which the catalog entries must equal exactly
GEMMA2_HF_COMMON = dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], vocab_size=256000,
                        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                        rope_theta=10000.0, sliding_window=4096, attn_logit_softcapping=50.0,
                        final_logit_softcapping=30.0, attention_bias=False, max_position_embeddings=8192)
GEMMA2_HF = {
    "gemma2-2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "gemma2-9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                      num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
    "gemma2-27b": dict(hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
                       num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144),
}


@pytest.mark.parametrize("name", sorted(GEMMA2_HF))
def test_catalog_gemma2_equals_the_published_config(name):
    from distillc.compiler.catalog import model
    from distillc.runtime.convert.hf_config import config_differences

    config = {**GEMMA2_HF_COMMON, **GEMMA2_HF[name]}
    arch = model(name)
    assert arch is not None and config_differences(config, arch) == []
    assert config_differences({**config, "query_pre_attn_scalar": 224}, arch)  # a wrong scaling is caught


def test_gemma3_transformers4_config_keys():
    """gemma3_text as transformers 4 wrote it (rope_theta / rope_scaling for the global layers,
    rope_local_base_freq, sliding_window_pattern, no layer_types): the catalog's gemma3-27b fields."""
    from distillc.compiler.catalog import model
    from distillc.runtime.convert.hf_config import config_differences

    config = dict(model_type="gemma3_text", vocab_size=262144, hidden_size=5376, intermediate_size=21504,
                  num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                  hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, query_pre_attn_scalar=168,
                  rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                  sliding_window=1024, sliding_window_pattern=6, attn_logit_softcapping=None,
                  final_logit_softcapping=None)
    arch = model("gemma3-27b")
    assert arch is not None and config_differences(config, arch) == []
    assert arch.local_layers()[:12] == (True,) * 5 + (False,) + (True,) * 5 + (False,)


@pytest.mark.parametrize("name", sorted(GEMMA3_MM_HF))
def test_catalog_gemma3_equals_the_published_multimodal_config(name):
    """The catalog's gemma3 models are the published checkpoints' text decoders (262144 text rows of the
    262208-row embedding); each text_config field is checked, defaults included."""
    from distillc.compiler.catalog import model
    from distillc.runtime.convert.hf_config import config_differences, hf_arch_fields

    config = gemma3_published(name)
    arch = model(name)
    assert arch is not None and config_differences(config, arch) == []
    assert hf_arch_fields(config)["vocab_size"] == 262208
    other = "gemma3-27b" if name != "gemma3-27b" else "gemma3-4b"
    assert config_differences(gemma3_published(other), arch)  # another size's config is caught
    wrong = {**config, "text_config": {**config["text_config"], "rope_local_base_freq": 1e6}}
    assert any(d.startswith("rope_local_theta") for d in config_differences(wrong, arch))


def test_a_family_without_its_feature_differs():
    """The features matter: llama3.1 without its RoPE scaling, qwen2.5 without biases are far off."""
    tokens, golden = goldens("llama3.1")
    plain = fixture_arch("llama3.1").model_copy(update={"rope_scaling": None})
    with pytest.raises(CheckpointError, match="rope_scaling"):
        forward(plain, str(FIXTURES / "llama3.1"), True, tokens)


SHARDED_CHECK = """
import json, jax
from flax import nnx
from tests.test_hf_models import FIXTURES, fixture_arch, forward, goldens, max_kl, side
from tests.conftest import ROOT, xla_env
from tests.published_configs import GEMMA3_MM_HF, gemma3_published
from tests.runtime_configs import make_config
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params
assert jax.device_count() == 8
tokens, golden = goldens("llama3.1")
arch, path = fixture_arch("llama3.1"), str(FIXTURES / "llama3.1")
mesh = distributed.make_mesh(make_config("/tmp/unused", mesh=(1, 4, 2)).mesh)
_, params = load_params(side(arch, path), True, mesh)
q = nnx.to_pure_dict(params)["layers"]["attn"]["q"]
shard = {tuple(s.data.shape) for s in q.addressable_shards}
print(json.dumps({"kl": max_kl(golden, forward(arch, path, True, tokens, mesh_shape=(1, 4, 2))),
                  "q": list(q.shape), "shard": [list(s) for s in shard]}))
"""


def test_sharded_load_on_a_mesh_equals_transformers():
    """fsdp 4 x tensor 2 over 8 host devices: each device reads its own slices of each tensor."""
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=xla_env(8), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kl"] <= MAX_KL
    assert result["q"] == [2, 64, 4, 16] and result["shard"] == [[2, 16, 2, 16]]  # embed / 4, heads / 2


# ----------------------------------------------------------------------------- user mistakes


def _copy(tmp_path: Path, family: str) -> Path:
    dst = tmp_path / family
    shutil.copytree(FIXTURES / family, dst)
    return dst


def _load_error(arch: ModelArch, path: Path) -> str:
    with pytest.raises(CheckpointError) as e:
        forward(arch, str(path), True, np.zeros((1, 4), np.int32))
    return str(e.value)


def test_truncated_safetensors_names_the_file_and_tensor(tmp_path):
    d = _copy(tmp_path, "llama2")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    msg = _load_error(fixture_arch("llama2"), d)
    assert str(f) in msg and "truncated" in msg and "tensor 'model." in msg


def test_missing_shard_names_the_shard_and_a_tensor(tmp_path):
    d = _copy(tmp_path, "llama3.1")
    shard = sorted(d.glob("model-*.safetensors"))[-1]
    shard.unlink()
    msg = _load_error(fixture_arch("llama3.1"), d)
    assert str(shard) in msg and "missing" in msg and "tensor '" in msg


def test_wrong_shapes_name_the_tensor(tmp_path):
    d = _copy(tmp_path, "llama2")
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 128  # the config lies about the MLP: the tensors do not fit it
    (d / "config.json").write_text(json.dumps(config))
    arch = fixture_arch("llama2").model_copy(update={"mlp_dim": 128})
    msg = _load_error(arch, d)
    assert "tensor 'model.layers.0.mlp." in msg and str(d / "model.safetensors") in msg


def test_wrong_family_is_refused(tmp_path):
    arch = fixture_arch("qwen3").model_copy(update={"family": "llama3"})
    msg = _load_error(arch, FIXTURES / "qwen3")
    assert "model_type 'qwen3' is not family 'llama3'" in msg


def test_spec_architecture_that_disagrees_names_each_field():
    arch = fixture_arch("llama2").model_copy(update={"norm_eps": 1e-6, "num_kv_heads": 2})
    msg = _load_error(arch, FIXTURES / "llama2")
    assert "norm_eps" in msg and "num_kv_heads" in msg


def test_missing_config_json(tmp_path):
    d = _copy(tmp_path, "llama2")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        HFCheckpoint(str(d))
    # and then it is not detected as hf: format: hf says what was meant
    with pytest.raises(CheckpointError):
        cfg = make_config("/tmp/unused")
        load_params(side(fixture_arch("llama2"), str(d), "hf"), True, distributed.make_mesh(cfg.mesh))
