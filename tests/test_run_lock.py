"""One writer per run directory: a second process is refused (exit 2, naming the holder); a lock
whose holder is gone is taken over; the lock is released when the run ends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillc.runtime.train.run_lock import STALE_S, LockHeld, RunLock, lock_path

from tests.runtime_configs import make_config

ROOT = Path(__file__).resolve().parent.parent


def _other_process_acquires(run_dir: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from distillc.runtime.train.run_lock import RunLock, LockHeld\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\nexcept LockHeld as e:\n    print(e); sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=60)


def test_a_second_process_is_refused_and_told_who_holds_it(tmp_path):
    with RunLock(str(tmp_path)):
        p = _other_process_acquires(tmp_path)
        assert p.returncode == 2
        assert f"in use by process {__import__('os').getpid()} on {socket.gethostname()}" in p.stdout
    assert not lock_path(str(tmp_path)).exists()  # released
    assert _other_process_acquires(tmp_path).returncode == 0  # free again


def test_nested_in_one_process_is_a_no_op(tmp_path):
    with RunLock(str(tmp_path)):
        with RunLock(str(tmp_path)):
            pass
        assert lock_path(str(tmp_path)).exists()  # the inner release left the outer lock in place


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(str(tmp_path)).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0,
                                                  "heartbeat": time.time()}))
    with RunLock(str(tmp_path)):
        assert json.loads(lock_path(str(tmp_path)).read_text())["pid"] != dead.pid
    assert f"process {dead.pid} is not running" in capsys.readouterr().err


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_is(tmp_path):
    lock = lock_path(str(tmp_path))
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time()}))
    with pytest.raises(LockHeld, match="in use by process 1 on elsewhere"):
        RunLock(str(tmp_path)).acquire()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - 2 * STALE_S}))
    with RunLock(str(tmp_path)):
        pass


def test_main_refuses_a_second_writer_before_touching_the_run(tmp_path):
    cfg = make_config(tmp_path / "run", steps=2)
    path = tmp_path / "run.json"
    path.write_text(cfg.model_dump_json())
    with RunLock(cfg.output.run_dir):
        p = subprocess.run([sys.executable, "-m", "distillc.runtime.main", "--config", str(path), "--no-progress"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "is in use by process" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()
