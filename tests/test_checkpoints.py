"""Orbax checkpoints: training state round trip, parameter checkpoints, dtype casts, mismatches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from distillc.runtime.train.checkpoints import (
    CheckpointError, TrainCheckpoints, is_checkpoint, restore_params, save_params,
)
from distillc.runtime.models.transformer import build_model

from tests.runtime_configs import MICRO, arch, side


def _params(seed=0, dtype="float32", a=MICRO):
    model = build_model(side("student", a, seed=seed, weight_dtype=dtype), scan_layers=True)
    return nnx.split(model, nnx.Param)[1]


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_state_round_trip(tmp_path):
    params = _params()
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial moments and count
    ck = TrainCheckpoints(str(tmp_path / "ckpt"), every=5, max_to_keep=2)
    assert ck.latest_step() is None
    for step in (5, 10, 15):
        ck.save(step, params=params, opt_state=opt_state, data_state={"next_index": step}, meta={"config_name": "x"})
    ck.wait()
    assert ck.latest_step() == 15
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [10, 15]  # max_to_keep
    r = ck.restore(15, params_like=_params(seed=1), opt_state_like=tx.init(_params(seed=1)))
    ck.close()
    assert r.step == 15 and r.data_state == {"next_index": 15} and r.meta["config_name"] == "x"
    _equal(r.params, params)
    _equal(r.opt_state, opt_state)
    assert jax.tree.structure(r.params) == jax.tree.structure(params)


def test_unfinished_step_directory_is_not_the_latest(tmp_path):
    params = _params()
    tx = optax.sgd(0.1)
    ck = TrainCheckpoints(str(tmp_path / "ckpt"), every=1, max_to_keep=3)
    ck.save(1, params=params, opt_state=tx.init(params), data_state={"next_index": 1}, meta={})
    ck.close()
    # what a job killed in the middle of writing step 2 leaves behind: a temporary directory
    (tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234").mkdir()
    ck2 = TrainCheckpoints(str(tmp_path / "ckpt"), every=1, max_to_keep=3)
    assert ck2.latest_step() == 1
    ck2.close()


def test_param_checkpoint_restores_cast_to_bf16(tmp_path):
    params = _params()
    save_params(str(tmp_path / "teacher"), params)
    assert is_checkpoint(str(tmp_path / "teacher")) and not is_checkpoint(str(tmp_path / "none"))
    restored = restore_params(str(tmp_path / "teacher"), _params(seed=3, dtype="bfloat16"))
    assert {x.dtype for x in jax.tree.leaves(restored)} == {jnp.dtype(jnp.bfloat16)}
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(x).astype(jnp.bfloat16), np.asarray(y))


def test_restore_params_from_a_run_takes_the_latest_step(tmp_path):
    tx = optax.sgd(0.1)
    ck = TrainCheckpoints(str(tmp_path / "run"), every=1, max_to_keep=3)
    for step, seed in ((1, 1), (2, 2)):
        p = _params(seed=seed)
        ck.save(step, params=p, opt_state=tx.init(p), data_state={}, meta={})
    ck.close()
    assert is_checkpoint(str(tmp_path / "run"))
    _equal(restore_params(str(tmp_path / "run"), _params(seed=0)), _params(seed=2))
    _equal(restore_params(str(tmp_path / "run" / "1"), _params(seed=0)), _params(seed=1))


def test_mismatched_or_missing_checkpoint_is_a_clear_error(tmp_path):
    save_params(str(tmp_path / "small"), _params())
    bigger = arch("bigger", layers=2, d=64, heads=2, mlp=64)
    with pytest.raises(CheckpointError, match="does not match"):
        restore_params(str(tmp_path / "small"), _params(a=bigger))
    with pytest.raises(CheckpointError, match="does not exist"):
        restore_params(str(tmp_path / "missing"), _params())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        restore_params(str(tmp_path / "empty"), _params())


def test_mismatch_message_names_the_differences(tmp_path):
    save_params(str(tmp_path / "small"), _params())
    bigger = arch("bigger", layers=2, d=64, heads=2, mlp=64)
    with pytest.raises(CheckpointError, match=r"shape\(s\) differ, e\.g\. embed: checkpoint \(256, 32\), model \(256, 64\)"):
        restore_params(str(tmp_path / "small"), _params(a=bigger))
    deeper = arch("deeper", layers=3, d=32, heads=2, mlp=64)
    with pytest.raises(CheckpointError, match="shape"):
        restore_params(str(tmp_path / "small"), _params(a=deeper))


def test_same_names_and_shapes_nested_otherwise_is_a_clear_error(tmp_path):
    """Plain arrays saved where the model has nnx Variables pass the names-and-shapes comparison;
    orbax refuses the restore, and the message says what differs instead of orbax's tree dump."""
    save_params(str(tmp_path / "plain"), nnx.to_pure_dict(_params()))
    with pytest.raises(CheckpointError, match="nested differently"):
        restore_params(str(tmp_path / "plain"), _params())


@pytest.mark.parametrize("saved_scan", [True, False], ids=["scanned-to-loop", "loop-to-scanned"])
def test_teacher_loads_from_either_layer_layout(tmp_path, saved_scan):
    """A teacher saved with stacked layers loads into an unscanned run, and the reverse: same weights."""
    from jax.sharding import Mesh

    from distillc.runtime.train.checkpoints import stored_tree
    from distillc.runtime.convert.layout import stored_scan_layers
    from distillc.runtime.train.params import load_teacher

    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    src = build_model(side("teacher", MICRO, seed=3), scan_layers=saved_scan)
    save_params(str(tmp_path / "t"), nnx.split(src, nnx.Param)[1])
    assert stored_scan_layers(stored_tree(str(tmp_path / "t"))) is saved_scan
    graphdef, params = load_teacher(side("teacher", MICRO, checkpoint=str(tmp_path / "t")), not saved_scan, mesh)
    dst = build_model(side("teacher", MICRO, seed=99), scan_layers=not saved_scan)
    nnx.update(dst, params)
    toks = jnp.arange(2 * 16, dtype=jnp.int32).reshape(2, 16) % MICRO.vocab_size
    np.testing.assert_allclose(np.asarray(dst(toks).logits), np.asarray(src(toks).logits), rtol=1e-5, atol=1e-5)
