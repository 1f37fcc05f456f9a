"""The training loop: one jitted step, a frozen teacher signal, checkpoints, metrics, evaluation.

    state = (step, student params, optimizer state, halt code)
    step_fn(state, batch, frozen) -> (state', metrics)      jitted, state donated

The student is split with `nnx.split(model, nnx.Param, ...)`: its Param state is the only thing
the optimizer sees and the step merges it back (`nnx.merge`) for the objective's forward pass. The
teacher signal and the loss are an `Objective` (objectives.py: CE only, online, offline), chosen by
an explicit dispatch on the compiled config. Everything periodic (logging, checkpoints,
evaluation) is a hook (hooks.py); the loop itself only steps and reads results back.

Non-finite values: the step computes a halt code (bits: soft, hard, feature, total, teacher, grad
norm, and the updated parameters and optimizer state); when it is not 0 the step returns the state
unchanged (the update is never applied) and stays halted. The host reads each step's code one step
late (the device keeps one step queued), raises `NonFiniteLoss(step, terms)` at the first bad step,
and never writes a checkpoint after it. A run that stays finite but diverges (a loss spike, a
collapsed gradient) is stopped the same way by the DivergenceHook (halts.Diverged, exit 3).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distillc.runtime.config import RuntimeConfig
from distillc.runtime.models.transformer import flops_per_token
from distillc.runtime.train import distributed, metrics as metrics_lib, schedules
from distillc.runtime.train.checkpoints import CheckpointError, TrainCheckpoints, param_differences
from distillc.runtime.train.halts import NonFiniteLoss
from distillc.runtime.train.integrity import IntegrityError
from distillc.runtime.train.hooks import CheckpointHook, DivergenceHook, EvalHook, Hook, LoggingHook
from distillc.runtime.train.objectives import Objective, build_objective
from distillc.runtime.train.params import check_tokenizer, load_student
from distillc.runtime.train.run_lock import RunLock

# Halt-code bits: term name -> the metric whose sum must be finite ("teacher": the teacher's own CE,
# non-finite when its outputs are; "grad_norm": the student's gradient; "state": the updated parameters
# and optimizer state, non-finite with finite gradients when the optimizer is broken, e.g. eps 0).
HALT_TERMS = {"soft": "soft_loss", "hard": "hard_loss", "feature": "feature_loss", "total": "total_loss",
              "teacher": "teacher_ce", "grad_norm": None, "state": None}


# ----------------------------------------------------------------------------- the step


RESUME_FIX = ("resume with the config that wrote it, give this run a new `name` or `train.output_dir`, or rerun "
              "with --restart to move the old run aside (kept, not deleted)")


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: updates applied so far
    params: Any  # student nnx.Param state
    opt_state: Any
    halt: jax.Array  # int32 scalar: 0, or the HALT_TERMS bits of the first non-finite step


def make_optimizer(config: RuntimeConfig) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with warmup + decay; global-norm clipping first; no weight decay on norm scales."""
    opt = config.optimizer
    lr = schedules.learning_rate_schedule(opt, config.train.steps)

    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params)

    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
    parts.append(optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), lr


