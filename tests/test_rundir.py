"""Run identity and never writing over the user's files (issue 16).

A run directory records the digest of the plan that started it; a changed plan is refused (exit 2,
the differing fields, the ways out) and --restart moves the old run aside. A checkpoint save never
replaces what distillc did not write, and a teacher path holding something else is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distillc.runtime.train import rundir
from distillc.runtime.train.rundir import RunDirError, open_run, plan_digest, plan_identity

from tests.runtime_configs import make_config

ROOT = Path(__file__).resolve().parent.parent


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the digest


def test_digest_follows_the_function_trained_not_logging_or_paths(tmp_path):
    base = make_config(tmp_path / "a")
    same = [
        make_config(tmp_path / "elsewhere", name="other-name"),  # paths and names
        make_config(tmp_path / "a", log_every=3, checkpoint_every=2, eval_every=5, eval_batches=7),
        base.model_copy(update={"stage": "save_topk"}),  # each stage has its own directory
    ]
    changed = {
        "loss.alpha.start": make_config(tmp_path / "a", alpha=0.3),
        "loss.temperature.start": make_config(tmp_path / "a", temperature=2.0),
        "train.steps": make_config(tmp_path / "a", steps=9),
        "train.seed": make_config(tmp_path / "a", seed=1),
        "data.shuffle_seed": make_config(tmp_path / "a", shuffle_seed=3),
        "optimizer.learning_rate": make_config(tmp_path / "a", lr=1e-3),
        "teacher.checkpoint": make_config(tmp_path / "a", teacher_checkpoint="/somewhere/teacher"),
    }
    for cfg in same:
        assert plan_digest(cfg) == plan_digest(base)
    for field, cfg in changed.items():
        assert plan_digest(cfg) != plan_digest(base), field
        assert any(d.startswith(field + ":") for d in rundir.plan_differences(plan_identity(base), plan_identity(cfg)))


# ---------------------------------------------------------------- open_run


def test_manifest_is_written_once_and_a_changed_plan_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, *a: "20260101T000000Z")
    first = make_config(tmp_path / "run", alpha=0.9, temperature=1.0)
    opened = open_run(first, ["first"])
    manifest = tmp_path / "run" / "manifest.json"
    written = manifest.read_bytes()
    assert opened.new and json.loads(written)["plan_digest"] == plan_digest(first)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')

    # the same plan (other logging) resumes: the manifest still describes the run that started it
    assert not open_run(make_config(tmp_path / "run", alpha=0.9, log_every=5), ["again"]).new
    assert manifest.read_bytes() == written

    changed = make_config(tmp_path / "run", alpha=0.5, temperature=2.0)
    with pytest.raises(RunDirError) as e:
        open_run(changed, ["changed"])
    msg = str(e.value)
    assert "loss.alpha.start: 0.9 -> 0.5" in msg and "loss.temperature.start: 1.0 -> 2.0" in msg
    assert "`name`" in msg and "`train.output_dir`" in msg and "--restart" in msg
    assert manifest.read_bytes() == written

    before = _files(tmp_path / "run")
    opened = open_run(changed, ["restart"], restart=True)
    aside = tmp_path / "run.old-20260101T000000Z"
    assert opened.new and opened.moved_aside == aside
    assert _files(aside) == before  # moved, not deleted or changed
    assert json.loads(manifest.read_text())["plan_digest"] == plan_digest(changed)


def test_a_directory_with_run_files_but_no_manifest_is_not_written_over(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunDirError, match="holds checkpoints but no manifest.json"):
        open_run(make_config(run), ["x"])
    assert not (run / "manifest.json").exists()
    other = tmp_path / "mine"  # files distillc does not write are no obstacle (and are left alone)
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert open_run(make_config(other), ["x"]).new and (other / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- reproduction 1: the quickstart changed


def _quickstart(tmp_path: Path, alpha: float, temperature: float) -> list:
    """specs/quickstart.yaml with the given recipe, shrunk to 4 steps (teacher cache and outputs in tmp)."""
    from distillc.compiler.launch import compile_launch

    text = (ROOT / "specs" / "quickstart.yaml").read_text()
    text = (text.replace("alpha: 0.9", f"alpha: {alpha}").replace("temperature: 1.0", f"temperature: {temperature}")
            .replace("steps: 400", "steps: 4").replace("warmup_steps: 20", "warmup_steps: 1")
            .replace("checkpoint_every: 200", "checkpoint_every: 4").replace("seq_len: 64", "seq_len: 16")
            .replace("output_dir: runs", f"output_dir: {tmp_path / 'runs'}")
            .replace(".cache/distillc/quickstart-teacher", str(tmp_path / "teacher")))
    spec = tmp_path / "quickstart.yaml"
    spec.write_text(text + "\n")
    compiled = compile_launch(spec, cluster_name=None, local=True)
    assert compiled.ok, [d.message for d in compiled.diagnostics]
    return list(compiled.build.plan.configs)


@pytest.mark.slow
def test_changed_quickstart_recipe_is_refused_then_restarted(tmp_path, monkeypatch, capsys):
    from distillc.runtime import main
    from distillc.runtime.local import run_local

    monkeypatch.setenv("DISTILLC_CACHE", str(tmp_path / "cache"))
    assert run_local(_quickstart(tmp_path, 0.9, 1.0), Path("q.yaml"), teacher_steps_factor=1) == main.EXIT_OK
    run = tmp_path / "runs" / "quickstart"
    before = _files(run)
    capsys.readouterr()

    changed = _quickstart(tmp_path, 0.5, 2.0)
    assert run_local(changed, Path("q.yaml")) == main.EXIT_USAGE
    out, err = capsys.readouterr()
    assert "loss.alpha.start: 0.9 -> 0.5" in err and "loss.temperature.start: 1.0 -> 2.0" in err
    assert "--restart" in err and "Traceback" not in err and "KD - CE-only" not in out  # no old table
    assert _files(run) == before  # the manifest (and everything else) still describes the first run

    assert run_local(changed, Path("q.yaml"), restart=True) == main.EXIT_OK
    assert json.loads((run / "manifest.json").read_text())["config"]["loss"]["alpha"]["start"] == 0.5
    (aside,) = [p for p in run.parent.iterdir() if p.name.startswith("quickstart.old-")]
    assert _files(aside) == before
    # the unchanged rerun is evaluated only, and says so
    capsys.readouterr()
    assert run_local(changed, Path("q.yaml")) == main.EXIT_OK
    out = capsys.readouterr().out
    assert "resumed from step 4" in out and "evaluated only" in out


# ---------------------------------------------------------------- no overwrites


def _hf_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}\n')
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    return _files(path)


def test_save_params_refuses_what_distillc_did_not_write(tmp_path):
    import jax.numpy as jnp

    from distillc.runtime.train.checkpoints import CheckpointError, restore_params, save_params

    hf = tmp_path / "hf"
    before = _hf_folder(hf)
    params = {"w": jnp.ones((2, 3))}
    with pytest.raises(CheckpointError, match="not a distillc parameter checkpoint"):
        save_params(str(hf), params)
    assert _files(hf) == before

    ours = tmp_path / "ours"
    save_params(str(ours), params)
    save_params(str(ours), {"w": jnp.zeros((2, 3))})  # the same model: replaced
    assert float(restore_params(str(ours), params)["w"].sum()) == 0.0
    with pytest.raises(CheckpointError, match="different model"):
        save_params(str(ours), {"w": jnp.ones((4, 3))})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ours"]  # no temporaries left behind


@pytest.mark.slow
def test_a_teacher_path_holding_other_files_is_an_error_not_a_cache(tmp_path, monkeypatch, capsys):
    from distillc.runtime import main
    from distillc.runtime.local import run_local

    monkeypatch.setenv("DISTILLC_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "llama"
    before = _hf_folder(teacher)
    cfg = make_config(tmp_path / "run", teacher_checkpoint=str(teacher), steps=2, checkpoint_every=2)
    assert run_local([cfg], Path("spec.yaml")) == main.EXIT_USAGE
    out, err = capsys.readouterr()
    # a config.json + model.safetensors folder is a Hugging Face checkpoint: loaded (here its bytes are
    # not safetensors, so refused naming the file), never a place to train and cache a teacher
    assert f"{teacher}/model.safetensors: not a safetensors file" in err
    assert "training" not in out and "Traceback" not in err
    assert _files(teacher) == before and not (tmp_path / "llama-run").exists()
    (teacher / "config.json").unlink()  # no longer a Hugging Face checkpoint: files distillc cannot load
    before = _files(teacher)
    assert run_local([cfg], Path("spec.yaml")) == main.EXIT_USAGE
    out, err = capsys.readouterr()
    assert f"teacher.checkpoint {teacher} exists but is not a checkpoint distillc can load" in err
    assert "training" not in out and _files(teacher) == before


def test_orbax_missing_metadata_warning_is_not_shown(caplog):
    import distillc.runtime.train.checkpoints  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.WARNING):
        logging.getLogger("absl").warning("Metadata file does not exist: /x/_CHECKPOINT_METADATA")
        logging.getLogger("absl").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_runtime_restart_is_for_one_process(tmp_path, capsys):
    from distillc.runtime import main

    config = tmp_path / "run.json"
    config.write_text(make_config(tmp_path / "run").model_dump_json())
    with pytest.raises(SystemExit) as e:
        main.main(["--config", str(config), "--restart", "--coordinator", "h:1", "--num-processes", "2",
                   "--process-id", "0"])
    assert e.value.code == 2 and "--restart is for single-process runs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_runtime_refuses_another_plans_run_with_exit_2(tmp_path, capsys):
    """`python -m distillc.runtime.main` (a cluster job): the same check, one message, nothing trained."""
    from distillc.runtime import main

    open_run(make_config(tmp_path / "run", steps=8), ["first"])
    written = (tmp_path / "run" / "manifest.json").read_bytes()
    assert main.run(make_config(tmp_path / "run", steps=16), ["second"]) == main.EXIT_USAGE
    err = capsys.readouterr().err
    assert "train.steps: 8 -> 16" in err and "Traceback" not in err
    assert (tmp_path / "run" / "manifest.json").read_bytes() == written
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["manifest.json"]
