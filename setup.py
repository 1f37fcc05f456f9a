"""Packages derived from the tree, so a new sub-package cannot be left out of the wheel.

The repo keeps the design card's top level (compiler/, runtime/, templates/); installed, they live
under one namespace: distillc.compiler, distillc.runtime, distillc.templates. Everything else
(metadata, dependencies, package data) is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = ("compiler", "runtime", "templates")

setup(
    packages=["distillc"] + [f"distillc.{p}" for p in find_packages(include=[*ROOTS, *(f"{r}.*" for r in ROOTS)])],
    package_dir={"distillc": "distillc", **{f"distillc.{r}": r for r in ROOTS}},
)
