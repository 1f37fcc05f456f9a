"""Property test: thousands of random and mutated specs, and the validator never raises.

Every outcome is a list of diagnostics with known codes and real positions; no rule crashes
(DC900 would say one did). Mutations start from the shipped specs: keys deleted, values swapped
for other types, random strings / numbers / unicode, garbage nested anywhere, and raw text edits.
"""

from __future__ import annotations

import copy
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillc.compiler.check import check_loaded
from distillc.compiler.loader import LoadError, load_text
from distillc.compiler.registry import CODES, load_rules
from tests.conftest import ROOT

load_rules()

SPEC_FILES = sorted(p for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")
SPEC_TEXTS = [p.read_text() for p in SPEC_FILES]
SPEC_DATA = [yaml.safe_load(t) for t in SPEC_TEXTS]
SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))

WORDS = [
    "constant", "linear", "cosine", "piecewise", "explicit", "first_n", "evenly_spaced", "top_heavy",
    "straddle_pruned", "online", "offline", "tail_bucket", "renormalized", "sampled", "random", "top_k",
    "cosine", "l2", "float32", "bfloat16", "full", "none", "minimal", "llama3.1-8b", "llama3.1-70b",
    "gemma2-9b", "deepseek3-671b", "qwen2.5-7b", "qwen2.5-1.5b", "tiny-teacher", "tiny-student",
    "cpu", "v5p-8", "v5p-128", "v6e-8", "h100-80gb-8", "gs://", "gs://b/x", "builtin:", "builtin:pydoc_topics",
    "byte", "x.model", "-1", "1e-6", "", " ", "Ünïcødé", "名前", "\t", "a" * 300,
]
KEYS = [
    "start", "end", "schedule", "points", "strategy", "indices", "pairs", "count", "model", "checkpoint",
    "pruned_layers", "overrides", "top_k", "data_dir", "mesh", "data", "fsdp", "tensor", "alpha", "beta",
    "temperature", "layers", "feature_loss", "num_slices", "accelerator", "steps", "seq_len", "name",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-2, max_value=10),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
garbage = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


