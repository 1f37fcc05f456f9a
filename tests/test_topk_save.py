"""The save stage with a real (micro) teacher, its resume after kill -9, and training from the cache."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

from distillc.runtime.offline import save as topk_save, store as ts, objective as topk_train  # noqa: E402
from distillc.runtime.config import OfflineConfig, RuntimeConfig, Schedule  # noqa: E402

from .runtime_configs import make_config  # noqa: E402
from .tolerances import f32_atol, forward_terms  # noqa: E402

SHARD_BYTES = 4 * 16 * 200  # a few batches per shard at these shapes


def offline_config(root, *, k=8, sampling="top_k", loss="tail_bucket", steps=6, temperature=None, **kw) -> RuntimeConfig:
    cfg = make_config(Path(root) / "run", steps=steps, batch=4, seq_len=16, **kw)
    update = {
        "mode": "offline",
        "stage": "save_topk",
        "data": cfg.data.model_copy(update={"eval_fraction": 0.05, "eval_tokens": 200}),  # a few held-out rows
        "offline": OfflineConfig(top_k=k, data_dir=str(Path(root) / "cache"), loss=loss, sampling=sampling,
                                 num_samples=6, capture_temperature=1.0, dtype="float32"),
    }
    if temperature is not None:
        update["loss"] = cfg.loss.model_copy(update={"temperature": temperature})
    return cfg.model_copy(update=update)


def quiet(*_):
    pass


COSINE_T = Schedule(kind="cosine", start=2.0, end=1.0, max_steps=40)
STEPS = 40


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One finished cache (40 steps, cosine temperature 2 -> 1), saved once for the module."""
    root = tmp_path_factory.mktemp("saved")
    cfg = offline_config(root, steps=STEPS, temperature=COSINE_T)
    result = topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    return cfg, result


def copy_of(saved, root, **update) -> RuntimeConfig:
    """The shared cache copied under `root`, with its config pointing there."""
    cfg, _ = saved
    shutil.copytree(cfg.offline.data_dir, Path(root) / "cache")
    off = cfg.offline.model_copy(update={"data_dir": str(Path(root) / "cache")})
    out = make_config(Path(root) / "run", steps=cfg.train.steps, batch=4, seq_len=16)
    return cfg.model_copy(update=dict({"offline": off, "output": out.output}, **update))


def shard_bytes(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(d).glob("*.arecord"))}


def teacher_logits(cfg, recs, packed=True):
    """The teacher's float64-cast logits for cache records, with their segment ids and positions (as
    the save stage runs it) or, packed=False, as one sequence per row."""
    from distillc.runtime.train import distributed
    from distillc.runtime.train.params import load_teacher
    from flax import nnx

    graphdef, params = load_teacher(cfg.teacher, cfg.scan_layers, distributed.make_mesh(cfg.mesh))
    kw = {k: jnp.asarray(np.stack([r[k] for r in recs])) for k in ("segment_ids", "positions")} if packed else {}
    return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(np.stack([r["inputs"] for r in recs])), **kw).logits,
                      np.float64)


