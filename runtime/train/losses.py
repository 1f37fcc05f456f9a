"""Distillation losses: pure functions in the style of optax.losses.

Every per-token function returns values of shape [B, T] (float32) and takes an optional boolean
`where` mask [B, T]; masked-out positions return 0 and the caller reduces. Reductions are kept as
(sum, count) pairs: `masked_mean_parts`. Combining across devices, hosts and logging windows is

    value = sum(sums) / sum(counts)

never a mean of means (a batch with fewer valid tokens must weigh less). All math is float32 with
log_softmax, whatever the logits' dtype (float64 inputs stay float64); the teacher side is under stop_gradient.

`distill_loss` is the online objective of the guide ("Loss anatomy"):

    total = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y) + beta * F(s_f, t_f)

each term a token-weighted mean over the valid tokens of the batch. `chunked_distill_loss` is the
same function of the hidden states and output projections that never holds [B, T, V] logits.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
Metrics = dict[str, tuple[Array, Array]]

# Norm floor of the cosine distance, applied to the squared norm as optax.cosine_distance does
# (MaxText calls it with epsilon=1e-6): ||a|| -> sqrt(max(||a||^2, 1e-6)). Keeps an all-zero
# (padding) activation row finite.
COSINE_EPSILON = 1e-6


def _upcast(x: Array) -> Array:
    """At least float32 (float64 stays float64, so the tests can differentiate in float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask(values: Array, where: Optional[Array]) -> Array:
    return values if where is None else jnp.where(where, values, 0.0)


def masked_mean_parts(values: Array, where: Optional[Array] = None) -> tuple[Array, Array]:
    """(sum of values over valid positions, number of valid positions), both float32 scalars.

    values: [...]; where: bool [...] or None (all valid). The mean is sum / count; to combine
    several parts, add the sums and the counts separately.
    """
    values = _upcast(values)
    if where is None:
        return jnp.sum(values), jnp.asarray(values.size, values.dtype)
    where = jnp.broadcast_to(where, values.shape)
    return jnp.sum(jnp.where(where, values, 0.0)), jnp.sum(where.astype(values.dtype))


def soft_kl(student_logits: Array, teacher_logits: Array, temperature, where: Optional[Array] = None) -> Array:
    """Per-token KL(p_T || q_T) with p_T = softmax(teacher / T), q_T = softmax(student / T).

        KL = sum_v p_T(v) * (log p_T(v) - log q_T(v))      (natural log, nats)

    No T^2 factor here: the caller scales (Hinton). Terms with p_T(v) == 0 contribute 0 (so a
    teacher logit of -inf is allowed). Gradients flow to the student only.

    Args:
      student_logits: [B, T, V] any float dtype.
      teacher_logits: [B, T, V], same V (slice both to the shared vocabulary first).
      temperature: scalar > 0 (python float or traced array).
      where: bool [B, T] or None.

    Returns:
      [B, T] float32, 0 where masked.
    """
    s, t = _upcast(student_logits), _upcast(jax.lax.stop_gradient(teacher_logits))
    temperature = jnp.asarray(temperature, s.dtype)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)  # [B, T, V]
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)  # [B, T, V]
    p = jnp.exp(log_p)  # [B, T, V]
    terms = jnp.where(p > 0.0, p * (log_p - log_q), 0.0)  # [B, T, V]
    return _mask(jnp.sum(terms, axis=-1), where)  # [B, T]


def cross_entropy(logits: Array, labels: Array, where: Optional[Array] = None) -> Array:
    """Per-token cross-entropy with integer labels: logsumexp(logits) - logits[label].

    Args:
      logits: [B, T, V] any float dtype (normalized over all V columns).
      labels: [B, T] int, in [0, V).
      where: bool [B, T] or None.

    Returns:
      [B, T] float32, 0 where masked.
    """
    logits = _upcast(logits)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]  # [B, T]
    return _mask(lse - picked, where)


