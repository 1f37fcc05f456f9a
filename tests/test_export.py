"""`distillc export SOURCE --to hf OUT`: import -> export reproduces the original tensors exactly
(float32) and config.json's fields; a run's student exports to a directory that loads back to the
same logits; mistakes are exit 2 with one line, and OUT is either whole or absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from distillc.runtime.convert.export import export_hf
from distillc.runtime.convert.hf import HFCheckpoint, hf_arch_fields
from distillc.runtime.train import distributed
from distillc.runtime.train.params import load_params
from distillc.runtime.train.rundir import write_manifest
from distillc.runtime.train.trainer import train

from tests.conftest import ROOT
from tests.runtime_configs import make_config
from tests.test_hf_models import FIXTURES, side

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["llama3.1", "qwen2.5", "qwen3", "gemma", "gemma2", "gemma3"])
def test_import_export_reproduces_the_tensors_and_config(tmp_path, family):
    out = tmp_path / "out"
    done = export_hf(str(FIXTURES / family), str(out), dtype="float32", max_shard_size="100KB")
    original, exported = HFCheckpoint(str(FIXTURES / family)), HFCheckpoint(str(out))
    assert len(done.files) > 1 and (out / "model.safetensors.index.json").exists()
    names = set(original.tensors) - ({"lm_head.weight"} if done.arch.tie_embeddings else set())
    assert set(exported.tensors) == names
    for name in names:
        a, b = original.tensor(name).read(), exported.tensor(name).read()
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert hf_arch_fields(exported.config) == hf_arch_fields(original.config)
    assert exported.config["model_type"] == original.config["model_type"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_a_gemma3_multimodal_checkpoint_exports_its_text_decoder(tmp_path):
    """--to hf of a Gemma3ForConditionalGeneration checkpoint writes the text decoder alone, as a
    gemma3_text (Gemma3ForCausalLM) checkpoint: the text tensors under model.*, no vision tower, the
    same architecture fields and transformers' logits."""
    from tests.test_hf_models import fixture_arch, forward, goldens, max_kl

    out = tmp_path / "out"
    export_hf(str(FIXTURES / "gemma3-mm"), str(out), dtype="float32")
    original, exported = HFCheckpoint(str(FIXTURES / "gemma3-mm")), HFCheckpoint(str(out))
    assert exported.config["model_type"] == "gemma3_text" and exported.config["architectures"] == ["Gemma3ForCausalLM"]
    text = {n.replace("language_model.model.", "model.", 1): n for n in original.tensors
            if n.startswith("language_model.model.")}
    assert set(exported.tensors) == set(text)
    for name, source in text.items():
        np.testing.assert_array_equal(exported.tensor(name).read(), original.tensor(source).read(), err_msg=name)
    assert hf_arch_fields(exported.config) == hf_arch_fields(original.config)
    tokens, golden = goldens("gemma3-mm")
    assert max_kl(golden, forward(fixture_arch("gemma3-mm"), str(out), True, tokens)) <= 1e-5


def test_an_arch_no_transformers_config_computes_is_refused(tmp_path):
    """A Llama-convention model with gemma2's sliding windows has no model type that computes it:
    the export says so instead of writing a config.json that drops the windows."""
    from distillc.runtime.convert.export import hf_config
    from distillc.runtime.train.checkpoints import CheckpointError
    from tests.test_hf_models import fixture_arch

    arch = fixture_arch("llama2").model_copy(update={"family": "inline", "attention": "local_global",
                                                     "local_global_ratio": "1:1", "sliding_window": 4})
    with pytest.raises(CheckpointError, match="no transformers config.json that computes it.*sliding_window"):
        export_hf(str(FIXTURES / "llama2"), str(tmp_path / "out"), model=arch)
    assert not (tmp_path / "out").exists()
    assert hf_config(fixture_arch("gemma2"), "float32")["layer_types"] == ["sliding_attention", "full_attention"] * 1 + [
        "sliding_attention"]


def test_tokenizer_files_travel_with_the_export(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "llama2", src)
    (src / "tokenizer.json").write_text('{"model": {}}')
    (src / "tokenizer_config.json").write_text("{}")
    done = export_hf(str(src), str(tmp_path / "out"))
    assert done.tokenizer == ("tokenizer.json", "tokenizer_config.json")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"model": {}}'


def test_bfloat16_export_is_the_rounded_tensors(tmp_path):
    export_hf(str(FIXTURES / "llama2"), str(tmp_path / "bf16"))
    exported = HFCheckpoint(str(tmp_path / "bf16"))
    a = HFCheckpoint(str(FIXTURES / "llama2")).tensor("model.norm.weight").read()
    b = exported.tensor("model.norm.weight").read()
    assert str(b.dtype) == "bfloat16" and exported.config["torch_dtype"] == "bfloat16"
    np.testing.assert_array_equal(b, a.astype(b.dtype))


