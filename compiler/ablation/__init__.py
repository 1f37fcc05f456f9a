"""`distillc ablate`: the KD-aware ablation grid (issue 5).

axes.py reads and checks the axes, strategies.py picks the cells (grid, staged by the guide's
priority in priority.yaml, random), patch.py builds a cell's spec data, evaluate.py validates
cells fast with the same answers as check_loaded (track.py records what rules read), plan.py says
when two cells are one experiment, names.py names them, output.py prints them and writes child
specs, run.py ties it together, and codes.py declares the DC17x codes.

The package imports nothing heavy itself (so `codes` can be imported alone); the public names
below load run.py on first use.
"""

from typing import Any

_PUBLIC = {
    "Ablation": "run",
    "Cell": "run",
    "Options": "run",
    "ablate": "run",
    "on_cluster": "run",
    "StrategyError": "strategies",
    "read_results": "strategies",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
