"""Metric reduction (sum(sums) / sum(counts)), perplexity from reduced CE, and the sinks."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from distillc.runtime.train.metrics import TAGS, MetricsWriter, Window, read_jsonl, reduce_pairs, scan_jsonl


def test_window_weights_by_count_not_by_step():
    w = Window()
    w.add({"hard_loss": (10.0, 10.0)})  # mean 1.0 over 10 tokens
    w.add({"hard_loss": (3.0 * 30, 30.0)})  # mean 3.0 over 30 tokens
    out = w.reduce()
    assert out["hard_loss"] == pytest.approx((10 + 90) / 40)  # 2.5, not the mean of means 2.0
    assert out["student_perplexity"] == pytest.approx(math.exp(2.5))  # exp of the reduced CE


def test_devices_hosts_and_windows_reduce_alike():
    rng = np.random.default_rng(0)
    per_device = [{"kl_T1": (float(rng.uniform(0, 50)), float(rng.integers(1, 20)))} for _ in range(8)]
    flat = reduce_pairs(per_device)
    # hosts of 4 devices each, reduced per host then across hosts (pairs, not means)
    hosts = [{"kl_T1": (sum(d["kl_T1"][0] for d in grp), sum(d["kl_T1"][1] for d in grp))}
             for grp in (per_device[:4], per_device[4:])]
    assert reduce_pairs(hosts)["kl_T1"] == pytest.approx(flat["kl_T1"], rel=1e-12)
    expected = sum(d["kl_T1"][0] for d in per_device) / sum(d["kl_T1"][1] for d in per_device)
    assert flat["kl_T1"] == pytest.approx(expected, rel=1e-12)


def test_empty_count_is_nan_not_an_error():
    w = Window()
    w.add({"feature_loss": (0.0, 0.0)})
    assert math.isnan(w.reduce()["feature_loss"])


def _tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Reads tensorboard event files (TFRecord framing + Event protos) without tensorboard."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            rec = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            ev = event_pb2.Event.FromString(rec)
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_writer_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path / "m.jsonl"), str(tmp_path / "tb"))
    w.write(10, "train", {"soft_loss": 1.5, "hard_loss": 2.0, "alpha": 0.9, "tokens_per_sec": 123.0})
    w.write(10, "eval", {"hard_loss": 2.5, "bad": float("nan")})
    w.close()
    recs = read_jsonl(tmp_path / "m.jsonl")
    assert [r["split"] for r in recs] == ["train", "eval"]
    assert recs[0]["soft_loss"] == 1.5 and recs[1]["bad"] == "nan"
    scalars = _tb_scalars(tmp_path / "tb")
    assert scalars[TAGS["soft_loss"]] == [(10, 1.5)]
    assert scalars["distill/alpha"] == [(10, pytest.approx(0.9))]
    assert scalars["eval/hard_loss"] == [(10, 2.5)]
    assert "eval/bad" not in scalars and "other/bad" not in scalars  # non-finite values stay out of TB


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(str(tmp_path / "m.jsonl"), str(tmp_path / "tb"), enabled=False)
    w.write(1, "train", {"hard_loss": 1.0})
    w.close()
    assert not (tmp_path / "m.jsonl").exists() and not (tmp_path / "tb").exists()


def test_read_jsonl_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "hard_lo')
    assert read_jsonl(p) == [{"step": 1}]


def test_a_torn_line_with_junk_is_reported_and_repaired_before_appending(tmp_path, capsys):
    """A half line plus bytes that are not UTF-8 (a writer killed mid-line, then garbage): the
    reader skips and names it; a resumed writer drops it before appending, so the file stays
    readable and every step appears once."""
    p = tmp_path / "m.jsonl"
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) for s in (1, 2, 3)]
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"step": 4, "spl\xff\xfe\x00junk')
    assert scan_jsonl(p) == ([json.loads(x) for x in lines], [4])
    w = MetricsWriter(str(p), str(tmp_path / "tb"), keep_through=3)
    w.write(4, "train", {"loss": 0.5})
    w.close()
    assert "dropped 1 torn line(s) (line 4)" in capsys.readouterr().err
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3, 4] and scan_jsonl(p)[1] == []
