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

import atexit
import math
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from distillc.runtime.arch import ModelArch, RopeScaling, local_global_counts

MAGIC = b"GGUF"
FIRST_READ = 1 << 20  # a remote header is read by ranges from 1 MiB, x4 until it is whole
MAX_READ = 256 << 20  # ... up to this: SmolLM2's tokenizer arrays make a ~2.5 MB header, Gemma's ~10 MB
SUFFIX = ".gguf"
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_ALWAYS_KEPT = (".attention.sliding_window_pattern",)  # small arrays (one bool per layer) the checks read


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
        header.metadata[key] = cur.value(cur.unpack("<I"), key in keep or key.endswith(_ALWAYS_KEPT))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
        infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    align = header.metadata.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0:  # 0 would divide by zero below
        raise GGUFError(f"{path}: general.alignment {align!r} is not a positive integer: a damaged GGUF file "
                        "(replace it)")
    start = cur.pos + (-cur.pos % align)
    header.tensors = {name: TensorInfo(name, dims, kind, start + off) for name, dims, kind, off in infos}
    return header


def is_gguf_path(path: str) -> bool:
    """What `format` detection calls gguf: a path ending in .gguf."""
    return path.lower().endswith(SUFFIX)


# ----------------------------------------------------------------------------- metadata <-> ModelArch

# general.architecture -> the catalog families a file of it may hold. llama.cpp's converter writes
# Llama and Mistral checkpoints as `llama` (LlamaModel, q/k permuted), Qwen2.5 as `qwen2` (biases),
# Qwen3 as `qwen3` (q/k norms), and each Gemma as its own architecture. tiny/inline: hand-described
# architectures, which any file may hold (their fields are compared one by one).
GGUF_FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "mistral"),
    "qwen2": ("qwen2.5",),
    "qwen3": ("qwen3",),
    "gemma": ("gemma",),
    "gemma2": ("gemma2",),
    "gemma3": ("gemma3",),
}
ANY_FAMILY = ("tiny", "inline")
GEMMAS = ("gemma", "gemma2", "gemma3")
# llama.cpp's ggml rotates interleaved pairs; its converter permutes q/k only for the archs it
# converts through LlamaModel (convert_hf_to_gguf.py `undo_permute`): here, `llama`
PERMUTED = ("llama",)
# what llama.cpp (src/llama-model.cpp, load_hparams) fixes per architecture instead of reading it:
# the sliding-window pattern (gemma2 every other layer local, gemma3 five local then one global),
# gemma3's local RoPE base 10000, and gemma2/gemma3's query scaling: (emb_dim / heads)^-1/2 for the
# 27B models (recognised by their layer count), head_dim^-1/2 otherwise
_PATTERN = {"gemma2": "1:1", "gemma3": "5:1"}
_LAYERS_27B = {"gemma2": 46, "gemma3": 62}
_SWA_THETA = 10000.0
_SOFTCAP_DEFAULTS = (50.0, 30.0)  # gemma2's attention / final soft-caps when the file has none (llama_hparams)
ROPE_FREQS = "rope_freqs.weight"


