"""Sparse offline losses against the dense KL computed in float64 numpy on the same logits."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from distillc.runtime.offline import losses as tl  # noqa: E402

# ---------------------------------------------------------------- float64 references


def f64(x):
    return np.asarray(x, np.float64)


def lse64(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf row has log-sum-exp -inf
    with np.errstate(divide="ignore"):
        return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def log_softmax64(x):
    return np.asarray(x, np.float64) - lse64(x)[..., None]


def dense_kl64(z, s, t):
    z, s = f64(z), f64(s)
    lp, lq = log_softmax64(z / t), log_softmax64(s / t)
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def topk64(z, k):
    idx = np.argsort(-z, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(z, idx, axis=-1)


def tail_mask(idx, vocab):
    mask = np.ones(idx.shape[:-1] + (vocab,), bool)
    np.put_along_axis(mask, idx, False, axis=-1)
    return mask  # True on the tail R


def coarse64(x, idx, t):
    """(log P_K, log P_R) of softmax(x / t) coarsened to K + one tail bucket, float64."""
    lp = log_softmax64(f64(x) / t)
    tail = np.where(tail_mask(idx, x.shape[-1]), lp, -np.inf)
    return np.take_along_axis(lp, idx, axis=-1), lse64(tail)


def coarse_kl64(z, s, idx, t):
    lpk, lpr = coarse64(z, idx, t)
    lqk, lqr = coarse64(s, idx, t)
    return np.sum(np.exp(lpk) * (lpk - lqk), -1) + np.exp(lpr) * (lpr - lqr)


def tail_lse64(z, idx, t):
    return lse64(np.where(tail_mask(idx, z.shape[-1]), f64(z) / t, -np.inf))


def renorm_kl64(z, s, idx, t):
    z, s = f64(z), f64(s)
    lp = log_softmax64(np.take_along_axis(z, idx, -1) / t)
    lq = log_softmax64(np.take_along_axis(s, idx, -1) / t)
    return np.sum(np.exp(lp) * (lp - lq), -1)


def tail_conditional_kl64(z, s, idx, t):
    z, s = f64(z), f64(s)
    tail = tail_mask(idx, z.shape[-1])
    lp = log_softmax64(np.where(tail, z / t, -np.inf))
    lq = log_softmax64(np.where(tail, s / t, -np.inf))
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(tail, np.exp(lp) * (lp - lq), 0.0), -1)


def make_logits(seed, shape=(3, 5, 50), teacher_scale=3.0, student_scale=2.0):
    rng = np.random.default_rng(seed)
    z = (teacher_scale * rng.standard_normal(shape)).astype(np.float32)
    s = (student_scale * rng.standard_normal(shape)).astype(np.float32)
    return z, s


def teacher_for(z, k, t):
    idx, vals = topk64(z, k)
    return tl.TopKTeacher(
        jnp.asarray(idx, jnp.int32), jnp.asarray(vals), jnp.asarray(tail_lse64(z, idx, t), jnp.float32)
    )


TEMPS = [0.7, 1.0, 2.0]

# ---------------------------------------------------------------- tail_bucket


@pytest.mark.parametrize("t", TEMPS)
@pytest.mark.parametrize("k", [1, 8, 32])
def test_tail_bucket_equals_float64_coarsened_kl(t, k):
    z, s = make_logits(0)
    want = coarse_kl64(z, s, topk64(z, k)[0], t)
    # the formula itself: run in float64, it is the coarsened KL to float64 rounding
    with jax.enable_x64(True):
        idx, vals = topk64(z, k)
        teacher64 = tl.TopKTeacher(jnp.asarray(idx), jnp.asarray(vals, jnp.float64), jnp.asarray(tail_lse64(z, idx, t)))
        got64 = np.asarray(tl.tail_bucket_kl(jnp.asarray(s, jnp.float64), teacher64, t))
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, want, rtol=1e-12, atol=1e-12)
    # the float32 path used in training: float32 rounding of log-probabilities up to |z|/T ~ 15
    got = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher_for(z, k, t), t))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=3e-6, atol=1e-6)


@pytest.mark.parametrize("t", TEMPS)
def test_tail_bucket_gradient_matches_float64_finite_differences(t):
    z, s = make_logits(1, shape=(2, 40))
    k = 6
    idx = topk64(z, k)[0]
    grad = np.asarray(jax.grad(lambda x: tl.tail_bucket_kl(x, teacher_for(z, k, t), t).sum())(jnp.asarray(s)))
    s64, eps = s.astype(np.float64), 1e-5
    fd = np.zeros_like(s64)
    for r in range(s.shape[0]):
        for j in range(s.shape[1]):
            up, dn = s64.copy(), s64.copy()
            up[r, j] += eps
            dn[r, j] -= eps
            fd[r, j] = (coarse_kl64(z, up, idx, t)[r] - coarse_kl64(z, dn, idx, t)[r]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, atol=1e-6)
    # and the closed form of the module docstring
    lp, lq = log_softmax64(f64(z) / t), log_softmax64(s64 / t)
    p, q = np.exp(lp), np.exp(lq)
    tail = tail_mask(idx, s.shape[-1])
    p_r = np.where(tail, p, 0).sum(-1, keepdims=True)
    q_r = np.where(tail, q, 0).sum(-1, keepdims=True)
    closed = np.where(tail, q - q * p_r / q_r, q - p) / t
    np.testing.assert_allclose(grad, closed, atol=1e-6)


@pytest.mark.parametrize("t", TEMPS)
def test_chain_rule_decomposition_and_data_processing_inequality(t):
    z, s = make_logits(2)
    k = 8
    idx = topk64(z, k)[0]
    tb = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher_for(z, k, t), t), np.float64)
    rn = np.asarray(tl.renormalized_kl(jnp.asarray(s), jnp.asarray(idx), jnp.asarray(topk64(z, k)[1]), t))
    dense = dense_kl64(z, s, t)
    lpk, lpr = coarse64(z, idx, t)
    lqk, lqr = coarse64(s, idx, t)
    p_k, p_r, q_k, q_r = np.exp(lse64(lpk)), np.exp(lpr), np.exp(lse64(lqk)), np.exp(lqr)
    # KL(p||q) = KL(P||Q) + p_R KL(p|R||q|R)   (k+1 buckets: singletons have no inner term)
    np.testing.assert_allclose(tb + p_r * tail_conditional_kl64(z, s, idx, t), dense, rtol=1e-5, atol=1e-5)
    # KL(P||Q) = kl2(p_K, q_K) + p_K KL(p|K||q|K)   (K as one bucket)
    kl2 = p_k * np.log(p_k / q_k) + p_r * np.log(p_r / q_r)
    np.testing.assert_allclose(kl2 + p_k * rn, tb, rtol=1e-5, atol=1e-5)
    assert np.all(tb <= dense + 1e-6)
    assert np.all(dense - tb > 0) and np.mean(dense - tb) > 1e-2  # random pairs: strict inequality


def test_tail_bucket_equals_dense_when_the_student_tail_is_proportional_to_the_teachers():
    z, s_rand = make_logits(3)
    k, t = 8, 1.5
    idx, vals = topk64(z, k)
    tail = tail_mask(idx, z.shape[-1])
    # q ∝ p on R (any student logits on K): the coarsening loses nothing
    s = np.where(tail, z - 1.3, s_rand).astype(np.float32)
    tb = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher_for(z, k, t), t))
    dense = dense_kl64(z, s, t)
    assert np.all(dense > 1e-2)
    np.testing.assert_allclose(tb, dense, rtol=3e-6, atol=1e-6)
    # the student moves mass onto the tail, keeping both shapes: renormalized sees nothing,
    # tail_bucket sees all of it (kl2(p_K, q_K), here the whole dense KL)
    s2 = np.where(tail, z + 2.0, z).astype(np.float32)
    rn = np.asarray(tl.renormalized_kl(jnp.asarray(s2), jnp.asarray(idx), jnp.asarray(vals), t))
    np.testing.assert_allclose(rn, 0.0, atol=1e-6)
    tb2 = np.asarray(tl.tail_bucket_kl(jnp.asarray(s2), teacher_for(z, k, t), t))
    dense2 = dense_kl64(z, s2, t)
    assert np.all(dense2 > 1e-2)
    np.testing.assert_allclose(tb2, dense2, rtol=3e-6, atol=1e-6)


def test_tail_bucket_with_full_vocabulary_is_the_dense_kl():
    z, s = make_logits(4, shape=(4, 16))
    t = 1.0
    got = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher_for(z, 16, t), t))
    np.testing.assert_allclose(got, dense_kl64(z, s, t), rtol=1e-6, atol=1e-6)


def test_where_mask_zeroes_values_and_gradients():
    z, s = make_logits(5, shape=(2, 3, 20))
    where = np.array([[True, False, True], [False, False, True]])
    teacher = teacher_for(z, 4, 1.0)
    val = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher, 1.0, where=jnp.asarray(where)))
    assert np.all(val[~where] == 0.0) and np.all(val[where] > 0)
    grad = np.asarray(jax.grad(lambda x: tl.tail_bucket_kl(x, teacher, 1.0, where=jnp.asarray(where)).sum())(jnp.asarray(s)))
    assert np.all(grad[~where] == 0.0) and np.all(np.abs(grad[where]).sum(-1) > 0)


# ---------------------------------------------------------------- log-space tail accuracy


def test_k1024_fp32_tail_in_log_space_vs_one_minus_sum():
    """At k=1024 in fp32, 1 - sum(p_K) is rounding noise; the cached tail log-sum-exp is not."""
    rng = np.random.default_rng(6)
    vocab, k, t = 32768, 1024, 1.0
    z = rng.standard_normal((4, vocab)).astype(np.float32)
    z[:, :k] += 20.0  # a confident teacher: tail mass ~ 1e-8
    idx, vals = topk64(z, k)
    _, true_lpr = coarse64(z, idx, t)  # float64 truth
    tail_fp32 = jax.jit(lambda x, i: jax.nn.logsumexp(jnp.put_along_axis(x / t, i, -jnp.inf, axis=-1, inplace=False), axis=-1))(
        jnp.asarray(z), jnp.asarray(idx)
    )
    teacher = tl.TopKTeacher(jnp.asarray(idx), jnp.asarray(vals), tail_fp32)
    _, lpr = tl.teacher_bucket_log_probs(teacher, t)
    rel_log_space = np.abs(np.expm1(np.asarray(lpr, np.float64) - true_lpr))
    # the naive fp32 way: normalizer over the full vocabulary, then 1 - sum of the top-k probs
    log_z = jax.nn.logsumexp(jnp.asarray(z) / t, axis=-1)
    naive = 1.0 - jnp.sum(jnp.exp(jnp.asarray(vals) / t - log_z[:, None]), axis=-1)
    rel_naive = np.abs(np.asarray(naive, np.float64) / np.exp(true_lpr) - 1.0)
    assert np.all(np.exp(true_lpr) < 1e-6)
    assert np.all(rel_log_space < 1e-5), rel_log_space
    assert np.all(rel_naive > 0.1), rel_naive  # 1 - sum is mostly rounding error here


# ---------------------------------------------------------------- temperature grid


def tail_stats64(z, idx, betas):
    tail = tail_mask(idx, z.shape[-1])
    lse, mean = [], []
    for b in betas:
        x = np.where(tail, b * z.astype(np.float64), -np.inf)
        lse.append(lse64(x))
        w = np.exp(x - lse64(x)[..., None])
        mean.append(np.sum(np.where(tail, w * z, 0.0), -1))
    return np.stack(lse, -1), np.stack(mean, -1)


def test_interpolated_tail_is_exact_on_the_grid_and_within_its_bound_between():
    z, _ = make_logits(7, shape=(64, 200))
    k = 16
    idx = topk64(z, k)[0]
    betas = 1.0 / np.array([2.0, 1.6, 1.3, 1.0])[::1]  # increasing beta
    lse, mean = tail_stats64(z, idx, betas)
    args = (jnp.asarray(lse, jnp.float32), jnp.asarray(mean, jnp.float32), betas)
    for b in betas:
        np.testing.assert_allclose(np.asarray(tl.interpolate_log_normalizer(*args, 1.0 / b)), tail_lse64(z, idx, 1.0 / b), rtol=2e-7, atol=0)
    # between grid points: error <= h^4/384 * max|f''''|, |f''''| <= w^4/8 (w = tail logit range)
    tail = tail_mask(idx, z.shape[-1])
    w = np.max(np.where(tail, z, -np.inf), -1) - np.min(np.where(tail, z, np.inf), -1)
    h = np.max(np.diff(betas))
    worst = 0.0
    for t in np.linspace(1.0, 2.0, 23):
        err = np.abs(np.asarray(tl.interpolate_log_normalizer(*args, t), np.float64) - tail_lse64(z, idx, t))
        assert np.all(err <= h**4 / 384 * w**4 / 8 + 1e-5)
        worst = max(worst, err.max())
    assert worst < 1e-3, worst  # measured: far inside the bound for Gaussian-like logits
    assert worst > 0  # the test really exercises off-grid points


def test_teacher_at_temperature_folds_cached_tokens_back_into_the_tail_exactly():
    z, s = make_logits(8, shape=(3, 4, 60))
    K, k, t = 24, 5, 1.25
    idx, vals = topk64(z, K)
    betas = np.array([1.0 / t])
    lse, mean = tail_stats64(z, idx, betas)
    teacher = tl.teacher_at_temperature(
        jnp.asarray(idx), jnp.asarray(vals), jnp.asarray(lse, jnp.float32), jnp.asarray(mean, jnp.float32), betas, t, k
    )
    assert teacher.indices.shape[-1] == k
    np.testing.assert_allclose(np.asarray(teacher.tail_lse), tail_lse64(z, idx[..., :k], t), rtol=1e-6)
    got = np.asarray(tl.tail_bucket_kl(jnp.asarray(s), teacher, t))
    np.testing.assert_allclose(got, coarse_kl64(z, s, idx[..., :k], t), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- renormalized


@pytest.mark.parametrize("t", TEMPS)
def test_renormalized_is_the_kl_of_the_conditionals_and_blind_to_the_tail(t):
    z, s = make_logits(9)
    k = 8
    idx, vals = topk64(z, k)
    f = lambda x: tl.renormalized_kl(x, jnp.asarray(idx), jnp.asarray(vals), t)  # noqa: E731
    got = np.asarray(f(jnp.asarray(s)))
    np.testing.assert_allclose(got, renorm_kl64(z, s, idx, t), rtol=1e-6, atol=1e-6)
    # moving student mass onto the tail changes the dense KL but not the renormalized loss
    tail = tail_mask(idx, z.shape[-1])
    s_tail_heavy = np.where(tail, s + 5.0, s).astype(np.float32)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(s_tail_heavy))), got, rtol=1e-6, atol=1e-6)
    assert np.all(dense_kl64(z, s_tail_heavy, t) > dense_kl64(z, s, t))
    grad = np.asarray(jax.grad(lambda x: f(x).sum())(jnp.asarray(s)))
    assert np.all(grad[tail] == 0.0)


# ---------------------------------------------------------------- sampled


def draw_sampled(rng, z, tc, n, reps):
    """reps independent sample sets of n draws from softmax(z / tc), as (ids, counts) slots."""
    p = np.exp(log_softmax64(f64(z) / tc))
    vocab = z.shape[-1]
    ids = np.zeros((reps, n), np.int32)
    counts = np.zeros((reps, n), np.int32)
    for r in range(reps):
        draws = rng.choice(vocab, size=n, p=p)
        u, c = np.unique(draws, return_counts=True)
        ids[r, : u.size], counts[r, : u.size] = u, c
    return ids, counts


@pytest.mark.parametrize("t", [1.0, 1.5])
def test_sampled_is_unbiased_for_dense_kl_and_its_gradient(t):
    rng = np.random.default_rng(10)
    vocab, n, reps, tc = 30, 12, 6000, 1.0
    z = (2.0 * rng.standard_normal(vocab)).astype(np.float32)
    s = (1.5 * rng.standard_normal(vocab)).astype(np.float32)
    ids, counts = draw_sampled(rng, z, tc, n, reps)
    teacher = tl.SampledTeacher(
        jnp.asarray(ids),
        jnp.asarray(counts),
        jnp.asarray(z[ids]),
        jnp.full((reps,), lse64(f64(z) / t), jnp.float32),
        jnp.full((reps,), lse64(f64(z) / tc), jnp.float32),
    )
    s_rep = jnp.broadcast_to(jnp.asarray(s), (reps, vocab))
    est, grads = jax.value_and_grad(lambda x: tl.sampled_kl(x, teacher, t, tc, n).sum())(s_rep)
    per_rep = np.asarray(tl.sampled_kl(s_rep, teacher, t, tc, n), np.float64)
    grads = np.asarray(grads, np.float64)
    dense = dense_kl64(z, s, t)
    # exact variance of one estimate: Var_{i~p_c}[w_i (log p_T(i) - log q_T(i))] / n
    lpt, lpc, lq = log_softmax64(f64(z) / t), log_softmax64(f64(z) / tc), log_softmax64(f64(s) / t)
    f = np.exp(lpt - lpc) * (lpt - lq)
    var = (np.sum(np.exp(lpc) * f**2) - dense**2) / n
    sem = np.sqrt(var / reps)
    assert abs(per_rep.mean() - dense) < 4 * sem, (per_rep.mean(), dense, sem)
    assert abs(per_rep.var() / var - 1) < 0.15  # the stated variance is the real one
    want_grad = (np.exp(lq) - np.exp(lpt)) / t
    grad_sem = grads.std(0) / np.sqrt(reps) + 1e-9
    assert np.all(np.abs(grads.mean(0) - want_grad) < 5 * grad_sem)
    if t != tc:  # without the importance weights the estimate is biased: the test can fail
        naive = np.sum(counts / n * (lpt[ids] - lq[ids]), -1)
        assert abs(naive.mean() - dense) > 10 * sem


def test_sampled_count_zero_slots_contribute_nothing():
    z, s = make_logits(11, shape=(2, 25))
    ids = jnp.asarray([[3, 7, 0, 0], [1, 1, 1, 1]], jnp.int32)
    counts = jnp.asarray([[2, 1, 0, 0], [3, 0, 0, 0]], jnp.int32)
    lz = jnp.asarray(lse64(z), jnp.float32)
    teacher = tl.SampledTeacher(ids, counts, jnp.take_along_axis(jnp.asarray(z), ids, -1), lz, lz)
    got = np.asarray(tl.sampled_kl(jnp.asarray(s), teacher, 1.0, 1.0, 3))
    lp, lq = log_softmax64(z), log_softmax64(s)
    want = [(2 * (lp[0, 3] - lq[0, 3]) + (lp[0, 7] - lq[0, 7])) / 3, lp[1, 1] - lq[1, 1]]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_teacher_cross_entropy_from_label_logit_and_normalizer():
    z, _ = make_logits(12, shape=(5, 40))
    labels = np.arange(5) * 3
    got = tl.teacher_cross_entropy(jnp.asarray(z[np.arange(5), labels]), jnp.asarray(lse64(z), jnp.float32))
    np.testing.assert_allclose(np.asarray(got), -log_softmax64(z)[np.arange(5), labels], rtol=1e-6)
