"""Layer-index strategies for the feature loss: each one a small pure function -> explicit pairs.

Every strategy returns a sorted tuple of distinct (teacher_index, student_index) pairs, so the
plan, the runtime and the MaxText renderer all see explicit indices and nothing is re-derived.

Selection happens on the student (the side being trained); each chosen student layer is then
paired with a teacher layer by one of two documented depth mappings:

- **pruned** (the student is the teacher with `student.pruned_layers` removed): student layer s is
  the s-th teacher layer that was kept, so teacher layer t <-> student layer
  t - (number of pruned layers below t). The correspondence is exact.
- **proportional** (any other pair): student layer s <-> teacher layer round((s+1) * Lt / Ls) - 1,
  rounding halves up. Both last layers meet (s = Ls-1 -> t = Lt-1); equal depths give s <-> s.

Counts larger than the student's depth select every student layer (the rules warn about it).
Preconditions (indices inside both depths, pruned layers inside the teacher) are checked by the
validation rules before the resolver runs; here they raise ValueError, which would be a bug.

Everything here is a pure function of a few integers, so `kept_layers` and `resolve_layers` are
cached on them (an ablation resolves thousands of plans that share a handful of layer choices).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Iterable, Optional, Sequence

Pair = tuple[int, int]
Pairs = tuple[Pair, ...]
DepthMap = Callable[[int], int]


# ---------------------------------------------------------------- depth mappings


def kept_layers(teacher_layers: int, pruned: Iterable[int]) -> tuple[int, ...]:
    """The teacher layers left in the student, in order: student layer s is kept_layers(...)[s]."""
    return _kept_layers(teacher_layers, frozenset(pruned))


@lru_cache(maxsize=256)
def _kept_layers(teacher_layers: int, gone: frozenset[int]) -> tuple[int, ...]:
    bad = sorted(p for p in gone if not 0 <= p < teacher_layers)
    if bad:
        raise ValueError(f"pruned layers {bad} are outside the teacher's {teacher_layers} layers")
    return tuple(t for t in range(teacher_layers) if t not in gone)


def proportional(teacher_layers: int, student_layers: int) -> DepthMap:
    """student s -> teacher round((s + 1) * Lt / Ls) - 1 (halves up), in integer arithmetic."""
    lt, ls = teacher_layers, student_layers

    def to_teacher(s: int) -> int:
        return (2 * (s + 1) * lt + ls) // (2 * ls) - 1

    return to_teacher


def depth_map(teacher_layers: int, student_layers: int, pruned: Sequence[int] = ()) -> DepthMap:
    """The mapping the resolver uses: exact through the kept layers when the student is a pruned
    teacher, proportional otherwise."""
    if pruned:
        kept = kept_layers(teacher_layers, pruned)
        if len(kept) != student_layers:
            raise ValueError(f"{teacher_layers} teacher layers minus {len(set(pruned))} pruned is not {student_layers}")
        return kept.__getitem__
    return proportional(teacher_layers, student_layers)


def _pair(student_indices: Iterable[int], to_teacher: DepthMap) -> Pairs:
    return tuple(sorted({(to_teacher(s), s) for s in student_indices}, key=lambda p: (p[1], p[0])))


# ---------------------------------------------------------------- strategies (student indices)


def first_n_indices(count: int, depth: int) -> tuple[int, ...]:
    """[0, 1, ..., count-1] (MaxText's launcher default [0..7] for count 8)."""
    return tuple(range(min(count, depth)))


def evenly_spaced_indices(count: int, depth: int) -> tuple[int, ...]:
    """count layers spread over the depth, ending at the last: round(c * depth / count) - 1 for
    c = 1..count (halves up). 32 layers, 8 -> [3, 7, 11, 15, 19, 23, 27, 31]."""
    n = min(count, depth)
    return tuple((2 * c * depth + n) // (2 * n) - 1 for c in range(1, n + 1))


def top_heavy_indices(count: int, depth: int) -> tuple[int, ...]:
    """count layers at depth fractions sqrt(j / count), j = 1..count: denser near the output,
    always ending at the last layer. Index j is ceil(sqrt(j / count) * depth) - 1, lowered where
    needed so the indices stay distinct. 32 layers, 8 -> [11, 15, 19, 22, 25, 27, 29, 31]."""
    n = min(count, depth)
    raw = []
    for j in range(1, n + 1):
        target = j * depth * depth  # smallest m with m^2 * n >= j * depth^2, exactly
        m = math.isqrt(target // n)
        while m * m * n < target:
            m += 1
        raw.append(m - 1)
    out = [raw[-1]]
    for r in reversed(raw[:-1]):
        out.append(min(r, out[-1] - 1))
    return tuple(reversed(out))


# ---------------------------------------------------------------- strategies (pairs)


def explicit(
    teacher_layers: int,
    student_layers: int,
    indices: Optional[Sequence[int]] = None,
    pairs: Optional[Sequence[tuple[int, int]]] = None,
) -> Pairs:
    """Given [teacher, student] pairs as they are, or indices used on both sides (MaxText's
    `distill_layer_indices` semantics: the same index into each model)."""
    chosen = [tuple(p) for p in pairs] if pairs is not None else [(i, i) for i in indices or ()]
    for t, s in chosen:
        if not (0 <= t < teacher_layers and 0 <= s < student_layers):
            raise ValueError(f"layer pair ({t}, {s}) outside teacher {teacher_layers} / student {student_layers} layers")
    return tuple(sorted(set(chosen), key=lambda p: (p[1], p[0])))  # type: ignore[arg-type]


def first_n(count: int, teacher_layers: int, student_layers: int, pruned: Sequence[int] = ()) -> Pairs:
    return _pair(first_n_indices(count, student_layers), depth_map(teacher_layers, student_layers, pruned))


def evenly_spaced(count: int, teacher_layers: int, student_layers: int, pruned: Sequence[int] = ()) -> Pairs:
    return _pair(evenly_spaced_indices(count, student_layers), depth_map(teacher_layers, student_layers, pruned))


def top_heavy(count: int, teacher_layers: int, student_layers: int, pruned: Sequence[int] = ()) -> Pairs:
    return _pair(top_heavy_indices(count, student_layers), depth_map(teacher_layers, student_layers, pruned))


def pruned_blocks(pruned: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Contiguous runs of pruned layers as inclusive [a, b] blocks: [3, 4, 9] -> ((3, 4), (9, 9))."""
    blocks: list[list[int]] = []
    for p in sorted(set(pruned)):
        if blocks and p == blocks[-1][1] + 1:
            blocks[-1][1] = p
        else:
            blocks.append([p, p])
    return tuple((a, b) for a, b in blocks)


def straddle_pruned(teacher_layers: int, pruned: Sequence[int]) -> Pairs:
    """For each contiguous pruned block [a, b]: teacher layers a-1 and b+1 (where they exist),
    each with its student index t - (number of pruned layers below t). A layer between two blocks
    straddles both and appears once."""
    kept = kept_layers(teacher_layers, pruned)
    student_of = {t: s for s, t in enumerate(kept)}
    picks = set()
    for a, b in pruned_blocks(pruned):
        for t in (a - 1, b + 1):
            if t in student_of:
                picks.add((t, student_of[t]))
    return tuple(sorted(picks, key=lambda p: (p[1], p[0])))


def resolve_layers(layers, teacher_layers: int, student_layers: int, pruned: Sequence[int] = ()) -> Pairs:
    """Dispatch a spec `loss.layers` model (or None: no feature layers) to its strategy."""
    if layers is None:
        return ()
    kind = layers.strategy
    count = indices = pairs = None
    if kind == "explicit":
        indices = None if layers.indices is None else tuple(layers.indices)
        pairs = None if layers.pairs is None else tuple(tuple(p) for p in layers.pairs)
    elif kind in ("first_n", "evenly_spaced", "top_heavy"):
        count = layers.count
    return _resolve_layers(kind, count, indices, pairs, teacher_layers, student_layers, tuple(pruned))


@lru_cache(maxsize=1024)
def _resolve_layers(
    kind: str,
    count: Optional[int],
    indices: Optional[tuple[int, ...]],
    pairs: Optional[tuple[tuple[int, int], ...]],
    teacher_layers: int,
    student_layers: int,
    pruned: tuple[int, ...],
) -> Pairs:
    """resolve_layers on hashable values (the spec model's lists as tuples)."""
    if kind == "explicit":
        return explicit(teacher_layers, student_layers, indices, pairs)
    if kind == "first_n":
        return first_n(count, teacher_layers, student_layers, pruned)  # type: ignore[arg-type]
    if kind == "evenly_spaced":
        return evenly_spaced(count, teacher_layers, student_layers, pruned)  # type: ignore[arg-type]
    if kind == "top_heavy":
        return top_heavy(count, teacher_layers, student_layers, pruned)  # type: ignore[arg-type]
    if kind == "straddle_pruned":
        return straddle_pruned(teacher_layers, pruned)
    raise ValueError(f"unknown layer strategy {kind!r}")
