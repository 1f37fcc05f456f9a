"""A Llama-family decoder-only transformer in Flax NNX, built from a `ModelArch`.

RMSNorm -> grouped-query attention with RoPE -> residual -> RMSNorm -> SwiGLU MLP -> residual, per
layer; a final RMSNorm; tied or untied output embedding. The same class builds the tiny local models
and the catalog's real shapes, with the variants the arch names: llama3 RoPE frequency scaling
(Llama 3.1+), q/k/v biases (qwen2.5), q/k RMSNorm before RoPE (qwen3), GeGLU with (1 + w) norms
and sqrt(D)-scaled embeddings (gemma), and gemma2/gemma3's post-block norms, query scaling,
attention and final logit soft-capping, and interleaved sliding-window (local) / global layers with
their own RoPE bases. Each family is checked against transformers' logits
(tests/test_hf_models.py); `arch.unbuildable` refuses the others.

Attention goes through `jax.nn.dot_product_attention` (its `local_window_size` for sliding windows;
cuDNN's fused kernel where asked), except for soft-capped layers (gemma2), which neither kernel
caps: those run `softcapped_attention`, an XLA implementation holding what XLA's kernel holds.
With stacked layers the local/global pattern is data (one flag per layer, `lax.cond` picks the kind).

Layers are either stacked (`scan_layers=True`: created with `nnx.split_rngs` + `nnx.vmap`, run with
`nnx.scan`, every parameter has a leading layer axis) or a plain Python list (a loop). Both compute
the same function; `convert/layout.copy_layers` moves weights between the two layouts.

Feature collection: `model(tokens, feature_layers=(3, 7))` also returns the attention
out-projection output (what MaxText sows as `out_projection_activations`) of those layers,
stacked as `[len(feature_layers), B, T, D]`. When few layers are selected only theirs are held
(never an [L, B, T, D] stack); with no feature layers nothing is collected, so a logit-only run pays nothing.

Parameters carry logical axis names (`out_sharding` metadata, not eagerly sharded) so the trainer
can map them onto its mesh: see models/sharding.py.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillc.runtime.arch import RopeScaling, unbuildable
from distillc.runtime.config import ModelArch, SideConfig

Array = jax.Array
Remat = Literal["none", "minimal", "full"]
AttentionImpl = Literal["xla", "cudnn"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

class ModelOutput(NamedTuple):
    """What a forward pass returns (a NamedTuple, hence a pytree that jit can return)."""

    logits: Optional[Array]  # [B, T, V] float32; None when called with return_hidden=True
    features: Optional[Array]  # [K, B, T, D] activation dtype, K = len(feature_layers); None if K == 0
    hidden: Optional[Array] = None  # [B, T, D] final-normed hidden state, only with return_hidden=True


# ----------------------------------------------------------------------------- building blocks

@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _normal(key, std, *, shape, dtype):
    # one compiled program per (shape, dtype) for the draw, the scaling and the cast
    return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)


def _param(key, shape: tuple[int, ...], param_dtype, names: tuple[str, ...], *, fan_in: int) -> nnx.Param:
    """N(0, 1/fan_in) weights tagged with logical axis names (metadata only, not sharded eagerly)."""
    value = _normal(key, jnp.float32(fan_in**-0.5), shape=shape, dtype=jnp.dtype(param_dtype))
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32, returned in `dtype`. With
    `plus_one` (gemma) the stored scale is w, initialised to 0, and applied as (1 + w)."""

    def __init__(self, dim: int, *, eps: float, param_dtype, dtype, plus_one: bool = False):
        self.eps = eps
        self.dtype = dtype
        self.plus_one = plus_one
        init = jnp.zeros if plus_one else jnp.ones
        self.scale = nnx.Param(init((dim,), param_dtype), out_sharding=("norm",), eager_sharding=False)

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        inv = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32)
        return (x32 * inv * (1.0 + scale if self.plus_one else scale)).astype(self.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None) -> np.ndarray:
    """The rotary frequencies [head_dim // 2] float32, computed on the host as transformers does.

    frequency_i = theta^(-2i / head_dim), i in [0, head_dim/2). With llama3 scaling (Llama 3.1+,
    HF `_compute_llama3_parameters`), for wavelength w_i = 2 pi / frequency_i and L the original
    context: w_i > L / low_freq_factor -> frequency_i / factor; w_i < L / high_freq_factor -> kept;
    in between, s = (L / w_i - low) / (high - low) and frequency_i * ((1 - s) / factor + s). With
    linear scaling (Gemma 3's global layers) every frequency_i / factor.
    """
    freq = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    freq = freq.astype(np.float32)
    if scaling is None:
        return freq
    if scaling.kind == "linear":  # HF _compute_linear_scaling_rope_parameters: inv_freq / factor
        return (freq / np.float32(scaling.factor)).astype(np.float32)
    assert scaling.low_freq_factor and scaling.high_freq_factor and scaling.original_max_position  # RopeScaling checks
    factor, low, high = np.float32(scaling.factor), np.float32(scaling.low_freq_factor), np.float32(scaling.high_freq_factor)
    old = np.float32(scaling.original_max_position)
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.float32(2 * np.pi) / freq
    scaled = np.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(positions: Array, head_dim: int, theta: float,
                scaling: Optional[RopeScaling] = None) -> tuple[Array, Array]:
    """sin, cos tables for rotary embeddings: each [B, T, head_dim // 2] float32; angle = position *
    frequency_i (`rope_frequencies`)."""
    freq = jnp.asarray(rope_frequencies(head_dim, theta, scaling))  # [hd/2]
    angle = positions.astype(jnp.float32)[..., None] * freq  # [B, T, hd/2]
    return jnp.sin(angle), jnp.cos(angle)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
    """Rotate pairs (x_i, x_{i+hd/2}) (the "rotate-half" layout of MaxText and HF Llama).

    x: [B, T, N, hd]; sin, cos: [B, T, hd/2].
    """
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)  # [B, T, N, hd/2] each
    s, c = sin[:, :, None, :], cos[:, :, None, :]
    out = jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    return out.astype(x.dtype)


