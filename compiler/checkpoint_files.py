"""What `validate` reads of a checkpoint, on a local path or a gs:// one: whether it exists, a
Hugging Face directory's config.json, a GGUF file's header, the tokenizer shipped beside it.

The parsing is the runtime's own (runtime/convert: hf_config, gguf_meta, shipped_tokenizer, no
jax); this module only fetches the bytes: from the local filesystem, or through the run's
`Remote` (compiler/remote.py: gs:// within a time budget). Each function answers None for what it
does not check here (another URL scheme, `--offline`, or a remote path it cannot tell about: the
Remote records why, and rule DC186 says so), so the rules report only what was read.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

from distillc.compiler.remote import Remote, Unreachable, is_gs, is_remote
from distillc.runtime.convert.gguf_meta import GGUFHeader, header_by_ranges, is_gguf_path, local_header
from distillc.runtime.convert.hf_config import is_hf_listing, local_config, parse_config
from distillc.runtime.convert.shipped_tokenizer import tokenizer_disagreement
from distillc.runtime.file_digest import file_sha256

# the most bytes read of one remote file: a config.json is kilobytes, the largest published tokenizer
# files tens of megabytes (Gemma 3's tokenizer.json: 33 MB), a GGUF header with a 256k vocabulary ~10 MB
MAX_READ = 64 << 20
GGUF_FIRST_READ = 1 << 20  # a GGUF header is read by ranges from 1 MiB, x4 until it is whole


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def reader(ctx: Any, path: str) -> Optional[Remote]:
    """The Remote that reads `path` (a gs:// path, when validate reads remote paths), else None."""
    remote = getattr(ctx, "remote", None)
    return remote if remote is not None and is_gs(path) else None


def exists(ctx: Any, path: str) -> Optional[bool]:
    """Whether anything is at `path` (a file, or a directory: a gs:// prefix with objects under it);
    None when not told here."""
    if not is_remote(path):
        return os.path.exists(path)
    remote = reader(ctx, path)
    if remote is None:
        return None
    try:
        return remote.exists(path)
    except Unreachable:
        return None


def hf_config(ctx: Any, path: str) -> Optional[dict]:
    """The config.json of a Hugging Face directory (config.json beside *.safetensors), or None for
    anything else or anything not told here; HFConfigError when it is not a JSON object."""
    if not is_remote(path):
        return local_config(path)
    remote = reader(ctx, path)
    if remote is None:
        return None
    where = join(path, "config.json")
    try:
        if not is_hf_listing(remote.names(path)):
            return None
        raw = _read_small(remote, where)
    except (Unreachable, FileNotFoundError):
        return None
    return parse_config(raw, where)


def gguf_header(ctx: Any, path: str, fmt: Optional[str]) -> Optional[GGUFHeader]:
    """The header of an existing GGUF checkpoint (`fmt` gguf, or None and a .gguf path), or None;
    GGUFError when it is not a GGUF file. A remote file is read by ranges from its start, never
    past its header."""
    if not is_remote(path):
        return local_header(path, fmt)
    remote = reader(ctx, path)
    if remote is None or not (fmt == "gguf" or (fmt is None and is_gguf_path(path))):
        return None
    try:
        info = remote.info(path)
        if info.get("type") != "file":
            return None
        size = int(info["size"])
        found = header_by_ranges(lambda start, end: remote.read(path, start, end), path, size,
                                 first=GGUF_FIRST_READ, limit=MAX_READ)
        if found is None:
            remote.unchecked.setdefault(path, f"its GGUF header is larger than {MAX_READ >> 20} MiB (not read)")
        return found
    except (Unreachable, FileNotFoundError):
        return None


class _Files:
    """shipped_tokenizer's file access for validate: local files by os.path, gs:// ones through the
    Remote (Unreachable out of it: the rule skips that side), other URLs not read. The files
    beside a checkpoint are looked up in its listing (one request, which DC181 made already)."""

    def __init__(self, ctx: Any, checkpoint: str):
        self.ctx, self.checkpoint = ctx, checkpoint.rstrip("/")

    def is_file(self, path: str) -> bool:
        if not is_remote(path):
            return os.path.isfile(path)
        remote = reader(self.ctx, path)
        if remote is None:
            return False
        parent, _, name = path.rpartition("/")
        if parent == self.checkpoint:
            return name in remote.names(parent)
        return remote.is_file(path)

    def sha256(self, path: str) -> str:
        remote = reader(self.ctx, path)
        if remote is not None:
            return hashlib.sha256(_read_small(remote, path)).hexdigest()
        return file_sha256(path)[0]


def tokenizer_mismatch(ctx: Any, role: str, checkpoint: str, data_tokenizer: str,
                       model_tokenizer: Optional[str]) -> Optional[str]:
    """shipped_tokenizer.tokenizer_disagreement over local and (when validate reads them) gs://
    paths; None when they agree or when a file could not be read (OSError: the runtime's loader
    says why; Unreachable: DC186 does)."""
    try:
        return tokenizer_disagreement(role, checkpoint, data_tokenizer, model_tokenizer,
                                      local_only=getattr(ctx, "remote", None) is None, files=_Files(ctx, checkpoint))
    except (OSError, Unreachable):
        return None


def _read_small(remote: Remote, path: str) -> bytes:
    """A whole remote file of at most MAX_READ bytes (a larger one is recorded as not read)."""
    size = int(remote.info(path).get("size") or 0)
    if size > MAX_READ:
        why = f"{size >> 20} MiB, more than the {MAX_READ >> 20} MiB validate reads of one file"
        remote.unchecked.setdefault(path, why)
        raise Unreachable(path, why)
    return remote.read(path)
