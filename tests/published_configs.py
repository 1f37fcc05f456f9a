"""Published Hugging Face config.json files the catalog must equal (no jax: the rule tests import them)."""

from __future__ import annotations

# google/gemma-3-{4b,12b,27b}-pt (and -it) config.json as published (transformers 4.50): the text_config
# gives only what differs from Gemma3TextConfig's defaults (vocab_size 262208, 8 heads, 4 kv heads,
# head_dim 256, query_pre_attn_scalar 256, rope_theta 1e6, rope_local_base_freq 1e4, pattern 6).
# Cross-checked field by field against MaxText's copies of the same three configs
# (src/maxtext/checkpoint_conversion/utils/hf_model_configs.py at e591f30: hidden, intermediate,
# layers, heads, kv heads, head_dim, query_pre_attn_scalar, window 1024, linear x8 all equal; MaxText
# states the text vocabulary, 262144, where the published text_config keeps the default 262208).
GEMMA3_MM_HF = {
    "gemma3-4b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34),
    "gemma3-12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                       num_key_value_heads=8),
    "gemma3-27b": dict(head_dim=128, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                       num_attention_heads=32, num_key_value_heads=16, query_pre_attn_scalar=168),
}


def gemma3_published(name: str) -> dict:
    """The multimodal config.json of the catalog model `name` (vision_config abridged: never read)."""
    return dict(architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3", boi_token_index=255999,
                eoi_token_index=256000, image_token_index=262144, mm_tokens_per_image=256,
                text_config=dict(GEMMA3_MM_HF[name], model_type="gemma3_text", sliding_window=1024,
                                 rope_scaling={"factor": 8.0, "rope_type": "linear"}),
                vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, num_hidden_layers=27))
