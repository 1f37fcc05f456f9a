"""GGUF checkpoints (llama.cpp's format: one .gguf file), read through the `gguf` package.

The header is checked first (convert/gguf_meta.py: the architecture against the spec's, every
tensor inside the file), then `gguf.GGUFReader` maps the tensors and `gguf.quants.dequantize`
turns each one's blocks (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants, ...) into float32. Every
parameter is built with `jax.make_array_from_callback` on the run's mesh; a callback dequantizes
only the rows (output features) its device slice needs, since quantization blocks run along a
row: a slice of rows is cheap, a slice of columns costs whole rows. So host memory beyond the model
stays within one tensor's dequantized rows.

Names and layout (ggml's dims are [in, out], so the numpy view is [out, in], as in transformers),
the same for every architecture read (llama, qwen2, qwen3, gemma, gemma2, gemma3: gguf-py's
tensor_mapping names what llama.cpp's converter writes):
  token_embd.weight [V, D] -> embed;  output.weight [V, D] -> lm_head [D, V] (absent when tied)
  output_norm.weight -> final_norm.scale
  blk.N.attn_norm / ffn_norm.weight -> attn_norm / mlp_norm.scale (gemma2/3: ffn_norm is the pre-MLP norm)
  blk.N.post_attention_norm / post_ffw_norm.weight -> post_attn_norm / post_mlp_norm.scale (gemma2/3)
  blk.N.attn_q / attn_k / attn_v.weight [N*hd, D] -> attn.q / k / v [D, N, hd]
  blk.N.attn_q / attn_k / attn_v.bias [N*hd] -> attn.q_bias / k_bias / v_bias [N, hd] (qwen2)
  blk.N.attn_q_norm / attn_k_norm.weight [hd] -> attn.q_norm / k_norm.scale (qwen3, gemma3)
  blk.N.attn_output.weight [D, H*hd] -> attn.o [H, hd, D]
  blk.N.ffn_gate / ffn_up.weight [F, D], ffn_down.weight [D, F] -> mlp.gate / up / down [in, out]
  rope_freqs.weight (llama 3.1-style scaling factors) is checked against the architecture, not loaded.
Two conventions of llama.cpp's converter (convert_hf_to_gguf.py) are undone:
- For `llama` files only (LlamaModel, which also converts Mistral: `undo_permute`), the rows of q and
  k (weights and biases) in each head are reordered from transformers' rotate-half RoPE layout to
  ggml's interleaved pairs:  W.reshape(n_head, 2, hd // 2, D).swapaxes(1, 2)  (n_head_kv heads for k),
  so GGUF row 2*j + t of a head is transformers' row t*hd/2 + j; `Unpermuted` reads it back. The
  qwen2/qwen3/gemma converters write q/k as transformers holds them (llama.cpp rotates those in
  NEOX mode).
- Gemma's norm weights (every `*norm.weight`, the q/k norms of gemma3 included) are written as
  1 + w (GemmaModel / Gemma2Model / Gemma3Model.modify_tensors), ggml's RMSNorm multiplying by the
  weight; this runtime applies gemma norms as (1 + w), so `Shifted` subtracts the 1 again.

Every mistake is a CheckpointError naming the path and the tensor (exit 2): a missing file, a
truncated or corrupt one, a metadata field or a tensor shape that disagrees with the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import jax
import numpy as np

from distillc.runtime.arch import ModelArch
from distillc.runtime.convert import gguf_meta
from distillc.runtime.convert.hf import hf_shape, read_ours, read_padded
from distillc.runtime.convert.layout import tree_leaves, tree_set
from distillc.runtime.train.checkpoints import CheckpointError

# our per-layer path -> (GGUF name suffix, layout kind as convert/hf.py reads it)
LAYER_MAP: dict[tuple[str, ...], tuple[str, str]] = {
    ("attn", "q"): ("attn_q.weight", "in_heads"),
    ("attn", "k"): ("attn_k.weight", "in_heads"),
    ("attn", "v"): ("attn_v.weight", "in_heads"),
    ("attn", "o"): ("attn_output.weight", "out_heads"),
    ("attn", "q_bias"): ("attn_q.bias", "heads"),
    ("attn", "k_bias"): ("attn_k.bias", "heads"),
    ("attn", "v_bias"): ("attn_v.bias", "heads"),
    ("attn", "q_norm", "scale"): ("attn_q_norm.weight", "same"),
    ("attn", "k_norm", "scale"): ("attn_k_norm.weight", "same"),
    ("attn_norm", "scale"): ("attn_norm.weight", "same"),
    ("mlp_norm", "scale"): ("ffn_norm.weight", "same"),
    ("post_attn_norm", "scale"): ("post_attention_norm.weight", "same"),
    ("post_mlp_norm", "scale"): ("post_ffw_norm.weight", "same"),
    ("mlp", "gate"): ("ffn_gate.weight", "transpose"),
    ("mlp", "up"): ("ffn_up.weight", "transpose"),
    ("mlp", "down"): ("ffn_down.weight", "transpose"),
}
TOP_MAP: dict[tuple[str, ...], tuple[str, str]] = {
    ("embed",): ("token_embd.weight", "same"),
    ("final_norm", "scale"): ("output_norm.weight", "same"),
    ("lm_head",): ("output.weight", "transpose"),
}
_PERMUTED_SUFFIXES = ("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")
_CHECKED_ONLY = (gguf_meta.ROPE_FREQS,)  # compared with the architecture by gguf_meta, not a parameter


class Source(Protocol):
    """What convert/hf.read_ours reads from: a named tensor with a numpy shape and a sliced read."""

    @property
    def name(self) -> str: ...

    @property
    def file(self) -> Any: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def read(self, index: tuple[slice, ...] = ()) -> np.ndarray: ...


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file, dequantized to float32 on read. `blocks` is the reader's memory
    map: [rows, bytes per row] for quantized types (rows = the outer dims), the values otherwise."""

    name: str
    file: str
    shape: tuple[int, ...]  # numpy order: ggml dims reversed
    blocks: np.ndarray
    qtype: Any
    dtype: Any = np.float32

    def read(self, index: tuple[slice, ...] = ()) -> np.ndarray:
        """`index` of the tensor (a slice per axis), dequantizing only the rows it selects."""
        from gguf.quants import dequantize

        idx = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
        if len(self.shape) == 1:
            return np.asarray(dequantize(self.blocks[idx[0]], self.qtype), np.float32).reshape(-1)
        rows = self.blocks.reshape(self.shape[0], -1)[idx[0]]
        out = np.asarray(dequantize(rows, self.qtype), np.float32).reshape((-1,) + self.shape[1:])
        return np.ascontiguousarray(out[(slice(None),) + idx[1:]])


