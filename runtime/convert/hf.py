"""Hugging Face checkpoints: a directory with config.json and *.safetensors (one file, or shards
named by model.safetensors.index.json), local or gs:// (etils.epath).

Loading is streamed and sharded: every parameter is built with `jax.make_array_from_callback` on
the run's mesh, and the callback reads from the safetensors file only the slice one device holds
(a memory map for local files), transposed into this runtime's layout there. No host holds the
whole model; host memory stays near the largest slice being read.

Layout (transformers' Linear weight is [out, in]; ours is [in, out] with heads split out):
  q_proj/k_proj/v_proj.weight [N*hd, D]  -> attn.q/k/v [D, N, hd]
  o_proj.weight [D, H*hd]                -> attn.o [H, hd, D]
  q/k/v_proj.bias [N*hd]                 -> attn.q/k/v_bias [N, hd]            (qwen2.5)
  q_norm/k_norm.weight [hd]              -> attn.q_norm/k_norm.scale [hd]     (qwen3)
  (gemma's norm weights are stored as w and applied as (1 + w) on both sides: copied as they are)
  gate/up/down_proj.weight [out, in]     -> mlp.gate/up/down [in, out]
  input/post_attention_layernorm.weight  -> attn_norm/mlp_norm.scale
  gemma2/gemma3 (four norms): input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
    post_feedforward_layernorm                -> attn_norm, post_attn_norm, mlp_norm, post_mlp_norm
  embed_tokens.weight [V, D] -> embed [V, D]; norm.weight -> final_norm.scale; lm_head.weight [V, D] -> lm_head [D, V]
Gemma 3's multimodal checkpoints (model_type gemma3, Gemma3ForConditionalGeneration) hold the same
text decoder under another prefix (`language_model.model.*` as transformers 4 and 5's save_pretrained
write it, `model.language_model.*` as transformers 5 names it in memory; the head tied, or
`language_model.lm_head.weight` / `lm_head.weight`) beside the vision tower and the multimodal
projector, which are not read; their embedding's rows past the text ids (hf_config.text_vocab) are
left out when the model is the text vocabulary.
Transformers' Llama-family checkpoints already hold q/k in the rotate-half RoPE layout this runtime
uses, so no permutation is applied.

Every user mistake is a CheckpointError naming the path and the tensor (exit 2): a missing
config.json, shard or tensor, a truncated file, a shape or a config field that disagrees with the
spec's architecture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from distillc.runtime.arch import ModelArch
from distillc.runtime.convert import hf_config
from distillc.runtime.convert.layout import tree_leaves, tree_set
from distillc.runtime.train.checkpoints import CheckpointError

INDEX = "model.safetensors.index.json"
_DTYPES: dict[str, Any] = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                           "BOOL": np.bool_}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed here

# gemma3 multimodal: (the text decoder's prefix for "model.", its head) in each layout transformers writes
_TEXT_LAYOUTS = (("language_model.model.", "language_model.lm_head.weight"), ("model.language_model.", "lm_head.weight"))
_NOT_TEXT = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def _abs(path: str) -> epath.Path:
    p = epath.Path(path)
    return p if "://" in str(path) or p.is_absolute() else epath.Path(os.path.abspath(path))


def _local(p: epath.Path) -> bool:
    return "://" not in str(p)


# ----------------------------------------------------------------------------- safetensors


@dataclass(frozen=True)
class Tensor:
    """One tensor of a safetensors file: where its bytes lie (absolute offsets) and what they hold."""

    name: str
    file: epath.Path
    dtype: Any
    shape: tuple[int, ...]
    start: int
    end: int

    def read(self, index: tuple[slice, ...] = ()) -> np.ndarray:
        """The tensor (or `index` of it); local files through a memory map, so only the pages of
        the slice are read."""
        flat: np.ndarray
        if _local(self.file):
            flat = np.memmap(str(self.file), dtype=np.uint8, mode="r", offset=self.start, shape=(self.end - self.start,))
        else:  # remote: the tensor's byte range
            with self.file.open("rb") as f:
                f.seek(self.start)
                flat = np.frombuffer(f.read(self.end - self.start), np.uint8)
        arr = flat.view(self.dtype).reshape(self.shape)
        return np.array(arr[index] if index else arr)


def read_header(path: epath.Path) -> dict[str, Tensor]:
    """The tensors of one safetensors file, checked against the file's size (a truncated file is
    an error naming the first tensor past its end)."""
    try:
        size = path.stat().length
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < n <= size - 8:
                raise CheckpointError(f"{path}: not a safetensors file, or truncated in its header")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    base = 8 + n
    out: dict[str, Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[entry["dtype"]])
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} has an unreadable header entry ({e!r})") from e
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r}: {end - begin} bytes for shape {shape} {dtype}")
        if base + end > size:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {base + end} of a {size}-byte file")
        out[name] = Tensor(name, path, dtype, shape, base + begin, base + end)
    return out


def _json(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from e


class HFCheckpoint:
    """A Hugging Face checkpoint directory: its config.json and every tensor's location."""

    def __init__(self, path: str):
        self.path = path
        root = _abs(path)
        if not root.exists():
            raise CheckpointError(f"checkpoint {path!r} does not exist")
        if not (root / "config.json").exists():
            raise CheckpointError(f"checkpoint {path!r} has no config.json (a Hugging Face checkpoint is a directory "
                                  "with config.json and *.safetensors)")
        self.config: dict = _json(root / "config.json")
        self.tensors: dict[str, Tensor] = {}
        if (root / INDEX).exists():
            weight_map: dict[str, str] = _json(root / INDEX).get("weight_map", {})
            by_file: dict[str, list[str]] = {}
            for name, file in weight_map.items():
                by_file.setdefault(file, []).append(name)
            for file, names in sorted(by_file.items()):
                if not (root / file).exists():
                    raise CheckpointError(f"{root / file}: shard missing (named by {INDEX} for tensor {names[0]!r})")
                held = read_header(root / file)
                for name in names:
                    if name not in held:
                        raise CheckpointError(f"{root / file}: has no tensor {name!r} ({INDEX} places it there)")
                    self.tensors[name] = held[name]
        else:
            files = sorted(root.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"checkpoint {path!r} has config.json but no *.safetensors files")
            for file in files:
                self.tensors.update(read_header(file))

    def tensor(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"checkpoint {self.path!r} has no tensor {name!r}")
        return self.tensors[name]


