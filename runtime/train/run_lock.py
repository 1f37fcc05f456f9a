"""One writer per run directory: a lock file that a second process on the same run refuses.

Two processes training into one run directory interleave their checkpoints and metrics (a crash at
the first save, or every step twice in metrics.jsonl). Process 0 of a run holds
a lock file created exclusively (O_CREAT | O_EXCL: of two processes started together
exactly one gets it; a hidden file beside the run directory, `<parent>/.<name>.distillc-lock`, so
that `--restart` can move an old run aside under the lock), holding its host, PID, start time and a heartbeat that a thread refreshes
while it runs. A second process exits 2 naming the holder. A lock whose holder is gone (its PID is
dead on this host, or its heartbeat is older than STALE_S from another host) is taken over, with a
message. The other processes of a multi-process run share process 0's lock.

Local and mounted filesystems only: a gs:// run directory is not locked yet (an object-store
lease with a generation precondition is the way; the runtime says so when it starts such a run).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

LOCK_SUFFIX = ".distillc-lock"


def lock_path(run_dir: str) -> Path:
    """The lock of a run directory: beside it, so it stays put when the directory is renamed."""
    d = Path(run_dir).absolute()
    return d.parent / f".{d.name}{LOCK_SUFFIX}"
HEARTBEAT_S = 15.0
STALE_S = 120.0  # a heartbeat this old, from another host, means its holder is gone


_HELD: set[Path] = set()  # the lock paths this process holds (a nested RunLock on one is a no-op)


class LockHeld(RuntimeError):
    """Another live process is writing this run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(holder: dict, now: float) -> Optional[str]:
    """Why the recorded holder is gone, or None when it may still be running."""
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if isinstance(pid, int) and not _alive(pid):
            return f"its process {pid} is not running"
        return None
    beat = holder.get("heartbeat")
    if isinstance(beat, (int, float)) and now - beat > STALE_S:
        return f"its heartbeat is {now - beat:.0f} s old"
    return None


class RunLock:
    """`with RunLock(run_dir): ...` holds the run directory's lock for the block."""

    def __init__(self, run_dir: str, *, enabled: bool = True):
        self.enabled = enabled and "://" not in run_dir
        self.remote = "://" in run_dir
        self.run_dir = run_dir
        self.path = lock_path(run_dir)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def _write(self, fd: int) -> None:
        os.write(fd, (json.dumps(dict(self.record, heartbeat=time.time())) + "\n").encode())

    def _refresh(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        while not self._stop.wait(HEARTBEAT_S):
            try:
                tmp.write_text(json.dumps(dict(self.record, heartbeat=time.time())) + "\n")
                os.replace(tmp, self.path)
            except OSError:  # the directory went away: the run will report that itself
                return

    def acquire(self) -> None:
        if self.remote:
            print(f"note: {self.run_dir} is not locked against a second writer (object stores are not yet)",
                  file=sys.stderr, flush=True)
        if not self.enabled or self.path in _HELD:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # a stale lock is removed once, then created again exclusively
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    holder = {}
                why = _stale(holder, time.time()) if isinstance(holder, dict) and holder else "it is unreadable"
                if why is None:
                    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                    raise LockHeld(f"run directory {self.run_dir} is in use by process {holder.get('pid')} on "
                                   f"{holder.get('host')} (since {started}); wait for it to finish, or stop it, "
                                   f"or use another name or output_dir") from None
                print(f"note: taking over the lock of {self.run_dir}: {why}", file=sys.stderr, flush=True)
                self.path.unlink(missing_ok=True)
                continue
            try:
                self._write(fd)
            finally:
                os.close(fd)
            self._thread = threading.Thread(target=self._refresh, name="distillc-run-lock", daemon=True)
            self._thread.start()
            _HELD.add(self.path)
            return
        raise LockHeld(f"run directory {self.run_dir}: another process took its lock at the same moment")

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        _HELD.discard(self.path)
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()
