"""MaxText Orbax checkpoints (`format: maxtext`, `distillc export --to maxtext`).

The fixtures under tests/fixtures/maxtext were written by MaxText's own converter (to_maxtext.py,
see tests/fixtures/make_maxtext_fixtures.py) from the tiny Hugging Face fixtures, so loading them
checks our reading of MaxText's layout (query scaling, Llama 3.1's interleaved RoPE, qwen2.5's
biases, qwen3's q/k norms, scanned layer axis 1 and unscanned layers_i) against transformers'
logits, and exporting the same Hugging Face fixture must write exactly MaxText's tensors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from distillc.runtime.convert.maxtext import (
    convention, deinterleave, export_maxtext, interleave, is_maxtext_checkpoint, items_dir,
)
from distillc.runtime.train import distributed
from distillc.runtime.train.checkpoints import CheckpointError, save_params
from distillc.runtime.train.params import init_params, load_params

from tests.conftest import ROOT, xla_env
from tests.runtime_configs import make_config
from tests.test_hf_models import FIXTURES, MAX_KL, fixture_arch, forward, goldens, max_kl, side

MT = Path(__file__).resolve().parent / "fixtures" / "maxtext"
MT_FAMILIES = ("llama3.1", "qwen2.5", "qwen3", "gemma2-pairs", "gemma3")
# gemma2/gemma3 (whose loads are slower: four norms, 4 and 7 layers) load each stored layout onto the other run layout
LOAD_CASES = [(f, stored, scan) for f in MT_FAMILIES[:3] for stored in ("scanned", "unscanned") for scan in (True, False)] + \
    [(f, stored, stored == "unscanned") for f in MT_FAMILIES[3:] for stored in ("scanned", "unscanned")]


def _mesh():
    return distributed.make_mesh(make_config("/tmp/unused").mesh)


def _params(arch, path: str, scan: bool = True, fmt=None) -> dict:
    _, params = load_params(side(arch, path, fmt), scan, _mesh())
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params))}


def _stored(path: Path) -> dict:
    """Every array of a MaxText checkpoint, by its path under params/params."""
    ckptr = ocp.PyTreeCheckpointer()
    items = items_dir(str(path))
    try:
        meta = ckptr.metadata(items)
        meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        tree = ckptr.restore(items, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    finally:
        ckptr.close()
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree["params"]["params"])}


# ----------------------------------------------------------------------------- MaxText's converter, read


@pytest.mark.parametrize("family,stored,scan", LOAD_CASES,
                         ids=[f"{f}-{s}-run-{'scanned' if r else 'unscanned'}" for f, s, r in LOAD_CASES])
def test_maxtext_converter_output_gives_transformers_logits(family, stored, scan):
    tokens, golden = goldens(family)
    ours = forward(fixture_arch(family), str(MT / f"{family}-{stored}"), scan, tokens)
    assert max_kl(golden, ours) <= MAX_KL
    assert (ours.argmax(-1) == golden.argmax(-1)).all()


def test_fixtures_hold_what_the_conventions_undo():
    """The converter really wrote MaxText's layouts (so the test above cannot pass by accident):
    Llama 3.1's query kernel is the HF one interleaved and divided by sqrt(head_dim), scanned on
    axis 1; qwen's is stored as it is; qwen2.5 has biases, qwen3 q/k norms, unscanned has layers_i."""
    hf = _params(fixture_arch("llama3.1"), str(FIXTURES / "llama3.1"))
    mt = _stored(MT / "llama3.1-scanned")
    q = mt["['decoder']['layers']['self_attention']['query']['kernel']"]
    assert q.shape == (64, 2, 4, 16)  # [embed, layer, heads, head_dim]
    np.testing.assert_array_equal(np.moveaxis(q, 1, 0), interleave(hf["['layers']['attn']['q']"]) / 4)
    qwen = _stored(MT / "qwen2.5-unscanned")
    assert "['decoder']['layers_1']['self_attention']['query']['bias']" in qwen
    np.testing.assert_array_equal(qwen["['decoder']['layers_0']['self_attention']['query']['kernel']"],
                                  _params(fixture_arch("qwen2.5"), str(FIXTURES / "qwen2.5"), False)["['layers'][0]['attn']['q']"])
    assert "['decoder']['layers']['self_attention']['key_norm']['scale']" in _stored(MT / "qwen3-scanned")
    assert json.loads((MT / "SOURCE.json").read_text())["converter"].startswith("maxtext.checkpoint_conversion.to_maxtext")