def feature_loss(
    student_feats: Array,
    teacher_feats: Array,
    kind: Literal["cosine", "l2"],
    where: Optional[Array] = None,
) -> Array:
    """Per-token feature distance averaged over the selected layers.

    cosine: 1 - <s, t> / (max(||s||, 1e-3) * max(||t||, 1e-3)) per token over D, in [0, 2]
            (the norm floor is optax.cosine_distance's epsilon=1e-6 on the squared norm, as MaxText).
    l2:     mean over D of (s - t)^2, i.e. ||s - t||^2 / D (MaxText's masked L2: a mean squared
            error, without optax.l2_loss's factor 1/2).
    Then the mean over the K layer pairs.

    Args:
      student_feats: [K, B, T, D], aligned pairwise with teacher_feats.
      teacher_feats: [K, B, T, D] (stop_gradient applied here).
      kind: "cosine" or "l2".
      where: bool [B, T] or None.

    Returns:
      [B, T] float32, 0 where masked.
    """
    if student_feats.shape != teacher_feats.shape:
        raise ValueError(f"feature shapes differ: student {student_feats.shape}, teacher {teacher_feats.shape}")
    s = _upcast(student_feats)
    t = _upcast(jax.lax.stop_gradient(teacher_feats))
    if kind == "cosine":
        s_norm = jnp.sqrt(jnp.maximum(jnp.sum(s * s, axis=-1), COSINE_EPSILON))  # [K, B, T]
        t_norm = jnp.sqrt(jnp.maximum(jnp.sum(t * t, axis=-1), COSINE_EPSILON))  # [K, B, T]
        per_layer = 1.0 - jnp.sum(s * t, axis=-1) / (s_norm * t_norm)  # [K, B, T]
    elif kind == "l2":
        per_layer = jnp.mean(jnp.square(s - t), axis=-1)  # [K, B, T]
    else:
        raise ValueError(f"feature loss kind must be 'cosine' or 'l2', got {kind!r}")
    return _mask(jnp.mean(per_layer, axis=0), where)  # [B, T]


