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
    assert not Path(lock_path(str(tmp_path))).exists()  # released
    assert _other_process_acquires(tmp_path).returncode == 0  # free again


def test_nested_in_one_process_is_a_no_op(tmp_path):
    with RunLock(str(tmp_path)):
        with RunLock(str(tmp_path)):
            pass
        assert Path(lock_path(str(tmp_path))).exists()  # the inner release left the outer lock in place


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(lock_path(str(tmp_path))).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0,
                                                  "heartbeat": time.time()}))
    with RunLock(str(tmp_path)):
        assert json.loads(Path(lock_path(str(tmp_path))).read_text())["pid"] != dead.pid
    assert f"process {dead.pid} is not running" in capsys.readouterr().err


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_is(tmp_path):
    lock = Path(lock_path(str(tmp_path)))
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


# ---------------------------------------------------------------- gs:// leases

class _FakeBlob:
    def __init__(self, bucket: "_FakeBucket", name: str):
        self.bucket, self.name = bucket, name
        self.generation = bucket.objects.get(name, (None, None))[1]

    def upload_from_string(self, data, content_type=None, if_generation_match=None):
        from google.api_core.exceptions import PreconditionFailed

        with self.bucket.mutex:
            current = self.bucket.objects.get(self.name, (None, 0))[1]
            if if_generation_match is not None and current != if_generation_match:
                raise PreconditionFailed(f"generation {current}, not {if_generation_match}")
            self.bucket.generation += 1
            self.bucket.objects[self.name] = (bytes(data), self.bucket.generation)
            self.generation = self.bucket.generation

    def download_as_bytes(self, if_generation_match=None):
        from google.api_core.exceptions import PreconditionFailed

        with self.bucket.mutex:
            data, gen = self.bucket.objects[self.name]
            if if_generation_match is not None and gen != if_generation_match:
                raise PreconditionFailed("moved on")
            return data

    def delete(self, if_generation_match=None):
        from google.api_core.exceptions import NotFound, PreconditionFailed

        with self.bucket.mutex:
            if self.name not in self.bucket.objects:
                raise NotFound(self.name)
            if if_generation_match is not None and self.bucket.objects[self.name][1] != if_generation_match:
                raise PreconditionFailed("moved on")
            del self.bucket.objects[self.name]


class _FakeBucket:
    """Cloud Storage's semantics that the lease relies on: every object write and delete checked
    against a generation precondition atomically (0 = the object must not exist)."""

    def __init__(self):
        import threading

        self.objects: dict[str, tuple[bytes, int]] = {}
        self.generation = 0
        self.mutex = threading.Lock()

    def blob(self, name):
        return _FakeBlob(self, name)

    def get_blob(self, name):
        return _FakeBlob(self, name) if name in self.objects else None


def test_gs_lock_path_is_beside_the_run_directory():
    assert lock_path("gs://bucket/runs/exp1") == "gs://bucket/runs/.exp1.distillc-lock"
    assert lock_path("gs://bucket/runs/exp1/") == "gs://bucket/runs/.exp1.distillc-lock"


def test_gs_lease_refuses_a_second_writer_and_is_released(monkeypatch):
    from distillc.runtime.train.run_lock import GcsLease

    bucket = _FakeBucket()
    url = "gs://bucket/runs/exp1"

    def store():
        return GcsLease(lock_path(url), bucket=bucket)

    with RunLock(url, store=store()):
        assert list(bucket.objects) == ["runs/.exp1.distillc-lock"]
        holder = json.loads(bucket.objects["runs/.exp1.distillc-lock"][0])
        monkeypatch.setattr(socket, "gethostname", lambda: "another-host")  # a second process, elsewhere
        with pytest.raises(LockHeld, match=f"in use by process {holder['pid']} on {holder['host']}"):
            RunLock("gs://bucket/runs/second-process", store=store()).acquire()  # (named apart: one process here)
    assert bucket.objects == {}  # released: its own generation deleted


def test_gs_stale_lease_is_taken_over_by_exactly_one_of_two_racers(capsys):
    from distillc.runtime.train.run_lock import GcsLease

    bucket = _FakeBucket()
    name = "runs/.exp1.distillc-lock"
    stale = json.dumps({"host": "gone", "pid": 7, "started": 0, "heartbeat": time.time() - 2 * STALE_S}).encode()
    bucket.blob(name).upload_from_string(stale, if_generation_match=0)
    a, b = (GcsLease("gs://bucket/" + name, bucket=bucket) for _ in range(2))
    _, token = a.read()
    assert b.read()[1] == token
    won = [a.replace(b"a", token), b.replace(b"b", token)]
    assert won[0] is not None and won[1] is None and bucket.objects[name][0] == b"a"
    bucket.objects.clear()
    bucket.blob(name).upload_from_string(stale, if_generation_match=0)
    with RunLock("gs://bucket/runs/exp1", store=GcsLease("gs://bucket/" + name, bucket=bucket)):
        assert json.loads(bucket.objects[name][0])["pid"] != 7
    assert "took over the lock of gs://bucket/runs/exp1: its heartbeat is" in capsys.readouterr().err


def test_file_lease_takeover_race_has_one_winner(tmp_path):
    from distillc.runtime.train.run_lock import FileLease

    path = str(tmp_path / ".run.distillc-lock")
    Path(path).write_bytes(b"stale")
    a, b = FileLease(path), FileLease(path)
    token = a.read()[1]
    assert b.read()[1] == token
    assert a.replace(b"a", token) is not None and b.replace(b"b", token) is None
    assert Path(path).read_bytes() == b"a" and sorted(p.name for p in tmp_path.iterdir()) == [".run.distillc-lock"]
