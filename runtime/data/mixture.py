"""A weighted mixture of finite document streams in a fixed order: what `distillc data prepare`
writes for `data.sources`.

Streaming training mixes endless per-source streams with Grain's `IterDataset.mix`; a prepared
dataset is one finite pass, so it needs an order with an end, and one that a killed prepare can
resume exactly. Document k of the mixture comes from the source furthest behind its share,

    argmax_i  (k + 1) * w_i / sum(w) - n_i        (n_i: documents taken from source i so far)

the lowest i on a tie: no randomness, so the order is the same on every run and machine, and
after any k documents each source's count is within one of k * w_i / sum(w) (weights count
documents, as Grain's mix does). Each source is read in its own file order. The end (`stop`):

    first_exhausted  the mixture ends when a source runs out: no document is repeated (the
                     larger sources are cut short), HF datasets' interleave default;
    all_exhausted    a source that runs out starts again from its first document, until every
                     source has run out once: every document is used and the smaller sources
                     repeat, as they do in streaming training.

The iterator's state is the counts, which sources have run out, and each source's reader state.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from distillc.runtime.data.examples import DataError

STOPS = ("first_exhausted", "all_exhausted")


class MixtureDocuments(grain.IterDataset):
    """The documents of `parts` (finite, each one pass), mixed by `weights` until `stop` (module docstring)."""

    def __init__(self, parts: Sequence[grain.IterDataset], weights: Sequence[float], stop: str):
        super().__init__(list(parts))
        if stop not in STOPS:
            raise DataError(f"mixture stop {stop!r}: expected one of {', '.join(STOPS)}")
        if len(parts) != len(weights) or not parts or min(weights) <= 0:
            raise DataError(f"a mixture needs one positive weight per source (got {list(weights)})")
        self.parts, self.weights, self.stop = list(parts), np.asarray(weights, np.float64), stop

    def __iter__(self) -> "MixtureIterator":
        return MixtureIterator(self)


class MixtureIterator(grain.DatasetIterator):
    def __init__(self, ds: MixtureDocuments):
        its = [p.__iter__() for p in ds.parts]
        super().__init__(its)
        self._ds, self._its = ds, its
        self._fresh = [it.get_state() for it in its]  # each source's start: where a repeat begins
        self._counts = [0] * len(its)
        self._ran_out = [False] * len(its)
        self._done = False

    def _pick(self) -> int:
        w = self._ds.weights
        behind = (sum(self._counts) + 1) * w / w.sum() - np.asarray(self._counts, np.float64)
        return int(np.argmax(behind))

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        i = self._pick()
        try:
            doc = next(self._its[i])
        except StopIteration:
            self._ran_out[i] = True
            if self._ds.stop == "first_exhausted" or all(self._ran_out):
                self._done = True
                raise
            self._its[i].set_state(self._fresh[i])  # all_exhausted: this source again, from its start
            doc = next(self._its[i], None)
            if doc is None:
                raise DataError(f"data.sources[{i}] holds no training documents for this part (empty, or every "
                                "document held out): remove it, add data or lower data.eval_fraction") from None
        self._counts[i] += 1
        return doc

    def get_state(self) -> dict[str, Any]:
        return {"counts": list(self._counts), "ran_out": list(self._ran_out), "done": self._done,
                "parts": [it.get_state() for it in self._its]}

    def set_state(self, state: dict[str, Any]) -> None:
        self._counts = [int(c) for c in state["counts"]]
        self._ran_out = [bool(r) for r in state["ran_out"]]
        self._done = bool(state["done"])
        for it, s in zip(self._its, state["parts"]):
            it.set_state(s)


__all__ = ["MixtureDocuments", "STOPS"]
