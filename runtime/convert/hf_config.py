"""A Hugging Face config.json read as a ModelArch: which fields it determines, and how it disagrees
with a spec's model. No jax (plain json and pydantic), so `distillc validate` checks a local
checkpoint's config.json against the spec (rule DC181) with the same code the runtime loads with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

from distillc.runtime.arch import ModelArch, RopeScaling

# model_type -> the catalog families it holds (the last one is the family an architecture read from
# config.json alone gets)
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llama": ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3"),
    "mistral": ("mistral",),
    "qwen2": ("qwen2.5",),
    "qwen3": ("qwen3",),
    "gemma": ("gemma",),
    "gemma2": ("gemma2",),
    "gemma3_text": ("gemma3",),
    "gemma3": ("gemma3",),  # Gemma3ForConditionalGeneration: its text decoder (text_config), the vision tower ignored
}
_GEMMAS = ("gemma", "gemma2", "gemma3_text")  # (1 + w) norms, sqrt(D)-scaled embeddings
_SANDWICH = ("gemma2", "gemma3_text")  # post-block norms, query_pre_attn_scalar, local/global layers
_LAYER_TYPES = {"sliding_attention": True, "full_attention": False}
# transformers' defaults for the keys a config.json may leave out (Gemma2Config, Gemma3TextConfig)
_SANDWICH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": 30.0,
               "attn_logit_softcapping": 50.0},
    "gemma3_text": {"query_pre_attn_scalar": 256, "sliding_window": 4096, "final_logit_softcapping": None},
}
# transformers' Gemma3TextConfig defaults: the published multimodal config.json files (google/gemma-3-4b-pt
# and the rest) leave most of text_config out (4b: no vocab_size, heads, head_dim, rope_theta)
_GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "sliding_window_pattern": 6, "final_logit_softcapping": None,
    "attn_logit_softcapping": None, "attention_bias": False,
}
# the image token's id (Gemma3Config's default): the multimodal embedding's rows from it on are the image
# token and unused ids, past every text id (262208 rows, text ids < 262144)
_GEMMA3_IMAGE_TOKEN = 262144
_ANY_FAMILY = ("tiny", "inline")  # hand-described architectures: any model type of the decoder
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


class HFConfigError(ValueError):
    """A config.json of a model type or with a feature this runtime does not build."""


def _rope_scaling(rope: dict, unsupported: list[str]) -> Optional[RopeScaling]:
    """The RoPE scaling of one rope_parameters / rope_scaling entry (llama3 or linear), None for the
    default; other kinds are appended to `unsupported`."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "llama3":
        return RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                           high_freq_factor=rope["high_freq_factor"],
                           original_max_position=rope["original_max_position_embeddings"])
    if kind == "linear":
        return RopeScaling(kind="linear", factor=rope["factor"])
    if kind != "default":
        unsupported.append(f"rope_type {kind!r}")
    return None


def _layer_pattern(config: dict, mt: str, layers: int) -> list[bool]:
    """Which layers attend through the sliding window (transformers' layer_types, or the default
    pattern its gemma2 / gemma3_text config derives when config.json has none: gemma2 every even
    layer, gemma3 all but every sliding_window_pattern-th)."""
    types = config.get("layer_types")
    if types is not None:
        if len(types) != layers or any(t not in _LAYER_TYPES for t in types):
            raise HFConfigError(f"{mt} config.json layer_types {types!r}: not {layers} of {sorted(_LAYER_TYPES)}")
        return [_LAYER_TYPES[t] for t in types]
    period = 2 if mt == "gemma2" else int(config.get("sliding_window_pattern") or 6)
    return [bool((i + 1) % period) for i in range(layers)]


def _ratio(local: list[bool]) -> Optional[str]:
    """The local_global_ratio "a:b" whose repeat from layer 0 (a local layers, then b global) gives
    exactly `local`, or None when no such ratio does (an irregular pattern this runtime does not build)."""
    for period in range(1, len(local) + 1):
        a = sum(local[:period])
        if local[:a] != [True] * a or any(x != (i % period < a) for i, x in enumerate(local)):
            continue
        return f"{a}:{period - a}"
    return None


