"""The sha256 and size of a file, local or remote, read in blocks: one reader for every content
identity distillc records (tokenizer files, prepared and top-k shards, checkpoint integrity
records) and for the compiler's tokenizer check. Stdlib only for local paths (the compiler imports
it); a URL (gs://) is opened through etils.epath, imported only then."""

from __future__ import annotations

import hashlib
import os
from typing import Any

BLOCK = 1 << 22  # 4 MiB: files here run from a few KB (tokenizer.json) to several GB (a GGUF, a shard)


def file_sha256(path: str | os.PathLike[str] | Any) -> tuple[str, int]:
    """(hex sha256, size in bytes) of the file at `path` (a str, an os.PathLike or an epath.Path)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if "://" in text:
        from etils import epath

        f: Any = epath.Path(text).open("rb")
    else:
        f = open(text, "rb")
    h, n = hashlib.sha256(), 0
    with f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n