def distill_loss(
    student_out,
    teacher_out,
    labels: Array,
    where: Optional[Array],
    *,
    alpha,
    temperature,
    beta,
    feature_kind: Literal["cosine", "l2"] = "cosine",
    compare_vocab: int,
) -> tuple[Array, Metrics]:
    """The online distillation objective and every monitoring metric of the guide.

    Args:
      student_out, teacher_out: `ModelOutput`s (anything with `.logits` [B, T, V_side] and
        `.features` [K, B, T, D] or None). Features must already be aligned pair by pair (run the
        student with `feature_layers=(p.student for p in pairs)` and the teacher with
        `(p.teacher ...)`). The feature term exists iff both sides carry features.
      labels: [B, T] int next-token ids.
      where: bool [B, T] valid-token mask (padding False) or None.
      alpha, temperature, beta: scalars (floats or traced, e.g. from `schedules.schedule_fn`).
      feature_kind: "cosine" | "l2".
      compare_vocab: the soft KL compares token ids [0, compare_vocab) on both sides, each
        renormalized there, so rows of a padded vocabulary never enter it. The hard CE (and the
        teacher CE) are over each model's full vocabulary.

    Returns:
      total: float32 scalar, alpha * soft + (1 - alpha) * hard + beta * feature, where
        soft = T^2 * mean KL_T, hard = mean CE, feature = mean F, means over valid tokens
        (a batch with no valid token gives 0, not NaN).
      metrics: name -> (sum, count) float32 scalars; report sum / count after reducing with
        sum(sums) / sum(counts) over devices, hosts and steps:
          soft_loss   T^2 * KL(t_T || s_T)          (token-weighted)
          hard_loss   student CE on labels          (exp(mean) = student perplexity)
          teacher_ce  teacher CE on labels          (exp(mean) = teacher perplexity)
          kl_T        KL at the scheduled T, no T^2
          kl_T1       KL at T = 1 (comparable across runs and schedules)
          feature_loss beta * F (0 when there are no features)
          total_loss  the objective (its sum is the weighted sum of the parts' sums)
          tokens      (valid tokens, 1): the sum is the token count, sum/count tokens per step
          alpha, temperature, beta  (value, 1): the mean over steps
    """
    s_logits = student_out.logits  # [B, T, Vs]
    t_logits = teacher_out.logits  # [B, T, Vt]
    for name, lg in (("student", s_logits), ("teacher", t_logits)):
        if lg.shape[-1] < compare_vocab:
            raise ValueError(f"{name} logits have {lg.shape[-1]} columns < compare_vocab={compare_vocab}")
    s_cmp = s_logits[..., :compare_vocab]  # [B, T, Vc]
    t_cmp = t_logits[..., :compare_vocab]  # [B, T, Vc]

    dt = jnp.promote_types(s_logits.dtype, jnp.float32)
    alpha, temperature, beta = (jnp.asarray(x, dt) for x in (alpha, temperature, beta))
    kl_t = soft_kl(s_cmp, t_cmp, temperature, where)  # [B, T]
    ce = cross_entropy(s_logits, labels, where)  # [B, T]
    # Metrics only: no gradient, so no backward residuals for these extra softmaxes.
    kl_1 = jax.lax.stop_gradient(soft_kl(s_cmp, t_cmp, 1.0, where))  # [B, T]
    t_ce = jax.lax.stop_gradient(cross_entropy(t_logits, labels, where))  # [B, T]

    kl_sum, count = masked_mean_parts(kl_t, where)
    ce_sum, _ = masked_mean_parts(ce, where)
    kl1_sum, _ = masked_mean_parts(kl_1, where)
    tce_sum, _ = masked_mean_parts(t_ce, where)
    soft_sum = temperature * temperature * kl_sum
    logit_sum = alpha * soft_sum + (1.0 - alpha) * ce_sum
    return _assemble(student_out, teacher_out, where, logit_sum, kl_sum, ce_sum, kl1_sum, tce_sum, count,
                     alpha=alpha, temperature=temperature, beta=beta, feature_kind=feature_kind, dt=dt)


def _assemble(student_out, teacher_out, where, logit_sum, kl_sum, ce_sum, kl1_sum, tce_sum, count, *, alpha,
              temperature, beta, feature_kind, dt) -> tuple[Array, Metrics]:
    """Add the feature term to the logit sums; build the metrics dict (shared by both loss paths)."""
    s_feats, t_feats = getattr(student_out, "features", None), getattr(teacher_out, "features", None)
    if s_feats is not None and t_feats is not None:
        feat_sum, _ = masked_mean_parts(feature_loss(s_feats, t_feats, feature_kind, where), where)
        feat_sum = beta * feat_sum
    else:
        feat_sum = jnp.zeros((), dt)
    total_sum = logit_sum + feat_sum
    total = total_sum / jnp.maximum(count, 1.0)
    one = jnp.ones((), dt)
    metrics: Metrics = {
        "soft_loss": (temperature * temperature * kl_sum, count),
        "hard_loss": (ce_sum, count),
        "teacher_ce": (tce_sum, count),
        "kl_T": (kl_sum, count),
        "kl_T1": (kl1_sum, count),
        "feature_loss": (feat_sum, count),
        "total_loss": (total_sum, count),
        "tokens": (count, one),
        "alpha": (alpha, one),
        "temperature": (temperature, one),
        "beta": (beta, one),
    }
    return total, metrics


# ----------------------------------------------------------------------------- chunked (fused) logits


