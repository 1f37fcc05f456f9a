"""Shared test helpers: build specs from the base fixture plus a YAML fragment; and the XLA flags
every runtime test compiles with (set here, before any test imports jax)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
BASE_TEXT = (FIXTURES / "base.yaml").read_text()

# For the tests' tiny models, XLA's CPU compile is nearly the whole cost of a runtime test (a 30-step
# MICRO run: 15 s with the defaults, 4.7 s with these). They change code generation only: no LLVM
# backend optimization, the classic loop emitters instead of the fusion emitters. Every assertion
# compares runs compiled alike, or a float64 reference within a tolerance, so the math under test is
# the same. DISTILLC_TEST_XLA_DEFAULTS=1 runs the suite exactly as the runtime compiles by default.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _accepted(flags: tuple[str, ...]) -> bool:
    """XLA aborts the process on an unknown flag, so ask a throwaway interpreter first."""
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    probe = "import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()"
    try:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _fast_compile_flags() -> tuple[str, ...]:
    if os.environ.get("DISTILLC_TEST_XLA_DEFAULTS"):
        return ()
    if "DISTILLC_TEST_XLA_FLAGS" in os.environ:  # probed already by a parent process
        return tuple(os.environ["DISTILLC_TEST_XLA_FLAGS"].split())
    for n in range(len(FAST_COMPILE_FLAGS), 0, -1):  # an XLA that dropped the newer flag keeps the older
        if _accepted(FAST_COMPILE_FLAGS[:n]):
            return FAST_COMPILE_FLAGS[:n]
    return ()


# The suite never reads real Cloud Storage: `distillc validate` here (and in the subprocesses tests
# start) reads no gs:// path, as with --offline, unless a test clears this and gives it the fake
# Cloud Storage of tests/fake_gcs.py.
os.environ["DISTILLC_OFFLINE"] = "1"

TEST_XLA_FLAGS = _fast_compile_flags()
os.environ["DISTILLC_TEST_XLA_FLAGS"] = " ".join(TEST_XLA_FLAGS)  # subprocesses and xdist workers skip the probe
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *TEST_XLA_FLAGS]).strip()


# `bash tests/run.sh` runs the suite on one pytest-xdist worker per core with `--dist loadgroup`:
# tests go one by one to whichever worker is free, except these modules, which run whole on one
# worker because a module-scoped fixture does their expensive part once (trains, saves, compiles,
# builds the wheel; test_packaging also must not build in the source tree twice at once). Listed
# here, not as xdist_group marks: with pytest 9.2 and xdist 3.8 the marks are silently ignored
# (pytest-dev/pytest-xdist#1386), and the controller that schedules sees only node ids.
WHOLE_MODULES = frozenset(f"tests/{m}.py" for m in (
    "test_distributed", "test_gguf_smollm2", "test_integrity", "test_losses", "test_model", "test_packaging", "test_prepared",
    "test_reduction_devices", "test_student_init", "test_topk_save", "test_trainer",
))


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` runs without the plugin that declares this hook
def pytest_xdist_make_scheduler(config, log):
    """For `--dist loadgroup`: one scope per test, or per module for WHOLE_MODULES. xdist sends the
    largest scopes first (the whole modules), then single tests as workers free up."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesWholeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in WHOLE_MODULES else nodeid

    return ModulesWholeScheduling(config, log)


def xla_env(devices: int = 1, **extra: str) -> dict:
    """The environment for a runtime subprocess: the tests' XLA flags, plus `devices` host devices."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), **extra)


def deep_merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def spec_text(fragment: str = "", base: str = BASE_TEXT) -> str:
    """The base spec with `fragment` merged in, dumped back to YAML (block style, stable order).
    Read and written as the spec loader reads (YAML 1.2: `1e-5` a float, `yes` a string)."""
    from distillc.compiler.loader import dump, load_text

    return dump(deep_merge(load_text(base).data, load_text(fragment).data or {}))


def check_text(text: str, file: str = "spec.yaml", **kw):
    from distillc.compiler.check import check_loaded
    from distillc.compiler.loader import load_text

    return check_loaded(load_text(text, file), **kw)


def codes(checked) -> list[str]:
    return [d.code for d in checked.diagnostics]


def find(checked, code: str):
    hits = [d for d in checked.diagnostics if d.code == code]
    assert hits, f"{code} not reported; got {[(d.code, d.message) for d in checked.diagnostics]}"
    return hits[0]


def at(text: str, *needles: str) -> tuple[int, int]:
    """(line, column) of the last needle, each searched after the previous one."""
    pos = 0
    for n in needles:
        pos = text.index(n, pos)
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def where(d) -> tuple[int, int]:
    return d.span.line, d.span.column


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (to assert positions without magic numbers)."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


@pytest.fixture
def base_text() -> str:
    return BASE_TEXT
