"""distillc: a declarative experiment-spec compiler for LLM distillation, and its JAX runtime.

`distillc.compiler` is pure Python (pydantic, jinja2, typer) and never imports jax;
`distillc.runtime` owns everything jax. `distillc.runtime.config` is the contract between them.
"""

__version__ = "0.1.0"
