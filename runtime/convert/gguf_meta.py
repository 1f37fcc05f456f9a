"""A GGUF file's header (llama.cpp's format) read without numpy or the `gguf` package, and its
architecture checked against a ModelArch.

Why a reader of our own beside `gguf.GGUFReader` (which the runtime loads the weights with): the
package's reader builds numpy arrays for every metadata array (SmolLM2's 49,152 tokens and 48,900
merges: ~2.4 s) and imports numpy, while `distillc validate` must stay fast and import neither. This
reader walks the header with `struct` over a memory map, keeps only the scalar metadata (and the
arrays asked for by name: the tokenizer's), and lists each tensor's name, type, dims and offset, so
the compiler (rule DC183) and the runtime check a file against the spec with the same code, and
the runtime names the first tensor a truncated file lacks.

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata
count; metadata as (string key, u32 type, value); tensor infos as (string name, u32 n_dims, u64
dims[n_dims] (ggml order: dims[0] is the contiguous one), u32 ggml type, u64 offset); then the data,
aligned to `general.alignment` (default 32), each tensor at data start + offset.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from distillc.runtime.arch import ModelArch

MAGIC = b"GGUF"
SUFFIX = ".gguf"
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# the families llama.cpp's "llama" architecture holds (convert_hf_to_gguf.py writes Llama and
# Mistral checkpoints as general.architecture = llama); tiny/inline: hand-described architectures
LLAMA_FAMILIES = ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "mistral", "tiny", "inline")


class GGUFError(ValueError):
    """A GGUF file that is not one, is truncated, or holds what this runtime does not build."""


class GGUFTruncated(GGUFError):
    """The header runs past the bytes given: a truncated file, or (parse_header over a file's first
    bytes) a prefix too short, which a reader by ranges extends."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: `dims` in ggml order (dims[0] contiguous), so the numpy
    shape is dims reversed; `offset` absolute in the file."""

    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    path: str
    version: int
    size: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Cursor:
    """Reads little-endian values from a buffer, raising GGUFError at its end (a truncated header)."""

    def __init__(self, buf: Any, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        if self.pos + n > len(self.buf):
            raise GGUFTruncated(f"{self.path}: truncated GGUF header (at byte {self.pos} of {len(self.buf)})")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFTruncated(f"{self.path}: truncated GGUF header (a {n}-byte string at byte {self.pos})")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool) -> Any:
        """A metadata value of type `kind`; arrays are read in full only when `keep`, else skipped
        (their length is kept, so `len` checks still work)."""
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            elem, count = self.unpack("<I"), self.unpack("<Q")
            if not keep and elem in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[elem])
                return _Skipped(count)
            items = [self.value(elem, keep) for _ in range(count)]
            return items if keep else _Skipped(count)
        raise GGUFError(f"{self.path}: unknown GGUF metadata type {kind} at byte {self.pos}")


@dataclass(frozen=True)
class _Skipped:
    """An array not read (only its length)."""

    count: int

    def __len__(self) -> int:
        return self.count


def read_header(path: str, keep_arrays: Iterable[str] = ()) -> GGUFHeader:
    """The header of the local GGUF file at `path`: its metadata (arrays only those named in
    `keep_arrays`) and its tensors. A file that is not GGUF, or a truncated header, is a GGUFError
    naming the path."""
    keep = set(keep_arrays)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{path}: not a GGUF file ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return parse_header(buf, path, size, keep)
    except OSError as e:
        raise GGUFError(f"{path}: unreadable ({e.strerror or e})") from e


def parse_header(buf: Any, path: str, size: int, keep: Iterable[str] = ()) -> GGUFHeader:
    """The header in `buf`: the whole file (a memory map), or its first bytes (a remote file read by
    ranges: GGUFTruncated when they end inside the header). `size` is the whole file's."""
    keep = set(keep)
    if size < 24:
        raise GGUFError(f"{path}: not a GGUF file ({size} bytes)")
    if bytes(buf[:4]) != MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} is not read (2 and 3 are)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    header = GGUFHeader(path, version, size)
    for _ in range(n_kv):
        key = cur.string()
        header.metadata[key] = cur.value(cur.unpack("<I"), key in keep)
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    align = int(header.metadata.get("general.alignment", 32))
    start = cur.pos + (-cur.pos % align)
    header.tensors = {name: TensorInfo(name, dims, kind, start + off) for name, dims, kind, off in infos}
    return header


def is_gguf_path(path: str) -> bool:
    """What `format` detection calls gguf: a path ending in .gguf."""
    return path.lower().endswith(SUFFIX)


# ----------------------------------------------------------------------------- metadata <-> ModelArch


