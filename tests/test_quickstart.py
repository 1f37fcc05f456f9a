"""The embedded default, reduced to fit the test budget: distillation beats the CE-only baseline.

specs/quickstart.yaml is compiled for --local (the real compiler, the real runtime config), then
shrunk: sequences of 32 bytes, the student trains 100 steps, the teacher 300 (the factor 3 instead
of the full run's 2, so the short-trained teacher is still clearly better than the student), with
the teacher checkpoint and every output in a temporary directory. run_local trains the teacher,
caches it, distills, trains the CE-only baseline and prints the table; the held-out numbers come
from local_report.json. Measured (2-core CPU): teacher 1.76, KD student 2.33, CE-only 2.44 nats/byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillc.runtime.config import RuntimeConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "quickstart.yaml"
STEPS, SEQ_LEN, TEACHER_FACTOR = 100, 32, 3


def compiled_quickstart() -> RuntimeConfig:
    from distillc.compiler.launch import compile_launch

    compiled = compile_launch(SPEC, cluster_name=None, local=True)
    assert compiled.ok, [d.message for d in compiled.diagnostics]
    (cfg,) = compiled.build.plan.configs
    return cfg


def reduced(cfg: RuntimeConfig, root: Path) -> RuntimeConfig:
    loss = cfg.loss.model_copy(update={k: getattr(cfg.loss, k).model_copy(update={"max_steps": STEPS})
                                       for k in ("alpha", "temperature", "beta")})
    run = root / "runs" / cfg.name
    return cfg.model_copy(update=dict(
        teacher=cfg.teacher.model_copy(update={"checkpoint": str(root / "cache" / "quickstart-teacher")}),
        loss=loss,
        data=cfg.data.model_copy(update={"seq_len": SEQ_LEN}),
        optimizer=cfg.optimizer.model_copy(update={"warmup_steps": STEPS // 20}),
        train=cfg.train.model_copy(update={"steps": STEPS, "checkpoint_every": STEPS, "log_every": 25}),
        output=cfg.output.model_copy(update=dict(run_dir=str(run), checkpoint_dir=str(run / "checkpoints"),
                                                 tensorboard_dir=str(run / "tensorboard"),
                                                 metrics_file=str(run / "metrics.jsonl"))),
    ))


def test_quickstart_kd_beats_ce_only(tmp_path, monkeypatch, capsys):
    from distillc.runtime.local import run_local

    monkeypatch.setenv("DISTILLC_CACHE", str(tmp_path / "cache"))
    cfg = reduced(compiled_quickstart(), tmp_path)
    assert cfg.loss.alpha.value(0) == 0.9 and cfg.loss.temperature.value(0) == 1.0  # the spec's recipe
    code = run_local([cfg], SPEC, teacher_steps_factor=TEACHER_FACTOR)
    out = capsys.readouterr().out
    assert code == 0
    assert "KD - CE-only" in out and "held-out CE (nats/byte)" in out
    report = json.loads((Path(cfg.output.run_dir) / "local_report.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    teacher, kd, ce = rows["teacher"], rows[f"KD student ({cfg.name})"], rows["CE-only student"]
    assert teacher["steps"] == TEACHER_FACTOR * STEPS and teacher["note"] == "trained now"
    assert kd["steps"] == ce["steps"] == STEPS
    # the teacher is clearly better than the CE-only student (else KD could not help) ...
    assert teacher["ce"] < ce["ce"] - 0.3
    # ... and distillation beats the CE-only baseline on held-out data
    assert kd["ce"] < ce["ce"] - 0.04, (kd["ce"], ce["ce"])
    assert 0.0 < kd["kl_t1"] < 2.0
    [(name, delta)] = report["comparisons"]
    assert delta == pytest.approx(kd["ce"] - ce["ce"])
    # the teacher was cached where the config says, and is loaded (not retrained) next time
    assert (tmp_path / "cache" / "quickstart-teacher" / "_CHECKPOINT_METADATA").exists()


def test_a_cached_teacher_is_announced_once_per_run(tmp_path, monkeypatch, capsys):
    """An offline spec's two stages both need the teacher: one line says where it came from."""
    from distillc.runtime.train import checkpoints
    from distillc.runtime import local
    from tests.runtime_configs import make_config

    monkeypatch.setattr(checkpoints, "is_checkpoint", lambda path: True)
    cfg = make_config(tmp_path / "run", teacher_checkpoint=str(tmp_path / "teacher"))
    report = local.LocalReport()
    assert [local.ensure_teacher(cfg, report, console=False) for _ in range(2)] == ["cached", "cached"]
    assert capsys.readouterr().out.count("using the cached checkpoint") == 1
