"""The chunked (fused) loss path is the dense path without [B, T, V] logits: the same loss, metrics
and gradients for every objective (online, CE only, offline), and `auto` picks it by size.

Tolerances come from float32's epsilon and the reduction size: the two paths add the same terms
in a different order (chunk sums, then the sum of chunks), so they differ by rounding only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from distillc.runtime.config import LayerPair, choose_loss_impl  # noqa: E402
from distillc.runtime.train import losses, objectives  # noqa: E402
from distillc.runtime.train.distributed import make_mesh  # noqa: E402
from distillc.runtime.train.params import init_params  # noqa: E402
from tests.runtime_configs import MICRO, arch, const, make_config  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)


def _tol(n_terms: int, scale: float = 1.0) -> float:
    """Rounding bound of a float32 sum of n terms of magnitude ~scale, reordered (eps * sqrt(n) * 8)."""
    return 8 * EPS32 * math.sqrt(n_terms) * scale


class TestChooseLossImpl:
    def test_explicit_wins(self):
        assert choose_loss_impl("dense", 10**9, 10**6) == "dense"
        assert choose_loss_impl("chunked", 1, 1) == "chunked"

    def test_auto_by_logits_per_device(self):
        assert choose_loss_impl("auto", 16 * 64, 256) == "dense"  # the quickstart
        assert choose_loss_impl("auto", 4096, 32000) == "chunked"  # the measurement

    def test_config_divides_the_batch_over_data_and_fsdp(self, tmp_path):
        cfg = make_config(tmp_path, batch=8, seq_len=32)  # 256 tokens x 256 vocab: dense
        assert cfg.loss_path() == "dense"
        assert cfg.model_copy(update={"loss_impl": "chunked"}).loss_path() == "chunked"


@pytest.mark.parametrize("softcap", [None, 2.0], ids=["plain", "softcapped"])
def test_chunked_logit_sums_equal_dense_with_padding(softcap):
    """T = 13 with chunks of 4: the last chunk is padded, and padding adds nothing. With a final logit
    soft-cap (gemma2) both paths see cap * tanh(z / cap)."""
    rng = np.random.default_rng(0)
    b, t, d, v = 2, 13, 8, 32
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(d, v)) / math.sqrt(d), jnp.float32)
    labels = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    mask = jnp.asarray(rng.random((b, t)) > 0.2)

    def terms(logits, f):
        return (losses.cross_entropy(logits, f["labels"], f["mask"]),
                jnp.where(f["mask"], jax.nn.logsumexp(logits, axis=-1), 0.0))

    fields = {"labels": labels, "mask": mask}

    def dense(h, w):
        z = jnp.einsum("btd,dv->btv", h, w)
        return tuple(jnp.sum(x) for x in terms(z if softcap is None else softcap * jnp.tanh(z / softcap), fields))

    def chunked(h, w):
        return losses.chunked_logit_sums(terms, h, w, fields, chunk_size=4, softcap=softcap)

    for got, want in zip(chunked(hidden, head), dense(hidden, head)):
        assert abs(float(got) - float(want)) <= _tol(b * t, abs(float(want)))
    g_chunk = jax.grad(lambda h, w: chunked(h, w)[0], argnums=(0, 1))(hidden, head)
    g_dense = jax.grad(lambda h, w: dense(h, w)[0], argnums=(0, 1))(hidden, head)
    for a, e in zip(g_chunk, g_dense):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=_tol(v), atol=_tol(b * t))


def _loss_and_grads(cfg, objective, graphdef, params, batch, weights):
    """As the trainer's step computes them: the teacher signal outside the gradient, frozen params traced."""

    def step(p, frozen):
        signal = objective.teacher(frozen, batch)
        return jax.value_and_grad(
            lambda q: objective.loss(nnx.merge(graphdef, q), signal, batch, weights), has_aux=True)(p)

    (loss, metrics), grads = jax.jit(step)(params, objective.frozen)
    return float(loss), jax.device_get(metrics), grads


