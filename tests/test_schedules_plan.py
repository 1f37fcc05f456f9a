"""Spec schedules resolved into runtime Schedules: hand-computed values at chosen steps."""

from __future__ import annotations

import math

import pytest
from pydantic import TypeAdapter

from distillc.compiler.plan_schedules import describe, schedule_table, table_steps, to_runtime
from distillc.compiler.spec import Schedule as SpecSchedule

SPEC = TypeAdapter(SpecSchedule)


def sched(value, steps=10000):
    return to_runtime(SPEC.validate_python(value), steps)


class TestToRuntime:
    def test_bare_number_is_constant_with_end_equal_to_start(self):
        s = sched(0.5)
        assert (s.kind, s.start, s.end, s.max_steps) == ("constant", 0.5, 0.5, 10000)
        assert s.value(0) == s.value(5000) == s.value(20000) == 0.5

    def test_constant_ignores_end(self):
        s = sched({"schedule": "constant", "start": 1.0, "end": 7.0})
        assert s.end == 1.0 and s.value(10000) == 1.0

    def test_linear(self):
        s = sched({"schedule": "linear", "start": 0.9, "end": 0.5})
        assert s.value(0) == pytest.approx(0.9)
        assert s.value(2500) == pytest.approx(0.8)  # 0.9 - 0.4 * 0.25
        assert s.value(10000) == pytest.approx(0.5)
        assert s.value(15000) == pytest.approx(0.5)  # frozen past max_steps
        assert s.value(-10) == pytest.approx(0.9)  # progress clipped at 0

    def test_cosine_hand_values(self):
        # guide's pruning-recovery alpha: 0.9 -> 0.5 cosine
        s = sched({"schedule": "cosine", "start": 0.9, "end": 0.5})
        assert s.value(0) == pytest.approx(0.9)
        assert s.value(5000) == pytest.approx(0.7)  # half-way: the midpoint
        quarter = 0.5 + 0.4 * 0.5 * (1 + math.cos(math.pi * 0.25))
        assert s.value(2500) == pytest.approx(quarter)
        assert s.value(2500) == pytest.approx(0.841421356)
        assert s.value(10000) == pytest.approx(0.5)

    def test_cosine_holds_near_start_longer_than_linear(self):
        cos = sched({"schedule": "cosine", "start": 1.0, "end": 0.0})
        lin = sched({"schedule": "linear", "start": 1.0, "end": 0.0})
        assert cos.value(1000) > lin.value(1000)

    def test_ramp_without_end_holds_its_start(self):
        s = sched({"schedule": "cosine", "start": 2.0})
        assert (s.start, s.end) == (2.0, 2.0) and s.value(5000) == 2.0

    def test_piecewise_interpolates_and_holds(self):
        s = sched({"schedule": "piecewise", "points": [[0, 0.9], [2000, 0.7], [10000, 0.5]]})
        assert s.kind == "piecewise" and s.points == ((0, 0.9), (2000, 0.7), (10000, 0.5))
        assert (s.start, s.end) == (0.9, 0.5)
        assert s.value(1000) == pytest.approx(0.8)
        assert s.value(6000) == pytest.approx(0.6)
        assert s.value(12000) == pytest.approx(0.5)

    def test_piecewise_holds_first_value_before_first_point(self):
        s = sched({"schedule": "piecewise", "points": [[100, 1.0], [200, 0.0]]})
        assert s.value(0) == 1.0 and s.value(150) == pytest.approx(0.5)

    def test_max_steps_is_train_steps(self):
        assert sched({"schedule": "linear", "start": 1, "end": 0}, steps=400).max_steps == 400


class TestTable:
    def test_eleven_evenly_spaced_steps(self):
        assert table_steps(10000) == tuple(range(0, 10001, 1000))

    def test_short_runs_list_every_step(self):
        assert table_steps(3) == (0, 1, 2, 3)

    def test_uneven_steps_round_down_and_keep_ends(self):
        steps = table_steps(401)
        assert steps[0] == 0 and steps[-1] == 401 and len(steps) == 11

    def test_rows_match_the_runtime_definition(self):
        from distillc.runtime.config import LossConfig

        loss = LossConfig(
            alpha=sched({"schedule": "cosine", "start": 0.9, "end": 0.5}),
            temperature=sched({"schedule": "cosine", "start": 2.0, "end": 1.0}),
            beta=sched({"schedule": "cosine", "start": 1.0, "end": 0.1}),
            feature_loss="cosine",
            compare_vocab=256,
        )
        rows = schedule_table(loss, (0, 5000, 10000))
        assert rows[0] == (0, 0.9, 2.0, 1.0)
        assert rows[1] == pytest.approx((5000, 0.7, 1.5, 0.55))
        assert rows[2] == pytest.approx((10000, 0.5, 1.0, 0.1))


def test_describe():
    assert describe(sched(1.0)) == "constant 1"
    assert describe(sched({"schedule": "cosine", "start": 0.9, "end": 0.5})) == "cosine 0.9 -> 0.5 over 10000 steps"
    assert describe(sched({"schedule": "piecewise", "points": [[0, 0.9], [2000, 0.7]]})) == "piecewise [(0, 0.9), (2000, 0.7)]"