@dataclass(frozen=True)
class _View:
    """Another tensor source seen through a transform: its name, file, shape and dtype; `read`
    transforms what `inner` reads."""

    inner: Any

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def file(self) -> str:
        return self.inner.file

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inner.shape

    @property
    def dtype(self) -> Any:
        return self.inner.dtype


@dataclass(frozen=True)
class Unpermuted(_View):
    """A q or k weight with llama.cpp's per-head row permutation undone (see the module docstring).
    Reads must cover whole heads along the rows, as convert/hf.read_ours's `in_heads` reads do."""

    head_dim: int

    def read(self, index: tuple[slice, ...] = ()) -> np.ndarray:
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(self.shape[0])
        hd = self.head_dim
        if start % hd or stop % hd:
            raise ValueError(f"{self.name}: rows {start}:{stop} do not cover whole heads of {hd}")
        x = self.inner.read((slice(start, stop),) + tuple(index[1:]))
        n = (stop - start) // hd
        return x.reshape(n, hd // 2, 2, -1).swapaxes(1, 2).reshape(x.shape)


@dataclass(frozen=True)
class Shifted(_View):
    """A gemma norm weight stored as 1 + w by llama.cpp's converter, read back as w."""

    shift: float

    def read(self, index: tuple[slice, ...] = ()) -> np.ndarray:
        return self.inner.read(index) + np.float32(self.shift)


def is_gguf_checkpoint(path: str) -> bool:
    """What `format` detection calls gguf: a path ending in .gguf (local or remote)."""
    return gguf_meta.is_gguf_path(path)


def local_copy(path: str) -> str:
    """gguf_meta.local_copy, its errors as CheckpointError (exit 2)."""
    try:
        return gguf_meta.local_copy(path)
    except gguf_meta.GGUFError as e:
        raise CheckpointError(str(e)) from e


def _type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type -> (values per block, bytes per block), from the gguf package."""
    from gguf import GGML_QUANT_SIZES

    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def check_extents(header: gguf_meta.GGUFHeader) -> None:
    """Every tensor lies inside the file with a type the gguf package reads: a truncated file is an
    error naming the first tensor past its end."""
    sizes = _type_sizes()
    for t in sorted(header.tensors.values(), key=lambda t: t.offset):
        if t.ggml_type not in sizes:
            raise CheckpointError(f"{header.path}: tensor {t.name!r} has ggml type {t.ggml_type}, which the gguf "
                                  "package does not read")
        per_block, block_bytes = sizes[t.ggml_type]
        n = 1
        for d in t.dims:
            n *= d
        if t.dims and t.dims[0] % per_block:
            raise CheckpointError(f"{header.path}: tensor {t.name!r}: {t.dims[0]} values per row is not a "
                                  f"multiple of its block size {per_block}")
        end = t.offset + n // per_block * block_bytes
        if end > header.size:
            raise CheckpointError(f"{header.path}: truncated: tensor {t.name!r} ends at byte {end} of a "
                                  f"{header.size}-byte file")


class GGUFCheckpoint:
    """A GGUF file: its header (checked) and each tensor, mapped by `gguf.GGUFReader`."""

    def __init__(self, path: str):
        self.path = path
        local = local_copy(path)
        try:
            self.header = gguf_meta.read_header(local)
        except gguf_meta.GGUFError as e:
            raise CheckpointError(str(e)) from e
        check_extents(self.header)
        from gguf import GGUFReader

        try:
            reader = GGUFReader(local)
        except (ValueError, IndexError, OSError) as e:  # the reader's own checks of a corrupt file
            raise CheckpointError(f"{path}: corrupt GGUF file ({e})") from e
        self.tensors: dict[str, GGUFTensor] = {
            t.name: GGUFTensor(t.name, path, tuple(int(d) for d in reversed(t.shape)), t.data, t.tensor_type)
            for t in reader.tensors}

    def tensor(self, name: str) -> GGUFTensor:
        if name not in self.tensors:
            raise CheckpointError(f"checkpoint {self.path!r} has no tensor {name!r}")
        return self.tensors[name]


def gguf_names(abstract: dict) -> list[tuple[tuple, Optional[int], str, str]]:
    """(our path, layer or None for a stacked leaf, GGUF name or {i} template, kind) of every leaf of
    a pure-dict parameter tree (scanned or not)."""
    out: list[tuple[tuple, Optional[int], str, str]] = []
    for path, _ in tree_leaves(abstract):
        if path[0] != "layers":
            name, kind = TOP_MAP[path]
            out.append((path, None, name, kind))
        elif isinstance(path[1], int) or str(path[1]).isdigit():
            suffix, kind = LAYER_MAP[path[2:]]
            out.append((path, int(path[1]), f"blk.{int(path[1])}.{suffix}", kind))
        else:
            suffix, kind = LAYER_MAP[path[1:]]
            out.append((path, None, "blk.{i}." + suffix, kind))
    return out


def load_gguf_params(path: str, arch: ModelArch, abstract: dict) -> dict:
    """Our pure-dict parameter tree, read from the GGUF file at `path` onto the shardings and
    dtypes of `abstract` (a pure dict of ShapeDtypeStructs with shardings, scanned or not)."""
    ckpt = GGUFCheckpoint(path)
    try:
        why = gguf_meta.arch_differences(ckpt.header, arch)
    except gguf_meta.GGUFError as e:
        raise CheckpointError(str(e)) from e
    if why:
        raise CheckpointError(f"checkpoint {path!r} does not match {arch.name}: " + "; ".join(why))
    leaves = dict(tree_leaves(abstract))
    out: dict = {}
    used: set[str] = set()
    for our, _, name, kind in gguf_names(abstract):
        leaf = leaves[our]
        stacked = "{i}" in name
        shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
        names = [name.format(i=i) for i in range(leaf.shape[0])] if stacked else [name]
        sources: list[Source] = []
        vocab = our in (("embed",), ("lm_head",))
        for n in names:
            t = ckpt.tensor(n)
            padded = vocab and t.shape == hf_shape(kind, _rows(shape, our, arch.shared_vocab))
            if t.shape != hf_shape(kind, shape) and not padded:
                raise CheckpointError(f"{path}: tensor {n!r} has shape {t.shape}; {arch.name} needs {hf_shape(kind, shape)}")
            sources.append(_source(t, ckpt.header.architecture, arch.head_dim))
        used.update(names)
        tree_set(out, our, _make(leaf, sources, kind, shape, stacked))
    extra = sorted(ckpt.tensors.keys() - used - set(_CHECKED_ONLY))
    if extra:
        raise CheckpointError(f"checkpoint {path!r} holds {len(extra)} tensor(s) {arch.name} has no place for, "
                              f"e.g. {', '.join(extra[:3])}")
    return out


def _rows(shape: tuple[int, ...], our: tuple, rows: int) -> tuple[int, ...]:
    """`shape` of the embedding ([V, D]) or head ([D, V]) with `rows` vocabulary entries."""
    return (rows,) + shape[1:] if our == ("embed",) else shape[:-1] + (rows,)


def _source(t: GGUFTensor, gguf_arch: str, head_dim: int) -> Source:
    """`t` with llama.cpp's converter conventions undone: q/k rows unpermuted (llama), gemma norms - 1."""
    if gguf_arch in gguf_meta.PERMUTED and t.name.endswith(_PERMUTED_SUFFIXES):
        return Unpermuted(t, head_dim)
    if gguf_arch in gguf_meta.GEMMAS and t.name.endswith("norm.weight"):
        return Shifted(t, -1.0)
    return t


def _make(leaf: Any, sources: list[Source], kind: str, shape: tuple[int, ...], stacked: bool) -> jax.Array:
    """One parameter on its sharding, each device's slice read (and dequantized) by its callback; an
    embedding or head with fewer vocabulary rows than the model (gemma's padded 256128 over the
    file's 256000) reads zeros past them, as from Hugging Face (convert/hf.read_padded)."""
    dtype = leaf.dtype
    padded = not stacked and len(shape) == 2 and hf_shape(kind, shape) != sources[0].shape

    def cb(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index)
        if padded:
            return read_padded(sources[0], kind, shape, index, 0 if kind == "same" else 1).astype(dtype)  # type: ignore[arg-type]
        if not stacked:
            return read_ours(sources[0], kind, shape, index[: len(shape)]).astype(dtype)  # type: ignore[arg-type]
        layers = range(*index[0].indices(len(sources)))
        return np.stack([read_ours(sources[i], kind, shape, index[1:]).astype(dtype)  # type: ignore[arg-type]
                         for i in layers])

    make: Callable = jax.make_array_from_callback
    return make(tuple(leaf.shape), leaf.sharding, cb)