class Rope(NamedTuple):
    """The rotary tables of one forward: sin, cos [B, T, head_dim // 2] for the global layers and for
    the local (sliding-window) ones, which gemma3 rotates with another base and without scaling
    (the same arrays when the two agree)."""

    sin: Array
    cos: Array
    local_sin: Array
    local_cos: Array


def soft_cap(x: Array, cap: Optional[float]) -> Array:
    """cap * tanh(x / cap) (gemma2's attention and final logit soft-capping); x unchanged for None."""
    if cap is None:
        return x
    return cap * jnp.tanh(x / cap)


def attention_mask(t: int, s: int, window: Optional[int], mask: Optional[Array]) -> Array:
    """Which keys each query may attend to, [B or 1, 1, T, S] bool: causal (key j <= query i), inside
    the sliding window (i - j < window, transformers' sliding_window_overlay), and `mask` (packed
    documents, [B, 1, T, S]) where given. Built from iotas, so XLA fuses it into its use."""
    i = jnp.arange(t)[:, None]
    j = jnp.arange(s)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    allowed = allowed[None, None]
    return allowed if mask is None else allowed & mask


def softcapped_attention(q: Array, k: Array, v: Array, *, scale: float, softcap: float, window: Optional[int],
                         mask: Optional[Array]) -> Array:
    """Grouped-query attention with gemma2's soft-capped logits, in XLA: softmax(mask(cap * tanh(q.k *
    scale / cap))) v. `jax.nn.dot_product_attention` has no soft-capping (nor has cuDNN's fused
    kernel), so these layers take this path on every backend. It holds the float32 logits [B, KV, G,
    T, S] as XLA's `dot_product_attention` does, and no more: keys and values are not repeated per
    query head (the group axis G = H / KV is an einsum axis) and the mask is [B or 1, 1, T, S].

    q: [B, T, H, hd]; k, v: [B, S, KV, hd]; returns [B, T, H, hd] in v's dtype.
    """
    b, t, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * jnp.float32(scale)
    logits = soft_cap(logits, softcap)
    allowed = attention_mask(t, k.shape[1], window, mask)[:, :, None]  # [B|1, 1, 1, T, S]
    logits = jnp.where(allowed, logits, jnp.float32(-0.7 * np.finfo(np.float32).max))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, h, hd)


def attend(q: Array, k: Array, v: Array, *, scale: float, window: Optional[int], softcap: Optional[float],
           mask: Optional[Array], impl: AttentionImpl) -> Array:
    """Causal attention of rotated q [B, T, H, hd] over k, v [B, S, KV, hd], restricted to a sliding
    window of `window` keys (i - j < window) and to `mask` (packed documents) where given.
    Without soft-capping: `jax.nn.dot_product_attention` (cuDNN's fused kernel when asked and there
    is no dense mask, which only the XLA kernel takes); with it: `softcapped_attention`."""
    if softcap is not None:
        return softcapped_attention(q, k, v, scale=scale, softcap=softcap, window=window, mask=mask)
    local = None if window is None else (window - 1, 0)  # left keys besides the query itself, none right
    if mask is None:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, local_window_size=local,
                                            implementation=impl)
    # packed sequences: `mask` is causal within a segment already
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, local_window_size=local, implementation="xla")


