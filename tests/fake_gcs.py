"""A fake Cloud Storage for the tests and the rules' docstring examples: `distillc validate` reads
gs:// paths through compiler.remote.Remote, whose filesystem this replaces (no network, no gcsfs).

Buckets, by name (the convention the rules page shows):
- gs://bucket/X      is tests/fixtures/X (gs://bucket/hf/llama2 is the Hugging Face fixture);
                     a path with nothing there is missing (FileNotFoundError, as gcsfs says 404)
- gs://no-access/X   permission denied (gcsfs raises OSError("Forbidden: ...") for a 403)
- gs://offline/X     no network (aiohttp's connection error is an OSError)
- gs://slow/X        never answers (until `release` is set): the time budget must stop it
Other buckets map to `roots` given to the constructor (a test's tmp_path), else are missing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

from distillc.compiler.remote import Remote
from tests.conftest import FIXTURES


class FakeGCS:
    """The three calls Remote makes (info, ls, cat_file), with gcsfs's answers and errors; every
    call is counted by path so tests can assert what was read, and how much."""

    def __init__(self, roots: Optional[dict[str, Path]] = None):
        self.roots = {"bucket": FIXTURES, **(roots or {})}
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []
        self.bytes_read = 0

    def _local(self, path: str) -> Path:
        key = path.removeprefix("gs://")
        bucket, _, rest = key.partition("/")
        if bucket == "no-access":
            raise OSError(f"Forbidden: https://storage.googleapis.com/storage/v1/b/{bucket}/o/{rest}\nno access")
        if bucket == "offline":
            raise OSError("Cannot connect to host storage.googleapis.com:443 ssl:default [Name or service not known]")
        if bucket == "slow":
            self.release.wait()
            raise OSError("released")
        root = self.roots.get(bucket)
        local = (root / rest) if root is not None else None
        if local is None or not local.exists():
            raise FileNotFoundError(path)
        return local

    def info(self, path: str) -> dict:
        self.calls.append(("info", path))
        local = self._local(path)
        if local.is_dir():
            return {"name": path, "type": "directory", "size": 0}
        return {"name": path, "type": "file", "size": local.stat().st_size}

    def ls(self, path: str, detail: bool = False) -> list[str]:
        self.calls.append(("ls", path))
        local = self._local(path)
        if not local.is_dir():
            return [path.removeprefix("gs://")]
        return [f"{path.removeprefix('gs://').rstrip('/')}/{p.name}" for p in sorted(local.iterdir())]

    def cat_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        self.calls.append(("cat", path))
        with open(self._local(path), "rb") as f:
            f.seek(start or 0)
            data = f.read() if end is None else f.read(max(0, end - (start or 0)))
        self.bytes_read += len(data)
        return data


def fake_remote(budget_s: float = 5.0, fs: Optional[FakeGCS] = None) -> Remote:
    """A Remote over a FakeGCS (a fresh one unless given)."""
    fake = fs or FakeGCS()
    return Remote(budget_s, filesystem=lambda: fake)
