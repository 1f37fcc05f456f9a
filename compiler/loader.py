"""Load a YAML spec into plain Python data plus a map from key path to source position.

Why not `yaml.safe_load`: diagnostics must point at file:line:col of the offending node, and a
spec is untrusted input. We compose the node graph ourselves (safe tags only), keep every node's
mark, reject duplicate keys (PyYAML silently keeps the last one) and bound the work: file size,
alias expansion (a "billion laughs" bomb) and nesting depth are capped before they cost memory.

Plain scalars resolve by YAML 1.2's core schema, not PyYAML's YAML 1.1: `1e-5` and `.5` are floats,
`yes`/`on`/`1_000`/`0b1`/dates are strings, `0o17` and `0x1F` are ints. This module is the one reader
of specs, clusters files and `--axis` values, so all three read a value the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # the C composer is ~10x faster; fall back to pure Python where libyaml is absent
    from yaml import CSafeDumper as _SafeDumper, CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeDumper as _SafeDumper, SafeLoader as _SafeLoader  # type: ignore[assignment]

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

    def point(self, path: KeyPath) -> Span:
        """Where to point for `path`: its value, or, for a block mapping or an unwritten default,
        the key of the nearest written node (a block value starts on the line after its key)."""
        p = tuple(path)
        while p and p not in self.spans:
            p = p[:-1]
        value = self.spans.get(p)
        if p and value is not None and p in self.key_spans and value.end_line not in (None, value.line):
            return self.key_span(p)
        return self.span(p)

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


_TAG = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = _TAG + "str", _TAG + "seq", _TAG + "map"
# the tags plain YAML 1.2 resolves to (and an explicit `!!str` etc. may name); anything else is refused
_SAFE_TAGS = frozenset(_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))

# YAML 1.2.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema), one alternative per tag,
# tried in order under fullmatch. [0-9], not \d: \d also matches other scripts' digits.
_CORE = re.compile(
    r"(?P<null>~|null|Null|NULL|)"
    r"|(?P<bool>true|True|TRUE|false|False|FALSE)"
    r"|(?P<int>[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)"
    r"|(?P<float>[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))"
)


def _int(text: str) -> int:
    """A core-schema int; ValueError past Python's 4300-digit limit (the text is then kept)."""
    if text[:2] in ("0x", "0o"):
        return int(text[2:], 16 if text[1] == "x" else 8)
    return int(text)


def _float(text: str) -> float:
    """A core-schema float: Python's float() reads all but YAML's .inf / .nan spellings."""
    if text[-1] in "fFnN":  # .inf, -.Inf, .NAN ...
        return math.nan if text[-1] in "nN" else -math.inf if text[0] == "-" else math.inf
    return float(text)


_CONSTRUCT = {"null": lambda _: None, "bool": lambda t: t[0] in "tT", "int": _int, "float": _float}
_TAGS = {kind: _TAG + kind for kind in _CONSTRUCT}


class _Loader(_SafeLoader):
    """PyYAML's safe composer with YAML 1.2 core-schema tags for plain scalars (PyYAML's own
    resolvers are YAML 1.1's, where `3e-3` is a string and `no` is false). One regex per scalar."""

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode:
            found = _CORE.fullmatch(value) if implicit[0] else None  # quoted and block scalars are strings
            return _TAGS[found.lastgroup] if found else _STR  # type: ignore[index]
        return _SEQ if kind is yaml.SequenceNode else _MAP


class _Dumper(_SafeDumper):
    """PyYAML's safe emitter, quoting a string that a YAML 1.1 *or* 1.2 reader takes for another
    type (`yes` for 1.1, `1e5` and `0o17` for 1.2), so its output reads back the same in both."""

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        tag = super().resolve(kind, value, implicit)
        if tag == _STR and kind is yaml.ScalarNode and implicit[0]:
            return _Loader.resolve(self, kind, value, implicit)  # type: ignore[arg-type]
        return tag


def dump(data: Any) -> str:
    """`data` as block-style YAML (keys in order, unicode kept) that load_text reads back as `data`."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


_DEEP = f"the document nests more than {MAX_DEPTH} levels deep"
# libyaml's wording when its own nesting cap (1000 levels; newer builds) stops the scan ahead of ours
_NESTING = "exceeded maximum nesting depth"

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
                # the stubs type libyaml's Mark apart from PyYAML's; a node takes either
                where = yaml.ScalarNode("tag:yaml.org,2002:str", "", event.start_mark, event.end_mark)  # type: ignore[arg-type]
                return where, _DEEP
        elif isinstance(event, _CLOSE):
            depth -= 1
            continue
        elif not isinstance(event, yaml.ScalarEvent):
            continue
        nodes += 1
        if nodes > MAX_NODES:
            where = yaml.ScalarNode("tag:yaml.org,2002:str", "", event.start_mark, event.end_mark)  # type: ignore[arg-type]
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
    """A scalar node's value by the core schema. Text that does not fit an explicit tag (`!!int 1.5`,
    `!!bool yes`) stays text, so the type checks refuse it with the spec's own wording."""
    tag, text = node.tag, node.value
    if tag == _STR:
        return text
    found = _CORE.fullmatch(text)
    kind = found.lastgroup if found else None
    if kind == "int" and tag == _TAGS["float"]:  # `!!float 1` is 1.0
        kind = "float"
    return _construct(kind, text) if kind is not None and _TAGS[kind] == tag else text


def _construct(kind: str, text: str) -> Any:
    try:
        return _CONSTRUCT[kind](text)
    except ValueError:  # an int past Python's 4300 digits, or `!!float 0x1F`
        return text


def plain_value(text: str) -> Any:
    """What `text` reads as written unquoted in a spec (for messages that say how to write a value)."""
    found = _CORE.fullmatch(text)
    return _construct(found.lastgroup, text) if found and found.lastgroup else text


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
        if _NESTING in (exc.problem or ""):  # libyaml's own cap (PyYAML >= 6.0.3) noticed first: same code
            return Loaded(None, source, (make("DC004", _DEEP, path=(), span=span, file=file),))
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
    except _TooBig as bomb:
        msg = (
            f"the document expands past {MAX_NODES} nodes or {MAX_DEPTH} levels "
            "(a YAML alias bomb, or a table far larger than any spec needs)"
        )
        return Loaded(None, source, (make("DC004", msg, path=bomb.path, span=_span(bomb.node), file=file),))
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
