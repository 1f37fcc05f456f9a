"""Stage two of offline distillation: the student trains from the cached teacher.

`build_objective` is what runtime/train/trainer.py's mode dispatch calls for `mode: offline`. It opens
the cache, checks it against the run config before anything else (`TopKCache.check_compatible`:
tokenizer, vocabulary, teacher, k, sampling, temperatures, data; then the sequence hashes of the
first training and held-out batches against the spec's own data pipeline), verifies the sha256 of
every shard the run will read, and returns an `OfflineObjective` whose batches come from the cache
through Grain (tokens and teacher signal together, so they cannot drift apart).

The loss is chosen by `offline.loss` (an explicit dispatch, never by what a batch happens to hold):

    total = alpha * T^2 * KL_cached(T) + (1 - alpha) * CE(student, labels)

with KL_cached one of offline.losses.tail_bucket_kl / renormalized_kl / sampled_kl. Metrics, as
(sum, count) pairs like losses.distill_loss:
    soft_loss, hard_loss, total_loss, tokens, alpha, temperature, beta  as online;
    teacher_ce       exact: the cache keeps the label's logit and the T=1 log-normalizer;
    kl_T_cached      the cached-teacher KL the loss uses, at T, without T^2;
    kl_T1_buckets    (top_k caches) the (k+1)-bucket KL at T=1, a lower bound of the dense KL;
    kl_T1_sampled    (random caches) the unbiased sampled estimate of the dense KL at T=1.
The dense kl_T and kl_T1 and the feature loss need the teacher's full logits or activations,
which an offline run does not have: they are absent from the metrics, not zero.

Resume: the data iterator's checkpointed state is {"next_record": the global index of the next
cache record to read, ...}; a restored run continues at exactly that record.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterator, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

from distillc.runtime.train import losses
from distillc.runtime.offline import losses as tl, store
from distillc.runtime.config import RuntimeConfig
from distillc.runtime.data.pipeline import DataPipeline, Shard
from distillc.runtime.train.objectives import student_token_sums

TEACHER_FIELDS = {  # record field -> batch key
    "indices": "teacher_indices",
    "values": "teacher_values",
    "counts": "teacher_counts",
    "lse": "teacher_lse",
    "lse_slope": "teacher_lse_slope",
    "label_logit": "teacher_label_logit",
}


def _batch_row(rec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # segment_ids and positions reach the student as online (objectives.packed): documents stay apart
    out = {k: rec[k] for k in ("inputs", "labels", "mask", "segment_ids", "positions")}
    for field, key in TEACHER_FIELDS.items():
        if field in rec:
            a = rec[field]
            out[key] = a.astype(np.int32) if field == "counts" else a
    return out


def _empty_row(spec: store.RecordSpec) -> dict[str, np.ndarray]:
    """A padding row (mask all False) with the record's shapes."""
    rec = {name: np.zeros(shape, dt) for name, dt, shape in spec.fields()}
    rec["mask"] = rec["mask"].astype(np.bool_)
    return _batch_row(rec)


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class CacheIterator:
    """This shard's training batches from the cache, with a checkpointable record position."""

    def __init__(self, dataset: grain.MapDataset, global_batch_size: int, cache_id: str):
        self._dataset = dataset
        self._it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)))
        self._g = global_batch_size
        self._cache_id = cache_id
        self._n = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._n += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"next_record": self._n * self._g, "records_per_step": self._g, "cache": self._cache_id}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("cache") != self._cache_id:
            raise store.CacheError(
                f"the checkpoint was written reading cache {state.get('cache')!r}; offline.data_dir now holds "
                f"cache {self._cache_id!r}: resume with the same cache, or start the run in a new output_dir")
        record, g = int(state["next_record"]), int(state.get("records_per_step", self._g))
        if g != self._g or record % g:
            raise store.CacheError(
                f"the checkpoint read {g} records per step (next record {record}); this run reads {self._g}: "
                "keep data.global_batch_size when resuming")
        self._n = record // g
        self._it.set_state({"next_index": self._n})


