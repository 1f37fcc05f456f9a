"""The NNX transformer: float64 numpy reference forward, scan == loop, causality, packing, features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from distillc.runtime import model as M
from distillc.runtime.config import ModelArch, SideConfig


def arch(**kw) -> ModelArch:
    base = dict(name="t", family="t", tokenizer="byte", vocab_size=37, num_layers=3, emb_dim=24, num_heads=4,
                num_kv_heads=2, head_dim=6, mlp_dim=40, rope_theta=10000.0, norm_eps=1e-5)
    base.update(kw)
    return ModelArch(**base)


def tokens(b=2, t=9, v=37, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, v, dtype=jnp.int32)


def fwd(model, toks, *, feature_layers=(), positions=None, segment_ids=None):
    """Jitted forward, cached per (graph, feature_layers) (eager NNX dispatch is slow on a busy CPU)."""
    graphdef, state = nnx.split(model)
    key = (graphdef, tuple(feature_layers))
    if key not in _FWD:
        _FWD[key] = jax.jit(lambda st, t, pos, seg: nnx.merge(graphdef, st)(
            t, positions=pos, segment_ids=seg, feature_layers=key[1]))
    return _FWD[key](state, toks, positions, segment_ids)


_FWD: dict = {}


# ----------------------------------------------------------------------------- float64 reference


def np_forward(model: M.Transformer, toks, positions=None, segment_ids=None):
    """Independent float64 implementation of the documented architecture (loop layers only)."""
    a = model.arch
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    toks = np.asarray(toks)
    b, t = toks.shape
    pos = np.broadcast_to(np.arange(t), (b, t)) if positions is None else np.asarray(positions)

    def rms(x, scale):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + a.norm_eps) * f64(scale)

    half = a.head_dim // 2
    freq = a.rope_theta ** (-np.arange(half) * 2.0 / a.head_dim)
    ang = pos[..., None] * freq  # [B, T, hd/2]
    sin, cos = np.sin(ang)[:, :, None], np.cos(ang)[:, :, None]

    def rope(x):
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    allowed = np.tril(np.ones((t, t), bool))[None]
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])
    x = f64(model.embed[...])[toks]
    group = a.num_heads // a.num_kv_heads
    feats = []
    for layer in model.layers:
        h = rms(x, layer.attn_norm.scale[...])
        q = rope(np.einsum("btd,dnh->btnh", h, f64(layer.attn.q[...])))
        k = rope(np.einsum("btd,dnh->btnh", h, f64(layer.attn.k[...])))
        v = np.einsum("btd,dnh->btnh", h, f64(layer.attn.v[...]))
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # head n uses kv head n // group
        s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(a.head_dim)
        s = np.where(allowed[:, None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = np.einsum("bnts,bsnh->btnh", p, v)
        attn_out = np.einsum("btnh,nhd->btd", ctx, f64(layer.attn.o[...]))
        feats.append(attn_out)
        x = x + attn_out
        h = rms(x, layer.mlp_norm.scale[...])
        g, u = h @ f64(layer.mlp.gate[...]), h @ f64(layer.mlp.up[...])
        x = x + (g / (1 + np.exp(-g)) * u) @ f64(layer.mlp.down[...])
    h = rms(x, model.final_norm.scale[...])
    w = f64(model.embed[...]).T if a.tie_embeddings else f64(model.lm_head[...])
    return h @ w, np.stack(feats)


@pytest.mark.parametrize("tie,kv,theta", [(False, 2, 10000.0), (True, 1, 500000.0), (False, 4, 10000.0)])
def test_matches_float64_reference(tie, kv, theta):  # GQA, MQA + tied + llama3 theta, MHA
    m = M.Transformer(arch(tie_embeddings=tie, num_kv_heads=kv, rope_theta=theta), scan_layers=False,
                      rngs=nnx.Rngs(1))
    toks = tokens()
    pos = jnp.broadcast_to(jnp.arange(9) + 5, (2, 9))
    out = fwd(m, toks, feature_layers=(2, 0), positions=pos)
    ref_logits, ref_feats = np_forward(m, toks, positions=pos)
    assert out.logits.dtype == jnp.float32 and out.logits.shape == (2, 9, 37)
    np.testing.assert_allclose(np.asarray(out.logits), ref_logits, rtol=1e-4, atol=1e-5)
    assert out.features.shape == (2, 2, 9, 24)
    np.testing.assert_allclose(np.asarray(out.features), ref_feats[[2, 0]], rtol=1e-4, atol=1e-5)
    # RoPE is relative: shifting every position leaves the logits unchanged (up to rounding)
    np.testing.assert_allclose(np_forward(m, toks)[0], ref_logits, rtol=1e-8, atol=1e-8)


# ----------------------------------------------------------------------------- scan == loop


def pair(a: ModelArch, remat="none", seed=0):
    scan = M.Transformer(a, scan_layers=True, remat=remat, rngs=nnx.Rngs(seed))
    loop = M.Transformer(a, scan_layers=False, remat=remat, rngs=nnx.Rngs(seed + 100))
    M.copy_layers(scan, loop)
    return scan, loop


@pytest.mark.parametrize("tie", [False, True])
def test_scan_equals_loop(tie):
    scan, loop = pair(arch(tie_embeddings=tie))
    # the stacked parameters really have a leading layer axis
    assert scan.layers.attn.q[...].shape == (3, 24, 4, 6)
    toks = tokens()
    a, b = fwd(scan, toks, feature_layers=(1, 2)), fwd(loop, toks, feature_layers=(1, 2))
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.asarray(a.features), np.asarray(b.features), rtol=0, atol=2e-6)
    assert fwd(scan, toks).features is None and fwd(loop, toks).features is None
    # the copy went somewhere: a loop model with its own init differs
    other = M.Transformer(arch(tie_embeddings=tie), scan_layers=False, rngs=nnx.Rngs(7))
    assert np.abs(np.asarray(fwd(other, toks).logits) - np.asarray(a.logits)).max() > 1e-3


def test_copy_layers_round_trip():
    scan, loop = pair(arch())
    scan2 = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(55))
    M.copy_layers(loop, scan2)
    for x, y in zip(jax.tree.leaves(nnx.state(scan)), jax.tree.leaves(nnx.state(scan2))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _loss(model):
    out = model(tokens(), feature_layers=(0, 2))
    return jnp.mean(out.logits**2) + jnp.mean(out.features**2)


_grad = nnx.jit(nnx.grad(_loss))


def test_scan_and_loop_gradients_equal():
    scan, loop = pair(arch())
    gs, gl = _grad(scan), _grad(loop)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(gs["layers"]["attn"]["q"][...][i]),
                                   np.asarray(gl["layers"][i]["attn"]["q"][...]), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(np.asarray(gs["layers"]["mlp"]["down"][...][i]),
                                   np.asarray(gl["layers"][i]["mlp"]["down"][...]), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(gs["embed"][...]), np.asarray(gl["embed"][...]), rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(gs["embed"][...]).max()) > 0


@pytest.mark.parametrize("remat", ["minimal", "full"])
def test_remat_changes_memory_not_gradients(remat):
    ref = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(0))
    rem = M.Transformer(arch(), scan_layers=True, remat=remat, rngs=nnx.Rngs(0))
    for x, y in zip(jax.tree.leaves(_grad(rem)), jax.tree.leaves(_grad(ref))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_bad_remat_and_feature_layer_rejected():
    with pytest.raises(ValueError):
        M.Transformer(arch(), scan_layers=True, remat="some", rngs=nnx.Rngs(0))
    m = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError):
        m(tokens(), feature_layers=(3,))
    with pytest.raises(ValueError):
        M.Transformer(arch(attention="mla"), scan_layers=True, rngs=nnx.Rngs(0))


def _scan_output_shapes(model, feature_layers):
    graphdef, state = nnx.split(model)

    def f(state, toks):
        return nnx.merge(graphdef, state)(toks, feature_layers=feature_layers)

    jaxpr = jax.make_jaxpr(f)(state, tokens())
    shapes = []
    for eqn in jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "scan":
            shapes += [tuple(v.aval.shape) for v in eqn.outvars]
    return shapes


def test_features_collected_only_when_asked():
    m = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(0))
    stacked = (3, 2, 9, 24)  # [L, B, T, D]
    assert stacked not in _scan_output_shapes(m, ())
    assert stacked in _scan_output_shapes(m, (1,))


# ----------------------------------------------------------------------------- masking


def test_causal():
    m = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(3))
    toks = tokens()
    changed = toks.at[:, 6].set((toks[:, 6] + 1) % 37)
    a, b = np.asarray(fwd(m, toks).logits), np.asarray(fwd(m, changed).logits)
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-4


def test_packed_segments_equal_separate_sequences():
    m = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(4))
    toks = tokens(b=1, t=10)
    seg = jnp.asarray([[1] * 4 + [2] * 6])
    pos = jnp.asarray([list(range(4)) + list(range(6))])
    packed = np.asarray(fwd(m, toks, positions=pos, segment_ids=seg).logits)
    first = np.asarray(fwd(m, toks[:, :4]).logits)
    second = np.asarray(fwd(m, toks[:, 4:]).logits)
    np.testing.assert_allclose(packed[:, :4], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 4:], second, rtol=1e-5, atol=1e-5)
    loop = M.Transformer(arch(), scan_layers=False, rngs=nnx.Rngs(0))
    M.copy_layers(m, loop)
    np.testing.assert_allclose(packed, np_forward(loop, toks, pos, seg)[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- sizes, dtypes, sharding


@pytest.mark.parametrize("tie", [False, True])
def test_count_params_matches_config_formula(tie):
    a = arch(tie_embeddings=tie)
    for scan in (True, False):
        assert M.count_params(M.Transformer(a, scan_layers=scan, rngs=nnx.Rngs(0))) == a.param_count()


def test_flops_per_token():
    a = arch()
    n_matmul = 3 * (24 * 4 * 6 * 2 + 2 * 24 * 2 * 6 + 3 * 24 * 40) + 24 * 37
    attn = 4 * 3 * 4 * 6 * 128
    assert M.flops_per_token(a, 128, causal=False) == pytest.approx(3 * (2 * n_matmul + attn))
    assert M.flops_per_token(a, 128) == pytest.approx(3 * (2 * n_matmul + attn / 2))
    assert M.flops_per_token(a, 128, training=False) == pytest.approx(2 * n_matmul + attn / 2)


def side(**kw) -> SideConfig:
    base = dict(role="student", arch=arch(), weight_dtype="float32", activation_dtype="float32", remat="none",
                init_seed=11)
    base.update(kw)
    return SideConfig(**base)


def test_build_model_from_side():
    a = M.build_model(side(), scan_layers=True)
    b = M.build_model(side(), scan_layers=True)
    c = M.build_model(side(), scan_layers=True, rngs_seed=12)
    ea, eb, ec = (np.asarray(x.embed[...]) for x in (a, b, c))
    np.testing.assert_array_equal(ea, eb)
    assert np.abs(ea - ec).max() > 0
    bf = M.build_model(side(weight_dtype="bfloat16", activation_dtype="bfloat16", remat="full"), scan_layers=True)
    assert bf.embed[...].dtype == jnp.bfloat16 and bf.layers.mlp.up[...].dtype == jnp.bfloat16
    assert bf.remat == "full"
    out = fwd(bf, tokens(), feature_layers=(0,))
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.bfloat16
    # bf16 weights and activations stay close to the same weights in float32
    f32 = M.build_model(side(), scan_layers=True)
    nnx.update(f32, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(bf)))
    ref = np.asarray(fwd(f32, tokens()).logits)
    assert np.abs(np.asarray(out.logits) - ref).max() < 0.1 * np.abs(ref).max()


def test_partition_specs():
    m = M.Transformer(arch(), scan_layers=True, rngs=nnx.Rngs(0))
    specs = M.partition_specs(m)
    assert specs["layers"]["attn"]["q"].get_value() == P(None, "fsdp", "tensor", None)
    assert specs["embed"].get_value() == P("tensor", "fsdp")
    assert specs["lm_head"].get_value() == P("fsdp", "tensor")
    custom = M.partition_specs(m, {"embed": "data", "mlp": "data"})  # a mesh axis used once per array
    assert custom["layers"]["mlp"]["gate"].get_value() == P(None, "data", None)
