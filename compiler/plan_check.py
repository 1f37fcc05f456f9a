"""The post-plan check stage: rules over the resolved plan, the spec it came from and its cluster.

`distillc plan` and `distillc launch` run it after resolve: the cluster notes (DC400, DC401),
what the xpk commands and the container can carry (DC402 for the spec's image, DC404-DC406,
rules/launch.py), and what the pinned MaxText version can express (DC420-DC432,
rules/maxtext.py). The rules read a PlanContext and never change the plan; severity, --select /
--ignore, `distillc rules` and `distillc explain` work as for the spec rules (registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from distillc.compiler import xpk
from distillc.compiler.clusters import IMAGE_RE, Cluster
from distillc.compiler.diagnostics import Diagnostic, KeyPath
from distillc.compiler.loader import SourceMap
from distillc.compiler.maxtext import MaxTextVersion, version_of
from distillc.compiler.registry import Target
from distillc.compiler.resolve import Plan
from distillc.compiler.spec import Resources, Spec


@dataclass(frozen=True)
class PlanContext:
    """What a plan rule reads. `spec` and `plan` are None when the spec has errors (no plan is
    made; the rules that need them are skipped, the cluster notes still say what the cluster
    changed); `resources` is the spec's parsed resources section (None when it failed to parse).
    `cluster` is the clusters-file entry the run gets (None for `plan` without --cluster and for
    --local); `written_slices` is resources.num_slices as the file says (the checked spec carries
    the cluster's); `render` is set when `launch` makes artifacts, not for `plan`."""

    spec: Optional[Spec]
    plan: Optional[Plan]
    resources: Optional[Resources]
    source: SourceMap
    target: Target
    cluster: Optional[Cluster] = None
    written_slices: int = 1
    render: bool = False

    def get(self, name: str) -> Any:
        """A rule's `needs`: 'cluster'; 'artifacts' (launch renders them); 'commands' (launch
        builds xpk commands: a cluster, not --local); 'image' (the workloads' image, when valid)."""
        if name == "artifacts":
            return True if self.render else None
        if name == "commands":
            return True if self.render and self.cluster is not None else None
        if name == "image":
            return self.image
        return getattr(self, name)

    def source_for(self, path: KeyPath) -> SourceMap:
        """A finding under `clusters` points into the clusters file, any other into the spec."""
        if self.cluster is not None and path[:1] == ("clusters",):
            return self.cluster.source
        return self.source

    @property
    def image(self) -> Optional[xpk.Image]:
        if self.cluster is None or self.spec is None:
            return None
        return image_for(self.cluster, self.spec.resources)

    @property
    def maxtext_version(self) -> Optional[MaxTextVersion]:
        """The MaxText release spec.maxtext.version names (None when distillc does not know it)."""
        return version_of(self.spec.maxtext.version) if self.spec is not None else None


def image_for(cluster: Cluster, resources: Resources) -> Optional[xpk.Image]:
    """The workloads' image: the cluster's when it names one, else the spec's; None when neither
    names one or the spec's is not a usable reference (DC402, DC404 say which)."""
    e = cluster.entry
    if e.docker_image:
        return xpk.Image("docker_image", e.docker_image)
    if e.base_docker_image:
        return xpk.Image("base_docker_image", e.base_docker_image)
    refs = (resources.docker_image, resources.base_docker_image)
    if any(r is not None and not IMAGE_RE.fullmatch(r) for r in refs) or all(refs):
        return None
    if resources.docker_image:
        return xpk.Image("docker_image", resources.docker_image)
    if resources.base_docker_image:
        return xpk.Image("base_docker_image", resources.base_docker_image)
    return None


def check_plan(ctx: PlanContext, select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Diagnostic]:
    """Every plan rule over `ctx` (check.run_stage), less the codes --select/--ignore leave out."""
    from distillc.compiler.check import run_stage

    return run_stage(ctx, "plan", select, ignore)
