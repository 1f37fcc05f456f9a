"""One writer per run directory: a lock that a second process on the same run refuses.

Two processes training into one run directory interleave their checkpoints and metrics (a crash at
the first save, or every step twice in metrics.jsonl). Process 0 of a run holds a lock beside the
run directory, `<parent>/.<name>.distillc-lock` (beside it, so that `--restart` can move an old run
aside under the lock), holding its host, PID, start time and a heartbeat that a thread refreshes
while it runs. A second process exits 2 naming the holder. A lock whose holder is gone (its PID is
dead on this host, or its heartbeat is older than STALE_S from another host) is taken over, with a
message. The other processes of a multi-process run share process 0's lock.

Where the lock lives decides how "only one gets it" is enforced (`LeaseStore`):
- a local or mounted directory: a file created with O_CREAT | O_EXCL;
- gs://: an object written with a generation precondition (if_generation_match=0 creates it only
  when absent; a heartbeat or a takeover rewrites it only at the generation it read; release
  deletes only its own generation), so of two processes racing, exactly one wins each step.
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
from typing import Any, Optional, Protocol

LOCK_SUFFIX = ".distillc-lock"
HEARTBEAT_S = 15.0
STALE_S = 120.0  # a heartbeat this old, from another host, means its holder is gone


def lock_path(run_dir: str) -> str:
    """The lock of a run directory: beside it, so it stays put when the directory is renamed."""
    if "://" in run_dir:
        parent, _, name = run_dir.rstrip("/").rpartition("/")
        return f"{parent}/.{name}{LOCK_SUFFIX}"
    d = Path(run_dir).absolute()
    return str(d.parent / f".{d.name}{LOCK_SUFFIX}")


class LeaseStore(Protocol):
    """One lock object with compare-and-swap semantics; `token` identifies a version of it."""

    where: str

    def create(self, data: bytes) -> Optional[Any]:
        """Writes the lock if it does not exist: its token, or None when it exists."""

    def read(self) -> Optional[tuple[bytes, Any]]:
        """The lock's content and token, or None when there is none."""

    def replace(self, data: bytes, token: Any) -> Optional[Any]:
        """Takes over the lock if it is still at `token` (of racing takers exactly one wins): the new
        token, or None when it moved on."""

    def refresh(self, data: bytes, token: Any) -> Optional[Any]:
        """The holder's heartbeat: like `replace`, where only a takeover can race it."""

    def delete(self, token: Any) -> None:
        """Removes the lock if it is still at `token`."""


