"""Parse loaded YAML into the typed Spec, section by section, turning pydantic errors into Diagnostics.

Each top-level section is validated on its own, so a typo in `train:` does not hide a mistake in
`loss:`; a section that fails is None in the PartialSpec, and rules needing it are skipped. A
section whose only fault is an unknown key is reported and still parsed without that key.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError

from distillc.compiler.diagnostics import Diagnostic, KeyPath
from distillc.compiler.loader import Loaded, SourceMap, plain_value
from distillc.compiler.registry import make
from distillc.compiler.spec import (
    SECTIONS,
    Ablation,
    Data,
    Loss,
    MaxTextTarget,
    Offline,
    Resources,
    RuntimeSettings,
    Side,
    Spec,
    Train,
)


@dataclass(frozen=True)
class PartialSpec:
    """The Spec's sections; a section is None when it was absent-and-required or failed to parse."""

    version: Optional[Literal[1]] = None
    name: Optional[str] = None
    mode: Optional[Literal["online", "offline"]] = None
    teacher: Optional[Side] = None
    student: Optional[Side] = None
    loss: Optional[Loss] = None
    offline: Optional[Offline] = None  # also None when the spec has no offline section
    data: Optional[Data] = None
    train: Optional[Train] = None
    runtime: Optional[RuntimeSettings] = None
    resources: Optional[Resources] = None
    ablation: Optional[Ablation] = None  # also None when the spec has no ablation section
    maxtext: Optional[MaxTextTarget] = None
    failed: frozenset[str] = frozenset()

    def full(self) -> Optional[Spec]:
        if self.failed:
            return None
        return Spec.model_construct(**{f: getattr(self, f) for f in SECTIONS})


assert {f.name for f in fields(PartialSpec)} - {"failed"} == set(SECTIONS)


def _adapter(section: str) -> TypeAdapter[Any]:
    annotation = Spec.model_fields[section].annotation
    return _adapter_for(typing.cast(typing.Hashable, annotation))  # a type: hashable


@lru_cache(maxsize=None)
def _adapter_for(annotation: Any) -> TypeAdapter[Any]:
    """One validator per type, not per section: teacher and student share Side's."""
    return TypeAdapter(annotation)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    import difflib  # only when something is misspelled

    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def concrete_types(tp: Any) -> list[Any]:
    """The concrete types inside Annotated / Optional / Union: what a key-path walk over the spec's
    models (allowed keys here, ablation's field types) steps into."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return concrete_types(typing.get_args(tp)[0])
    if origin is typing.Union:
        out: list[Any] = []
        for a in typing.get_args(tp):
            out += concrete_types(a)
        return out
    return [tp]


def allowed_keys(section: str, loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model found at `loc` inside `section` (for 'did you mean')."""
    candidates = concrete_types(Spec.model_fields[section].annotation)
    for part in loc:
        nxt: list[Any] = []
        for tp in candidates:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if part in tp.model_fields:
                    nxt += concrete_types(tp.model_fields[part].annotation)
                continue
            origin = typing.get_origin(tp)
            if origin in (dict, list, tuple) and typing.get_args(tp):
                nxt += concrete_types(typing.get_args(tp)[-1])
        # tags of tagged unions appear in pydantic's loc ('cosine', 'function-before[...]'): skip them
        if nxt:
            candidates = nxt
    keys: list[str] = []
    for tp in candidates:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            keys += [k for k in tp.model_fields if k not in keys]
    return keys


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch labels from a loc, keeping real keys and list indices."""
    out = []
    for part in loc:
        if isinstance(part, str) and (
            part in ("constant", "linear", "cosine", "piecewise", "name", "inline")
            or "[" in part
            or part in ("explicit", "first_n", "evenly_spaced", "top_heavy", "straddle_pruned")
        ):
            continue
        out.append(part)
    return tuple(out)


def error_loc(err: Any) -> tuple[Any, ...]:
    """The key path (inside its section) of one pydantic error: its loc without union-branch labels."""
    return _clean_loc(tuple(err["loc"]))


def parse_section(section: str, raw: Any) -> Any:
    """One section's typed value from its YAML data; raises pydantic.ValidationError."""
    return _adapter(section).validate_python(raw)


