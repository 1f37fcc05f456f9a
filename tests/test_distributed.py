"""Multi-device and multi-process runs give the losses of the single-device run.

- two processes on localhost joined by `jax.distributed` (coordinator on a free port, one CPU
  device each, mesh data=2): every process reads its own documents (data/pipeline.py: the order
  is deterministic per process count, so the batches differ from the 1-process run's), the step
  reduces (sum, count) pairs across both, process 0 logs; the logged steps are the 1-process run's
  and the first loss (same initial weights, other rows of the same corpus) is close to its;
- one process with 8 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), meshes
  data=8 and data=2 x fsdp=2 x tensor=2 (parameters sharded too): same losses again.
Equality is to float32 reduction-order tolerance (the sums are split differently over devices).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from distillc.runtime.train.distributed import Coordinator, MeshError, coordinator_from_env
from distillc.runtime.train.metrics import read_jsonl

from tests.conftest import xla_env
from tests.runtime_configs import make_config

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12
KEYS = ("total_loss", "soft_loss", "hard_loss", "teacher_ce", "kl_T1", "grad_norm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, name: str, mesh) -> Path:
    cfg = make_config(tmp_path / name, name="dist", alpha=0.5, temperature=2.0, steps=STEPS, batch=8,
                      checkpoint_every=6, log_every=1, mesh=mesh, eval_batches=3)
    path = tmp_path / f"{name}.json"
    path.write_text(cfg.model_dump_json())
    return path


def _cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distillc.runtime.main", "--config", str(path), "--no-progress", *extra]


def _records(run_dir: Path) -> dict[tuple[str, int], dict]:
    return {(r["split"], r["step"]): r for r in read_jsonl(run_dir / "metrics.jsonl")}


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, w in want.items():
        for k in KEYS:
            if k in w:
                assert got[key][k] == pytest.approx(w[k], rel=2e-5, abs=2e-6), (key, k)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("single")
    p = subprocess.run(_cmd(_config(tmp, "one", (1, 1, 1))), cwd=ROOT, env=xla_env(), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return _records(tmp / "one")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, single):
    path = _config(tmp_path, "two", (2, 1, 1))
    port = _free_port()
    procs = [subprocess.Popen(_cmd(path, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i)), cwd=ROOT, env=xla_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert "trained to step" in outs[0][0] and "trained to step" not in outs[1][0]  # process 0 reports
    got = _records(tmp_path / "two")
    assert set(got) == set(single)
    first = ("train", 1)
    assert got[first]["total_loss"] == pytest.approx(single[first]["total_loss"], rel=0.05)
    assert (tmp_path / "two" / "checkpoints" / str(STEPS)).is_dir()
    assert (tmp_path / "two" / "manifest.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)], ids=["data8", "data2-fsdp2-tensor2"])
def test_eight_devices_match_one(tmp_path, single, mesh):
    path = _config(tmp_path, "eight", mesh)
    p = subprocess.run(_cmd(path), cwd=ROOT, env=xla_env(8), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    _assert_same(_records(tmp_path / "eight"), single)
    if mesh == (2, 2, 2):
        # resume onto sharded parameters: drop the final checkpoint, rerun from step 6
        shutil.rmtree(tmp_path / "eight" / "checkpoints" / str(STEPS))
        p = subprocess.run(_cmd(path), cwd=ROOT, env=xla_env(8), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        assert "resumed from step 6" in p.stdout
        _assert_same(_records(tmp_path / "eight"), single)  # the rerun's records (steps 7..12) replace the first


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(tmp_path):
    p = subprocess.run(_cmd(_config(tmp_path, "bad", (4, 1, 1))), cwd=ROOT, env=xla_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "JAX sees 1" in p.stderr and "Traceback" not in p.stderr


class TestCoordinatorEnv:
    def test_none_without_the_variable(self):
        assert coordinator_from_env({}) is None

    def test_gpu_style_environment(self):
        env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2", "JAX_COORDINATOR_PORT": "1234", "NNODES": "4", "NODE_RANK": "3"}
        assert coordinator_from_env(env) == Coordinator("10.0.0.2:1234", 4, 3)

    def test_explicit_process_variables(self):
        env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
        assert coordinator_from_env(env) == Coordinator("h:1", 2, 0)

    def test_address_without_counts_is_an_error(self):
        with pytest.raises(MeshError, match="process count"):
            coordinator_from_env({"JAX_COORDINATOR_ADDRESS": "h:1"})
