"""Render artifacts from jinja2 templates (package data `distillc.templates`), and write them.

One Environment, StrictUndefined (a missing value is an error, never an empty string), no
autoescape (nothing here is HTML). Rendering is a pure function of its inputs: no clocks, no
absolute paths, sorted environment, so the same spec and cluster give byte-identical files.
Writing is atomic per directory: everything goes into a fresh sibling directory that then
replaces the old one, so a reader never sees half a build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import jinja2

from distillc import __version__
from distillc.compiler.diagnostics import one_line
from distillc.compiler.xpk import shell_word
from distillc.runtime.config import RuntimeConfig

TEMPLATES = "distillc.templates"
GENERATOR = "distillc"
MANIFEST = "manifest.json"
LAUNCH_SCRIPT = "launch.sh"


@dataclass(frozen=True)
class Artifact:
    name: str  # file name inside the build directory
    content: bytes
    executable: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


# ---------------------------------------------------------------- environment and filters


def _strict(filter_fn):
    """Filters see StrictUndefined as a value; make them fail the same way a plain {{ x }} does."""

    def wrapped(value: Any, *args: Any) -> str:
        if isinstance(value, jinja2.Undefined):
            str(value)  # StrictUndefined raises UndefinedError naming the missing variable
        return filter_fn(value, *args)

    wrapped.__name__ = filter_fn.__name__
    return wrapped


def to_json(value: Any) -> str:
    """Stable JSON: two-space indent, keys in model order, UTF-8 kept (not \\u-escaped)."""
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)


def yaml_value(value: Any) -> str:
    """A YAML flow scalar (or flow list) that reads back as `value` in YAML 1.1 and 1.2 loaders:
    strings double-quoted JSON-style, floats always with a '.' or exponent sign a 1.1 loader
    recognises (1e-05 alone is a string to PyYAML), None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite value {value!r} in a rendered config")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as a YAML value")


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def yaml_key(key: str) -> str:
    """A mapping key: plain when it is an identifier (every MaxText key), else double-quoted."""
    return key if _PLAIN_KEY.fullmatch(key) else yaml_value(key)


def comment_text(value: Any) -> str:
    """Text safe inside a one-line comment (shell or YAML): control characters, line breaks
    included, shown as escapes, so a hostile name cannot end the comment and start a command."""
    return one_line(str(value))


def _load_template(name: str) -> str:
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(json=_strict(to_json), yaml=_strict(yaml_value), shell=_strict(shell_word),
                       comment=_strict(comment_text), key=_strict(yaml_key))
    return env


def render_text(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


# ---------------------------------------------------------------- artifacts


def runtime_config(file_name: str, config: RuntimeConfig) -> Artifact:
    """The compiled runtime config as JSON, checked to read back as the same RuntimeConfig."""
    text = render_text("runtime_config.json.j2", config=config.model_dump(mode="json"))
    if RuntimeConfig.model_validate_json(text) != config:
        raise AssertionError(f"{file_name} does not read back as the config it was rendered from")
    return Artifact(file_name, text.encode("utf-8"))


def launch_script(context: Mapping[str, Any]) -> Artifact:
    """launch.sh: the xpk commands in order, waiting for each dependency to complete."""
    return Artifact(LAUNCH_SCRIPT, render_text("launch.sh.j2", **context).encode("utf-8"), executable=True)


def maxtext_config(file_name: str, context: Mapping[str, Any]) -> Artifact:
    return Artifact(file_name, render_text("maxtext.yml.j2", **context).encode("utf-8"))


def manifest(artifacts: Sequence[Artifact], spec: Mapping[str, Any], extra: Mapping[str, Any]) -> Artifact:
    """manifest.json: generator and version, the spec's sha256, every other artifact's sha256."""
    doc = {
        "generator": GENERATOR,
        "distillc_version": __version__,
        "spec": dict(spec),
        **dict(extra),
        "artifacts": [{"path": a.name, "sha256": a.sha256} for a in sorted(artifacts, key=lambda a: a.name)],
    }
    return Artifact(MANIFEST, render_text("manifest.json.j2", manifest=doc).encode("utf-8"))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- writing


class OutputDirError(Exception):
    """The output directory exists and was not written by distillc, or cannot be written."""


def _owned_by_us(out: Path) -> bool:
    """An existing directory may be replaced only if it is empty or holds a distillc manifest."""
    if not any(out.iterdir()):
        return True
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("generator") == GENERATOR


def write_atomic(out: Path, artifacts: Iterable[Artifact]) -> list[Path]:
    """Write the artifacts as the whole content of `out`, atomically (rename of a complete
    sibling directory). Refuses to replace a directory distillc did not write."""
    shown = out = Path(out)
    try:
        out = out.resolve()  # '.' has no name to rename; a symlink loop fails here, not midway
    except (OSError, RuntimeError) as exc:
        raise OutputDirError(f"{shown}: cannot be resolved ({_reason(exc)}); choose another --out") from None
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{shown} exists and is not a directory")
    if out.is_dir() and not _owned_by_us(out):
        raise OutputDirError(f"{shown} exists and was not written by distillc (no {MANIFEST}); choose another --out")
    blocker = next((p for p in out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise OutputDirError(f"cannot create {shown}: {blocker} is a file, not a directory; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise OutputDirError(f"cannot create {shown}: {_reason(exc)}; choose another --out") from None
    try:
        os.chmod(tmp, 0o755)
        written = []
        for a in artifacts:
            path = tmp / a.name
            path.write_bytes(a.content)
            os.chmod(path, 0o755 if a.executable else 0o644)
            written.append(out / a.name)
        old: Optional[Path] = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return written
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputDirError(f"cannot write {shown}: {_reason(exc)}; choose another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reason(exc: BaseException) -> str:
    """An OS error in words, without the temporary names it may carry ("Permission denied")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc).lower() or type(exc).__name__
