"""The training loop: one jitted step, a frozen teacher signal, checkpoints, metrics, evaluation.

    state = (step, student params, optimizer state, halt code)
    step_fn(state, batch, frozen) -> (state', metrics)      jitted, state donated

The student is split with `nnx.split(model, nnx.Param, ...)`: its Param state is the only thing
the optimizer sees and the step merges it back (`nnx.merge`) to run the forward pass. The teacher
signal is an `Objective`, chosen by an explicit dispatch on `config.mode` (`build_objective`):

  online   the teacher model runs forward in the step; its params are a jit argument (`frozen`),
           never differentiated (the losses stop gradients) and never in the optimizer state;
  offline  the cached top-k teacher (runtime/topk_*: its batches carry the teacher's signal);
  CE-only  an online config whose alpha and beta are 0 at every step: no teacher is loaded.

Non-finite values: the step computes a halt code (bits: soft, hard, feature, total, teacher, grad
norm); when it is not 0 the step returns the state unchanged (the update is never applied) and stays halted. The
host reads each step's code one step late (the device keeps one step queued), raises
`NonFiniteLoss(step, terms)` at the first bad step, and never writes a checkpoint after it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from distillc.runtime import distributed, losses, metrics as metrics_lib, schedules
from distillc.runtime.checkpoints import CheckpointError, TrainCheckpoints, param_differences, restore_params, stored_tree
from distillc.runtime.config import RuntimeConfig, SideConfig
from distillc.runtime.data import DataError, DataPipeline, Shard
from distillc.runtime.model import build_model, flops_per_token, partition_specs, restack_layers, stored_scan_layers

# Halt-code bits: term name -> the metric whose sum must be finite ("teacher": the teacher's own CE,
# non-finite when its outputs are; "grad_norm": the student's gradient).
HALT_TERMS = {"soft": "soft_loss", "hard": "hard_loss", "feature": "feature_loss", "total": "total_loss",
              "teacher": "teacher_ce", "grad_norm": None}


class NonFiniteLoss(RuntimeError):
    """A loss term (or the gradient norm) was NaN/inf at `step` (0-based, the schedules' step: the
    step that would have made update number step + 1); that update was not applied."""

    def __init__(self, step: int, terms: tuple[str, ...], last_checkpoint: int | None):
        self.step, self.terms, self.last_checkpoint = step, terms, last_checkpoint
        ckpt = f"last checkpoint: step {last_checkpoint}" if last_checkpoint is not None else "no checkpoint"
        names = ", ".join(_TERM_WORDS.get(t, f"{t} loss") for t in terms)
        super().__init__(f"non-finite {names} at step {step}; the update was not applied ({ckpt})")


_TERM_WORDS = {"teacher": "teacher outputs (teacher CE)", "grad_norm": "gradient norm"}


class TeacherUnavailable(RuntimeError):
    """The configured mode's teacher signal is not available in this build."""


# ----------------------------------------------------------------------------- objectives


class BatchSource(Protocol):
    """Where batches come from (runtime/data.DataPipeline, or a cached-teacher pipeline)."""

    local_batch_size: int

    def train_iterator(self) -> Any: ...  # checkpointable: get_state() -> dict, set_state(dict)

    def eval_batches(self, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]: ...

    def eval_batch_count(self) -> int: ...


class Objective(Protocol):
    """How the teacher's signal reaches the loss. Both methods are traced inside the jitted step:
    `teacher` outside the student's gradient, `loss` inside it."""

    name: str
    data: BatchSource
    frozen: Any  # pytree of arrays passed to `loss` each step (teacher params), or None
    student_feature_layers: tuple[int, ...]
    teacher_flops_per_token: float  # forward FLOPs the objective adds per token (0 if none)

    def teacher(self, frozen, batch) -> Any: ...  # the teacher signal for this batch (traced, no grad)

    def loss(self, student_out, signal, batch, weights) -> tuple[jax.Array, dict]: ...


