"""Losses vs plain float64 numpy references: masks, T != 1, compare_vocab < V, gradients.

Cost notes: the functions run jitted (one XLA program per function and signature; run eagerly,
every primitive would be compiled on its own) with the suite's fast-compile XLA flags (tests/conftest.py), and
the chunked-vs-dense cases share one program (the module fixture `chunked_vs_dense`).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillc.runtime.train import losses as L
from distillc.runtime.models.transformer import ModelOutput
from tests.test_model import arch, build, tokens

B, T, V = 3, 5, 11

# jitted entry points (temperature, alpha, beta are traced: one program serves every value)
jit = jax.jit
soft_kl = jit(L.soft_kl)
cross_entropy = jit(L.cross_entropy)
feature_loss = jit(L.feature_loss, static_argnums=2)
masked_mean_parts = jit(L.masked_mean_parts)
distill_loss = jit(L.distill_loss, static_argnames=("feature_kind", "compare_vocab"))


# ----------------------------------------------------------------------------- float64 references


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(s, t, temp):
    log_q, log_p = np_log_softmax(np.asarray(s, np.float64) / temp), np_log_softmax(np.asarray(t, np.float64) / temp)
    return (np.exp(log_p) * (log_p - log_q)).sum(-1)


def np_ce(logits, labels):
    lp = np_log_softmax(logits)
    return -np.take_along_axis(lp, labels[..., None], -1)[..., 0]


def np_feature(s, t, kind):
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    if kind == "cosine":
        sn = np.sqrt(np.maximum((s * s).sum(-1), 1e-6))
        tn = np.sqrt(np.maximum((t * t).sum(-1), 1e-6))
        per = 1.0 - (s * t).sum(-1) / (sn * tn)
    else:
        per = ((s - t) ** 2).mean(-1)
    return per.mean(0)


def np_masked_mean(x, w):
    return (x * w).sum() / max(w.sum(), 1.0)


def np_total(s_logits, t_logits, labels, w, alpha, temp, beta, kind, vc, s_f=None, t_f=None):
    kl = np_kl(s_logits[..., :vc], t_logits[..., :vc], temp)
    ce = np_ce(s_logits, labels)
    total = alpha * temp**2 * np_masked_mean(kl, w) + (1 - alpha) * np_masked_mean(ce, w)
    if s_f is not None:
        total += beta * np_masked_mean(np_feature(s_f, t_f, kind), w)
    return total


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(B, T, V)) * 3.0
    t = rng.normal(size=(B, T, V)) * 3.0
    labels = rng.integers(0, V, size=(B, T))
    w = np.ones((B, T), bool)
    w[0, 3:] = False  # ragged padding
    w[2, 1] = False
    sf = rng.normal(size=(2, B, T, 7))
    tf = rng.normal(size=(2, B, T, 7))
    return SimpleNamespace(s=s, t=t, labels=labels, w=w, sf=sf, tf=tf)


def f32(x):
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------- per-token functions


@pytest.mark.parametrize("temp", [1.0, 2.0, 0.5])
def test_soft_kl_matches_float64(data, temp):
    got = np.asarray(soft_kl(f32(data.s), f32(data.t), temp, where=data.w))
    want = np_kl(data.s, data.t, temp) * data.w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[~data.w] == 0.0)


def test_soft_kl_is_zero_for_equal_logits_and_direction(data):
    np.testing.assert_allclose(np.asarray(soft_kl(f32(data.t), f32(data.t), 2.0)), 0.0, atol=1e-6)
    # KL(p || q) is not symmetric: swapping the arguments changes the value.
    a = np.asarray(soft_kl(f32(data.s), f32(data.t), 1.0))
    b = np.asarray(soft_kl(f32(data.t), f32(data.s), 1.0))
    np.testing.assert_allclose(a, np_kl(data.s, data.t, 1.0), rtol=1e-5)
    assert np.abs(a - b).max() > 1e-2


def test_soft_kl_stable_for_huge_logits_and_bf16(data):
    big_s, big_t = data.s * 1e3, data.t * 1e3  # naive softmax overflows float32
    got = np.asarray(soft_kl(f32(big_s), f32(big_t), 2.0))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_kl(big_s, big_t, 2.0), rtol=1e-4, atol=1e-3)
    got16 = np.asarray(soft_kl(jnp.asarray(data.s, jnp.bfloat16), jnp.asarray(data.t, jnp.bfloat16), 2.0))
    assert got16.dtype == np.float32
    ref16 = np_kl(np.asarray(jnp.asarray(data.s, jnp.bfloat16), np.float64),
                  np.asarray(jnp.asarray(data.t, jnp.bfloat16), np.float64), 2.0)
    np.testing.assert_allclose(got16, ref16, rtol=1e-5, atol=1e-6)


def test_soft_kl_teacher_minus_inf_column(data):
    t = data.t.copy()
    t[..., 4] = -np.inf  # e.g. a teacher that masks a token: p = 0 there, no NaN
    got = np.asarray(soft_kl(f32(data.s), f32(t), 1.0))
    assert np.all(np.isfinite(got))
    keep = [i for i in range(V) if i != 4]
    lp = np_log_softmax(t[..., keep])
    lq = np_log_softmax(data.s)[..., keep]
    np.testing.assert_allclose(got, (np.exp(lp) * (lp - lq)).sum(-1), rtol=1e-5, atol=1e-6)


def test_cross_entropy_matches_float64(data):
    got = np.asarray(cross_entropy(f32(data.s), jnp.asarray(data.labels), where=data.w))
    np.testing.assert_allclose(got, np_ce(data.s, data.labels) * data.w, rtol=1e-5, atol=1e-6)
    got_all = np.asarray(cross_entropy(f32(data.s), jnp.asarray(data.labels)))
    np.testing.assert_allclose(got_all, np_ce(data.s, data.labels), rtol=1e-5)


@pytest.mark.parametrize("kind", ["cosine", "l2"])
def test_feature_loss_matches_float64(data, kind):
    got = np.asarray(feature_loss(f32(data.sf), f32(data.tf), kind, where=data.w))
    np.testing.assert_allclose(got, np_feature(data.sf, data.tf, kind) * data.w, rtol=1e-5, atol=1e-6)


def test_feature_loss_definitions():
    s = np.zeros((1, 1, 1, 4))
    s[..., 0] = 3.0
    t = np.zeros((1, 1, 1, 4))
    t[..., 1] = 2.0
    # orthogonal: cosine distance 1; l2 = (9 + 4) / 4 (a mean over D, no 1/2)
    assert float(feature_loss(f32(s), f32(t), "cosine")[0, 0]) == pytest.approx(1.0, abs=1e-6)
    assert float(feature_loss(f32(s), f32(t), "l2")[0, 0]) == pytest.approx(13.0 / 4.0, rel=1e-6)
    # opposite: 2; scaled copy: 0 for cosine only
    assert float(feature_loss(f32(s), f32(-s), "cosine")[0, 0]) == pytest.approx(2.0, abs=1e-6)
    assert float(feature_loss(f32(s), f32(5 * s), "cosine")[0, 0]) == pytest.approx(0.0, abs=1e-6)
    # all-zero (padding) rows stay finite
    z = np.zeros((1, 1, 1, 4))
    assert np.isfinite(float(feature_loss(f32(z), f32(z), "cosine")[0, 0]))
    with pytest.raises(ValueError):
        L.feature_loss(f32(s), f32(t), "l1")
    with pytest.raises(ValueError):
        L.feature_loss(f32(s), f32(np.zeros((1, 1, 1, 5))), "l2")


def test_masked_mean_parts(data):
    x = np.random.default_rng(1).normal(size=(B, T))
    s, c = masked_mean_parts(f32(x), jnp.asarray(data.w))
    assert float(c) == data.w.sum()
    np.testing.assert_allclose(float(s), (x * data.w).sum(), rtol=1e-6)
    s, c = masked_mean_parts(f32(x))
    assert float(c) == B * T


# ----------------------------------------------------------------------------- the objective


def outputs(data, with_features=True, vocab_pad=0):
    s, t = data.s, data.t
    if vocab_pad:  # padded vocabulary rows: huge logits that must not enter the KL
        pad = np.full((B, T, vocab_pad), 50.0)
        s, t = np.concatenate([s, pad], -1), np.concatenate([t, -pad], -1)
    so = ModelOutput(logits=f32(s), features=f32(data.sf) if with_features else None)
    to = ModelOutput(logits=f32(t), features=f32(data.tf) if with_features else None)
    return so, to, s, t


@pytest.mark.parametrize("kind", ["cosine", "l2"])
@pytest.mark.parametrize("alpha,temp,beta", [(0.5, 1.0, 0.0), (0.9, 2.0, 1.0), (0.3, 4.0, 0.05)])
def test_distill_loss_total_and_metrics(data, kind, alpha, temp, beta):
    so, to, s, t = outputs(data)
    total, m = distill_loss(so, to, jnp.asarray(data.labels), jnp.asarray(data.w), alpha=alpha,
                            temperature=temp, beta=beta, feature_kind=kind, compare_vocab=V)
    w = data.w.astype(np.float64)
    want = np_total(s, t, data.labels, w, alpha, temp, beta, kind, V, data.sf, data.tf)
    assert float(total) == pytest.approx(want, rel=1e-5)
    n = w.sum()
    ratio = {k: float(a) / float(b) for k, (a, b) in m.items()}
    assert float(m["tokens"][0]) == n
    assert ratio["soft_loss"] == pytest.approx(temp**2 * np_masked_mean(np_kl(s, t, temp), w), rel=1e-5)
    assert ratio["kl_T"] == pytest.approx(np_masked_mean(np_kl(s, t, temp), w), rel=1e-5)
    assert ratio["kl_T1"] == pytest.approx(np_masked_mean(np_kl(s, t, 1.0), w), rel=1e-5)
    assert ratio["hard_loss"] == pytest.approx(np_masked_mean(np_ce(s, data.labels), w), rel=1e-5)
    assert ratio["teacher_ce"] == pytest.approx(np_masked_mean(np_ce(t, data.labels), w), rel=1e-5)
    assert ratio["feature_loss"] == pytest.approx(beta * np_masked_mean(np_feature(data.sf, data.tf, kind), w),
                                                  rel=1e-5, abs=1e-7)
    assert ratio["total_loss"] == pytest.approx(want, rel=1e-5)
    assert (ratio["alpha"], ratio["temperature"], ratio["beta"]) == pytest.approx((alpha, temp, beta))


def test_distill_loss_compare_vocab_excludes_padded_rows(data):
    so, to, s, t = outputs(data, with_features=False, vocab_pad=5)
    total, m = distill_loss(so, to, jnp.asarray(data.labels), jnp.asarray(data.w), alpha=0.7,
                            temperature=2.0, beta=0.0, compare_vocab=V)
    w = data.w.astype(np.float64)
    # KL over the first V columns only; CE over the student's full (padded) vocabulary.
    assert float(m["kl_T"][0] / m["kl_T"][1]) == pytest.approx(np_masked_mean(np_kl(data.s, data.t, 2.0), w), rel=1e-5)
    assert float(m["hard_loss"][0] / m["hard_loss"][1]) == pytest.approx(np_masked_mean(np_ce(s, data.labels), w),
                                                                         rel=1e-5)
    assert float(total) == pytest.approx(np_total(s, t, data.labels, w, 0.7, 2.0, 0.0, "cosine", V), rel=1e-5)
    # Had the padded columns been compared, the KL would differ a lot.
    assert np_masked_mean(np_kl(s, t, 2.0), w) > 2 * np_masked_mean(np_kl(data.s, data.t, 2.0), w)
    with pytest.raises(ValueError):
        L.distill_loss(so, to, jnp.asarray(data.labels), None, alpha=0.5, temperature=1.0, beta=0.0,
                       compare_vocab=V + 6)


def test_distill_loss_no_features_and_empty_mask(data):
    so, to, s, t = outputs(data, with_features=False)
    total, m = distill_loss(so, to, jnp.asarray(data.labels), None, alpha=0.5, temperature=1.0, beta=3.0,
                            compare_vocab=V)
    assert float(m["feature_loss"][0]) == 0.0
    assert float(total) == pytest.approx(np_total(s, t, data.labels, np.ones((B, T)), 0.5, 1.0, 0, "cosine", V),
                                         rel=1e-5)
    empty = jnp.zeros((B, T), bool)
    total, m = distill_loss(so, to, jnp.asarray(data.labels), empty, alpha=0.5, temperature=1.0, beta=0.0,
                            compare_vocab=V)
    assert float(total) == 0.0 and float(m["hard_loss"][1]) == 0.0


def test_distill_loss_jit_with_traced_weights(data):
    so, to, s, t = outputs(data)

    @jit
    def f(so, to, labels, w, a, temp, b):
        return L.distill_loss(so, to, labels, w, alpha=a, temperature=temp, beta=b, feature_kind="cosine",
                              compare_vocab=V)[0]

    got = f(so, to, jnp.asarray(data.labels), jnp.asarray(data.w), 0.8, 1.5, 0.2)
    want = np_total(s, t, data.labels, data.w.astype(float), 0.8, 1.5, 0.2, "cosine", V, data.sf, data.tf)
    assert float(got) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------------------- gradients


def test_gradients_match_float64_autodiff_and_finite_differences(data):
    """Gradient of the total wrt student logits and features: float32 vs float64 (x64 autodiff), and
    float64 central finite differences on a few coordinates. Teacher gradients are zero."""
    labels, w = jnp.asarray(data.labels), jnp.asarray(data.w)

    def total(s_logits, s_feats, t_logits, t_feats, dtype):
        so = ModelOutput(logits=s_logits.astype(dtype), features=s_feats.astype(dtype))
        to = ModelOutput(logits=t_logits.astype(dtype), features=t_feats.astype(dtype))
        return L.distill_loss(so, to, labels, w, alpha=0.6, temperature=2.0, beta=0.5, feature_kind="cosine",
                              compare_vocab=V - 2)[0]

    g32 = jit(jax.grad(total, argnums=(0, 1, 2, 3)), static_argnums=4)(f32(data.s), f32(data.sf), f32(data.t),
                                                                     f32(data.tf), jnp.float32)
    assert g32[0].dtype == jnp.float32
    g32 = [np.asarray(g) for g in g32]  # inspected with numpy (indexing a jax array compiles)
    assert np.abs(g32[2]).max() == 0.0 and np.abs(g32[3]).max() == 0.0  # teacher frozen
    assert np.abs(g32[0][~data.w]).max() == 0.0  # masked tokens get no gradient

    # float64 reference: the numpy objective differentiated by central differences
    def np_obj(s, sf):
        return np_total(s, data.t, data.labels, data.w.astype(float), 0.6, 2.0, 0.5, "cosine", V - 2, sf, data.tf)

    eps = 1e-6
    rng = np.random.default_rng(3)
    for _ in range(6):
        idx = (rng.integers(B), rng.integers(T), rng.integers(V))
        sp, sm = data.s.copy(), data.s.copy()
        sp[idx] += eps
        sm[idx] -= eps
        fd = (np_obj(sp, data.sf) - np_obj(sm, data.sf)) / (2 * eps)
        assert float(g32[0][idx]) == pytest.approx(fd, rel=1e-3, abs=1e-6)
        fidx = (rng.integers(2), rng.integers(B), rng.integers(T), rng.integers(7))
        fp, fm = data.sf.copy(), data.sf.copy()
        fp[fidx] += eps
        fm[fidx] -= eps
        fd = (np_obj(data.s, fp) - np_obj(data.s, fm)) / (2 * eps)
        assert float(g32[1][fidx]) == pytest.approx(fd, rel=1e-3, abs=1e-6)

    with jax.enable_x64(True):
        grad64 = jit(jax.grad(total, argnums=(0, 1)), static_argnums=4)
        g64 = grad64(*(jnp.asarray(x) for x in (data.s, data.sf, data.t, data.tf)), jnp.float64)
        assert g64[0].dtype == jnp.float64 and g32[0].dtype == np.float32
        np.testing.assert_allclose(g32[0], np.asarray(g64[0]), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(g32[1], np.asarray(g64[1]), rtol=1e-4, atol=1e-7)


def test_soft_kl_gradient_closed_form(data):
    """d KL(p_T || q_T) / d s = (q_T - p_T) / T per token."""
    temp = 3.0
    g = jit(jax.grad(lambda s, t: jnp.sum(L.soft_kl(s, t, temp))))(f32(data.s), f32(data.t))
    q = np.exp(np_log_softmax(data.s / temp))
    p = np.exp(np_log_softmax(data.t / temp))
    np.testing.assert_allclose(np.asarray(g), (q - p) / temp, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- chunked (fused) logits


def _hidden_case(seed=0, b=2, t=7, ds=5, dt=6, v=13):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        hs=rng.normal(size=(b, t, ds)), ws=rng.normal(size=(ds, v)) * 0.7,
        ht=rng.normal(size=(b, t, dt)), wt=rng.normal(size=(dt, v)) * 0.7,
        labels=rng.integers(0, v, (b, t)), w=rng.random((b, t)) > 0.3,
        sf=rng.normal(size=(2, b, t, 4)), tf=rng.normal(size=(2, b, t, 4)))


CHUNK_CASES = [(3, 13, 0.0), (1, 10, 0.7), (7, 10, 0.0), (64, 13, 0.7)]  # (chunk, compare_vocab, beta)


@pytest.fixture(scope="module")
def chunked_vs_dense():
    """For every case: dense and chunked (value, metrics) and their gradients, all in one program."""
    c = _hidden_case()
    labels, w, ht, wt, tf = jnp.asarray(c.labels), jnp.asarray(c.w), f32(c.ht), f32(c.wt), f32(c.tf)

    def case(chunk, vc, beta, args):
        kw = dict(alpha=0.6, temperature=2.0, beta=beta, feature_kind="l2", compare_vocab=vc)

        def dense(hs, ws, sf):
            return L.distill_loss(ModelOutput(hs @ ws, sf), ModelOutput(ht @ wt, tf), labels, w, **kw)

        def chunked(hs, ws, sf):
            return L.chunked_distill_loss(ModelOutput(None, sf, hs), ModelOutput(None, tf, ht), labels, w,
                                          student_head=ws, teacher_head=wt, chunk_size=chunk, **kw)

        dense_out, ga = jax.value_and_grad(dense, argnums=(0, 1, 2), has_aux=True)(*args)
        gb = jax.grad(lambda *x: chunked(*x)[0], argnums=(0, 1, 2))(*args)  # the custom VJP
        return dense_out, chunked(*args), ga, gb  # chunked value and metrics: the primal (no-gradient) path

    @jit
    def run(*args):
        return [case(*k, args) for k in CHUNK_CASES]

    out = jax.tree.map(np.asarray, run(f32(c.hs), f32(c.ws), f32(c.sf)))
    return c, dict(zip(CHUNK_CASES, out))


@pytest.mark.parametrize("chunk,vc,beta", CHUNK_CASES)
def test_chunked_equals_dense_value_metrics_and_gradients(chunked_vs_dense, chunk, vc, beta):
    c, cases = chunked_vs_dense
    (a, ma), (b, mb), ga, gb = cases[(chunk, vc, beta)]
    assert float(b) == pytest.approx(float(a), rel=1e-6)
    for k in ma:
        assert float(mb[k][0]) == pytest.approx(float(ma[k][0]), rel=1e-5, abs=1e-6), k
        assert float(mb[k][1]) == float(ma[k][1]), k
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
    assert np.abs(gb[0]).max() > 0 and np.abs(gb[0][~c.w]).max() == 0.0


def test_chunked_matches_float64_reference_and_teacher_is_frozen():
    c = _hidden_case(seed=1)
    with jax.enable_x64(True):
        def chunked(hs, ws, ht, wt):
            return L.chunked_distill_loss(ModelOutput(None, None, hs), ModelOutput(None, None, ht),
                                          jnp.asarray(c.labels), jnp.asarray(c.w), student_head=ws, teacher_head=wt,
                                          alpha=0.3, temperature=4.0, beta=0.0, compare_vocab=12, chunk_size=2)[0]

        args = tuple(jnp.asarray(x) for x in (c.hs, c.ws, c.ht, c.wt))
        # the value (primal path) and the gradient (custom VJP), one program
        got, g = jit(lambda *a: (chunked(*a), jax.grad(chunked, argnums=(0, 1, 2, 3))(*a)))(*args)
        assert got.dtype == jnp.float64
        want = np_total(c.hs @ c.ws, c.ht @ c.wt, c.labels, c.w.astype(float), 0.3, 4.0, 0.0, "cosine", 12)
        assert float(got) == pytest.approx(want, rel=1e-12)
        g = [np.asarray(x) for x in g]
        assert g[1].dtype == np.float64
        assert np.abs(g[2]).max() == 0.0 and np.abs(g[3]).max() == 0.0
        eps, idx = 1e-6, (1, 2, 3)
        p, m = c.ws.copy(), c.ws.copy()
        p[idx[1:]] += eps
        m[idx[1:]] -= eps
        fd = (np_total(c.hs @ p, c.ht @ c.wt, c.labels, c.w.astype(float), 0.3, 4.0, 0.0, "cosine", 12)
              - np_total(c.hs @ m, c.ht @ c.wt, c.labels, c.w.astype(float), 0.3, 4.0, 0.0, "cosine", 12)) / (2 * eps)
        assert float(g[1][idx[1:]]) == pytest.approx(fd, rel=1e-6)


def test_chunked_soft_capped_logits_equal_dense():
    """A final logit soft-cap on each side (gemma2): the chunked loss caps the student's and the
    teacher's logits and its custom VJP passes through the cap, as the dense loss on capped logits."""
    c = _hidden_case(seed=2)
    labels, w, ht, wt = jnp.asarray(c.labels), jnp.asarray(c.w), f32(c.ht), f32(c.wt)
    kw = dict(alpha=0.6, temperature=2.0, beta=0.0, feature_kind="l2", compare_vocab=13)

    def cap(z, c):
        return c * jnp.tanh(z / c)

    def dense(hs, ws):
        return L.distill_loss(ModelOutput(cap(hs @ ws, 2.0), None), ModelOutput(cap(ht @ wt, 3.0), None),
                              labels, w, **kw)[0]

    def chunked(hs, ws, caps=(2.0, 3.0)):
        return L.chunked_distill_loss(ModelOutput(None, None, hs), ModelOutput(None, None, ht), labels, w,
                                      student_head=ws, teacher_head=wt, chunk_size=3, student_softcap=caps[0],
                                      teacher_softcap=caps[1], **kw)[0]

    @jit
    def run(hs, ws):
        return (jax.value_and_grad(dense, argnums=(0, 1))(hs, ws), jax.value_and_grad(chunked, argnums=(0, 1))(hs, ws),
                chunked(hs, ws, (None, None)))

    (a, ga), (b, gb), uncapped = jax.tree.map(np.asarray, run(f32(c.hs), f32(c.ws)))
    assert float(b) == pytest.approx(float(a), rel=1e-6)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7)
    assert abs(float(uncapped) - float(a)) > 1e-2  # the caps bend these logits (|z| up to ~5)


