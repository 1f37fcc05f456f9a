"""Rules about the spec's name, which becomes xpk workload names (DC16x); see compiler/naming.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from distillc.compiler.diagnostics import Severity
from distillc.compiler.naming import (
    WORKLOAD_NAME_PATTERN,
    max_name_length,
    name_problem,
    stage_suffixes,
    suggest_name,
)
from distillc.compiler.registry import Finding, rule

if TYPE_CHECKING:
    from distillc.compiler.check import Context


@rule(
    "DC160",
    Severity.ERROR,
    "name is not a valid workload name",
    needs=("name",),
    hint=f"Use lower-case letters, digits and '-', starting with a letter: {WORKLOAD_NAME_PATTERN}.",
)
def name_pattern(ctx: Context) -> Iterator[Finding]:
    """The spec's name becomes the xpk workload name (and the run directory). xpk workloads are
    Kubernetes objects whose names must match `[a-z]([-a-z0-9]*[a-z0-9])?`: lower-case letters,
    digits and '-', starting with a letter and not ending with '-'. xpk rejects anything else at
    submission time; distillc does not rename silently.

    Fails::

        name: Llama3.1_8B-prune

    Passes::

        name: llama31-8b-prune
    """
    assert ctx.spec.name is not None  # needs: the registry runs the rule only then
    name = ctx.spec.name
    problem = name_problem(name)
    if problem:
        suggestion = suggest_name(name)
        yield Finding(
            f"name {name!r} is not a valid xpk workload name: {problem}",
            ("name",),
            hint=f"Use lower-case letters, digits and '-', starting with a letter, e.g. {suggestion!r}.",
        )


@rule(
    "DC161",
    Severity.ERROR,
    "name too long for a workload name",
    needs=("name", "mode"),
    hint="Shorten the name.",
)
def name_length(ctx: Context) -> Iterator[Finding]:
    """xpk caps workload names at 40 characters, and at 28 on super-slicing accelerator types.
    An offline run becomes two workloads, `<name>-topk` and `<name>-train`, so its name has 6
    characters less. (Ablation cells derive their own names with compiler/naming.workload_name,
    which truncates and hashes deterministically.)

    Fails::

        name: a-very-long-experiment-name-that-xpk-will-reject

    Passes::

        name: short-experiment
    """
    assert ctx.spec.name is not None and ctx.spec.mode is not None  # needs: the registry runs the rule only then
    name = ctx.spec.name
    if name_problem(name):
        return  # DC160
    acc = ctx.accelerator
    super_slicing = bool(acc is not None and acc.super_slicing)
    limit = max_name_length(super_slicing)
    suffix = max(stage_suffixes(ctx.spec.mode), key=len)
    if len(name) + len(suffix) > limit:
        room = limit - len(suffix)
        why = f" ({acc.name} is a super-slicing type)" if acc is not None and super_slicing else ""
        after = f" with the '{suffix}' suffix" if suffix else ""
        yield Finding(
            f"name is {len(name)} characters; xpk allows {limit}{why}{after}, so at most {room} here",
            ("name",),
            hint=f"Shorten the name to at most {room} characters, e.g. {name[:room].rstrip('-')!r}.",
        )