def lse64(x):
    m = np.max(x, axis=-1, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


# ---------------------------------------------------------------- what is captured


def test_saved_top_k_and_tail_match_the_teachers_full_logits(saved):
    cfg, res = saved
    cache = ts.TopKCache(cfg.offline.data_dir)
    assert res.records == {"train": STEPS * 4, "eval": cache.records("eval")} and cache.records("eval") > 0
    assert len(cache.temperatures) > 3  # the cosine schedule's grid
    recs = [cache.read("train", r) for r in (0, 5, 23)]
    z = teacher_logits(cfg, recs)  # [3, L, V]
    zc = z - z.max(-1, keepdims=True)
    # The cache and this test run the teacher's float32 forward separately (other batch shapes, other
    # programs): the logits agree to rounding over the forward's summed terms (tests/tolerances.py);
    # the tail log-normalizer and its slope add their own sum over the vocabulary, and a logit error
    # d moves them by at most d/t (lse is 1-Lipschitz) and d * (1 + 2 max|z| / t) (the slope).
    vocab, scale, t_min = z.shape[-1], float(np.abs(z).max()), min(cache.temperatures)
    atol_logit = f32_atol(forward_terms(cfg.teacher.arch, cfg.data.seq_len), scale)
    atol_lse = atol_logit / t_min + f32_atol(vocab, float(np.abs(zc).max()) / t_min + np.log(vocab))
    atol_slope = atol_logit * (1 + 2 * float(np.abs(zc).max()) / t_min) + f32_atol(vocab, float(np.abs(zc).max()))
    for rec, zr in zip(recs, zc):
        want_idx = np.argsort(-zr, axis=-1, kind="stable")[:, :8]
        np.testing.assert_array_equal(rec["indices"], want_idx)
        np.testing.assert_allclose(rec["values"], np.take_along_axis(zr, want_idx, -1), rtol=0, atol=atol_logit)
        tail = np.ones_like(zr, bool)
        np.put_along_axis(tail, want_idx, False, -1)
        for g, t in enumerate(cache.temperatures):
            x = np.where(tail, zr / t, -np.inf)
            np.testing.assert_allclose(rec["lse"][:, g], lse64(x), rtol=0, atol=atol_lse)
            w = np.exp(x - lse64(x)[:, None])
            np.testing.assert_allclose(rec["lse_slope"][:, g], np.sum(np.where(tail, w * zr, 0), -1), rtol=0, atol=atol_slope)
        np.testing.assert_allclose(rec["label_logit"], np.take_along_axis(zr, rec["labels"][:, None], -1)[:, 0], rtol=0, atol=atol_logit)


def short_documents(root, cfg: RuntimeConfig) -> RuntimeConfig:
    """cfg reading a corpus of short documents: most rows of seq_len 16 hold two or three of them."""
    path = Path(root) / "short.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}: " + "ab" * (i % 5)}) + "\n" for i in range(400)))
    data = cfg.data.model_copy(update={"source": str(path), "eval_fraction": 0.0})
    return cfg.model_copy(update={"data": data})


def test_records_keep_documents_apart_as_online(tmp_path):
    """The cache records carry the rows' segment ids and positions, the teacher ran with them (each
    document alone, as online), and offline training batches hand them to the student."""
    from distillc.runtime.data.pipeline import DataPipeline

    cfg = short_documents(tmp_path, offline_config(tmp_path, steps=2))
    topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    cache = ts.TopKCache(cfg.offline.data_dir)
    want = next(DataPipeline(cfg.data).train_iterator())
    recs = [cache.read("train", r) for r in range(4)]
    for k in ("segment_ids", "positions"):
        np.testing.assert_array_equal(np.stack([r[k] for r in recs]), want[k])
    assert max(int(r["segment_ids"].max()) for r in recs) >= 2  # rows that hold several documents
    z = teacher_logits(cfg, recs)
    zc = z - z.max(-1, keepdims=True)
    top = np.stack([r["values"][:, 0] for r in recs])
    np.testing.assert_allclose(top, 0.0, atol=1e-6)  # centred
    np.testing.assert_array_equal(np.stack([r["indices"][:, 0] for r in recs]), zc.argmax(-1))
    crossing = teacher_logits(cfg, recs, packed=False)  # attention across documents: other logits
    later = np.stack([r["segment_ids"] for r in recs]) >= 2
    assert np.abs(crossing - z)[later].max() > 1e-3
    batch = next(topk_train.CachedData(cache, train_config(cfg), topk_train.Shard()).train_iterator())
    for k in ("segment_ids", "positions"):
        np.testing.assert_array_equal(batch[k], want[k])