@dataclasses.dataclass
class OnlineObjective:
    """The teacher runs forward every step on the same batch (guide: online distillation)."""

    config: RuntimeConfig
    data: BatchSource
    teacher_graphdef: Any
    frozen: Any
    name: str = "online"

    def __post_init__(self):
        pairs = self.config.loss.layer_pairs if self.config.loss.feature_enabled else ()
        self.student_feature_layers = tuple(p.student for p in pairs)
        self.teacher_feature_layers = tuple(p.teacher for p in pairs)
        self.teacher_flops_per_token = flops_per_token(self.config.teacher.arch, self.config.data.seq_len,
                                                       training=False)

    def teacher(self, frozen, batch):
        teacher = nnx.merge(self.teacher_graphdef, frozen)
        out = teacher(batch["inputs"], feature_layers=self.teacher_feature_layers)
        return jax.tree.map(jax.lax.stop_gradient, out)

    def loss(self, student_out, signal, batch, weights):
        alpha, temperature, beta = weights
        return losses.distill_loss(
            student_out, signal, batch["labels"], batch["mask"],
            alpha=alpha, temperature=temperature, beta=beta,
            feature_kind=self.config.loss.feature_loss, compare_vocab=self.config.loss.compare_vocab,
        )


@dataclasses.dataclass
class CrossEntropyObjective:
    """Labels only (alpha and beta are 0 at every step): a CE baseline or a teacher's own training."""

    config: RuntimeConfig
    data: BatchSource
    frozen: Any = None
    name: str = "cross_entropy"
    student_feature_layers: tuple[int, ...] = ()
    teacher_flops_per_token: float = 0.0

    def teacher(self, frozen, batch):
        return None

    def loss(self, student_out, signal, batch, weights):
        alpha, temperature, beta = weights
        where = batch["mask"]
        ce_sum, count = losses.masked_mean_parts(
            losses.cross_entropy(student_out.logits, batch["labels"], where), where)
        one = jnp.ones((), jnp.float32)
        total_sum = (1.0 - alpha) * ce_sum
        metrics = {
            "hard_loss": (ce_sum, count),
            "total_loss": (total_sum, count),
            "tokens": (count, one),
            "alpha": (alpha, one),
            "temperature": (temperature, one),
            "beta": (beta, one),
        }
        return total_sum / jnp.maximum(count, 1.0), metrics


def uses_teacher(config: RuntimeConfig) -> bool:
    """Whether any step's loss depends on the teacher (alpha or the feature term ever > 0)."""
    return config.loss.alpha.bounds()[1] > 0.0 or config.loss.feature_enabled


def build_objective(config: RuntimeConfig, mesh, shard: Shard) -> Objective:
    """The explicit mode dispatch: online teacher forward, offline cached teacher, or CE only."""
    if config.mode == "online":
        data = DataPipeline(config.data, shard)
        _check_vocab(config, data.tokenizer.vocab_size)
        if not uses_teacher(config):
            return CrossEntropyObjective(config, data)
        graphdef, frozen = load_teacher(config.teacher, config.scan_layers, mesh)
        return OnlineObjective(config, data, graphdef, frozen)
    if config.mode == "offline":
        try:
            from distillc.runtime import topk_train
        except ImportError as e:
            raise TeacherUnavailable("offline (cached top-k) training is not available in this build") from e
        return topk_train.build_objective(config, mesh, shard)
    raise ValueError(f"unknown mode {config.mode!r}")


def _check_vocab(config: RuntimeConfig, tokenizer_vocab: int) -> None:
    for side in (config.student, config.teacher):
        if tokenizer_vocab > side.arch.vocab_size:
            raise DataError(
                f"tokenizer {config.data.tokenizer!r} has {tokenizer_vocab} tokens but the {side.role} "
                f"{side.arch.name} has vocab_size {side.arch.vocab_size}"
            )


# ----------------------------------------------------------------------------- models on the mesh


def _split(model: nnx.Module):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def model_shardings(side: SideConfig, scan_layers: bool, mesh):
    """(graphdef, abstract params, param shardings) without allocating the weights."""
    abs_model = nnx.eval_shape(lambda: build_model(side, scan_layers=scan_layers))
    graphdef, abs_params, abs_rest = _split(abs_model)
    if jax.tree.leaves(abs_rest):
        raise ValueError(f"{side.arch.name}: the model has non-parameter state, which this trainer does not carry")
    specs = partition_specs(abs_model)  # the whole state is Params (checked above)
    shardings = distributed.state_shardings(abs_params, specs, mesh)
    abs_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_params, shardings)
    return graphdef, abs_params, shardings


def init_params(side: SideConfig, scan_layers: bool, mesh):
    """Random-initialized params, created directly with their shardings (jit out_shardings)."""
    graphdef, abs_params, shardings = model_shardings(side, scan_layers, mesh)

    def init():
        return _split(build_model(side, scan_layers=scan_layers))[1]

    return graphdef, jax.jit(init, out_shardings=shardings)()


