"""Cell names: deterministic, readable where they fit, valid xpk workload names, unique.

A cell is named after the base spec and the values where it differs from the base, in axis
order: `quickstart-a03-t2` is alpha.end 0.3 and temperature 2 (the short forms come from
priority.yaml); the cell that changes nothing is `<base>-base`. The limit comes from naming.py: xpk's
40 characters (28 on super-slicing types) minus the longest stage suffix a spec's workloads get
(`-train`, `-topk` offline), so every workload of every cell stays valid. The base name is shortened
once per ablation, so that the longest tail any cell can have fits, and every cell shares that
prefix; a name that still does not fit (the base already at MIN_STEM) is shortened by
naming.workload_name (truncated, with a hash of the full name); two cells that would share a name
both get a hash of their values. A name
depends only on the base name and the cell's values (and, for a shared name, on the clash), so a
cell keeps its name from one stage of a staged run to the next.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Sequence

from distillc.compiler.ablation.priority import Priority
from distillc.compiler.naming import STAGE_SUFFIXES, is_valid_workload_name, max_name_length, workload_name

Diff = Sequence[tuple[str, Any]]  # (key path, value) where a cell differs from the base
LONGEST_SUFFIX = max(len(s) for suffixes in STAGE_SUFFIXES.values() for s in suffixes)


def name_limit(super_slicing: bool = False) -> int:
    """The longest cell name whose every workload (name + stage suffix) xpk accepts."""
    return max_name_length(super_slicing) - LONGEST_SUFFIX


def _clean(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def number_token(v: float | int) -> str:
    """0.5 -> 05, 0.05 -> 005, 2.0 -> 2, 1.5 -> 1p5, 1e-06 -> 1em6, -0.1 -> m01."""
    sign = "m" if v < 0 else ""
    v = abs(v)
    if float(v).is_integer() and v < 1e15:
        return sign + str(int(v))
    text = format(float(v), ".6g")
    if "e" in text:
        mant, exp = text.split("e")
        return sign + mant.replace(".", "p") + "e" + ("m" if exp.startswith("-") else "") + str(int(exp.lstrip("+-")))
    whole, frac = text.split(".")
    return sign + (f"0{frac}" if whole == "0" else f"{whole}p{frac}")


def value_token(v: Any, priority: Priority) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None:
        return "none"
    if isinstance(v, (int, float)):
        return number_token(v)
    if isinstance(v, str):
        return priority.values.get(v) or _clean(v)[:10] or "s" + _digest(v)[:4]
    if isinstance(v, list) and len(v) <= 4 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        return "x".join(str(x) for x in v) or "empty"
    return "h" + _digest(v)[:5]


def _digest(v: Any) -> str:
    return hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()


MIN_STEM = 8  # the base name is shortened to make room for the values, down to this many characters


def stem(base: str, room: int) -> str:
    """The base name shortened to `room` characters (cut at a word boundary where that keeps at
    least MIN_STEM), never below MIN_STEM characters."""
    if len(base) <= room:
        return base
    floor = min(MIN_STEM, len(base))
    room = max(room, floor)
    out = base[:room]
    if "-" in out and base[room : room + 1] not in ("-", ""):
        cut = out.rsplit("-", 1)[0]
        out = cut if len(cut) >= floor else out
    return out.rstrip("-") or base[:floor]


class Namer:
    """Names the cells of one ablation; each axis value's token is computed once.

    Every cell of a run gets the same prefix: the base name is shortened once, so that the longest
    tail any cell can have (every axis at its longest token) fits the limit. The prefix depends
    only on the base name and the axes, so a staged run's cells keep their names from stage to
    stage. Only when even MIN_STEM characters of the base leave no room does a cell whose tail is
    too long fall back to a hashed name."""

    def __init__(self, base: str, axes: Sequence[Any], priority: Priority, limit: int | None = None) -> None:
        self.base, self.axes = base, axes
        self.limit = name_limit() if limit is None else limit
        self.tokens = [[priority.abbrev_of(a.key) + value_token(v, priority) for v in a.values] for a in axes]
        longest = sum(max((len(t) for t in toks), default=0) for toks in self.tokens) + max(len(self.tokens) - 1, 0)
        self.stem = stem(base, self.limit - max(longest, len("base")) - 1)

    def names(self, diffs: Sequence[Sequence[tuple[int, int]]]) -> list[str]:
        """One name per cell; `diffs` lists each cell's (axis, value) indices that differ from the
        base, in display order. Readable where it fits and is not shared."""
        wanted = [f"{self.stem}-{'-'.join(self.tokens[a][v] for a, v in d) or 'base'}" for d in diffs]
        count: dict[str, int] = {}
        for n in wanted:
            count[n] = count.get(n, 0) + 1
        out = []
        for n, d in zip(wanted, diffs):
            if count[n] > 1:  # two different cells, one readable name: tell them apart by their values
                values = sorted([self.axes[a].key, self.axes[a].values[v]] for a, v in d)
                out.append(workload_name(n, "-" + _digest(values)[:6], max_len=self.limit))
            elif is_valid_workload_name(n, self.limit):
                out.append(n)
            else:
                out.append(workload_name(n, max_len=self.limit))
        taken: set[str] = set()
        for i, n in enumerate(out):  # a hash collision among one run's cells: vanishingly rare, still handled
            k = 1
            while out[i] in taken:
                k += 1
                out[i] = workload_name(n, f"-{k}", max_len=self.limit)
            taken.add(out[i])
        return out


def valid_cell_name(name: str, limit: int | None = None) -> bool:
    return is_valid_workload_name(name, name_limit() if limit is None else limit)
