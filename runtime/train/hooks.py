"""Hooks: what the training loop does every N steps (levanter's pattern), one small class each.

The loop only steps and reads results back; everything periodic is a hook:

    LoggingHook     every train.log_every: reduce the window, throughput, MFU, packing efficiency (real
                    tokens / row slots), metrics.jsonl/TensorBoard
    CheckpointHook  every train.checkpoint_every and at the last step
    EvalHook        every train.eval_every (not at the last step: the final evaluation follows the loop)
    DivergenceHook  every step's results: a loss spike or a collapsed gradient stops the run (exit 3)

A hook sees each step's host metrics in order (`record`, called as the loop reads them back, one
step late) and runs at its steps (`run`). A hook that `needs_all_results` makes the loop read back
every step up to the current one before it runs, so a non-finite step raises before a checkpoint
could hold it and before a logging window closes without it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from typing import Any, Callable, Optional

from distillc.runtime.config import DivergenceConfig
from distillc.runtime.train import metrics as metrics_lib
from distillc.runtime.train.halts import Diverged


class Hook:
    """Runs at every `every`-th step (0: never) and, when `at_end`, at the last step."""

    every: int = 0
    at_end: bool = False
    needs_all_results: bool = False

    def due(self, step: int, last: int) -> bool:
        return bool(self.every and step % self.every == 0) or (self.at_end and step == last)

    def record(self, step: int, metrics: dict) -> None:
        """One step's host metrics ({name: (sum, count)}), in step order."""

    def run(self, step: int) -> None:
        """The periodic work at `step` (updates applied so far)."""


class LoggingHook(Hook):
    """Logging windows: token-weighted means over the window, throughput, MFU, the progress line."""

    needs_all_results = True
    at_end = True

    def __init__(self, every: int, writer: metrics_lib.MetricsWriter, progress: metrics_lib.Progress, *,
                 tokens_per_step: int, model_flops_per_token: float, peak_flops: Optional[float]):
        self.every = every
        self.writer, self.progress = writer, progress
        self.tokens_per_step = tokens_per_step
        self.model_flops_per_token = model_flops_per_token
        self.peak_flops = peak_flops  # all devices together; None: MFU is not reported
        self.log: list[dict] = []
        self._reset()

    def _reset(self) -> None:
        self.window, self.start, self.steps = metrics_lib.Window(), time.perf_counter(), 0

    def record(self, step: int, metrics: dict) -> None:
        self.window.add(metrics)
        self.steps += 1
        self.progress.update(step)

    def run(self, step: int) -> None:
        dt = time.perf_counter() - self.start
        values = self.window.reduce()
        values["step_time_s"] = dt / max(self.steps, 1)
        values["tokens_per_sec"] = self.tokens_per_step * self.steps / dt
        if "tokens" in values:  # real (unmasked) tokens per step, over the window
            values["packing_efficiency"] = values["tokens"] / self.tokens_per_step  # of the batch's row slots
        if self.peak_flops:
            values["mfu"] = self.model_flops_per_token * values["tokens_per_sec"] / self.peak_flops
        self.writer.write(step, "train", values)
        self.log.append(dict(values, step=step))
        self.progress.update(step, values)
        self._reset()


class CheckpointHook(Hook):
    """Saves the state every `every` steps and at the last step; remembers the newest save."""

    needs_all_results = True
    at_end = True

    def __init__(self, every: int, save: Callable[[int], None], last_saved: Optional[int]):
        self.every = every
        self.save = save
        self.last_saved = last_saved

    def run(self, step: int) -> None:
        self.save(step)
        self.last_saved = step


class EvalHook(Hook):
    """Held-out metrics every `every` steps (the last step's evaluation is the trainer's final one)."""

    def __init__(self, every: int, evaluate: Callable[[], dict[str, Any]], writer: metrics_lib.MetricsWriter):
        self.every = every
        self.evaluate = evaluate
        self.writer = writer

    def due(self, step: int, last: int) -> bool:
        return super().due(step, last) and step != last

    def run(self, step: int) -> None:
        self.writer.write(step, "eval", self.evaluate())


# A median this small is a model that fits its batches almost perfectly; measuring spikes against
# it would call every wobble a divergence, so the threshold never goes below factor x this.
MEDIAN_FLOOR = 0.01


class DivergenceHook(Hook):
    """Finite but diverged: the total loss above `factor` x its median over the last `window` steps,
    or a gradient norm of exactly 0 for `collapse_steps` steps in a row (a model collapsed to a
    constant output, which the non-finite guard never sees). `policy: stop` raises `Diverged` while
    the step's results are read back, before any checkpoint of that step is written; `warn` says so
    on stderr once per episode and goes on."""

    def __init__(self, config: DivergenceConfig, last_checkpoint: Callable[[], Optional[int]]):
        self.config = config
        self.last_checkpoint = last_checkpoint
        self.losses: deque[float] = deque(maxlen=config.window)
        self.zero_grads = 0
        self.warned = False

    def record(self, step: int, metrics: dict) -> None:
        problem = self._problem(step, metrics)
        if problem is None:
            self.warned = False
            return
        term, detail = problem
        if self.config.policy == "stop":
            raise Diverged(step - 1, term, detail, self.last_checkpoint())
        if not self.warned:
            print(f"warning: step {step - 1}: {term} {detail}; continuing (train.divergence.policy: warn)",
                  file=sys.stderr, flush=True)
            self.warned = True

    def _problem(self, step: int, metrics: dict) -> Optional[tuple[str, str]]:
        total, count = metrics["total_loss"]
        loss = float(total) / max(float(count), 1.0)
        grad_norm = float(metrics["grad_norm"][0])
        history = list(self.losses)
        self.losses.append(loss)
        self.zero_grads = self.zero_grads + 1 if grad_norm == 0.0 else 0
        if self.zero_grads >= self.config.collapse_steps:
            return "gradient norm", (f"was exactly 0 for {self.zero_grads} steps in a row: the model has collapsed "
                                     "to a constant output")
        if history:  # from the first step on: a run that explodes at once has no calm median later
            median = statistics.median(history)
            if loss > self.config.factor * max(median, MEDIAN_FLOOR):
                return "total loss", (f"{loss:.6g} is above {self.config.factor:g} x its median {median:.6g} "
                                      f"over the last {len(history)} steps")
        return None