def load_teacher(side: SideConfig, scan_layers: bool, mesh):
    """The frozen teacher: restored read-only from side.checkpoint (cast to its weight dtype), or
    randomly initialized from its init seed when no checkpoint is given."""
    if side.checkpoint is None:
        return init_params(side, scan_layers, mesh)
    graphdef, abs_params, shardings = model_shardings(side, scan_layers, mesh)
    try:
        tree = stored_tree(side.checkpoint)  # read once: the layout here, the comparison in restore_params
    except CheckpointError:  # no readable tree metadata: restore as is (restore_params explains a mismatch)
        tree = None
    stored = stored_scan_layers(tree) if tree is not None else None
    if stored is None or stored == scan_layers:
        return graphdef, restore_params(side.checkpoint, abs_params, tree)
    # saved with the other layer layout (a scanned teacher for an unscanned run, or the reverse):
    # restore it as saved, then restack onto this run's layout and shardings
    _, stored_abs, _ = model_shardings(side, stored, mesh)
    loaded = restore_params(side.checkpoint, stored_abs, tree)

    def restack(state):
        target = jax.tree.map(lambda x: x, abs_params)
        nnx.replace_by_pure_dict(target, restack_layers(nnx.to_pure_dict(state), side.arch.num_layers, scan_layers))
        return target

    return graphdef, jax.jit(restack, out_shardings=shardings)(loaded)


# ----------------------------------------------------------------------------- the step


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


def _halt_code(metrics: dict, grad_norm) -> jax.Array:
    code = jnp.zeros((), jnp.int32)
    for bit, metric in enumerate(HALT_TERMS.values()):
        value = grad_norm if metric is None else metrics[metric][0] if metric in metrics else None
        if value is not None:
            code = code | jnp.where(jnp.isfinite(value), 0, 1 << bit)
    return code


def halt_terms(code: int) -> tuple[str, ...]:
    return tuple(name for bit, name in enumerate(HALT_TERMS) if code & (1 << bit))


