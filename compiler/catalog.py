"""The environment as data: model architectures and accelerators, loaded from YAML files.

Rules take these as inputs (axolotl passes GPU capabilities in as a typed object); validation never
probes devices. The files live in catalogs/ beside this module and cite a source for every number.
Parsing them is a tenth of `distillc validate`'s cold start, so each parsed file is cached as JSON
under the user's cache directory, keyed by a digest of its text (an edited file is parsed afresh).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from distillc.runtime.arch import ModelArch

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


class Accelerator(BaseModel):
    """One xpk device type: a slice of `chips` chips on `hosts` hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="xpk device name (--tpu-type / --device-type), e.g. v5p-128.")
    kind: Literal["tpu", "gpu", "cpu"]
    generation: str = Field(description="v4, v5e, v5p, v6e, h100, h200, b200, a100, cpu")
    chips: int = Field(gt=0, description="Chips (GPUs) per slice.")
    hosts: int = Field(gt=0, description="VMs per slice.")
    chips_per_host: int = Field(gt=0)
    topology: str = Field(description="xpk's: e.g. 4x4x4 for TPUs; N/A for single-VM GPU types, 1x72 for gb200.")
    cores_per_chip: int = Field(1, gt=0, description="TensorCores per chip: v4/v5p/tpu7x names count cores.")
    hbm_gib: float = Field(gt=0, description="HBM per chip in GiB.")
    usable_hbm_fraction: float = Field(0.9, gt=0, le=1, description="What XLA can give a program.")
    peak_bf16_tflops: float = Field(gt=0, description="Dense bf16 peak per chip.")
    flag: Literal["tpu-type", "device-type", "none"] = Field(description="The xpk flag this name goes in.")
    super_slicing: bool = Field(False, description="xpk caps workload names at 28 chars on these.")
    source: str = ""

    @property
    def usable_hbm_bytes(self) -> float:
        return self.hbm_gib * self.usable_hbm_fraction * 2**30


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelArch]
    accelerators: dict[str, Accelerator]


CATALOG_DIR = Path(__file__).resolve().parent / "catalogs"  # package data (pyproject.toml: package-data)


def cache_dir() -> Path:
    """Where parsed catalogs are cached: $DISTILLC_CATALOG_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    explicit = os.environ.get("DISTILLC_CATALOG_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillc" / "catalogs"


def _read(name: str) -> object:
    text = (CATALOG_DIR / name).read_text(encoding="utf-8")
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()
    cached = cache_dir() / f"{name}.{digest}.json"
    try:
        return json.loads(cached.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    doc = yaml.load(text, Loader=_Loader)
    _write_cache(cached, doc)
    return doc


def _write_cache(path: Path, doc: object) -> None:
    """Best effort and atomic (a temporary file renamed): a read-only home only costs the speed-up."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        stem = path.name.split(".", 2)
        for old in path.parent.glob(f"{stem[0]}.{stem[1]}.*.json"):  # earlier versions of this file
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass


def _tpu_size(topology: str, gen: dict) -> dict:
    """A TPU size from its xpk topology, by xpk's rule: the name counts chips * cores_per_chip."""
    chips = math.prod(int(d) for d in topology.split("x"))
    hosts, rest = divmod(chips, gen["chips_per_host"])
    if rest or not hosts:
        raise ValueError(f"accelerators.yaml: {topology} is not whole hosts of {gen['chips_per_host']} chips")
    return {"topology": topology, "chips": chips, "hosts": hosts, "count": chips * gen.get("cores_per_chip", 1)}


def _expand_accelerators(doc: dict) -> dict[str, Accelerator]:
    """Entries are listed per xpk machine type: explicit `sizes`, or TPU `topologies` to derive."""
    out: dict[str, Accelerator] = {}
    for gen in doc["generations"]:
        base = {k: v for k, v in gen.items() if k not in ("sizes", "topologies", "name_format")}
        sizes = gen.get("sizes") or [_tpu_size(t, gen) for t in gen["topologies"]]
        for size in sizes:
            fields = {**base, **size}
            fields["name"] = size.get("name") or gen["name_format"].format(**fields)
            fields.pop("count", None)
            if fields["name"] in out:
                raise ValueError(f"accelerators.yaml: {fields['name']} is listed twice")
            out[fields["name"]] = Accelerator(**fields)
    return out


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    models_doc = _read("models.yaml")
    models = {m["name"]: ModelArch(**m) for m in models_doc["models"]}  # type: ignore[index]
    accelerators = _expand_accelerators(_read("accelerators.yaml"))  # type: ignore[arg-type]
    return Catalog(models=models, accelerators=accelerators)


def model(name: str) -> Optional[ModelArch]:
    return load_catalog().models.get(name)


def accelerator(name: str) -> Optional[Accelerator]:
    return load_catalog().accelerators.get(name)
