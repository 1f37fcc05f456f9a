"""Apply axis values to a spec's data, as the spec language means them.

Three things make a cell's spec more than a dict update:
- a bare number is a constant schedule, so `loss.alpha.end` on `alpha: 0.9` first spells the
  schedule out ({schedule: constant, start: 0.9});
- a tagged union (a schedule's `schedule`, the layers' `strategy`) keeps only the keys its variant
  accepts, so switching `strategy: evenly_spaced, count: 8` to straddle_pruned drops `count` (the
  conditional axis: count has no meaning there, and the cells dedupe);
- the base data is never mutated: only the nodes on an assigned path are copied.

The schema is walked from the pydantic models of spec.py, so a new field is ablatable at once.
"""

from __future__ import annotations

import typing
from functools import lru_cache
from typing import Any, Annotated, Iterable, Optional, Sequence

from pydantic import BaseModel, TypeAdapter

from distillc.compiler.parse import concrete_types
from distillc.compiler.spec import Constant, Spec

Path = tuple[str, ...]


class CannotApply(Exception):
    """An assignment runs into a value that is not a mapping (e.g. into a catalog model name)."""

    def __init__(self, path: Path, value: Any) -> None:
        super().__init__(path, value)
        self.path, self.value = path, value


def _field_type(info: Any) -> Any:
    """A field's annotation with its constraints (gt=0, min_length, ...) attached."""
    if not info.metadata:
        return info.annotation
    params = (info.annotation, *info.metadata)
    return Annotated[params]  # Annotated[T, m1, m2], built at run time


@lru_cache(maxsize=None)
def field_types(path: Path) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """(the annotations a value at `path` may take, the keys known where the walk stopped).

    The first element is empty when `path` is not a key path of the spec language; the second
    then lists the keys that were possible at the failing step (for 'did you mean')."""
    current: list[Any] = [Spec]
    for part in path:
        found: list[Any] = []
        known: list[str] = []
        for tp in current:
            for t in concrete_types(tp):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    known += [k for k in t.model_fields if k not in known]
                    if part in t.model_fields:
                        found.append(_field_type(t.model_fields[part]))
                elif typing.get_origin(t) is dict:
                    found.append(typing.get_args(t)[1] if typing.get_args(t) else Any)
                elif t is Any:
                    found.append(Any)
        if not found:
            return (), tuple(known)
        current = found
    return tuple(dict.fromkeys(current)), ()


def models_at(path: Path) -> list[type[BaseModel]]:
    types, _ = field_types(path)
    out: list[type[BaseModel]] = []
    for tp in types:
        out += [t for t in concrete_types(tp) if isinstance(t, type) and issubclass(t, BaseModel) and t not in out]
    return out


@lru_cache(maxsize=None)
def adapters(path: Path) -> tuple[TypeAdapter, ...]:
    return tuple(TypeAdapter(tp) for tp in field_types(path)[0])


def _literal_values(cls: type[BaseModel], key: str) -> tuple[Any, ...]:
    info = cls.model_fields.get(key)
    if info is None or typing.get_origin(info.annotation) is not typing.Literal:
        return ()
    return typing.get_args(info.annotation)


@lru_cache(maxsize=None)
def _union_tag(path: Path) -> Optional[tuple[str, tuple[tuple[Any, type[BaseModel]], ...]]]:
    """For a tagged union at `path`: (tag key, ((tag value, variant), ...)); None otherwise."""
    variants = models_at(path)
    if len(variants) < 2:
        return None
    shared = set(variants[0].model_fields)
    for v in variants[1:]:
        shared &= set(v.model_fields)
    for key in sorted(shared):
        if all(len(_literal_values(v, key)) == 1 for v in variants):
            return key, tuple((_literal_values(v, key)[0], v) for v in variants)
    return None


def _is_schedule(path: Path) -> bool:
    return Constant in models_at(path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _normalize(node: dict, path: Path) -> None:
    """Keep only the keys the variant named by the node's tag accepts."""
    tag = _union_tag(path)
    if tag is None:
        return
    key, variants = tag
    value = node.get(key)
    if value is None:  # an absent tag means the default variant (a schedule without `schedule` is constant)
        defaults = [v.model_fields[key].default for _, v in variants if not v.model_fields[key].is_required()]
        value = defaults[0] if defaults else None
    cls = next((c for t, c in variants if t == value), None)
    if cls is None:  # an unknown tag: leave it for the parser to report
        return
    accepted = _accepted(cls)
    for k in [k for k in node if k not in accepted]:
        del node[k]


@lru_cache(maxsize=None)
def _accepted(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(cls.model_fields)


def _copy(value: Any) -> Any:
    """Axis values are shared by every cell: containers are copied, scalars need not be (values
    are YAML data: mappings, lists and scalars)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def apply(data: Any, assignments: Sequence[tuple[Path, Any]], prefix: Path = ()) -> Any:
    """`data` (the value found at `prefix` in the spec) with every (path, value) assigned; paths are
    relative to `prefix`. Raises CannotApply when a path runs into a scalar."""
    if not assignments:
        return data
    if any(not p for p, _ in assignments):  # the whole value replaced
        (value,) = [v for p, v in assignments if not p][-1:]
        rest = [(p, v) for p, v in assignments if p]
        return apply(_copy(value), rest, prefix) if rest else _copy(value)
    root = _descendable(data, prefix)
    copied: dict[Path, dict] = {(): root}
    for path, value in assignments:
        node = root
        for i, part in enumerate(path[:-1]):
            sub = path[: i + 1]
            if sub not in copied:
                node[part] = copied[sub] = _descendable(node.get(part), prefix + sub)
            node = copied[sub]
        node[path[-1]] = _copy(value)
        if isinstance(value, dict):
            copied[path] = node[path[-1]]
    for sub, node in sorted(copied.items(), key=lambda kv: -len(kv[0])):
        _normalize(node, prefix + sub)
    return root


def _descendable(value: Any, path: Path) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if _is_number(value) and _is_schedule(path):
        return {"schedule": "constant", "start": value}
    raise CannotApply(path, value)


def lookup(data: Any, path: Iterable[str]) -> tuple[bool, Any]:
    """(present, value) at `path`, reading a bare-number schedule's `start` and `schedule`."""
    node = data
    walked: Path = ()
    for part in path:
        if _is_number(node) and _is_schedule(walked):
            node = {"schedule": "constant", "start": node}
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
        walked += (part,)
    return True, node


@lru_cache(maxsize=None)
def footprint(path: Path) -> Path:
    """The node an assignment at `path` can change: the shallowest tagged-union (or schedule)
    node on the path, whose other keys a tag change drops and a bare number turns into a
    mapping; else the path itself. Values outside the footprint are untouched by the assignment."""
    for n in range(1, len(path) + 1):
        if _union_tag(path[:n]) is not None or _is_schedule(path[:n]):
            return path[:n]
    return path
