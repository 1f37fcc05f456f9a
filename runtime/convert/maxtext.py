"""MaxText Orbax checkpoints in and out (`format: maxtext`, `distillc export SOURCE --to maxtext OUT`).

What MaxText writes (learned from its checkpoint_conversion code: to_maxtext.py with
utils/param_mapping.py's hooks, and standalone_scripts/llama_or_mistral_ckpt.py; and from the decoder
layers that read it: layers/attentions.py, layers/embeddings.py, layers/decoders.py, models/*.py):

  <dir>/<step>/items/          an Orbax PyTree (ocdbt + zarr3) holding {"step", "params": {"params": P}}
  P = {"token_embedder": {"embedding": [V, D]},
       "decoder": {"decoder_norm": {"scale": [D]},
                   "logits_dense": {"kernel": [D, V]},        (absent when logits_via_embedding: tied)
                   "layers": {...per-layer tree, every leaf stacked on axis 1...}   (scan_layers: true)
                   or "layers_0": {...}, "layers_1": {...}, ...}                   (scan_layers: false)
  per layer: self_attention/{query,key,value}/kernel [D, N|K, hd], self_attention/out/kernel [N, hd, D],
             self_attention/{query,key,value}/bias [N|K, hd] (qwen2.5), self_attention/{query,key}_norm/scale
             [hd] (qwen3), pre_self_attention_layer_norm/scale and post_self_attention_layer_norm/scale [D]
             (gemma: pre_self_attention_norm, pre_ffw_norm; gemma2/gemma3 add post_self_attention_norm and
             post_ffw_norm), mlp/wi_0 (gate), wi_1 (up) [D, F], mlp/wo [F, D].
  gemma2 (`layout` pairs): MaxText's decoder layer is a (local, global) pair of layers, every module
             name suffixed _local / _global: decoder/layers/self_attention_local/... stacks layers 0, 2, ...,
             _global layers 1, 3, ...; unscanned decoder/layers_{i//2}/<module>_{local|global}/...
  gemma3 (`layout` blocks): scanned as blocks of 6 (5 local, 1 global): decoder/layers/layers_{b}/...
             stacks layers b, b + 6, ...; the num_layers % 6 last ones are decoder/layers_remainder/layers_{r}
             (unstacked); unscanned decoder/layers_{i}/... (`layer_groups`).

These are this runtime's own layouts except for the layer axis (1 in MaxText, `param_scan_axis`, 0
here), gemma2/gemma3's grouping of layers, and four conventions, undone on load and applied on export (`Convention`):
  - query scaling: MaxText's Llama-2 block (llama2/3/3.1/3.3, mistral) and gemma apply no 1/sqrt(hd)
    in attention; the converters fold it into the query kernel (`scale_query_layer`,
    `query / sqrt(head_dim)`). Qwen blocks scale at run time (`query_pre_attn_scalar`), so their
    kernels are stored unscaled.
  - RoPE layout: Llama 3.1 (MaxText's LLaMARotaryEmbedding, chosen by model_name llama3.1-*) rotates
    interleaved pairs (x0, x1), (x2, x3), ...; its converters interleave the q/k head_dim axis
    (`adjust_rope`, `permute_to_match_maxtext_rope`). Every other family uses the rotate-half
    RotaryEmbedding, the same layout as transformers and this runtime: no permutation.
  - gemma: RMSNorm scales stored as (1 + w) (MaxText's gemma norm has no offset), and the embedding
    stored times sqrt(D) (MaxText divides tied logits by sqrt(D) instead of scaling the lookup).
    gemma2 as gemma (its converter folds 1/sqrt(head_dim) into the query, not query_pre_attn_scalar);
    gemma3's query is stored unscaled (MaxText multiplies by query_pre_attn_scalar at run time), its
    q/k norms are (1 + w) too, and its converter's sqrt(D) is rounded to bfloat16 (`embed_factor`).

Loading restores each array with Orbax directly onto its device shards (the target shardings come
from the run's mesh), then a jitted function per parameter moves the layer axis, undoes the
conventions and lays the result onto the run's layout (scanned or not) and shardings, freeing the
restored tensors as it goes. Every mismatch (a missing tensor, a
tensor the architecture has no place for, a wrong shape) is one CheckpointError naming the path and
the MaxText tensor.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from distillc.runtime.arch import ModelArch
from distillc.runtime.convert.layout import tree_set
from distillc.runtime.train.checkpoints import CheckpointError, metadata_tree

ITEMS = "items"
SCAN_AXIS = 1  # MaxText's param_scan_axis
Path_ = tuple[str, ...]


# ----------------------------------------------------------------------------- conventions


@dataclass(frozen=True)
class Convention:
    """How one family's tensors differ in a MaxText checkpoint from this runtime's (see module doc)."""

    scale_query: bool  # query kernel (and bias) stored times 1/sqrt(head_dim)
    rope_interleaved: bool  # q/k head_dim axis stored as interleaved pairs
    norm_plus_one: bool  # norm scales stored as 1 + w
    embed_times_sqrt_d: bool  # embedding stored times sqrt(emb_dim)
    attn_norm: str  # MaxText names of the two per-layer norms
    mlp_norm: str
    layout: str = "uniform"  # how layers are grouped: "uniform", "pairs" (gemma2), "blocks" (gemma3)
    embed_bf16_factor: bool = False  # the sqrt(emb_dim) factor rounded to bfloat16 first (gemma3's converter)


GEMMA3_BLOCK = 6  # MaxText's GEMMA3_ATTENTION_PATTERN: 5 local layers then 1 global, scanned as one block


def convention(arch: ModelArch) -> Convention:
    """The MaxText conventions of `arch`'s family: gemma's blocks (gemma2: (local, global) layer pairs,
    query scaled into the kernel; gemma3: blocks of 6, query scaled at run time), the Qwen blocks
    (query scaled at run time), or the Llama-2 block (llama*, mistral, and architectures MaxText has
    no name for), whose Llama 3.1 variant alone interleaves RoPE pairs."""
    family = arch.family
    if family == "gemma":
        return Convention(True, False, True, True, "pre_self_attention_norm", "pre_ffw_norm")
    if family == "gemma2":
        return Convention(True, False, True, True, "pre_self_attention_norm", "pre_ffw_norm", "pairs")
    if family == "gemma3":
        return Convention(False, False, True, True, "pre_self_attention_norm", "pre_ffw_norm", "blocks", True)
    qwen = family.startswith("qwen")
    return Convention(not qwen, family == "llama3.1", False, False,
                      "pre_self_attention_layer_norm", "post_self_attention_layer_norm")


# our per-layer path -> (MaxText per-layer path, what the conventions do to it); {x} is gemma2's
# _local / _global suffix on each module of its paired layer (empty elsewhere)
LAYER_MAP: dict[Path_, tuple[Path_, str]] = {
    ("attn", "q"): (("self_attention{x}", "query", "kernel"), "query"),
    ("attn", "k"): (("self_attention{x}", "key", "kernel"), "key"),
    ("attn", "v"): (("self_attention{x}", "value", "kernel"), "plain"),
    ("attn", "o"): (("self_attention{x}", "out", "kernel"), "plain"),
    ("attn", "q_bias"): (("self_attention{x}", "query", "bias"), "query"),
    ("attn", "k_bias"): (("self_attention{x}", "key", "bias"), "key"),
    ("attn", "v_bias"): (("self_attention{x}", "value", "bias"), "plain"),
    ("attn", "q_norm", "scale"): (("self_attention{x}", "query_norm", "scale"), "qk_norm"),
    ("attn", "k_norm", "scale"): (("self_attention{x}", "key_norm", "scale"), "qk_norm"),
    ("attn_norm", "scale"): (("{attn_norm}{x}", "scale"), "norm"),
    ("mlp_norm", "scale"): (("{mlp_norm}{x}", "scale"), "norm"),
    ("post_attn_norm", "scale"): (("post_self_attention_norm{x}", "scale"), "norm"),  # post_norms (gemma2/3)
    ("post_mlp_norm", "scale"): (("post_ffw_norm{x}", "scale"), "norm"),
    ("mlp", "gate"): (("mlp{x}", "wi_0", "kernel"), "plain"),
    ("mlp", "up"): (("mlp{x}", "wi_1", "kernel"), "plain"),
    ("mlp", "down"): (("mlp{x}", "wo", "kernel"), "plain"),
}
TOP_MAP: dict[Path_, tuple[Path_, str]] = {
    ("embed",): (("token_embedder", "embedding"), "embed"),
    ("final_norm", "scale"): (("decoder", "decoder_norm", "scale"), "norm"),
    ("lm_head",): (("decoder", "logits_dense", "kernel"), "plain"),
}


def _mt_layer_path(rel: Path_, conv: Convention, x: str = "") -> Path_:
    return tuple(p.format(attn_norm=conv.attn_norm, mlp_norm=conv.mlp_norm, x=x) for p in rel)


def interleave(x: Any) -> Any:
    """Rotate-half layout (x0..x_{h-1} | x_h..x_{2h-1}) -> interleaved pairs (x0, x_h, x1, x_{h+1}, ...)
    on the last axis: MaxText's `adjust_rope` towards MaxText."""
    xp = jnp if isinstance(x, jax.Array) else np
    half = x.shape[-1] // 2
    return xp.stack([x[..., :half], x[..., half:]], axis=-1).reshape(x.shape)