def _f32(x: float) -> float:
    """`x` rounded to float32: GGUF stores eps and RoPE theta as float32 (1e-5 is 9.99999975e-06)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def rope_factors(header: GGUFHeader) -> Optional[list[float]]:
    """The per-frequency RoPE divisors of `rope_freqs.weight` (Llama 3.1-style scaling as llama.cpp's
    converter writes it: LlamaModel.generate_extra_tensors), read with `struct`; None without one."""
    t = header.tensors.get(ROPE_FREQS)
    if t is None:
        return None
    if t.ggml_type != 0 or len(t.dims) != 1:
        raise GGUFError(f"{header.path}: {ROPE_FREQS} is not a float32 vector (ggml type {t.ggml_type}, dims {t.dims})")
    n = t.dims[0]
    if t.offset + 4 * n > header.size:
        raise GGUFError(f"{header.path}: truncated: tensor {ROPE_FREQS!r} ends at byte {t.offset + 4 * n} of a "
                        f"{header.size}-byte file")
    with open(header.path, "rb") as f:
        f.seek(t.offset)
        return list(struct.unpack(f"<{n}f", f.read(4 * n)))


def llama3_factors(theta: float, head_dim: int, scaling: RopeScaling) -> list[float]:
    """llama.cpp's `rope_freqs` for Llama 3.1-style scaling: each frequency's divisor (1 for short
    wavelengths, `factor` for long ones, interpolated between), frequencies in float32 as it computes them."""
    assert scaling.low_freq_factor and scaling.high_freq_factor and scaling.original_max_position
    low, high, ctx = scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max_position
    out = []
    for i in range(0, head_dim, 2):
        freq = _f32(1.0 / _f32(_f32(theta) ** _f32(i / head_dim)))
        wavelen = 2 * math.pi / freq
        if wavelen < ctx / high:
            out.append(1.0)
        elif wavelen > ctx / low:
            out.append(scaling.factor)
        else:
            smooth = (ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / scaling.factor + smooth))
    return out


def fit_llama3(factors: list[float], theta: float, head_dim: int, path: str) -> RopeScaling:
    """The llama3 RopeScaling whose factors are `factors`. They fix `factor` (the largest) and, from
    the interpolated band, original_max_position / low_freq_factor and / high_freq_factor only (the
    three scaled together give the same function), so low_freq_factor is taken as 1, Llama 3.x's.
    Fewer than two interpolated frequencies leave the band undetermined: a GGUFError."""
    factor = max(factors)
    points = []
    for i, f in enumerate(factors):
        if 1.0 + 1e-6 < f < factor * (1 - 1e-6):
            omega = theta ** (-(2 * i) / head_dim)
            smooth = (1 / f - 1 / factor) / (1 - 1 / factor)
            points.append((omega / (2 * math.pi), smooth))
    if factor <= 1.0 or len(points) < 2:
        raise GGUFError(f"{path}: {ROPE_FREQS} does not determine the llama3 RoPE scaling ({len(points)} interpolated "
                        "frequencies); name the model (the spec's model, or --model)")
    n = len(points)
    mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
    a = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    b = a * mx - my  # smooth = a * (1 / wavelen) - b, a = ctx / (high - low), b = low / (high - low)
    high = 1.0 + 1.0 / b
    return RopeScaling(kind="llama3", factor=float(f"{factor:.6g}"), low_freq_factor=1.0,
                       high_freq_factor=float(f"{high:.6g}"), original_max_position=int(round(a / b)))


def _key(m: dict[str, Any], arch: str, name: str, default: Any = None) -> Any:
    value = m.get(f"{arch}.{name}", default)
    if isinstance(value, (list, _Skipped)):
        raise GGUFError(f"{arch}.{name} is a per-layer array, which this runtime does not build")
    return value


def _required(m: dict[str, Any], arch: str, name: str) -> Any:
    value = _key(m, arch, name)
    if value is None:
        raise KeyError(f"{arch}.{name}")
    return value


def gguf_arch_fields(header: GGUFHeader) -> dict[str, Any]:
    """The ModelArch fields a GGUF header determines, as llama.cpp reads them: the `{arch}.*`
    metadata, the tensor list (no output.weight: tied; attn_q.bias: biases; attn_q_norm: q/k norms)
    and what llama.cpp fixes per architecture. `rope_scaling` is the string "rope_freqs" when the
    file holds Llama 3.1-style factors (see arch_differences / arch_from_gguf). GGUFError for another
    architecture or a feature the runtime does not build."""
    arch = header.architecture
    if arch not in GGUF_FAMILIES:
        raise GGUFError(f"{header.path}: general.architecture {arch!r} is not loaded from GGUF by this runtime "
                        f"({', '.join(GGUF_FAMILIES)} are); convert the model to a Hugging Face directory")
    m = header.metadata
    try:
        heads = int(_required(m, arch, "attention.head_count"))
        emb = int(_required(m, arch, "embedding_length"))
        vocab = m.get(f"{arch}.vocab_size", m.get("tokenizer.ggml.tokens"))
        if vocab is None:
            raise KeyError(f"{arch}.vocab_size")
        head_dim = int(_key(m, arch, "attention.key_length") or _key(m, arch, "rope.dimension_count") or emb // heads)
        layers = int(_required(m, arch, "block_count"))
        fields: dict[str, Any] = dict(
            vocab_size=int(vocab if isinstance(vocab, int) else len(vocab)),
            num_layers=layers,
            emb_dim=emb,
            num_heads=heads,
            num_kv_heads=int(_key(m, arch, "attention.head_count_kv") or heads),
            head_dim=head_dim,
            mlp_dim=int(_required(m, arch, "feed_forward_length")),
            norm_eps=float(_required(m, arch, "attention.layer_norm_rms_epsilon")),
            rope_theta=float(_key(m, arch, "rope.freq_base", 10000.0)),
            rope_scaling=_scaling(header, arch),
            tie_embeddings="output.weight" not in header.tensors,
            attention_bias="blk.0.attn_q.bias" in header.tensors,
            qk_norm="blk.0.attn_q_norm.weight" in header.tensors,
            activation="gelu_tanh" if arch in GEMMAS else "silu",
            norm_plus_one=arch in GEMMAS,
            embed_scale=arch in GEMMAS,
            post_norms=arch in ("gemma2", "gemma3"),
        )
        if arch in _PATTERN:
            fields.update(_local_global(header, arch, fields))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, GGUFError):
            raise GGUFError(f"{header.path}: {e}") from e
        if isinstance(e, KeyError):
            raise GGUFError(f"{header.path}: {arch} GGUF metadata without a readable {e}") from e
        raise GGUFError(f"{header.path}: {arch} GGUF metadata with a value of the wrong type ({e}): a damaged "
                        "file") from e
    return fields


def _scaling(header: GGUFHeader, arch: str) -> Any:
    """RoPE scaling: `{arch}.rope.scaling.type` linear (its factor), llama3's `rope_freqs` factors
    ("rope_freqs"), or None."""
    kind = _key(header.metadata, arch, "rope.scaling.type")
    has_freqs = ROPE_FREQS in header.tensors
    if has_freqs and arch != "llama":
        raise GGUFError(f"{ROPE_FREQS} in a {arch} file, which llama.cpp does not read")
    if kind in (None, "none"):
        return "rope_freqs" if has_freqs else None
    if kind == "linear" and not has_freqs:
        return RopeScaling(kind="linear", factor=float(f"{_f32(float(_key(header.metadata, arch, 'rope.scaling.factor'))):.7g}"))
    raise GGUFError(f"{arch}.rope.scaling.type {kind!r}{' with ' + ROPE_FREQS if has_freqs else ''} is not built "
                    "by this runtime")


def _local_global(header: GGUFHeader, arch: str, fields: dict[str, Any]) -> dict[str, Any]:
    """gemma2/gemma3's sliding windows, soft-caps, local RoPE base and query scaling, as llama.cpp
    sets them (metadata where it reads any, its fixed values otherwise)."""
    m = header.metadata
    pattern = m.get(f"{arch}.attention.sliding_window_pattern")
    ratio = _PATTERN[arch]
    if pattern is not None:
        period = sum(local_global_counts(ratio))
        expected = [i % period < period - 1 for i in range(fields["num_layers"])]
        if isinstance(pattern, int) and pattern != period or isinstance(pattern, list) and \
                [bool(x) for x in pattern] != expected or isinstance(pattern, _Skipped):
            raise GGUFError(f"{arch}.attention.sliding_window_pattern {pattern!r} is not {arch}'s {ratio} pattern, "
                            "the only one this runtime builds")
    big = fields["num_layers"] == _LAYERS_27B[arch]
    attn_cap, final_cap = _SOFTCAP_DEFAULTS if arch == "gemma2" else (None, None)
    local_theta: Optional[float] = None
    if arch == "gemma3":
        local_theta = float(_key(m, arch, "rope.freq_base_swa", _SWA_THETA))
        if _f32(local_theta) == _f32(fields["rope_theta"]):
            local_theta = None  # one base for every layer
    return dict(
        attention="local_global",
        local_global_ratio=ratio,
        sliding_window=int(_required(m, arch, "attention.sliding_window")),
        query_pre_attn_scalar=float(fields["emb_dim"] // fields["num_heads"] if big else fields["head_dim"]),
        # llama.cpp's gemma3 graph applies no attention soft-cap
        attn_logit_softcap=_opt(_key(m, arch, "attn_logit_softcapping", attn_cap)) if arch == "gemma2" else None,
        final_logit_softcap=_opt(_key(m, arch, "final_logit_softcapping", final_cap)),
        rope_local_theta=local_theta,
    )


def _opt(x: Any) -> Optional[float]:
    return None if x is None or float(x) == 0.0 else float(f"{_f32(float(x)):.7g}")


_FLOAT32_FIELDS = ("norm_eps", "rope_theta", "rope_local_theta")


def _ours(arch: ModelArch, key: str) -> Any:
    """`arch`'s value of a field as the GGUF side states it (query scaling: the effective scalar)."""
    if key == "query_pre_attn_scalar":
        return float(arch.query_pre_attn_scalar or arch.head_dim)
    if key == "rope_local_theta":  # None: the local layers' base is rope_theta
        return None if arch.rope_local_theta in (None, arch.rope_theta) else arch.rope_local_theta
    return getattr(arch, key)