def _compare_paths(cfg, *, feature: bool = False):
    """The same objective, params and batch through the dense and the chunked path. The params and the
    batch are made once (both paths' configs differ only in loss_impl): filling the data pipeline's
    shuffle window is most of this test's cost."""
    mesh = make_mesh(cfg.mesh)
    shard = objectives.Shard(0, 1)
    graphdef, params = init_params(cfg.student, cfg.scan_layers, mesh)
    weights = tuple(jnp.float32(x) for x in (0.7, 2.0, 0.5 if feature else 0.0))
    batch = None
    results = []
    for impl in ("dense", "chunked"):
        c = cfg.model_copy(update={"loss_impl": impl, "loss_chunk_size": 12})  # 32 positions: a padded last chunk
        objective = objectives.build_objective(c, mesh, shard)
        if batch is None:
            batch = {k: jnp.asarray(v) for k, v in next(objective.data.train_iterator()).items()}
        results.append(_loss_and_grads(c, objective, graphdef, params, batch, weights))
    (l_d, m_d, g_d), (l_c, m_c, g_c) = results
    n = cfg.data.global_batch_size * cfg.data.seq_len
    assert abs(l_c - l_d) <= _tol(n, abs(l_d))
    assert set(m_c) == set(m_d)
    for k in m_d:
        for got, want in zip(m_c[k], m_d[k]):
            assert abs(float(got) - float(want)) <= _tol(n, max(abs(float(want)), 1.0)), k
    for a, e in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_d)):
        scale = float(jnp.max(jnp.abs(e))) or 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=0, atol=_tol(n, scale) * 10)
    return m_d


def test_online_distill_paths_agree(tmp_path):
    _compare_paths(make_config(tmp_path, alpha=0.7, temperature=2.0))


def test_online_distill_paths_agree_with_the_feature_loss(tmp_path):
    cfg = make_config(tmp_path, alpha=0.7)
    steps = cfg.train.steps
    loss = cfg.loss.model_copy(update={"beta": const(0.5, steps), "layer_pairs": (LayerPair(teacher=1, student=0),)})
    metrics = _compare_paths(cfg.model_copy(update={"loss": loss}), feature=True)
    assert float(metrics["feature_loss"][0]) > 0


def test_cross_entropy_paths_agree(tmp_path):
    cfg = make_config(tmp_path, alpha=0.0)
    assert cfg.objective == "cross_entropy"
    _compare_paths(cfg)


def test_untied_head_and_different_vocab_sides(tmp_path):
    """The student's own head (untied) gets the same gradient on both paths."""
    student = arch("micro-untied", layers=2, d=32, heads=2, mlp=64).model_copy(update={"tie_embeddings": False})
    _compare_paths(make_config(tmp_path, alpha=0.5, student=student, teacher=MICRO))


def test_soft_capped_sides_agree(tmp_path):
    """gemma2-style final logit soft-caps (2 on the student, 3 on the teacher, small enough to bend these
    logits): the objectives pass each side's cap to the chunked loss, so both paths train the same thing."""
    student = arch("micro-capped", layers=2, d=32, heads=2, mlp=64).model_copy(update={"final_logit_softcap": 2.0})
    teacher = MICRO.model_copy(update={"final_logit_softcap": 3.0})
    _compare_paths(make_config(tmp_path, alpha=0.5, student=student, teacher=teacher))
    _compare_paths(make_config(tmp_path / "ce", alpha=0.0, student=student, teacher=teacher))


@pytest.mark.parametrize("sampling,loss", [("top_k", "tail_bucket"), ("top_k", "renormalized"), ("random", "sampled")])
def test_offline_paths_agree(tmp_path, sampling, loss):
    """The cached-teacher objectives: the teacher's signal rides in the batch, chunked with it."""
    from tests.test_topk_save import offline_config, quiet

    from distillc.runtime.offline import save as topk_save

    cfg = offline_config(tmp_path, sampling=sampling, loss=loss, steps=2)
    topk_save.save_topk(cfg, log=quiet)
    train = cfg.model_copy(update={"stage": "train", "data": cfg.data.model_copy(update={"seq_len": 16})})
    metrics = _compare_paths(train)
    assert float(metrics["kl_T_cached"][0]) != 0