def test_a_runs_student_exports_and_loads_back_to_the_same_logits(tmp_path):
    cfg = make_config(tmp_path / "run", alpha=0.0, steps=2, checkpoint_every=2)
    write_manifest(cfg, ["test"])  # as the runtime's entry point does
    result = train(cfg, console=False)
    out = tmp_path / "hf"
    export_hf(cfg.output.run_dir, str(out), dtype="float32")
    mesh = distributed.make_mesh(cfg.mesh)
    graphdef, params = load_params(side(cfg.student.arch, str(out)), True, mesh)
    tokens = jax.numpy.asarray(np.arange(32, dtype=np.int32).reshape(2, 16))
    ours = nnx.merge(graphdef, params)(tokens).logits
    trained = nnx.merge(graphdef, result.params)(tokens).logits
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(trained))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillc.compiler.cli", "export", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line_exit_2(tmp_path):
    p = _cli(str(tmp_path / "nothing"), str(tmp_path / "out"), "--to", "hf")
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    p = _cli(str(FIXTURES / "llama2"), str(tmp_path / "taken"), "--to", "hf")
    assert p.returncode == 2 and "exists" in p.stderr and "Traceback" not in p.stderr


def test_cli_exports(tmp_path):
    p = _cli(str(FIXTURES / "mistral"), str(tmp_path / "out"), "--to", "hf", "--dtype", "float32")
    assert p.returncode == 0, p.stderr
    assert "exported" in p.stdout and json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "mistral"


def _assert_same_exports(one: Path, other: Path) -> None:
    """one/hf and other/hf hold the same files byte for byte (more than config, index and one shard);
    one/mt and other/mt the same MaxText tensors, dtype and bits."""
    from tests.test_maxtext import _stored

    files = sorted(f.name for f in (one / "hf").iterdir())
    assert len(files) > 3 and files == sorted(f.name for f in (other / "hf").iterdir())
    for name in files:
        assert (one / "hf" / name).read_bytes() == (other / "hf" / name).read_bytes(), name
    a, b = _stored(one / "mt"), _stored(other / "mt")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def test_exports_from_a_sharded_load_are_the_one_device_files(tmp_path):
    """On 8 host devices the source loads fsdp-sharded and each tensor is gathered shard by shard
    (convert/export.py's gather): the files must be byte for byte the one-device export's (hf), and
    every MaxText tensor bit for bit (bfloat16: the casts run on the devices there)."""
    from tests.conftest import xla_env
    from tests.test_hf_models import fixture_arch
    from distillc.runtime.convert.maxtext import export_maxtext

    script = ("import sys; from distillc.runtime.convert.export import export_hf, export_mesh; "
              "from distillc.runtime.convert.maxtext import export_maxtext; from tests.test_hf_models import "
              "FIXTURES, fixture_arch; a = fixture_arch('qwen3'); assert export_mesh(a).devices.size == 8; "
              "export_hf(str(FIXTURES / 'llama3.1'), sys.argv[1] + '/hf', dtype='bfloat16', max_shard_size='20KB'); "
              "export_maxtext(str(FIXTURES / 'qwen3'), sys.argv[1] + '/mt', dtype='bfloat16', model=a)")
    (tmp_path / "eight").mkdir()
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path / "eight")], cwd=ROOT, env=xla_env(8),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    export_hf(str(FIXTURES / "llama3.1"), str(tmp_path / "hf"), dtype="bfloat16", max_shard_size="20KB")
    export_maxtext(str(FIXTURES / "qwen3"), str(tmp_path / "mt"), dtype="bfloat16", model=fixture_arch("qwen3"))
    _assert_same_exports(tmp_path, tmp_path / "eight")


TWO_PROCESS_EXPORT = """
import sys
from distillc.runtime.train import distributed
distributed.initialize()  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID: what `distillc export` reads
import jax
from distillc.runtime.convert.export import export_hf, export_mesh
from distillc.runtime.convert.maxtext import export_maxtext
from tests.test_hf_models import FIXTURES, fixture_arch
arch = fixture_arch("gemma3")
assert jax.process_count() == 2 and export_mesh(arch).devices.size == 2  # one mesh over both processes
hf = export_hf(str(FIXTURES / "llama3.1"), sys.argv[1] + "/hf", dtype="bfloat16", max_shard_size="20KB")
mt = export_maxtext(str(FIXTURES / "gemma3"), sys.argv[1] + "/mt", dtype="float32", model=arch)
print("WROTE", jax.process_index(), hf.wrote, mt.wrote)
"""


def test_a_two_process_export_is_the_one_process_export(tmp_path):
    """Two processes joined by jax.distributed (one CPU device each): the source loads sharded over
    both, every tensor is gathered across them (process_allgather), process 0 alone writes the hf
    files and renames OUT after the barrier; Orbax writes each process's MaxText shards, process 0
    renames. OUT equals the one-process export: the hf files byte for byte, the MaxText tensors bit
    for bit; no temporary is left."""
    import socket

    from tests.conftest import xla_env
    from tests.test_hf_models import fixture_arch
    from distillc.runtime.convert.maxtext import export_maxtext

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "two").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_EXPORT, str(tmp_path / "two")], cwd=ROOT,
                              env=xla_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                          JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "WROTE 0 True True" in outs[0][0] and "WROTE 1 False False" in outs[1][0]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["hf", "mt"]  # no temporary left
    export_hf(str(FIXTURES / "llama3.1"), str(tmp_path / "hf"), dtype="bfloat16", max_shard_size="20KB")
    export_maxtext(str(FIXTURES / "gemma3"), str(tmp_path / "mt"), dtype="float32", model=fixture_arch("gemma3"))
    items = tmp_path / "two" / "mt" / "0" / "items"
    assert (items / "ocdbt.process_0").is_dir() and (items / "ocdbt.process_1").is_dir()  # both wrote their shards
    _assert_same_exports(tmp_path, tmp_path / "two")
