"""The trainer on tiny models: it learns, the teacher stays frozen, non-finite losses stop it, and
`python -m distillc.runtime.main` reports config mistakes without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillc.runtime.train.checkpoints import save_params
from distillc.runtime.train.metrics import read_jsonl
from distillc.runtime.train.params import init_params
from distillc.runtime.train.trainer import NonFiniteLoss, Trainer, train

from tests.runtime_configs import make_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

GUIDE_METRICS = ("soft_loss", "hard_loss", "teacher_ce", "student_perplexity", "teacher_perplexity", "kl_T",
                 "kl_T1", "feature_loss", "total_loss", "alpha", "temperature", "beta", "tokens_per_sec",
                 "step_time_s", "learning_rate", "grad_norm")


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    """A teacher briefly trained with CE, so that distilling from it is meaningful."""
    d = tmp_path_factory.mktemp("teacher")
    cfg = make_config(d / "run", name="teacher", alpha=0.0, steps=30, lr=1e-2, checkpoint_every=30, log_every=30)
    result = train(cfg, console=False)
    save_params(str(d / "params"), result.params)
    return str(d / "params")


def test_distillation_reduces_loss_and_logs_every_guide_metric(tmp_path, teacher_ckpt):
    cfg = make_config(tmp_path, teacher_checkpoint=teacher_ckpt, alpha=0.7, temperature=2.0, steps=30,
                      log_every=5, lr=1e-2, eval_every=10)
    trainer = Trainer(cfg, console=False)
    teacher_before = jax.tree.map(np.asarray, trainer.objective.frozen)
    result = trainer.run()
    log = result.train_log
    assert log[-1]["total_loss"] < 0.8 * log[0]["total_loss"]
    assert log[-1]["kl_T1"] < log[0]["kl_T1"]
    records = read_jsonl(cfg.output.metrics_file)
    train_recs = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [5, 10, 15, 20, 25, 30]
    for name in GUIDE_METRICS:
        assert name in train_recs[-1], name
    assert train_recs[-1]["temperature"] == 2.0 and train_recs[-1]["alpha"] == pytest.approx(0.7)
    # soft loss = T^2 * KL_T (the guide's Hinton scaling)
    assert train_recs[-1]["soft_loss"] == pytest.approx(4.0 * train_recs[-1]["kl_T"], rel=1e-5)
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and "kl_T1" in evals[-1]
    assert evals[-1]["kl_T1"] < evals[0]["kl_T1"]  # the student moves towards the teacher
    assert list((Path(cfg.output.tensorboard_dir)).glob("events.out.tfevents.*"))
    # the teacher is frozen: unchanged, and not in the optimizer state
    for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(trainer.objective.frozen)):
        np.testing.assert_array_equal(a, np.asarray(b))
    student_shapes = sorted(x.shape for x in jax.tree.leaves(trainer.state.params))
    opt_shapes = sorted(x.shape for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim > 0)
    assert opt_shapes == sorted(student_shapes * 2)  # Adam's mu and nu of the student only


def test_bf16_teacher_is_restored_in_bf16(tmp_path, teacher_ckpt):
    cfg = make_config(tmp_path, teacher_checkpoint=teacher_ckpt, steps=2)
    cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"weight_dtype": "bfloat16"})})
    trainer = Trainer(cfg, console=False)
    assert {x.dtype for x in jax.tree.leaves(trainer.objective.frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(trainer.state.params)} == {jnp.dtype(jnp.float32)}
    trainer.run()


def test_ce_only_config_loads_no_teacher(tmp_path):
    cfg = make_config(tmp_path, alpha=0.0, teacher_checkpoint=str(tmp_path / "no-such-teacher"), steps=3)
    result = train(cfg, console=False)
    assert result.final_step == 3 and "teacher_ce" not in result.eval and "hard_loss" in result.eval


def _nan_teacher(tmp_path) -> str:
    """A teacher checkpoint whose final norm is NaN: its logits are NaN, the student's are not."""
    cfg = make_config(tmp_path / "t")
    from distillc.runtime.train.distributed import make_mesh

    _, params = init_params(cfg.teacher, cfg.scan_layers, make_mesh(cfg.mesh))
    params["final_norm"]["scale"].set_value(jnp.full_like(params["final_norm"]["scale"][...], jnp.nan))
    save_params(str(tmp_path / "nan-teacher"), params)
    return str(tmp_path / "nan-teacher")


