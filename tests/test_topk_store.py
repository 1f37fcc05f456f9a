"""The top-k cache on disk: records, shards, resume, determinism, and every corruption / misuse error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("array_record")

from distillc.runtime.offline import store as ts  # noqa: E402
from distillc.runtime.config import OfflineConfig, Schedule  # noqa: E402

from .runtime_configs import make_config  # noqa: E402


def offline_config(tmp_path, *, k=8, sampling="top_k", loss="tail_bucket", dtype="float32", steps=6, batch=4,
                   seq_len=8, temperature: Schedule | None = None, **kw):
    cfg = make_config(tmp_path / "run", steps=steps, batch=batch, seq_len=seq_len, **kw)
    update = {"mode": "offline", "offline": OfflineConfig(top_k=k, data_dir=str(tmp_path / "cache"), loss=loss,
                                                           sampling=sampling, num_samples=6, capture_temperature=1.0,
                                                           dtype=dtype)}
    if temperature is not None:
        update["loss"] = cfg.loss.model_copy(update={"temperature": temperature})
    return cfg.model_copy(update=update)


def fake_record(spec: ts.RecordSpec, index: int) -> dict[str, np.ndarray]:
    """A record whose every field depends on its global index (so misplacement is visible)."""
    rng = np.random.default_rng(index)
    L, S, G = spec.seq_len, spec.slots, spec.grid
    rec = {
        "inputs": rng.integers(0, 256, L).astype(np.int32),
        "labels": rng.integers(0, 256, L).astype(np.int32),
        "mask": rng.random(L) > 0.2,
        "segment_ids": np.sort(rng.integers(1, 4, L)).astype(np.int32),
        "positions": rng.integers(0, L, L).astype(np.int32),
        "indices": rng.integers(0, 256, (L, S)).astype(np.int32),
        "values": -np.sort(rng.random((L, S)), axis=-1).astype(np.float32),
        "lse": rng.standard_normal((L, G)).astype(np.float32),
        "lse_slope": rng.standard_normal((L, G)).astype(np.float32),
        "label_logit": rng.standard_normal(L).astype(np.float32),
    }
    if spec.kind == "random":
        rec["counts"] = rng.integers(0, 4, (L, S)).astype(np.uint16)
    return rec


def write_split(cfg, split="train", batches=6, *, processes=1, batches_per_shard=2, stop_after=None):
    """Writes `batches` global batches of fake records the way save_topk does; returns the writers."""
    spec = ts.record_spec(cfg)
    g = cfg.data.global_batch_size
    layout = ts.Layout(g, processes, batches_per_shard)
    b = layout.rows_per_process
    writers = []
    for p in range(processes):
        w = ts.SplitWriter(cfg.offline.data_dir, split, process=p, layout=layout, spec=spec, batches=batches,
                           provenance=ts.provenance(cfg), log=lambda *_: None)
        start = w.resume()
        for n in range(start, batches):
            if stop_after is not None and n >= stop_after:
                w.abort()
                break
            w.add_batch(n, [spec.encode(n * g + p * b + j, fake_record(spec, n * g + p * b + j)) for j in range(b)])
        writers.append(w)
    return writers


def write_cache(cfg, *, processes=1, train_batches=6, eval_batches=2, batches_per_shard=2):
    write_split(cfg, "train", train_batches, processes=processes, batches_per_shard=batches_per_shard)
    write_split(cfg, "eval", eval_batches, processes=processes, batches_per_shard=batches_per_shard)
    return ts.finalize(cfg.offline.data_dir, {"train": train_batches, "eval": eval_batches}, processes)


def shard_files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(d).glob("*.arecord"))}


# ---------------------------------------------------------------- records and grid


@pytest.mark.parametrize("kind,dtype", [("top_k", "float32"), ("top_k", "bfloat16"), ("random", "float32")])
def test_record_roundtrip(kind, dtype):
    spec = ts.RecordSpec(kind, seq_len=8, slots=5, grid=3, value_dtype=dtype)
    rec = fake_record(spec, 42)
    data = spec.encode(42, rec)
    assert len(data) == spec.nbytes
    back = spec.decode(data, where="test", expect_index=42)
    for name, dt, _ in spec.fields():
        want = rec[name].astype(dt) if name != "mask" else rec[name]
        np.testing.assert_array_equal(back[name], want)
    assert bytes(back["sha256"]) == ts.sequence_sha256(rec["inputs"], rec["labels"], rec["mask"])
    with pytest.raises(ts.CacheError, match="record 7 belongs"):
        spec.decode(data, where="test", expect_index=7)
    flipped = bytearray(data)
    flipped[ts._HEADER.size + 3] ^= 1  # a token byte
    with pytest.raises(ts.CacheError, match="do not match their sha256"):
        spec.decode(bytes(flipped), where="test")


def test_record_is_far_smaller_than_full_vocabulary_logits():
    # k=64 over a 128256-token vocabulary, seq 2048: the target is <= 1/500 of fp32 logits.
    spec = ts.RecordSpec("top_k", seq_len=2048, slots=64, grid=1, value_dtype="float32")
    per_token = spec.nbytes / 2048
    assert per_token * 500 <= 128256 * 4, per_token


def test_temperature_grid():
    const = Schedule(kind="constant", start=2.0, end=2.0, max_steps=10)
    assert ts.temperature_grid(const, 1.0) == (2.0, 1.0)  # increasing beta: T=2 then T=1
    cos = Schedule(kind="cosine", start=2.0, end=1.0, max_steps=10)
    grid = ts.temperature_grid(cos, 1.5)
    betas = ts.grid_betas(grid)
    assert grid[0] == 2.0 and grid[-1] == 1.0 and 1.5 in grid
    assert np.all(np.diff(betas) > 0) and np.max(np.diff(betas)) <= ts.MAX_BETA_SPACING + 1e-8
    pw = Schedule(kind="piecewise", points=((0, 3.0), (5, 0.8)), max_steps=10)
    g = ts.temperature_grid(pw, 1.0)
    assert min(g) == 0.8 and max(g) == 3.0 and 1.0 in g


# ---------------------------------------------------------------- writing, reading, layout


def test_layout_maps_every_record_once_for_two_writing_processes(tmp_path):
    cfg = offline_config(tmp_path)
    write_cache(cfg, processes=2, batches_per_shard=2)
    cache = ts.TopKCache(cfg.offline.data_dir)
    assert cache.records("train") == 6 * 4 and cache.layout.process_count == 2
    assert len(cache.manifest["splits"]["train"]["shards"]) == 2 * 3
    src = cache.source("train")
    for r in range(len(src)):
        rec = src[r]
        assert int(rec["index"]) == r
        np.testing.assert_array_equal(rec["inputs"], fake_record(cache.spec, r)["inputs"])
    # a process's rows only: the shards of the other process are not even verified
    rows_src = cache.source("eval", rows=(0, 2))
    assert {f for f in cache._verified if f.startswith("eval")} == {"eval-p00000-s00000.arecord"}
    assert int(rows_src[1]["index"]) == 1


def test_manifest_holds_provenance_counts_and_hashes(tmp_path):
    cfg = offline_config(tmp_path)
    m = write_cache(cfg)
    prov = m["provenance"]
    assert prov["teacher_model"] == cfg.teacher.arch.name and prov["teacher_checkpoint"] == cfg.teacher.checkpoint
    assert prov["tokenizer"]["name"] == "byte" and len(prov["tokenizer"]["sha256"]) == 64
    assert (prov["vocab_size"], prov["k"], prov["capture_temperature"], prov["dtype"]) == (256, 8, 1.0, "float32")
    assert prov["distillc_version"]
    assert set(prov) == set(ts.PROVENANCE_KEYS)
    for entry in m["splits"]["train"]["shards"]:
        data = (Path(cfg.offline.data_dir) / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert sum(e["records"] for e in m["splits"]["train"]["shards"]) == m["splits"]["train"]["records"] == 24


def test_manifest_without_a_provenance_field_is_refused(tmp_path):
    cfg = offline_config(tmp_path)
    write_cache(cfg)
    _edit_manifest(cfg, lambda m: m["provenance"].pop("teacher_checkpoint_sha256"))
    with pytest.raises(ts.CacheError, match="provenance lacks teacher_checkpoint_sha256 .*re-run the save stage"):
        ts.TopKCache(cfg.offline.data_dir)


def test_same_input_gives_identical_bytes(tmp_path):
    a, b = offline_config(tmp_path / "a"), offline_config(tmp_path / "b")
    write_cache(a)
    write_cache(b)
    fa, fb = shard_files(a.offline.data_dir), shard_files(b.offline.data_dir)
    assert fa and fa == fb
    ma = json.loads((Path(a.offline.data_dir) / "manifest.json").read_text())
    mb = json.loads((Path(b.offline.data_dir) / "manifest.json").read_text())
    assert ma == mb


def test_resume_redoes_only_the_partial_shard_with_no_lost_or_duplicated_record(tmp_path):
    cfg, ref = offline_config(tmp_path / "x"), offline_config(tmp_path / "ref")
    write_split(cfg, batches=6, stop_after=3)  # shard 0 (batches 0-1) done, shard 1 half written
    d = Path(cfg.offline.data_dir)
    assert [p.name for p in d.glob("*.arecord")] == ["train-p00000-s00000.arecord"]
    assert list(d.glob(".train-*.tmp")) == []  # the aborted shard's temp file is gone
    first = shard_files(d)
    w = ts.SplitWriter(cfg.offline.data_dir, "train", process=0, layout=ts.Layout(4, 1, 2),
                       spec=ts.record_spec(cfg), batches=6, provenance=ts.provenance(cfg), log=lambda *_: None)
    assert w.resume() == 2  # the first batch of the unfinished shard
    write_split(cfg, batches=6)
    write_split(cfg, "eval", 2)
    ts.finalize(cfg.offline.data_dir, {"train": 6, "eval": 2}, 1)
    write_cache(ref)
    got = shard_files(d)
    assert got["train-p00000-s00000.arecord"] == first["train-p00000-s00000.arecord"]  # kept, not rewritten
    assert got == shard_files(ref.offline.data_dir)
    src = ts.TopKCache(cfg.offline.data_dir).source("train")
    assert [int(src[r]["index"]) for r in range(len(src))] == list(range(24))


def test_resume_redoes_a_finished_shard_that_no_longer_matches_its_sha256(tmp_path):
    cfg = offline_config(tmp_path)
    write_split(cfg, batches=6, stop_after=4)
    shard0 = Path(cfg.offline.data_dir) / "train-p00000-s00000.arecord"
    good = shard0.read_bytes()
    shard0.write_bytes(good[:-10])
    logs = []
    w = ts.SplitWriter(cfg.offline.data_dir, "train", process=0, layout=ts.Layout(4, 1, 2),
                       spec=ts.record_spec(cfg), batches=6, provenance=ts.provenance(cfg), log=logs.append)
    assert w.resume() == 0 and "does not match" in logs[0]
    write_split(cfg, batches=6)
    assert shard0.read_bytes() == good


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = offline_config(tmp_path)
    write_split(cfg, batches=6, stop_after=3)
    other = offline_config(tmp_path, k=4)
    with pytest.raises(ts.CacheError, match=r"other settings \(.*k: 8 vs 4"):
        write_split(other, batches=6)


# ---------------------------------------------------------------- corruption: each a clear error


@pytest.fixture
def cache_cfg(tmp_path):
    cfg = offline_config(tmp_path)
    write_cache(cfg)
    return cfg


def test_missing_manifest_and_unfinished_save(tmp_path):
    cfg = offline_config(tmp_path)
    with pytest.raises(ts.CacheError, match="holds no cache; run the save stage"):
        ts.TopKCache(cfg.offline.data_dir)
    write_split(cfg, batches=6, stop_after=3)
    with pytest.raises(ts.CacheError, match="unfinished save"):
        ts.TopKCache(cfg.offline.data_dir)


def test_truncated_shard(cache_cfg):
    path = Path(cache_cfg.offline.data_dir) / "train-p00000-s00001.arecord"
    path.write_bytes(path.read_bytes()[:-100])
    cache = ts.TopKCache(cache_cfg.offline.data_dir)
    with pytest.raises(ts.CacheError, match=rf"{path}: \d+ bytes, the manifest says \d+ \(truncated.*re-run the save"):
        cache.source("train")


def test_bit_flipped_shard(cache_cfg):
    path = Path(cache_cfg.offline.data_dir) / "train-p00000-s00002.arecord"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    cache = ts.TopKCache(cache_cfg.offline.data_dir)
    cache.source("train", records=8)  # the first 8 records live in shard 0: still readable
    with pytest.raises(ts.CacheError, match=rf"{path}: sha256 .* \(corrupted\); delete it and re-run"):
        cache.source("train")


def test_missing_shard(cache_cfg):
    path = Path(cache_cfg.offline.data_dir) / "eval-p00000-s00000.arecord"
    path.unlink()
    with pytest.raises(ts.CacheError, match=rf"{path}: shard missing"):
        ts.TopKCache(cache_cfg.offline.data_dir).source("eval")


def _edit_manifest(cfg, fn):
    path = Path(cfg.offline.data_dir) / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_manifest_from_another_tokenizer(cache_cfg):
    _edit_manifest(cache_cfg, lambda m: m["provenance"]["tokenizer"].update(name="llama3.model", sha256="ab" * 32))
    with pytest.raises(ts.CacheError, match=r"(?s)manifest.json does not match .*tokenizer name: cache 'llama3.model', spec 'byte'"):
        ts.TopKCache(cache_cfg.offline.data_dir).check_compatible(cache_cfg)


def test_spec_k_larger_than_the_caches(cache_cfg, tmp_path):
    bigger = cache_cfg.model_copy(update={"offline": cache_cfg.offline.model_copy(update={"top_k": 32})})
    with pytest.raises(ts.CacheError, match=r"offline.top_k: cache 8, spec 32 \(the cache keeps only the top-8"):
        ts.TopKCache(cache_cfg.offline.data_dir).check_compatible(bigger)
    smaller = cache_cfg.model_copy(update={"offline": cache_cfg.offline.model_copy(update={"top_k": 4})})
    ts.TopKCache(cache_cfg.offline.data_dir).check_compatible(smaller)  # k <= cached k is fine


def test_every_other_mismatch_is_named_with_both_values(cache_cfg):
    off = cache_cfg.offline.model_copy(update={"dtype": "bfloat16", "loss": "sampled"})
    data = cache_cfg.data.model_copy(update={"shuffle_seed": 7})
    loss = cache_cfg.loss.model_copy(update={"temperature": Schedule(kind="linear", start=3.0, end=1.0, max_steps=6),
                                             "compare_vocab": 200})
    train = cache_cfg.train.model_copy(update={"steps": 100})
    bad = cache_cfg.model_copy(update={"offline": off, "data": data, "loss": loss, "train": train})
    with pytest.raises(ts.CacheError) as e:
        ts.TopKCache(cache_cfg.offline.data_dir).check_compatible(bad)
    msg = str(e.value)
    for needle in ["vocabulary size: cache 256, spec 200", "offline.dtype: cache 'float32', spec 'bfloat16'",
                   "offline.loss sampled reads a cache saved with sampling 'random'",
                   "temperature range: cache [1.0, 1.0], spec [1.0, 3.0]", "data.shuffle_seed: cache 0, spec 7",
                   "training records: cache 24, spec 400"]:
        assert needle in msg, (needle, msg)


def test_pairing_with_other_data_names_the_record_and_both_hashes(cache_cfg):
    cache = ts.TopKCache(cache_cfg.offline.data_dir)
    rec = cache.read("train", 2)
    ok = [(2, bytes(rec["sha256"]))]
    cache.check_pairing("train", ok)
    other = [(2, hashlib.sha256(b"other text").digest())]
    with pytest.raises(ts.CacheError, match=r"train-p00000-s00000.arecord: train record 2 holds a sequence with sha256 "
                                            rf"{bytes(rec['sha256']).hex()[:16]}\.\.\., the spec's data gives"):
        cache.check_pairing("train", other)


def test_teacher_checkpoint_written_again_after_the_save(tmp_path):
    ckpt = tmp_path / "teacher-ckpt"
    ckpt.mkdir()
    (ckpt / "_CHECKPOINT_METADATA").write_text('{"commit_timestamp_nsecs": 1}')
    cfg = offline_config(tmp_path, teacher_checkpoint=str(ckpt))
    write_cache(cfg)
    cache = ts.TopKCache(cfg.offline.data_dir)
    cache.check_compatible(cfg)
    (ckpt / "_CHECKPOINT_METADATA").write_text('{"commit_timestamp_nsecs": 2}')  # the teacher was re-trained
    with pytest.raises(ts.CacheError, match=rf"teacher checkpoint content at {ckpt} .*written again after the cache"):
        cache.check_compatible(cfg)
