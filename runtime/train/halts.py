"""Why a training run stops before its last step: exit code 3 of the runtime, with the step, the
term and the values, and the newest checkpoint that is still good (the run never writes one after).

    NonFiniteLoss  a loss term, the gradient norm, or the updated parameters or optimizer state
                   were NaN/inf (the step checks them; the update is not applied)
    Diverged       the run is finite but has left the rails: the total loss spiked above a factor
                   of its recent median, or the gradient norm stayed exactly 0 (a collapsed model)
"""

from __future__ import annotations


def newest_checkpoint(step: int | None) -> str:
    return f"last checkpoint: step {step}" if step is not None else "no checkpoint"


class Halted(RuntimeError):
    """The run stopped itself at `step` (0-based, the schedules' step); nothing after it was saved."""

    step: int
    last_checkpoint: int | None


_TERM_WORDS = {"teacher": "teacher outputs (teacher CE)", "grad_norm": "gradient norm",
               "state": "updated parameters or optimizer state (check the optimizer's eps and learning rate)"}


class NonFiniteLoss(Halted):
    """A loss term, the gradient norm, or the parameters or optimizer state the update would give
    were NaN/inf at `step` (the step that would have made update number step + 1); that update was
    not applied."""

    def __init__(self, step: int, terms: tuple[str, ...], last_checkpoint: int | None):
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint
        names = ", ".join(_TERM_WORDS.get(t, f"{t} loss") for t in terms)
        super().__init__(f"non-finite {names} at step {step}; the update was not applied "
                         f"({newest_checkpoint(last_checkpoint)})")


class Diverged(Halted):
    """Finite but diverged at `step`: `term` is "total loss" (spike) or "gradient norm" (collapse)."""

    def __init__(self, step: int, term: str, detail: str, last_checkpoint: int | None):
        self.step, self.term, self.last_checkpoint = step, term, last_checkpoint
        super().__init__(f"diverged at step {step}: {term} {detail} ({newest_checkpoint(last_checkpoint)}; "
                         "lower the learning rate, or set train.divergence to tune or warn)")
