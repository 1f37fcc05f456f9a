"""The trainer's hooks: when they run, and the divergence guard's decisions on synthetic results."""

from __future__ import annotations

import pytest

from distillc.runtime.config import DivergenceConfig
from distillc.runtime.train.halts import Diverged
from distillc.runtime.train.hooks import DivergenceHook, EvalHook, Hook


def results(loss: float, grad_norm: float = 1.0, tokens: float = 100.0) -> dict:
    return {"total_loss": (loss * tokens, tokens), "grad_norm": (grad_norm, 1.0)}


def feed(hook: DivergenceHook, losses, grad_norm: float = 1.0) -> None:
    for i, loss in enumerate(losses):
        hook.record(i + 1, results(loss, grad_norm))


class TestDue:
    def test_every_and_at_end(self):
        h = Hook()
        h.every, h.at_end = 4, True
        assert [s for s in range(1, 11) if h.due(s, 10)] == [4, 8, 10]

    def test_eval_skips_the_last_step(self):
        h = EvalHook(5, lambda: {}, writer=None)  # type: ignore[arg-type]
        assert [s for s in range(1, 11) if h.due(s, 10)] == [5]


class TestDivergence:
    def test_a_decreasing_loss_is_never_a_spike(self):
        feed(DivergenceHook(DivergenceConfig(), lambda: None), [5.5 * 0.97**i for i in range(200)])

    def test_a_spike_stops_naming_the_step_the_values_and_the_checkpoint(self):
        hook = DivergenceHook(DivergenceConfig(factor=10, window=50), lambda: 40)
        with pytest.raises(Diverged) as info:
            feed(hook, [3.0, 2.9, 2.8, 2.9, 425172.0])
        e = info.value
        assert e.step == 4 and e.term == "total loss" and e.last_checkpoint == 40
        assert "425172" in str(e) and "median 2.9" in str(e) and "last checkpoint: step 40" in str(e)

    def test_the_first_step_already_has_a_reference(self):
        with pytest.raises(Diverged):
            feed(DivergenceHook(DivergenceConfig(), lambda: None), [5.5, 1e5])

    def test_below_the_factor_is_noise(self):
        feed(DivergenceHook(DivergenceConfig(factor=10), lambda: None), [3.0, 3.1, 2.9, 29.0])

    def test_a_collapsed_gradient_stops_after_collapse_steps(self):
        hook = DivergenceHook(DivergenceConfig(collapse_steps=3), lambda: None)
        feed(hook, [5.5, 5.5])  # grad norm 1: fine
        hook.record(3, results(5.5, 0.0))
        hook.record(4, results(5.5, 0.0))
        with pytest.raises(Diverged) as info:
            hook.record(5, results(5.5, 0.0))
        assert info.value.term == "gradient norm" and info.value.step == 4

    def test_a_gradient_of_zero_now_and_then_is_not_a_collapse(self):
        hook = DivergenceHook(DivergenceConfig(collapse_steps=3), lambda: None)
        for step in range(1, 30):
            hook.record(step, results(5.0, 0.0 if step % 3 else 1.0))

    def test_warn_says_it_once_per_episode_and_goes_on(self, capsys):
        hook = DivergenceHook(DivergenceConfig(policy="warn"), lambda: None)
        feed(hook, [3.0, 3.0, 1e6, 1e6, 3.0, 1e7])
        err = capsys.readouterr().err
        assert err.count("warning: step") == 2 and "train.divergence.policy: warn" in err
