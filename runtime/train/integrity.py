"""Checkpoint integrity: the size and sha256 of every file a checkpoint holds, recorded once the
checkpoint is complete and verified before it is restored.

Orbax's own reads notice a truncated file only sometimes (and then as a tensorstore error deep in a
restore), and a flipped bit never: a corrupted checkpoint used to resume silently with different
weights. With a record, a damaged checkpoint is named with the file that fails, and the trainer
falls back to the newest intact one; a damaged teacher is refused.

The record is `integrity.json` in the checkpoint's directory (a training step's directory, or a
parameter checkpoint's), written atomically after the checkpoint is complete. A checkpoint without
one (written before this existed, or killed between its commit and the record) is "unverified":
restored as before, and a restore that fails falls back like a failed verification.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from etils import epath

from distillc.runtime.file_digest import file_sha256

RECORD = "integrity.json"


class IntegrityError(RuntimeError):
    """A checkpoint file that is missing, has another size, or other bytes than were recorded."""


def _files(root: epath.Path, prefix: str = "") -> Iterator[tuple[str, epath.Path]]:
    """(path relative to root, path) of every file under root, the record itself excluded."""
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            yield from _files(child, rel + "/")
        elif rel != RECORD:
            yield rel, child


def _digest(path: epath.Path) -> tuple[int, str]:
    sha, size = file_sha256(path)
    return size, sha


def record(directory: str | os.PathLike) -> None:
    """Writes the record of every file under `directory` (a complete checkpoint), atomically."""
    root = epath.Path(directory)
    files = {rel: list(_digest(p)) for rel, p in _files(root)}
    tmp = root / f".{RECORD}.tmp"
    tmp.write_text(json.dumps({"format": 1, "algorithm": "sha256", "files": files}, indent=0) + "\n")
    tmp.replace(root / RECORD)


def verify(directory: str | os.PathLike) -> bool:
    """True when every recorded file is there with its size and sha256; False when the checkpoint
    has no record (unverified). Raises IntegrityError naming the first file that fails."""
    root = epath.Path(directory)
    path = root / RECORD
    if not path.exists():
        return False
    try:
        files = json.loads(path.read_text())["files"]
        expected = {str(rel): (int(v[0]), str(v[1])) for rel, v in files.items()}
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is unreadable ({type(e).__name__})") from e
    for rel, (size, sha) in expected.items():
        f = root / rel
        if not f.exists():
            raise IntegrityError(f"{f} is missing")
        got_size, got_sha = _digest(f)
        if got_size != size:
            raise IntegrityError(f"{f} has {got_size} bytes, {size} were written")
        if got_sha != sha:
            raise IntegrityError(f"{f} does not hold the bytes that were written (sha256 differs)")
    return True
