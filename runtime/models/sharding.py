"""How the model's parameters lie on the device mesh: logical axis names -> mesh axes.

Every parameter carries logical axis names (`out_sharding` metadata set when the model is built,
never eagerly sharded); the trainer maps them onto its (data, fsdp, tensor) mesh with
`partition_specs`. Families differ in shapes, not in these rules, so the rules live here once.
"""

from __future__ import annotations

from typing import Optional

import jax
from flax import nnx
from jax.sharding import PartitionSpec


# Logical axis names used on parameters (the stacked layer axis is "layers").
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "layers")

# A default logical -> mesh-axis mapping for a (data, fsdp, tensor) mesh: FSDP shards the model
# dimension, tensor parallelism shards heads / MLP hidden / vocabulary. None = replicated.
DEFAULT_SHARDING_RULES: dict[str, Optional[str]] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
}

def partition_specs(model: nnx.Module, rules: dict[str, Optional[str]] | None = None):
    """PartitionSpecs for the model's state from its logical axis names and `rules`.

    Returns a State of PartitionSpec with the model state's structure (for NamedSharding(mesh, spec)).
    Logical names missing from `rules` are replicated; a mesh axis is used at most once per array.
    """
    rules = DEFAULT_SHARDING_RULES if rules is None else rules
    logical = nnx.get_partition_spec(nnx.state(model))

    def to_mesh(spec):
        if not isinstance(spec, PartitionSpec):
            return spec
        used: set[str] = set()
        out = []
        for name in spec:
            axis = rules.get(name) if name is not None else None
            if axis is not None and axis in used:
                axis = None
            if axis is not None:
                used.add(axis)
            out.append(axis)
        return PartitionSpec(*out)

    return jax.tree.map(to_mesh, logical, is_leaf=lambda x: isinstance(x, PartitionSpec))