class CachedData:
    """A trainer BatchSource over the cache: training batches and held-out batches, this shard's rows."""

    def __init__(self, cache: store.TopKCache, config: RuntimeConfig, shard: Shard):
        g = config.data.global_batch_size
        if g % shard.count:
            raise ValueError(f"data.global_batch_size {g} does not divide into {shard.count} data shards")
        self.cache, self.shard = cache, shard
        self.global_batch_size = g
        self.local_batch_size = g // shard.count
        rows = (shard.index * self.local_batch_size, (shard.index + 1) * self.local_batch_size)
        self.train_records = config.train.steps * g
        self._train_source = cache.source("train", self.train_records, rows)
        self._eval_source = cache.source("eval", None, rows) if cache.records("eval") else None
        self.cache_id = hashlib.sha256(cache.path.read_bytes()).hexdigest()[:16]

    def train_dataset(self) -> grain.MapDataset:
        ds = grain.MapDataset.source(self._train_source).map(_batch_row)
        ds = ds.batch(self.local_batch_size, drop_remainder=True)
        return ds[self.shard.index :: self.shard.count]

    def train_iterator(self) -> CacheIterator:
        return CacheIterator(self.train_dataset(), self.global_batch_size, self.cache_id)

    def eval_batch_count(self) -> int:
        n = self.cache.records("eval")
        return -(-n // self.global_batch_size) if n else 0

    def eval_batches(self, max_batches: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
        count = self.eval_batch_count() if max_batches is None else min(max_batches, self.eval_batch_count())
        b, src = self.local_batch_size, self._eval_source
        if src is None:  # no held-out records: count is 0
            return
        for n in range(count):
            start = n * self.global_batch_size + self.shard.index * b
            yield _stack([_batch_row(src[i]) if i < len(src) else _empty_row(self.cache.spec)
                          for i in range(start, start + b)])


def _grid_index(cache: store.TopKCache, temperature: float) -> int:
    for i, t in enumerate(cache.temperatures):
        if abs(t - temperature) <= 1e-9 * max(1.0, temperature):
            return i
    raise store.CacheError(f"{cache.path}: temperature {temperature} is not on the cached grid "
                                f"{list(cache.temperatures)}; re-run the save stage with this distillc")


@dataclasses.dataclass
class OfflineObjective:
    """The trainer Objective of an offline run: the teacher signal rides in the batch."""

    config: RuntimeConfig
    data: CachedData
    name: str = "offline"
    frozen: Any = None
    teacher_flops_per_token: float = 0.0

    def __post_init__(self):
        cache, off = self.data.cache, self.config.offline
        self.name = f"offline_{off.loss}"
        self.kind = off.loss
        self.sampling = cache.spec.kind
        self.k = off.top_k
        self.num_samples = cache.spec.slots
        self.betas = cache.betas
        self.capture_temperature = off.capture_temperature
        self.t1 = _grid_index(cache, 1.0)
        self.tc = _grid_index(cache, off.capture_temperature)
        self.compare_vocab = self.config.loss.compare_vocab

    def teacher(self, frozen, batch):
        return None  # the cached teacher is part of the batch

    def _kl(self, s_cmp, batch, temperature, where):
        """(KL the loss uses at T, KL metric at T=1, teacher log Z at T=1), per token [B, L]."""
        if self.sampling == "top_k":
            idx, vals = batch["teacher_indices"], batch["teacher_values"]
            lse, slope = batch["teacher_lse"], batch["teacher_lse_slope"]
            t_T = tl.teacher_at_temperature(idx, vals, lse, slope, self.betas, temperature, self.k)
            if self.kind == "tail_bucket":
                kl_t = tl.tail_bucket_kl(s_cmp, t_T, temperature, where)
            elif self.kind == "renormalized":
                kl_t = tl.renormalized_kl(s_cmp, t_T.indices, t_T.logits, temperature, where)
            else:
                raise ValueError(f"offline.loss {self.kind!r} needs a random-sampling cache")
            t_1 = tl.teacher_at_temperature(idx, vals, lse, slope, self.betas, 1.0, self.k)
            kl_1 = tl.tail_bucket_kl(s_cmp, t_1, 1.0, where)
            log_z1 = jnp.logaddexp(jax.nn.logsumexp(vals.astype(jnp.float32), axis=-1), lse[..., self.t1])
            return kl_t, kl_1, log_z1
        if self.kind != "sampled":
            raise ValueError(f"offline.loss {self.kind!r} needs a top_k cache")
        lse, slope = batch["teacher_lse"], batch["teacher_lse_slope"]
        log_z_t = tl.interpolate_log_normalizer(lse, slope, self.betas, temperature)
        teacher = tl.SampledTeacher(batch["teacher_indices"], batch["teacher_counts"], batch["teacher_values"],
                                    log_z_t, lse[..., self.tc])
        kl_t = tl.sampled_kl(s_cmp, teacher, temperature, self.capture_temperature, self.num_samples, where)
        t_1 = teacher._replace(log_normalizer=lse[..., self.t1])
        kl_1 = tl.sampled_kl(s_cmp, t_1, 1.0, self.capture_temperature, self.num_samples, where)
        return kl_t, kl_1, lse[..., self.t1]

    def _terms(self, logits, f, temperature):
        """Per-token (KL at T, student CE, KL metric at T=1, teacher CE) [B, L] from the student's
        logits over these positions; 0 where masked."""
        where = f["mask"]
        kl_t, kl_1, log_z1 = self._kl(logits[..., : self.compare_vocab], f, temperature, where)  # [B, L] each
        ce = losses.cross_entropy(logits, f["labels"], where)  # [B, L]
        t_ce = tl.teacher_cross_entropy(f["teacher_label_logit"], log_z1, where)  # [B, L]
        return tuple(jnp.where(where, x, 0.0) for x in (kl_t, ce, jax.lax.stop_gradient(kl_1), t_ce))

    def loss(self, student, signal, batch, weights):
        alpha, temperature, beta = weights
        where = batch["mask"]
        fields = {k: v for k, v in batch.items() if k != "inputs"}

        def terms(logits, f):
            return self._terms(logits, f, temperature)

        kl_sum, ce_sum, kl1_sum, tce_sum = student_token_sums(self.config, student, batch, fields, terms)
        count = jnp.sum(where.astype(jnp.float32))
        soft_sum = temperature * temperature * kl_sum
        total_sum = alpha * soft_sum + (1.0 - alpha) * ce_sum
        one = jnp.ones((), jnp.float32)
        metrics = {
            "soft_loss": (soft_sum, count),
            "hard_loss": (ce_sum, count),
            "teacher_ce": (tce_sum, count),
            "kl_T_cached": (kl_sum, count),
            ("kl_T1_buckets" if self.sampling == "top_k" else "kl_T1_sampled"): (kl1_sum, count),
            "total_loss": (total_sum, count),
            "tokens": (count, one),
            "alpha": (alpha, one),
            "temperature": (temperature, one),
            "beta": (beta, one),
        }
        return total_sum / jnp.maximum(count, 1.0), metrics


def first_batch_hashes(pipeline: DataPipeline, split: str) -> list[tuple[int, bytes]]:
    """(record index, sequence sha256) of the spec's first global batch of `split`."""
    if split == "train":
        batch = next(pipeline.train_iterator())
    else:
        first = list(pipeline.eval_batches(1))
        if not first:
            return []
        batch = first[0]
    return [(i, store.sequence_sha256(batch["inputs"][i], batch["labels"][i], batch["mask"][i]))
            for i in range(len(batch["inputs"]))]


def open_cache(config: RuntimeConfig) -> store.TopKCache:
    """The cache of an offline config, checked against it (settings, then sequence hashes)."""
    if config.offline is None:
        raise ValueError(f"run {config.name!r} is offline but has no offline section")
    if config.loss.feature_enabled:
        raise ValueError("offline runs cache logits only: the feature loss needs the teacher's activations "
                         "(set loss.beta to 0, or use mode: online)")
    cache = store.TopKCache(config.offline.data_dir)
    cache.check_compatible(config)
    spec_data = DataPipeline(config.data, Shard(0, 1))
    for split in ("train", "eval"):
        if cache.records(split):
            cache.check_pairing(split, first_batch_hashes(spec_data, split))
    return cache


def build_objective(config: RuntimeConfig, mesh, shard: Shard) -> OfflineObjective:
    """trainer.build_objective's offline branch."""
    cache = open_cache(config)
    return OfflineObjective(config, CachedData(cache, config, shard))
