"""Parameter-tree layouts: stacked layers (`scan_layers`, a leading layer axis) or one entry per
layer, and the conversion between them (MaxText's scanned/unscanned checkpoints differ the same
way). Checkpoint formats (Hugging Face, MaxText) are converted into these trees here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx

if TYPE_CHECKING:
    from distillc.runtime.models.transformer import Transformer


def tree_leaves(tree: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(key path, leaf) of every leaf of a nested dict (a pure-dict parameter tree or its abstract)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from tree_leaves(v, prefix + (k,))
    else:
        yield prefix, tree


def tree_set(tree: dict, path: tuple, value: Any) -> None:
    """Puts `value` at key path `path` of a nested dict, creating the dicts on the way."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def copy_layers(src: Transformer, dst: Transformer) -> None:
    """Copy every weight of `src` into `dst`, converting between stacked and listed layers."""
    if src.arch != dst.arch:
        raise ValueError("copy_layers needs the same architecture on both sides")
    params = nnx.to_pure_dict(nnx.state(src, nnx.Param))
    if src.scan_layers != dst.scan_layers:
        params = restack_layers(params, src.arch.num_layers, dst.scan_layers)
    state = nnx.state(dst, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(dst, state)


def stored_scan_layers(tree: dict) -> Optional[bool]:
    """How a parameter tree (a checkpoint's nested dict) holds its layers: stacked along a leading
    axis (True, what `scan_layers` trains), one entry per layer (False), or unknown (None)."""
    layers = tree.get("layers")
    if not isinstance(layers, dict) or not layers:
        return None
    return not all(str(k).isdigit() for k in layers)


def restack_layers(params: dict, num_layers: int, to_scan: bool) -> dict:
    """A pure-dict parameter tree with its layers converted to the other layout: stacked along a
    leading axis (`to_scan`) or one entry per layer (MaxText's scanned/unscanned conversion)."""
    layers = params["layers"]
    if to_scan:
        per = [layers[i] if i in layers else layers[str(i)] for i in range(num_layers)]
        new = jax.tree.map(lambda *xs: jnp.stack(xs), *per)
    else:
        new = {i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)}
    return {**params, "layers": new}


def keep_layers(params: dict, keep: list[int], scanned: bool) -> dict:
    """A pure-dict parameter tree with only the layers `keep` (in order, renumbered from 0): a
    pruned student made from its teacher. `scanned`: the layers are stacked along a leading axis."""
    layers = params["layers"]
    if scanned:
        idx = jnp.asarray(keep, jnp.int32)
        new = jax.tree.map(lambda a: a[idx], layers)
    else:
        new = {j: layers[i] if i in layers else layers[str(i)] for j, i in enumerate(keep)}
    return {**params, "layers": new}
