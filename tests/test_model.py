"""The NNX transformer: float64 numpy reference forward, scan == loop, causality, packing, features.

Cost notes (the suite must stay cheap on a 2-core CPU): XLA compiles dominate, so
  * models are built with the real constructor traced abstractly (`nnx.eval_shape`: same modules,
    shapes, layouts and logical axes) and numpy weights -- no compile of a random draw per shape
    (only `test_build_model_from_side` runs the real initializer, on a small arch);
  * every forward the tests need is one jitted program (the module fixture `fwd_outs`), every
    gradient another (`grad_outs`); the tests assert on their slices;
  * everything compiles with the suite's fast-compile XLA flags (tests/conftest.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from distillc.runtime.models import transformer as M
from distillc.runtime.convert.layout import copy_layers
from distillc.runtime.models.sharding import partition_specs
from distillc.runtime.config import ModelArch, SideConfig

from .tolerances import f32_atol, forward_terms


def arch(**kw) -> ModelArch:
    base = dict(name="t", family="t", tokenizer="byte", vocab_size=37, num_layers=3, emb_dim=24, num_heads=4,
                num_kv_heads=2, head_dim=6, mlp_dim=40, rope_theta=10000.0, norm_eps=1e-5)
    base.update(kw)
    return ModelArch(**base)


def tokens(b=2, t=9, v=37, seed=0):
    return np.random.default_rng(seed).integers(0, v, (b, t)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _abstract(a: ModelArch, scan: bool, remat: str):
    return nnx.split(nnx.eval_shape(lambda: M.Transformer(a, scan_layers=scan, remat=remat, rngs=nnx.Rngs(0))))


def build(a: ModelArch, *, scan: bool, remat="none", seed=0) -> M.Transformer:
    """`M.Transformer(a, ...)` with numpy weights N(0, 1/fan_in) (as the initializer) and norm scales
    1 + N(0, 0.1^2) (so that the reference also checks that the scales are applied)."""
    graphdef, abstract = _abstract(a, scan, remat)
    rng = np.random.default_rng(seed)
    fan_in = {"o": a.num_heads * a.head_dim, "down": a.mlp_dim}

    def fill(path, x):
        name = [k.key for k in path if isinstance(getattr(k, "key", None), str)][-1]  # e.g. "q", "scale"
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
        return (rng.standard_normal(x.shape) * fan_in.get(name, a.emb_dim) ** -0.5).astype(x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, abstract))


# ----------------------------------------------------------------------------- float64 reference


def np_forward(model: M.Transformer, toks, positions=None, segment_ids=None, arch: ModelArch | None = None):
    """Independent float64 implementation of the documented architecture (loop layers only),
    gemma2/gemma3's conventions included: (1 + w) and post-block norms, scaled embeddings, GeGLU,
    q/k norms, query_pre_attn_scalar, soft-capping, sliding windows (i - j < window) on the local
    layers with their own RoPE base, linear RoPE scaling on the global ones. `arch`: another
    architecture for the same weights (default the model's)."""
    a = arch or model.arch
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    toks = np.asarray(toks)
    b, t = toks.shape
    pos = np.broadcast_to(np.arange(t), (b, t)) if positions is None else np.asarray(positions)

    def rms(x, scale):
        w = f64(scale)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + a.norm_eps) * (1.0 + w if a.norm_plus_one else w)

    def cap(x, c):
        return x if c is None else c * np.tanh(x / c)

    half = a.head_dim // 2

    def rope_fn(theta, scaling):
        freq = theta ** (-np.arange(half) * 2.0 / a.head_dim)
        if scaling is not None:
            assert scaling.kind == "linear"  # the reference covers linear scaling (llama3: tests/test_hf_models)
            freq = freq / scaling.factor
        ang = pos[..., None] * freq  # [B, T, hd/2]
        sin, cos = np.sin(ang)[:, :, None], np.cos(ang)[:, :, None]

        def rope(x):
            x1, x2 = x[..., :half], x[..., half:]
            return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
        return rope

    allowed = np.tril(np.ones((t, t), bool))[None]
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        allowed = allowed & (seg[:, :, None] == seg[:, None, :])
    near = np.subtract.outer(np.arange(t), np.arange(t)) < (a.sliding_window or t + 1)  # i - j < window
    x = f64(model.embed[...])[toks] * (np.sqrt(a.emb_dim) if a.embed_scale else 1.0)
    group = a.num_heads // a.num_kv_heads
    feats = []
    for layer, local in zip(model.layers, a.local_layers()):
        rope = rope_fn(a.rope_local_theta or a.rope_theta, None) if local else rope_fn(a.rope_theta, a.rope_scaling)
        h = rms(x, layer.attn_norm.scale[...])
        q = np.einsum("btd,dnh->btnh", h, f64(layer.attn.q[...]))
        k = np.einsum("btd,dnh->btnh", h, f64(layer.attn.k[...]))
        v = np.einsum("btd,dnh->btnh", h, f64(layer.attn.v[...]))
        if a.qk_norm:
            q, k = rms(q, layer.attn.q_norm.scale[...]), rms(k, layer.attn.k_norm.scale[...])
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # head n uses kv head n // group
        s = cap(np.einsum("btnh,bsnh->bnts", q, k) * float(a.query_pre_attn_scalar or a.head_dim) ** -0.5,
                a.attn_logit_softcap)
        s = np.where((allowed & near[None] if local else allowed)[:, None], s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = np.einsum("bnts,bsnh->btnh", p, v)
        attn_out = np.einsum("btnh,nhd->btd", ctx, f64(layer.attn.o[...]))
        feats.append(attn_out)
        x = x + (rms(attn_out, layer.post_attn_norm.scale[...]) if a.post_norms else attn_out)
        h = rms(x, layer.mlp_norm.scale[...])
        g, u = h @ f64(layer.mlp.gate[...]), h @ f64(layer.mlp.up[...])
        if a.activation == "gelu_tanh":
            act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        else:
            act = g / (1 + np.exp(-g))
        h = (act * u) @ f64(layer.mlp.down[...])
        x = x + (rms(h, layer.post_mlp_norm.scale[...]) if a.post_norms else h)
    h = rms(x, model.final_norm.scale[...])
    w = f64(model.embed[...]).T if a.tie_embeddings else f64(model.lm_head[...])
    return cap(h @ w, a.final_logit_softcap), np.stack(feats)


# ----------------------------------------------------------------------------- the models and one forward program

# GQA untied; MQA + tied + llama3 theta; MHA
ARCHS = {"gqa": arch(), "mqa_tied": arch(tie_embeddings=True, num_kv_heads=1, rope_theta=500000.0),
         "mha": arch(num_kv_heads=4)}
# rows 2, 3 repeat rows 0, 1 with token 6 changed (for test_causal); positions shifted by 5
REF_TOKS = np.concatenate([tokens(), tokens()])
REF_TOKS[2:, 6] = (REF_TOKS[2:, 6] + 1) % 37
REF_POS = np.broadcast_to(np.arange(9) + 5, (4, 9)).astype(np.int32)
REF_FEATURES = (2, 0)  # out of order on purpose
PACK_TOKS = tokens(b=1, t=10)
PACK_SEG = np.asarray([[1] * 4 + [2] * 6], np.int32)
PACK_POS = np.asarray([list(range(4)) + list(range(6))], np.int32)


def pair(a: ModelArch, remat="none", seed=0):
    scan = build(a, scan=True, remat=remat, seed=seed)
    loop = build(a, scan=False, remat=remat, seed=seed + 100)
    copy_layers(scan, loop)
    return scan, loop


@pytest.fixture(scope="module")
def models():
    out = {}
    for name, a in ARCHS.items():
        if name == "mha":
            out["loop_mha"] = build(a, scan=False, seed=1)
        else:
            out[f"scan_{name}"], out[f"loop_{name}"] = pair(a)
    return out


@pytest.fixture(scope="module")
def fwd_outs(models):
    """Every forward the tests below look at, compiled as one program."""
    split = {k: nnx.split(m) for k, m in models.items()}
    graphdefs = {k: g for k, (g, _) in split.items()}

    @jax.jit
    def run(states):
        m = {k: nnx.merge(graphdefs[k], s) for k, s in states.items()}
        out = {k: mk(REF_TOKS, positions=REF_POS, feature_layers=REF_FEATURES) for k, mk in m.items()}
        scan = m["scan_gqa"]
        out["packed"] = scan(PACK_TOKS, positions=PACK_POS, segment_ids=PACK_SEG).logits
        out["first"] = scan(PACK_TOKS[:, :4]).logits
        out["second"] = scan(PACK_TOKS[:, 4:]).logits
        return out

    return jax.tree.map(np.asarray, run({k: s for k, (_, s) in split.items()}))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_matches_float64_reference(models, fwd_outs, name):
    m, out = models[f"loop_{name}"], fwd_outs[f"loop_{name}"]
    a = ARCHS[name]
    ref_logits, ref_feats = np_forward(m, REF_TOKS, positions=REF_POS)
    assert out.logits.dtype == np.float32 and out.logits.shape == (4, 9, 37)
    np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert out.features.shape == (2, 4, 9, 24)
    np.testing.assert_allclose(out.features, ref_feats[list(REF_FEATURES)], rtol=1e-4, atol=1e-5)
    # RoPE is relative: shifting every position leaves the logits unchanged (up to rounding)
    np.testing.assert_allclose(np_forward(m, REF_TOKS)[0], ref_logits, rtol=1e-8, atol=1e-8)
    assert (a.num_kv_heads, a.tie_embeddings) == {"gqa": (2, False), "mqa_tied": (1, True), "mha": (4, False)}[name]


# ----------------------------------------------------------------------------- gemma2 / gemma3 conventions

SANDWICH = dict(post_norms=True, norm_plus_one=True, embed_scale=True, activation="gelu_tanh", tie_embeddings=True,
                attention="local_global")
# gemma2-like: 1 local : 1 global, window 3 < T, both soft-caps, query_pre_attn_scalar != head_dim;
# gemma3-like: 2 local : 1 global over 4 layers (the pattern restarts), window 3, q/k norms, MQA, local RoPE base
# 1e4, global 1e6 with linear scaling 8, no caps
GEMMA_ARCHS = {
    "gemma2": arch(**SANDWICH, local_global_ratio="1:1", sliding_window=3, query_pre_attn_scalar=10.0,
                   attn_logit_softcap=1.0, final_logit_softcap=2.0),
    "gemma3": arch(**SANDWICH, num_layers=4, num_kv_heads=1, local_global_ratio="2:1", sliding_window=3,
                   qk_norm=True, query_pre_attn_scalar=5.0, rope_theta=1e6, rope_local_theta=1e4,
                   rope_scaling=M.RopeScaling(kind="linear", factor=8.0)),
}


@pytest.fixture(scope="module", params=sorted(GEMMA_ARCHS))
def gemma_outs(request):
    """scan and loop models of one gemma-like arch (the same weights), their forward (positions
    shifted), a packed forward (two documents, windows shorter than both) and the two documents
    alone, and the gradients of scan and loop: one compiled program."""
    a = GEMMA_ARCHS[request.param]
    scan, loop = pair(a)
    (gs, ss), (gl, sl) = nnx.split(scan), nnx.split(loop)

    def loss(g, st):
        return jnp.mean(nnx.merge(g, st)(REF_TOKS, positions=REF_POS).logits ** 2)

    @jax.jit
    def run(ss, sl):
        s, lo = nnx.merge(gs, ss), nnx.merge(gl, sl)
        return {"scan": s(REF_TOKS, positions=REF_POS, feature_layers=(1, 0)),
                "loop": lo(REF_TOKS, positions=REF_POS, feature_layers=(1, 0)),
                "packed": s(PACK_TOKS, positions=PACK_POS, segment_ids=PACK_SEG).logits,
                "first": s(PACK_TOKS[:, :4]).logits, "second": lo(PACK_TOKS[:, 4:]).logits,
                "grad_scan": jax.grad(loss, argnums=1)(gs, ss), "grad_loop": jax.grad(loss, argnums=1)(gl, sl)}

    return request.param, loop, jax.tree.map(np.asarray, run(ss, sl))


def test_gemma_conventions_match_float64_reference(gemma_outs):
    name, loop, out = gemma_outs
    a = GEMMA_ARCHS[name]
    assert a.sliding_window < REF_TOKS.shape[1] and any(a.local_layers()) and not all(a.local_layers())
    ref_logits, ref_feats = np_forward(loop, REF_TOKS, positions=REF_POS)
    for kind in ("scan", "loop"):
        np.testing.assert_allclose(out[kind].logits, ref_logits, rtol=1e-4, atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(out[kind].features, ref_feats[[1, 0]], rtol=1e-4, atol=1e-5, err_msg=kind)
    if a.final_logit_softcap is not None:
        assert np.abs(ref_logits).max() < a.final_logit_softcap
    # each convention matters: the reference without it is far from the model
    for change in ({"attention": "global", "local_global_ratio": None, "sliding_window": None},
                   {"attn_logit_softcap": None, "final_logit_softcap": None, "query_pre_attn_scalar": None,
                    "rope_local_theta": None, "rope_scaling": None}):
        other, _ = np_forward(loop, REF_TOKS, positions=REF_POS, arch=a.model_copy(update=change))
        assert np.abs(other - out["scan"].logits).max() > 1e-3, change


def test_gemma_packed_documents_never_attend_across(gemma_outs):
    """Sliding windows and soft-caps with segment_ids: each document of a packed row computes what it
    computes alone, and the float64 reference with the same segments agrees."""
    name, loop, out = gemma_outs
    a = GEMMA_ARCHS[name]
    assert a.sliding_window < 4  # shorter than both documents: window and segment mask both bite
    np.testing.assert_allclose(out["packed"][:, :4], out["first"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["packed"][:, 4:], out["second"], rtol=1e-4, atol=1e-5)
    ref, _ = np_forward(loop, PACK_TOKS, positions=PACK_POS, segment_ids=PACK_SEG)
    np.testing.assert_allclose(out["packed"], ref, rtol=1e-4, atol=1e-5)


def test_gemma_scan_and_loop_gradients_equal(gemma_outs):
    """The scanned local/global choice (lax.cond on a per-layer flag) differentiates as the loop does."""
    _, _, out = gemma_outs
    gs, gl = out["grad_scan"], out["grad_loop"]
    stacked = jax.tree.leaves(gs["layers"])
    for i in range(len(gl["layers"])):  # float32 programs of another order: equal to 1e-4 of each leaf's scale
        for x, y in zip(stacked, jax.tree.leaves(gl["layers"][i]), strict=True):
            np.testing.assert_allclose(x[i], y, rtol=1e-4, atol=1e-4 * float(np.abs(y).max()))
    # tied: the embedding's gradient sums the lookup's and the head's, rounded in another order
    big = float(np.abs(gl["embed"][...]).max())
    np.testing.assert_allclose(gs["embed"][...], gl["embed"][...], rtol=1e-4, atol=1e-5 * big)
    assert big > 0


def test_sliding_window_semantics():
    """A query at i attends to keys j with i - j < window (transformers' sliding_window_overlay),
    causal, and only inside its document."""
    m = np.asarray(M.attention_mask(5, 5, 2, None))[0, 0]
    assert m.tolist() == [[j <= i and i - j < 2 for j in range(5)] for i in range(5)]
    seg = jnp.asarray([[1, 1, 2, 2, 2]])
    packed = np.asarray(M.attention_mask(5, 5, 2, (seg[:, :, None] == seg[:, None, :])[:, None]))[0, 0]
    assert packed[2].tolist() == [False, False, True, False, False]


# ----------------------------------------------------------------------------- scan == loop


@pytest.mark.parametrize("name", ["gqa", "mqa_tied"])  # untied, tied
def test_scan_equals_loop(models, fwd_outs, name):
    scan, loop = models[f"scan_{name}"], models[f"loop_{name}"]
    a = ARCHS[name]
    # the stacked parameters really have a leading layer axis
    assert scan.layers.attn.q[...].shape == (3, 24, 4, 6)
    assert scan.layers.attn.k[...].shape == (3, 24, a.num_kv_heads, 6)
    s, lo = fwd_outs[f"scan_{name}"], fwd_outs[f"loop_{name}"]
    # scan and loop are two float32 programs for one forward: equal up to rounding over its summed
    # terms (tests/tolerances.py; the whole forward bounds the chain up to any feature layer)
    terms = forward_terms(a, tokens().shape[-1])
    np.testing.assert_allclose(s.logits, lo.logits, rtol=0, atol=f32_atol(terms, float(np.abs(lo.logits).max())))
    np.testing.assert_allclose(s.features, lo.features, rtol=0, atol=f32_atol(terms, float(np.abs(lo.features).max())))
    toks = tokens()
    for mod in (scan, loop):  # no feature layers: no features (a static property: no compile needed)
        g, st = nnx.split(mod)
        assert jax.eval_shape(lambda st, g=g: nnx.merge(g, st)(toks), st).features is None
    # the copy went somewhere: a loop model with its own weights differs
    other = build(a, scan=False, seed=7)
    assert np.abs(np_forward(other, REF_TOKS, positions=REF_POS)[0] - s.logits).max() > 1e-3


def test_copy_layers_round_trip():
    a = SMALL
    scan, loop = pair(a)
    scan2 = build(a, scan=True, seed=55)
    copy_layers(loop, scan2)
    for x, y in zip(jax.tree.leaves(nnx.state(scan)), jax.tree.leaves(nnx.state(scan2))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _loss(model):
    out = model(tokens(), feature_layers=(0, 2))
    return jnp.mean(out.logits**2) + jnp.mean(out.features**2)


@pytest.fixture(scope="module")
def grad_outs():
    """Gradients of one loss for the same weights as scan, loop, scan + minimal remat, scan + full remat."""
    scan, loop = pair(arch())
    ms = {"scan": scan, "loop": loop,
          "minimal": build(arch(), scan=True, remat="minimal"), "full": build(arch(), scan=True, remat="full")}
    split = {k: nnx.split(m) for k, m in ms.items()}
    graphdefs = {k: g for k, (g, _) in split.items()}

    @jax.jit
    def grads(states):
        return {k: jax.grad(lambda st, k=k: _loss(nnx.merge(graphdefs[k], st)))(st) for k, st in states.items()}

    states = {k: s for k, (_, s) in split.items()}
    for r in ("minimal", "full"):  # the remat models carry exactly the scan model's weights
        for x, y in zip(jax.tree.leaves(states[r]), jax.tree.leaves(states["scan"])):
            np.testing.assert_array_equal(x, y)
    return jax.tree.map(np.asarray, grads(states))


def test_scan_and_loop_gradients_equal(grad_outs):
    gs, gl = grad_outs["scan"], grad_outs["loop"]
    for i in range(3):
        np.testing.assert_allclose(gs["layers"]["attn"]["q"][...][i], gl["layers"][i]["attn"]["q"][...],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(gs["layers"]["mlp"]["down"][...][i], gl["layers"][i]["mlp"]["down"][...],
                                   rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(gs["embed"][...], gl["embed"][...], rtol=1e-4, atol=1e-7)
    assert float(np.abs(gs["embed"][...]).max()) > 0
    # and every other weight: layer i of the stack against the i-th listed layer
    stacked = jax.tree.leaves(gs["layers"])
    for i in range(3):
        for x, y in zip(stacked, jax.tree.leaves(gl["layers"][i]), strict=True):
            np.testing.assert_allclose(x[i], y, rtol=1e-4, atol=1e-7)
    for k in ("final_norm", "lm_head"):
        for x, y in zip(jax.tree.leaves(gs[k]), jax.tree.leaves(gl[k]), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("remat", ["minimal", "full"])
def test_remat_changes_memory_not_gradients(grad_outs, remat):
    for x, y in zip(jax.tree.leaves(grad_outs[remat]), jax.tree.leaves(grad_outs["scan"])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_bad_remat_and_feature_layer_rejected():
    with pytest.raises(ValueError):
        M.Transformer(arch(), scan_layers=True, remat="some", rngs=nnx.Rngs(0))
    m = build(arch(), scan=True)
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
    m = build(arch(), scan=True)
    stacked = (3, 2, 9, 24)  # [L, B, T, D]
    assert stacked not in _scan_output_shapes(m, ())
    assert stacked not in _scan_output_shapes(m, (1,))  # only the selected layer is kept
    assert (1, 2, 9, 24) in _scan_output_shapes(m, (1,))


def _train_temp_bytes(model, feature_layers, toks) -> int:
    """XLA's temporary memory for the gradient of a loss over logits and the selected features."""
    graphdef, state = nnx.split(model)

    def loss(st):
        out = nnx.merge(graphdef, st)(toks, feature_layers=feature_layers)
        feats = jnp.sum(out.features**2) if feature_layers else 0.0
        return jnp.sum(out.logits**2) + feats

    return jax.jit(jax.grad(loss)).lower(state).compile().memory_analysis().temp_size_in_bytes


def test_feature_memory_grows_with_the_selected_layers_not_the_depth():
    """Scanned: selecting 1 or 2 of 8 layers holds about 2 [B, T, D] activations per selected layer
    (the kept buffer and its cotangent), not the 8 of a stacked [L, B, T, D] output, which selecting
    every layer still costs. (The loop path keeps only the selected layers by construction.)"""
    a = arch(num_layers=8, emb_dim=64, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=64)
    m = build(a, scan=True)
    toks = tokens(b=4, t=64)
    none, one, two, every = (_train_temp_bytes(m, f, toks) for f in ((), (3,), (6, 1), tuple(range(8))))
    per_layer = 4 * 64 * 64 * 4  # one [B, T, D] float32 activation
    slack = 8192  # scalars and indices
    assert every - none >= 8 * per_layer - slack  # the measure sees a stack of layers
    assert one - none <= 2 * per_layer + slack, (none, one, every)
    assert two - none <= 4 * per_layer + slack, (none, two, every)


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("name", ["scan_gqa", "loop_gqa", "scan_mqa_tied", "loop_mqa_tied", "loop_mha"])
def test_causal(fwd_outs, name):
    out = fwd_outs[name].logits  # rows 0, 1 and rows 2, 3: the same tokens except position 6
    a, b = out[:2], out[2:]
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-4


def test_packed_segments_equal_separate_sequences(models, fwd_outs):
    packed = fwd_outs["packed"]
    np.testing.assert_allclose(packed[:, :4], fwd_outs["first"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 4:], fwd_outs["second"], rtol=1e-5, atol=1e-5)
    loop = models["loop_gqa"]  # carries the scan model's weights (copy_layers)
    np.testing.assert_allclose(packed, np_forward(loop, PACK_TOKS, PACK_POS, PACK_SEG)[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- sizes, dtypes, sharding


@pytest.mark.parametrize("tie", [False, True])
def test_count_params_matches_config_formula(tie):
    a = arch(tie_embeddings=tie)
    for scan in (True, False):
        assert M.count_params(build(a, scan=scan)) == a.param_count()


def test_flops_per_token():
    a = arch()
    n_matmul = 3 * (24 * 4 * 6 * 2 + 2 * 24 * 2 * 6 + 3 * 24 * 40) + 24 * 37
    attn = 4 * 3 * 4 * 6 * 128
    assert M.flops_per_token(a, 128, causal=False) == pytest.approx(3 * (2 * n_matmul + attn))
    assert M.flops_per_token(a, 128) == pytest.approx(3 * (2 * n_matmul + attn / 2))
    assert M.flops_per_token(a, 128, training=False) == pytest.approx(2 * n_matmul + attn / 2)
    # sliding windows: layers 0 and 2 local ("1:1"), window 16 of 128 keys
    g = arch(attention="local_global", local_global_ratio="1:1", sliding_window=16)
    local = 4 * 4 * 6 * (16 * 17 / 2 + (128 - 16) * 16) / 128  # exact sum over the 128 queries
    assert M.flops_per_token(g, 128, training=False) == pytest.approx(2 * n_matmul + attn / 2 / 3 + 2 * local, rel=1e-2)
    assert M.keys_per_query(128, 128) == M.keys_per_query(128, None) == 64


# The real initializer compiles one random draw per (shape, dtype, stacked or not): this arch has
# few distinct weight shapes (D = H = hd = F = V; MHA), so `build_model` stays cheap to test.
SMALL = arch(vocab_size=8, num_layers=2, emb_dim=8, num_heads=8, num_kv_heads=8, head_dim=8, mlp_dim=8)


def side(**kw) -> SideConfig:
    base = dict(role="student", arch=SMALL, weight_dtype="float32", activation_dtype="float32", remat="none",
                init_seed=11)
    base.update(kw)
    return SideConfig(**base)


def test_build_model_from_side():
    # The real initializer in bfloat16 with full remat and stacked layers (the draws under nnx.vmap),
    # jitted as the trainer runs it (trainer.init_params): one program, not one per weight shape.
    bf_side = side(weight_dtype="bfloat16", activation_dtype="bfloat16", remat="full")
    graphdef = nnx.split(nnx.eval_shape(lambda: M.build_model(bf_side, scan_layers=True)))[0]
    init = functools.partial(jax.jit, static_argnums=0)(
        lambda seed: nnx.state(M.build_model(bf_side, scan_layers=True, rngs_seed=seed)))
    bf = nnx.merge(graphdef, init(None))
    assert bf.embed[...].dtype == jnp.bfloat16 and bf.layers.mlp.up[...].dtype == jnp.bfloat16
    assert bf.remat == "full"
    up = np.asarray(bf.layers.mlp.up[...], np.float32)  # [L, D, F]: every layer got its own draw
    assert up.shape[0] == SMALL.num_layers and np.abs(up[0] - up[1]).max() > 0
    # seeds: the side's init_seed, or rngs_seed
    b, c = nnx.merge(graphdef, init(None)), nnx.merge(graphdef, init(12))
    for x, y in zip(jax.tree.leaves(nnx.state(bf)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
    assert np.abs(np.asarray(bf.embed[...], np.float32) - np.asarray(c.embed[...], np.float32)).max() > 0
    # the float32 side: the same builder traced abstractly (its draws would be other programs to compile)
    f = nnx.eval_shape(lambda: M.build_model(side(), scan_layers=True))
    assert f.embed.get_value().dtype == jnp.float32 and f.layers.mlp.up.get_value().dtype == jnp.float32
    assert f.remat == "none"
    assert f.dtype == jnp.float32 and bf.dtype == jnp.bfloat16
    # bf16 weights and activations stay close to the same weights in float32
    f32 = build(SMALL, scan=True)
    nnx.update(f32, jax.tree.map(lambda x: np.asarray(x, np.float32), nnx.state(bf)))
    toks = tokens(v=SMALL.vocab_size)
    (g16, s16), (g32, s32) = nnx.split(bf), nnx.split(f32)

    @jax.jit
    def run(s16, s32):
        return (nnx.merge(g16, s16)(toks, feature_layers=(0,)), nnx.merge(g32, s32)(toks).logits)

    out, ref = run(s16, s32)
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.bfloat16
    ref = np.asarray(ref)
    assert np.abs(np.asarray(out.logits) - ref).max() < 0.1 * np.abs(ref).max()


def test_partition_specs():
    m = build(arch(), scan=True)
    specs = partition_specs(m)
    assert specs["layers"]["attn"]["q"].get_value() == P(None, "fsdp", "tensor", None)
    assert specs["embed"].get_value() == P("tensor", "fsdp")
    assert specs["lm_head"].get_value() == P("fsdp", "tensor")
    custom = partition_specs(m, {"embed": "data", "mlp": "data"})  # a mesh axis used once per array
    assert custom["layers"]["mlp"]["gate"].get_value() == P(None, "data", None)
