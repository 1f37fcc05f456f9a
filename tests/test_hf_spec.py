"""specs/hf-tiny.yaml end to end on CPU: the teacher loaded from a Hugging Face directory (never
trained over by --local), the student distilled, exported with `distillc export`, reloaded to the
same logits."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from distillc.runtime.convert.export import export_hf
from distillc.runtime.local import LocalReport, ensure_teacher
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params
from distillc.runtime.train.rundir import write_manifest
from distillc.runtime.train.trainer import Trainer

from tests.conftest import ROOT
from tests.test_hf_models import FIXTURES, goldens, max_kl, side

pytestmark = pytest.mark.slow
STEPS = 4


def test_hf_tiny_spec_distils_exports_and_reloads(tmp_path, monkeypatch):
    from distillc.compiler.launch import compile_launch

    monkeypatch.chdir(ROOT)  # the spec names the fixture by a relative path, as a user runs it
    compiled = compile_launch(ROOT / "specs" / "hf-tiny.yaml", cluster_name=None, local=True)
    assert compiled.ok, [d.message for d in compiled.diagnostics]
    (cfg,) = compiled.build.plan.configs
    assert cfg.teacher.format == "hf" and cfg.teacher.checkpoint == "tests/fixtures/hf/llama3.1-byte"
    run = tmp_path / "run"
    cfg = cfg.model_copy(update=dict(
        train=cfg.train.model_copy(update={"steps": STEPS, "checkpoint_every": STEPS, "log_every": 1}),
        output=cfg.output.model_copy(update=dict(run_dir=str(run), checkpoint_dir=str(run / "checkpoints"),
                                                 tensorboard_dir=str(run / "tensorboard"),
                                                 metrics_file=str(run / "metrics.jsonl")))))
    # --local restores a Hugging Face teacher; it never trains one over it
    assert ensure_teacher(cfg, LocalReport(), console=False) == "restored"

    trainer = Trainer(cfg, console=False)
    teacher = nnx.merge(trainer.objective.teacher_graphdef, trainer.objective.frozen)
    tokens, golden = goldens("llama3.1-byte")
    # the teacher's weight dtype is bfloat16 by default: close to transformers, not exact
    assert max_kl(golden, np.asarray(teacher(jax.numpy.asarray(tokens)).logits)) < 1e-2
    write_manifest(cfg, ["test"])
    result = trainer.run()
    assert result.final_step == STEPS and np.isfinite(result.train_log[-1]["kl_T1"])

    out = tmp_path / "student-hf"
    export_hf(str(run), str(out), dtype="float32")
    mesh = distributed.make_mesh(cfg.mesh)
    graphdef, params = load_params(side(cfg.student.arch, str(out)), cfg.scan_layers, mesh)
    x = jax.numpy.asarray(tokens)
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, params)(x).logits),
                                  np.asarray(nnx.merge(graphdef, result.params)(x).logits))
    assert (FIXTURES / "llama3.1-byte" / "config.json").exists()


def test_a_shipped_tokenizer_other_than_data_tokenizer_stops_the_run_with_exit_2(tmp_path, monkeypatch, capsys):
    """The runtime's side of DC185, for the paths validate does not read (gs://): before the Hugging
    Face teacher is loaded, its tokenizer.json is compared with data.tokenizer; exit 2, one line
    naming both files."""
    import shutil

    from distillc.compiler.launch import compile_launch
    from distillc.runtime.main import EXIT_USAGE, run

    monkeypatch.chdir(ROOT)
    compiled = compile_launch(ROOT / "specs" / "hf-tiny.yaml", cluster_name=None, local=True)
    (cfg,) = compiled.build.plan.configs
    ckpt = tmp_path / "teacher"
    shutil.copytree(FIXTURES / "llama3.1-byte", ckpt)
    shutil.copy(ROOT / "tests" / "fixtures" / "tokenizers" / "hf" / "tokenizer.json", ckpt / "tokenizer.json")
    other = ROOT / "tests" / "fixtures" / "tokenizers" / "other.json"
    run_dir = tmp_path / "run"
    cfg = cfg.model_copy(update=dict(
        teacher=cfg.teacher.model_copy(update={"checkpoint": str(ckpt)}),
        data=cfg.data.model_copy(update={"tokenizer": str(other)}),
        output=cfg.output.model_copy(update=dict(run_dir=str(run_dir), checkpoint_dir=str(run_dir / "checkpoints"),
                                                 tensorboard_dir=str(run_dir / "tensorboard"),
                                                 metrics_file=str(run_dir / "metrics.jsonl")))))
    assert run(cfg, ["test"], console=False) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and str(ckpt / "tokenizer.json") in err
