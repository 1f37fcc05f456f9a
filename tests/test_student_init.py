"""The student's start: `student.checkpoint` is loaded (a missing one is exit 2 at start), and with
`student.pruned_layers` and no checkpoint the student is the teacher minus those layers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from distillc.runtime.main import EXIT_USAGE, run
from distillc.runtime.train import distributed
from distillc.runtime.train.checkpoints import save_params
from distillc.runtime.train.params import init_params, load_student
from distillc.runtime.train.trainer import Trainer

from tests.runtime_configs import MICRO, make_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory) -> str:
    """A MICRO model's random init, saved as a parameter checkpoint (scanned layout)."""
    cfg = make_config(tmp_path_factory.mktemp("unused"), teacher=MICRO)
    mesh = distributed.make_mesh(cfg.mesh)
    _, params = init_params(cfg.teacher, True, mesh)
    path = str(tmp_path_factory.mktemp("micro") / "params")
    save_params(path, params)
    return path


def _with_student(cfg, **update):
    return cfg.model_copy(update={"student": cfg.student.model_copy(update=update)})


def test_student_equal_to_teacher_has_zero_kl_at_the_first_step(tmp_path, micro_ckpt):
    cfg = _with_student(make_config(tmp_path, teacher_checkpoint=micro_ckpt, steps=1, log_every=1,
                                    checkpoint_every=1), checkpoint=micro_ckpt)
    log = Trainer(cfg, console=False).run().train_log
    assert log[0]["kl_T1"] == pytest.approx(0.0, abs=1e-6)
    assert log[0]["kl_T"] == pytest.approx(0.0, abs=1e-6)


def test_missing_student_checkpoint_is_exit_2_naming_the_path(tmp_path, capsys):
    missing = str(tmp_path / "no-such-student")
    cfg = _with_student(make_config(tmp_path / "run", steps=1), checkpoint=missing)
    assert run(cfg, ["test"], console=False) == EXIT_USAGE
    err = capsys.readouterr().err
    assert missing in err and "Traceback" not in err


@pytest.mark.parametrize("scan", [True, False])
def test_pruned_student_without_checkpoint_is_the_teacher_minus_those_layers(tmp_path, scan):
    teacher_arch = MICRO.model_copy(update={"num_layers": 4})
    student_arch = MICRO.model_copy(update={"num_layers": 2})
    cfg = make_config(tmp_path, teacher=teacher_arch, student=student_arch)
    mesh = distributed.make_mesh(cfg.mesh)
    student_side = cfg.student.model_copy(update={"pruned_layers": (1, 2)})
    _, teacher = init_params(cfg.teacher, scan, mesh)
    _, student = load_student(student_side, cfg.teacher, scan, mesh)
    t, s = nnx.to_pure_dict(teacher), nnx.to_pure_dict(student)
    for name in ("embed", "lm_head"):
        np.testing.assert_array_equal(np.asarray(s[name]), np.asarray(t[name]))
    if scan:
        for a, b in zip(jax.tree.leaves(s["layers"]), jax.tree.leaves(t["layers"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[np.array([0, 3])])
    else:
        for j, i in ((0, 0), (1, 3)):
            for a, b in zip(jax.tree.leaves(s["layers"][j]), jax.tree.leaves(t["layers"][i])):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
