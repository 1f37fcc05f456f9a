"""Rules: one small function per constraint, registered by code (see registry.py).

Each rule's docstring says why the constraint exists and carries a failing and a passing example
(`Fails::` / `Passes::` blocks, YAML fragments merged onto tests/fixtures/base.yaml); `distillc
explain CODE` prints it, docs/rules.md is generated from it, and the tests run both examples.

Codes by topic: DC10x models, vocabulary and pruning (models.py); DC11x mode and offline
(mode.py); DC12x feature loss and layers (features.py); DC13x schedules (schedules.py); DC14x
training, data and paths (train.py); DC15x mesh, resources and memory (resources.py); DC16x names
(naming.py); DC18x checkpoints (checkpoints.py; GGUF files: gguf.py).
"""

from distillc.compiler.rules import (  # noqa: F401  (registration side effects)
    checkpoints,
    features,
    gguf,
    mode,
    models,
    naming,
    resources,
    schedules,
    train,
)
