"""DC13x: the alpha / temperature / beta schedules. One class per rule."""

from __future__ import annotations

import pytest

from tests.conftest import at, check_text, codes, find, spec_text, where


class TestDC130WeightRange:
    def test_fails_alpha_start(self):
        text = spec_text("loss: {alpha: {start: 1.2, end: 0.5, schedule: cosine}}")
        d = find(check_text(text), "DC130")
        assert where(d) == at(text, "alpha:", "start:", "1.2")
        assert d.path == ("loss", "alpha", "start")

    def test_fails_bare_number(self):
        text = spec_text("loss: {alpha: -0.1}")
        d = find(check_text(text), "DC130")
        assert where(d) == at(text, "alpha:", "-0.1")
        assert d.path == ("loss", "alpha")

    def test_fails_piecewise_point(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [200, 1.5]]}}")
        d = find(check_text(text), "DC130")
        assert d.path == ("loss", "alpha", "points", 1, 1)
        assert where(d) == at(text, "points:", "- 200", "- 1.5", "1.5")

    def test_fails_negative_beta(self):
        text = spec_text("loss: {beta: {start: 0.5, end: -0.1, schedule: linear}}")
        d = find(check_text(text), "DC130")
        assert where(d) == at(text, "beta:", "end:", "-0.1")

    def test_nan_is_refused_as_a_value(self):
        """Non-finite numbers never reach the rules: the spec's types refuse them (DC011), once."""
        d = check_text(spec_text("loss: {alpha: .nan}")).diagnostics
        assert [(x.code, x.message) for x in d] == [("DC011", "expected a finite number (got nan)")]

    @pytest.mark.parametrize("alpha", ["0.0", "1.0", "{start: 1.0, end: 0.0, schedule: cosine}"])
    def test_passes(self, alpha):
        assert "DC130" not in codes(check_text(spec_text(f"loss: {{alpha: {alpha}}}")))


class TestDC131TemperaturePositive:
    def test_fails_zero(self):
        text = spec_text("loss: {temperature: 0}")
        d = find(check_text(text), "DC131")
        assert where(d) == at(text, "temperature:", "0")

    def test_fails_end(self):
        text = spec_text("loss: {temperature: {start: 2.0, end: -1.0, schedule: linear}}")
        assert where(find(check_text(text), "DC131")) == at(text, "temperature:", "end:", "-1.0")

    def test_infinite_is_refused_as_a_value(self):
        d = check_text(spec_text("loss: {temperature: .inf}")).diagnostics
        assert [(x.code, x.message) for x in d] == [("DC011", "expected a finite number (got inf)")]

    def test_passes(self):
        assert "DC131" not in codes(check_text(spec_text("loss: {temperature: {start: 2.0, end: 1.0, schedule: cosine}}")))


class TestDC132TemperatureHigh:
    def test_fails(self):
        text = spec_text("loss: {temperature: {start: 12.0, end: 2.0, schedule: cosine}}")
        d = find(check_text(text), "DC132")
        assert where(d) == at(text, "temperature:", "start:", "12.0")

    def test_passes_at_8(self):
        assert "DC132" not in codes(check_text(spec_text("loss: {temperature: 8.0}")))


class TestDC133TemperatureLow:
    def test_fails(self):
        text = spec_text("loss: {temperature: 0.5}")
        d = find(check_text(text), "DC133")
        assert where(d) == at(text, "temperature:", "0.5")

    def test_passes(self):
        assert "DC133" not in codes(check_text(spec_text("loss: {temperature: 1.0}")))


class TestDC134ConstantEndIgnored:
    def test_fails_no_schedule_key(self):
        text = spec_text("loss: {alpha: {start: 0.9, end: 0.5}}")
        d = find(check_text(text), "DC134")
        assert where(d) == at(text, "alpha:", "end:", "0.5")
        assert "no schedule key" in d.message

    def test_fails_explicit_constant(self):
        text = spec_text("loss: {temperature: {start: 2.0, end: 1.0, schedule: constant}}")
        assert where(find(check_text(text), "DC134")) == at(text, "temperature:", "end:", "1.0")

    def test_passes(self):
        assert "DC134" not in codes(check_text(spec_text("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}")))


class TestDC135RampNeedsEnd:
    def test_fails(self):
        text = spec_text("loss: {temperature: {start: 2.0, schedule: linear}}")
        d = find(check_text(text), "DC135")
        assert where(d) == at(text, "temperature:", "schedule:", "linear")

    def test_passes(self):
        assert "DC135" not in codes(check_text(spec_text("loss: {temperature: {start: 2.0, end: 1.0, schedule: linear}}")))


class TestDC136PiecewiseOrder:
    def test_fails_going_back(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [300, 0.7], [100, 0.5]]}}")
        d = find(check_text(text), "DC136")
        assert d.path == ("loss", "alpha", "points", 2, 0)
        assert where(d) == at(text, "points:", "- 300", "- - 100", "100")

    def test_fails_repeated_step(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [0, 0.7]]}}")
        assert find(check_text(text), "DC136").path == ("loss", "alpha", "points", 1, 0)

    def test_fails_negative_step(self):
        text = spec_text("loss: {temperature: {schedule: piecewise, points: [[-5, 2.0], [100, 1.0]]}}")
        assert find(check_text(text), "DC136").path == ("loss", "temperature", "points", 0, 0)

    def test_passes(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [100, 0.7], [300, 0.5]]}}")
        assert "DC136" not in codes(check_text(text))


class TestDC137PiecewiseBeyondEnd:
    def test_fails(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [100, 0.7], [1000, 0.5]]}}")
        d = find(check_text(text), "DC137")
        assert where(d) == at(text, "points:", "- - 1000", "1000")

    def test_passes_at_the_last_step(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.9], [400, 0.5]]}}")
        assert "DC137" not in codes(check_text(text))


class TestDC138AlphaRising:
    def test_fails(self):
        text = spec_text("loss: {alpha: {start: 0.3, end: 0.9, schedule: linear}}")
        d = find(check_text(text), "DC138")
        assert where(d) == at(text, "alpha:", "end:", "0.9")

    def test_fails_piecewise(self):
        text = spec_text("loss: {alpha: {schedule: piecewise, points: [[0, 0.5], [400, 0.8]]}}")
        assert find(check_text(text), "DC138").path == ("loss", "alpha", "points", 1, 1)

    def test_passes(self):
        assert "DC138" not in codes(check_text(spec_text("loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}")))


class TestDC139AlphaLocked:
    def test_fails(self):
        text = spec_text("student: {model: tiny-teacher}\nloss: {alpha: 0.9}")
        d = find(check_text(text), "DC139")
        assert where(d) == at(text, "alpha:", "0.9")

    def test_passes_compression(self):
        # the guide's 70B -> 8B row: alpha 1.0 constant is right for a much smaller student
        text = spec_text("teacher: {model: llama3.1-70b}\nstudent: {model: llama3.1-8b}\nloss: {alpha: 1.0}\ndata: {tokenizer: /t.model}")
        assert "DC139" not in codes(check_text(text))

    def test_passes_decaying(self):
        text = spec_text("student: {model: tiny-teacher}\nloss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}}")
        assert "DC139" not in codes(check_text(text))

    @pytest.mark.parametrize("alpha", ["1.5", "{start: 1.2, end: 0.9, schedule: cosine}"])
    def test_silent_when_dc130_fires(self, alpha):
        got = codes(check_text(spec_text(f"student: {{model: tiny-teacher}}\nloss: {{alpha: {alpha}}}")))
        assert "DC130" in got and "DC139" not in got
