"""Checkpoint integrity: a damaged checkpoint is named with its file; training falls back to the
newest intact step (and refuses to start over silently when none is); a damaged teacher is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from distillc.runtime.train import integrity
from distillc.runtime.train.checkpoints import CheckpointError, save_params
from distillc.runtime.train.distributed import make_mesh
from distillc.runtime.train.params import init_params, load_teacher
from distillc.runtime.train.trainer import train

from tests.runtime_configs import make_config


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x40
    path.write_bytes(bytes(data))


def _data_files(step_dir: Path) -> list[Path]:
    """The array data orbax wrote for the step's params (what a flipped bit would change)."""
    files = sorted(p for p in (step_dir / "params").rglob("*") if p.is_file() and "/d/" in p.as_posix())
    assert files, list((step_dir / "params").rglob("*"))
    return files


class TestRecord:
    def _tree(self, tmp_path: Path) -> Path:
        root = tmp_path / "ckpt"
        (root / "sub").mkdir(parents=True)
        (root / "a.bin").write_bytes(b"a" * 1000)
        (root / "sub" / "b.bin").write_bytes(b"b" * 10)
        integrity.record(root)
        return root

    def test_intact_and_unrecorded(self, tmp_path):
        root = self._tree(tmp_path)
        assert integrity.verify(root) is True
        (tmp_path / "other").mkdir()
        assert integrity.verify(tmp_path / "other") is False

    def test_a_flipped_bit_names_the_file(self, tmp_path):
        root = self._tree(tmp_path)
        _flip(root / "sub" / "b.bin")
        with pytest.raises(integrity.IntegrityError, match=r"sub/b\.bin does not hold the bytes"):
            integrity.verify(root)

    def test_truncated_and_missing(self, tmp_path):
        root = self._tree(tmp_path)
        (root / "a.bin").write_bytes(b"a" * 500)
        with pytest.raises(integrity.IntegrityError, match=r"a\.bin has 500 bytes, 1000 were written"):
            integrity.verify(root)
        (root / "a.bin").unlink()
        with pytest.raises(integrity.IntegrityError, match=r"a\.bin is missing"):
            integrity.verify(root)

    def test_a_damaged_record_is_reported_not_raised_raw(self, tmp_path):
        root = self._tree(tmp_path)
        (root / integrity.RECORD).write_bytes(b"\xff\xfe not json")
        with pytest.raises(integrity.IntegrityError, match="unreadable"):
            integrity.verify(root)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4, trained once for the module; a copy
    of it as trained sits beside it."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = make_config(root / "run", alpha=0.0, steps=4, checkpoint_every=2)
    train(cfg, console=False)
    ckpt = Path(cfg.output.checkpoint_dir)
    assert (ckpt / "2" / integrity.RECORD).exists() and (ckpt / "4" / integrity.RECORD).exists()
    shutil.copytree(root / "run", root / "as-trained", symlinks=True)
    return cfg, root


@pytest.fixture
def run(finished):
    """The finished run, put back as trained at its own path (the previous test damaged and resumed
    it), and its config for 6 steps."""
    cfg, root = finished
    shutil.rmtree(root / "run")
    shutil.copytree(root / "as-trained", root / "run", symlinks=True)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 6})})
    return longer, Path(cfg.output.checkpoint_dir)


def test_a_damaged_step_falls_back_to_the_newest_intact_one(run, capsys):
    cfg, ckpt = run
    for f in _data_files(ckpt / "4"):
        _flip(f)
    result = train(cfg, console=False)
    assert result.resumed_from == 2 and result.final_step == 6
    err = capsys.readouterr().err
    assert "checkpoint 4 is damaged" in err and "resuming from step 2" in err


def test_a_truncated_step_falls_back_too(run, capsys):
    cfg, ckpt = run
    for f in _data_files(ckpt / "4"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert train(cfg, console=False).resumed_from == 2
    assert "has" in capsys.readouterr().err


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(run):
    cfg, ckpt = run
    for step in ("2", "4"):
        _flip(_data_files(ckpt / step)[0])
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*checkpoint 4 is damaged.*checkpoint 2 is damaged"):
        train(cfg, console=False)


def test_a_damaged_teacher_is_refused(tmp_path):
    cfg = make_config(tmp_path / "run")
    mesh = make_mesh(cfg.mesh)
    _, params = init_params(cfg.teacher, cfg.scan_layers, mesh)
    path = tmp_path / "teacher"
    save_params(str(path), params)
    assert integrity.verify(path)
    side = cfg.teacher.model_copy(update={"checkpoint": str(path)})
    _, restored = load_teacher(side, cfg.scan_layers, mesh)  # intact: loads
    assert np.isfinite(np.asarray(restored["embed"][...])).all()
    _flip(_data_files_param(path)[0])
    with pytest.raises(CheckpointError, match=r"is damaged: .* does not hold the bytes"):
        load_teacher(side, cfg.scan_layers, mesh)


def _data_files_param(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "/d/" in p.as_posix())


def test_an_unrecorded_step_that_fails_to_restore_falls_back(run, capsys):
    """Killed between orbax's commit and the record (or written before records existed): the step is
    tried as it is, and a failed restore falls back like a failed verification."""
    cfg, ckpt = run
    (ckpt / "4" / integrity.RECORD).unlink()
    for f in _data_files(ckpt / "4"):
        f.write_bytes(b"")
    assert train(cfg, console=False).resumed_from == 2
    err = capsys.readouterr().err
    assert "checkpoint 4 (no integrity record) failed to restore" in err and "damaged-4-" in err


def test_a_full_disk_ends_the_run_with_one_message_and_no_half_checkpoint(tmp_path):
    """Checkpoints onto a 3 MiB tmpfs: exit 2, the OS's reason and the directory in one line, the
    temporary step directory removed (root only: the test mounts the tmpfs itself)."""
    import json as _json
    import os
    import subprocess
    import sys

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        from tests.runtime_configs import TEACHER

        cfg = make_config(mnt / "run", steps=30, checkpoint_every=5, teacher=TEACHER, student=TEACHER)
        path = tmp_path / "run.json"
        path.write_text(_json.dumps(_json.loads(cfg.model_dump_json())))
        p = subprocess.run([sys.executable, "-m", "distillc.runtime.main", "--config", str(path), "--no-progress"],
                           cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        last = p.stderr.strip().splitlines()[-1]
        assert last.startswith("error: test: cannot write checkpoints to") and "No space left on device" in last
        assert not list((mnt / "run" / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
