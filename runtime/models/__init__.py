"""Model families built from a `ModelArch`: the transformer, its sharding rules (one module per
family where a family differs)."""
