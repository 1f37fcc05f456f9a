"""runtime.schedules (jnp, traced step) equals runtime.config.Schedule.value at every step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillc.runtime.config import LossConfig, OptimizerConfig, Schedule
from distillc.runtime.train.schedules import learning_rate_schedule, loss_weights, schedule_fn

MAX = 37  # odd, so progress takes non-round values

SCHEDULES = {
    "constant": Schedule(kind="constant", start=0.7, end=0.1, max_steps=MAX),
    "linear_down": Schedule(kind="linear", start=0.9, end=0.5, max_steps=MAX),
    "linear_up": Schedule(kind="linear", start=1e-6, end=2.0, max_steps=MAX),
    "cosine": Schedule(kind="cosine", start=2.0, end=1.0, max_steps=MAX),
    "cosine_up": Schedule(kind="cosine", start=0.1, end=1.0, max_steps=MAX),
    "piecewise": Schedule(kind="piecewise", points=((3, 0.9), (10, 0.7), (30, 0.5), (31, 0.45))),
    "piecewise_one": Schedule(kind="piecewise", points=((5, 0.25),)),
    "piecewise_zero": Schedule(kind="piecewise", points=((0, 1.0), (MAX, 0.0))),
}


STEPS = np.arange(0, MAX + 11)
SPOT = (0, 1, MAX // 2, MAX, MAX + 10)


@pytest.fixture(scope="module")
def traced():
    """Every schedule with a traced step, in one jitted program: vmapped over every int step and every
    float step k + 0.5, and as a scalar (lax.map: one unbatched trace) at the SPOT steps + 0.5."""
    fns = {name: schedule_fn(s) for name, s in SCHEDULES.items()}

    @jax.jit
    def run(steps, spot):
        half = steps.astype(jnp.float32) + 0.5
        return {name: (jax.vmap(f)(steps), jax.vmap(f)(half), jax.lax.map(f, spot)) for name, f in fns.items()}

    return jax.tree.map(np.asarray, run(jnp.asarray(STEPS, jnp.int32), jnp.asarray(SPOT, jnp.float32) + 0.5))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_step_equals_python_definition(traced, name):
    s = SCHEDULES[name]
    got, got_half, got_spot = traced[name]
    want = np.asarray([s.value(int(k)) for k in STEPS])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.dtype == np.float32
    # a float step, between the integers
    np.testing.assert_allclose(got_half, [s.value(k + 0.5) for k in STEPS], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_spot, [s.value(k + 0.5) for k in SPOT], rtol=0, atol=1e-6)
    # also eagerly, one python int at a time
    for k in SPOT:
        assert float(schedule_fn(s)(k)) == pytest.approx(s.value(k), abs=1e-6)


def test_schedules_are_not_trivial():
    # guards against a comparison that passes because everything is constant
    vals = [float(schedule_fn(SCHEDULES["cosine"])(k)) for k in (0, MAX // 2, MAX)]
    assert vals[0] == pytest.approx(2.0) and vals[2] == pytest.approx(1.0) and 1.0 < vals[1] < 2.0
    pw = schedule_fn(SCHEDULES["piecewise"])
    assert float(pw(0)) == pytest.approx(0.9) and float(pw(20)) == pytest.approx(0.6)
    assert float(pw(99)) == pytest.approx(0.45)


def test_loss_weights_triple():
    cfg = LossConfig(alpha=SCHEDULES["cosine_up"], temperature=SCHEDULES["cosine"], beta=SCHEDULES["linear_down"],
                     feature_loss="cosine", compare_vocab=10)
    f = jax.jit(loss_weights(cfg))
    for k in (0, 5, 36, 40):
        a, t, b = f(k)
        assert (float(a), float(t), float(b)) == pytest.approx(
            (cfg.alpha.value(k), cfg.temperature.value(k), cfg.beta.value(k)), abs=1e-6)


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_learning_rate_schedule(decay):
    opt = OptimizerConfig(name="adamw", learning_rate=1e-3, warmup_steps=10, decay=decay, end_learning_rate=1e-4,
                          weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0)
    lr = learning_rate_schedule(opt, total_steps=110)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    end = {"cosine": 1e-4, "linear": 1e-4, "constant": 1e-3}[decay]
    assert float(lr(110)) == pytest.approx(end, rel=1e-5)
    if decay == "cosine":  # halfway through the decay: the mean of the two ends
        assert float(lr(60)) == pytest.approx(0.5 * (1e-3 + 1e-4), rel=1e-5)