def test_gemma_fixtures_hold_maxtexts_layer_groups():
    """gemma2: (local, global) pairs, so layers 0, 2 stacked as self_attention_local and 1, 3 as
    _global, the query divided by sqrt(head_dim), norms stored as 1 + w; gemma3: 7 layers as six
    blocks layers/layers_0..5 (one layer each) and layers_remainder/layers_0 (layer 6), the query
    unscaled (MaxText scales it at run time), q/k norms 1 + w too."""
    hf2 = _params(fixture_arch("gemma2-pairs"), str(FIXTURES / "gemma2-pairs"))
    mt2 = _stored(MT / "gemma2-pairs-scanned")
    q = hf2["['layers']['attn']['q']"]
    np.testing.assert_allclose(np.moveaxis(mt2["['decoder']['layers']['self_attention_local']['query']['kernel']"], 1, 0),
                               q[[0, 2]] / np.sqrt(32), rtol=1e-6)
    np.testing.assert_allclose(np.moveaxis(mt2["['decoder']['layers']['self_attention_global']['query']['kernel']"], 1, 0),
                               q[[1, 3]] / np.sqrt(32), rtol=1e-6)
    np.testing.assert_array_equal(mt2["['decoder']['layers']['post_ffw_norm_global']['scale']"].T,
                                  hf2["['layers']['post_mlp_norm']['scale']"][[1, 3]] + np.float32(1))
    assert "['decoder']['layers_1']['mlp_global']['wo']['kernel']" in _stored(MT / "gemma2-pairs-unscanned")
    hf3 = _params(fixture_arch("gemma3"), str(FIXTURES / "gemma3"))
    mt3 = _stored(MT / "gemma3-scanned")
    for b in range(6):
        np.testing.assert_array_equal(mt3[f"['decoder']['layers']['layers_{b}']['self_attention']['query']['kernel']"][:, 0],
                                      hf3["['layers']['attn']['q']"][b])
    np.testing.assert_array_equal(mt3["['decoder']['layers_remainder']['layers_0']['self_attention']['key_norm']['scale']"],
                                  hf3["['layers']['attn']['k_norm']['scale']"][6] + np.float32(1))
    assert len(mt3) == 1 + 1 + 7 * 13  # embedding, final norm, 13 tensors per layer


@pytest.mark.parametrize("family", ["gemma2-pairs", "gemma3"])
def test_gemma_maxtext_round_trip_and_layout_change(tmp_path, family):
    """MaxText's scanned checkpoint -> ours -> MaxText unscanned equals MaxText's own unscanned one:
    (s - 1) + 1 is exact in float32 for norm scales near 1, the embedding factor 8 is a power of 2;
    gemma2's query goes through sqrt(32) and back, within one float32 ulp."""
    arch = fixture_arch(family)
    export_maxtext(str(MT / f"{family}-scanned"), str(tmp_path / "mt"), dtype="float32", model=arch, scanned=False)
    ours, theirs = _stored(tmp_path / "mt"), _stored(MT / f"{family}-unscanned")
    assert ours.keys() == theirs.keys()
    for name in ours:
        if "query" in name and family == "gemma2-pairs":
            np.testing.assert_array_max_ulp(ours[name], theirs[name], maxulp=1)
        else:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_gemma_layouts_maxtext_cannot_hold_are_refused(tmp_path):
    """MaxText's gemma2 decoder layer is a (local, global) pair: the 3-layer gemma2 has no MaxText
    layout; a gemma3 whose local/global pattern is not MaxText's 5:1 has none either. Refused before
    anything is written."""
    with pytest.raises(CheckpointError, match="even number"):
        export_maxtext(str(FIXTURES / "gemma2"), str(tmp_path / "g2"), model=fixture_arch("gemma2"))
    odd = fixture_arch("gemma3").model_copy(update={"local_global_ratio": "1:1"})
    with pytest.raises(CheckpointError, match="every sixth layer"):
        export_maxtext(str(FIXTURES / "gemma3"), str(tmp_path / "g3"), model=odd)
    assert not list(tmp_path.iterdir())
    msg = _error(fixture_arch("gemma2-pairs").model_copy(update={"num_layers": 3}), MT / "gemma2-pairs-scanned")
    assert str(MT / "gemma2-pairs-scanned" / "0" / "items") in msg and "even number" in msg