def arch_differences(header: GGUFHeader, arch: ModelArch) -> list[str]:
    """How a GGUF header disagrees with `arch` (family and every field that changes the function,
    named as ModelArch names it); empty when it describes the same model. Llama 3.1-style scaling
    is compared as the factors llama.cpp's converter would write for `arch` (float32 tolerance)."""
    fields = gguf_arch_fields(header)
    out = []
    allowed = GGUF_FAMILIES[header.architecture] + ANY_FAMILY
    if arch.family not in allowed:
        out.append(f"general.architecture {header.architecture!r} is not family {arch.family!r}")
    fields.setdefault("attention", "global")
    for key in ("local_global_ratio", "sliding_window", "query_pre_attn_scalar", "attn_logit_softcap",
                "final_logit_softcap", "rope_local_theta"):
        fields.setdefault(key, None if key != "query_pre_attn_scalar" else float(fields["head_dim"]))
    for key, value in fields.items():
        ours = _ours(arch, key)
        if key == "rope_scaling" and value == "rope_freqs":
            why = _factor_difference(header, arch)
            if why:
                out.append(why)
            continue
        if key == "vocab_size" and value == arch.shared_vocab:
            continue  # a padded model's tokenizer vocabulary: zeros past it (as from Hugging Face)
        if key in ("sliding_window", "local_global_ratio", "rope_local_theta") and fields["attention"] == "global" \
                and arch.attention == "global":
            continue
        if key in _FLOAT32_FIELDS and value is not None and ours is not None:
            same = _f32(ours) == _f32(value)
        elif isinstance(value, float) and isinstance(ours, (int, float)):
            same = _f32(ours) == _f32(value)
        else:
            same = ours == value
        if not same:
            out.append(f"{key}: checkpoint {_show(value)}, model {_show(ours)}")
    return out


