"""The clusters file: named xpk targets (`distillc launch spec.yaml --cluster v5p`).

Looked up as `--clusters FILE`, then ./clusters.yaml, then clusters.yaml in the user config
directory (platformdirs: ~/.config/distillc on Linux). It is loaded with the spec loader, so every
problem is a Diagnostic with file:line:col; values that xpk would pass to a shell or reject
(project, zone, names, image references, environment names) are checked here, once, against the
forms xpk and GCP accept.

    version: 1
    clusters:
      v5p:
        project: my-project
        zone: us-east5-a
        cluster: v5p-cluster            # the xpk (GKE) cluster name
        accelerator: v5p-128            # xpk device type: --tpu-type / --device-type
        num_slices: 1
        docker_image: gcr.io/my-project/distillc:0.1.0   # or base_docker_image (+ the build dir)
        priority: medium                # very-low | low | medium | high | very-high
        max_restarts: 3
        restart_on_exit_codes: [42]     # added to xpk's own (42 and 127-255)
        env: {JAX_TRACEBACK_FILTERING: "off"}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillc.compiler.catalog import Accelerator, load_catalog
from distillc.compiler.diagnostics import Diagnostic, KeyPath
from distillc.compiler.loader import Loaded, SourceMap, load_file
from distillc.compiler.parse import did_you_mean, expected_message, yaml_repr
from distillc.compiler.registry import Target, make

FILE_NAME = "clusters.yaml"
APP_NAME = "distillc"

Priority = Literal["very-low", "low", "medium", "high", "very-high"]

# GCP project ids (optionally domain-scoped, example.com:my-project) and zones (us-central1-a).
PROJECT_RE = re.compile(r"(?:[a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")
ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
# A docker image reference: [host[:port]/]path[:tag][@digest] (the distribution reference grammar).
_HOST = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_RE = re.compile(
    rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Model(BaseModel):
    # strict like the spec: `num_slices: true` is not 1 slice; no inf/nan
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ClusterEntry(_Model):
    project: str = Field(description="GCP project id.")
    zone: str = Field(description="Zone of the cluster, e.g. us-central1-a.")
    cluster: str = Field(description="xpk cluster name.")
    accelerator: str = Field(description="xpk device type, e.g. v5p-128 or h100-80gb-8.")
    num_slices: int = Field(1, gt=0)
    docker_image: Optional[str] = Field(None, description="An image with distillc installed, used as is.")
    base_docker_image: Optional[str] = Field(None, description="xpk layers the build directory onto it.")
    priority: Priority = "medium"
    max_restarts: int = Field(0, ge=0, description="JobSet restarts on failure.")
    restart_on_exit_codes: list[int] = Field(default_factory=list, description="Extra exit codes that restart.")
    env: dict[str, str] = Field(default_factory=dict, description="Container environment (Kubernetes $(VAR) syntax applies).")


class ClustersDoc(_Model):
    """The file's shape; each entry is validated on its own, so one bad entry does not block another."""

    version: Literal[1] = 1
    clusters: dict[str, Any] = Field(min_length=1)


@dataclass(frozen=True)
class Cluster:
    """One entry, bound to the catalog, with where it came from (for diagnostics)."""

    name: str
    entry: ClusterEntry
    accelerator: Accelerator
    source: SourceMap

    @property
    def path(self) -> KeyPath:
        return ("clusters", self.name)

    def span_of(self, field: str):
        return self.source.span((*self.path, field))


class ClustersNotFound(Exception):
    """No clusters file anywhere on the search path (a usage problem: exit 2)."""


class UnknownCluster(Exception):
    """--cluster names no entry (a usage problem: exit 2)."""


def user_config_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def search_path(explicit: Optional[Path] = None, cwd: Optional[Path] = None, config_dir: Optional[Path] = None) -> list[Path]:
    """Where a clusters file is looked for, in order."""
    if explicit is not None:
        return [explicit]
    here = Path(cwd) / FILE_NAME if cwd is not None else Path(FILE_NAME)  # relative: diagnostics say clusters.yaml:7
    return [here, (config_dir or user_config_dir()) / FILE_NAME]


def find_clusters_file(explicit: Optional[Path] = None, cwd: Optional[Path] = None, config_dir: Optional[Path] = None) -> Path:
    """The first existing file on the search path; an explicit --clusters FILE must exist."""
    candidates = search_path(explicit, cwd, config_dir)
    if explicit is not None:
        return explicit  # load_file reports a missing or unreadable file itself
    for p in candidates:
        if p.is_file():
            return p
    raise ClustersNotFound(
        "no clusters file: pass --clusters FILE, or create " + " or ".join(str(p) for p in candidates)
        + " (see specs/clusters.yaml)"
    )


def _diag(code: str, message: str, path: KeyPath, source: SourceMap, hint: Optional[str] = None, key: bool = False) -> Diagnostic:
    span = source.key_span(path) if key else source.span(path)
    return make(code, message, path=path, span=span, file=source.file, hint=hint)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) >= 2 and loc[0] == "clusters":
        return list(ClusterEntry.model_fields)
    return list(ClustersDoc.model_fields)


