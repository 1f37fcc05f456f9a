"""Cluster rules (DC402, DC403): one entry of the clusters file, before any spec is read.

Each reads a clusters.ClusterContext. Their examples are clusters-file entries (`Fails::` /
`Passes::`, merged onto the entry `example` of tests/fixtures/clusters.yaml); `At::` is where
the failing one is reported in that file. `distillc validate clusters.yaml` runs them over every
entry, `distillc launch --cluster NAME` over the entry it launches on.
"""

from __future__ import annotations

import functools
from typing import Iterator

from distillc.compiler import naming
from distillc.compiler.clusters import ENV_NAME_RE, IMAGE_HINT, IMAGE_RE, PROJECT_RE, RESERVED_ENV, ZONE_RE, ClusterContext
from distillc.compiler.diagnostics import Severity
from distillc.compiler.registry import Finding, rule

E = Severity.ERROR
# DC402's three checks share one registration (code, severity, title, stage)
DC402 = functools.partial(rule, "DC402", E, "a cluster entry value xpk cannot take", stage="cluster", needs=())


@DC402(hint="Use the form shown: a GCP project id, a zone such as us-central1-a, an xpk name, a docker image reference.")
def where_it_runs(ctx: ClusterContext) -> Iterator[Finding]:
    """xpk interpolates project, zone, cluster, image and names into gcloud and kubectl command lines
    it runs through a shell, and checks names against [a-z]([-a-z0-9]*[a-z0-9])?; a value outside
    these forms either fails inside xpk or changes the command it runs. The project must be a GCP
    project id, the zone a zone (not a region), the cluster an xpk name.

    Fails::

        zone: us-central1

    Passes::

        zone: us-central1-a

    At:: zone: us-central1 > us-central1
    """
    e = ctx.entry
    if not PROJECT_RE.fullmatch(e.project):
        yield Finding(f"{e.project!r} is not a GCP project id (6-30 of a-z, 0-9, '-', starting with a letter)",
                      (*ctx.path, "project"),
                      "Use the GCP project id (not its display name): 6-30 characters of a-z, 0-9 and '-', starting with a letter, e.g. my-tpu-project.")
    if not ZONE_RE.fullmatch(e.zone):
        yield Finding(f"{e.zone!r} is not a GCP zone such as us-central1-a", (*ctx.path, "zone"),
                      "Use a GCP zone: region plus zone letter, e.g. us-central1-a (not a region such as us-central1).")
    if not naming.is_valid_workload_name(e.cluster):
        why = naming.name_problem(e.cluster) or f"it is longer than {naming.MAX_WORKLOAD_NAME} characters"
        yield Finding(f"xpk rejects the cluster name {e.cluster!r}: {why}", (*ctx.path, "cluster"),
                      f"xpk names match {naming.WORKLOAD_NAME_PATTERN}, <= 40 characters")


@DC402()
def cluster_image(ctx: ClusterContext) -> Iterator[Finding]:
    """A cluster's image is a docker image reference ([host/]path[:tag][@digest]), and it names one
    image: docker_image (used as is) or base_docker_image (xpk layers the build directory onto it).

    Fails::

        docker_image: My Image

    Passes::

        docker_image: us-docker.pkg.dev/my-project/distillc/distillc:0.1.0

    At:: My Image
    """
    e = ctx.entry
    for field in ("docker_image", "base_docker_image"):
        value = getattr(e, field)
        if value is not None and not IMAGE_RE.fullmatch(value):
            yield Finding(f"{value!r} is not a docker image reference ([host/]path[:tag][@digest])",
                          (*ctx.path, field), IMAGE_HINT)
    if e.docker_image and e.base_docker_image:
        yield Finding("give docker_image or base_docker_image, not both", (*ctx.path, "base_docker_image"),
                      "docker_image is used as is; base_docker_image gets the build directory layered on by xpk")


@DC402()
def restarts_and_env(ctx: ClusterContext) -> Iterator[Finding]:
    """Restart exit codes are process exit codes (0-255); env keys are environment variable names,
    and not one distillc sets on every workload itself (xpk would get two --env flags for one name,
    and which one wins is up to Kubernetes).

    Fails::

        env: {DISTILLC_CONFIG_B64: abc}

    Passes::

        env: {JAX_TRACEBACK_FILTERING: "off"}

    At:: DISTILLC_CONFIG_B64
    """
    for i, code in enumerate(ctx.entry.restart_on_exit_codes):
        if not 0 <= code <= 255:
            yield Finding(f"exit code {code} is outside 0-255", (*ctx.path, "restart_on_exit_codes", i),
                          "Use process exit codes between 0 and 255, e.g. [1, 139].")
    for key in ctx.entry.env:
        if not ENV_NAME_RE.fullmatch(key):
            yield Finding(f"{key!r} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)", (*ctx.path, "env", key),
                          "Use an environment variable name: a letter or '_', then letters, digits and '_'.", key=True)
        elif key in RESERVED_ENV:
            yield Finding(f"{key} is set by distillc itself ({RESERVED_ENV[key]}); a cluster cannot set it",
                          (*ctx.path, "env", key), f"Remove {key} from the cluster's env.", key=True)


@rule("DC403", E, "the accelerator cannot be launched with xpk", stage="cluster", needs=("accelerator",),
      hint="Pick an xpk device type (`distillc accelerators`), or run locally with `distillc launch --local`.")
def xpk_device(ctx: ClusterContext) -> Iterator[Finding]:
    """A cluster runs xpk workloads, so its accelerator is an xpk device type (a TPU type such as
    v5p-128, or a GPU machine such as h100-80gb-8); the catalog's `cpu` and one-GPU entries
    (`h100-80gb-1`, ...) have none and run only with `distillc launch --local`.

    Fails::

        accelerator: cpu

    Passes::

        accelerator: v5p-8

    At:: accelerator: cpu > cpu
    """
    acc = ctx.accelerator
    if acc is not None and acc.local_only:
        yield Finding(f"'{acc.name}' is not an xpk device type", (*ctx.path, "accelerator"))
