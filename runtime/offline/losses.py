"""Sparse distillation losses from a cached teacher: what exactly is compared, per variant.

Notation (one token position; the caller's leading dimensions are `...`):
  z      teacher logits over the compared vocabulary V (never all stored offline),
  s      student logits over V (always available: the student runs every step),
  T      the loss temperature at this step, beta = 1 / T,
  p = softmax(z / T), q = softmax(s / T)      both normalized over the FULL vocabulary,
  K      the teacher's top-k token ids (the same set at every T > 0), R = V \\ K the tail,
  p_R = sum_{j in R} p_j,  q_R = sum_{j in R} q_j.

Three estimators of the soft loss KL(p || q); each function returns per-token values (no T^2
factor: the caller scales and reduces, optax style) with `where` zeroing masked positions.

* `tail_bucket_kl` — the KL between the (k+1)-bucket coarsenings P = (p_i for i in K, p_R) and
  Q = (q_i for i in K, q_R). Exact for that coarsening (the teacher's tail mass comes from its
  stored tail log-normalizer, never from 1 - sum(probs)); by the chain rule of KL (the k
  singleton buckets have no within-bucket term)

      KL(p || q) = KL(P || Q) + p_R * KL(p|R || q|R)                                (*)

  so KL(P || Q) <= KL(p || q) (data processing), with equality iff p_R = 0 or the student's
  tail is proportional to the teacher's (q_j / p_j constant on R), whatever it does on K. Its
  gradient is the exact gradient of KL(P || Q): d/ds_j = (q_j - p_j) / T on K and
  (q_j - q_j p_R / q_R) / T on R.

* `renormalized_kl` — KL(p|K || q|K) with both sides renormalized over K (MaxText's sparse KL
  with both sides restricted). Splitting K as one bucket instead of k,

      KL(P || Q) = kl2(p_K, q_K) + p_K * KL(p|K || q|K),   kl2(a, b) = a log(a/b) + (1-a) log((1-a)/(1-b)),

  so renormalized = (tail_bucket - kl2(p_K, q_K)) / p_K <= dense / p_K. It ignores every
  student logit outside K (zero gradient there), so a student may put any mass on the tail at
  no cost: the reviewer's normalization concern in seeds/000. MaxText PR 3990 as quoted
  there renormalizes only the teacher and keeps the student at full normalization,
  sum_K p~_i (log p~_i - log q_i) = KL(p|K || q|K) - log q_K, the (k+1)-bucket KL with the
  teacher's tail forced to zero; it is neither of the two and is not offered here.

* `sampled_kl` — random-sampling KD (Anshumann et al. 2025, "Sparse Logit Sampling"): N tokens
  drawn i.i.d. from the teacher at the capture temperature Tc, stored as unique ids with counts
  c_m (sum c_m = N) and their teacher logits. With a_m = (c_m / N) * p_T(u_m) / p_Tc(u_m)
  (importance weights; a_m = c_m / N when T == Tc)

      KLhat = sum_m a_m (log p_T(u_m) - log q_T(u_m)),   E[KLhat] = KL(p_T || q_T),
      dKLhat/ds = ((sum_m a_m) q_T - sum_m a_m e_{u_m}) / T,   E[...] = (q_T - p_T) / T,

  an unbiased estimate of the dense KL and of its gradient. Its variance is
  Var_{i~p_Tc}[w_i (log p_T(i) - log q_T(i))] / N with w = p_T / p_Tc (at T == Tc:
  Var_p[log p/q] / N); it shrinks as the student approaches the teacher. Anshumann et al.
  normalize the weights to sum to one (self-normalized IS); at T == Tc that is the same
  estimator, at T != Tc it trades an O(1/N) bias for less variance; this module keeps the
  unbiased form. Unbiasedness needs log p_T at the sampled ids, i.e. the full-vocabulary
  log-normalizer at T: exact at the cached temperature grid, interpolated between grid points
  (`interpolate_log_normalizer`, error bound there).

Temperatures between stored grid points: the cache keeps, per token and per grid temperature,
f(beta) = log sum_{j in S} exp(beta z_j) (S = the tail R, or all of V for sampled caches) and
its derivative f'(beta) = the S-softmax mean of z. `interpolate_log_normalizer` is the cubic
Hermite interpolant in beta: exact at grid points, and between them
|f - H| <= h^4 / 384 * max |f''''| with h the beta spacing and f'''' the fourth cumulant of z under
softmax(beta z) on S, itself <= w^4 / 8 for S's logit range w. Measured errors are in
tests/test_topk_losses.py and docs/offline.md.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class TopKTeacher(NamedTuple):
    """The cached teacher at one temperature T (see `teacher_at_temperature`)."""

    indices: Array  # [..., k] int32, teacher's top-k token ids, logits descending
    logits: Array  # [..., k] raw teacher logits z_K (not divided by T)
    tail_lse: Array  # [...] log sum_{j in R} exp(z_j / T); -inf when R is empty


class SampledTeacher(NamedTuple):
    """Random-sampling cache at one temperature T. Empty slots carry count 0."""

    indices: Array  # [..., n] int32, distinct sampled ids (duplicate ids only in count-0 slots)
    counts: Array  # [..., n] draws of each id, sum over n == num_samples
    logits: Array  # [..., n] raw teacher logits at those ids
    log_normalizer: Array  # [...] log sum_{j in V} exp(z_j / T)
    capture_log_normalizer: Array  # [...] the same at the capture temperature Tc


def _up(x: Array) -> Array:
    """At least float32 (bf16 caches are widened; float64 stays float64 for reference checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# ---------------------------------------------------------------- temperature grid


def interpolate_log_normalizer(
    lse: Array,  # [..., G] f(beta_g) = log sum_{j in S} exp(beta_g z_j)
    mean: Array,  # [..., G] f'(beta_g) = sum_{j in S} softmax(beta_g z_S)_j z_j
    betas: np.ndarray,  # [G] static, strictly increasing inverse temperatures
    temperature: Array | float,  # scalar T
) -> Array:  # [...]
    """f(1/T) from its values and slopes on a beta grid (cubic Hermite, exact on the grid).

    Outside the grid the end segment is extended (the reader refuses schedules that leave the
    cached range, so this only absorbs float rounding). With one grid point, the first-order
    expansion f(b0) + f'(b0) (beta - b0), exact at b0.
    """
    betas = np.asarray(betas, dtype=np.float64)
    lse, mean = _up(lse), _up(mean)
    beta = 1.0 / jnp.asarray(temperature, dtype=lse.dtype)
    b = jnp.asarray(betas, dtype=lse.dtype)
    if betas.size == 1:
        return lse[..., 0] + mean[..., 0] * (beta - b[0])
    seg = jnp.clip(jnp.searchsorted(b, beta, side="right") - 1, 0, betas.size - 2)
    b0, b1 = b[seg], b[seg + 1]
    h = b1 - b0
    t = (beta - b0) / h
    t2, t3 = t * t, t * t * t
    h00 = 2 * t3 - 3 * t2 + 1
    h10 = t3 - 2 * t2 + t
    h01 = -2 * t3 + 3 * t2
    h11 = t3 - t2
    f0, f1 = lse[..., seg], lse[..., seg + 1]
    d0, d1 = mean[..., seg], mean[..., seg + 1]
    return h00 * f0 + h10 * h * d0 + h01 * f1 + h11 * h * d1


def teacher_at_temperature(
    indices: Array,  # [..., K] cached top-K ids
    logits: Array,  # [..., K] cached top-K logits, descending
    tail_lse: Array,  # [..., G] cached tail f(beta_g) beyond the K cached tokens
    tail_mean: Array,  # [..., G] cached tail f'(beta_g)
    betas: np.ndarray,  # [G] static
    temperature: Array | float,
    k: int,  # static, k <= K: the top-k the loss uses
) -> TopKTeacher:
    """The top-k teacher at T, from a top-K cache (K >= k).

    The tail beyond the K cached tokens comes from the grid (`interpolate_log_normalizer`); the
    tokens k..K-1 that the loss folds back into the tail are added exactly at T:
    tail_k(T) = logaddexp(tail_K(T), logsumexp(z_{k:K} / T)).
    """
    logits = _up(logits)
    tail = interpolate_log_normalizer(tail_lse, tail_mean, betas, temperature)  # [...]
    if k < logits.shape[-1]:
        extra = jax.nn.logsumexp(logits[..., k:] / temperature, axis=-1)  # [...]
        tail = jnp.logaddexp(tail, extra)
    return TopKTeacher(indices[..., :k], logits[..., :k], tail)


# ---------------------------------------------------------------- bucket log-probabilities


def teacher_bucket_log_probs(teacher: TopKTeacher, temperature: Array | float) -> tuple[Array, Array]:
    """(log p_K [..., k], log p_R [...]) at full-vocabulary normalization, all in log space.

    log Z = logaddexp(logsumexp(z_K / T), tail_lse); log p_i = z_i / T - log Z;
    log p_R = tail_lse - log Z (no 1 - sum(p_K) anywhere).
    """
    scaled = _up(teacher.logits) / temperature  # [..., k]
    log_z = jnp.logaddexp(jax.nn.logsumexp(scaled, axis=-1), teacher.tail_lse)  # [...]
    return scaled - log_z[..., None], teacher.tail_lse - log_z


def student_bucket_log_probs(
    student_logits: Array,  # [..., V]
    indices: Array,  # [..., k]
    temperature: Array | float,
) -> tuple[Array, Array]:
    """(log q_K [..., k], log q_R [...]) of the student at T, full-vocabulary normalization.

    The tail is a log-sum-exp over the student's logits with K masked to -inf (exact in log space
    even when q_R is far below float epsilon relative to q_K).
    """
    scaled = _up(student_logits) / temperature  # [..., V]
    log_z = jax.nn.logsumexp(scaled, axis=-1)  # [...]
    log_q_k = jnp.take_along_axis(scaled, indices, axis=-1) - log_z[..., None]  # [..., k]
    tail = jnp.put_along_axis(scaled, indices, -jnp.inf, axis=-1, inplace=False)  # [..., V]
    log_q_r = jax.nn.logsumexp(tail, axis=-1) - log_z  # [...]
    return log_q_k, log_q_r


def _mask(values: Array, where: Optional[Array]) -> Array:
    return values if where is None else jnp.where(where, values, 0.0)


# ---------------------------------------------------------------- the three losses


def tail_bucket_kl(
    student_logits: Array,  # [..., V]
    teacher: TopKTeacher,  # at the same temperature
    temperature: Array | float,
    where: Optional[Array] = None,  # [...] bool
) -> Array:  # [...]
    """KL(P || Q) over the k+1 buckets (top-k tokens, one tail bucket), nats, no T^2.

    KL(P || Q) = sum_{i in K} p_i (log p_i - log q_i) + p_R (log p_R - log q_R), both sides at
    full-vocabulary normalization. Exact for the coarsening; exact gradient. When K covers the
    whole vocabulary (k == V) the tail bucket is empty and this is the dense KL.
    """
    log_p_k, log_p_r = teacher_bucket_log_probs(teacher, temperature)
    k, vocab = teacher.indices.shape[-1], student_logits.shape[-1]
    if k >= vocab:  # static: no tail bucket
        log_q_k = jax.nn.log_softmax(_up(student_logits) / temperature, axis=-1)
        log_q_k = jnp.take_along_axis(log_q_k, teacher.indices, axis=-1)
        return _mask(jnp.sum(jnp.exp(log_p_k) * (log_p_k - log_q_k), axis=-1), where)
    log_q_k, log_q_r = student_bucket_log_probs(student_logits, teacher.indices, temperature)
    top = jnp.sum(jnp.exp(log_p_k) * (log_p_k - log_q_k), axis=-1)  # [...]
    rest = jnp.exp(log_p_r) * (log_p_r - log_q_r)  # [...]; p_R > 0 whenever R is non-empty
    return _mask(top + rest, where)


def renormalized_kl(
    student_logits: Array,  # [..., V]
    indices: Array,  # [..., k]
    teacher_logits: Array,  # [..., k] raw
    temperature: Array | float,
    where: Optional[Array] = None,  # [...] bool
) -> Array:  # [...]
    """KL(p|K || q|K): both sides renormalized over the teacher's top-k, nats, no T^2.

    p~_i = softmax(z_K / T)_i, q~_i = softmax(s_K / T)_i. Zero iff q ∝ p on K, whatever the
    student's tail mass; in general tail_bucket = kl2(p_K, q_K) + p_K * renormalized and
    dense = tail_bucket + p_R * KL(p|R || q|R) (module docstring). Equal to the dense KL only
    when p_K = q_K = 1 up to the tail terms. Student logits outside K get zero gradient.
    """
    log_p = jax.nn.log_softmax(_up(teacher_logits) / temperature, axis=-1)  # [..., k]
    s_k = jnp.take_along_axis(_up(student_logits), indices, axis=-1)  # [..., k]
    log_q = jax.nn.log_softmax(s_k / temperature, axis=-1)  # [..., k]
    return _mask(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1), where)