def make_train_step(graphdef, objective: Objective, tx, lr_fn, weights_fn):
    def step_fn(state: TrainState, batch, frozen):
        weights = weights_fn(state.step)
        signal = objective.teacher(frozen, batch)

        def loss_fn(params):
            student = nnx.merge(graphdef, params)
            out = student(batch["inputs"], feature_layers=objective.student_feature_layers)
            return objective.loss(out, signal, batch, weights)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        code = _halt_code(metrics, grad_norm)
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
        student = nnx.merge(graphdef, params)
        out = student(batch["inputs"], feature_layers=objective.student_feature_layers)
        _, metrics = objective.loss(out, objective.teacher(frozen, batch), batch, weights_fn(step))
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
    console: bool = True

    def __post_init__(self):
        cfg = self.config
        self.mesh = distributed.make_mesh(cfg.mesh)
        self.shard = distributed.data_shard(self.mesh, cfg.data.global_batch_size)
        self.objective = build_objective(cfg, self.mesh, self.shard)
        self.graphdef, params = init_params(cfg.student, cfg.scan_layers, self.mesh)
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
        step = self.checkpoints.latest_step()
        if step is None:
            return None
        where = f"{self.checkpoints.directory}/{step}"
        fix = ("resume with the config that wrote it, or delete the run directory (or set train.output_dir "
               "elsewhere) to train from scratch")
        why = param_differences(where, self.state.params)
        if why:
            raise CheckpointError(f"{where} holds a different model or layer layout (scan_layers) than this config "
                                  f"({why}); {fix}")
        try:
            r = self.checkpoints.restore(step, params_like=self.state.params, opt_state_like=self.state.opt_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{where} holds a different model, optimizer or layer layout (scan_layers) "
                                  f"than this config; {fix}") from e
        if r.meta.get("config_name") != self.config.name:
            raise CheckpointError(f"checkpoint {self.checkpoints.directory}/{step} belongs to run "
                                  f"{r.meta.get('config_name')!r}, not {self.config.name!r}")
        like = self.state  # keep every sharding the step was set up with
        self.state = TrainState(jax.device_put(jnp.asarray(step, jnp.int32), like.step.sharding), r.params,
                                r.opt_state, jax.device_put(jnp.zeros((), jnp.int32), like.halt.sharding))
        iterator.set_state(r.data_state)
        return step

    def _save(self, step: int, iterator) -> None:
        self.checkpoints.save(step, params=self.state.params, opt_state=self.state.opt_state,
                              data_state=iterator.get_state(),
                              meta={"config_name": self.config.name, "process_count": jax.process_count()})

    # -- the loop

    def run(self, *, eval_all_at_end: bool = False) -> TrainResult:
        cfg, tc = self.config, self.config.train
        out = cfg.output
        writer = metrics_lib.MetricsWriter(out.metrics_file, out.tensorboard_dir, enabled=self.is_writer)
        iterator = self.objective.data.train_iterator()
        t_start = time.perf_counter()
        resumed = self.restore_latest(iterator)
        start = resumed or 0
        bar = metrics_lib.Progress(cfg.name, tc.steps, start, enabled=self.is_writer and self.console)
        tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
        train_log: list[dict] = []
        compile_s, tok_s, last_ckpt = 0.0, float("nan"), resumed
        try:
            if start < tc.steps:
                t0 = time.perf_counter()
                first = self._batch(next(iterator))
                compiled = self._train_step.lower(self.state, first, self.objective.frozen).compile()
                compile_s = time.perf_counter() - t0
                window = metrics_lib.Window()
                pending: list[tuple[int, Any, Any]] = []  # (step number after the update, metrics, code)
                w_start, w_steps, t_loop = time.perf_counter(), 0, time.perf_counter()
                batch = first
                for step in range(start, tc.steps):
                    if batch is None:
                        batch = self._batch(next(iterator))
                    self.state, m, code = compiled(self.state, batch, self.objective.frozen)
                    batch = None
                    done = step + 1
                    pending.append((done, m, code))
                    # Read the previous step's result (the device already has this one queued).
                    while len(pending) > 1 or (pending and (done % tc.log_every == 0 or done == tc.steps
                                                            or self.checkpoints.should_save(done))):
                        s, pm, pc = pending.pop(0)
                        pc = int(pc)
                        if pc:
                            raise NonFiniteLoss(s - 1, halt_terms(pc), last_ckpt)
                        window.add(jax.device_get(pm))
                        w_steps += 1
                    if self.checkpoints.should_save(done) or done == tc.steps:
                        self._save(done, iterator)
                        last_ckpt = done
                    if done % tc.log_every == 0 or done == tc.steps:
                        dt = time.perf_counter() - w_start
                        values = window.reduce()
                        values["step_time_s"] = dt / max(w_steps, 1)
                        values["tokens_per_sec"] = tokens_per_step * w_steps / dt
                        mfu = _mfu(self.flops_per_token * values["tokens_per_sec"], self.mesh, cfg.peak_flops)
                        if mfu is not None:
                            values["mfu"] = mfu
                        writer.write(done, "train", values)
                        train_log.append(dict(values, step=done))
                        bar.update(done, values)
                        window, w_start, w_steps = metrics_lib.Window(), time.perf_counter(), 0
                    else:
                        bar.update(done)
                    if tc.eval_every and done % tc.eval_every == 0 and done != tc.steps:
                        writer.write(done, "eval", self.evaluate(tc.eval_batches))
                loop_s = time.perf_counter() - t_loop
                tok_s = tokens_per_step * (tc.steps - start) / loop_s
            self.checkpoints.wait()
            final = self.evaluate(None if eval_all_at_end else tc.eval_batches)
            if final:
                writer.write(int(self.state.step), "eval", final)
        finally:
            bar.close()
            writer.close()
            self.checkpoints.close()
        return TrainResult(cfg, int(self.state.step), resumed, train_log, final,
                           time.perf_counter() - t_start, compile_s, tok_s, self.state.params)


def _mfu(model_flops_per_sec: float, mesh, peak_flops: float | None) -> float | None:
    """Model FLOP/s over the devices' peak; `peak_flops` per device is the plan's (the accelerator
    catalog's figure), None where MFU is not reported."""
    if peak_flops is None:
        return None
    return model_flops_per_sec / (peak_flops * mesh.devices.size)


def write_manifest(config: RuntimeConfig, argv: list[str], extra: dict | None = None) -> Path:
    """The run manifest: the resolved config and the exact command, in the run directory."""
    run_dir = Path(config.output.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": json.loads(config.model_dump_json()),
        "command": list(argv),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest.update(extra or {})
    path = run_dir / ("manifest.json" if jax.process_index() == 0 else f"manifest.process{jax.process_index()}.json")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def train(config: RuntimeConfig, *, console: bool = True, eval_all_at_end: bool = False) -> TrainResult:
    return Trainer(config, console=console).run(eval_all_at_end=eval_all_at_end)
