"""The compiler never imports the JAX stack: `distillc validate` stays fast and runs anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "grain", "tensorflow", "torch")

PROBE = """
import json, sys
from distillc.compiler.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print(json.dumps({"rc": rc, "heavy": heavy}))
""" % (HEAVY,)


def _probe(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_validate_every_shipped_spec_imports_no_jax():
    specs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("*.yaml") if p.name != "clusters.yaml")
    out = _probe("validate", *specs, "--format", "json")
    assert out["rc"] == 0
    assert out["heavy"] == []


def test_explain_and_schema_import_no_jax():
    assert _probe("explain", "DC152")["heavy"] == []
    assert _probe("schema")["heavy"] == []


def test_no_compiler_module_imports_jax():
    code = """
import importlib, json, pkgutil, sys
import distillc.compiler as c
for m in pkgutil.walk_packages(c.__path__, c.__name__ + "."):
    importlib.import_module(m.name)
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))
""" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_data_prepare_help_imports_no_jax():
    # the command itself hands the work to the runtime (grain, which imports jax) only when it runs
    out = _probe("data", "prepare", "--help")
    assert out["rc"] == 0 and out["heavy"] == []
