"""Diagnostic codes of `distillc ablate` (DC170-DC179). Declared here, apart from the code that
reports them, so `distillc rules` and `distillc explain` can list them without importing the
ablation machinery."""

from __future__ import annotations

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import CODES, declare

E, W = Severity.ERROR, Severity.WARNING

_CODES = [
    ("DC170", E, "unknown ablation axis",
     "An axis is a dotted key path of the spec language, e.g. loss.alpha.end; `distillc schema` lists them.",
     "Axes come from `ablation.axes` and from `--axis KEY=V1,V2`; the key path is looked up in the spec "
     "language's models, so a typo is reported where it was written, with the keys that exist there."),
    ("DC171", E, "ablation value of the wrong type",
     "Give a value the key path accepts (see `distillc schema`).",
     "Each value is checked against the type of its key path (bounds included) before any cell is built: "
     "a value that could never parse is a mistake in the ablation, not a cell to prune."),
    ("DC172", E, "malformed ablation axis",
     "Write --axis KEY=V1,V2,... (values are YAML scalars; brackets keep commas inside one value).",
     "An --axis without '=' or with an empty value, a key path that is not dotted names, the same --axis "
     "twice, an axis over `name` (each cell gets its own) or over the ablation block itself, or no axes at "
     "all. On the command line, line N of the `--axis` source is the N-th --axis option."),
    ("DC173", E, "too many ablation cells",
     "Raise --max-cells (or ablation.max_cells), sample with --strategy random --samples N, or sweep stage "
     "by stage with --strategy staged.",
     "The cell count is computed before anything is expanded, so a typo that multiplies the grid costs "
     "nothing. The default limit is ablation.max_cells (1000)."),
    ("DC174", W, "repeated ablation value", "Remove the repeated value; each value is one cell per combination.",
     "Values are compared as numbers where they are numbers (0.3 and 0.30 are one value); the repeat is "
     "dropped, so it does not make duplicate cells."),
    ("DC175", E, "axis cannot be applied to this cell",
     "The key path runs into a value that is not a mapping in this cell (e.g. a catalog model name); set "
     "the parent as a whole.",
     "student.model.num_layers is a key path of the spec language (an inline architecture), but a base "
     "that names a catalog model has a string there. The cell is pruned with this code."),
    ("DC176", E, "ablation cell cannot be resolved",
     "The cell passed every rule but the resolver rejected it: a rule is missing. Please report it with the spec.",
     "Every valid cell is resolved before it is counted (cells with the same plan are one cell); a "
     "resolver error after the rules passed means a constraint that no rule checks. The cell is pruned."),
]

for _code, _sev, _title, _hint, _doc in _CODES:
    if _code not in CODES:  # importable twice (as distillc.compiler.ablation.codes only, but be safe)
        declare(_code, _sev, _title, _hint, doc=_doc)
