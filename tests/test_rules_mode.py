"""DC11x: online vs offline mode and the offline section. One class per rule."""

from __future__ import annotations

from tests.conftest import at, check_text, codes, find, spec_text, where

OFFLINE = "mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk}\n"


class TestDC110TeacherCheckpoint:
    def test_fails_online(self):
        text = spec_text("teacher: {checkpoint: null}")
        d = find(check_text(text), "DC110")
        assert where(d) == at(text, "teacher:")

    def test_fails_offline_too(self):
        text = spec_text(OFFLINE + "teacher: {checkpoint: '  '}")
        assert "DC110" in codes(check_text(text))

    def test_passes(self):
        assert "DC110" not in codes(check_text(spec_text("")))


class TestDC111OfflineNoFeatures:
    def test_fails(self):
        text = spec_text(OFFLINE + "loss: {beta: {start: 1.0, end: 0.1, schedule: cosine}}")
        d = find(check_text(text), "DC111")
        assert where(d) == at(text, "beta:", "start:")  # the whole schedule

    def test_fails_bare_number(self):
        text = spec_text(OFFLINE + "loss: {beta: 0.5}")
        assert where(find(check_text(text), "DC111")) == at(text, "beta:", "0.5")

    def test_passes(self):
        assert "DC111" not in codes(check_text(spec_text(OFFLINE + "loss: {beta: 0}")))

    def test_online_feature_loss_is_not_this_rule(self):
        assert "DC111" not in codes(check_text(spec_text("loss: {beta: 1.0}")))


class TestDC112OfflineTopK:
    def test_fails_without_section(self):
        text = spec_text("mode: offline")
        d = find(check_text(text), "DC112")
        assert where(d) == at(text, "mode:")

    def test_fails_in_section(self):
        text = spec_text("mode: offline\noffline: {data_dir: /tmp/topk}")
        d = find(check_text(text), "DC112")
        assert where(d) == at(text, "\noffline:", "offline:")

    def test_passes(self):
        assert "DC112" not in codes(check_text(spec_text(OFFLINE)))


class TestDC113OfflineDataDir:
    def test_fails(self):
        text = spec_text("mode: offline\noffline: {top_k: 64}")
        d = find(check_text(text), "DC113")
        assert where(d) == at(text, "\noffline:", "offline:")

    def test_passes(self):
        assert "DC113" not in codes(check_text(spec_text(OFFLINE)))


class TestDC114OfflineSectionIgnored:
    def test_fails(self):
        text = spec_text("offline: {top_k: 64, data_dir: /tmp/topk}")
        d = find(check_text(text), "DC114")
        assert where(d) == at(text, "\noffline:", "offline:")

    def test_passes(self):
        assert "DC114" not in codes(check_text(spec_text(OFFLINE)))


class TestDC115TopKVocab:
    def test_fails(self):
        text = spec_text("mode: offline\noffline: {top_k: 257, data_dir: /tmp/topk}")
        d = find(check_text(text), "DC115")
        assert where(d) == at(text, "top_k:", "257")

    def test_padding_rows_are_not_tokens(self):
        # gemma2-9b: 256128 rows, 256000 real tokens
        text = spec_text(
            "mode: offline\noffline: {top_k: 256100, data_dir: /tmp/topk}\n"
            "teacher: {model: gemma2-9b}\nstudent: {model: gemma2-2b}\ndata: {tokenizer: /t.model}"
        )
        assert "DC115" in codes(check_text(text))

    def test_passes(self):
        assert "DC115" not in codes(check_text(spec_text("mode: offline\noffline: {top_k: 256, data_dir: /tmp/topk}")))


class TestDC116SamplingNumSamples:
    def test_fails(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, sampling: random}")
        d = find(check_text(text), "DC116")
        assert where(d) == at(text, "sampling:", "random")

    def test_passes(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, sampling: random, num_samples: 16}")
        assert "DC116" not in codes(check_text(text))


class TestDC117Renormalized:
    def test_fails(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, loss: renormalized}")
        d = find(check_text(text), "DC117")
        assert where(d) == at(text, "\noffline:", "loss:", "renormalized")

    def test_passes(self):
        assert "DC117" not in codes(check_text(spec_text(OFFLINE)))


class TestDC118NumSamplesIgnored:
    def test_fails(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, num_samples: 8}")
        d = find(check_text(text), "DC118")
        assert where(d) == at(text, "num_samples:")

    def test_passes(self):
        assert "DC118" not in codes(check_text(spec_text(OFFLINE)))


class TestDC119LossMatchesSampling:
    def test_fails_sampled_on_top_k(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, loss: sampled}")
        d = find(check_text(text), "DC119")
        assert where(d) == at(text, "\noffline:", "loss:", "sampled")

    def test_fails_tail_bucket_on_random(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, sampling: random, num_samples: 8}")
        assert "DC119" in codes(check_text(text))

    def test_passes(self):
        text = spec_text("mode: offline\noffline: {top_k: 64, data_dir: /tmp/topk, loss: sampled, sampling: random,"
                         " num_samples: 32}")
        assert "DC119" not in codes(check_text(text))
        assert "DC119" not in codes(check_text(spec_text(OFFLINE)))
