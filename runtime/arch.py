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
    """RoPE frequency scaling. `llama3` (Llama 3.1+, Hugging Face `rope_scaling: {rope_type: llama3,
    ...}`): wavelengths longer than original_max_position / low_freq_factor are divided by `factor`,
    those shorter than original_max_position / high_freq_factor are kept, and the band between is
    interpolated smoothly. `linear` (Gemma 3's global layers, `rope_type: linear`): every frequency
    divided by `factor` (positions interpolated)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kind: Literal["llama3", "linear"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: Optional[float] = Field(None, gt=0, description="llama3 only.")
    high_freq_factor: Optional[float] = Field(None, gt=0, description="llama3 only.")
    original_max_position: Optional[int] = Field(None, gt=0, description="HF original_max_position_embeddings (llama3 only).")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "RopeScaling":
        """llama3 needs its three band parameters; linear has none (a stray one would be ignored)."""
        band = (self.low_freq_factor, self.high_freq_factor, self.original_max_position)
        if self.kind == "llama3" and any(x is None for x in band):
            raise ValueError("llama3 rope scaling needs low_freq_factor, high_freq_factor and original_max_position")
        if self.kind == "linear" and any(x is not None for x in band):
            raise ValueError("linear rope scaling takes only factor")
        return self


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
    rope_scaling: Optional[RopeScaling] = Field(
        None, description="RoPE frequency scaling (llama3 or linear); None = plain RoPE. With local_global "
        "attention it applies to the global layers only (gemma3).")
    rope_local_theta: Optional[float] = Field(
        None, gt=0, description="RoPE base of the local (sliding-window) layers; None = rope_theta (gemma3: 10000, "
        "its global layers 1e6).")
    attention_bias: bool = Field(False, description="q/k/v projections carry biases (qwen2.5).")
    qk_norm: bool = Field(False, description="RMSNorm over head_dim on queries and keys before RoPE (qwen3).")
    activation: Literal["silu", "gelu_tanh"] = Field("silu", description="Gated MLP activation: SwiGLU or GeGLU (gemma).")
    norm_plus_one: bool = Field(False, description="RMSNorm scales stored as w, applied as (1 + w) (gemma).")
    embed_scale: bool = Field(False, description="Embeddings times sqrt(emb_dim), rounded to the weight dtype (gemma).")
    post_norms: bool = Field(False, description="RMSNorm on the attention and MLP outputs before each residual "
                             "add: four norms per layer (gemma2/gemma3).")
    query_pre_attn_scalar: Optional[float] = Field(
        None, gt=0, description="Attention logits scaled by query_pre_attn_scalar^-1/2 instead of head_dim^-1/2 "
        "(gemma2/gemma3; 27B: emb_dim / num_heads).")
    attn_logit_softcap: Optional[float] = Field(
        None, gt=0, description="Attention logits -> cap * tanh(logits / cap) before masking (gemma2: 50).")
    final_logit_softcap: Optional[float] = Field(
        None, gt=0, description="Output logits -> cap * tanh(logits / cap) (gemma2: 30).")
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

    @property
    def attn_scale(self) -> float:
        """The factor on q.k: query_pre_attn_scalar^-1/2 where given (gemma2/gemma3), else head_dim^-1/2."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def local_layers(self) -> tuple[bool, ...]:
        """Which layers attend through the sliding window (True) rather than globally. With
        `local_global_ratio` "a:b" the pattern is a local layers then b global ones, repeated from
        layer 0: gemma2's "1:1" makes the even layers local, gemma3's "5:1" every sixth layer global
        (layers 5, 11, ...), as transformers' layer_types and MaxText's decoder blocks do."""
        if self.attention != "local_global":
            return (False,) * self.num_layers
        local, glob = local_global_counts(self.local_global_ratio)
        return tuple(i % (local + glob) < local for i in range(self.num_layers))

    def param_count(self) -> int:
        """Published count when known, else computed from the shapes (embeddings included)."""
        if self.params:
            return self.params
        d, h, kv, hd = self.emb_dim, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        attn += (h + 2 * kv) * hd if self.attention_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        mlp = 3 * d * self.mlp_dim * self.num_experts + (d * self.num_experts if self.num_experts > 1 else 0)
        layer = attn + mlp + (4 if self.post_norms else 2) * d
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * layer + emb + d


def local_global_counts(ratio: Optional[str]) -> tuple[int, int]:
    """(local, global) layers per repeat of a local_global_ratio such as "5:1"; ValueError if unreadable."""
    parts = (ratio or "").split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"local_global_ratio {ratio!r} is not 'LOCAL:GLOBAL' (e.g. '1:1', '5:1')")
    local, glob = (int(p) for p in parts)
    if local + glob == 0:
        raise ValueError(f"local_global_ratio {ratio!r} has no layers")
    return local, glob


# Catalog families whose conventions this runtime does not build yet, with what is missing: refused
# (DC100) until they are exact, never run as a silently different function. Every family of the
# catalog's dense models is now the decoder the ModelArch fields describe in full (RMSNorm or gemma's
# (1 + w) RMSNorm, post-block norms, rotate-half RoPE with llama3 or linear scaling and a local base,
# SwiGLU or GeGLU, q/k/v biases, q/k norms, scaled embeddings, query scaling, soft-capping, sliding
# windows, tied or untied embeddings), each checked against transformers' logits
# (tests/test_hf_models.py); MoE families are refused by num_experts below. A family whose
# conventions change (a new release) is listed here until it is exact again.
NOT_EXACT_FAMILIES: dict[str, str] = {}


def unbuildable(arch: ModelArch) -> Optional[str]:
    """Why the distillc runtime cannot build `arch`, or None when it can. Part of the contract: the
    compiler's rule DC100 reports it at the spec's model (with `--target maxtext` as the way out)
    and runtime/models asserts it, so a spec never reaches a cluster to fail there."""
    if arch.attention == "mla":
        return "attention 'mla' (this runtime builds global and interleaved local/global attention only)"
    if arch.attention == "local_global":
        if arch.sliding_window is None:
            return "local_global attention without a sliding_window"
        try:
            local_global_counts(arch.local_global_ratio)
        except ValueError as e:
            return str(e)
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