def _f32(x: float) -> float:
    """`x` rounded to float32: GGUF stores eps and RoPE theta as float32 (1e-5 is 9.99999975e-06)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def gguf_arch_fields(header: GGUFHeader) -> dict[str, Any]:
    """The ModelArch fields a GGUF header determines (llama architecture only: what this runtime
    loads); GGUFError for another architecture or a feature the runtime does not build."""
    arch = header.architecture
    if arch != "llama":
        raise GGUFError(f"{header.path}: general.architecture {arch!r} is not loaded from GGUF by this runtime "
                        "(llama is; convert other models to a Hugging Face directory)")
    m = header.metadata
    scaling = m.get("llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise GGUFError(f"{header.path}: llama.rope.scaling.type {scaling!r} is not built by this runtime")
    if "rope_freqs.weight" in header.tensors:
        raise GGUFError(f"{header.path}: holds rope_freqs.weight (Llama 3.1-style RoPE scaling written as "
                        "frequency factors), which this runtime does not load from GGUF; use the Hugging Face checkpoint")
    try:
        heads = int(m["llama.attention.head_count"])
        emb = int(m["llama.embedding_length"])
        vocab = m.get("llama.vocab_size", m.get("tokenizer.ggml.tokens"))
        if vocab is None:
            raise KeyError("llama.vocab_size")
        head_dim = int(m.get("llama.attention.key_length") or m.get("llama.rope.dimension_count") or emb // heads)
        return dict(
            vocab_size=int(vocab if isinstance(vocab, int) else len(vocab)),
            num_layers=int(m["llama.block_count"]),
            emb_dim=emb,
            num_heads=heads,
            num_kv_heads=int(m.get("llama.attention.head_count_kv") or heads),
            head_dim=head_dim,
            mlp_dim=int(m["llama.feed_forward_length"]),
            norm_eps=float(m["llama.attention.layer_norm_rms_epsilon"]),
            rope_theta=float(m.get("llama.rope.freq_base", 10000.0)),
            rope_scaling=None,
            tie_embeddings="output.weight" not in header.tensors,
            attention_bias="blk.0.attn_q.bias" in header.tensors,
            qk_norm=False,
            activation="silu",
            norm_plus_one=False,
            embed_scale=False,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise GGUFError(f"{header.path}: llama GGUF metadata without a readable {e}") from e


_FLOAT32_FIELDS = ("norm_eps", "rope_theta")


def arch_differences(header: GGUFHeader, arch: ModelArch) -> list[str]:
    """How a GGUF header disagrees with `arch` (family and every field that changes the function,
    named as ModelArch names it); empty when it describes the same model."""
    fields = gguf_arch_fields(header)
    out = []
    if arch.family not in LLAMA_FAMILIES:
        out.append(f"general.architecture 'llama' is not family {arch.family!r}")
    for key, value in fields.items():
        ours = getattr(arch, key)
        same = _f32(ours) == _f32(value) if key in _FLOAT32_FIELDS else ours == value
        if not same:
            out.append(f"{key}: checkpoint {value!r}, model {ours!r}")
    return out


def arch_from_gguf(header: GGUFHeader, name: str) -> ModelArch:
    """The architecture a GGUF header describes (for `distillc logits FILE.gguf` without --model);
    eps and theta rounded back from float32 to the decimal a config would write."""
    fields = gguf_arch_fields(header)
    fields["norm_eps"] = float(f"{fields['norm_eps']:.7g}")
    fields["rope_theta"] = float(f"{fields['rope_theta']:.7g}")
    return ModelArch(name=name, family="llama3", tokenizer=f"gguf:{name}", **fields)


def local_header(path: str, fmt: Optional[str]) -> Optional[GGUFHeader]:
    """The header of an existing local GGUF checkpoint (`fmt` gguf, or None and a .gguf path) for
    the compiler's checks; None for remote paths, missing files (DC180 reports a missing student;
    a teacher's file is fetched before the run, which stops at start, exit 2, without it) and other
    formats. GGUFError when it is unreadable."""
    if "://" in path or not (fmt == "gguf" or (fmt is None and is_gguf_path(path))):
        return None
    if not os.path.isfile(path):
        return None
    return read_header(path)


def local_copy(path: str) -> str:
    """A local file holding the GGUF at `path`: the path itself, or for a remote (gs://) path a copy
    in the temporary directory (GGUF is read through a memory map, so it must be local; the models
    shipped this way are small). GGUFError when it does not exist."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise GGUFError(f"checkpoint {path!r} does not exist (a GGUF checkpoint is one .gguf file)")
        return path
    from etils import epath

    src = epath.Path(path)
    if not src.exists():
        raise GGUFError(f"checkpoint {path!r} does not exist")
    fd, local = tempfile.mkstemp(suffix=SUFFIX, prefix="distillc-")
    with os.fdopen(fd, "wb") as out, src.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 24)
    return local
