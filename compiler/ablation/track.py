"""Dependency tracking: which parts of a spec a rule (or the resolver) actually read.

A rule gets a Context whose spec, source map and bound models are proxies that record every key
path read: `ctx.spec.loss.beta.start` records ('loss', 'beta', 'start'); `("loss", "layers") in
ctx.source.spans` records ('loss', 'layers'); a method call or comparison on a section records the
whole node. The evaluator then keys the rule's findings on only the axes whose values can reach
those paths, so a rule about beta runs once per beta value, not once per cell.

Soundness: a rule is a deterministic function of what it reads. Two cells that agree on every
value the first run read make the rule read the same values, take the same branches, and return
the same findings. A proxy that cannot tell what is read (iteration over a span map, an unknown
attribute of the context or spec) records everything.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from distillc.compiler.spec import SECTIONS

Path = tuple[Any, ...]
BOUND: dict[str, Path] = {"teacher_arch": ("teacher",), "student_arch": ("student",), "accelerator": ("resources",)}
CONSTANT = ("catalog", "cluster_note", "target", "remote")


class Recorder:
    """The key paths one run read; `everything` when it could not be told."""

    __slots__ = ("paths", "everything")

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.everything = False


_FIELDS: dict[type[BaseModel], frozenset[str]] = {}


def _fields(cls: type[BaseModel]) -> frozenset[str]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(cls.model_fields)
    return names


def _unwrap(x: Any) -> Any:
    return x._o if type(x) in (TrackedModel, FieldReads) else x


class TrackedModel:
    """A pydantic model (a section or a node inside one) that records the key paths read.

    Below `depth` path elements nodes are handed out as they are and recorded whole: coarser
    (a read of loss.alpha.start counts as one of loss.alpha) and cheaper."""

    __slots__ = ("_o", "_p", "_r", "_d")

    def __init__(self, obj: BaseModel, path: Path, rec: Recorder, depth: int = 64) -> None:
        self._o, self._p, self._r, self._d = obj, path, rec, depth

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._o, name)
        if name in _fields(type(self._o)):
            child = (*self._p, name)
            if isinstance(value, BaseModel) and len(child) < self._d:
                return TrackedModel(value, child, self._r, self._d)
            self._r.paths.add(child)
            return value
        self._r.paths.add(self._p)  # a method or property: it may read anything below
        return value

    def _whole(self) -> BaseModel:
        self._r.paths.add(self._p)
        return self._o

    @property  # type: ignore[misc]  # read-only on purpose: a proxy reports its target's class
    def __class__(self) -> type:  # isinstance(node, Cosine) sees the real class (and depends on the node)
        return type(self._whole())

    def __eq__(self, other: Any) -> bool:
        return self._whole() == _unwrap(other)

    def __ne__(self, other: Any) -> bool:
        return self._whole() != _unwrap(other)

    def __hash__(self) -> int:
        return hash(self._whole())

    def __iter__(self):
        return iter(self._whole())

    def __bool__(self) -> bool:
        return bool(self._whole())

    def __repr__(self) -> str:
        return repr(self._whole())

    def __str__(self) -> str:
        return str(self._whole())


class FieldReads:
    """A lighter TrackedModel for one section: records (section, field) and hands out the real
    value (a method or anything else counts as reading the whole section)."""

    __slots__ = ("_o", "_p", "_r", "_f")

    def __init__(self, obj: BaseModel, path: Path, rec: Recorder) -> None:
        self._o, self._p, self._r, self._f = obj, path, rec, _fields(type(obj))

    def __getattr__(self, name: str) -> Any:
        self._r.paths.add((*self._p, name) if name in self._f else self._p)
        return getattr(self._o, name)

    @property  # type: ignore[misc]  # read-only on purpose: a proxy reports its target's class
    def __class__(self) -> type:
        self._r.paths.add(self._p)
        return type(self._o)

    def __eq__(self, other: Any) -> bool:
        self._r.paths.add(self._p)
        return self._o == _unwrap(other)

    def __hash__(self) -> int:
        self._r.paths.add(self._p)
        return hash(self._o)


def track_value(value: Any, path: Path, rec: Recorder) -> Any:
    if isinstance(value, BaseModel):
        return TrackedModel(value, path, rec)
    rec.paths.add(path)
    return value


class TrackedSpec:
    """A PartialSpec (or a Spec) whose sections record what is read."""

    __slots__ = ("_spec", "_r")

    def __init__(self, spec: Any, rec: Recorder) -> None:
        self._spec, self._r = spec, rec

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._spec, name)
        if name in SECTIONS:
            return track_value(value, (name,), self._r)
        self._r.everything = True  # full(), failed, ...
        return value


class TrackedSpans:
    """A span map ({key path: span}) that records the key paths looked up."""

    __slots__ = ("_d", "_r")

    def __init__(self, d: dict, rec: Recorder) -> None:
        self._d, self._r = d, rec

    def _note(self, path: Any) -> None:
        if isinstance(path, tuple):
            self._r.paths.add(path)
        else:
            self._r.everything = True

    def __contains__(self, path: Any) -> bool:
        self._note(path)
        return path in self._d

    def __getitem__(self, path: Any) -> Any:
        self._note(path)
        return self._d[path]

    def get(self, path: Any, default: Any = None) -> Any:
        self._note(path)
        return self._d.get(path, default)

    def __getattr__(self, name: str) -> Any:  # keys(), items(), ...: depends on everything
        self._r.everything = True
        return getattr(self._d, name)

    def __iter__(self):
        self._r.everything = True
        return iter(self._d)

    def __len__(self) -> int:
        self._r.everything = True
        return len(self._d)


class TrackedSource:
    __slots__ = ("_src", "_r")

    def __init__(self, src: Any, rec: Recorder) -> None:
        self._src, self._r = src, rec

    def __getattr__(self, name: str) -> Any:
        if name in ("spans", "key_spans"):
            return TrackedSpans(getattr(self._src, name), self._r)
        if name in ("span", "key_span"):
            real = getattr(self._src, name)

            def lookup(path: Any) -> Any:
                p = tuple(path)
                while p:  # the answer depends on each ancestor looked at
                    self._r.paths.add(p)
                    p = p[:-1]
                return real(path)

            return lookup
        if name not in ("file", "text", "line_text"):
            self._r.everything = True
        return getattr(self._src, name)


class TrackedContext:
    """check.Context as a rule sees it, recording what the rule depends on."""

    __slots__ = ("_ctx", "_r")

    def __init__(self, ctx: Any, rec: Recorder) -> None:
        self._ctx, self._r = ctx, rec

    def __getattr__(self, name: str) -> Any:
        if name == "spec":
            return TrackedSpec(self._ctx.spec, self._r)
        if name == "source":
            return TrackedSource(self._ctx.source, self._r)
        if name in BOUND:
            self._r.paths.add(BOUND[name])
        elif name not in CONSTANT:
            self._r.everything = True
        return getattr(self._ctx, name)

    def get(self, name: str) -> Any:
        if name in BOUND:
            return self.__getattr__(name)
        return getattr(self.spec, name)


def overlaps(a: Path, b: Path) -> bool:
    """One path is a prefix of the other (a value at one can change the value at the other)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]
