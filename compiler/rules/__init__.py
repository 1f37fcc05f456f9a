"""Rules: one small function per constraint, registered by code (see registry.py).

Each rule's docstring says why the constraint exists and carries a failing and a passing example
(`Fails::` / `Passes::` blocks, YAML fragments merged onto tests/fixtures/base.yaml); `distillc
explain CODE` prints it and the tests run both examples.
"""

from distillc.compiler.rules import features, models  # noqa: F401  (registration side effects)