def recover_section(section: str, raw: Any, exc: ValidationError) -> Any:
    """The section parsed without its unknown keys, when unknown keys are all that is wrong with
    it (else None). The typo is still reported (DC010), and the rest of the section reaches the
    rules: one misspelled key must not hide a vocabulary mismatch or a teacher that does not fit."""
    errors = exc.errors()
    if not errors or any(e["type"] != "extra_forbidden" for e in errors):
        return None
    pruned = copy.deepcopy(raw)
    for loc in dict.fromkeys(error_loc(e) for e in errors):  # union branches repeat a complaint
        node = pruned
        for part in loc[:-1]:
            node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        if not loc or not isinstance(node, dict) or loc[-1] not in node:
            return None  # the key is not where the error says (a union branch label): do not guess
        del node[loc[-1]]
    try:
        return parse_section(section, pruned)
    except ValidationError:
        return None


def _has(node: Any, part: Any) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and -len(node) <= part < len(node)


def section_diagnostics(section: str, exc: ValidationError, raw: Any, source: SourceMap) -> list[Diagnostic]:
    """A section's ValidationError as Diagnostics, one per (code, key path): union branches
    repeat the same complaint."""
    seen: set[tuple[Any, ...]] = set()
    diags = []
    for err in exc.errors():
        d = _error_to_diag(section, err, raw, source)
        if (d.code, d.path) not in seen:
            seen.add((d.code, d.path))
            diags.append(d)
    return diags


# pydantic's error types -> the message in the spec's own terms (pydantic wording never reaches
# the user). Mapping-typed fields get a message naming what they take; see expected_message.
_MAPPING_TYPES = frozenset({"model_type", "dict_type", "model_attributes_type"})
_TYPE_MESSAGES = {
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "set_type": "expected a list",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer, not a fraction",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "none_required": "expected null",
}
_FIELD_MESSAGES = {  # (field name, message) for mapping-typed fields given something else
    "alpha": "expected a number or a mapping {start, end, schedule}",
    "temperature": "expected a number or a mapping {start, end, schedule}",
    "beta": "expected a number or a mapping {start, end, schedule}",
    "teacher": "expected a mapping with key 'model' (teacher: {model: llama3.1-8b})",
    "student": "expected a mapping with key 'model' (student: {model: llama3.2-1b})",
    "model": "expected a catalog model name (`distillc models`) or an inline architecture mapping",
    "layers": "expected a mapping with key 'strategy' (layers: {strategy: evenly_spaced, count: 4})",
}
_POINT = "a piecewise point is [step, value], e.g. [1000, 0.5]"


def yaml_repr(value: Any) -> str:
    """A scalar as the user wrote it in YAML terms (true, null), not Python's (True, None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _strict_type_message(kind: str, value: Any) -> str:
    """The spec is strict (YAML's types are the spec's): say how to write the value instead."""
    what = "an integer" if kind == "int_type" else "a number"
    if isinstance(value, float) and kind == "int_type":
        return f"expected an integer: write {int(value)}, not {value!r}" if value.is_integer() else "expected an integer, not a fraction"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        if number != number or number in (float("inf"), float("-inf")):
            return f"expected a finite {'integer' if kind == 'int_type' else 'number'}"
        text = value.strip()
        if isinstance(plain_value(text), (int, float)) and not isinstance(plain_value(text), bool):
            return f"expected {what}, not a string: write {text} without quotes"
        shown = int(number) if kind == "int_type" and number.is_integer() else number  # Python reads 1_000; YAML 1.2 does not
        return f"expected {what}: write {shown} ({text!r} is text in YAML 1.2)"
    if isinstance(value, bool):
        return f"expected {what}, not true/false"
    return ""


def expected_message(section: str, loc: tuple[Any, ...], err: Any) -> str:
    """The message for one pydantic error that is not unknown/missing/bad-choice (the clusters
    file's parser uses it too)."""
    kind = err["type"]
    keys = [p for p in loc if isinstance(p, str)]
    field = keys[-1] if keys else section
    if "points" in keys and loc and isinstance(loc[-1], int) and kind in ("too_long", "too_short", "tuple_type", "list_type"):
        return _POINT
    if kind in _MAPPING_TYPES:
        if loc and isinstance(loc[-1], int):
            return "expected a mapping"
        return _FIELD_MESSAGES.get(str(field), f"expected a mapping of keys under '{field}'")
    if kind in ("int_type", "float_type"):
        strict = _strict_type_message(kind, err.get("input"))
        if strict:
            return strict
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    ctx = err.get("ctx") or {}
    bounds = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
              "less_than_equal": "at most"}
    if kind in bounds:
        return f"must be {bounds[kind]} {next(iter(ctx.values()), '')}".rstrip()
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} item(s)"
    return str(err["msg"]).replace("Input should be", "expected").replace("Value error, ", "")