def deinterleave(x: Any) -> Any:
    """Interleaved pairs -> rotate-half layout (evens then odds): MaxText's `adjust_rope` towards
    Hugging Face, the inverse of `interleave`."""
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.concatenate([x[..., ::2], x[..., 1::2]], axis=-1)


def embed_factor(arch: ModelArch, conv: Convention) -> np.float32:
    """The factor MaxText's converters store the embedding times: sqrt(emb_dim) in float32 (gemma,
    gemma2), rounded to bfloat16 first by gemma3's (its hook's normalizer is a bfloat16 scalar:
    50.5 for 2560, not 50.596)."""
    s = math.sqrt(arch.emb_dim)
    return np.float32(float(ml_dtypes.bfloat16(s)) if conv.embed_bf16_factor else s)


def to_ours(kind: str, x: Any, arch: ModelArch, conv: Convention) -> Any:
    """One tensor from MaxText's conventions to ours (float32 arithmetic, as MaxText's hooks do)."""
    xp = jnp if isinstance(x, jax.Array) else np
    if kind in ("query", "key", "qk_norm") and conv.rope_interleaved:
        x = deinterleave(x)
    if kind == "query" and conv.scale_query:
        x = x.astype(xp.float32) * np.float32(math.sqrt(arch.head_dim))
    if kind in ("norm", "qk_norm") and conv.norm_plus_one:
        x = x.astype(xp.float32) - np.float32(1.0)
    if kind == "embed" and conv.embed_times_sqrt_d:
        x = x.astype(xp.float32) / embed_factor(arch, conv)
    return x


