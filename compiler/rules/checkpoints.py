"""Rules about the checkpoints the runtime loads (DC18x)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC180",
    Severity.ERROR,
    "student checkpoint not found",
    needs=(),
    hint="Fix the path, or remove student.checkpoint to start the student from a random init (or, with "
    "student.pruned_layers, from the teacher minus those layers).",
)
def student_checkpoint_missing(ctx: Context) -> Iterator[Finding]:
    """The runtime loads `student.checkpoint` as the student's starting parameters (a warm start, or
    a pruned model for prune recovery). A local path that does not exist would stop the job at its
    start; here it is reported before anything is queued. This is the one check that reads the
    filesystem: local paths only (relative ones from the current directory), never the network, so
    gs:// paths are checked by the runtime when it starts (exit 2, naming the path). The teacher's
    local path may be empty on purpose: `distillc launch --local` trains and caches the teacher there.

    Fails::

        student:
          checkpoint: /nonexistent/distillc/student-checkpoint

    Passes::

        student:
          checkpoint: gs://bucket/student/0/items
    """
    side = ctx.spec.student
    path = side.checkpoint if side is not None else None
    if path is None or "://" in path or not path.strip():
        return  # remote: the runtime checks it; empty: DC145 reports it
    if not os.path.exists(path):
        yield Finding(f"student.checkpoint {path!r} does not exist", ("student", "checkpoint"))