def _sandwich_fields(config: dict, mt: str, unsupported: list[str]) -> dict[str, Any]:
    """gemma2 / gemma3_text: the interleaved local/global attention (sliding window, layer pattern,
    the local layers' RoPE base), query scaling and soft-capping, as transformers computes them."""
    config = {**_SANDWICH_DEFAULTS[mt], **config}
    out: dict[str, Any] = dict(post_norms=True, query_pre_attn_scalar=float(config["query_pre_attn_scalar"]),
                               final_logit_softcap=config["final_logit_softcapping"])
    # gemma3's attention never passes attn_logit_softcapping to its kernel (transformers' Gemma3Attention):
    # the value some configs carry changes nothing, so the function has no cap
    out["attn_logit_softcap"] = config["attn_logit_softcapping"] if mt == "gemma2" else None
    if config.get("use_bidirectional_attention"):
        unsupported.append("use_bidirectional_attention")
    local = _layer_pattern(config, mt, int(config["num_hidden_layers"]))
    window = config.get("sliding_window")
    if window is None or not any(local):
        out.update(attention="global", local_global_ratio=None, sliding_window=None)
    elif (ratio := _ratio(local)) is None:
        unsupported.append(f"layer pattern {['local' if x else 'global' for x in local]}")
    else:
        out.update(attention="local_global", local_global_ratio=ratio, sliding_window=int(window))
    rope = config.get("rope_parameters") or {}
    if mt == "gemma3_text":
        if "full_attention" in rope:  # transformers >= 5: one entry per layer type
            glob, loc = dict(rope["full_attention"] or {}), dict(rope.get("sliding_attention") or {})
        else:  # transformers 4: rope_theta / rope_scaling for the global layers, rope_local_base_freq
            glob = {"rope_theta": config.get("rope_theta", 1e6), **(config.get("rope_scaling") or {})}
            loc = {"rope_theta": config.get("rope_local_base_freq", 1e4)}
        out.update(rope_theta=float(glob.get("rope_theta", 1e6)), rope_scaling=_rope_scaling(glob, unsupported),
                   rope_local_theta=float(loc.get("rope_theta", 1e4)))
        if _rope_scaling(loc, unsupported) is not None:
            unsupported.append("rope scaling on the sliding-window layers")
    return out


def text_config(config: dict) -> dict:
    """The config of the decoder a checkpoint's config.json describes: itself, or for Gemma 3's
    multimodal checkpoints (model_type gemma3) its text_config over transformers' Gemma3TextConfig
    defaults, as a gemma3_text config (the vision tower's config is not read: a text-only forward
    never runs it)."""
    if config.get("model_type") != "gemma3":
        return config
    text = config.get("text_config") or {}
    if not isinstance(text, dict) or text.get("model_type", "gemma3_text") != "gemma3_text":
        raise HFConfigError(f"gemma3 config.json whose text_config is not a gemma3_text config: {text!r}")
    tied = {k: c["tie_word_embeddings"] for k, c in (("config", config), ("text_config", text))
            if c.get("tie_word_embeddings") is not None}
    if len(set(tied.values())) > 1:
        raise HFConfigError(f"gemma3 config.json ties its embeddings in one place and not the other: {tied}")
    return {**_GEMMA3_TEXT_DEFAULTS, "tie_word_embeddings": next(iter(tied.values()), True), **text,
            "model_type": "gemma3_text"}


def text_vocab(config: dict) -> Optional[int]:
    """The rows of a multimodal gemma3 checkpoint's embedding that hold text ids (those below its
    image token, 262144 as published), or None for a text-only checkpoint: a model of this many rows
    loads the checkpoint's first rows. Distillation compares logits over the text ids, and the rows
    past them are the image token and unused ids, which no text tokenizer produces."""
    if config.get("model_type") != "gemma3":
        return None
    return int(config.get("image_token_index") or config.get("image_token_id") or _GEMMA3_IMAGE_TOKEN)