def sampled_kl(
    student_logits: Array,  # [..., V]
    teacher: SampledTeacher,  # log normalizers at T and at Tc
    temperature: Array | float,
    capture_temperature: float,
    num_samples: int,  # N, static
    where: Optional[Array] = None,  # [...] bool
) -> Array:  # [...]
    """Unbiased random-sampling estimate of KL(p_T || q_T), nats, no T^2 (module docstring).

    KLhat = sum_m a_m (log p_T(u_m) - log q_T(u_m)), a_m = (c_m / N) exp(log p_T(u_m) - log p_Tc(u_m)).
    """
    z = _up(teacher.logits)  # [..., n]
    log_p_t = z / temperature - teacher.log_normalizer[..., None]  # [..., n]
    log_p_c = z / capture_temperature - teacher.capture_log_normalizer[..., None]  # [..., n]
    weights = teacher.counts.astype(z.dtype) / num_samples * jnp.exp(log_p_t - log_p_c)  # [..., n]
    log_q = jax.nn.log_softmax(_up(student_logits) / temperature, axis=-1)  # [..., V]
    log_q_s = jnp.take_along_axis(log_q, teacher.indices, axis=-1)  # [..., n]
    # Count-0 slots have weight exactly 0; their log-probs are finite, so 0 * finite = 0.
    return _mask(jnp.sum(weights * (log_p_t - log_q_s), axis=-1), where)


# ---------------------------------------------------------------- teacher-side quantities


def teacher_cross_entropy(
    label_logits: Array,  # [...] the teacher's logit of the label token (cached)
    log_normalizer_t1: Array,  # [...] log sum_j exp(z_j) at T = 1
    where: Optional[Array] = None,
) -> Array:  # [...]
    """-log p_1(label) = log Z_1 - z_label: the teacher's CE, exact from the cache."""
    return _mask(log_normalizer_t1 - _up(label_logits), where)