def chunked_distill_loss(
    student_out,
    teacher_out,
    labels: Array,
    where: Optional[Array],
    *,
    student_head: Array,
    teacher_head: Array,
    alpha,
    temperature,
    beta,
    feature_kind: Literal["cosine", "l2"] = "cosine",
    compare_vocab: int,
    chunk_size: int = 256,
    student_softcap: Optional[float] = None,
    teacher_softcap: Optional[float] = None,
) -> tuple[Array, Metrics]:
    """`distill_loss` on logits = hidden @ head, without ever holding [B, T, V] logits.

    The same value, metrics and gradients (to the student hidden state, the student head and, via
    `features`, the layers), computed over chunks of `chunk_size` sequence positions with a
    custom VJP: the forward pass of each chunk computes both logit blocks, the losses and the
    gradient of the logit objective w.r.t. the student logits,

        dL/dz_s = (1 - alpha) (softmax(z_s) - onehot(y)) + alpha T (q_T - p_T)   (on [0, compare_vocab))

    masked per token, and turns it into dL/dh = g W^T and dL/dW += h^T g right away; the backward
    pass only scales the saved dL/dh and dL/dW by the incoming cotangent. Peak memory for the
    logits is O(B * chunk_size * V) instead of O(B * T * V), and no logit matmul is recomputed
    (4 GEMMs: teacher logits, student logits, dh, dW). Chunks run along the sequence axis, so a
    batch sharded over devices stays sharded. The metric sums carry no gradient.

    Args:
      student_out, teacher_out: `ModelOutput`s from `model(..., return_hidden=True)`: `.hidden`
        [B, T, D_side] (final-normed) and `.features` as for `distill_loss`.
      student_head, teacher_head: [D_side, V_side] output projections (`model.head()`); the
        teacher's is frozen.
      chunk_size: sequence positions per chunk (T is padded up to a multiple; padding is masked).
      student_softcap, teacher_softcap: each side's final logit soft-cap (`arch.final_logit_softcap`,
        gemma2): its logits are cap * tanh((hidden @ head) / cap), and the student's gradient passes
        through the cap's derivative 1 - (z / cap)^2.
      Others as `distill_loss`.
    """
    hs, ht = student_out.hidden, teacher_out.hidden  # [B, T, Ds], [B, T, Dt]
    for name, h, w in (("student", hs, student_head), ("teacher", ht, teacher_head)):
        if h is None:
            raise ValueError(f"{name} output has no hidden state: call the model with return_hidden=True")
        if w.shape[0] != h.shape[-1] or w.shape[1] < compare_vocab:
            raise ValueError(f"{name} head {w.shape} does not fit hidden {h.shape} / compare_vocab={compare_vocab}")
    b, t = labels.shape
    dt = jnp.promote_types(jnp.promote_types(hs.dtype, student_head.dtype), jnp.float32)
    alpha, temperature, beta = (jnp.asarray(x, dt) for x in (alpha, temperature, beta))
    mask = jnp.ones((b, t), dt) if where is None else jnp.broadcast_to(where, (b, t)).astype(dt)
    count = jnp.sum(mask)

    c = max(1, min(int(chunk_size), t))
    nc = -(-t // c)
    pad = nc * c - t

    def chunks(x):  # [B, T, ...] -> [nc, B, c, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((b, nc, c) + x.shape[2:]), 1, 0)

    ht = jax.lax.stop_gradient(ht)
    teacher_head = jax.lax.stop_gradient(teacher_head)
    caps = (None if student_softcap is None else float(student_softcap),
            None if teacher_softcap is None else float(teacher_softcap))
    logit_sum, sums = _fused_logit_sums(int(compare_vocab), caps, chunks(hs), student_head, chunks(ht), teacher_head,
                                        chunks(labels.astype(jnp.int32)), chunks(mask), alpha, temperature)
    kl_sum, ce_sum, kl1_sum, tce_sum = (jax.lax.stop_gradient(x) for x in sums)
    return _assemble(student_out, teacher_out, where, logit_sum, kl_sum, ce_sum, kl1_sum, tce_sum, count,
                     alpha=alpha, temperature=temperature, beta=beta, feature_kind=feature_kind, dt=dt)


def _capped(z: Array, cap: Optional[float]) -> Array:
    """cap * tanh(z / cap) (a final logit soft-cap, gemma2), z unchanged for None."""
    return z if cap is None else cap * jnp.tanh(z / cap)


def _chunk(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature, with_grad):
    """One chunk: hs [B, c, Ds], ht [B, c, Dt], labels/mask [B, c]; caps: (student, teacher) final
    logit soft-caps or None. Sums (+ gradient pieces)."""
    acc = jnp.promote_types(hs.dtype, jnp.float32)
    zs = jnp.einsum("bcd,dv->bcv", hs, ws.astype(hs.dtype), preferred_element_type=acc)  # [B, c, Vs]
    zt = jnp.einsum("bcd,dv->bcv", ht, wt.astype(ht.dtype), preferred_element_type=acc).astype(acc)  # [B, c, Vt]
    zs, zt = _capped(zs, caps[0]), _capped(zt, caps[1])
    zs_c, zt_c = zs[..., :vc], zt[..., :vc]

    def kl(t_, s_, temp):
        log_q = jax.nn.log_softmax(s_ / temp, axis=-1)
        log_p = jax.nn.log_softmax(t_ / temp, axis=-1)
        p = jnp.exp(log_p)
        return jnp.sum(jnp.where(p > 0.0, p * (log_p - log_q), 0.0), axis=-1), log_q, p

    def ce(z):
        lse = jax.nn.logsumexp(z, axis=-1)
        return lse - jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0], lse

    kl_t, log_q, p = kl(zt_c, zs_c, temperature)  # [B, c]
    ce_s, lse_s = ce(zs)
    kl_1, _, _ = kl(zt_c, zs_c, 1.0)
    ce_t, _ = ce(zt)
    sums = tuple(jnp.sum(mask * x) for x in (kl_t, ce_s, kl_1, ce_t))
    logit_sum = alpha * temperature * temperature * sums[0] + (1.0 - alpha) * sums[1]
    if not with_grad:
        return logit_sum, sums
    onehot = (jnp.arange(zs.shape[-1]) == labels[..., None]).astype(acc)  # [B, c, Vs]
    g = (1.0 - alpha) * (jnp.exp(zs - lse_s[..., None]) - onehot)
    g = g.at[..., :vc].add(alpha * temperature * (jnp.exp(log_q) - p))
    if caps[0] is not None:  # through the cap: d(cap tanh(u / cap))/du = 1 - (z / cap)^2
        g = g * (1.0 - jnp.square(zs / caps[0]))
    g = (g * mask[..., None]).astype(hs.dtype)  # cast like autodiff's transpose of a low-precision matmul
    dh = jnp.einsum("bcv,dv->bcd", g, ws.astype(hs.dtype), preferred_element_type=acc).astype(hs.dtype)
    dw = jnp.einsum("bcd,bcv->dv", hs, g, preferred_element_type=acc)  # [Ds, Vs]
    return logit_sum, sums, dh, dw


