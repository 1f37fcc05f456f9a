"""Stage one of offline distillation (stage `save_topk`): run the teacher, write the top-k cache.

For every global batch of the training stream the trainer will read (train.steps of them, in
order) and every held-out batch, the teacher runs forward once and `capture` keeps, per token,

  top_k   the k largest logits and their ids (`jax.lax.top_k` on the full logits), and the tail's
          log-normalizer f(beta) = log sum_{j outside top-k} exp(beta z_j) with its slope at every
          temperature of the cached grid (store.temperature_grid);
  random  num_samples ids drawn from softmax(z / capture_temperature) (as distinct ids + counts),
          their logits, and the full-vocabulary f(beta) with its slope on the grid;

plus the label token's logit, all relative to the position's largest logit. Records go to
ArrayRecord shards through `store.SplitWriter` (one writer per process, shards renamed into
place when complete), and process 0 writes manifest.json when every process has finished.

Interrupted, the job resumes: finished shards are kept (sha256-checked), the partial one is redone,
the data iterator is restored to the first batch not yet saved. The bytes are a function of the
config (and the process count): the teacher forward, top-k and sampling are deterministic (samples
use a key folded with the global record index).

`distillc launch SPEC --local` and the `<name>-topk` workload both call `save_topk` through
runtime/main.py's dispatch on `config.stage`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillc.runtime.train import distributed
from distillc.runtime.offline import store
from distillc.runtime.config import RuntimeConfig
from distillc.runtime.data.pipeline import DataPipeline

Array = jax.Array


# ---------------------------------------------------------------- the per-batch computation


def unique_counts(draws: Array) -> tuple[Array, Array]:
    """Distinct ids of each row of draws [..., n] and how often each was drawn, in n slots.

    Slots hold the distinct ids in increasing order, then padding: the first id again with count
    0 (so the padding contributes nothing to any count-weighted sum).
    """
    s = jnp.sort(draws, axis=-1)  # [..., n]
    first = jnp.concatenate([jnp.ones_like(s[..., :1], bool), s[..., 1:] != s[..., :-1]], axis=-1)  # [..., n]
    counts = jnp.sum(s[..., :, None] == s[..., None, :], axis=-1)  # [..., n]
    counts = jnp.where(first, counts, 0)
    order = jnp.argsort(~first, axis=-1, stable=True)  # distinct ids first, in sorted order
    ids = jnp.take_along_axis(s, order, axis=-1)
    counts = jnp.take_along_axis(counts, order, axis=-1)
    ids = jnp.where(counts > 0, ids, s[..., :1])
    return ids.astype(jnp.int32), counts.astype(jnp.int32)


def sample_tokens(key: Array, z: Array, temperature: float, n: int) -> Array:
    """n i.i.d. draws per row of softmax(z / temperature), z [L, V] -> ids [L, n] (store.SAMPLER).

    Inverse CDF: one softmax and one cumulative sum per position, then a binary search per draw,
    O(V + n log V) per position (categorical sampling with Gumbel noise would cost O(n V)). The
    uniforms are scaled by the float32 cumulative sum's own total, so rounding never sends a draw
    past the last token.
    """
    cdf = jnp.cumsum(jax.nn.softmax(z / temperature, axis=-1), axis=-1)  # [L, V]
    u = jax.random.uniform(key, (z.shape[0], n), jnp.float32) * cdf[:, -1:]  # [L, n]
    ids = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="right"))(cdf, u)  # [L, n]
    return jnp.minimum(ids, z.shape[-1] - 1).astype(jnp.int32)


def log_normalizer_stats(z: Array, betas: np.ndarray) -> tuple[Array, Array]:
    """f(beta_g) = log sum_j exp(beta_g z_j) and f'(beta_g) = sum_j softmax(beta_g z)_j z_j over the
    finite entries of z [..., V] (entries at -inf are excluded); [..., G] each.

    One exp per entry and temperature, shifted by the set's own maximum (so a tail far below the
    top-1 logit never underflows to log 0).
    """
    finite = jnp.isfinite(z)
    m = jnp.max(jnp.where(finite, z, -jnp.inf), axis=-1, keepdims=True)  # [..., 1]
    d = jnp.where(finite, z - m, -jnp.inf)  # [..., V], <= 0
    zf = jnp.where(finite, z, 0.0)
    lse, slope = [], []
    for b in np.asarray(betas, np.float64):
        e = jnp.exp(float(b) * d)  # [..., V], 0 where excluded
        total = jnp.sum(e, axis=-1)  # [...] >= 1 (the maximum contributes exp(0))
        lse.append(float(b) * m[..., 0] + jnp.log(total))  # -inf for an empty set
        slope.append(jnp.sum(e * zf, axis=-1) / jnp.maximum(total, 1.0))
    return jnp.stack(lse, axis=-1), jnp.stack(slope, axis=-1)


def capture(
    logits: Array,  # [B, L, V] teacher logits over the compared vocabulary
    labels: Array,  # [B, L] int
    record_ids: Array,  # [B] int, global record index of each row
    *,
    spec: store.RecordSpec,
    betas: np.ndarray,
    capture_temperature: float,
    seed: int,
) -> dict[str, Array]:
    """What one batch contributes to the cache (the record fields other than the tokens)."""
    z = logits.astype(jnp.float32)
    z = z - jnp.max(z, axis=-1, keepdims=True)  # centred: the largest logit is 0
    label_logit = jnp.take_along_axis(z, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]  # [B, L]
    if spec.kind == "top_k":
        values, indices = jax.lax.top_k(z, spec.slots)  # [B, L, k], descending
        rest = jnp.put_along_axis(z, indices, -jnp.inf, axis=-1, inplace=False)  # [B, L, V]
        lse, slope = log_normalizer_stats(rest, betas)
        out = {"indices": indices.astype(jnp.int32), "values": values}
    else:
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(record_ids)  # [B]
        draws = jax.vmap(lambda key, zr: sample_tokens(key, zr, capture_temperature, spec.slots))(keys, z)
        ids, counts = unique_counts(draws)  # [B, L, n] each
        lse, slope = log_normalizer_stats(z, betas)
        out = {"indices": ids, "values": jnp.take_along_axis(z, ids, axis=-1), "counts": counts}
    out.update(lse=lse, lse_slope=slope, label_logit=label_logit)
    return out


# ---------------------------------------------------------------- the job


@dataclasses.dataclass
class SaveResult:
    data_dir: str
    skipped: bool  # the cache was already complete
    resumed_from: dict[str, int]  # split -> first batch computed in this run
    records: dict[str, int]
    tokens_per_sec: float  # teacher forward + capture + write, this run's batches
    wall_s: float
    bytes_per_token: float  # whole shard files over the training split's token positions


def _local_rows(arr: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    if arr.is_fully_addressable:
        return np.asarray(arr)
    seen, parts = set(), []
    for s in sorted(arr.addressable_shards, key=lambda s: s.index[0].start or 0):
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            parts.append(np.asarray(s.data))
    return np.concatenate(parts)


def _complete_cache(config: RuntimeConfig) -> Optional[store.TopKCache]:
    """The finished cache at data_dir when it is complete, matches and verifies; else None."""
    assert config.offline is not None  # an offline config (checked by save_topk)
    try:
        cache = store.TopKCache(config.offline.data_dir)
    except store.CacheError:
        return None
    cache.check_compatible(config)  # a finished cache for other settings is an error, never overwritten
    try:
        for split in cache.manifest["splits"]:
            cache.verify(split)
    except store.CacheError as e:
        print(f"topk cache: {e}; resuming the save to repair it")
        (cache.dir / "manifest.json").unlink()
        return None
    return cache


def save_topk(
    config: RuntimeConfig,
    *,
    console: bool = True,
    shard_bytes: int = store.DEFAULT_SHARD_BYTES,
    stop_after_batches: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> SaveResult:
    """Runs (or resumes, or skips when complete) the save stage of an offline config.

    stop_after_batches: return after computing that many batches in this call, leaving the save
    unfinished exactly as an interrupted job would (the open shard is dropped); for resume tests.
    """
    if config.mode != "offline" or config.offline is None:
        raise ValueError(f"run {config.name!r}: the save stage needs mode offline, got {config.mode!r}")
    t_start = time.perf_counter()
    off = config.offline
    data_dir = off.data_dir
    done = _complete_cache(config)
    if done is not None:
        log(f"topk cache at {data_dir} is complete ({done.records('train')} training records); nothing to save")
        return SaveResult(data_dir, True, {}, {s: done.records(s) for s in done.manifest["splits"]}, float("nan"),
                          time.perf_counter() - t_start, _bytes_per_token(done))

    from distillc.runtime.train.params import check_tokenizer, load_teacher

    check_tokenizer(config.teacher, config.data.tokenizer)

    mesh = distributed.make_mesh(config.mesh)
    shard = distributed.data_shard(mesh, config.data.global_batch_size)
    pipeline = DataPipeline(config.data, shard)
    if pipeline.tokenizer.vocab_size > config.loss.compare_vocab:
        raise ValueError(f"tokenizer {config.data.tokenizer!r} has {pipeline.tokenizer.vocab_size} tokens, more than "
                         f"the compared vocabulary {config.loss.compare_vocab}")
    graphdef, params = load_teacher(config.teacher, config.scan_layers, mesh)
    spec = store.record_spec(config)
    temperatures = store.temperature_grid(config.loss.temperature, off.capture_temperature)
    betas = store.grid_betas(temperatures)
    process, processes = jax.process_index(), jax.process_count()
    G, b = config.data.global_batch_size, pipeline.local_batch_size
    layout = store.Layout(G, processes, store.choose_batches_per_shard(spec, b, shard_bytes))
    prov = store.provenance(config)
    vocab = config.loss.compare_vocab

    @jax.jit
    def step(params, batch, record_ids):
        teacher = nnx.merge(graphdef, params)
        # packed rows: the teacher sees each document alone, as the online teacher does (objectives.packed)
        logits = teacher(batch["inputs"], segment_ids=batch["segment_ids"],
                         positions=batch["positions"]).logits[..., :vocab]  # [B, L, V]
        return capture(logits, batch["labels"], record_ids, spec=spec, betas=betas,
                       capture_temperature=off.capture_temperature, seed=config.train.seed)

    splits = {"train": config.train.steps, "eval": pipeline.eval_batch_count()}
    resumed, tokens, t_work, budget = {}, 0, 0.0, stop_after_batches
    for split, n_batches in splits.items():
        writer = store.SplitWriter(data_dir, split, process=process, layout=layout, spec=spec,
                                        batches=n_batches, provenance=prov, log=log)
        start = writer.resume()
        resumed[split] = start
        if split == "train":
            it = pipeline.train_iterator(skip_batches=start)
            batches: Iterator[dict[str, np.ndarray]] = (next(it) for _ in range(start, n_batches))
        else:
            batches = itertools.islice(pipeline.eval_batches(), start, None)
        if start < n_batches and console:
            log(f"topk save {split}: batches {start}..{n_batches - 1} -> {data_dir}")
        for n, local in zip(range(start, n_batches), batches):
            if budget is not None and budget <= 0:
                writer.abort()
                return SaveResult(data_dir, False, resumed, {}, float("nan"), time.perf_counter() - t_start, float("nan"))
            t0 = time.perf_counter()
            gbatch = distributed.global_batch({k: local[k] for k in ("inputs", "labels", "segment_ids", "positions")},
                                              mesh, G)
            ids = distributed.global_batch({"ids": np.arange(n * G + shard.index * b, n * G + (shard.index + 1) * b)},
                                           mesh, G)["ids"]
            out = {k: _local_rows(v) for k, v in step(params, gbatch, ids).items()}
            rows = []
            for j in range(b):
                rec = {k: local[k][j] for k in ("inputs", "labels", "mask", "segment_ids", "positions")}
                rec.update({k: v[j] for k, v in out.items()})
                rows.append(spec.encode(n * G + shard.index * b + j, rec))
            writer.add_batch(n, rows)
            t_work += time.perf_counter() - t0
            tokens += G * config.data.seq_len
            if budget is not None:
                budget -= 1
        if not writer.complete():
            raise RuntimeError(f"{split}: the data ran out before batch {n_batches}")
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("distillc-topk-save-done")
    if process == 0:
        store.finalize(data_dir, splits, processes)
    if processes > 1:
        multihost_utils.sync_global_devices("distillc-topk-manifest")
    cache = store.TopKCache(data_dir)
    result = SaveResult(data_dir, False, resumed, {s: cache.records(s) for s in splits},
                        tokens / t_work if t_work else float("nan"), time.perf_counter() - t_start,
                        _bytes_per_token(cache))
    if console:
        log(f"topk cache complete: {result.records['train']} training + {result.records['eval']} held-out records, "
            f"{result.bytes_per_token:.1f} bytes/token, {result.tokens_per_sec:,.0f} tokens/s")
    return result


def _bytes_per_token(cache: store.TopKCache) -> float:
    info = cache.manifest["splits"]["train"]
    size = sum(e["bytes"] for e in info["shards"])
    return size / max(1, info["records"] * cache.spec.seq_len)


def run_stage(config: RuntimeConfig, console: bool = True) -> None:
    """Stage (offline, save_topk) of runtime/main.py's stage table."""
    save_topk(config, console=console)
