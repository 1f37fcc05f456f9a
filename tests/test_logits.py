"""`distillc logits CHECKPOINT --golden F.jsonl` (MaxText's golden format): per-prompt max KL, max
|difference| and top-1 agreement; exit 1 past --max-kl, exit 2 with one line for a bad file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from distillc.runtime.convert.logits import compare, read_golden, run_logits, write_rows
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