SHARDED_CHECK = """
import json, jax
from flax import nnx
from tests.test_hf_models import fixture_arch, forward, goldens, max_kl, side
from tests.test_maxtext import MT
from tests.runtime_configs import make_config
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params
assert jax.device_count() == 8
tokens, golden = goldens("llama3.1")
arch = fixture_arch("llama3.1")
out = {}
for stored in ("scanned", "unscanned"):
    path = str(MT / f"llama3.1-{stored}")
    mesh = distributed.make_mesh(make_config("/tmp/unused", mesh=(1, 4, 2)).mesh)
    _, params = load_params(side(arch, path), True, mesh)
    q = nnx.to_pure_dict(params)["layers"]["attn"]["q"]
    out[stored] = {"kl": max_kl(golden, forward(arch, path, True, tokens, mesh_shape=(1, 4, 2))), "q": list(q.shape),
                   "shard": sorted({tuple(s.data.shape) for s in q.addressable_shards})}
print(json.dumps(out))
"""


def test_sharded_load_on_a_mesh_equals_transformers():
    """fsdp 4 x tensor 2 over 8 host devices: Orbax restores each device's shard, the conventions
    are undone on the mesh, and each device holds its slice of q."""
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK], env=xla_env(8), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for stored in ("scanned", "unscanned"):
        assert result[stored]["kl"] <= MAX_KL
        assert result[stored]["q"] == [2, 64, 4, 16] and result[stored]["shard"] == [[2, 16, 2, 16]]


@pytest.mark.parametrize("where", ["checkpoint dir", "step dir", "items"])
def test_path_may_name_the_checkpoint_the_step_or_items(where):
    root = MT / "qwen3-scanned"
    path = {"checkpoint dir": root, "step dir": root / "0", "items": root / "0" / "items"}[where]
    assert is_maxtext_checkpoint(str(path)) and items_dir(str(path)) == items_dir(str(root))
    tokens, golden = goldens("qwen3")
    assert max_kl(golden, forward(fixture_arch("qwen3"), str(path), True, tokens)) <= MAX_KL


def test_query_scaling_round_trips_within_one_ulp_for_any_head_dim():
    """Exact for head_dim a power of 4 (sqrt a power of 2: 16, 64, 256), else within one float32 ulp,
    as MaxText's own to_maxtext / to_huggingface pair (multiply by float32 1/sqrt, then by sqrt)."""
    from distillc.runtime.convert.maxtext import to_maxtext, to_ours

    x = np.random.default_rng(0).standard_normal((64, 4, 128)).astype(np.float32)
    for hd in (16, 64, 128, 32):
        arch = fixture_arch("llama3.1").model_copy(update={"head_dim": hd})
        conv = convention(arch)
        back = to_ours("query", to_maxtext("query", x[..., :hd], arch, conv), arch, conv)
        if hd in (16, 64):
            np.testing.assert_array_equal(back, x[..., :hd])
        np.testing.assert_array_max_ulp(back, x[..., :hd], maxulp=1)