class Attention(nnx.Module):
    """Causal grouped-query self-attention with RoPE; num_heads must be a multiple of num_kv_heads.
    Interleaved local/global attention (gemma2/gemma3): each call says whether its layer is local
    (a Python bool in a loop, a traced one in a scan, where `lax.cond` picks the branch)."""

    def __init__(self, arch: ModelArch, *, param_dtype, dtype, attention_impl: AttentionImpl, rngs: nnx.Rngs):
        d, h, kv, hd = arch.emb_dim, arch.num_heads, arch.num_kv_heads, arch.head_dim
        if h % kv:
            raise ValueError(f"{arch.name}: num_heads={h} is not a multiple of num_kv_heads={kv}")
        if hd % 2:
            raise ValueError(f"{arch.name}: head_dim={hd} must be even for RoPE")
        self.dtype = dtype
        self.head_dim = hd
        self.scale = arch.attn_scale
        self.softcap = arch.attn_logit_softcap
        self.window = arch.sliding_window if arch.attention == "local_global" else None
        self.attention_impl = attention_impl
        self.q = _param(rngs.params(), (d, h, hd), param_dtype, ("embed", "heads", "head_dim"), fan_in=d)
        self.k = _param(rngs.params(), (d, kv, hd), param_dtype, ("embed", "kv_heads", "head_dim"), fan_in=d)
        self.v = _param(rngs.params(), (d, kv, hd), param_dtype, ("embed", "kv_heads", "head_dim"), fan_in=d)
        self.o = _param(rngs.params(), (h, hd, d), param_dtype, ("heads", "head_dim", "embed"), fan_in=h * hd)
        self.bias = arch.attention_bias
        if arch.attention_bias:  # qwen2.5: q/k/v biases, zero at init
            def zeros(n, names):
                return nnx.Param(jnp.zeros((n, hd), param_dtype), out_sharding=names, eager_sharding=False)
            self.q_bias = zeros(h, ("heads", "head_dim"))
            self.k_bias = zeros(kv, ("kv_heads", "head_dim"))
            self.v_bias = zeros(kv, ("kv_heads", "head_dim"))
        self.qk_norm = arch.qk_norm
        if arch.qk_norm:  # qwen3, gemma3: RMSNorm over head_dim on queries and keys, before RoPE
            kw = dict(eps=arch.norm_eps, param_dtype=param_dtype, dtype=dtype, plus_one=arch.norm_plus_one)
            self.q_norm = RMSNorm(hd, **kw)
            self.k_norm = RMSNorm(hd, **kw)

    def __call__(self, x: Array, rope: Rope, mask: Optional[Array], local: bool | Array = False) -> Array:
        dt = self.dtype
        q = jnp.einsum("btd,dnh->btnh", x, self.q[...].astype(dt))  # [B, T, H, hd]
        k = jnp.einsum("btd,dnh->btnh", x, self.k[...].astype(dt))  # [B, T, KV, hd]
        v = jnp.einsum("btd,dnh->btnh", x, self.v[...].astype(dt))  # [B, T, KV, hd]
        if self.bias:
            q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)

        def core(is_local: bool) -> Array:
            sin, cos = (rope.local_sin, rope.local_cos) if is_local else (rope.sin, rope.cos)
            qr, kr = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
            return attend(qr, kr, v, scale=self.scale, window=self.window if is_local else None,
                          softcap=self.softcap, mask=mask, impl=self.attention_impl)

        if self.window is None:  # global attention only
            ctx = core(False)
        elif isinstance(local, (bool, np.bool_)):  # a listed layer: its kind is static
            ctx = core(bool(local))
        else:  # a scanned layer: its kind is data
            ctx = jax.lax.cond(local, lambda: core(True), lambda: core(False))
        return jnp.einsum("btnh,nhd->btd", ctx, self.o[...].astype(dt))  # [B, T, D]


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up)); GeGLU (gemma) with gelu's tanh approximation."""

    def __init__(self, arch: ModelArch, *, param_dtype, dtype, rngs: nnx.Rngs):
        d, f = arch.emb_dim, arch.mlp_dim
        self.dtype = dtype
        self.gelu = arch.activation == "gelu_tanh"
        self.gate = _param(rngs.params(), (d, f), param_dtype, ("embed", "mlp"), fan_in=d)
        self.up = _param(rngs.params(), (d, f), param_dtype, ("embed", "mlp"), fan_in=d)
        self.down = _param(rngs.params(), (f, d), param_dtype, ("mlp", "embed"), fan_in=f)

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        g = x @ self.gate[...].astype(dt)  # [B, T, F]
        u = x @ self.up[...].astype(dt)  # [B, T, F]
        act = jax.nn.gelu(g, approximate=True) if self.gelu else jax.nn.silu(g)
        return (act * u) @ self.down[...].astype(dt)  # [B, T, D]