def _error_to_diag(section: str, err: Any, raw: Any, source: SourceMap) -> Diagnostic:
    loc = error_loc(err)
    path: KeyPath = (section, *loc)
    kind = err["type"]
    file = source.file
    if section == "version" and kind != "missing":
        value = err.get("input")
        if isinstance(value, str) and value.strip() == "1":
            msg = f"version is the number 1, not the string {value!r}: write `version: 1` without quotes"
        else:
            msg = f"unsupported spec version {yaml_repr(value)}: this distillc reads version 1"
        return make("DC015", msg, path=path, span=source.span(path), file=file)
    if kind == "extra_forbidden":
        key = loc[-1] if loc else section
        suggestion = did_you_mean(str(key), allowed_keys(section, loc[:-1]))
        known = ", ".join(allowed_keys(section, loc[:-1]))
        hint = suggestion or (f"known keys here: {known}" if known else "")
        return make("DC010", f"unknown key '{key}'", path=path, span=source.key_span(path), file=file, hint=hint)
    if kind == "missing":
        return make("DC012", f"missing required key '{loc[-1] if loc else section}'", path=path, span=source.span(path), file=file)
    if kind in ("union_tag_invalid", "literal_error"):
        value = err.get("input")
        if kind == "union_tag_invalid" and isinstance(value, dict):
            tag_key = next((k for k in ("schedule", "strategy") if k in value), None)
            if tag_key:
                path, value = (*path, tag_key), value[tag_key]
        expected = err.get("ctx", {}).get("expected_tags") or err.get("ctx", {}).get("expected", "")
        options = [o.strip(" '") for o in str(expected).replace(" or ", ",").split(",") if o.strip(" '")]
        hint = did_you_mean(str(value), options) or (f"expected one of: {', '.join(options)}" if options else "")
        return make("DC011", f"invalid value {value!r}: expected {expected}", path=path, span=source.span(path), file=file, hint=hint)
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {yaml_repr(value)})"
    return make("DC011", f"{expected_message(section, loc, err)}{shown}", path=path, span=source.span(path), file=file)


def parse(loaded: Loaded) -> tuple[PartialSpec, tuple[Diagnostic, ...]]:
    """Typed sections from loaded YAML; never raises for user input."""
    source = loaded.source
    data = loaded.data
    if not isinstance(data, dict):
        got = type(data).__name__ if data is not None else "nothing"
        diag = make("DC011", f"a spec is a mapping of sections, got {got}", path=(), span=source.span(()), file=source.file)
        return PartialSpec(failed=frozenset(SECTIONS)), (diag,)
    diags: list[Diagnostic] = []
    for key in data:
        if key not in Spec.model_fields:
            hint = did_you_mean(str(key), SECTIONS) or f"sections: {', '.join(SECTIONS)}"
            diags.append(make("DC010", f"unknown section '{key}'", path=(key,), span=source.key_span((key,)), file=source.file, hint=hint))
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for section, info in Spec.model_fields.items():
        if section not in data:
            if info.is_required():
                diags.append(make("DC012", f"missing required section '{section}'", path=(), span=source.span(()), file=source.file))
                failed.add(section)
            else:
                values[section] = info.get_default(call_default_factory=True)
            continue
        try:
            values[section] = parse_section(section, data[section])
        except ValidationError as exc:
            diags += section_diagnostics(section, exc, data[section], source)
            recovered = recover_section(section, data[section], exc)
            if recovered is None:
                failed.add(section)
            else:
                values[section] = recovered
    if "version" in values and values["version"] != 1:
        failed.add("version")
    return PartialSpec(**values, failed=frozenset(failed)), tuple(diags)
