"""Plan rules of `distillc plan` and `distillc launch` (DC400-DC406): the spec on its cluster.

Each reads a plan_check.PlanContext. Their examples are spec fragments (merged onto
tests/fixtures/base.yaml) launched on the entry `example` of tests/fixtures/clusters.yaml, with the
`Cluster::` fragment merged onto that entry; `At::` is where the failing one is reported.
"""

from __future__ import annotations

from typing import Iterator

from distillc.compiler import xpk
from distillc.compiler.clusters import IMAGE_HINT, IMAGE_RE
from distillc.compiler.diagnostics import Severity
from distillc.compiler.plan_check import PlanContext
from distillc.compiler.registry import Finding, rule

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE


@rule("DC400", N, "the cluster's accelerator replaces the spec's", stage="plan", needs=("cluster", "resources"),
      hint="Set resources.accelerator to the cluster's accelerator to silence this note.")
def cluster_accelerator(ctx: PlanContext) -> Iterator[Finding]:
    """A clusters-file entry fixes the hardware a run gets. When it names a different accelerator
    than the spec, the cluster wins, and every rule (memory fit, batch divisibility, mesh) runs
    again for the cluster's accelerator.

    Cluster::

        accelerator: v5p-8

    Fails::

        resources: {accelerator: v5p-16}

    Passes::

        resources: {accelerator: v5p-8}

    At:: accelerator: v5p-16 > v5p-16
    """
    assert ctx.cluster is not None and ctx.resources is not None
    c, written = ctx.cluster, ctx.resources.accelerator
    if written != c.entry.accelerator:
        where = f"{c.source.file}:{c.span_of('accelerator').line}"
        yield Finding(f"cluster '{c.name}' ({where}) runs on {c.entry.accelerator}, not {written}: "
                      f"the plan and every rule use {c.entry.accelerator}", ("resources", "accelerator"))


@rule("DC401", N, "the cluster's slice count replaces the spec's", stage="plan", needs=("cluster", "resources"),
      hint="Set resources.num_slices to the cluster's num_slices to silence this note.")
def cluster_slices(ctx: PlanContext) -> Iterator[Finding]:
    """The cluster's num_slices is the number of slices the run gets; the spec's (1 when it does
    not say) is replaced, and the rules run again for the cluster's.

    Cluster::

        num_slices: 2

    Fails::

        resources: {num_slices: 1}

    Passes::

        resources: {num_slices: 2}

    At:: num_slices: 1 > 1
    """
    assert ctx.cluster is not None
    slices = ctx.cluster.entry.num_slices
    if ctx.written_slices != slices:
        yield Finding(f"cluster '{ctx.cluster.name}' runs {slices} slice(s), not {ctx.written_slices}: "
                      f"the plan and every rule use {slices}", ("resources", "num_slices"))


@rule("DC402", E, "a cluster entry value xpk cannot take", stage="plan", needs=("commands", "spec"))
def spec_image(ctx: PlanContext) -> Iterator[Finding]:
    """Where the cluster names no image, the workloads run the spec's resources.docker_image or
    base_docker_image: a docker image reference, and only one of the two.

    Cluster::

        docker_image: null

    Fails::

        resources: {docker_image: "gcr.io/p/Image:1"}

    Passes::

        resources: {docker_image: gcr.io/p/image:1}

    At:: gcr.io/p/Image:1
    """
    assert ctx.cluster is not None and ctx.spec is not None
    if ctx.cluster.entry.docker_image or ctx.cluster.entry.base_docker_image:
        return
    r = ctx.spec.resources
    bad = False
    for field in ("docker_image", "base_docker_image"):
        value = getattr(r, field)
        if value is not None and not IMAGE_RE.fullmatch(value):
            bad = True
            yield Finding(f"{value!r} is not a docker image reference ([host/]path[:tag][@digest])",
                          ("resources", field), IMAGE_HINT)
    if not bad and r.docker_image and r.base_docker_image:
        yield Finding("give docker_image or base_docker_image, not both", ("resources", "base_docker_image"))


@rule("DC404", E, "no container image for the workloads", stage="plan", needs=("commands", "spec"),
      hint="Set docker_image (an image with distillc installed) or base_docker_image in the cluster entry or under resources.")
def some_image(ctx: PlanContext) -> Iterator[Finding]:
    """Every workload runs in a container: the cluster's image, or else the spec's
    (resources.docker_image or base_docker_image).

    Cluster::

        docker_image: null

    Fails::

        name: quickstart

    Passes::

        resources: {base_docker_image: gcr.io/p/base:1}

    At:: example: > project
    """
    assert ctx.cluster is not None and ctx.spec is not None
    e, r = ctx.cluster.entry, ctx.spec.resources
    if not (e.docker_image or e.base_docker_image or r.docker_image or r.base_docker_image):
        yield Finding(f"neither cluster '{ctx.cluster.name}' nor the spec's resources name a docker_image or "
                      "base_docker_image", ctx.cluster.path)


@rule("DC405", W, "resources.script_dir is not used by launch", stage="plan", needs=("commands", "spec"),
      hint="Remove resources.script_dir: launch ships its build directory (the compiled configs) as the script dir.")
def script_dir(ctx: PlanContext) -> Iterator[Finding]:
    """`distillc launch` gives xpk its build directory as --script-dir (with base_docker_image), so
    a script_dir written in the spec is not used.

    Fails::

        resources: {script_dir: ./scripts}

    Passes::

        resources: {accelerator: v5p-8}

    At:: script_dir: ./scripts > ./scripts
    """
    assert ctx.spec is not None
    if ctx.spec.resources.script_dir is not None:
        yield Finding("resources.script_dir is ignored: the build directory is the script dir xpk ships",
                      ("resources", "script_dir"))


@rule("DC406", E, "a value cannot reach the container intact", stage="plan", needs=("commands", "image", "plan"),
      hint="Remove the character shown from the value.", targets=("maxtext", "distillc"))  # the example: maxtext's data_dir
def carried_intact(ctx: PlanContext) -> Iterator[Finding]:
    """xpk 1.16 pastes --command into a YAML block inside the JobSet manifest and, on GPU device
    types, also into a double-quoted YAML string: a newline breaks the manifest everywhere, and a
    double quote or a backslash breaks or changes it on GPUs. Values that distillc puts into the
    command are shell-quoted; these characters cannot be quoted around xpk.

    Cluster::

        accelerator: h100-80gb-8

    Fails::

        mode: offline
        loss: {alpha: 0.5}
        offline: {top_k: 8, data_dir: 'gs://b/"k"'}

    Passes::

        mode: offline
        loss: {alpha: 0.5}
        offline: {top_k: 8, data_dir: gs://b/k}

    At:: data_dir: > gs://b/
    """
    from distillc.compiler.launch import command_words

    assert ctx.cluster is not None and ctx.plan is not None and ctx.image is not None
    gpu = ctx.cluster.accelerator.kind == "gpu"
    for workload in ctx.plan.workloads:
        for word, path in command_words(ctx.plan, workload, ctx.target, ctx.image)[1]:
            problem = xpk.command_word(word, gpu)[1]
            if problem is not None:
                p = path or ()
                yield Finding(f"{'.'.join(map(str, p)) or 'a value'} cannot go into xpk's --command: {problem}", p)