class DecoderLayer(nnx.Module):
    """Pre-norm residual block (with `post_norms`, gemma2/gemma3, the attention and MLP outputs are
    normed again before their residual adds). Returns (new residual stream, attention out-projection
    output)."""

    def __init__(self, arch: ModelArch, *, param_dtype, dtype, attention_impl: AttentionImpl, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, dtype=dtype)
        norm = functools.partial(RMSNorm, arch.emb_dim, eps=arch.norm_eps, plus_one=arch.norm_plus_one, **kw)
        self.attn_norm = norm()
        self.attn = Attention(arch, attention_impl=attention_impl, rngs=rngs, **kw)
        self.mlp_norm = norm()
        self.mlp = MLP(arch, rngs=rngs, **kw)
        self.post_norms = arch.post_norms
        if arch.post_norms:
            self.post_attn_norm = norm()
            self.post_mlp_norm = norm()

    def __call__(self, x: Array, rope: Rope, mask: Optional[Array], local: bool | Array = False) -> tuple[Array, Array]:
        attn_out = self.attn(self.attn_norm(x), rope, mask, local)  # [B, T, D]
        x = x + (self.post_attn_norm(attn_out) if self.post_norms else attn_out)
        h = self.mlp(self.mlp_norm(x))
        x = x + (self.post_mlp_norm(h) if self.post_norms else h)
        return x, attn_out


