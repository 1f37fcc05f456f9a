"""Float32 tolerances derived from the dtype and the size of the computation, not fitted to one machine.

Two float32 evaluations of one function (another batch shape, scan vs loop, another XLA or jax
version) differ by rounding alone. Each addition rounds with an error uniform in +-u|partial sum|
(u = eps/2, standard deviation u/sqrt(3)), and over n terms the errors add like a random walk
(Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 2.8): a standard deviation of
u * sqrt(n / 3) * scale for one evaluation, sqrt(2) times that for the difference of two.
"""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
SIGMAS = 6.0  # a Gaussian tail of ~2e-9 per value: no flake over the thousands of values a suite compares


def f32_atol(terms: int, scale: float) -> float:
    """How far two float32 evaluations of a chain of `terms` summed terms, of magnitude up to
    `scale`, may differ: SIGMAS standard deviations of the difference of two random walks."""
    return SIGMAS * math.sqrt(2) * (EPS32 / 2) * math.sqrt(terms / 3) * scale


def forward_terms(arch, seq_len: int) -> int:
    """The terms summed along a logit's path through a decoder: per layer the two RMS norms, the q/k/v
    projection, the attention scores, their weighted sum over the sequence, the output projection,
    the MLP's in and out; then the final norm and the unembedding."""
    layer = 2 * arch.emb_dim + arch.emb_dim + arch.head_dim + seq_len + arch.num_heads * arch.head_dim + arch.emb_dim + arch.mlp_dim
    return arch.num_layers * layer + 2 * arch.emb_dim
