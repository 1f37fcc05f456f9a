"""What a side (teacher or student) gets where the spec leaves its dtypes and remat open.

One place for these defaults, because two stages need them and must agree: the memory rules
(DC152/DC153, memory.estimate_spec) size the run the resolver then plans (resolve._side_config).

  * weights: teacher bfloat16 (frozen, forward only), student float32 (master weights);
  * activations: float32 on the CPU accelerator (bfloat16 is emulated there), else bfloat16;
  * remat: none on the CPU (recomputation only costs time on small local runs), else "full",
    MaxText's default remat_policy.
`<side>.overrides` win on each side separately.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional

Role = Literal["teacher", "student"]
DEFAULT_REMAT = "full"  # MaxText's default remat_policy


class SideSettings(NamedTuple):
    """A side's resolved dtypes and remat policy."""

    weight_dtype: str
    activation_dtype: str
    remat: str


def default_weight_dtype(role: str) -> str:
    """bfloat16 for the frozen teacher (half the memory, forward only), float32 master weights for the student."""
    return "bfloat16" if role == "teacher" else "float32"


def default_remat(cpu: bool) -> str:
    """The remat policy when the spec sets none: none on the CPU (recomputing only costs time there)."""
    return "none" if cpu else DEFAULT_REMAT


def default_activation_dtype(cpu: bool) -> str:
    """The activation dtype when the spec sets none: float32 on the CPU (bfloat16 is emulated there)."""
    return "float32" if cpu else "bfloat16"


def side_settings(
    role: str, weight_dtype: Optional[str], activation_dtype: Optional[str], remat: Optional[str], cpu: bool
) -> SideSettings:
    """The side's settings: what its overrides give, the defaults above for the rest."""
    return SideSettings(
        weight_dtype or default_weight_dtype(role),
        activation_dtype or default_activation_dtype(cpu),
        remat or default_remat(cpu),
    )


def settings_of(role: str, overrides: Any, cpu: bool) -> SideSettings:
    """side_settings from a spec side's `overrides` section."""
    return side_settings(role, overrides.weight_dtype, overrides.activation_dtype, overrides.remat, cpu)
