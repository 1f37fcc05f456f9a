"""The runtime config is as strict as the spec: exact types, the spec's bounds (runtime/bounds.py,
one definition), no NaN or infinity, cross-field checks; and every path is checked before the first
step. Each bad value is exit 2 with a message naming it, never a traceback (issue 15)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillc.runtime import bounds, main
from distillc.runtime.config import RuntimeConfig, load
from tests.runtime_configs import make_config


@pytest.fixture(scope="module")
def good() -> dict:
    return json.loads(make_config("/tmp/distillc-test-config-run").model_dump_json())


def _set(tree: dict, path: str, value) -> dict:
    out = copy.deepcopy(tree)
    node = out
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return out


def _load_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(main.ConfigError) as e:
        main.load_config(path)
    return str(e.value)


def test_a_compiled_config_round_trips(good):
    assert load(json.dumps(good)) == RuntimeConfig.model_validate(good)


# (key path, value, what the message says): the values both fault campaigns trained with exit 0 or
# died on with a traceback
BAD = [
    ("train.steps", "4", "train.steps"),
    ("train.steps", True, "train.steps"),
    ("train.steps", 4.0, "train.steps"),
    ("train.steps", 2**40, "train.steps"),
    ("optimizer.learning_rate", "3e-3", "optimizer.learning_rate"),
    ("optimizer.eps", -1.0, "optimizer.eps"),
    ("optimizer.eps", 0.0, "optimizer.eps"),
    ("optimizer.b1", 2.0, "optimizer.b1"),
    ("optimizer.b2", 1.0, "optimizer.b2"),
    ("loss.alpha.start", 2.0, "alpha 2 is outside [0, 1]"),
    ("loss.alpha.start", -1.0, "alpha -1 is outside [0, 1]"),
    ("loss.beta.start", -0.5, "beta -0.5"),
    ("loss.temperature.start", -1.0, "temperature -1 is not a positive finite number"),
    ("loss.temperature.start", 0.0, "temperature 0 is not a positive"),
    ("loss.temperature.start", 1e-30, "below 0.01"),
    ("loss.compare_vocab", 1000, "compare_vocab 1000 exceeds the vocabulary both models share (256)"),
    ("loss.layer_pairs", [{"teacher": 5, "student": 0}], "layer_pairs[0].teacher 5 is out of range"),
    ("student.arch.num_heads", 3, "num_heads 3 is not a multiple of num_kv_heads 2"),
    ("name", "", "name"),
    ("name", "a/b", "name"),
    ("stage", "save_topk", "save_topk writes the offline top-k cache: it needs mode offline"),
    ("data.eval_fraction", 1.0, "data.eval_fraction"),
    ("mesh.data", 0, "mesh.data"),
]
BAD_TOGETHER = [  # two fields that are each fine
    ({"data.eval_fraction": 0.0, "train.eval_every": 2}, "train.eval_every 2 evaluates a held-out set, but there is none"),
]


@pytest.mark.parametrize("path, value, expect", BAD, ids=[f"{p}={v!r}" for p, v, _ in BAD])
def test_each_bad_value_is_one_message(tmp_path, good, path, value, expect):
    msg = _load_error(tmp_path, json.dumps(_set(good, path, value)))
    assert "not a valid runtime config" in msg and expect in msg, msg


@pytest.mark.parametrize("changes, expect", BAD_TOGETHER)
def test_fields_that_do_not_go_together(tmp_path, good, changes, expect):
    for path, value in changes.items():
        good = _set(good, path, value)
    assert expect in _load_error(tmp_path, json.dumps(good))


def test_no_held_out_set_says_so(tmp_path, capsys):
    cfg = make_config(tmp_path / "run", steps=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"eval_fraction": 0.0})})
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    assert main.main(["--config", str(path), "--no-progress"]) == main.EXIT_OK
    assert "held-out none (data.eval_fraction 0 and no data.eval_source)" in capsys.readouterr().out


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_refused(tmp_path, good, token):
    text = json.dumps(_set(good, "optimizer.learning_rate", 0.125)).replace("0.125", token)
    assert "optimizer.learning_rate" in _load_error(tmp_path, text)


# ---------------------------------------------------------------- fuzz

LEAVES = [p for p, _, _ in BAD] + [
    "train.checkpoint_every", "train.log_every", "train.eval_batches", "data.seq_len", "data.global_batch_size",
    "optimizer.grad_clip", "optimizer.warmup_steps", "loss.alpha.end", "loss.temperature.max_steps",
    "teacher.arch.vocab_size", "student.arch.emb_dim", "data.tokenizer", "teacher.checkpoint", "mode",
    "loss_chunk_size", "train.divergence.factor", "data.packing", "version",
]
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["4", "3e-3", "true", "", "\n", "../../etc", "gs://", "ñ"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _finite_numbers(tree) -> bool:
    if isinstance(tree, dict):
        return all(_finite_numbers(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_finite_numbers(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(LEAVES), value=HOSTILE)
def test_fuzz_config_is_accepted_within_bounds_or_refused_with_a_message(tmp_path, good, path, value):
    """Any single hostile value: a ConfigError naming the field, or a config that keeps every bound
    (never a traceback, never a coerced value)."""
    cfg_path = tmp_path / "fuzz.json"
    cfg_path.write_text(json.dumps(_set(good, path, value)))
    try:
        cfg = main.load_config(cfg_path)
    except main.ConfigError as e:
        assert "not a valid runtime config" in str(e) and "\n  " in str(e)
        return
    dumped = json.loads(cfg.model_dump_json())
    assert _finite_numbers(dumped)
    assert type(cfg.train.steps) is int and 0 < cfg.train.steps <= bounds.MAX_STEPS
    for name, problem in (("alpha", bounds.alpha_problem), ("temperature", bounds.temperature_problem),
                          ("beta", bounds.beta_problem)):
        assert all(problem(v) is None for v in getattr(cfg.loss, name).bounds())
    assert cfg.optimizer.eps > 0 and 0 <= cfg.optimizer.b1 < 1 and cfg.optimizer.learning_rate > 0
    leaf = path.split(".")[-1]
    if isinstance(value, (bool, str)) and leaf in {"steps", "learning_rate", "eps", "b1", "seq_len"}:
        pytest.fail(f"{path}={value!r} was coerced")


# ---------------------------------------------------------------- paths, before the first step

def _run(tmp_path: Path, cfg: RuntimeConfig, capsys) -> tuple[int, str]:
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    code = main.main(["--config", str(path), "--no-progress"])
    return code, capsys.readouterr().err


def test_teacher_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "teacher.bin").write_bytes(b"x")
    code, err = _run(tmp_path, make_config(tmp_path / "run", teacher_checkpoint=str(tmp_path / "teacher.bin")), capsys)
    assert code == main.EXIT_USAGE and "teacher.bin" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_tokenizer(tmp_path, capsys):
    cfg = make_config(tmp_path / "run")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"tokenizer": str(tmp_path / "nope.model")})})
    code, err = _run(tmp_path, cfg, capsys)
    assert code == main.EXIT_USAGE and "nope.model" in err and "does not exist" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_run_directory_under_a_file(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    code, err = _run(tmp_path, make_config(tmp_path / "plain" / "run"), capsys)
    assert code == main.EXIT_USAGE and "plain" in err and "Traceback" not in err
