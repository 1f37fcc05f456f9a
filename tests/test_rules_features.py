"""DC12x: the feature loss, its layer selection and the models it aligns. One class per rule."""

from __future__ import annotations

from tests.conftest import at, check_text, codes, find, spec_text, where

# a clean feature-loss set-up on the tiny models: same hidden size, decaying alpha
FEATURE = """
student: {model: tiny-teacher}
loss:
  alpha: {start: 0.9, end: 0.5, schedule: cosine}
  beta: 1.0
  layers: {strategy: first_n, count: 1}
"""
LLAMA = "teacher: {model: llama3.1-8b}\nstudent: {model: llama3.1-8b}\ndata: {tokenizer: /data/tok.model}\n"


def feature(extra: str = "") -> str:
    """The feature set-up with `extra` merged over it."""
    return spec_text(extra, base=spec_text(FEATURE))


def test_feature_setup_is_clean():
    assert codes(check_text(feature())) == []


class TestDC120BetaCannotRamp:
    """MaxText's limit (its trainer decides the sow from distill_beta at step 0), not our runtime's."""

    def test_fails(self):
        text = feature("loss: {beta: {start: 0.0, end: 0.5, schedule: cosine}}")
        d = find(check_text(text, target="maxtext"), "DC120")
        assert where(d) == at(text, "beta:", "start:", "0.0")

    def test_fails_piecewise(self):
        text = feature("loss: {beta: {schedule: piecewise, points: [[0, 0.0], [100, 1.0]]}}")
        d = find(check_text(text, target="maxtext"), "DC120")
        assert d.path == ("loss", "beta", "points", 0)

    def test_passes_for_the_distillc_target(self):
        for beta in ("{start: 0.0, end: 0.5, schedule: cosine}", "{schedule: piecewise, points: [[0, 0.0], [100, 1.0]]}"):
            assert codes(check_text(feature("loss: {beta: %s}" % beta))) == []

    def test_passes_tiny_start(self):
        assert "DC120" not in codes(check_text(feature("loss: {beta: {start: 1.0e-6, end: 0.5, schedule: cosine}}"), target="maxtext"))


class TestDC121ScanNnx:
    """MaxText's limit: the distillc runtime collects the selected layers' features unscanned too."""

    def test_passes_unscanned_for_the_distillc_target(self):
        assert codes(check_text(feature("runtime: {scan_layers: false, enable_nnx: false}"))) == []

    def test_fails_scan(self):
        text = feature("runtime: {scan_layers: false}")
        d = find(check_text(text, target="maxtext"), "DC121")
        assert where(d) == at(text, "scan_layers:", "false")

    def test_fails_both(self):
        text = feature("runtime: {scan_layers: false, enable_nnx: false}")
        hits = [d for d in check_text(text, target="maxtext").diagnostics if d.code == "DC121"]
        assert [d.path for d in hits] == [("runtime", "scan_layers"), ("runtime", "enable_nnx")]
        assert where(hits[1]) == at(text, "enable_nnx:", "false")

    def test_passes_logit_only(self):
        assert "DC121" not in codes(check_text(spec_text("runtime: {scan_layers: false, enable_nnx: false}"), target="maxtext"))

    def test_passes(self):
        assert "DC121" not in codes(check_text(feature("runtime: {scan_layers: true, enable_nnx: true}"), target="maxtext"))


class TestDC122FeatureNeedsLayers:
    def test_fails_missing(self):
        text = spec_text("student: {model: tiny-teacher}\nloss: {beta: 0.5}")
        d = find(check_text(text), "DC122")
        assert where(d) == at(text, "beta:", "0.5")

    def test_fails_explicit_empty(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit}"))
        d = find(check_text(text), "DC122")
        assert where(d) == at(text, "layers:", "strategy:")

    def test_fails_explicit_both(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, indices: [0], pairs: [[0, 0]]}"))
        d = find(check_text(text), "DC122")
        assert where(d) == at(text, "layers:", "pairs:")

    def test_passes(self):
        assert "DC122" not in codes(check_text(feature()))


class TestDC123LayerOutOfRange:
    def test_fails_explicit_index(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, indices: [0, 2]}"))
        d = find(check_text(text), "DC123")
        assert where(d) == at(text, "indices:", "- 2", "2")
        assert d.path == ("loss", "layers", "indices", 1)

    def test_fails_pair_student_side(self):
        # llama3.1-8b pruned by 2 layers: the student has 30 layers (0-29)
        text = spec_text(
            LLAMA.replace("student: {model: llama3.1-8b}", "student: {model: llama3.1-8b, pruned_layers: [14, 15]}")
            + "loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}, beta: 1.0, layers: {strategy: explicit, pairs: [[13, 13], [31, 30]]}}"
        )
        d = find(check_text(text), "DC123")
        assert d.path == ("loss", "layers", "pairs", 1, 1)
        assert where(d) == at(text, "pairs:", "- - 31", "- 30", "30")

    def test_fails_count_deeper_than_student(self):
        text = spec_text(FEATURE.replace("count: 1", "count: 3"))
        d = find(check_text(text), "DC123")
        assert where(d) == at(text, "count:", "3")

    def test_passes(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, indices: [0, 1]}"))
        assert "DC123" not in codes(check_text(text))


class TestDC124LayerDuplicate:
    def test_fails(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, indices: [1, 0, 1]}"))
        d = find(check_text(text), "DC124")
        assert d.path == ("loss", "layers", "indices", 2)
        assert where(d) == at(text, "indices:", "- 1", "- 0", "- 1", "1")

    def test_fails_pairs(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, pairs: [[0, 0], [0, 0]]}"))
        assert find(check_text(text), "DC124").path == ("loss", "layers", "pairs", 1)

    def test_passes(self):
        text = spec_text(FEATURE.replace("{strategy: first_n, count: 1}", "{strategy: explicit, indices: [0, 1]}"))
        assert "DC124" not in codes(check_text(text))


