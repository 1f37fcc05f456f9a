"""The environment as data: model architectures and accelerators, loaded from YAML files.

Rules take these as inputs (axolotl passes GPU capabilities in as a typed object); validation never
probes devices. The files live in catalogs/ beside this module and cite a source for every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field

from distillc.runtime.config import ModelArch

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
    topology: str = Field(description="e.g. 4x4x4 for TPUs, 1x8 for a GPU node.")
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


def _read(name: str) -> object:
    text = resources.files("distillc.compiler.catalogs").joinpath(name).read_text(encoding="utf-8")
    return yaml.load(text, Loader=_Loader)


def _expand_accelerators(doc: dict) -> dict[str, Accelerator]:
    """Entries are listed per generation with their sizes, as xpk names them."""
    out: dict[str, Accelerator] = {}
    for gen in doc["generations"]:
        base = {k: v for k, v in gen.items() if k not in ("sizes", "name_format")}
        for size in gen["sizes"]:
            fields = {**base, **size}
            fields["name"] = size.get("name") or gen["name_format"].format(**fields)
            fields.pop("count", None)
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
