"""runtime/file_digest.py: the one block reader behind every recorded sha256 equals hashlib over the
whole bytes, for a file larger than a block, named as str, Path or epath.Path."""

from __future__ import annotations

import hashlib

from etils import epath

from distillc.runtime import file_digest
from distillc.runtime.file_digest import file_sha256


def test_equals_hashlib_over_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(file_digest, "BLOCK", 1000)
    data = bytes(range(256)) * 40  # 10,240 bytes: ten full blocks and a partial one
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    want = (hashlib.sha256(data).hexdigest(), len(data))
    assert file_sha256(str(f)) == file_sha256(f) == file_sha256(epath.Path(f)) == want
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == (hashlib.sha256(b"").hexdigest(), 0)