PRUNED = LLAMA.replace("student: {model: llama3.1-8b}", "student: {model: llama3.1-8b, pruned_layers: [14, 15]}")
PRUNED_LOSS = "loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}, beta: 1.0, layers: %s}"


class TestDC125LayersIgnorePruning:
    def test_fails_explicit_indices_past_the_prune(self):
        text = spec_text(PRUNED + PRUNED_LOSS % "{strategy: explicit, indices: [3, 20]}")
        d = find(check_text(text), "DC125")
        assert where(d) == at(text, "layers:", "indices:")

    def test_fails_pair_not_the_copy(self):
        # teacher layer 20 is student layer 18 after removing 14 and 15
        text = spec_text(PRUNED + PRUNED_LOSS % "{strategy: explicit, pairs: [[13, 13], [20, 20]]}")
        d = find(check_text(text), "DC125")
        assert d.path == ("loss", "layers", "pairs", 1, 1)

    def test_fails_first_n_misses_the_region(self):
        text = spec_text(PRUNED + PRUNED_LOSS % "{strategy: first_n, count: 8}")
        d = find(check_text(text), "DC125")
        assert where(d) == at(text, "layers:", "strategy:", "first_n")

    def test_passes_straddle(self):
        assert "DC125" not in codes(check_text(spec_text(PRUNED + PRUNED_LOSS % "{strategy: straddle_pruned}")))

    def test_passes_correct_pairs(self):
        text = spec_text(PRUNED + PRUNED_LOSS % "{strategy: explicit, pairs: [[13, 13], [16, 14], [20, 18]]}")
        assert "DC125" not in codes(check_text(text))


class TestDC126HiddenSize:
    def test_fails(self):
        text = spec_text(FEATURE.replace("student: {model: tiny-teacher}", ""))
        d = find(check_text(text), "DC126")
        assert where(d) == at(text, "student:", "model:", "tiny-student")

    def test_passes(self):
        assert "DC126" not in codes(check_text(feature()))


class TestDC127Structure:
    """Both targets: the distillc runtime builds gemma2/gemma3's interleaving too (MLA: DC100)."""

    def test_fails_gemma2(self):
        text = spec_text(
            "teacher: {model: gemma2-27b}\nstudent: {model: gemma2-9b, }\ndata: {tokenizer: /t.model}\n"
            + "loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}, beta: 1.0, layers: {strategy: evenly_spaced, count: 4}}"
        )
        hits = [d for d in check_text(text, target="maxtext").diagnostics if d.code == "DC127"]
        assert [d.path for d in hits] == [("teacher", "model"), ("student", "model")]
        assert where(hits[0]) == at(text, "teacher:", "gemma2-27b")

    def test_fails_mla(self):
        text = spec_text(
            "teacher: {model: deepseek3-671b}\nstudent: {model: deepseek3-671b, pruned_layers: [30]}\n"
            "data: {tokenizer: /t.model}\n" + PRUNED_LOSS % "{strategy: straddle_pruned}"
        )
        assert "DC127" in codes(check_text(text, target="maxtext"))

    def test_passes_self_distillation_of_the_same_model(self):
        text = spec_text(
            "teacher: {model: gemma2-9b}\nstudent: {model: gemma2-9b}\ndata: {tokenizer: /t.model}\n"
            + PRUNED_LOSS % "{strategy: evenly_spaced, count: 4}"
        )
        assert "DC127" not in codes(check_text(text, target="maxtext"))

    def test_distillc_target_warns_too_now_that_it_builds_gemma2(self):
        text = spec_text(
            "teacher: {model: gemma2-27b}\nstudent: {model: gemma2-9b, }\ndata: {tokenizer: /t.model}\n"
            + "loss: {alpha: {start: 0.9, end: 0.5, schedule: cosine}, beta: 1.0, layers: {strategy: evenly_spaced, count: 4}}"
        )
        found = codes(check_text(text))
        assert found.count("DC127") == 2 and "DC100" not in found

    def test_passes(self):
        assert "DC127" not in codes(check_text(feature(), target="maxtext"))


class TestDC128BetaMagnitude:
    def test_fails_cosine_too_high(self):
        text = feature("loss: {beta: {start: 5.0, end: 0.1, schedule: cosine}}")
        d = find(check_text(text), "DC128")
        assert where(d) == at(text, "beta:", "start:", "5.0")

    def test_fails_l2_like_cosine(self):
        text = feature("loss: {feature_loss: l2, beta: 1.0}")
        d = find(check_text(text), "DC128")
        assert where(d) == at(text, "beta:", "1.0")

    def test_passes_guide_l2_variant(self):
        # the guide's L2 row: 0.05 -> 0.005 cosine (the end may decay below the range)
        assert "DC128" not in codes(check_text(feature("loss: {feature_loss: l2, beta: {start: 0.05, end: 0.005, schedule: cosine}}")))

    def test_passes_ramp_on_from_tiny_start(self):
        assert "DC128" not in codes(check_text(feature("loss: {beta: {start: 1.0e-6, end: 1.0, schedule: linear}}")))


class TestDC129LayersWithoutBeta:
    def test_fails(self):
        text = spec_text("loss: {layers: {strategy: first_n, count: 1}, feature_loss: l2}")
        hits = [d for d in check_text(text).diagnostics if d.code == "DC129"]
        assert [d.path for d in hits] == [("loss", "layers"), ("loss", "feature_loss")]
        assert where(hits[0]) == at(text, "loss:", "layers:")

    def test_passes(self):
        assert "DC129" not in codes(check_text(feature()))
