"""A Hugging Face config.json read as a ModelArch: which fields it determines, and how it disagrees
with a spec's model. No jax (plain json and pydantic), so `distillc validate` checks a local
checkpoint's config.json against the spec (rule DC181) with the same code the runtime loads with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from distillc.runtime.arch import ModelArch, RopeScaling

# model_type -> the catalog families it holds (the last one is the family an architecture read from
# config.json alone gets)
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llama": ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3"),
    "mistral": ("mistral",),
    "qwen2": ("qwen2.5",),
    "qwen3": ("qwen3",),
    "gemma": ("gemma",),
}
_ANY_FAMILY = ("tiny", "inline")  # hand-described architectures: any model type of the decoder
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


class HFConfigError(ValueError):
    """A config.json of a model type or with a feature this runtime does not build."""


def hf_arch_fields(config: dict) -> dict[str, Any]:
    """The ModelArch fields a transformers config.json determines."""
    mt = config.get("model_type")
    if mt not in MODEL_TYPES:
        raise HFConfigError(f"model_type {mt!r} is not built by this runtime (built: {', '.join(MODEL_TYPES)})")
    unsupported = []
    act = config.get("hidden_activation") or config.get("hidden_act") or "silu"
    if mt == "gemma" and act == "gelu":  # Gemma's own configs say gelu; transformers runs the tanh approximation
        act = "gelu_pytorch_tanh"
    if act not in _ACTIVATIONS:
        unsupported.append(f"hidden_act {act!r}")
    if config.get("mlp_bias"):
        unsupported.append("mlp_bias")
    window = config.get("sliding_window")
    if window is not None and config.get("use_sliding_window", mt == "mistral"):
        unsupported.append(f"sliding_window {window}")
    rope = dict(config.get("rope_parameters") or {})
    rope.update(config.get("rope_scaling") or {})  # transformers < 5 wrote rope_scaling beside rope_theta
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if kind == "llama3":
        scaling = RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                              high_freq_factor=rope["high_freq_factor"],
                              original_max_position=rope["original_max_position_embeddings"])
    elif kind != "default":
        unsupported.append(f"rope_type {kind!r}")
    if unsupported:
        raise HFConfigError(f"{mt} checkpoint with {', '.join(unsupported)}: not built by this runtime")
    try:
        heads = int(config["num_attention_heads"])
        return dict(
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
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=mt == "qwen2" or bool(config.get("attention_bias", False)),
            qk_norm=mt == "qwen3",
            activation=_ACTIVATIONS[act],
            norm_plus_one=mt == "gemma",
            embed_scale=mt == "gemma",
        )
    except (KeyError, TypeError, ValueError) as e:
        raise HFConfigError(f"{mt} config.json without a readable {e}") from e


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
        if getattr(arch, key) != value:
            out.append(f"{key}: checkpoint {value!r}, model {getattr(arch, key)!r}")
    return out


def local_config(path: str) -> Optional[dict]:
    """The config.json of a local Hugging Face directory (config.json beside *.safetensors), or
    None for anything else (remote paths, other formats); HFConfigError when it is unreadable."""
    root = Path(path)
    if "://" in path or not (root / "config.json").is_file():
        return None
    if not any(root.glob("*.safetensors")):
        return None
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise HFConfigError(f"{root / 'config.json'}: unreadable JSON ({e})") from e
    if not isinstance(config, dict):
        raise HFConfigError(f"{root / 'config.json'}: not a JSON object")
    return config