def to_maxtext(kind: str, x: Any, arch: ModelArch, conv: Convention) -> Any:
    """One tensor from our conventions to MaxText's (the inverse of `to_ours`)."""
    xp = jnp if isinstance(x, jax.Array) else np
    if kind == "query" and conv.scale_query:
        x = x.astype(xp.float32) * np.float32(1.0 / math.sqrt(arch.head_dim))
    if kind in ("query", "key", "qk_norm") and conv.rope_interleaved:
        x = interleave(x)
    if kind in ("norm", "qk_norm") and conv.norm_plus_one:
        x = x.astype(xp.float32) + np.float32(1.0)
    if kind == "embed" and conv.embed_times_sqrt_d:
        x = x.astype(xp.float32) * embed_factor(arch, conv)
    return x


# ----------------------------------------------------------------------------- names


@dataclass(frozen=True)
class Group:
    """One MaxText tensor and which of our layers it holds: stacked on SCAN_AXIS in the order of
    `layers` (`stacked`), or the one layer `layers[0]`; a top-level tensor holds no layer."""

    mt: Path_  # under params/params
    layers: tuple[int, ...]
    stacked: bool


@dataclass(frozen=True)
class Entry:
    """One of our parameters (`ours`: a path in our pure dict; layer entries use the per-layer
    path), its convention kind, and the MaxText tensors that hold it (`groups`)."""

    ours: Path_
    kind: str
    layered: bool
    groups: tuple[Group, ...]