def _all_finite(tree: Any) -> jax.Array:
    """True iff every element of every array leaf is finite (a logical reduction: no overflow)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _halt_code(metrics: dict, finite: dict[str, jax.Array]) -> jax.Array:
    """The HALT_TERMS bits of every non-finite term: the metric sums, and the `finite` flags of the
    gradient norm and of the updated state."""
    code = jnp.zeros((), jnp.int32)
    for bit, (term, metric) in enumerate(HALT_TERMS.items()):
        ok = finite.get(term) if metric is None else jnp.isfinite(metrics[metric][0]) if metric in metrics else None
        if ok is not None:
            code = code | jnp.where(ok, 0, 1 << bit)
    return code


def halt_terms(code: int) -> tuple[str, ...]:
    return tuple(name for bit, name in enumerate(HALT_TERMS) if code & (1 << bit))


def make_train_step(graphdef, objective: Objective, tx, lr_fn, weights_fn):
    def step_fn(state: TrainState, batch, frozen):
        weights = weights_fn(state.step)
        signal = objective.teacher(frozen, batch)

        def loss_fn(params):
            return objective.loss(nnx.merge(graphdef, params), signal, batch, weights)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # the new parameters and optimizer state must be finite too: a run never saves a NaN state
        code = _halt_code(metrics, {"grad_norm": jnp.isfinite(grad_norm), "state": _all_finite((params, opt_state))})
        halt = jnp.where(state.halt != 0, state.halt, code)
        ok = halt == 0

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)

        one = jnp.ones((), jnp.float32)
        metrics = dict(metrics, learning_rate=(lr_fn(state.step).astype(jnp.float32), one),
                       grad_norm=(grad_norm, one))
        new_state = TrainState(state.step + ok.astype(jnp.int32), keep(params, state.params),
                               keep(opt_state, state.opt_state), halt)
        return new_state, metrics, code

    return step_fn


def make_eval_step(graphdef, objective: Objective, weights_fn):
    def eval_fn(params, batch, frozen, step):
        _, metrics = objective.loss(nnx.merge(graphdef, params), objective.teacher(frozen, batch), batch,
                                    weights_fn(step))
        return metrics

    return eval_fn


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
    config: RuntimeConfig
    final_step: int
    resumed_from: int | None
    train_log: list[dict]  # the logged training windows (also in metrics.jsonl)
    eval: dict[str, float]  # final evaluation
    wall_s: float
    compile_s: float
    tokens_per_sec: float
    params: Any = dataclasses.field(repr=False, default=None)  # the student's final Param state


@dataclasses.dataclass
class Trainer:
    """Sets up mesh, objective, student, optimizer and checkpoints for one RuntimeConfig."""

    config: RuntimeConfig
    console: bool = True  # a progress bar when stdout is a terminal; one line per logging window otherwise

    def __post_init__(self):
        cfg = self.config
        check_tokenizer(cfg.student, cfg.data.tokenizer)  # before anything is loaded (the teacher: build_objective)
        self.mesh = distributed.make_mesh(cfg.mesh)
        self.shard = distributed.data_shard(self.mesh, cfg.data.global_batch_size)
        self.objective = build_objective(cfg, self.mesh, self.shard)
        self.graphdef, params = load_student(cfg.student, cfg.teacher, cfg.scan_layers, self.mesh)
        self.tx, self.lr_fn = make_optimizer(cfg)
        weights_fn = schedules.loss_weights(cfg.loss)
        replicated = distributed.replicated(self.mesh)
        state = TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params), jnp.zeros((), jnp.int32))
        # Everything not laid out on the mesh yet (step, halt code, optimizer counts) is replicated on it;
        # the step keeps every array's sharding (out_shardings), so step n + 1 gets what step n was compiled for.
        self.state = jax.tree.map(
            lambda x: x if getattr(x.sharding, "mesh", None) == self.mesh else jax.device_put(x, replicated), state)
        state_shardings = jax.tree.map(lambda x: x.sharding, self.state)
        self._train_step = jax.jit(make_train_step(self.graphdef, self.objective, self.tx, self.lr_fn, weights_fn),
                                   donate_argnums=(0,), out_shardings=(state_shardings, replicated, replicated))
        self._eval_step = jax.jit(make_eval_step(self.graphdef, self.objective, weights_fn))
        self.is_writer = jax.process_index() == 0
        self.checkpoints = TrainCheckpoints(cfg.output.checkpoint_dir, every=cfg.train.checkpoint_every,
                                            max_to_keep=cfg.train.max_checkpoints)
        self.flops_per_token = (flops_per_token(cfg.student.arch, cfg.data.seq_len, training=True)
                                + self.objective.teacher_flops_per_token)

    # -- helpers

    def _batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return distributed.global_batch(local, self.mesh, self.config.data.global_batch_size)

    def evaluate(self, max_batches: int | None, params=None) -> dict[str, float]:
        """Held-out metrics over `max_batches` global batches (all of them when None)."""
        params = self.state.params if params is None else params
        window = metrics_lib.Window()
        step = self.state.step
        for local in self.objective.data.eval_batches(max_batches):
            window.add(jax.device_get(self._eval_step(params, self._batch(local), self.objective.frozen, step)))
        out = window.reduce() if window.steps else {}
        return {k: v for k, v in out.items() if k not in ("alpha", "temperature", "beta")}

    def restore_latest(self, iterator) -> int | None:
        """Resumes from the newest intact checkpoint: a step that fails its integrity check or its
        restore is reported and the next older one is tried; none intact is an error (never a
        silent start from scratch). A checkpoint of another model or run is an error at once."""
        failures: list[str] = []
        for step in self.checkpoints.steps():
            where = f"{self.checkpoints.directory}/{step}"
            try:
                verified = self.checkpoints.verify(step)
            except IntegrityError as e:
                failures.append(f"checkpoint {step} is damaged ({e}; moved to {self.checkpoints.set_aside(step)})")
                continue
            why = param_differences(where, self.state.params)
            if why:
                raise CheckpointError(f"{where} holds a different model or layer layout (scan_layers) than this config "
                                      f"({why}); {RESUME_FIX}")
            try:
                r = self.checkpoints.restore(step, params_like=self.state.params, opt_state_like=self.state.opt_state)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds; each is reported
                if verified:  # the files are as written: it is this config that differs
                    raise CheckpointError(f"{where} holds a different model, optimizer or layer layout (scan_layers) "
                                          f"than this config; {RESUME_FIX}") from e
                first = (str(e).strip().splitlines() or [""])[0][:200]
                failures.append(f"checkpoint {step} (no integrity record) failed to restore ({type(e).__name__}: "
                                f"{first}; moved to {self.checkpoints.set_aside(step)})")
                continue
            if r.meta.get("config_name") != self.config.name:
                raise CheckpointError(f"checkpoint {where} belongs to run {r.meta.get('config_name')!r}, "
                                      f"not {self.config.name!r}")
            if failures and self.is_writer:
                print(f"warning: {'; '.join(failures)}; resuming from step {step}, the newest intact checkpoint",
                      file=sys.stderr, flush=True)
            like = self.state  # keep every sharding the step was set up with
            self.state = TrainState(jax.device_put(jnp.asarray(step, jnp.int32), like.step.sharding), r.params,
                                    r.opt_state, jax.device_put(jnp.zeros((), jnp.int32), like.halt.sharding))
            iterator.set_state(r.data_state)
            return step
        if failures:
            raise CheckpointError(f"no intact checkpoint in {self.checkpoints.directory}: {'; '.join(failures)}; "
                                  "rerun with --restart to move the run aside (kept, not deleted) and train from scratch")
        return None

    def _save(self, step: int, iterator) -> None:
        self.checkpoints.save(step, params=self.state.params, opt_state=self.state.opt_state,
                              data_state=iterator.get_state(),
                              meta={"config_name": self.config.name, "process_count": jax.process_count()})

    # -- the loop

    def _read(self, pending: list, hooks: list[Hook], last_checkpoint: int | None) -> None:
        """Reads the oldest queued step back: stops at a non-finite one, else hands its metrics on."""
        step, metrics, code = pending.pop(0)
        code = int(code)
        if code:
            raise NonFiniteLoss(step - 1, halt_terms(code), last_checkpoint)
        host = jax.device_get(metrics)
        for hook in hooks:
            hook.record(step, host)

    def run(self, *, eval_all_at_end: bool = False) -> TrainResult:
        """Trains to train.steps (resuming from the newest intact checkpoint), then evaluates; holds
        the run directory's lock throughout (a nested no-op under runtime/main.py, which takes it)."""
        lock = RunLock(self.config.output.run_dir, enabled=self.is_writer)
        lock.acquire()
        try:
            return self._run(eval_all_at_end)
        finally:
            lock.release()

    def _run(self, eval_all_at_end: bool) -> TrainResult:
        cfg, tc = self.config, self.config.train
        out = cfg.output
        iterator = self.objective.data.train_iterator()
        t_start = time.perf_counter()
        resumed = self.restore_latest(iterator)
        start = resumed or 0
        if resumed is not None and self.is_writer:
            only = "; already trained: evaluating only" if start >= tc.steps else ""
            print(f"{cfg.name}: resumed from step {start} ({out.checkpoint_dir}){only}", flush=True)
        # a resume repeats the steps after the restored checkpoint: their old records go first
        writer = metrics_lib.MetricsWriter(out.metrics_file, out.tensorboard_dir, enabled=self.is_writer,
                                           keep_through=start, finished=start >= tc.steps)
        progress = metrics_lib.Progress(cfg.name, tc.steps, start, enabled=self.is_writer, bar=self.console)
        tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
        logging = LoggingHook(tc.log_every, writer, progress, tokens_per_step=tokens_per_step,
                              model_flops_per_token=self.flops_per_token, peak_flops=_peak_flops(self.mesh, cfg.peak_flops))
        checkpoint = CheckpointHook(tc.checkpoint_every, lambda step: self._save(step, iterator), resumed)
        hooks: list[Hook] = [DivergenceHook(tc.divergence, lambda: checkpoint.last_saved), checkpoint, logging,
                             EvalHook(tc.eval_every, lambda: self.evaluate(tc.eval_batches), writer)]
        compile_s, tok_s = 0.0, float("nan")
        try:
            if start < tc.steps:
                t0 = time.perf_counter()
                batch = self._batch(next(iterator))
                compiled = self._train_step.lower(self.state, batch, self.objective.frozen).compile()
                compile_s = time.perf_counter() - t0
                logging.start = t_loop = time.perf_counter()
                pending: list[tuple[int, Any, Any]] = []  # (updates applied after the step, metrics, halt code)
                next_batch: dict[str, jax.Array] | None = batch  # the first one is already on the devices
                for step in range(start, tc.steps):
                    batch = next_batch if next_batch is not None else self._batch(next(iterator))
                    next_batch = None
                    self.state, m, code = compiled(self.state, batch, self.objective.frozen)
                    done = step + 1
                    pending.append((done, m, code))
                    due = [h for h in hooks if h.due(done, tc.steps)]
                    # The device keeps one step queued; a hook that needs every result drains the queue.
                    keep = 0 if any(h.needs_all_results for h in due) else 1
                    while len(pending) > keep:
                        self._read(pending, hooks, checkpoint.last_saved)
                    for hook in due:
                        hook.run(done)
                tok_s = tokens_per_step * (tc.steps - start) / (time.perf_counter() - t_loop)
            self.checkpoints.wait()
            final = self.evaluate(None if eval_all_at_end else tc.eval_batches)
            if final:
                writer.write(int(self.state.step), "eval", final)
        finally:
            progress.close()
            writer.close()
            self.checkpoints.close()
        return TrainResult(cfg, int(self.state.step), resumed, logging.log, final,
                           time.perf_counter() - t_start, compile_s, tok_s, self.state.params)


def _peak_flops(mesh, per_device: float | None) -> float | None:
    """Peak FLOP/s of the whole mesh from the plan's per-device figure (the accelerator catalog's);
    None where MFU is not reported (CPU runs)."""
    return None if per_device is None else per_device * mesh.devices.size


def train(config: RuntimeConfig, *, console: bool = True, eval_all_at_end: bool = False) -> TrainResult:
    return Trainer(config, console=console).run(eval_all_at_end=eval_all_at_end)
