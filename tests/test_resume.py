"""kill -9 in the middle of training, restart: the losses after the resume equal an uninterrupted run.

Three subprocesses run `python -m distillc.runtime.main` on the same config (distillation from a
frozen random teacher, every step logged): an uninterrupted run; a run killed with SIGKILL once its
first checkpoint is on disk; and the restart of that run, which resumes from the latest checkpoint
(params, optimizer state, step and data iterator position). Every step logged after the resume
must equal the uninterrupted run's (bitwise here: same program, same inputs, one CPU device).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillc.runtime.train.metrics import read_jsonl

from tests.runtime_configs import make_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
STEPS, EVERY = 120, 20
KEYS = ("total_loss", "soft_loss", "hard_loss", "kl_T1", "grad_norm", "learning_rate")


def _start(config_path: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distillc.runtime.main", "--config", str(config_path),
                             "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _write(tmp_path: Path, name: str, prepared: bool = False) -> tuple[Path, Path]:
    cfg = make_config(tmp_path / name, name="resume", alpha=0.5, temperature=2.0, steps=STEPS,
                      checkpoint_every=EVERY, log_every=1, lr=3e-3, warmup=10)
    if prepared:  # the same data read from `distillc data prepare`'s shards (prepared once per test)
        from distillc.runtime.data.prepared import prepare

        if not (tmp_path / "prepared" / "manifest.json").exists():
            prepare(cfg.data, str(tmp_path / "prepared"), rows_per_shard=2000, log=lambda _: None)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared": str(tmp_path / "prepared")})})
    path = tmp_path / f"{name}.json"
    path.write_text(cfg.model_dump_json())
    return path, tmp_path / name


def _by_step(run_dir: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if r["split"] == "train":
            out.setdefault(r["step"], []).append(r)
    return out


@pytest.mark.parametrize("prepared", [False, True], ids=["streaming", "prepared"])
def test_losses_after_kill_and_resume_equal_an_uninterrupted_run(tmp_path, prepared):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    ref_cfg, ref_dir = _write(tmp_path, "uninterrupted", prepared)
    ref = _start(ref_cfg, env)
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    expected = _by_step(ref_dir)
    assert sorted(expected) == list(range(1, STEPS + 1))

    cfg, run_dir = _write(tmp_path, "killed", prepared)
    proc = _start(cfg, env)
    first_ckpt = run_dir / "checkpoints" / str(EVERY)  # renamed into place only when complete
    deadline = time.time() + 600
    while not first_ckpt.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _by_step(run_dir)
    last_logged = max(before)
    assert EVERY <= last_logged < STEPS, "the kill must land in the middle of training"

    resumed = _start(cfg, env)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resumed from step" in out
    after = _by_step(run_dir)
    resumed_from = int(re.search(r"resumed from step (\d+)", out).group(1))
    assert EVERY <= resumed_from < STEPS and resumed_from % EVERY == 0
    for step in range(1, STEPS + 1):
        # steps between the checkpoint and the kill ran twice, but metrics.jsonl was cut back to the
        # checkpoint on resume: each step is logged once, and equals the reference
        (rec,) = after[step]
        for k in KEYS:
            assert rec[k] == expected[step][0][k], (step, k, rec[k], expected[step][0][k])
        assert 0.99 < rec["packing_efficiency"] <= 1.0  # packed rows: (nearly) every slot a real token
