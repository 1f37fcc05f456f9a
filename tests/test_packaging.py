"""The wheel carries one namespace (distillc.*), the templates and the catalogs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("distillc-*.whl")
    return whl


def test_single_unique_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"distillc"}, tops


def test_data_files_are_packaged(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "distillc/compiler/catalogs/models.yaml" in names
    assert "distillc/compiler/catalogs/accelerators.yaml" in names
    templates = sorted(ROOT.glob("templates/*.j2"))
    for t in templates:
        assert f"distillc/templates/{t.name}" in names


def test_every_source_module_is_packaged(wheel):
    """setup.py derives the packages from the tree: every module of compiler/, runtime/ and templates/
    must reach the wheel, and every folder holding modules must be a package (find_packages skips
    a folder without __init__.py, which would drop it silently)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for src in ("compiler", "runtime", "templates"):
        for py in (ROOT / src).rglob("*.py"):
            rel = py.relative_to(ROOT / src).as_posix()
            assert (py.parent / "__init__.py").exists(), f"{src}/{rel}: its folder has no __init__.py"
            assert f"distillc/{src}/{rel}" in names, f"{src}/{rel} missing from the wheel"
    assert "distillc/runtime/train/trainer.py" in names and "distillc/runtime/offline/store.py" in names


def test_console_script_declared(wheel):
    z = zipfile.ZipFile(wheel)
    (ep,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
    assert "distillc = distillc.compiler.cli:main" in z.read(ep).decode()


def test_wheel_install_runs_outside_the_repo(wheel, tmp_path):
    """A non-editable install works from any directory: catalogs and templates come from the wheel."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # dependencies come from the test venv's site-packages (its .pth files, incl. the editable
    # finder for this repo, are not processed for a path added this way)
    target = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    Path(target, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    spec = tmp_path / "quickstart.yaml"
    spec.write_text((ROOT / "specs" / "quickstart.yaml").read_text())
    run = subprocess.run(
        [str(py), "-c", "import distillc.compiler.cli as c, sys; sys.argv=['distillc','validate',sys.argv[1]]; "
         "assert 'site-packages' in c.__file__, c.__file__; c.main()", str(spec)],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "no problems" in run.stderr