def test_chunked_through_a_model_tied_head():
    """return_hidden + head(): the chunked loss gives the dense loss's parameter gradients (tied embeddings)."""
    from flax import nnx

    a = arch(num_layers=1, num_kv_heads=1, tie_embeddings=True)  # test_model's MQA layer shapes
    student = build(a, scan=False, seed=0)  # the model with numpy weights (no compile of random draws)
    teacher = build(a, scan=False, seed=1)
    toks = tokens(b=2, t=6)
    labels, w = np.roll(toks, -1, axis=1), np.ones((2, 6), bool)
    w[1, 4:] = False
    kw = dict(alpha=0.5, temperature=2.0, beta=0.5, feature_kind="cosine", compare_vocab=35)
    graphdef, params = nnx.split(student)
    t_graphdef, t_params = nnx.split(teacher)

    @jit
    def grads(params, t_params):
        teacher = nnx.merge(t_graphdef, t_params)
        t_dense = teacher(toks, feature_layers=(0,))
        t_hidden = teacher(toks, feature_layers=(0,), return_hidden=True)
        t_head = teacher.head()

        def dense(p):
            m = nnx.merge(graphdef, p)
            t_out = t_dense
            return L.distill_loss(m(toks, feature_layers=(0,)), t_out, labels, w, **kw)[0]

        def chunked(p):
            m = nnx.merge(graphdef, p)
            t_out = t_hidden
            s_out = m(toks, feature_layers=(0,), return_hidden=True)
            assert s_out.logits is None and s_out.hidden.shape == (2, 6, 24)
            return L.chunked_distill_loss(s_out, t_out, labels, w, student_head=m.head(), teacher_head=t_head,
                                          chunk_size=4, **kw)[0]

        return jax.value_and_grad(dense)(params), jax.value_and_grad(chunked)(params)

    (la, ga), (lb, gb) = grads(params, t_params)
    assert float(lb) == pytest.approx(float(la), rel=1e-6)
    assert len(jax.tree.leaves(ga)) == len(jax.tree.leaves(gb)) == 11  # embed (tied head), 1 layer x 9, final norm
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=2e-5, atol=1e-7)