def _layer_apply(remat: Remat) -> Callable:
    def apply(layer: DecoderLayer, x, rope, mask, local):
        return layer(x, rope, mask, local)

    if remat == "full":  # keep only the layer inputs; recompute everything in the backward pass
        return nnx.remat(apply)
    if remat == "minimal":  # keep the matmul outputs, recompute the cheap elementwise work
        return nnx.remat(apply, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    if remat == "none":
        return apply
    raise ValueError(f"remat must be none | minimal | full, got {remat!r}")


# ----------------------------------------------------------------------------- the model


class Transformer(nnx.Module):
    """Decoder-only Llama-family transformer.

    Args:
      arch: the architecture (catalog entry). Global or interleaved local/global attention and dense
        MLPs (`num_experts == 1`) are built here; other kinds raise ValueError (`arch.unbuildable`).
      scan_layers: stack the layers (leading layer axis, `nnx.scan`) or keep a Python list.
      param_dtype: dtype the parameters are stored in.
      dtype: activation (compute) dtype; norms, RoPE, softmax and logits are float32 regardless.
      remat: "none" | "minimal" (save matmul outputs) | "full" (recompute the whole layer).
      attention_impl: passed to `jax.nn.dot_product_attention` ("xla" everywhere; "cudnn" on GPU
        with bfloat16 activations for the fused flash kernel).
    """

    def __init__(
        self,
        arch: ModelArch,
        *,
        scan_layers: bool,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        remat: Remat = "none",
        attention_impl: Literal["xla", "cudnn"] = "xla",
        rngs: nnx.Rngs,
    ):
        if (why := unbuildable(arch)) is not None:  # the contract: rule DC100 refuses such specs
            raise ValueError(f"{arch.name}: {why}")
        self.arch = arch
        self.scan_layers = scan_layers
        self.dtype = dtype
        self.remat = remat
        _layer_apply(remat)  # validates the name early
        v, d = arch.vocab_size, arch.emb_dim
        # Embedding std 1/sqrt(D): with tied weights the initial logits have unit scale.
        self.embed = _param(rngs.params(), (v, d), param_dtype, ("vocab", "embed"), fan_in=d)
        kw = dict(param_dtype=param_dtype, dtype=dtype, attention_impl=attention_impl)
        if scan_layers:

            @nnx.split_rngs(splits=arch.num_layers)
            @nnx.vmap(axis_size=arch.num_layers, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
                return DecoderLayer(arch, rngs=rngs, **kw)

            # one DecoderLayer whose every parameter has a leading layer axis
            self.layers: DecoderLayer | nnx.List[DecoderLayer] = make_layers(rngs)
        else:
            self.layers = nnx.List([DecoderLayer(arch, rngs=rngs, **kw) for _ in range(arch.num_layers)])
        self.final_norm = RMSNorm(d, eps=arch.norm_eps, param_dtype=param_dtype, dtype=dtype, plus_one=arch.norm_plus_one)
        if not arch.tie_embeddings:
            self.lm_head = _param(rngs.params(), (d, v), param_dtype, ("embed", "vocab"), fan_in=d)

    def __call__(
        self,
        tokens: Array,  # [B, T] int32
        *,
        positions: Optional[Array] = None,  # [B, T] int32; default 0..T-1
        segment_ids: Optional[Array] = None,  # [B, T] int32, packed documents; attention stays inside one
        feature_layers: Sequence[int] = (),
        return_hidden: bool = False,
    ) -> ModelOutput:
        """Logits [B, T, V] float32 (or, with return_hidden, the final-normed hidden state [B, T, D]
        and no logits: `head()` then maps it to logits, e.g. chunk by chunk in
        `losses.chunked_distill_loss`, so [B, T, V] never exists at once)."""
        feature_layers = tuple(int(i) for i in feature_layers)
        n = self.arch.num_layers
        if any(not 0 <= i < n for i in feature_layers):
            raise ValueError(f"feature_layers {feature_layers} out of range for {n} layers")
        b, t = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        mask = None
        if segment_ids is not None:
            causal = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
            same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
            mask = (causal[None] & same)[:, None]  # [B, 1, T, T]
        rope = self.rope(positions)
        local_flags = self.arch.local_layers()

        x = self.embed[...][tokens]  # [B, T, D]
        if self.arch.embed_scale:  # gemma: sqrt(D) rounded to the weight dtype, as transformers does
            x = x * jnp.asarray(self.arch.emb_dim**0.5, x.dtype)
        x = x.astype(self.dtype)
        apply = _layer_apply(self.remat)
        collect = bool(feature_layers)
        if self.scan_layers and 2 * len(set(feature_layers)) < n:
            # Few layers selected: only theirs are kept. Each layer writes its output into its slot of
            # a [U, B, T, D] buffer (U distinct selected layers; the others write out of range, which
            # is dropped), never an [L, B, T, D] stack. The write is linear in both operands, so the
            # backward pass keeps no copy of the buffer per layer; the buffer and its cotangent cost
            # 2U activations (measured: tests/test_model.py), less than the L of a stacked output.
            wanted = sorted(set(feature_layers))
            slots = np.full((n,), len(wanted), np.int32)
            slots[wanted] = np.arange(len(wanted), dtype=np.int32)

            @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=nnx.Carry)
            def body_kept(carry, layer, slot, local):
                x, kept = carry
                x, attn_out = apply(layer, x, rope, mask, local)
                if kept is not None:
                    kept = kept.at[slot].set(attn_out, mode="drop")
                return x, kept

            kept = jnp.zeros((len(wanted),) + x.shape, x.dtype) if collect else None
            x, kept = body_kept((x, kept), self.layers, jnp.asarray(slots), jnp.asarray(local_flags))  # kept: [U, B, T, D] or None
            order = [wanted.index(i) for i in feature_layers]
            features = None if kept is None else kept if order == list(range(len(wanted))) else kept[np.asarray(order)]
        elif self.scan_layers:  # half the layers or more selected: the stacked scan output is cheaper

            @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
            def body(x, layer, local):
                x, attn_out = apply(layer, x, rope, mask, local)
                return x, attn_out

            x, per_layer = body(x, self.layers, jnp.asarray(local_flags))  # [L, B, T, D]
            features = per_layer[np.asarray(feature_layers)]
        else:
            assert isinstance(self.layers, nnx.List)
            by_layer: dict[int, Array] = {}
            for i, layer in enumerate(self.layers):
                x, attn_out = apply(layer, x, rope, mask, local_flags[i])
                if i in feature_layers:
                    by_layer[i] = attn_out
            features = jnp.stack([by_layer[i] for i in feature_layers]) if collect else None

        h = self.final_norm(x)  # [B, T, D]
        if return_hidden:
            return ModelOutput(logits=None, features=features, hidden=h)
        logits = jnp.einsum("btd,dv->btv", h, self.head(), preferred_element_type=jnp.float32)
        return ModelOutput(logits=soft_cap(logits.astype(jnp.float32), self.arch.final_logit_softcap),
                           features=features)

    def rope(self, positions: Array) -> Rope:
        """The rotary tables for `positions` [B, T]: the global layers' (rope_theta, rope_scaling) and
        the local layers' (rope_local_theta or rope_theta, never scaled: gemma3's local layers)."""
        a = self.arch
        sin, cos = rope_tables(positions, a.head_dim, a.rope_theta, a.rope_scaling)
        if a.attention != "local_global" or ((a.rope_local_theta or a.rope_theta) == a.rope_theta
                                             and a.rope_scaling is None):
            return Rope(sin, cos, sin, cos)
        local_sin, local_cos = rope_tables(positions, a.head_dim, a.rope_local_theta or a.rope_theta)
        return Rope(sin, cos, local_sin, local_cos)

    def head(self) -> Array:
        """The output projection [D, V] in the activation dtype (E^T when embeddings are tied). The
        logits are `soft_cap(hidden @ head, arch.final_logit_softcap)`: chunked losses apply the cap."""
        w = self.embed[...].T if self.arch.tie_embeddings else self.lm_head[...]
        return w.astype(self.dtype)


# ----------------------------------------------------------------------------- helpers


def build_model(side: SideConfig, *, scan_layers: bool, rngs_seed: int | None = None,
                attention_impl: Literal["xla", "cudnn"] = "xla") -> Transformer:
    """The model of one side of the pair: its arch, dtypes, remat policy and init seed."""
    seed = side.init_seed if rngs_seed is None else rngs_seed
    return Transformer(
        side.arch,
        scan_layers=scan_layers,
        param_dtype=DTYPES[side.weight_dtype],
        dtype=DTYPES[side.activation_dtype],
        remat=side.remat,
        attention_impl=attention_impl,
        rngs=nnx.Rngs(params=seed),
    )


def count_params(model: nnx.Module) -> int:
    """Number of scalars in the model's nnx.Param leaves."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def matmul_params(arch: ModelArch) -> int:
    """Parameters that take part in a matmul per token: all layer kernels plus the output projection.

    Norm scales and the embedding lookup (a gather) are excluded; a tied output projection counts once.
    """
    d, h, kv, hd, f = arch.emb_dim, arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.mlp_dim
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    mlp = 3 * d * f * arch.experts_per_token + (d * arch.num_experts if arch.num_experts > 1 else 0)
    return arch.num_layers * (attn + mlp) + d * arch.vocab_size


def keys_per_query(seq_len: int, window: Optional[int], *, causal: bool = True) -> float:
    """Keys one query attends to, averaged over the sequence, as model FLOPs count them: T (T / 2
    when causal: the lower triangle) for global attention; for a causal sliding window of W < T
    keys, (W (W + 1) / 2 + (T - W) W) / T, rounded as W - W^2 / (2T) so that it meets T / 2 at W = T."""
    t = float(seq_len)
    if window is None or window >= seq_len:
        return t / 2.0 if causal else t
    w = float(window)
    return w - w * w / (2.0 * t) if causal else w


def flops_per_token(arch: ModelArch, seq_len: int, *, training: bool = True, causal: bool = True) -> float:
    """Model FLOPs per token, for MFU.

    forward = 2 * N_matmul + attention, attention = sum over layers of 2 * 2 * H * hd * K (QK^T and
    PV, each K*hd multiply-adds per head per token), K = the keys a query attends to: T, halved
    when causal (only the lower triangle is needed), fewer on sliding-window layers
    (`keys_per_query`; gemma2/gemma3's local layers). training = 3 * forward (backward = 2 *
    forward), i.e. the familiar 6N + 12*L*H*hd*T (PaLM appendix B; 6N + 6*L*H*hd*T with the causal
    halving). Remat recomputation is not counted (model FLOPs, not hardware FLOPs).
    """
    per_key = 4.0 * arch.num_heads * arch.head_dim
    attn = sum(per_key * keys_per_query(seq_len, arch.sliding_window if local else None, causal=causal)
               for local in arch.local_layers())
    fwd = 2.0 * matmul_params(arch) + attn
    return 3.0 * fwd if training else fwd