def _schema_diags(exc: ValidationError, source: SourceMap, prefix: KeyPath = ()) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for err in exc.errors():
        loc = (*prefix, *err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _fields_at(loc[:-1])
            hint = did_you_mean(str(loc[-1]), known) or f"known keys here: {', '.join(known)}"
            out.append(_diag("DC010", f"unknown key '{loc[-1]}'", loc, source, hint, key=True))
        elif kind == "missing":
            out.append(_diag("DC012", f"missing required key '{loc[-1]}'", loc, source, "Every cluster entry needs project, zone, cluster and accelerator."))
        else:
            value = err.get("input")
            shown = "" if isinstance(value, (dict, list)) else f" (got {yaml_repr(value)})"
            hint = 'Environment values are strings: quote them ("0.92", "true").' if "env" in loc[:-1] else ""
            if not loc:
                message, hint = "a clusters file is a mapping with the key 'clusters'", "Start from specs/clusters.yaml."
            elif len(loc) == 2 and loc[0] == "clusters" and kind in ("model_type", "dict_type", "model_attributes_type"):
                message = f"expected the mapping of cluster '{loc[1]}' (project, zone, cluster, accelerator, ...)"
            else:
                message = expected_message(str(loc[0]), loc[1:], err)
            out.append(_diag("DC011", f"{message}{shown}", loc, source, hint))
    return out


IMAGE_HINT = "Use a docker image reference: [host/]path[:tag][@digest], e.g. us-docker.pkg.dev/my-project/repo/image:0.1.0."
CONFIG_ENV = "DISTILLC_CONFIG_B64"
# Environment variables distillc sets on every workload itself: a cluster's env may not name them
# (xpk would get two --env flags for one name, and which one wins is up to Kubernetes).
RESERVED_ENV = {CONFIG_ENV: "the compiled config, base64, in docker_image mode"}


@dataclass(frozen=True)
class ClusterContext:
    """What a cluster rule (rules/cluster.py) reads: one entry of the clusters file, its positions,
    and its accelerator's catalog entry (None when the catalog has no such name: DC014)."""

    name: str
    entry: ClusterEntry
    source: SourceMap
    accelerator: Optional[Accelerator]
    target: Target = "distillc"  # a clusters file serves every target

    @property
    def path(self) -> KeyPath:
        return ("clusters", self.name)

    def get(self, name: str) -> Any:
        return getattr(self, name)

    def source_for(self, path: KeyPath) -> SourceMap:
        return self.source


def check_entry(name: str, entry: ClusterEntry, source: SourceMap) -> list[Diagnostic]:
    """The cluster rules over one entry: the values xpk would reject or pass to a shell, and an
    accelerator xpk cannot launch (DC402, DC403), with their positions."""
    from distillc.compiler.check import run_stage

    ctx = ClusterContext(name, entry, source, load_catalog().accelerators.get(entry.accelerator))
    return run_stage(ctx, "cluster")


def load_clusters(loaded: Loaded) -> tuple[dict[str, Optional[ClusterEntry]], list[Diagnostic]]:
    """Parse a loaded clusters file: each entry (None where it failed) and every problem found."""
    diags = list(loaded.diagnostics)
    if loaded.data is None or not loaded.ok:
        return {}, diags
    try:
        doc = ClustersDoc.model_validate(loaded.data)
    except ValidationError as exc:
        return {}, diags + _schema_diags(exc, loaded.source)
    entries: dict[str, Optional[ClusterEntry]] = {}
    for name, raw in doc.clusters.items():
        try:
            entry = ClusterEntry.model_validate(raw)
        except ValidationError as exc:
            entries[name] = None
            diags += _schema_diags(exc, loaded.source, prefix=("clusters", name))
            continue
        entries[name] = entry
        diags += check_entry(name, entry, loaded.source)
    return entries, diags


def select_entry(entries: dict[str, Optional[ClusterEntry]], name: str, source: SourceMap) -> tuple[Optional[Cluster], list[Diagnostic]]:
    """The entry named `name`, bound to the accelerator catalog. Raises UnknownCluster."""
    if name not in entries:
        names = ", ".join(sorted(entries))
        hint = did_you_mean(name, entries)
        raise UnknownCluster(f"{source.file} has no cluster '{name}'" + (f"; {hint}" if hint else "") + f" (clusters: {names})")
    entry = entries[name]
    if entry is None:
        return None, []
    catalog = load_catalog()
    acc = catalog.accelerators.get(entry.accelerator)
    path = ("clusters", name, "accelerator")
    if acc is None:
        hint = did_you_mean(entry.accelerator, catalog.accelerators) or "run `distillc accelerators` for the catalog"
        return None, [_diag("DC014", f"unknown accelerator '{entry.accelerator}'", path, source, hint)]
    if acc.flag == "none":  # DC403 (a cluster rule) says so; --ignore cannot make it launchable
        return None, []
    return Cluster(name, entry, acc, source), []


def load_cluster(
    name: str, explicit: Optional[Path] = None, cwd: Optional[Path] = None, config_dir: Optional[Path] = None,
    select: Sequence[str] = (), ignore: Sequence[str] = (),
) -> tuple[Optional[Cluster], list[Diagnostic], SourceMap]:
    """Find, load, check and select in one call. Raises LoadError, ClustersNotFound or
    UnknownCluster for usage problems; returns the problems of the file itself and of the chosen
    entry (not of the other entries) as diagnostics with positions, less the codes `select` /
    `ignore` leave out (check.shown)."""
    from distillc.compiler.check import shown

    loaded = load_file(find_clusters_file(explicit, cwd, config_dir))
    entries, diags = load_clusters(loaded)
    if not entries:
        return None, shown(diags, select, ignore, stopped=True), loaded.source
    cluster, more = select_entry(entries, name, loaded.source)
    mine = shown([d for d in diags if len(d.path) < 2 or d.path[0] != "clusters" or d.path[1] == name] + more,
                 select, ignore, stopped=cluster is None)
    return (cluster if not any(d.is_error for d in mine) else None), mine, loaded.source
