"""The README's validate tour shows what `distillc validate` really prints for the shipped examples."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _console_blocks() -> list[tuple[str, str]]:
    """(command, output) of every ```console block that runs `distillc validate`."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("$ distillc validate"):
            out.append((first[2:].split("#")[0].strip(), rest.rstrip("\n")))
    return out


@pytest.mark.parametrize("command,shown", _console_blocks(), ids=lambda v: v if v.startswith("distillc") else "")
def test_validate_output_in_the_readme_is_current(command, shown):
    args = []
    for a in command.split()[1:]:  # expand globs as the shell would
        args += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(a)) if "*" in a else [a]
    argv = [sys.executable, "-m", "distillc.compiler.cli", *args]
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    got = (p.stdout + p.stderr).rstrip("\n")
    assert got == shown, f"README.md shows another output for `{command}`:\n{got}"


DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def _cluster_commands() -> list[tuple[str, str]]:
    """(file, command) of every `$ distillc ...` line in README.md and docs/ that names a cluster."""
    return [(f, line[2:].split("  #")[0].strip()) for f, text in DOCS.items() for line in text.splitlines()
            if line.startswith("$ distillc ") and "--cluster " in line]


@pytest.mark.parametrize("doc,command", _cluster_commands(), ids=lambda v: v)
def test_documented_cluster_commands_run_as_written(doc, command, tmp_path):
    """From a checkout's root (a copy of specs/ here), with no clusters file set up: each command names
    the example clusters file, and each dry run exits 0."""
    assert "--clusters specs/clusters.yaml" in command, f"{doc}: `{command}` needs --clusters specs/clusters.yaml"
    if "--execute" in command or "--best" in command:  # runs xpk / needs results from runs
        return
    import shutil

    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    env = dict(os.environ, NO_COLOR="1", XDG_CONFIG_HOME=str(tmp_path / "config"))
    p = subprocess.run([sys.executable, "-m", "distillc.compiler.cli", *command.split()[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{doc}: `{command}` exits {p.returncode}: {p.stderr[-2000:]}"
