"""`distillc logits CHECKPOINT --golden F.jsonl` (MaxText's golden format): per-prompt max KL, max
|difference| and top-1 agreement; exit 1 past --max-kl, exit 2 with one line for a bad file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from distillc.runtime.convert.logits import (compare, read_golden, rows_from_prompts, run_logits, split_prompts,
                                             top_next, write_rows)
from distillc.runtime.train.checkpoints import CheckpointError

from tests.conftest import ROOT
from tests.test_hf_models import FIXTURES

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillc.compiler.cli", "logits", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_passes_on_the_goldens_and_fails_past_max_kl(tmp_path):
    ok = _cli(str(FIXTURES / "llama3.1"), "--golden", str(FIXTURES / "llama3.1" / "golden.jsonl"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("max KL") == 2 and "top-1 100.0%" in ok.stdout
    wrong = _cli(str(FIXTURES / "llama3.1"), "--golden", str(FIXTURES / "llama2" / "golden.jsonl"))
    assert wrong.returncode == 1 and "exceeds --max-kl" in wrong.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "tokens": [1, 2], "logits": [[0.0]]}\n')
    p = _cli(str(FIXTURES / "llama3.1"), "--golden", str(bad))
    assert p.returncode == 2 and f"{bad}:1" in p.stderr and "Traceback" not in p.stderr


def test_out_writes_our_logits_in_the_golden_format(tmp_path):
    rows = read_golden(str(FIXTURES / "qwen2.5" / "golden.jsonl"))
    ours = run_logits(str(FIXTURES / "qwen2.5"), rows)
    write_rows(str(tmp_path / "ours.jsonl"), rows, ours)
    again = read_golden(str(tmp_path / "ours.jsonl"))
    assert [r.tokens for r in again] == [r.tokens for r in rows]
    for r, x in zip(again, ours):
        assert r.logits is not None
        np.testing.assert_array_equal(r.logits, x)
        assert compare(r.prompt, r.logits, x).max_kl == 0.0


def test_bfloat16_is_close_not_exact():
    rows = read_golden(str(FIXTURES / "llama2" / "golden.jsonl"))
    ours = run_logits(str(FIXTURES / "llama2"), rows, dtype="bfloat16")
    c = compare(rows[0].prompt, rows[0].logits, ours[0])
    assert 0 < c.max_kl < 1e-2 and c.top1 > 0.9


def test_token_outside_the_vocabulary_is_an_error(tmp_path):
    golden = tmp_path / "g.jsonl"
    golden.write_text('{"prompt": "x", "tokens": [1, 500]}\n')
    with pytest.raises(CheckpointError, match="token id 500"):
        run_logits(str(FIXTURES / "llama2"), read_golden(str(golden)))


def test_prompts_make_goldens_that_round_trip_with_kl_0(tmp_path):
    """--prompts --tokenizer --out writes MaxText's golden format; --golden on that file passes
    with KL 0, and the tokens are the tokenizer's (no bos for the byte tokenizer)."""
    out = tmp_path / "new.jsonl"
    made = _cli(str(FIXTURES / "llama3.1-byte"), "--prompts", "hello;the cat", "--tokenizer", "byte", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout.count("next:") == 2 and f"wrote 2 golden rows to {out}" in made.stdout
    rows = read_golden(str(out))
    assert [(r.prompt, r.tokens) for r in rows] == [("hello", list(b"hello")), ("the cat", list(b"the cat"))]
    assert all(r.logits is not None and r.logits.shape == (len(r.tokens), 256) for r in rows)
    again = _cli(str(FIXTURES / "llama3.1-byte"), "--golden", str(out), "--max-kl", "0")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("max KL 0.000e+00") == 2


def test_prompts_put_bos_first_when_the_tokenizer_has_one(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "[UNK]": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rows, loaded = rows_from_prompts(split_prompts("a b;b"), str(tmp_path / "tokenizer.json"))
    assert [r.tokens for r in rows] == [[0, 2, 3], [0, 3]]
    ours = run_logits(str(FIXTURES / "llama2"), rows)
    top = top_next(ours[0], loaded, k=3)
    assert len(top) == 3 and top[0][2] >= top[1][2] >= top[2][2]
    assert top[0][1] == loaded.decode([top[0][0]])


@pytest.mark.parametrize("args, message", [
    (("--prompts", "a", "--tokenizer", "/nonexistent/distillc/tokenizer.json"), "/nonexistent/distillc/tokenizer.json"),
    (("--prompts", "a"), "--prompts needs --tokenizer"),
    (("--prompts", "a;;b", "--tokenizer", "byte"), "prompt 2 of 3 is empty"),
    (("--prompts", "", "--tokenizer", "byte"), "prompt 1 of 1 is empty"),
    (("--tokenizer", "byte"), "give --golden"),
])
def test_prompts_errors_exit_2_with_one_line(args, message):
    p = _cli(str(FIXTURES / "llama3.1-byte"), *args)
    assert p.returncode == 2, p.stdout
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
