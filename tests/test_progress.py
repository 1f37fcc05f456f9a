"""Progress without a terminal, and metrics.jsonl on resume (issue 16).

When stdout is not a terminal (a log file, CI, `| tee`), the runtime prints one line per logging
window with the step, the losses, tokens/s and the ETA; a resumed run says so; and metrics.jsonl is
cut back to the restored step, so every step appears once however often a run was restarted.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from distillc.runtime.train.metrics import cut_back, read_jsonl

from tests.runtime_configs import make_config


def _write(path: Path, records: list[str]) -> None:
    path.write_text("".join(r + "\n" for r in records))


def test_cut_back_keeps_what_a_restart_at_step_n_will_not_write_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 2, "split": "train"}', '{"step": 4, "split": "train"}', '{"step": 4, "split": "eval"}',
             '{"step": 6, "split": "train"}', '{"step": 8, "split": "eval"}', '{"step": 9, "spl']  # torn last line
    _write(path, lines)
    assert cut_back(path, 4) == 2
    assert [(r["step"], r["split"]) for r in read_jsonl(path)] == [(2, "train"), (4, "train"), (4, "eval")]
    # a finished run that only re-evaluates writes its final evaluation again: the old one goes
    assert cut_back(path, 4, finished=True) == 1
    assert [(r["step"], r["split"]) for r in read_jsonl(path)] == [(2, "train"), (4, "train")]
    assert cut_back(tmp_path / "absent.jsonl", 3) == 0


@pytest.mark.slow
def test_resume_prints_progress_lines_and_no_step_is_logged_twice(tmp_path, capsys):
    from distillc.runtime.train.trainer import train

    cfg = make_config(tmp_path / "run", steps=8, checkpoint_every=4, log_every=2)
    train(cfg, console=True)  # console, but stdout is captured (not a terminal): plain lines
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " step " in line]
    assert len(lines) == 4 and lines[0].startswith("test step 2/8") and "ETA" in lines[0]
    assert "loss" in lines[0] and "tok/s" in lines[0]

    shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")  # killed after step 8 was logged, before its save
    result = train(cfg, console=False)
    out = capsys.readouterr().out
    assert result.resumed_from == 4 and "test: resumed from step 4" in out
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    counts = Counter((r["step"], r["split"]) for r in records)
    assert sorted(s for s, split in counts if split == "train") == [2, 4, 6, 8]
    assert all(n == 1 for n in counts.values()), counts

    again = train(cfg, console=False)  # finished: evaluated only, the final evaluation replaced
    assert again.resumed_from == 8 and "already trained: evaluating only" in capsys.readouterr().out
    counts = Counter((r["step"], r["split"]) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl"))
    assert all(n == 1 for n in counts.values()) and counts[(8, "eval")] == 1