def check_layout(arch: ModelArch, conv: Convention) -> None:
    """A CheckpointError when `arch`'s layers have no MaxText layout: MaxText's gemma2 block is a
    (local, global) pair of layers, its gemma3 blocks apply the 5 local : 1 global pattern by layer."""
    local = arch.local_layers()
    if conv.layout == "pairs" and (arch.num_layers % 2 or local != (True, False) * (arch.num_layers // 2)):
        raise CheckpointError(f"{arch.name}: MaxText's gemma2 decoder layer is a (local, global) pair of layers, so it "
                              f"holds an even number of alternating layers; this model has {arch.num_layers} "
                              f"(local pattern {local}): prune or keep whole pairs")
    if conv.layout == "blocks" and local != tuple(i % GEMMA3_BLOCK < GEMMA3_BLOCK - 1 for i in range(arch.num_layers)):
        raise CheckpointError(f"{arch.name}: MaxText's gemma3 decoder makes every sixth layer global (5 local : 1 global "
                              f"from layer 0); this model's pattern is {local}, which MaxText cannot hold")


def layer_groups(conv: Convention, num_layers: int, scanned: bool, rel: Path_) -> tuple[Group, ...]:
    """The MaxText tensors holding one per-layer parameter (`rel`: its MaxText per-layer path with
    {x} for gemma2's suffix), as MaxText's decoder (and its to_maxtext param mappings) lay them out:
      uniform   scanned: decoder/layers (every layer, stacked); unscanned: decoder/layers_{i}
      pairs     (gemma2) scanned: decoder/layers/<module>_local (even layers) and _global (odd layers);
                unscanned: decoder/layers_{i // 2}/<module>_local or _global
      blocks    (gemma3) scanned: decoder/layers/layers_{b} (layers b, b + 6, ..., of the whole blocks)
                and decoder/layers_remainder/layers_{r} (the num_layers % 6 last ones, unstacked);
                unscanned: decoder/layers_{i}"""
    n = num_layers
    if conv.layout == "pairs":
        if scanned:
            return tuple(Group(("decoder", "layers") + _mt_layer_path(rel, conv, f"_{x}"), tuple(range(first, n, 2)), True)
                         for first, x in ((0, "local"), (1, "global")))
        return tuple(Group(("decoder", f"layers_{i // 2}") + _mt_layer_path(rel, conv, "_global" if i % 2 else "_local"),
                           (i,), False) for i in range(n))
    path = _mt_layer_path(rel, conv)
    if conv.layout == "blocks" and scanned:
        whole = n - n % GEMMA3_BLOCK
        stacks = [Group(("decoder", "layers", f"layers_{b}") + path, tuple(range(b, whole, GEMMA3_BLOCK)), True)
                  for b in range(GEMMA3_BLOCK)] if whole else []
        return tuple(stacks) + tuple(Group(("decoder", "layers_remainder", f"layers_{r}") + path, (whole + r,), False)
                                     for r in range(n % GEMMA3_BLOCK))
    if scanned:
        return (Group(("decoder", "layers") + path, tuple(range(n)), True),)
    return tuple(Group(("decoder", f"layers_{i}") + path, (i,), False) for i in range(n))


def entries(arch: ModelArch, scanned: bool) -> list[Entry]:
    """Every parameter of `arch` with its MaxText tensors in a scanned or unscanned checkpoint."""
    conv = convention(arch)
    check_layout(arch, conv)
    out = []
    for ours, (mt, kind) in TOP_MAP.items():
        if ours == ("lm_head",) and arch.tie_embeddings:
            continue
        out.append(Entry(ours, kind, False, (Group(mt, (), False),)))
    for ours, (rel, kind) in LAYER_MAP.items():
        if ours[-1] in ("q_bias", "k_bias", "v_bias") and not arch.attention_bias:
            continue
        if ours[1:2] in (("q_norm",), ("k_norm",)) and not arch.qk_norm:
            continue
        if ours[0] in ("post_attn_norm", "post_mlp_norm") and not arch.post_norms:
            continue
        out.append(Entry(ours, kind, True, layer_groups(conv, arch.num_layers, scanned, rel)))
    return out


def mt_shape(group: Group, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The MaxText shape of `group`, of our per-layer (or top-level) `shape`."""
    if group.stacked:
        return shape[:SCAN_AXIS] + (len(group.layers),) + shape[SCAN_AXIS:]
    return shape


def tensor_name(path: Path_) -> str:
    """A MaxText tensor's name as its tools print it: params/params/decoder/layers/..."""
    return "/".join(("params", "params") + path)


# ----------------------------------------------------------------------------- the checkpoint on disk


def _abs(path: str) -> epath.Path:
    p = epath.Path(path)
    return p if "://" in str(path) or p.is_absolute() else epath.Path(os.path.abspath(path))


def items_dir(path: str) -> epath.Path:
    """The Orbax item directory a MaxText checkpoint path names: `.../<step>/items` itself, a step
    directory (its `items`), or a checkpoint directory (its latest step's `items`)."""
    p = _abs(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if (p / "_METADATA").exists():
        return p
    if (p / ITEMS / "_METADATA").exists():
        return p / ITEMS
    steps = [int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / ITEMS / "_METADATA").exists()]
    if not steps:
        raise CheckpointError(f"checkpoint {path!r} is not a MaxText checkpoint: no <step>/items with Orbax "
                              "metadata (give .../<step>/items, the step directory, or the checkpoint directory)")
    return p / str(max(steps)) / ITEMS


def stored_params(path: str) -> tuple[epath.Path, dict]:
    """(items directory, the metadata tree under params/params) of a MaxText checkpoint."""
    items = items_dir(path)
    tree = metadata_tree(items, str(items))
    params = tree.get("params", {})
    params = params.get("params") if isinstance(params, dict) else None
    if not isinstance(params, dict) or "decoder" not in params:
        raise CheckpointError(f"{items}: not a MaxText checkpoint (no params/params/decoder; top-level entries: "
                              f"{', '.join(sorted(map(str, tree))[:6])})")
    return items, params


def is_maxtext_checkpoint(path: str) -> bool:
    """A MaxText Orbax checkpoint (what `format` detection calls maxtext): an items, step or checkpoint
    directory whose tree holds params/params/decoder."""
    try:
        stored_params(path)
    except CheckpointError:
        return False
    return True


def is_scanned(params: dict, where: str) -> bool:
    """Whether a MaxText parameter tree stacks its layers (decoder/layers, and gemma3's
    decoder/layers_remainder) or lists them (decoder/layers_0, ...)."""
    decoder = params["decoder"]
    if "layers" in decoder or "layers_remainder" in decoder:
        return True
    if "layers_0" in decoder:
        return False
    raise CheckpointError(f"{where}: the decoder holds neither layers (scanned) nor layers_0 (unscanned)")


def _leaves(tree: Any, prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (str(k),))
    else:
        yield prefix, tree


def _get(tree: dict, path: Path_) -> Any:
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def expected(arch: ModelArch, scanned: bool, shapes: dict[Path_, tuple[int, ...]]) -> dict[Path_, tuple[Entry, Group, tuple[int, ...]]]:
    """MaxText path -> (entry, group, MaxText shape) for every tensor `arch` needs; `shapes`: our
    per-layer (or top-level) shape of each entry's `ours` path."""
    return {g.mt: (e, g, mt_shape(g, shapes[e.ours])) for e in entries(arch, scanned) for g in e.groups}


def check_tree(where: str, arch: ModelArch, params: dict, want: dict[Path_, tuple[Entry, Group, tuple[int, ...]]]) -> None:
    """One CheckpointError naming the first problem: a tensor missing, one `arch` has no place for
    (another family's checkpoint: biases, q/k norms, an untied head), or a shape that disagrees."""
    have = {p: m for p, m in _leaves(params)}
    for path, (_, _, shape) in want.items():
        if path not in have:
            raise CheckpointError(f"{where}: has no tensor {tensor_name(path)!r}, which {arch.name} needs "
                                  f"(shape {shape}; is it another family's or another depth's checkpoint?)")
        got = tuple(getattr(have[path], "shape", ()) or ())
        if got != shape:
            raise CheckpointError(f"{where}: tensor {tensor_name(path)!r} has shape {got}; {arch.name} needs {shape}")
    extra = sorted(p for p in have if p not in want)
    if extra:
        raise CheckpointError(f"{where}: holds {len(extra)} tensor(s) {arch.name} has no place for, e.g. "
                              f"{', '.join(tensor_name(p) for p in extra[:3])} (is it another family's checkpoint?)")


# ----------------------------------------------------------------------------- load


def _spec(sharding: Any, ndim: int) -> tuple:
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    return spec + (None,) * (ndim - len(spec))


def _mt_sharding(leaf: Any, run_scanned: bool, group: Group, layered: bool, num_layers: int) -> Any:
    """The sharding to restore a MaxText tensor with, from the run's sharding of the same parameter:
    the same mesh axes per dimension, the layer axis moved (or added, or dropped) as MaxText stores it
    (kept only where the tensor stacks every layer, as the run's does)."""
    sharding = leaf.sharding
    if not isinstance(sharding, NamedSharding):
        return sharding
    spec = _spec(sharding, len(leaf.shape))
    if layered:
        per = spec[1:] if run_scanned else spec
        layer = spec[0] if run_scanned and len(group.layers) == num_layers else None
        spec = per[:SCAN_AXIS] + (layer,) + per[SCAN_AXIS:] if group.stacked else per
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def load_maxtext_params(path: str, arch: ModelArch, abstract: dict, scan_layers: bool) -> dict:
    """Our pure-dict parameter tree (scanned when `scan_layers`) read from the MaxText checkpoint at
    `path` onto the shardings and dtypes of `abstract` (a pure dict of ShapeDtypeStructs with
    shardings): parameter by parameter, Orbax restores the MaxText tensor(s) onto device shards, a
    jitted function undoes MaxText's conventions and lays the layers out as this run holds them,
    and the restored tensors are freed (peak: about the model plus one parameter)."""
    items, params = stored_params(path)
    where = str(items)
    stored_scanned = is_scanned(params, where)
    leaves = dict(_leaves(abstract))
    try:
        ents = entries(arch, stored_scanned)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from e

    def our_leaf(e: Entry, i: int = 0) -> Any:
        if not e.layered:
            return leaves[e.ours]
        return leaves[("layers",) + e.ours] if scan_layers else leaves[("layers", str(i)) + e.ours]

    per_layer_shape = {e.ours: tuple(our_leaf(e).shape[1:] if e.layered and scan_layers else our_leaf(e).shape)
                       for e in ents}
    want = expected(arch, stored_scanned, per_layer_shape)
    check_tree(where, arch, params, want)

    def restore(names: list[Path_]) -> list[Any]:
        """MaxText's tensors `names` as stored (dtype included), each restored by Orbax onto the
        shardings derived from the run's: one entry's tensors at a time, so the staging buffers of
        a restore never hold more than one parameter."""
        target: dict = {}
        restore_args: dict = {}
        for mt_path in names:
            ent, group, shape = want[mt_path]
            dtype = getattr(_get(params, mt_path), "dtype", None) or our_leaf(ent).dtype
            sharding = _mt_sharding(our_leaf(ent), scan_layers, group, ent.layered, arch.num_layers)
            tree_set(target, mt_path, jax.ShapeDtypeStruct(shape, dtype, sharding=sharding))
            tree_set(restore_args, mt_path, ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype))
        try:
            got = ckptr.restore(items, args=ocp.args.PyTreeRestore(
                item={"params": {"params": target}}, restore_args={"params": {"params": restore_args}},
                partial_restore=True))["params"]["params"]
        except (ValueError, KeyError, OSError) as err:
            raise CheckpointError(f"{where}: Orbax could not restore {tensor_name(names[0])!r} ({str(err)[:300]})") from err
        return [_get(got, n) for n in names]

    conv = convention(arch)

    def load_entry(ent: Entry, out: dict) -> None:
        """One entry's tensors restored, converted into our leaf (or one leaf per layer of an
        unscanned run) on the run's shardings, and freed."""
        sources = restore([g.mt for g in ent.groups])
        if ent.layered and not scan_layers:
            for i in range(arch.num_layers):
                leaf = our_leaf(ent, i)
                fn = _converter(ent, arch, conv, False, leaf.dtype, i)
                tree_set(out, ("layers", i) + ent.ours, jax.jit(fn, out_shardings=leaf.sharding)(sources))
        else:
            leaf = our_leaf(ent)
            fn = _converter(ent, arch, conv, ent.layered, leaf.dtype, None)
            tree_set(out, (("layers",) if ent.layered else ()) + ent.ours, jax.jit(fn, out_shardings=leaf.sharding)(sources))
        for x in sources:  # every leaf made from them exists now
            x.delete()

    out: dict = {}
    ckptr = ocp.PyTreeCheckpointer()
    try:
        for ent in ents:
            load_entry(ent, out)
    finally:
        ckptr.close()
    return out


def _converter(e: Entry, arch: ModelArch, conv: Convention, stacked_out: bool, dtype: Any,
               layer: Optional[int]) -> Callable[[list], Any]:
    """The jitted body turning the MaxText tensors of one entry (one per group, in order) into one of
    our leaves: the whole stack (`stacked_out`), one `layer`, or a top-level tensor."""
    where = {i: (g, k) for g, group in enumerate(e.groups) for k, i in enumerate(group.layers)}

    def one(sources: list, i: int) -> Any:
        g, k = where[i]
        x = jnp.take(sources[g], k, axis=SCAN_AXIS) if e.groups[g].stacked else sources[g]
        return to_ours(e.kind, x, arch, conv).astype(dtype)

    def fn(sources: list) -> Any:
        if not e.layered:
            return to_ours(e.kind, sources[0], arch, conv).astype(dtype)
        if not stacked_out:
            return one(sources, layer or 0)
        if len(e.groups) == 1 and e.groups[0].stacked:  # every layer in one tensor, in order
            return jnp.moveaxis(to_ours(e.kind, sources[0], arch, conv).astype(dtype), SCAN_AXIS, 0)
        return jnp.stack([one(sources, i) for i in range(arch.num_layers)])

    return fn


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportedMaxText:
    out: str
    items: str
    scanned: bool
    tensors: int
    bytes: int
    arch: ModelArch
    wrote: bool = True  # this process renamed OUT into place (process 0; every process writes its shards)


def _to_maxtext_fn(e: Entry, arch: ModelArch, conv: Convention, stacked: bool, dtype: Any) -> Callable[[Any], Any]:
    """The jitted body turning one of our leaves into its MaxText tensor: conventions applied in
    float32 as MaxText's hooks do, cast to `dtype`, and a stacked layer axis moved to SCAN_AXIS."""

    def fn(x: Any) -> Any:
        y = to_maxtext(e.kind, x, arch, conv).astype(dtype)
        return jnp.moveaxis(y, 0, SCAN_AXIS) if stacked else y

    return fn


def maxtext_arrays(pure: dict, arch: ModelArch, scanned: bool, dtype: Any) -> dict:
    """MaxText's params/params tree from our pure-dict parameters (`pure` scanned when `scanned`,
    i.e. with stacked layers), as jax arrays on the devices the source lies on: each leaf is
    converted there (keeping its sharding) and popped from `pure` (its buffer donated), so the
    devices never hold the model twice and the host holds no copy of it; Orbax then writes the
    tree from the devices, about one tensor's write in flight at a time (save_maxtext). The caller
    must hold no other reference to `pure`'s arrays."""
    conv = convention(arch)
    out: dict = {}
    jits: dict[tuple, Callable[[Any], Any]] = {}

    def convert(e: Entry, parent: dict, key: Any, stacked: bool) -> Any:
        x = parent.pop(key)
        shape_key = (e.kind, stacked, x.shape, x.dtype, x.sharding)
        if shape_key not in jits:  # layers of one kind share a compiled conversion
            donate = x.dtype == np.dtype(dtype) and not stacked  # same shape and dtype out: reuse the buffer
            jits[shape_key] = jax.jit(_to_maxtext_fn(e, arch, conv, stacked, dtype),
                                      donate_argnums=(0,) if donate else ())
        y = jits[shape_key](x)
        del x  # the last reference: its buffer goes now (or was reused by the donation)
        return y

    def split(e: Entry, parent: dict, key: Any) -> list:
        """A stacked leaf into its entry's groups (gemma2's local / global stacks, gemma3's blocks)."""
        x = parent.pop(key)
        shape_key = ("groups", e.kind, tuple(g.layers for g in e.groups), x.shape, x.dtype, x.sharding)
        if shape_key not in jits:
            jits[shape_key] = jax.jit(_to_groups_fn(e, arch, conv, dtype))
        ys = jits[shape_key](x)
        del x
        return ys

    for e in entries(arch, scanned):
        if not e.layered:
            tree_set(out, e.groups[0].mt, convert(e, _parent(pure, e.ours), e.ours[-1], False))
            continue
        layers = pure["layers"]
        if scanned and len(e.groups) == 1 and e.groups[0].stacked:  # every layer in one tensor, in order
            tree_set(out, e.groups[0].mt, convert(e, _parent(layers, e.ours), e.ours[-1], True))
        elif scanned:
            for g, y in zip(e.groups, split(e, _parent(layers, e.ours), e.ours[-1])):
                tree_set(out, g.mt, y)
        else:  # unscanned: each group is one layer
            for g in e.groups:
                i = g.layers[0]
                layer = layers[i] if i in layers else layers[str(i)]
                tree_set(out, g.mt, convert(e, _parent(layer, e.ours), e.ours[-1], False))
    return out


def _to_groups_fn(e: Entry, arch: ModelArch, conv: Convention, dtype: Any) -> Callable[[Any], list]:
    """The jitted body turning one of our stacked leaves into the MaxText tensors of its groups: each
    group's layers taken in order, converted, and stacked on SCAN_AXIS (or the one layer, unstacked)."""

    def fn(x: Any) -> list:
        out = []
        for g in e.groups:
            if g.stacked:
                y = to_maxtext(e.kind, x[np.asarray(g.layers)], arch, conv).astype(dtype)
                out.append(jnp.moveaxis(y, 0, SCAN_AXIS))
            else:
                out.append(to_maxtext(e.kind, x[g.layers[0]], arch, conv).astype(dtype))
        return out

    return fn


def _parent(tree: dict, path: Path_) -> dict:
    """The dict holding the leaf at `path`."""
    return _get(tree, path[:-1]) if len(path) > 1 else tree


def _shared_tmp(target: epath.Path) -> epath.Path:
    """A temporary sibling of `target` with the same name in every process (process 0 draws it)."""
    token = secrets.randbits(31)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    return target.parent / f".{target.name}.{token:08x}"


def save_maxtext(out: str, tree: dict, step: int = 0) -> str:
    """Writes `tree` as MaxText's converters do (an Orbax CheckpointManager step `step` whose item
    `items` holds {"step", "params": {"params": tree}}, ocdbt + zarr3), into a temporary sibling
    directory renamed onto `out` when complete. Returns the items path (MaxText's
    load_parameters_path).

    Several processes: Orbax writes each array's shards from the process that holds them (by
    design: no process gathers the model) into the one temporary directory, and its primary
    (process 0) writes the metadata and commits; once every process is past the save (a barrier),
    process 0 alone renames the directory onto OUT. A failure before then leaves no OUT."""
    from distillc.runtime.convert.export import barrier, is_writer

    target = _abs(out)
    if target.exists():
        raise CheckpointError(f"{out!r} exists: export writes a new directory (remove it or choose another)")
    tmp = _shared_tmp(target)
    writer = is_writer()
    try:
        if writer:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        barrier("distillc-export-maxtext-tmp")
        # writes in flight capped at the largest tensor (Orbax's default, 96 GB, lets every array's
        # write buffers exist at once: a second copy of the model in host memory)
        largest = max((int(a.nbytes) for _, a in _leaves(tree) if hasattr(a, "nbytes")), default=0)
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True,
                                              save_concurrent_gb=(largest + 2**20) / 1e9)
        mngr = ocp.CheckpointManager(tmp, item_names=(ITEMS,), item_handlers={ITEMS: handler},
                                     options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False))
        try:
            mngr.save(step, args=ocp.args.Composite(**{ITEMS: ocp.args.PyTreeSave(
                {"step": step, "params": {"params": tree}})}))
            mngr.wait_until_finished()
        finally:
            mngr.close()
        barrier("distillc-export-maxtext-written")  # every process's shards are in
        if writer:
            os.replace(str(tmp), str(target))
    except BaseException:
        if writer:
            shutil.rmtree(str(tmp), ignore_errors=True)
        raise
    barrier("distillc-export-maxtext-renamed")  # no process returns before OUT exists
    return str(target / str(step) / ITEMS)