def hf_arch_fields(config: dict) -> dict[str, Any]:
    """The ModelArch fields a transformers config.json determines (of the text decoder, for Gemma 3's
    multimodal checkpoints)."""
    config = text_config(config)
    mt = config.get("model_type")
    if mt not in MODEL_TYPES:
        raise HFConfigError(f"model_type {mt!r} is not built by this runtime (built: {', '.join(MODEL_TYPES)})")
    unsupported: list[str] = []
    act = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if mt == "gemma" and act == "gelu":  # Gemma's own configs say gelu; transformers runs the tanh approximation
        act = "gelu_pytorch_tanh"
    if act not in _ACTIVATIONS:
        unsupported.append(f"hidden_act {act!r}")
    if config.get("mlp_bias"):
        unsupported.append("mlp_bias")
    window = config.get("sliding_window")
    if mt not in _SANDWICH and window is not None and config.get("use_sliding_window", mt == "mistral"):
        unsupported.append(f"sliding_window {window}")
    try:
        rope = dict(config.get("rope_parameters") or {})
        if mt != "gemma3_text":  # gemma3's rope_parameters are per layer type (_sandwich_fields)
            rope.update(config.get("rope_scaling") or {})  # transformers < 5 wrote rope_scaling beside rope_theta
        scaling = None if mt == "gemma3_text" else _rope_scaling(rope, unsupported)
        sandwich = _sandwich_fields(config, mt, unsupported) if mt in _SANDWICH else {}
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, HFConfigError):
            raise
        raise HFConfigError(f"{mt} config.json without a readable {e}") from e
    if mt == "gemma2" and scaling is not None:  # one rotary table for every layer: not what the arch's scaling means
        unsupported.append("rope scaling")
    if unsupported:
        raise HFConfigError(f"{mt} checkpoint with {', '.join(unsupported)}: not built by this runtime")
    try:
        heads = int(config["num_attention_heads"])
        fields = dict(
            vocab_size=int(config["vocab_size"]),
            num_layers=int(config["num_hidden_layers"]),
            emb_dim=int(config["hidden_size"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            mlp_dim=int(config["intermediate_size"]),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
            rope_scaling=scaling,
            # transformers' Gemma configs tie by default (and Google's config.json files leave the key out)
            tie_embeddings=bool(config.get("tie_word_embeddings", mt in _GEMMAS)),
            attention_bias=mt == "qwen2" or bool(config.get("attention_bias", False)),
            qk_norm=mt in ("qwen3", "gemma3_text"),
            activation=_ACTIVATIONS[act],
            norm_plus_one=mt in _GEMMAS,
            embed_scale=mt in _GEMMAS,
            post_norms=False,
            query_pre_attn_scalar=None,
            attn_logit_softcap=None,
            final_logit_softcap=None,
            attention="global",
            local_global_ratio=None,
            sliding_window=None,
            rope_local_theta=None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise HFConfigError(f"{mt} config.json without a readable {e}") from e
    fields.update(sandwich)
    return fields


def arch_from_hf_config(config: dict, name: str) -> ModelArch:
    """The architecture a config.json describes (for checkpoints named without a catalog model)."""
    family = MODEL_TYPES[str(config.get("model_type"))][-1] if config.get("model_type") in MODEL_TYPES else "inline"
    return ModelArch(name=name, family=family, tokenizer=f"hf:{name}", **hf_arch_fields(config))


def config_differences(config: dict, arch: ModelArch) -> list[str]:
    """How a config.json disagrees with `arch` (model type and every field that changes the
    function); empty when it describes the same model."""
    fields = hf_arch_fields(config)
    mt = config["model_type"]
    out = []
    if arch.family not in MODEL_TYPES[mt] + _ANY_FAMILY:
        out.append(f"model_type {mt!r} is not family {arch.family!r}")
    for key, value in fields.items():
        if key == "vocab_size" and value == arch.shared_vocab < arch.vocab_size:
            continue  # the model's embedding is padded past the tokenizer's ids (gemma: 256000 -> 256128)
        if key == "vocab_size" and arch.vocab_size == text_vocab(config) and arch.vocab_size < value:
            continue  # gemma3 multimodal: the model is the embedding's text rows (262144 of 262208)
        if getattr(arch, key) != value:
            out.append(f"{key}: checkpoint {value!r}, model {getattr(arch, key)!r}")
    return out


def local_config(path: str) -> Optional[dict]:
    """The config.json of a local Hugging Face directory (config.json beside *.safetensors), or
    None for anything else (remote paths, other formats); HFConfigError when it is unreadable."""
    root = Path(path)
    try:
        if "://" in path or not (root / "config.json").is_file() or not any(root.glob("*.safetensors")):
            return None
    except OSError:  # a name too long, a permission: not a directory this reads (the runtime says why)
        return None
    try:
        raw = (root / "config.json").read_bytes()
    except OSError as e:
        raise HFConfigError(f"{root / 'config.json'}: unreadable JSON ({e})") from e
    return parse_config(raw, str(root / "config.json"))


def is_hf_listing(names: Iterable[str]) -> bool:
    """Whether a directory holding these names is a Hugging Face checkpoint (config.json beside
    *.safetensors): what `validate` asks of a gs:// directory's listing."""
    names = set(names)
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def parse_config(raw: bytes, where: str) -> dict:
    """A config.json's bytes as its JSON object; HFConfigError naming `where` when it is not one."""
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise HFConfigError(f"{where}: unreadable JSON ({e})") from e
    if not isinstance(config, dict):
        raise HFConfigError(f"{where}: not a JSON object")
    return config
