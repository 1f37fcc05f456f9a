"""Load a YAML spec into plain Python data plus a map from key path to source position.

Why not `yaml.safe_load`: diagnostics must point at file:line:col of the offending node, and a
spec is untrusted input. We compose the node graph ourselves (safe tags only), keep every node's
mark, reject duplicate keys (PyYAML silently keeps the last one) and bound the work: file size,
alias expansion (a "billion laughs" bomb) and nesting depth are capped before they cost memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C composer is ~10x faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

from distillc.compiler.diagnostics import Diagnostic, KeyPath, Span

MAX_BYTES = 1 << 20  # a real spec is a few KB; 1 MiB leaves room for big ablation tables
MAX_NODES = 20_000  # counted after alias expansion; a large ablation spec has a few thousand
MAX_DEPTH = 64


@dataclass(frozen=True)
class SourceMap:
    """Where each key path of the document sits in its file (1-based line and column)."""

    file: str
    text: str
    spans: dict[KeyPath, Span] = field(default_factory=dict)
    key_spans: dict[KeyPath, Span] = field(default_factory=dict)

    def span(self, path: KeyPath) -> Span:
        """The span of the value at `path`, or of its nearest ancestor that exists."""
        p = tuple(path)
        while p:
            if p in self.spans:
                return self.spans[p]
            p = p[:-1]
        return self.spans.get((), Span(1, 1))

    def key_span(self, path: KeyPath) -> Span:
        """The span of the key itself (for 'unknown key' errors), else the value's span; for a key
        that is not in the file (a default), the key of its nearest written ancestor."""
        p = tuple(path)
        if p in self.key_spans:
            return self.key_spans[p]
        if p in self.spans:
            return self.spans[p]
        while p:
            p = p[:-1]
            if p in self.key_spans:
                return self.key_spans[p]
        return self.span(())

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


@dataclass(frozen=True)
class Loaded:
    """A YAML document as plain data, with the positions of its nodes and the problems found loading it."""

    data: Any
    source: SourceMap
    diagnostics: tuple[Diagnostic, ...] = ()
    refused: tuple[KeyPath, ...] = ()  # values dropped for an unsupported tag (reported as DC001)

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


class LoadError(Exception):
    """An input that cannot be read at all (missing file, binary, too large): exit code 2."""


def _span(node: yaml.Node) -> Span:
    m, e = node.start_mark, node.end_mark
    return Span(m.line + 1, m.column + 1, e.line + 1, e.column + 1)


class _Builder:
    def __init__(self, source: SourceMap) -> None:
        self.source = source
        self.nodes = 0
        self.diagnostics: list[Diagnostic] = []
        self.tagged: list[KeyPath] = []

    def build(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise _TooBig(node, path)
        self.source.spans.setdefault(path, _span(node))
        if node.tag not in _SAFE_TAGS:  # !!python/object/apply:..., !custom: never constructed
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            self._add("DC001", f"unsupported YAML tag '{tag}': a spec holds plain values only", path, node)
            self.tagged.append(path)
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self._add("DC001", "a mapping key must be a plain scalar", path, key_node)
                    continue
                key = _scalar(key_node)
                if key == "<<":  # merge keys hide where values come from; keep specs explicit
                    self._add("DC001", "YAML merge keys (<<) are not supported in specs", path, key_node)
                    continue
                if not isinstance(key, (str, int, float, bool)):
                    key = str(key)
                child = (*path, key)
                if key in out:
                    first = self.source.key_spans.get(child)
                    where = f" (first defined at line {first.line})" if first else ""
                    self._add("DC002", f"duplicate key '{key}'{where}", child, key_node)
                    continue
                self.source.key_spans[child] = _span(key_node)
                out[key] = self.build(value_node, child, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i), depth + 1) for i, v in enumerate(node.value)]
        return _scalar(node)

    def _add(self, code: str, message: str, path: KeyPath, node: yaml.Node) -> None:
        from distillc.compiler.registry import make

        self.diagnostics.append(make(code, message, path=path, span=_span(node), file=self.source.file))


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, path: KeyPath) -> None:
        self.node, self.path = node, path


# the tags the safe resolvers give plain YAML (and an explicit `!!str` etc.); anything else is refused
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
)

_SCALAR = _Loader("")  # a constructor with the safe resolvers, reused for scalars only

_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _too_big(text: str) -> tuple[yaml.Node, str] | None:
    """The first collection nested deeper than MAX_DEPTH, or the node past MAX_NODES (before alias
    expansion), found from the event stream before composing: libyaml's composer recurses once
    per level, and a document of a few hundred thousand `[` crashes the interpreter (a C stack
    overflow, not a catchable exception); composing a 1 MiB list of numbers costs seconds."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                where = yaml.ScalarNode("tag:yaml.org,2002:str", "", event.start_mark, event.end_mark)
                return where, f"the document nests more than {MAX_DEPTH} levels deep"
        elif isinstance(event, _CLOSE):
            depth -= 1
            continue
        elif not isinstance(event, yaml.ScalarEvent):
            continue
        nodes += 1
        if nodes > MAX_NODES:
            where = yaml.ScalarNode("tag:yaml.org,2002:str", "", event.start_mark, event.end_mark)
            return where, f"the document has more than {MAX_NODES} nodes, far more than any spec needs"
    return None