def _scan_chunks(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature, with_grad):
    acc = jnp.promote_types(hs.dtype, jnp.float32)
    zero = jnp.zeros((), acc)
    init = (zero, (zero,) * 4) + ((jnp.zeros(ws.shape, acc),) if with_grad else ())

    def body(carry, xs):
        out = _chunk(vc, caps, xs[0], ws, xs[1], wt, xs[2], xs[3], alpha, temperature, with_grad)
        new = (carry[0] + out[0], tuple(a + b for a, b in zip(carry[1], out[1])))
        if with_grad:
            return new + (carry[2] + out[3],), out[2]
        return new, None

    return jax.lax.scan(body, init, (hs, ht, labels, mask))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused_logit_sums(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature):
    """(alpha T^2 sum KL_T + (1 - alpha) sum CE, (sum KL_T, sum CE_s, sum KL_1, sum CE_t)) over chunks.

    hs [nc, B, c, Ds], ht [nc, B, c, Dt], labels/mask [nc, B, c]; ws [Ds, Vs], wt [Dt, Vt].
    """
    (logit_sum, sums), _ = _scan_chunks(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature, False)
    return logit_sum, sums


def _fused_fwd(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature):
    (logit_sum, sums, dw), dh = _scan_chunks(vc, caps, hs, ws, ht, wt, labels, mask, alpha, temperature, True)
    return (logit_sum, sums), (dh, dw, ws)  # ws only for its dtype (a live parameter: no extra memory)


