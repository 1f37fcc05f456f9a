#!/usr/bin/env bash
# Regenerates tests/constraints.txt, the lock the test command installs from (tests/run.sh passes it
# to `pip install -c`): a throwaway venv gets `.[test]` unpinned (pyproject keeps ranges), and its
# `pip freeze` minus distillc itself becomes the lock. Run it to move to newer dependencies, then
# run the suite and commit the two together. Needs PyPI (or your pip index); a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check '.[test]'
{
  echo "# The test command's lock: written by \`bash tests/lock.sh\` (do not edit by hand)."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude distillc --exclude pip
} > "$tmp/constraints.txt"
mv -f "$tmp/constraints.txt" tests/constraints.txt  # atomic: a failed run leaves the old lock
echo "wrote tests/constraints.txt ($(grep -vc '^#' tests/constraints.txt) packages)"