def export_maxtext(source: str, out: str, *, step: Optional[int] = None, dtype: str = "bfloat16",
                   model: Optional[ModelArch] = None, scanned: bool = True) -> ExportedMaxText:
    """Writes SOURCE's parameters (a run, a Hugging Face directory, a MaxText or distillc checkpoint)
    to OUT as a MaxText checkpoint: OUT/0/items, scanned (layer axis 1) unless `scanned` is False."""
    from distillc.runtime.convert.export import export_mesh, resolve_source
    from distillc.runtime.train.params import load_params
    from flax import nnx

    dtypes: dict[str, Any] = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}
    if dtype not in dtypes:
        raise CheckpointError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    if _abs(out).exists():
        raise CheckpointError(f"{out!r} exists: export writes a new directory (remove it or choose another)")
    side = resolve_source(source, step, model)
    if model is None and side.format == "hf" and side.arch.family.startswith("llama") and side.arch.rope_scaling:
        # config.json cannot tell Llama 3.1 (MaxText: interleaved RoPE) from 3.2/3.3 (rotate-half)
        raise CheckpointError(f"{source!r} is a Llama 3.x checkpoint with RoPE scaling, whose MaxText layout depends "
                              "on the MaxText model: name it with --model (llama3.1-8b/70b/405b: interleaved RoPE "
                              "pairs; llama3.3-70b, llama3.2-1b: rotate-half)")
    check_layout(side.arch, convention(side.arch))  # before anything is loaded or written
    _, params = load_params(side, scanned, export_mesh(side.arch))
    jax.block_until_ready(params)  # every slice read before converting (in flight, they add to the peak)
    pure = nnx.to_pure_dict(params)
    del params  # `pure` holds the only references, so each source leaf goes once converted
    tree = maxtext_arrays(pure, side.arch, scanned, dtypes[dtype])
    arrays = [a for _, a in _leaves(tree)]
    counted = len(arrays), sum(a.nbytes for a in arrays)  # before Orbax: the tree is all it needs
    del arrays
    items = save_maxtext(out, tree)
    return ExportedMaxText(out, items, scanned, counted[0], counted[1], side.arch, jax.process_index() == 0)