numbers = st.one_of(
    st.integers(min_value=-2, max_value=100),
    st.sampled_from([0, 1, -1, 2, 3, 8, 16, 64, 128, 4096, 10**12, 0.0, 0.5, 0.9, 1.5, 1e-6, -0.1, 12.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
schedules = st.one_of(
    numbers,
    st.fixed_dictionaries(
        {"start": numbers}, optional={"end": numbers, "schedule": st.sampled_from(["constant", "linear", "cosine", "cos"])}
    ),
    st.fixed_dictionaries(
        {"schedule": st.just("piecewise"), "points": st.lists(st.lists(numbers, min_size=1, max_size=3), max_size=4)}
    ),
)
layer_selections = st.fixed_dictionaries(
    {"strategy": st.sampled_from(["explicit", "first_n", "evenly_spaced", "top_heavy", "straddle_pruned"])},
    optional={
        "count": numbers,
        "indices": st.lists(numbers, max_size=5),
        "pairs": st.lists(st.lists(numbers, min_size=2, max_size=2), max_size=4),
    },
)
plausible = st.one_of(scalars, schedules, layer_selections, st.lists(numbers, max_size=5))
PLAUSIBLE_KEYS = {
    "alpha": schedules, "beta": schedules, "temperature": schedules, "layers": layer_selections,
    "pruned_layers": st.lists(numbers, max_size=5), "top_k": numbers, "mode": st.sampled_from(["online", "offline"]),
    "feature_loss": st.sampled_from(["cosine", "l2"]), "num_slices": numbers, "accelerator": st.sampled_from(WORDS),
    "mesh": st.fixed_dictionaries({}, optional={"data": numbers, "fsdp": numbers, "tensor": numbers}),
    "offline": st.fixed_dictionaries({}, optional={"top_k": numbers, "data_dir": st.sampled_from(WORDS),
                                                   "sampling": st.sampled_from(["top_k", "random"]), "num_samples": numbers}),
}


def _nudged(value, draw):
    """A value of the same type, nearby or at an edge: reaches the rules, not just the parser."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return draw(st.sampled_from([0, -1, 1, value + 1, value - 1, value * 2, value / 2, value * 1000, float("nan")]))
    if isinstance(value, str):
        return draw(st.sampled_from(WORDS))
    if isinstance(value, list) and value:
        i = draw(st.integers(min_value=0, max_value=len(value) - 1))
        return value[:i] + value[i + 1 :] if draw(st.booleans()) else value + [value[i]]
    if isinstance(value, dict) and value:
        k = draw(st.sampled_from(sorted(value, key=str)))
        return {kk: vv for kk, vv in value.items() if kk != k}
    return draw(plausible)


def _mutate(data, draw):
    """One random edit of the tree: nudge, replace, delete, insert, wrap or swap a type."""
    paths = [p for p in _paths(data) if p]
    if not paths:
        return data
    path = draw(st.sampled_from(paths))
    parent = _get(data, path[:-1])
    last = path[-1]
    ops = ["nudge"] * 4 + ["plausible"] * 2 + ["insert"] * 2 + ["garbage", "delete", "wrap", "swap_type"]
    op = draw(st.sampled_from(ops))
    if op == "nudge":
        parent[last] = _nudged(parent[last], draw)
    elif op == "plausible":
        parent[last] = draw(PLAUSIBLE_KEYS.get(last, plausible)) if isinstance(last, str) else draw(plausible)
    elif op == "garbage":
        parent[last] = draw(garbage)
    elif op == "delete":
        del parent[last]
    elif op == "insert":
        target = parent[last] if isinstance(parent[last], dict) else parent if isinstance(parent, dict) else None
        if target is not None:
            key = draw(st.one_of(st.sampled_from(sorted(PLAUSIBLE_KEYS)), keys))
            target[key] = draw(PLAUSIBLE_KEYS.get(key, plausible))
    elif op == "wrap":
        parent[last] = draw(st.sampled_from([[parent[last]], {"start": parent[last]}, {"value": parent[last]}]))
    else:
        value = parent[last]
        swapped = {int: str, float: str, str: float, bool: int, list: dict, dict: list, type(None): int}
        to = swapped.get(type(value), str)
        try:
            parent[last] = to(value) if to is not dict else {"x": value}
        except (TypeError, ValueError, OverflowError):
            parent[last] = str(value)
    return data


def _check_outcome(text: str) -> None:
    try:
        loaded = load_text(text, "fuzz.yaml")
    except LoadError:
        return  # a documented outcome: binary input (exit 2)
    checked = check_loaded(loaded)
    lines = max(1, len(text.splitlines()))
    for d in checked.diagnostics:
        assert d.code in CODES, d
        assert d.code != "DC900", d.message
        assert 1 <= d.span.line <= lines + 1 and d.span.column >= 1, d
        assert isinstance(d.message, str) and d.message
        for part in d.path:
            assert isinstance(part, (str, int, float, bool)), d.path


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(data) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False)


@settings(max_examples=1200, **SETTINGS)
@given(st.data())
def test_mutated_specs(data):
    tree = copy.deepcopy(data.draw(st.sampled_from(SPEC_DATA)))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        tree = _mutate(tree, data.draw)
    _check_outcome(_dump(tree))


@settings(max_examples=500, **SETTINGS)
@given(st.sampled_from(SPEC_TEXTS), st.data())
def test_text_edits(text, data):
    """Character-level damage: cut, duplicate and splice lines and characters."""
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        n = len(text)
        i = data.draw(st.integers(min_value=0, max_value=n))
        j = data.draw(st.integers(min_value=i, max_value=min(n, i + 40)))
        op = data.draw(st.sampled_from(["cut", "dup", "insert"]))
        if op == "cut":
            text = text[:i] + text[j:]
        elif op == "dup":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + data.draw(st.text(max_size=10)) + text[i:]
    _check_outcome(text)


@settings(max_examples=300, **SETTINGS)
@given(garbage)
def test_random_documents(doc):
    _check_outcome(_dump(doc))


@settings(max_examples=400, **SETTINGS)
@given(st.text(max_size=200))
def test_random_text(text):
    _check_outcome(text)


@settings(max_examples=250, **SETTINGS)
@given(
    st.dictionaries(
        st.sampled_from(["name", "mode", "teacher", "student", "loss", "offline", "data", "train", "runtime", "resources", "ablation", "version"]),
        garbage,
        max_size=8,
    )
)
def test_random_sections(doc):
    _check_outcome(_dump(doc))


def test_numbers_survive_the_round_trip():
    # the fuzzer feeds nan / inf / huge ints through yaml: make sure they arrive as numbers
    loaded = load_text(_dump({"a": float("nan"), "b": float("inf"), "c": 2**70}))
    assert math.isnan(loaded.data["a"]) and loaded.data["b"] == math.inf and loaded.data["c"] == 2**70