def test_nan_teacher_stops_at_step_0_without_updating(tmp_path):
    cfg = make_config(tmp_path / "run", teacher_checkpoint=_nan_teacher(tmp_path), steps=6, checkpoint_every=2)
    trainer = Trainer(cfg, console=False)
    before = jax.tree.map(np.asarray, trainer.state.params)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.run()
    assert info.value.step == 0 and "teacher" in info.value.terms and "hard" not in info.value.terms
    assert "step 0" in str(info.value) and "teacher" in str(info.value)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(trainer.state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))  # the update was never applied
    assert int(trainer.state.step) == 0
    assert not list(Path(cfg.output.checkpoint_dir).glob("[0-9]*"))  # and nothing was checkpointed


def test_diverging_student_stops_at_the_first_bad_step_naming_the_hard_loss(tmp_path):
    # lr 1e30: step 0 is finite and its update blows the weights up; step 1's losses are not finite.
    cfg = make_config(tmp_path / "run", alpha=0.0, lr=1e30, warmup=0, steps=6, log_every=1)
    trainer = Trainer(cfg, console=False)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.run()
    assert info.value.step == 1 and "hard" in info.value.terms
    assert int(trainer.state.step) == 1  # step 0's update applied, step 1's not
    assert [r["step"] for r in read_jsonl(cfg.output.metrics_file)] == [1]


