"""Packing efficiency (real tokens / row slots) per logging window, in metrics.jsonl and the progress line."""

from __future__ import annotations

import json

from distillc.runtime.train import metrics as metrics_lib
from distillc.runtime.train.hooks import LoggingHook


def test_logging_window_reports_packing_efficiency(tmp_path, capsys):
    writer = metrics_lib.MetricsWriter(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
    progress = metrics_lib.Progress("run", 4, enabled=True, bar=False)
    hook = LoggingHook(2, writer, progress, tokens_per_step=64, model_flops_per_token=1.0, peak_flops=None)
    for step, real in ((1, 64.0), (2, 48.0), (3, 32.0), (4, 32.0)):
        hook.record(step, {"total_loss": (real * 2.0, real), "tokens": (real, 1.0)})
        if step % 2 == 0:
            hook.run(step)
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["packing_efficiency"] for r in rows] == [56 / 64, 0.5]  # per window, not cumulative
    out = capsys.readouterr().out
    assert "pack 87.5%" in out and "pack 50.0%" in out
    assert metrics_lib.TAGS["packing_efficiency"] == "data/packing_efficiency"
