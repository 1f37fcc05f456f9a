"""A decoder-only transformer's shape: what the catalog lists, the spec may write inline, the
compiler sizes and the runtime builds. Pure pydantic, no jax; its own module so that `distillc
validate` imports it without the rest of the runtime contract (runtime/config.py re-exports it).
The contract's two predicates that the rules need at validate time live here for the same reason:
which architectures the runtime builds, and when the feature loss is on."""

# No `from __future__ import annotations`: real types spare pydantic evaluating each annotation
# string when it builds the model (part of `distillc validate`'s start-up).
import math
from typing import Iterable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

AttentionKind = Literal["global", "local_global", "mla"]


class RopeScaling(BaseModel):
    """Llama 3.1's RoPE frequency scaling (Hugging Face `rope_scaling: {rope_type: llama3, ...}`):
    wavelengths longer than original_max_position / low_freq_factor are divided by `factor`, those
    shorter than original_max_position / high_freq_factor are kept, and the band between is
    interpolated smoothly."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kind: Literal["llama3"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(gt=0)
    high_freq_factor: float = Field(gt=0)
    original_max_position: int = Field(gt=0, description="HF original_max_position_embeddings.")


class ModelArch(BaseModel):
    """A decoder-only transformer's shape: what the catalog lists and the runtime builds."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str = Field(description="Catalog name (MaxText model_name where one exists).")
    family: str = Field(description="Model family, e.g. llama3.1, gemma2, qwen2.5.")
    tokenizer: str = Field(description="Tokenizer identity; equal strings mean the same token ids.")
    vocab_size: int = Field(gt=0, description="Rows of the embedding / columns of the logits.")
    real_vocab_size: Optional[int] = Field(
        None, gt=0, description="Tokens the tokenizer can emit; rows past it are padding. Default vocab_size."
    )
    num_layers: int = Field(gt=0, description="Decoder layers.")
    emb_dim: int = Field(gt=0, description="Hidden size (d_model).")
    num_heads: int = Field(gt=0, description="Query heads.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(gt=0)
    mlp_dim: int = Field(gt=0, description="Hidden size of one (expert) MLP.")
    num_experts: int = Field(1, gt=0, description="Routed experts per MoE layer (1 = dense).")
    experts_per_token: int = Field(1, gt=0)
    params: Optional[int] = Field(None, gt=0, description="Total parameters as published.")
    attention: AttentionKind = Field("global", description="global | local_global (interleaved) | mla")
    local_global_ratio: Optional[str] = Field(None, description="e.g. '1:1' (gemma2) or '5:1' (gemma3).")
    sliding_window: Optional[int] = Field(None, gt=0)
    tie_embeddings: bool = False
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: Optional[RopeScaling] = Field(None, description="Llama 3.1-style frequency scaling; None = plain RoPE.")
    attention_bias: bool = Field(False, description="q/k/v projections carry biases (qwen2.5).")
    qk_norm: bool = Field(False, description="RMSNorm over head_dim on queries and keys before RoPE (qwen3).")
    activation: Literal["silu", "gelu_tanh"] = Field("silu", description="Gated MLP activation: SwiGLU or GeGLU (gemma).")
    norm_plus_one: bool = Field(False, description="RMSNorm scales stored as w, applied as (1 + w) (gemma).")
    embed_scale: bool = Field(False, description="Embeddings times sqrt(emb_dim), rounded to the weight dtype (gemma).")
    norm_eps: float = Field(1e-5, gt=0)
    max_seq_len: Optional[int] = Field(None, gt=0)
    source: str = Field("", description="Where the numbers come from.")

    @model_validator(mode="after")
    def _heads_group(self) -> "ModelArch":
        """Grouped-query attention shares each key/value head among num_heads / num_kv_heads query
        heads: the division must be exact (every reader of an arch, spec, catalog and runtime)."""
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self

    @property
    def shared_vocab(self) -> int:
        return self.real_vocab_size or self.vocab_size

    def param_count(self) -> int:
        """Published count when known, else computed from the shapes (embeddings included)."""
        if self.params:
            return self.params
        d, h, kv, hd = self.emb_dim, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        attn += (h + 2 * kv) * hd if self.attention_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        mlp = 3 * d * self.mlp_dim * self.num_experts + (d * self.num_experts if self.num_experts > 1 else 0)
        layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + d


# Catalog families whose conventions this runtime does not build yet, with what is missing: refused
# (DC100) until they are exact, never run as a silently different function. Every other family is
# the decoder the ModelArch fields describe in full (RMSNorm or gemma's (1 + w) RMSNorm, rotate-half
# RoPE with optional llama3 scaling, SwiGLU or GeGLU, q/k/v biases, q/k norms, scaled embeddings,
# tied or untied embeddings), each checked against
# transformers' logits (tests/test_hf_models.py); MoE families are refused by num_experts below.
NOT_EXACT_FAMILIES: dict[str, str] = {
    "gemma2": "GeGLU MLP, (1 + scale) and post-block norms, logit soft-capping, sliding windows",
    "gemma3": "GeGLU MLP, (1 + scale) and post-block norms, q/k norms, sliding windows, two RoPE bases",
}


def unbuildable(arch: ModelArch) -> Optional[str]:
    """Why the distillc runtime cannot build `arch`, or None when it can. Part of the contract: the
    compiler's rule DC100 reports it at the spec's model (with `--target maxtext` as the way out)
    and runtime/models asserts it, so a spec never reaches a cluster to fail there."""
    if arch.attention != "global":
        return f"attention {arch.attention!r} (this runtime builds global attention only)"
    if arch.num_experts != 1:
        return f"mixture of experts (num_experts {arch.num_experts}; this runtime builds dense MLPs only)"
    if arch.family in NOT_EXACT_FAMILIES:
        return f"family {arch.family!r} exactly (not built yet: {NOT_EXACT_FAMILIES[arch.family]})"
    return None


def feature_loss_on(beta_values: Iterable[float]) -> bool:
    """The one definition of "the feature loss is on": beta is positive at some step (a ramp from 0
    included). The compiler resolves layer pairs (and counts their memory) iff this holds in online
    mode, and the runtime sows exactly the compiled pairs, so nothing is decided from beta at step 0.
    `beta_values`: every value the schedule names (ramps are monotone between them)."""
    return any(v > 0 and math.isfinite(v) for v in beta_values)


def human_count(n: int) -> str:
    """A parameter count as people write it: 590.46K, 8.03B."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)
