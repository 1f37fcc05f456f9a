"""tests/run.sh's parallel schedule: the modules kept whole on one xdist worker exist, and each has the
module-scoped fixture that is the reason to keep it whole (a renamed module would silently be split)."""

from __future__ import annotations

import re

from tests.conftest import ROOT, WHOLE_MODULES


def test_every_whole_module_exists_and_has_a_module_scoped_fixture():
    for module in sorted(WHOLE_MODULES):
        path = ROOT / module
        assert path.is_file(), f"{module} is in WHOLE_MODULES (tests/conftest.py) but does not exist"
        assert re.search(r'@pytest\.fixture\(scope="module"', path.read_text()), (
            f"{module} has no module-scoped fixture: drop it from WHOLE_MODULES so its tests spread over workers")