def test_a_cache_from_prepared_rows_records_their_digest(tmp_path):
    from distillc.runtime.data.prepared import prepare

    cfg = short_documents(tmp_path, offline_config(tmp_path, steps=2))
    prepare(cfg.data, str(tmp_path / "prep"), rows_per_shard=50, log=quiet)
    from_prepared = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared": str(tmp_path / "prep")})})
    topk_save.save_topk(from_prepared, shard_bytes=SHARD_BYTES, log=quiet)
    cache = ts.TopKCache(cfg.offline.data_dir)
    assert cache.provenance["data"]["prepared"] == ts.prepared_digest(from_prepared.data)
    topk_train.open_cache(train_config(from_prepared))  # the rows it was saved from: opens
    shutil.rmtree(tmp_path / "prep")
    prepare(cfg.data, str(tmp_path / "prep"), rows_per_shard=60, log=quiet)  # the same rows, another manifest
    with pytest.raises(ts.CacheError, match=r"prepared data \(manifest digest\): cache '[0-9a-f]{64}', spec "
                                            r"'[0-9a-f]{64}'"):
        topk_train.open_cache(train_config(from_prepared))
    with pytest.raises(ts.CacheError, match=r"prepared data \(manifest digest\): cache '[0-9a-f]{64}', spec None"):
        topk_train.open_cache(train_config(cfg))  # streaming now


def test_unique_counts():
    draws = jnp.asarray([[5, 3, 5, 5, 9, 3], [1, 1, 1, 1, 1, 1]])
    ids, counts = topk_save.unique_counts(draws)
    np.testing.assert_array_equal(ids, [[3, 5, 9, 3, 3, 3], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(counts, [[2, 3, 1, 0, 0, 0], [6, 0, 0, 0, 0, 0]])


def test_random_capture_draws_from_the_teacher_at_the_capture_temperature():
    rng = np.random.default_rng(0)
    vocab, n, records, tc = 12, 8, 3000, 1.5
    z = (2 * rng.standard_normal(vocab)).astype(np.float32)
    logits = jnp.broadcast_to(jnp.asarray(z), (records, 1, vocab))
    spec = ts.RecordSpec("random", seq_len=1, slots=n, grid=1, value_dtype="float32")
    out = topk_save.capture(logits, jnp.zeros((records, 1), jnp.int32), jnp.arange(records), spec=spec,
                            betas=np.array([1.0]), capture_temperature=tc, seed=3)
    ids, counts = np.asarray(out["indices"]).reshape(-1), np.asarray(out["counts"]).reshape(-1)
    assert np.all(np.asarray(out["counts"]).sum(-1) == n)
    freq = np.bincount(ids, weights=counts, minlength=vocab) / (records * n)
    p = np.exp(z / tc - lse64(z.astype(np.float64) / tc))
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / (records * n)) + 1e-4), (freq, p)
    np.testing.assert_allclose(np.asarray(out["lse"])[0, 0, 0], lse64(z - z.max()), rtol=1e-6)
    # another seed, other draws; the same seed, the same draws
    again = topk_save.capture(logits, jnp.zeros((records, 1), jnp.int32), jnp.arange(records), spec=spec,
                              betas=np.array([1.0]), capture_temperature=tc, seed=3)
    np.testing.assert_array_equal(again["indices"], out["indices"])


# ---------------------------------------------------------------- resume and determinism


def test_interrupted_save_resumes_to_the_same_bytes(saved, tmp_path):
    ref, _ = saved
    cfg = offline_config(tmp_path, steps=STEPS, temperature=COSINE_T)
    topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, stop_after_batches=5, log=quiet)
    assert not (Path(cfg.offline.data_dir) / "manifest.json").exists()
    res = topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    assert 0 < res.resumed_from["train"] <= 5
    assert shard_bytes(cfg.offline.data_dir) == shard_bytes(ref.offline.data_dir)
    again = topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    assert again.skipped


