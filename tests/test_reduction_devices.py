"""(sum, count) metrics reduce to the same values on 1 device and on 8 (batch sharded over a Mesh).

The 8-device run is a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag
must be set before jax initializes). It computes the metrics twice: with the batch sharded by a
NamedSharding under jit (XLA inserts the cross-device sums), and per device with shard_map, each
device producing its local (sum, count) that are then combined as sum(sums) / sum(counts). Both
must equal the unsharded 1-device value here and a float64 numpy reference; the mean of the
per-device means must not (the mask is ragged, so that shortcut is biased).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillc.runtime.train import losses as L
from distillc.runtime.models.transformer import ModelOutput
from tests.conftest import xla_env
from tests.test_losses import np_ce, np_feature, np_kl

ROOT = Path(__file__).resolve().parent.parent
B, T, V, VC, K, D = 8, 6, 13, 11, 2, 5
HP = dict(alpha=0.7, temperature=2.0, beta=0.5, feature_kind="cosine", compare_vocab=VC)

MAKE_DATA = """
import numpy as np
def make_data():
    rng = np.random.default_rng(42)
    s = rng.normal(size=({B}, {T}, {V})) * 2.0
    t = rng.normal(size=({B}, {T}, {V})) * 2.0
    labels = rng.integers(0, {V}, size=({B}, {T}))
    sf = rng.normal(size=({K}, {B}, {T}, {D}))
    tf = rng.normal(size=({K}, {B}, {T}, {D}))
    lengths = np.array([6, 1, 3, 0, 5, 2, 6, 4])  # ragged: one row fully padded
    w = np.arange({T})[None, :] < lengths[:, None]
    return s, t, labels, sf, tf, w
""".format(B=B, T=T, V=V, K=K, D=D)

exec(MAKE_DATA)  # defines make_data() here too: the same arrays in both processes

SHARDED = MAKE_DATA + textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from distillc.runtime.train import losses as L
    from distillc.runtime.models.transformer import ModelOutput

    hp = json.loads(sys.argv[1])
    jit = jax.jit
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(jax.devices(), ("data",))
    s, t, labels, sf, tf, w = make_data()
    batch = NamedSharding(mesh, P("data"))
    feat = NamedSharding(mesh, P(None, "data"))
    put = lambda x, sh: jax.device_put(jnp.asarray(x, jnp.float32 if x.dtype.kind == "f" else x.dtype), sh)
    s_, t_, l_, w_ = put(s, batch), put(t, batch), put(labels, batch), put(w, batch)
    sf_, tf_ = put(sf, feat), put(tf, feat)
    assert len(s_.sharding.device_set) == 8 and s_.addressable_shards[0].data.shape[0] == 1

    def metrics(s, t, sf, tf, labels, w):
        return L.distill_loss(ModelOutput(s, sf), ModelOutput(t, tf), labels, w, **hp)

    total, m = jit(metrics)(s_, t_, sf_, tf_, l_, w_)

    # the chunked (fused lm-head) path on the same sharded batch: logits = hidden @ head, with
    # head = [I; 0] so that they equal the logits above (hidden = logits, D = V)
    eye = jnp.eye(s.shape[-1], dtype=jnp.float32)
    def chunked(s, t, sf, tf, labels, w):
        return L.chunked_distill_loss(ModelOutput(None, sf, s), ModelOutput(None, tf, t), labels, w,
                                      student_head=eye, teacher_head=eye, chunk_size=4, **hp)
    c_total, c_m = jit(chunked)(s_, t_, sf_, tf_, l_, w_)
    c_grad = jit(jax.grad(lambda *a: chunked(*a)[0]))(s_, t_, sf_, tf_, l_, w_)
    d_grad = jit(jax.grad(lambda *a: metrics(*a)[0]))(s_, t_, sf_, tf_, l_, w_)
    assert len(c_grad.sharding.device_set) == 8

    # per device: local (sum, count), combined with psum -- and the biased mean of local means
    def local(s, t, sf, tf, labels, w):
        _, m = metrics(s, t, sf, tf, labels, w)
        out = {}
        for k, (a, c) in m.items():
            out[k] = (jax.lax.psum(a, "data"), jax.lax.psum(c, "data"),
                      jax.lax.pmean(jnp.where(c > 0, a / jnp.maximum(c, 1.0), 0.0), "data"))
        return out

    spec_b, spec_f = P("data"), P(None, "data")
    local_m = jit(jax.shard_map(local, mesh=mesh, in_specs=(spec_b, spec_b, spec_f, spec_f, spec_b, spec_b),
                                out_specs=P()))(s_, t_, sf_, tf_, l_, w_)
    print(json.dumps({
        "devices": jax.device_count(),
        "total": float(total),
        "jit": {k: [float(a), float(c)] for k, (a, c) in m.items()},
        "chunked": {k: [float(a), float(c)] for k, (a, c) in c_m.items()},
        "chunked_total": float(c_total),
        "grad_max_diff": float(jnp.abs(c_grad - d_grad).max()),
        "grad_max": float(jnp.abs(d_grad).max()),
        "shard_map": {k: [float(a), float(c), float(mm)] for k, (a, c, mm) in local_m.items()},
    }))
    """
)