def _expanded_size(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    """Nodes the document has once aliases are expanded, computed over the shared node graph in
    time linear in its size (a 'billion laughs' bomb is rejected without expanding it)."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:  # an alias to an enclosing node: infinite
            raise _TooBig(node, ())
        return memo[key]
    if depth > MAX_DEPTH:
        raise _TooBig(node, ())
    memo[key] = -1
    size = 1
    if isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(v, memo, depth + 1) for _, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(v, memo, depth + 1) for v in node.value)
    if size > MAX_NODES:
        raise _TooBig(node, ())
    memo[key] = size
    return size


def _scalar(node: yaml.Node) -> Any:
    try:
        return _SCALAR.construct_object(node, deep=True)
    except (yaml.constructor.ConstructorError, ValueError):  # ValueError: an int past Python's 4300 digits
        return node.value
    finally:  # the shared constructor memoizes every node it builds: drop it, or it grows forever
        _SCALAR.constructed_objects.pop(node, None)


def load_text(text: str, file: str = "<string>") -> Loaded:
    """Parse YAML text; syntax errors and structural problems come back as diagnostics."""
    from distillc.compiler.registry import make

    source = SourceMap(file=file, text=text)
    if "\x00" in text:
        raise LoadError(f"{file}: looks like a binary file, not a YAML spec")
    try:
        big = _too_big(text)
        root = None if big is not None else yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        span = Span(mark.line + 1, mark.column + 1) if mark else Span(1, 1)
        msg = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        return Loaded(None, source, (make("DC000", f"YAML syntax error: {msg}", path=(), span=span, file=file),))
    except yaml.YAMLError as exc:
        return Loaded(None, source, (make("DC000", f"YAML error: {exc}", path=(), span=Span(1, 1), file=file),))
    if big is not None:
        return Loaded(None, source, (make("DC004", big[1], path=(), span=_span(big[0]), file=file),))
    if root is None:
        return Loaded(None, source, (make("DC003", "the spec is empty", path=(), span=Span(1, 1), file=file),))
    builder = _Builder(source)
    try:
        _expanded_size(root, {})
        data = builder.build(root, ())
    except _TooBig as big:
        msg = (
            f"the document expands past {MAX_NODES} nodes or {MAX_DEPTH} levels "
            "(a YAML alias bomb, or a table far larger than any spec needs)"
        )
        return Loaded(None, source, (make("DC004", msg, path=big.path, span=_span(big.node), file=file),))
    except RecursionError:
        return Loaded(None, source, (make("DC004", "the document nests too deeply", path=(), span=Span(1, 1), file=file),))
    return Loaded(data, source, tuple(builder.diagnostics), tuple(builder.tagged))


def load_file(path: str | Path) -> Loaded:
    """Read and parse a spec file. Raises LoadError for what is not a YAML text file at all."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise LoadError(f"{p}: not a regular file")
        if size > MAX_BYTES:
            raise LoadError(f"{p}: {size / 1e6:.1f} MB is too large for a spec (limit {MAX_BYTES // 1024} KiB)")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise LoadError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{p}: is a directory, not a spec file") from None
    except PermissionError:
        raise LoadError(f"{p}: permission denied") from None
    except OSError as exc:
        raise LoadError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{p}: not UTF-8 text (byte {exc.start}); is this a binary file?") from None
    return load_text(text, str(p))


STDIN_NAME = "<stdin>"


def load_stream(stream: Any, file: str = STDIN_NAME) -> Loaded:
    """Read a spec from a text stream (`distillc validate -`), with load_file's size limit."""
    try:
        text = stream.read(MAX_BYTES + 1)
    except UnicodeDecodeError as exc:
        raise LoadError(f"{file}: not UTF-8 text (byte {exc.start}); is this a binary file?") from None
    except OSError as exc:
        raise LoadError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LoadError(f"{file}: not UTF-8 text (byte {exc.start}); is this a binary file?") from None
    if len(text) > MAX_BYTES:
        raise LoadError(f"{file}: too large for a spec (limit {MAX_BYTES // 1024} KiB)")
    return load_text(text.lstrip("\ufeff"), file)
