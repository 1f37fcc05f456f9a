"""DC18x: the checkpoints the runtime loads. One class per rule."""

from __future__ import annotations

from tests.conftest import at, check_text, codes, find, spec_text, where


class TestDC180StudentCheckpointMissing:
    def test_fails_on_a_missing_local_path_at_the_value(self, tmp_path):
        missing = tmp_path / "no-such-student"
        text = spec_text(f"student:\n  checkpoint: {missing}\n")
        d = find(check_text(text), "DC180")
        assert where(d) == at(text, "student:", "checkpoint:", str(missing))
        assert d.path == ("student", "checkpoint") and d.is_error

    def test_passes_an_existing_local_path(self, tmp_path):
        text = spec_text(f"student:\n  checkpoint: {tmp_path}\n")
        assert "DC180" not in codes(check_text(text))

    def test_passes_remote_paths_unchecked(self):
        text = spec_text("student:\n  checkpoint: gs://bucket/student/0/items\n")
        assert "DC180" not in codes(check_text(text))
