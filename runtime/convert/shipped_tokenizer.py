"""The tokenizer a Hugging Face checkpoint ships beside its weights, against `data.tokenizer`.

A model's token ids mean what its own tokenizer says; data tokenized by another file trains and
distills on ids the model reads as other tokens, silently (the vocabulary sizes can be equal).
Identity is by content: the sha256 of data.tokenizer's bytes against the checkpoint's
tokenizer.json or tokenizer.model, the same way the prepared-data manifests identify a tokenizer
(runtime/data/tokenizers.py: tokenizer_fingerprint). `validate` checks local paths and, through its time-bounded reader
(compiler/remote.py, passed in as `files`), gs:// ones (rule DC185, compiler/rules/checkpoints.py);
the runtime checks every path, gs:// included through etils.epath, before it loads a Hugging Face
checkpoint (runtime/train/params.py). No jax here: the compiler imports this module.
"""

from __future__ import annotations

import os
from typing import Optional, Protocol

from distillc.runtime.file_digest import file_sha256

# the files a Hugging Face model directory ships its tokenizer in, by data.tokenizer's suffix
SHIPPED = {".json": "tokenizer.json", ".model": "tokenizer.model"}


def _remote(path: str) -> bool:
    return "://" in path


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


class Files(Protocol):
    """How the files are read: whether a path is a file, and its content's sha256."""

    def is_file(self, path: str) -> bool: ...

    def sha256(self, path: str) -> str: ...


class LocalOrEpath:
    """Local files by os.path; remote ones (gs://) through etils.epath (the runtime's way)."""

    def is_file(self, path: str) -> bool:
        if not _remote(path):
            return os.path.isfile(path)
        from etils import epath

        return epath.Path(path).is_file()

    def sha256(self, path: str) -> str:
        """The file's sha256, read in blocks (a tokenizer.json of a few MB costs milliseconds)."""
        return file_sha256(path)[0]


EPATH = LocalOrEpath()


def shipped_tokenizers(checkpoint: str, files: Files = EPATH) -> list[str]:
    """Paths of the tokenizer.json / tokenizer.model beside config.json in a Hugging Face model
    directory; [] for anything else (a GGUF file, an Orbax tree, a directory without them)."""
    if not files.is_file(_join(checkpoint, "config.json")):
        return []
    return [p for p in (_join(checkpoint, name) for name in SHIPPED.values()) if files.is_file(p)]


def tokenizer_disagreement(role: str, checkpoint: str, data_tokenizer: str, model_tokenizer: Optional[str],
                           *, local_only: bool, files: Files = EPATH) -> Optional[str]:
    """Why `data.tokenizer` is not the tokenizer `role`'s Hugging Face checkpoint ships, or None.

    'byte' against a shipped tokenizer disagrees unless the model's own tokenizer (the catalog's or
    the inline architecture's `tokenizer`; None when unknown) is byte too. A file is compared with
    the shipped file of its kind (a .json with tokenizer.json, a .model with tokenizer.model) by
    sha256; a kind the checkpoint does not ship, a .gguf, or a data.tokenizer that is not a file is
    not compared (the tokenizer loader reports a missing file). With `local_only` remote paths are
    not read at all; `files` reads them otherwise (and says what it cannot: its own exceptions)."""
    if local_only and _remote(checkpoint):
        return None
    shipped = shipped_tokenizers(checkpoint, files)
    if not shipped:
        return None
    if data_tokenizer == "byte":
        if model_tokenizer is None or model_tokenizer == "byte":
            return None
        names = " and ".join(os.path.basename(p) for p in shipped)
        return (f"data.tokenizer is 'byte' but {role}.checkpoint {checkpoint!r} ships {names}: the model's token ids "
                f"are its tokenizer's ({model_tokenizer}), not bytes")
    kind = SHIPPED.get(os.path.splitext(data_tokenizer)[1])
    theirs = next((p for p in shipped if os.path.basename(p) == kind), None)
    if theirs is None or (local_only and _remote(data_tokenizer)) or not files.is_file(data_tokenizer):
        return None
    ours_sha, theirs_sha = files.sha256(data_tokenizer), files.sha256(theirs)
    if ours_sha == theirs_sha:
        return None
    return (f"data.tokenizer {data_tokenizer!r} (sha256 {ours_sha[:12]}) is not the {kind} {role}.checkpoint ships "
            f"({theirs!r}, sha256 {theirs_sha[:12]})")