@pytest.mark.slow
def test_save_killed_with_sigkill_resumes_with_no_lost_or_duplicated_record(saved, tmp_path):
    ref, _ = saved
    steps = STEPS
    cfg = offline_config(tmp_path / "x", steps=steps, temperature=COSINE_T)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(cfg.model_dump_json())
    code = ("import sys; from distillc.runtime.config import RuntimeConfig; from distillc.runtime.offline import save as topk_save; "
            f"topk_save.save_topk(RuntimeConfig.model_validate_json(open(sys.argv[1]).read()), shard_bytes={SHARD_BYTES})")
    proc = subprocess.Popen([sys.executable, "-c", code, str(cfg_file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    progress = Path(cfg.offline.data_dir) / ts.progress_name("train", 0)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if progress.exists():
                try:
                    if len(json.loads(progress.read_text())["shards"]) >= 1:
                        break
                except json.JSONDecodeError:  # never happens with atomic writes; keep polling if it did
                    pass
            if proc.poll() is not None:
                pytest.fail(f"the save exited before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (Path(cfg.offline.data_dir) / "manifest.json").exists(), "killed too late to test resume"
    res = topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    assert res.resumed_from["train"] > 0
    assert shard_bytes(cfg.offline.data_dir) == shard_bytes(ref.offline.data_dir)
    src = ts.TopKCache(cfg.offline.data_dir).source("train")
    assert [int(src[r]["index"]) for r in range(len(src))] == list(range(steps * 4))
    assert not list(Path(cfg.offline.data_dir).glob(".*.tmp"))


def test_save_repairs_a_damaged_shard_of_a_finished_cache(saved, tmp_path):
    cfg = copy_of(saved, tmp_path)
    before = shard_bytes(cfg.offline.data_dir)
    path = Path(cfg.offline.data_dir) / "train-p00000-s00001.arecord"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ts.CacheError, match="truncated"):
        ts.TopKCache(cfg.offline.data_dir).verify("train")
    res = topk_save.save_topk(cfg, shard_bytes=SHARD_BYTES, log=quiet)
    assert not res.skipped and shard_bytes(cfg.offline.data_dir) == before


def test_save_refuses_to_overwrite_a_cache_for_other_settings(saved, tmp_path):
    cfg = copy_of(saved, tmp_path)
    other = cfg.model_copy(update={"offline": cfg.offline.model_copy(update={"capture_temperature": 2.0})})
    with pytest.raises(ts.CacheError, match="offline.capture_temperature: cache 1.0, spec 2.0"):
        topk_save.save_topk(other, shard_bytes=SHARD_BYTES, log=quiet)


# ---------------------------------------------------------------- training from the cache


def train_config(cfg: RuntimeConfig, **update) -> RuntimeConfig:
    return cfg.model_copy(update=dict({"stage": "train"}, **update))


def test_training_refuses_a_cache_paired_with_other_data(saved, tmp_path):
    cfg = copy_of(saved, tmp_path)
    topk_train.open_cache(train_config(cfg))  # the matching spec opens
    # a manifest that claims shuffle_seed 7 while its records were saved with seed 0
    path = Path(cfg.offline.data_dir) / "manifest.json"
    m = json.loads(path.read_text())
    m["provenance"]["data"]["shuffle_seed"] = 7
    path.write_text(json.dumps(m))
    lying = train_config(cfg, data=cfg.data.model_copy(update={"shuffle_seed": 7}))
    with pytest.raises(ts.CacheError, match=r"train record 0 holds a sequence with sha256 [0-9a-f]{16}\.\.\., the spec's "
                                            r"data gives [0-9a-f]{16}\.\.\."):
        topk_train.open_cache(lying)


@pytest.mark.slow
def test_offline_training_resumes_at_the_checkpointed_record(saved, tmp_path):
    from distillc.runtime.train import metrics as metrics_lib, trainer

    cfg = copy_of(saved, tmp_path)
    run = train_config(cfg, train=cfg.train.model_copy(update={"steps": 4, "checkpoint_every": 2}))
    first = trainer.train(run, console=False)
    log1 = {r["step"]: r for r in metrics_lib.read_jsonl(run.output.metrics_file) if r["split"] == "train"}
    assert set(log1) == {1, 2, 3, 4}
    for key in ("teacher_ce", "kl_T1_buckets", "kl_T_cached", "soft_loss", "hard_loss"):
        assert key in log1[4]
    assert "kl_T1" not in log1[4] and "kl_T" not in log1[4]  # dense KLs: absent offline, not zero
    ckpt = Path(run.output.checkpoint_dir)
    data_state = json.loads((ckpt / "2" / "data" / "metadata").read_text())  # orbax JsonSave's file
    assert data_state["next_record"] == 2 * run.data.global_batch_size  # the record index, not a batch count
    shutil.rmtree(ckpt / "4")
    Path(run.output.metrics_file).unlink()
    second = trainer.train(run, console=False)
    assert second.resumed_from == 2
    log2 = {r["step"]: r for r in metrics_lib.read_jsonl(run.output.metrics_file) if r["split"] == "train"}
    assert set(log2) == {3, 4}
    for step in (3, 4):
        for key in ("total_loss", "kl_T_cached", "teacher_ce"):
            assert log2[step][key] == pytest.approx(log1[step][key], rel=1e-5), (step, key)
    np.testing.assert_allclose(first.eval["hard_loss"], second.eval["hard_loss"], rtol=1e-5)


def test_training_state_records_the_next_cache_record(saved, tmp_path):
    cfg = copy_of(saved, tmp_path)
    run = train_config(cfg)
    from distillc.runtime.data.pipeline import Shard

    data = topk_train.CachedData(topk_train.open_cache(run), run, Shard(0, 1))
    it = data.train_iterator()
    batches = [next(it) for _ in range(3)]
    state = it.get_state()
    assert state["next_record"] == 3 * 4
    fresh = data.train_iterator()
    fresh.set_state(state)
    nxt = next(fresh)
    src = ts.TopKCache(cfg.offline.data_dir).source("train")
    np.testing.assert_array_equal(nxt["inputs"], np.stack([src[r]["inputs"] for r in range(12, 16)]))
    np.testing.assert_array_equal(batches[1]["teacher_values"], np.stack([src[r]["values"] for r in range(4, 8)]))
    with pytest.raises(ts.CacheError, match="keep data.global_batch_size"):
        fresh.set_state(dict(state, records_per_step=8))
    with pytest.raises(ts.CacheError, match="resume with the same cache"):
        fresh.set_state(dict(state, cache="0123456789abcdef"))


def test_a_damaged_manifest_is_one_clear_error(saved, tmp_path):
    """A flipped byte that breaks UTF-8, or a hand-edited record count: refused when the cache is
    opened (naming manifest.json), not as a traceback or thirty steps into training."""
    cfg = copy_of(saved, tmp_path)
    path = Path(cfg.offline.data_dir) / "manifest.json"
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] = 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(ts.CacheError, match=r"manifest\.json: not UTF-8 text"):
        ts.TopKCache(cfg.offline.data_dir)
    m = json.loads(good)
    m["splits"]["train"]["records"] += 4
    path.write_text(json.dumps(m))
    with pytest.raises(ts.CacheError, match=r"manifest\.json is damaged or was edited \(split 'train' claims"):
        ts.TopKCache(cfg.offline.data_dir)


def test_a_shard_damaged_after_the_start_check_stops_training_naming_it(saved, tmp_path, monkeypatch, capsys):
    """Shards are verified when training opens them; one that changes afterwards (the start check
    skipped here to stand for that) fails ArrayRecord's chunk hash while it is read: exit 2 naming
    the shard, not a traceback from a reader thread."""
    from distillc.runtime import main

    cfg = copy_of(saved, tmp_path)
    shard = sorted(Path(cfg.offline.data_dir).glob("train-*.arecord"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    monkeypatch.setattr(ts.TopKCache, "verify", lambda *a, **k: None)
    assert main.run(train_config(cfg), ["test"], console=False) == main.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{shard} record" in err and "the shard is damaged" in err and "Traceback" not in err