def is_hf_checkpoint(path: str) -> bool:
    """A directory with config.json and safetensors weights (what `format` detection calls hf)."""
    root = _abs(path)
    return (root / "config.json").exists() and ((root / INDEX).exists() or any(root.glob("*.safetensors")))


# ----------------------------------------------------------------------------- config.json <-> ModelArch


def hf_arch_fields(config: dict) -> dict[str, Any]:
    """hf_config.hf_arch_fields, raising CheckpointError (exit 2) on what the runtime does not build."""
    try:
        return hf_config.hf_arch_fields(config)
    except hf_config.HFConfigError as e:
        raise CheckpointError(str(e)) from e


def arch_from_hf_config(config: dict, name: str) -> ModelArch:
    try:
        return hf_config.arch_from_hf_config(config, name)
    except hf_config.HFConfigError as e:
        raise CheckpointError(str(e)) from e


def config_differences(config: dict, arch: ModelArch) -> list[str]:
    try:
        return hf_config.config_differences(config, arch)
    except hf_config.HFConfigError as e:
        raise CheckpointError(str(e)) from e


# ----------------------------------------------------------------------------- tensor mapping

# our per-layer path -> (transformers suffix, layout kind)
LAYER_MAP: dict[tuple[str, ...], tuple[str, str]] = {
    ("attn", "q"): ("self_attn.q_proj.weight", "in_heads"),
    ("attn", "k"): ("self_attn.k_proj.weight", "in_heads"),
    ("attn", "v"): ("self_attn.v_proj.weight", "in_heads"),
    ("attn", "o"): ("self_attn.o_proj.weight", "out_heads"),
    ("attn", "q_bias"): ("self_attn.q_proj.bias", "heads"),
    ("attn", "k_bias"): ("self_attn.k_proj.bias", "heads"),
    ("attn", "v_bias"): ("self_attn.v_proj.bias", "heads"),
    ("attn", "q_norm", "scale"): ("self_attn.q_norm.weight", "same"),
    ("attn", "k_norm", "scale"): ("self_attn.k_norm.weight", "same"),
    ("attn_norm", "scale"): ("input_layernorm.weight", "same"),
    ("mlp_norm", "scale"): ("post_attention_layernorm.weight", "same"),
    ("mlp", "gate"): ("mlp.gate_proj.weight", "transpose"),
    ("mlp", "up"): ("mlp.up_proj.weight", "transpose"),
    ("mlp", "down"): ("mlp.down_proj.weight", "transpose"),
}
# gemma2/gemma3 (post_norms): four norms per layer, and transformers' post_attention_layernorm is the
# norm on the attention output there, not the pre-MLP norm it is in Llama
SANDWICH_MAP: dict[tuple[str, ...], tuple[str, str]] = {
    **LAYER_MAP,
    ("mlp_norm", "scale"): ("pre_feedforward_layernorm.weight", "same"),
    ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", "same"),
    ("post_mlp_norm", "scale"): ("post_feedforward_layernorm.weight", "same"),
}
TOP_MAP: dict[tuple[str, ...], tuple[str, str]] = {
    ("embed",): ("model.embed_tokens.weight", "same"),
    ("final_norm", "scale"): ("model.norm.weight", "same"),
    ("lm_head",): ("lm_head.weight", "transpose"),
}


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The transformers shape of one of our (per-layer) parameters of `shape`."""
    if kind == "transpose":
        return shape[::-1]
    if kind == "in_heads":  # [D, N, hd] <- [N*hd, D]
        return (shape[1] * shape[2], shape[0])
    if kind == "out_heads":  # [H, hd, D] <- [D, H*hd]
        return (shape[2], shape[0] * shape[1])
    if kind == "heads":  # [N, hd] <- [N*hd]
        return (shape[0] * shape[1],)
    return shape


def _span(s: slice, n: int) -> slice:
    start, stop, _ = s.indices(n)
    return slice(start, stop)


def read_ours(t: Tensor, kind: str, shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """`index` of our parameter of `shape` (one layer's), read from transformers' tensor `t`."""
    idx = tuple(_span(s, n) for s, n in zip(index, shape)) if index else tuple(slice(0, n) for n in shape)
    if kind == "same":
        return t.read(idx)
    if kind == "transpose":
        return t.read((idx[1], idx[0])).T
    if kind == "in_heads":
        a, n, c = idx
        hd = shape[2]
        x = t.read((slice(n.start * hd, n.stop * hd), a))  # [Nn*hd, Da]
        return x.reshape(n.stop - n.start, hd, -1)[:, c, :].transpose(2, 0, 1)
    if kind == "out_heads":
        n, c, a = idx
        hd = shape[1]
        x = t.read((a, slice(n.start * hd, n.stop * hd)))  # [Da, Nn*hd]
        return x.T.reshape(n.stop - n.start, hd, -1)[:, c, :]
    if kind == "heads":
        n, c = idx
        hd = shape[1]
        return t.read((slice(n.start * hd, n.stop * hd),)).reshape(n.stop - n.start, hd)[:, c]
    raise ValueError(kind)


def to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    """One of our (per-layer) parameters in transformers' layout (the inverse of `read_ours`)."""
    if kind == "transpose":
        return x.T
    if kind == "in_heads":
        return x.reshape(x.shape[0], -1).T
    if kind == "out_heads":
        return x.reshape(-1, x.shape[2]).T
    if kind == "heads":
        return x.reshape(-1)
    return x


def hf_names(pure: dict, num_layers: int) -> Iterator[tuple[tuple, Optional[int], str, str]]:
    """(our path, layer or None for a stacked leaf, transformers name or {i} template, kind) of every
    leaf of a pure-dict parameter tree (scanned or not). A tree whose layers have post-block norms
    (gemma2/gemma3) names its norms as those families do (SANDWICH_MAP)."""
    paths = [path for path, _ in tree_leaves(pure)]
    layer_map = SANDWICH_MAP if any("post_attn_norm" in p for p in paths) else LAYER_MAP
    for path in paths:
        if path[0] == "layers":
            if isinstance(path[1], int) or str(path[1]).isdigit():
                rel, layer = path[2:], int(path[1])
                suffix, kind = layer_map[rel]
                yield path, layer, f"model.layers.{layer}.{suffix}", kind
            else:
                suffix, kind = layer_map[path[1:]]
                yield path, None, "model.layers.{i}." + suffix, kind
        else:
            name, kind = TOP_MAP[path]
            yield path, None, name, kind


def _under(decoder: str, head: str) -> Callable[[str], str]:
    """Renames model.* to decoder + *, and lm_head.weight to `head`."""
    def rename(name: str) -> str:
        return decoder + name.removeprefix("model.") if name.startswith("model.") else head
    return rename


def text_names(ckpt: HFCheckpoint) -> Callable[[str], str]:
    """Where `ckpt` holds each tensor hf_names names (model.*, lm_head.weight): there for text
    checkpoints, under the text decoder's prefix in whichever layout a multimodal gemma3 one has."""
    if ckpt.config.get("model_type") != "gemma3":
        return lambda name: name
    for decoder, head in _TEXT_LAYOUTS:
        if any(n.startswith(decoder) for n in ckpt.tensors):
            return _under(decoder, head)
    raise CheckpointError(f"checkpoint {ckpt.path!r} (gemma3) holds no text decoder tensors (named "
                          f"{' or '.join(d + '*' for d, _ in _TEXT_LAYOUTS)})")


def load_hf_params(path: str, arch: ModelArch, abstract: dict) -> dict:
    """Our pure-dict parameter tree, read from the Hugging Face checkpoint at `path` onto the
    shardings and dtypes of `abstract` (a pure dict of ShapeDtypeStructs with shardings, scanned or
    not): each device's slice read and transposed by its own callback."""
    ckpt = HFCheckpoint(path)
    why = config_differences(ckpt.config, arch)
    if why:
        raise CheckpointError(f"checkpoint {path!r} ({ckpt.config.get('model_type')}) does not match {arch.name}: "
                              + "; ".join(why))
    leaves = dict(tree_leaves(abstract))
    out: dict = {}
    used: set[str] = set()
    where = text_names(ckpt)
    # the vocabulary rows a checkpoint's embedding / head may have: the model's, the tokenizer's of a
    # padded model (zeros past them), a multimodal gemma3's full embedding (its text rows read)
    rows = {arch.shared_vocab} | ({int(hf_config.text_config(ckpt.config)["vocab_size"])}
                                  if hf_config.text_vocab(ckpt.config) == arch.vocab_size else set())
    for our, layer, name, kind in hf_names(abstract, arch.num_layers):
        name = where(name)
        leaf = leaves[our]
        stacked = "{i}" in name
        shape = tuple(leaf.shape[1:] if stacked else leaf.shape)
        names = [name.format(i=i) for i in range(leaf.shape[0])] if stacked else [name]
        sources = [ckpt.tensor(n) for n in names]
        vocab = our in (("embed",), ("lm_head",))
        for t in sources:
            if vocab and any(t.shape == hf_shape(kind, _vocab(shape, our, r)) for r in rows):
                continue  # zeros past the tokenizer's ids, or the text rows of more (read_padded)
            if t.shape != hf_shape(kind, shape):
                raise CheckpointError(f"{t.file}: tensor {t.name!r} has shape {t.shape}; {arch.name} needs "
                                      f"{hf_shape(kind, shape)}")
        used.update(names)
        dtype = leaf.dtype
        out_leaf = _make(leaf, sources, kind, shape, stacked, dtype)
        tree_set(out, our, out_leaf)
    multimodal = ckpt.config.get("model_type") == "gemma3"
    extra = sorted(n for n in ckpt.tensors.keys() - used
                   if not n.endswith(_IGNORED_SUFFIXES) and not (arch.tie_embeddings and n == where("lm_head.weight"))
                   and not (multimodal and n.startswith(_NOT_TEXT)))
    if extra:
        raise CheckpointError(f"checkpoint {path!r} holds {len(extra)} tensor(s) {arch.name} has no place for, "
                              f"e.g. {', '.join(extra[:3])}")
    return out


def _vocab(shape: tuple[int, ...], our: tuple, rows: int) -> tuple[int, ...]:
    """`shape` of the embedding ([V, D]) or head ([D, V]) with `rows` vocabulary entries."""
    return (rows,) + shape[1:] if our == ("embed",) else shape[:-1] + (rows,)


def read_padded(t: Tensor, kind: str, shape: tuple[int, ...], index: tuple[slice, ...], axis: int) -> np.ndarray:
    """`index` of our embedding or head whose vocabulary axis (`axis`) is not the tensor's: the rows
    the tensor has, zeros past them (a longer model), or its first rows (a shorter one)."""
    idx = [_span(s, n) for s, n in zip(index, shape)]
    v = idx[axis]
    rows = t.shape[0]  # the vocabulary is axis 0 of both embed_tokens and lm_head in transformers
    out = np.zeros([s.stop - s.start for s in idx], dtype=t.dtype)
    stop = min(v.stop, rows)
    if stop > v.start:
        inner, src_shape, sel = list(idx), list(shape), [slice(None)] * len(shape)
        inner[axis], src_shape[axis], sel[axis] = slice(v.start, stop), rows, slice(0, stop - v.start)
        out[tuple(sel)] = read_ours(t, kind, tuple(src_shape), tuple(inner))
    return out


def _make(leaf: Any, sources: list[Tensor], kind: str, shape: tuple[int, ...], stacked: bool, dtype: Any) -> jax.Array:
    vocab_axis = 0 if kind == "same" else 1  # embed [V, D] / lm_head [D, V]
    padded = not stacked and len(shape) == 2 and hf_shape(kind, shape) != sources[0].shape

    def cb(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index)
        if padded:
            return read_padded(sources[0], kind, shape, index, vocab_axis).astype(dtype)
        if not stacked:
            return read_ours(sources[0], kind, shape, index[: len(shape)]).astype(dtype)
        layers = range(*_span(index[0], len(sources)).indices(len(sources)))
        return np.stack([read_ours(sources[i], kind, shape, index[1:]).astype(dtype) for i in layers])

    make: Callable = jax.make_array_from_callback
    return make(tuple(leaf.shape), leaf.sharding, cb)
