#!/usr/bin/env bash
# Type-checks the installed package, `mypy -p distillc` (config: [tool.mypy] in pyproject.toml);
# tests/run.sh calls it before pytest. Installed, compiler/ is distillc.compiler (setup.py), and mypy
# cannot follow the editable install's import hook, so this links that layout under .cache/mypy/path
# (gitignored, with mypy's cache beside it) and prints paths as the repo spells them.
set -euo pipefail
cd "$(dirname "$0")/.."
link=.cache/mypy/path/distillc
mkdir -p "$link"
ln -sfn ../../../../distillc/__init__.py "$link/__init__.py"
for root in compiler runtime templates; do ln -sfn "../../../../$root" "$link/$root"; done
.venv/bin/python -m mypy -p distillc "$@" | sed "s#^$link/##"