def _main(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillc.runtime.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_main_non_finite_exit_code_and_message(tmp_path):
    cfg = make_config(tmp_path / "run", teacher_checkpoint=_nan_teacher(tmp_path), steps=4)
    path = tmp_path / "run.json"
    path.write_text(cfg.model_dump_json())
    p = _main("--config", str(path), "--no-progress")
    assert p.returncode == 3, p.stderr
    assert "non-finite" in p.stderr and "teacher" in p.stderr and "step 0" in p.stderr
    assert "Traceback" not in p.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["name"] == cfg.name and "--config" in manifest["command"]


class TestMainConfigErrors:
    def test_missing_file(self, tmp_path):
        p = _main("--config", str(tmp_path / "nope.json"))
        assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr

    def test_not_json(self, tmp_path):
        (tmp_path / "c.json").write_text("{\n  'name': 1\n}")
        p = _main("--config", str(tmp_path / "c.json"))
        assert p.returncode == 2 and "c.json:2:" in p.stderr and "Traceback" not in p.stderr

    def test_invalid_config_names_the_field(self, tmp_path):
        data = json.loads(make_config(tmp_path).model_dump_json())
        data["train"]["steps"] = 0
        del data["data"]["seq_len"]
        (tmp_path / "c.json").write_text(json.dumps(data))
        p = _main("--config", str(tmp_path / "c.json"))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert "train.steps" in p.stderr and "data.seq_len" in p.stderr

    def test_coordinator_flags_go_together(self, tmp_path):
        p = _main("--config", str(tmp_path / "c.json"), "--coordinator", "127.0.0.1:1")
        assert p.returncode == 2 and "go together" in p.stderr

    def test_stage_missing_from_the_build(self, tmp_path, monkeypatch, capsys):
        from distillc.runtime import main

        monkeypatch.setitem(main.STAGES, ("online", "train"), "distillc.runtime.no_such_stage:run_stage")
        code = main.run(make_config(tmp_path), ["test"], console=False)
        assert code == main.EXIT_UNAVAILABLE
        assert "not available in this build" in capsys.readouterr().err


def test_local_run_over_a_run_dir_of_another_model_is_one_clear_error(tmp_path, capsys):
    """`distillc launch --local` on a run directory written by another model or layer layout: the
    runtime's user errors end the local run with exit 2 and one message, never a traceback."""
    from distillc.runtime import main
    from distillc.runtime.local import run_local
    from tests.runtime_configs import arch

    first = make_config(tmp_path / "run", alpha=0.0, steps=2, checkpoint_every=2)
    assert run_local([first], Path("spec.yaml")) == main.EXIT_OK
    wider = arch("wider", layers=2, d=64, heads=2, mlp=64)
    second = make_config(tmp_path / "run", student=wider, alpha=0.0, steps=2, checkpoint_every=2)
    capsys.readouterr()
    assert run_local([second], Path("spec.yaml")) == main.EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds a run of a different plan" in err and "Traceback" not in err
    assert "student.arch.emb_dim: 32 -> 64" in err and "--restart" in err  # what and the fix
    # the layer layout is not part of the plan: the stored parameter tree catches it
    unscanned = first.model_copy(update={"scan_layers": not first.scan_layers})
    assert run_local([unscanned], Path("spec.yaml")) == main.EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds a different model or layer layout" in err and "Traceback" not in err
    assert "resume with the config that wrote it" in err


def test_beta_ramping_from_zero_gives_a_feature_loss_after_step_0(tmp_path):
    """The runtime sows the compiled layer pairs whatever beta is at step 0 (runtime/arch.feature_loss_on):
    a ramp from 0 turns the feature loss on as beta rises, unscanned layers included."""
    from distillc.runtime.config import LayerPair, Schedule

    cfg = make_config(tmp_path, steps=4, log_every=1, checkpoint_every=4)
    ramp = Schedule(kind="linear", start=0.0, end=1.0, max_steps=4)
    cfg = cfg.model_copy(update=dict(scan_layers=False, loss=cfg.loss.model_copy(update=dict(
        beta=ramp, layer_pairs=(LayerPair(teacher=0, student=0), LayerPair(teacher=1, student=1))))))
    assert cfg.loss.feature_enabled and ramp.value(0) == 0.0
    log = train(cfg, console=False).train_log
    rising = [r for r in log if r["beta"] > 0]
    assert rising and all(r["feature_loss"] > 0 for r in rising)
    assert all(r["feature_loss"] == 0 for r in log if r["beta"] == 0)


def test_local_memory_check_uses_the_compilers_estimate():
    """`launch --local` refuses by compiler/memory.py's model (the plan's figure), not a third one."""
    from distillc.compiler.resolve import resolve_checked
    from distillc.runtime.local import baseline_config, memory_estimate
    from tests.conftest import check_text, spec_text

    plan = resolve_checked(check_text(spec_text()))
    cfg = plan.train
    assert memory_estimate(cfg) == int(plan.memory["train"].total * cfg.mesh.size)
    assert memory_estimate(baseline_config(cfg)) < memory_estimate(cfg)  # a CE-only run loads no teacher


def test_a_broken_optimizer_stops_before_its_update_is_applied_or_saved(tmp_path):
    """eps 0: finite losses and gradients, but Adam's first update divides 0 by 0 on weights whose
    gradient is 0. The step halts on the updated state itself; no checkpoint ever holds a NaN."""
    cfg = make_config(tmp_path / "run", alpha=0.0, steps=4, checkpoint_every=1)
    cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"eps": 0.0})})
    trainer = Trainer(cfg, console=False)
    with pytest.raises(NonFiniteLoss) as info:
        trainer.run()
    assert "state" in info.value.terms and "optimizer state" in str(info.value)
    for leaf in jax.tree.leaves(trainer.state.params):
        assert np.isfinite(np.asarray(leaf)).all()
    saved = sorted(int(p.name) for p in Path(cfg.output.checkpoint_dir).glob("[0-9]*"))
    assert all(s <= info.value.step for s in saved)  # only steps before the bad one


def test_main_divergence_exit_code_and_message(tmp_path):
    """lr 1e4 with clipping 1.0: every value stays finite while the loss explodes; the run stops
    with exit 3 naming the step and the loss, and keeps no checkpoint after the spike."""
    cfg = make_config(tmp_path / "run", alpha=0.0, lr=1e4, warmup=0, steps=20, checkpoint_every=1)
    path = tmp_path / "run.json"
    path.write_text(cfg.model_dump_json())
    p = _main("--config", str(path), "--no-progress")
    assert p.returncode == 3, p.stderr
    assert "diverged at step" in p.stderr and "Traceback" not in p.stderr
    step = int(p.stderr.split("diverged at step ")[1].split(":")[0])
    saved = sorted(int(d.name) for d in Path(cfg.output.checkpoint_dir).glob("[0-9]*"))
    assert all(s <= step for s in saved), (saved, step)
