"""The environment as data: model architectures and accelerators, loaded from YAML files.

Rules take these as inputs (axolotl passes GPU capabilities in as a typed object); validation never
probes devices. The files live in catalogs/ beside this module and cite a source for every number.
Parsing them was a tenth of `distillc validate`'s cold start, so each file's entries are cached as
JSON under the user's cache directory (an edited file is parsed afresh), and an entry becomes its
typed model only when something looks it up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

from distillc.runtime.arch import ModelArch

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


class Accelerator(BaseModel):
    """One xpk device type: a slice of `chips` chips on `hosts` hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # built on the first lookup

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
    flag: Literal["tpu-type", "device-type", "none"] = Field(
        description="The xpk flag this name goes in; none: not an xpk device type (local runs only).")
    super_slicing: bool = Field(False, description="xpk caps workload names at 28 chars on these.")
    source: str = ""

    @property
    def local_only(self) -> bool:
        """No xpk device type (flag none): `cpu` and the one-GPU entries run only with `launch --local`,
        on this machine, where local paths are visible."""
        return self.flag == "none"

    @property
    def usable_hbm_bytes(self) -> float:
        return self.hbm_gib * self.usable_hbm_fraction * 2**30


_T = TypeVar("_T", ModelArch, Accelerator)


class Entries(Mapping[str, _T]):
    """Catalog entries by name, each validated into its model on first lookup: a spec names two
    models and one accelerator out of hundreds, and building every entry is most of a catalog's
    load time. Names and `in` need no model; values(), items(), == and `distillc models` build all.

    `read(cached)` gives the catalog file as {"entries": {name: fields}, "shared": [fields, ...]},
    where an entry's "_shared": i stands for the fields shared[i] (an accelerator generation's, once
    for all its sizes). An entry that does not build from the cached copy is read again from the
    YAML file (a damaged cache costs a re-parse, never a crash); one that does not build from the
    file itself is a bug in the catalog, which tests/test_catalog.py builds entry by entry."""

    def __init__(self, cls: type[_T], read: Callable[[bool], dict]) -> None:
        self._cls: type[_T] = cls
        self._read = read
        self._built: dict[str, _T] = {}
        self._from_cache = True
        self._load(read(True))

    def _load(self, doc: dict) -> None:
        self._raw, self._shared = doc["entries"], doc["shared"]

    def _build(self, name: str) -> _T:
        fields = dict(self._raw[name])
        if "_shared" in fields:
            fields = {**self._shared[fields.pop("_shared")], **fields}
        return self._cls(**fields)

    def __getitem__(self, name: str) -> _T:
        if name not in self._built:
            if name not in self._raw:
                raise KeyError(name)
            try:
                self._built[name] = self._build(name)
            except (TypeError, ValueError, IndexError, KeyError):  # pydantic's ValidationError is a ValueError
                if not self._from_cache:
                    raise
                self._from_cache = False
                self._load(self._read(False))
                return self[name]
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw


@dataclass(frozen=True)
class Catalog:
    """The model and accelerator catalogs, by name."""

    models: Entries[ModelArch]
    accelerators: Entries[Accelerator]


CATALOG_DIR = Path(__file__).resolve().parent / "catalogs"  # package data (pyproject.toml: package-data)


def cache_dir() -> Path:
    """Where parsed catalogs are cached: $DISTILLC_CATALOG_CACHE, else $XDG_CACHE_HOME or ~/.cache."""
    explicit = os.environ.get("DISTILLC_CATALOG_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distillc" / "catalogs"


def _module_key() -> bytes:
    """This module's source (it turns files into entries); its version where the source is absent."""
    try:
        return Path(__file__).read_bytes()
    except OSError:  # installed without .py files
        from distillc import __version__

        return __version__.encode()


_MODULE_KEY = _module_key()


def _read(name: str, entries: Callable[[dict], dict], use_cache: bool = True) -> dict:
    """The catalog file `name` as Entries reads it. The result is cached keyed by a digest of the
    file and of this module (which turns the file into entries), so an edit to either is seen."""
    text = (CATALOG_DIR / name).read_text(encoding="utf-8")
    key = hashlib.blake2b(text.encode("utf-8"), digest_size=12)
    key.update(_MODULE_KEY)
    cached = cache_dir() / f"{name}.{key.hexdigest()}.json"
    try:
        out = json.loads(cached.read_text(encoding="utf-8")) if use_cache else None
    except (OSError, ValueError):
        out = None
    if isinstance(out, dict) and isinstance(out.get("entries"), dict) and isinstance(out.get("shared"), list):
        try:
            os.utime(cached)  # recently used: the cleanup keeps the caches still in use
        except OSError:
            pass
        return out
    out = entries(yaml.load(text, Loader=_Loader))
    _write_cache(cached, out)
    return out


KEEP_OTHER_VERSIONS = 2  # the most recently used caches of other versions (installs side by side) stay


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
        others = [p for p in path.parent.glob(f"{stem[0]}.{stem[1]}.*.json") if p != path]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[KEEP_OTHER_VERSIONS:]:  # earlier versions of this file or of distillc
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


def _expand_accelerators(doc: dict) -> dict:
    """Entries are listed per xpk machine type: explicit `sizes`, or TPU `topologies` to derive.
    A generation's own fields are stored once (`shared`), not once per size."""
    out: dict[str, dict] = {}
    shared: list[dict] = []
    for gen in doc["generations"]:
        base = {k: v for k, v in gen.items() if k not in ("sizes", "topologies", "name_format")}
        shared.append(base)
        sizes = gen.get("sizes") or [_tpu_size(t, gen) for t in gen["topologies"]]
        for size in sizes:
            name = size.get("name") or gen["name_format"].format(**{**base, **size})
            if name in out:
                raise ValueError(f"accelerators.yaml: {name} is listed twice")
            out[name] = {"_shared": len(shared) - 1, **{k: v for k, v in size.items() if k != "count"}, "name": name}
    return {"entries": out, "shared": shared}


def _models(doc: dict) -> dict:
    out: dict[str, dict] = {}
    for m in doc["models"]:
        if m["name"] in out:
            raise ValueError(f"models.yaml: {m['name']} is listed twice")
        out[m["name"]] = m
    return {"entries": out, "shared": []}


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    return Catalog(
        models=Entries(ModelArch, lambda cached: _read("models.yaml", _models, cached)),
        accelerators=Entries(Accelerator, lambda cached: _read("accelerators.yaml", _expand_accelerators, cached)),
    )


def model(name: str) -> Optional[ModelArch]:
    return load_catalog().models.get(name)


def accelerator(name: str) -> Optional[Accelerator]:
    return load_catalog().accelerators.get(name)