def test_chunked_uses_less_memory():
    """XLA's temp buffers for value+grad: the dense path holds several [B, T, V] blocks, chunks do not."""
    b, t, d, v, chunk = 2, 256, 16, 4096, 16
    hs, ht = np.zeros((b, t, d), np.float32), np.zeros((b, t, d), np.float32)
    ws, wt = np.zeros((d, v), np.float32), np.zeros((d, v), np.float32)
    labels, w = np.zeros((b, t), np.int32), np.ones((b, t), bool)
    kw = dict(alpha=0.5, temperature=2.0, beta=0.0, compare_vocab=v)

    def dense(hs, ws, ht, wt, labels, w):
        return L.distill_loss(ModelOutput(hs @ ws, None), ModelOutput(ht @ wt, None), labels, w, **kw)[0]

    def chunked(hs, ws, ht, wt, labels, w):
        return L.chunked_distill_loss(ModelOutput(None, None, hs), ModelOutput(None, None, ht), labels, w,
                                      student_head=ws, teacher_head=wt, chunk_size=chunk, **kw)[0]

    def temp_bytes(f):
        # (buffer assignment is HLO-level: the fast-compile flags change only code generation, the temp sizes
        # equal the default build's within 0.01%)
        lowered = jit(jax.value_and_grad(f, argnums=(0, 1))).lower(hs, ws, ht, wt, labels, w)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    logits_block = b * t * v * 4
    dense_b, chunked_b = temp_bytes(dense), temp_bytes(chunked)
    assert dense_b >= 2 * logits_block
    assert chunked_b < logits_block / 2