class FileLease:
    """A lock file on a local or mounted filesystem (O_EXCL create; the token is its content)."""

    def __init__(self, path: str):
        self.where = path
        self.path = Path(path)

    def create(self, data: bytes) -> Optional[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return data

    def read(self) -> Optional[tuple[bytes, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, token: Any) -> Optional[Any]:
        # rename is atomic: of processes taking over one stale lock, one moves it aside, the others
        # find nothing there; then the winner creates the new lock exclusively
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.old")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        if aside.read_bytes() != token:  # rewritten since it was read: put it back
            os.replace(aside, self.path)
            return None
        aside.unlink()
        return self.create(data)

    def refresh(self, data: bytes, token: Any) -> Optional[Any]:
        current = self.read()
        if current is None or current[1] != token:
            return None
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        return data

    def delete(self, token: Any) -> None:
        current = self.read()
        if current is not None and current[1] == token:
            self.path.unlink(missing_ok=True)


class GcsLease:
    """A lock object in Google Cloud Storage; the token is its generation, and every write carries
    a generation precondition (0 = only if absent), which the service enforces atomically."""

    def __init__(self, url: str, bucket: Any = None):
        from google.api_core import exceptions

        self.where = url
        bucket_name, _, self.name = url.removeprefix("gs://").partition("/")
        if bucket is None:
            from google.cloud import storage

            bucket = storage.Client().bucket(bucket_name)
        self._bucket = bucket
        self._conflict = (exceptions.PreconditionFailed, exceptions.NotFound)

    def _put(self, data: bytes, generation: int) -> Optional[Any]:
        blob = self._bucket.blob(self.name)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
        except self._conflict:
            return None
        return blob.generation

    def create(self, data: bytes) -> Optional[Any]:
        return self._put(data, 0)

    def read(self) -> Optional[tuple[bytes, Any]]:
        blob = self._bucket.get_blob(self.name)
        if blob is None:
            return None
        try:
            return blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
        except self._conflict:  # rewritten between the two calls: read again next time
            return self.read()

    def replace(self, data: bytes, token: Any) -> Optional[Any]:
        return self._put(data, token)

    def refresh(self, data: bytes, token: Any) -> Optional[Any]:
        return self._put(data, token)

    def delete(self, token: Any) -> None:
        try:
            self._bucket.blob(self.name).delete(if_generation_match=token)
        except self._conflict:
            pass


def lease_store(run_dir: str) -> LeaseStore:
    """The lock store for a run directory: gs:// -> GcsLease, a local path -> FileLease."""
    path = lock_path(run_dir)
    if path.startswith("gs://"):
        try:
            return GcsLease(path)
        except Exception as e:  # no credentials, no project: google.auth's errors
            raise LockUnsupported(f"cannot lock {run_dir} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                  "check the credentials for that bucket") from None
    if "://" in path:
        raise LockUnsupported(f"run directory {run_dir}: distillc locks local, mounted and gs:// directories, "
                              f"not {path.split('://')[0]}://")
    return FileLease(path)


_HELD: set[str] = set()  # the lock paths this process holds (a nested RunLock on one is a no-op)


class LockHeld(RuntimeError):
    """Another live process is writing this run directory."""


class LockUnsupported(LockHeld):
    """A run directory on a store distillc cannot lock (neither a filesystem nor gs://)."""


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

    def __init__(self, run_dir: str, *, enabled: bool = True, store: Optional[LeaseStore] = None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.path = lock_path(run_dir)
        self._store = store
        self._token: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def _data(self) -> bytes:
        return (json.dumps(dict(self.record, heartbeat=time.time())) + "\n").encode()

    def _refresh(self, store: LeaseStore) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                token = store.refresh(self._data(), self._token)
            except OSError:  # the directory went away: the run will report that itself
                return
            if token is None:
                print(f"error: the lock of {self.run_dir} was taken over by another process (this one's heartbeat "
                      f"stalled for over {STALE_S:.0f} s); stop one of the two runs", file=sys.stderr, flush=True)
                return
            self._token = token

    def acquire(self) -> None:
        if not self.enabled or self.path in _HELD:
            return
        store = self._store or lease_store(self.run_dir)
        for _ in range(2):  # a stale lock is replaced once (at the version read), else refused
            token = store.create(self._data())
            if token is None:
                current = store.read()
                if current is None:  # released between the two calls
                    continue
                try:
                    holder = json.loads(current[0])
                except ValueError:
                    holder = {}
                why = _stale(holder, time.time()) if isinstance(holder, dict) and holder else "it is unreadable"
                if why is None:
                    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
                    raise LockHeld(f"run directory {self.run_dir} is in use by process {holder.get('pid')} on "
                                   f"{holder.get('host')} (since {started}); wait for it to finish, or stop it, "
                                   f"or use another name or output_dir") from None
                token = store.replace(self._data(), current[1])
                if token is None:  # another process took it over first
                    continue
                print(f"note: took over the lock of {self.run_dir}: {why}", file=sys.stderr, flush=True)
            self._token = token
            self._store = store
            self._thread = threading.Thread(target=self._refresh, args=(store,), name="distillc-run-lock", daemon=True)
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
        assert self._store is not None  # set by acquire
        try:
            self._store.delete(self._token)
        except OSError:
            pass

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()