def _show(x: Any) -> str:
    if isinstance(x, RopeScaling):
        return repr(x.model_dump(exclude_none=True))
    return repr(x)


def _factor_difference(header: GGUFHeader, arch: ModelArch) -> Optional[str]:
    factors = rope_factors(header) or []
    s = arch.rope_scaling
    if s is None or s.kind != "llama3":
        return f"rope_scaling: checkpoint llama3 ({ROPE_FREQS}), model {_show(s)}"
    if len(factors) != arch.head_dim // 2:
        return f"rope_scaling: checkpoint {ROPE_FREQS} has {len(factors)} factors, model head_dim {arch.head_dim} needs {arch.head_dim // 2}"
    want = llama3_factors(arch.rope_theta, arch.head_dim, s)
    worst = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(factors, want))
    if worst > 1e-5:
        return (f"rope_scaling: checkpoint {ROPE_FREQS} {[round(x, 4) for x in factors]}, model {_show(s)} gives "
                f"{[round(x, 4) for x in want]}")
    return None


def arch_from_gguf(header: GGUFHeader, name: str) -> ModelArch:
    """The architecture a GGUF header describes (for `distillc logits FILE.gguf` without --model);
    eps and theta rounded back from float32 to the decimal a config would write, Llama 3.1-style
    factors fitted (fit_llama3)."""
    fields = gguf_arch_fields(header)
    for key in _FLOAT32_FIELDS:
        if fields.get(key) is not None:
            fields[key] = float(f"{fields[key]:.7g}")
    if fields["rope_scaling"] == "rope_freqs":
        fields["rope_scaling"] = fit_llama3(rope_factors(header) or [], fields["rope_theta"], fields["head_dim"],
                                            header.path)
    family = {"llama": "llama3", "qwen2": "qwen2.5"}.get(header.architecture, header.architecture)
    return ModelArch(name=name, family=family, tokenizer=f"gguf:{name}", **fields)


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


