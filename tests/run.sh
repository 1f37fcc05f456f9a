#!/usr/bin/env bash
# The test command (README's second set-up command; .ci/run calls it). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Pinned by the lock (tests/constraints.txt, written by tests/lock.sh): a fresh machine gets the
# versions the suite last passed with, not whatever PyPI resolves today.
.venv/bin/python -m pip install -q --disable-pip-version-check -c tests/constraints.txt -e '.[test]'
# xpk pins ~68 packages, so it gets a venv of its own: tests/test_xpk_parser.py runs xpk's argument
# parser and its offline dry run there (the compiler never imports xpk). Created once (~2 minutes,
# needs PyPI), then reused; DISTILLC_SKIP_XPK=1 skips it (those tests then skip).
if [ "${DISTILLC_SKIP_XPK:-0}" != 1 ] && [ ! -x .venv-xpk/bin/xpk ]; then
  [ -x .venv-xpk/bin/python ] || "$PY" -m venv .venv-xpk
  .venv-xpk/bin/python -m pip install -q --disable-pip-version-check 'xpk==1.16.0'
fi
# Types first: mypy -p distillc over compiler/ and runtime/ (tests/typecheck.sh), zero errors.
bash tests/typecheck.sh
# One pytest worker per core (pytest-xdist): the runtime tests are mostly single-threaded XLA
# compiles. `--dist loadgroup` sends tests one by one to whichever worker is free, except the modules
# tests/conftest.py keeps whole (WHOLE_MODULES: their module-scoped fixture trains or compiles once).
# DISTILLC_TEST_WORKERS=0 runs in this process; arguments after ours (`-n 0`, `--dist no`) override.
exec .venv/bin/python -m pytest -n "${DISTILLC_TEST_WORKERS:-auto}" --dist loadgroup "$@"