@pytest.fixture(scope="module")
def eight_device_result():
    env = xla_env(8, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED, json.dumps(HP)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_device():
    """On this (1-device) process, one program: the metrics of the whole batch, and of rows 0:2 and
    2:8 as two logging steps (7 and 20 valid tokens)."""
    s, t, labels, sf, tf, w = make_data()
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731

    @jax.jit
    def run(s, t, labels, sf, tf, w):
        return [L.distill_loss(ModelOutput(s[rows], sf[:, rows]), ModelOutput(t[rows], tf[:, rows]), labels[rows],
                               w[rows], **HP) for rows in (slice(0, 8), slice(0, 2), slice(2, 8))]

    out = run(f(s), f(t), jnp.asarray(labels), f(sf), f(tf), jnp.asarray(w))
    out = [(float(total), {k: (float(a), float(c)) for k, (a, c) in m.items()}) for total, m in out]
    return out[0], [m for _, m in out[1:]]


def float64_reference():
    s, t, labels, sf, tf, w = make_data()
    wf = w.astype(np.float64)
    n = wf.sum()
    kl_t = (np_kl(s[..., :VC], t[..., :VC], HP["temperature"]) * wf).sum()
    ref = {
        "kl_T": kl_t / n,
        "soft_loss": HP["temperature"] ** 2 * kl_t / n,
        "kl_T1": (np_kl(s[..., :VC], t[..., :VC], 1.0) * wf).sum() / n,
        "hard_loss": (np_ce(s, labels) * wf).sum() / n,
        "teacher_ce": (np_ce(t, labels) * wf).sum() / n,
        "feature_loss": HP["beta"] * (np_feature(sf, tf, "cosine") * wf).sum() / n,
    }
    ref["total_loss"] = HP["alpha"] * ref["soft_loss"] + (1 - HP["alpha"]) * ref["hard_loss"] + ref["feature_loss"]
    return n, ref


def test_eight_devices_equal_one_device_and_float64(eight_device_result, one_device):
    r8 = eight_device_result
    assert r8["devices"] == 8
    total1, m1 = one_device[0]
    n, ref = float64_reference()
    assert total1 == pytest.approx(ref["total_loss"], rel=1e-5)
    assert r8["total"] == pytest.approx(total1, rel=1e-5)
    for k, want in ref.items():
        s1, c1 = m1[k]
        sj, cj = r8["jit"][k]
        ss, cs, _ = r8["shard_map"][k]
        assert c1 == cj == cs == n, k
        assert s1 / c1 == pytest.approx(want, rel=1e-5), k
        assert sj / cj == pytest.approx(s1 / c1, rel=1e-5), k
        assert ss / cs == pytest.approx(s1 / c1, rel=1e-5), k
    assert r8["shard_map"]["tokens"][0] == n
    # the chunked loss on the sharded batch: same metrics, same gradient
    assert r8["chunked_total"] == pytest.approx(total1, rel=1e-5)
    for k, want in ref.items():
        assert r8["chunked"][k][0] / r8["chunked"][k][1] == pytest.approx(want, rel=1e-5), k
    assert r8["grad_max"] > 0 and r8["grad_max_diff"] < 1e-6 * max(1.0, r8["grad_max"])


def test_mean_of_device_means_is_biased(eight_device_result):
    # The shortcut the (sum, count) pairs exist to avoid: with a ragged mask it gives another number.
    _, ref = float64_reference()
    for k in ("hard_loss", "kl_T1", "teacher_ce"):
        biased = eight_device_result["shard_map"][k][2]
        assert abs(biased - ref[k]) > 1e-3 * abs(ref[k]), k


def test_logging_windows_reduce_as_sum_over_sum(one_device):
    """Two steps with different valid-token counts: sum(sums)/sum(counts) equals the pooled value."""
    parts = one_device[1]  # step 1 has 7 valid tokens, step 2 has 20
    assert [p["tokens"][0] for p in parts] == [7, 20]
    _, ref = float64_reference()
    for k in ("hard_loss", "soft_loss", "feature_loss", "total_loss"):
        pooled = sum(p[k][0] for p in parts) / sum(p[k][1] for p in parts)
        assert pooled == pytest.approx(ref[k], rel=1e-5), k
        mean_of_means = np.mean([p[k][0] / p[k][1] for p in parts])
        assert abs(mean_of_means - ref[k]) > 1e-3 * abs(ref[k]), k