def header_by_ranges(read: Callable[[int, int], bytes], path: str, size: int, keep: Iterable[str] = (),
                     first: int = FIRST_READ, limit: int = MAX_READ) -> Optional[GGUFHeader]:
    """The header of a file read through `read(start, end)` (a remote one): its first bytes from
    `first`, x4 until the header is whole, never its tensor data; None when the header is larger than
    `limit`. GGUFError when it is not GGUF, or the file itself ends inside its header."""
    keep = tuple(keep)
    buf, want = b"", first
    while True:
        buf += read(len(buf), min(want, size))
        try:
            return parse_header(buf, path, size, keep)
        except GGUFTruncated:
            if len(buf) >= size:
                raise
            if want >= limit:
                return None
            want *= 4


def header(path: str, keep_arrays: Iterable[str] = ()) -> GGUFHeader:
    """The header of the GGUF file at `path`, local (a memory map) or remote (gs://, by ranges
    through etils.epath: a tokenizer needs the header, not the weights). GGUFError when it does not
    exist or is not GGUF."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise GGUFError(f"{path!r} does not exist (a GGUF checkpoint is one .gguf file)")
        return read_header(path, keep_arrays)
    from etils import epath

    src = epath.Path(path)
    if not src.exists():
        raise GGUFError(f"{path!r} does not exist")
    with src.open("rb") as f:
        size = f.seek(0, os.SEEK_END)

        def read(start: int, end: int) -> bytes:
            f.seek(start)
            return bytes(f.read(end - start))

        found = header_by_ranges(read, path, size, keep_arrays, first=FIRST_READ)
    if found is None:
        raise GGUFError(f"{path}: its GGUF header is larger than {MAX_READ >> 20} MiB")
    return found


_COPIES: dict[str, str] = {}


def _remove_copies() -> None:
    for local in _COPIES.values():
        try:
            os.unlink(local)
        except OSError:
            pass
    _COPIES.clear()


def local_copy(path: str) -> str:
    """A local file holding the GGUF at `path`: the path itself, or for a remote (gs://) path a copy
    in the temporary directory (GGUF's weights are read through a memory map, so they must be local;
    the models shipped this way are small), made once per process and removed when it exits.
    GGUFError when it does not exist."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise GGUFError(f"checkpoint {path!r} does not exist (a GGUF checkpoint is one .gguf file)")
        return path
    if path in _COPIES and os.path.isfile(_COPIES[path]):
        return _COPIES[path]
    from etils import epath

    src = epath.Path(path)
    if not src.exists():
        raise GGUFError(f"checkpoint {path!r} does not exist")
    if not _COPIES:
        atexit.register(_remove_copies)
    fd, local = tempfile.mkstemp(suffix=SUFFIX, prefix="distillc-")
    _COPIES[path] = local
    with os.fdopen(fd, "wb") as out, src.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 24)
    return local