def test_conventions_by_family():
    c = {f: convention(fixture_arch(f)) for f in ("llama3.1", "qwen2.5", "qwen3", "llama2", "mistral", "gemma")}
    assert c["llama3.1"].scale_query and c["llama3.1"].rope_interleaved
    assert c["llama2"].scale_query and not c["llama2"].rope_interleaved and c["mistral"] == c["llama2"]
    assert not c["qwen2.5"].scale_query and not c["qwen3"].rope_interleaved
    assert c["gemma"].norm_plus_one and c["gemma"].embed_times_sqrt_d and c["gemma"].attn_norm == "pre_self_attention_norm"
    g2, g3 = convention(fixture_arch("gemma2")), convention(fixture_arch("gemma3"))
    assert g2.scale_query and g2.layout == "pairs" and g2.norm_plus_one and not g2.embed_bf16_factor
    assert not g3.scale_query and g3.layout == "blocks" and g3.embed_bf16_factor
    # gemma3's converter scales the embedding by a bfloat16 sqrt(D): 50.5 for gemma3-4b's 2560
    from distillc.runtime.convert.maxtext import embed_factor

    assert embed_factor(fixture_arch("gemma3").model_copy(update={"emb_dim": 2560}), g3) == np.float32(50.5)
    assert embed_factor(fixture_arch("gemma2").model_copy(update={"emb_dim": 2304}), g2) == np.float32(48.0)
    assert embed_factor(fixture_arch("gemma2").model_copy(update={"emb_dim": 2560}), g2) == np.float32(np.sqrt(2560))
    x = np.arange(2 * 8.0).reshape(2, 8)
    np.testing.assert_array_equal(interleave(x)[0], [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(deinterleave(interleave(x)), x)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("family", MT_FAMILIES)
def test_export_writes_exactly_what_maxtexts_converter_writes(tmp_path, family, scanned):
    kind = "scanned" if scanned else "unscanned"
    done = export_maxtext(str(FIXTURES / family), str(tmp_path / "out"), dtype="float32", model=fixture_arch(family),
                          scanned=scanned)
    assert done.items == str(tmp_path / "out" / "0" / "items")
    ours, theirs = _stored(tmp_path / "out"), _stored(MT / f"{family}-{kind}")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == np.float32, name
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("scanned", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5", "qwen3", "llama2", "mistral"])
def test_round_trip_reproduces_the_tensors_exactly(tmp_path, family, scanned):
    arch = fixture_arch(family)
    export_maxtext(str(FIXTURES / family), str(tmp_path / "mt"), dtype="float32", model=arch, scanned=scanned)
    before, after = _params(arch, str(FIXTURES / family)), _params(arch, str(tmp_path / "mt"))
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


def test_gemma_round_trip_keeps_the_logits(tmp_path):
    """gemma's (1 + w) norms and sqrt(D)-scaled embedding: stored as MaxText's gemma block reads them,
    and back to transformers' logits (1 + w - 1 rounds in float32, so equal to the last bits)."""
    arch = fixture_arch("gemma")
    export_maxtext(str(FIXTURES / "gemma"), str(tmp_path / "mt"), dtype="float32", model=arch)
    stored = _stored(tmp_path / "mt")
    hf = _params(arch, str(FIXTURES / "gemma"))
    np.testing.assert_allclose(stored["['decoder']['decoder_norm']['scale']"], hf["['final_norm']['scale']"] + 1)
    np.testing.assert_allclose(stored["['token_embedder']['embedding']"], hf["['embed']"] * np.sqrt(arch.emb_dim),
                               rtol=1e-6)
    assert "['decoder']['layers']['pre_ffw_norm']['scale']" in stored and "['decoder']['logits_dense']['kernel']" not in stored
    tokens, golden = goldens("gemma")
    assert max_kl(golden, forward(arch, str(tmp_path / "mt"), False, tokens)) <= MAX_KL


def test_bfloat16_export_is_the_rounded_tensors(tmp_path):
    import ml_dtypes

    export_maxtext(str(FIXTURES / "qwen3"), str(tmp_path / "mt"), model=fixture_arch("qwen3"))
    ours, f32 = _stored(tmp_path / "mt"), _stored(MT / "qwen3-scanned")
    for name, x in ours.items():
        assert x.dtype == ml_dtypes.bfloat16, name
        np.testing.assert_array_equal(x, f32[name].astype(ml_dtypes.bfloat16), err_msg=name)
    # and a bfloat16 checkpoint loads into a float32 run (cast on the mesh) to nearly the same logits
    tokens, golden = goldens("qwen3")
    ours_logits = forward(fixture_arch("qwen3"), str(tmp_path / "mt"), True, tokens)
    assert max_kl(golden, ours_logits) < 1e-3 and (ours_logits.argmax(-1) == golden.argmax(-1)).mean() > 0.9


def test_export_of_a_scaled_llama_needs_the_maxtext_model(tmp_path):
    """config.json cannot tell Llama 3.1 (interleaved in MaxText) from 3.3 (rotate-half): --model decides."""
    with pytest.raises(CheckpointError, match="--model"):
        export_maxtext(str(FIXTURES / "llama3.1"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    export_maxtext(str(FIXTURES / "llama2"), str(tmp_path / "llama2"), dtype="float32")  # no scaling: no doubt


def test_export_refuses_an_existing_out(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        export_maxtext(str(FIXTURES / "qwen3"), str(tmp_path / "out"), model=fixture_arch("qwen3"))


# ----------------------------------------------------------------------------- mistakes: one clear error


def _error(arch, path, fmt=None) -> str:
    with pytest.raises(CheckpointError) as e:
        _params(arch, str(path), True, fmt)
    return str(e.value)


def test_wrong_shape_names_the_path_and_tensor():
    arch = fixture_arch("llama3.1").model_copy(update={"mlp_dim": 128})
    msg = _error(arch, MT / "llama3.1-scanned")
    assert str(MT / "llama3.1-scanned" / "0" / "items") in msg
    assert "'params/params/decoder/layers/mlp/wi_0/kernel' has shape (64, 2, 96)" in msg and "(64, 2, 128)" in msg


def test_another_familys_checkpoint_is_refused():
    # qwen3's q/k norms have no place in a model without them
    msg = _error(fixture_arch("qwen3").model_copy(update={"qk_norm": False}), MT / "qwen3-unscanned")
    assert "no place for" in msg and "params/params/decoder/layers_0/self_attention/key_norm/scale" in msg
    # a model with biases finds none in a Llama checkpoint
    msg = _error(fixture_arch("llama3.1").model_copy(update={"attention_bias": True}), MT / "llama3.1-scanned")
    assert "has no tensor 'params/params/decoder/layers/self_attention/query/bias'" in msg


def test_fewer_layers_than_the_model_names_the_missing_layer():
    arch = fixture_arch("qwen2.5").model_copy(update={"num_layers": 3})
    assert "has no tensor 'params/params/decoder/layers_2/" in _error(arch, MT / "qwen2.5-unscanned")


def test_format_maxtext_on_something_else_says_what_it_wanted(tmp_path):
    msg = _error(fixture_arch("qwen3"), FIXTURES / "qwen3", "maxtext")
    assert "not a MaxText checkpoint" in msg and "<step>/items" in msg
    assert "does not exist" in _error(fixture_arch("qwen3"), tmp_path / "nope", "maxtext")
    assert not is_maxtext_checkpoint(str(FIXTURES / "qwen3"))


# ----------------------------------------------------------------------------- the CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillc.compiler.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_cli_round_trip_through_maxtext_with_model(tmp_path):
    """A tiny catalog model's parameter checkpoint -> MaxText (unscanned) -> Hugging Face -> the same
    tensors; a MaxText SOURCE without --model, or with the wrong one, is exit 2 with one line."""
    from distillc.compiler.catalog import load_catalog

    arch = load_catalog().models["tiny-student-xs"]  # head_dim 16: the query scaling is exact
    _, params = init_params(side(arch, None), True, _mesh())
    save_params(str(tmp_path / "ckpt"), params)
    out = _cli("export", str(tmp_path / "ckpt"), str(tmp_path / "mt"), "--to", "maxtext", "--model", "tiny-student-xs",
               "--dtype", "float32", "--unscanned")
    assert out.returncode == 0, out.stderr
    assert "unscanned" in out.stdout and str(tmp_path / "mt" / "0" / "items") in out.stdout
    assert "layers_0" in str(_stored(tmp_path / "mt").keys())
    no_model = _cli("export", str(tmp_path / "mt"), str(tmp_path / "hf"), "--to", "hf")
    assert no_model.returncode == 2 and "--model" in no_model.stderr and "Traceback" not in no_model.stderr
    wrong = _cli("export", str(tmp_path / "mt"), str(tmp_path / "hf"), "--to", "hf", "--model", "tiny-teacher")
    assert wrong.returncode == 2 and "has shape" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    ok = _cli("export", str(tmp_path / "mt"), str(tmp_path / "hf"), "--to", "hf", "--model", "tiny-student-xs",
              "--dtype", "float32")
    assert ok.returncode == 0, ok.stderr
    before = _params(arch, str(tmp_path / "ckpt"))
    after = _params(arch, str(tmp_path / "hf"))
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # distillc logits on the MaxText checkpoint (--model) equals it on the original
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(json.dumps({"prompt": "p", "tokens": [1, 2, 3, 250, 7]}) + "\n")
    mine = _cli("logits", str(tmp_path / "ckpt"), "--golden", str(tokens), "--model", "tiny-student-xs",
                "--out", str(tmp_path / "ours.jsonl"))
    assert mine.returncode == 0, mine.stderr
    check = _cli("logits", str(tmp_path / "mt" / "0"), "--golden", str(tmp_path / "ours.jsonl"), "--model",
                 "tiny-student-xs", "--max-kl", "1e-12")
    assert check.returncode == 0 and "max KL 0.000e+00" in check.stdout, check.stdout + check.stderr


def test_cli_logits_reads_a_maxtext_checkpoint(tmp_path):
    golden = tmp_path / "golden.jsonl"
    shutil.copyfile(FIXTURES / "qwen3" / "golden.jsonl", golden)
    out = _cli("logits", str(MT / "qwen3-scanned"), "--golden", str(golden))
    assert out.returncode == 2 and "--model" in out.stderr


# ----------------------------------------------------------------------------- validate (no jax)


def test_validate_accepts_format_maxtext_and_checks_a_local_path(tmp_path):
    from tests.conftest import check_text, codes, find, spec_text

    for path in (MT / "qwen3-scanned" / "0" / "items", MT / "qwen3-scanned"):
        text = spec_text(f"student:\n  checkpoint: {path}\n  format: maxtext\n")
        result = check_text(text)
        assert not [d for d in result.diagnostics if d.is_error], [d.message for d in result.diagnostics]
        assert not {"DC180", "DC181", "DC182"} & set(codes(result))
    missing = spec_text(f"student:\n  checkpoint: {tmp_path / 'nope'}\n  format: maxtext\n")
    assert find(check_text(missing), "DC180").is_error