def _fused_bwd(vc, caps, res, cts):
    dh, dw, ws = res
    ws_dtype = ws.dtype
    ct = cts[0]  # only the objective is differentiable; the metric sums are stop_gradient-ed
    d_hs = (dh * ct.astype(dh.dtype)).astype(dh.dtype)
    d_ws = (dw * ct.astype(dw.dtype)).astype(ws_dtype)
    return d_hs, d_ws, None, None, None, None, None, None


_fused_logit_sums.defvjp(_fused_fwd, _fused_bwd)


def chunked_logit_sums(
    terms: Callable[[Array, dict[str, Array]], tuple[Array, ...]],
    hidden: Array,
    head: Array,
    fields: dict[str, Array],
    *,
    chunk_size: int,
    softcap: Optional[float] = None,
) -> tuple[Array, ...]:
    """Sums over all positions of the per-token `terms(logits, fields)`, with logits = hidden @ head
    (soft-capped by `softcap` where the model caps its logits, gemma2's arch.final_logit_softcap)
    formed one chunk of positions at a time, so [B, T, V] logits never exist at once.

    The generic fused path (cross-entropy only, the offline objectives): each chunk's logits are
    recomputed in the backward pass (`jax.checkpoint` around the chunk), so the memory held for
    them is O(B * chunk_size * V) forward and backward; the cost is one extra logit matmul per
    chunk. `chunked_distill_loss` is the hand-derived (custom VJP, no recompute) online version.

    Args:
      terms: (logits [B, c, V] float32, fields chunked to [B, c, ...]) -> per-token values [B, c],
        each already 0 where `fields["mask"]` is False (padding positions added here have mask False
        and repeat the last real position's values).
      hidden: [B, T, D] final-normed hidden state; head: [D, V] output projection.
      fields: per-position arrays [B, T, ...] the terms need, including "mask" (bool [B, T]).
      chunk_size: positions per chunk (T is padded up to a multiple).

    Returns:
      One float32 scalar per term: its sum over every position of the batch.
    """
    b, t = hidden.shape[:2]
    c = max(1, min(int(chunk_size), t))
    nc = -(-t // c)
    pad = nc * c - t

    def chunks(x: Array, mode: str = "edge") -> Array:  # [B, T, ...] -> [nc, B, c, ...]
        # padded positions repeat the last real one (finite inputs: no NaN can reach a gradient)
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
        return jnp.moveaxis(x.reshape((b, nc, c) + x.shape[2:]), 1, 0)

    acc = jnp.promote_types(hidden.dtype, jnp.float32)

    @jax.checkpoint
    def one(h: Array, f: dict[str, Array]) -> tuple[Array, ...]:
        z = jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype), preferred_element_type=acc)  # [B, c, V]
        return tuple(jnp.sum(x) for x in terms(_capped(z, softcap), f))

    xs = (chunks(hidden), {k: chunks(v, "constant" if k == "mask" else "edge") for k, v in fields.items()})
    first = jax.eval_shape(one, xs[0][0], {k: v[0] for k, v in xs[1].items()})
    init = tuple(jnp.zeros(s.shape, s.dtype) for s in first)

    def body(carry, x):
        return tuple(a + s for a, s in zip(carry, one(*x))), None

    sums, _ = jax.lax.scan(body, init, xs)
    return sums
