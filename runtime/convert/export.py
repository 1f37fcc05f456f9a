"""`distillc export SOURCE --to hf OUT`: parameters out as a Hugging Face directory that
transformers' `from_pretrained` loads (safetensors shards of at most --max-shard-size with
model.safetensors.index.json, config.json, generation_config.json, and the tokenizer files: those
beside a Hugging Face SOURCE, or a run's data.tokenizer file), written atomically: into a
temporary sibling directory renamed onto OUT when complete, so OUT is either absent or whole.

SOURCE is a distillc run directory (its student: the latest step, or --step N), a Hugging Face
directory (a dtype conversion or a re-shard), a MaxText checkpoint or a distillc parameter
checkpoint (for these two `model` names the architecture). `--to maxtext` is convert/maxtext.py.

Several processes (a multi-host job joined by jax.distributed, `distributed.initialize`): every
process loads its slices and takes part in each gather (`process_allgather`, a collective, in the
same tensor order everywhere), but only process 0 writes: it fills the temporary directory, all
processes meet at a barrier once every tensor is gathered, and process 0 renames it onto OUT. A
process that fails before the barrier leaves no OUT (process 0's temporary goes with its error).

Memory: the source is loaded sharded over the host's devices (`export_mesh`), then each tensor in
turn is gathered to host memory (`gather`), converted, written into the shard file being written,
and dropped, its device copy deleted as soon as it is gathered. Host memory holds at most one
gathered tensor (and its converted copy) beyond what the devices hold; on CPU the devices are host
memory, so there the peak is the loaded model plus about one tensor, falling as tensors are written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distillc.runtime.arch import ModelArch
from distillc.runtime.config import MeshConfig, RuntimeConfig, SideConfig
from distillc.runtime.convert.hf import (
    INDEX, HFCheckpoint, arch_from_hf_config, config_differences, hf_names, hf_shape, is_hf_checkpoint, to_hf,
)
from distillc.runtime.convert.maxtext import is_maxtext_checkpoint
from distillc.runtime.convert.gguf_meta import GGUFError, arch_from_gguf, is_gguf_path, local_copy, read_header
from distillc.runtime.train.checkpoints import CheckpointError

_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_NP_DTYPES: dict[str, Any] = {"float32": np.float32, "bfloat16": jnp.bfloat16, "float16": np.float16}
_MODEL_TYPES = {"mistral": ("mistral", "MistralForCausalLM"), "qwen2.5": ("qwen2", "Qwen2ForCausalLM"),
                "qwen3": ("qwen3", "Qwen3ForCausalLM"), "gemma": ("gemma", "GemmaForCausalLM"),
                "gemma2": ("gemma2", "Gemma2ForCausalLM"), "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}


# What transformers' AutoTokenizer reads from a model directory
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json")


@dataclass(frozen=True)
class Exported:
    out: str
    files: tuple[str, ...]
    tokenizer: tuple[str, ...]  # tokenizer files copied beside the weights
    tensors: int
    bytes: int
    arch: ModelArch
    wrote: bool = True  # this process wrote OUT (process 0; the others only took part in the gathers)


def is_writer() -> bool:
    """Whether this process writes an export's files: process 0 of the job (the only one alone)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process of a multi-process job reaches `name` before any goes on (nothing alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def parse_size(text: str) -> int:
    """'5GB', '500MB', '100KB' or a byte count (decimal units, as transformers' max_shard_size)."""
    t = text.strip().upper()
    for suffix, mult in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if t.endswith(suffix) and t[: -len(suffix)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(suffix)]) * mult)
    if t.isdigit():
        return int(t)
    raise CheckpointError(f"--max-shard-size {text!r} is not a size such as 5GB, 500MB or 1000000")


def hf_config(arch: ModelArch, dtype: str) -> dict:
    """The transformers config.json of `arch` (read back by convert/hf.hf_arch_fields to the same
    fields). Families other than mistral/qwen2.5/qwen3 are written as Llama."""
    model_type, cls = _MODEL_TYPES.get(arch.family, ("llama", "LlamaForCausalLM"))
    if arch.family in ("inline", "tiny"):  # a hand-described architecture: the model type that has its features
        model_type, cls = ("qwen3", "Qwen3ForCausalLM") if arch.qk_norm else ("qwen2", "Qwen2ForCausalLM") \
            if arch.attention_bias else ("llama", "LlamaForCausalLM")
    config: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.emb_dim,
        "intermediate_size": arch.mlp_dim,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "hidden_act": "gelu_pytorch_tanh" if arch.activation == "gelu_tanh" else "silu",
        "rms_norm_eps": arch.norm_eps,
        "rope_theta": arch.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": arch.tie_embeddings,
        "max_position_embeddings": arch.max_seq_len or 4096,
        "dtype": dtype,  # transformers >= 5
        "torch_dtype": dtype,  # transformers 4
    }
    if arch.rope_scaling is not None:
        s = arch.rope_scaling
        config["rope_scaling"] = {"rope_type": s.kind, "factor": s.factor} if s.kind == "linear" else {
            "rope_type": s.kind, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position}
    if model_type == "llama":
        config["attention_bias"] = False
        config["mlp_bias"] = False
    if model_type in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["attention_bias"] = arch.attention_bias
    if model_type == "mistral":
        config["sliding_window"] = None
    if model_type in ("gemma", "gemma2", "gemma3_text"):
        config["hidden_activation"] = config["hidden_act"]  # what transformers' Gemma configs read
    if model_type in ("gemma2", "gemma3_text"):
        config.update(_sandwich_config(arch))
    return config


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _sandwich_config(arch: ModelArch) -> dict[str, Any]:
    """gemma2 / gemma3_text's own config.json fields: query scaling, soft-caps, the sliding window and
    the layer pattern (layer_types, which transformers 4.53+ and 5 read), and gemma3's two RoPE bases
    in the keys both transformers 4 and 5 accept (rope_theta and rope_scaling for the global layers,
    rope_local_base_freq for the local ones)."""
    local = arch.local_layers()
    out: dict[str, Any] = {
        # an int where it is one: transformers' strict Gemma configs type it int
        "query_pre_attn_scalar": _int_if_whole(arch.query_pre_attn_scalar or arch.head_dim),
        "attn_logit_softcapping": arch.attn_logit_softcap,
        "final_logit_softcapping": arch.final_logit_softcap,
        "sliding_window": arch.sliding_window,
        "layer_types": ["sliding_attention" if x else "full_attention" for x in local],
        "attention_bias": False,
    }
    if arch.family == "gemma3":
        out["rope_local_base_freq"] = arch.rope_local_theta or arch.rope_theta
        if arch.local_global_ratio is not None:
            a, b = (int(x) for x in arch.local_global_ratio.split(":"))
            out["sliding_window_pattern"] = a + b
    return out


def _side(arch: ModelArch, checkpoint: str, fmt: str) -> SideConfig:
    return SideConfig(role="student", arch=arch, checkpoint=checkpoint, format=fmt,
                      weight_dtype="float32", activation_dtype="float32", remat="none", init_seed=0)


def tokenizer_sources(source: str) -> list[Path]:
    """The tokenizer files to ship with an export: those beside a Hugging Face SOURCE, or a run's
    `data.tokenizer` when it is a file (an HF tokenizer.json, a sentencepiece .model, or a .gguf
    whose tokenizer is written out as tokenizer.json); none for the byte tokenizer."""
    path = Path(source)
    if "://" in source:
        return []
    if (path / "config.json").exists():
        return [path / n for n in TOKENIZER_FILES if (path / n).is_file()]
    manifest = path / "manifest.json"
    if manifest.exists():
        tok = str(json.loads(manifest.read_text())["config"]["data"]["tokenizer"])
        if tok != "byte" and "://" not in tok and Path(tok).is_file():
            return [Path(tok)]
    return []


def resolve_source(source: str, step: Optional[int], model: Optional[ModelArch]) -> SideConfig:
    """What SOURCE holds, as a side to load: a run's student, a Hugging Face directory, a GGUF file,
    a MaxText checkpoint of `model` (.../<step>/items, a step or a checkpoint directory), or a
    parameter checkpoint of `model`."""
    path = Path(source)
    if "://" not in source and not path.exists():
        raise CheckpointError(f"{source!r} does not exist")
    if is_hf_checkpoint(source):
        arch = model or arch_from_hf_config(HFCheckpoint(source).config, path.name or "model")
        return _side(arch, source, "hf")
    if is_gguf_path(source):  # llama.cpp's GGUF: the architecture from its header (convert/gguf_meta.py)
        try:
            arch = model or arch_from_gguf(read_header(local_copy(source)), path.stem or "model")
        except GGUFError as e:
            raise CheckpointError(str(e)) from e
        return _side(arch, source, "gguf")
    if is_maxtext_checkpoint(source):  # MaxText records no architecture: --model names it
        if model is None:
            raise CheckpointError(f"{source!r} is a MaxText checkpoint, which records no architecture: name it "
                                  "with --model (a catalog model, e.g. llama3.1-8b)")
        return _side(model, source, "maxtext")
    manifest = path / "manifest.json"
    if manifest.exists():
        try:
            cfg = RuntimeConfig.model_validate(json.loads(manifest.read_text())["config"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{manifest}: not a distillc run manifest ({e})") from e
        ckpt = cfg.output.checkpoint_dir if step is None else f"{cfg.output.checkpoint_dir}/{step}"
        if step is not None and not Path(ckpt).exists():
            raise CheckpointError(f"{source!r} has no saved step {step} (looked in {ckpt})")
        return _side(model or cfg.student.arch, ckpt, "distillc")
    if model is None:
        raise CheckpointError(f"{source!r} is neither a run directory nor a Hugging Face directory: name its "
                              "architecture with --model")
    return _side(model, source, "distillc")


def export_mesh(arch: ModelArch) -> Any:
    """The mesh an export loads its source onto: fsdp over as many of this host's devices as divide
    the model dimension (all of them for real models; one where there is one), so no single device
    has to hold the whole model and each tensor is gathered only when its turn comes."""
    from distillc.runtime.train import distributed

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    n = max(k for k in range(1, len(devices) + 1) if len(devices) % k == 0 and arch.emb_dim % k == 0)
    return distributed.make_mesh(MeshConfig(data=1, fsdp=n, tensor=1), devices[:n])


def gather(x: jax.Array) -> np.ndarray:
    """One (possibly sharded) parameter as a host numpy array: from every process's devices
    (`process_allgather`) when the mesh spans several, else filled shard by shard into one array
    allocated up front (jax.device_get would copy every shard to host, then assemble them into a
    second copy: two tensors of host memory where one is needed)."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    shards = [s for s in x.addressable_shards if s.replica_id == 0]
    if len(shards) == 1 and shards[0].data.shape == x.shape:
        return np.asarray(shards[0].data)
    out = np.empty(x.shape, dtype=x.dtype)
    for s in shards:
        out[s.index] = np.asarray(s.data)  # each shard's host view (no copy on CPU) copied into place
    return out


def _write_safetensors(path: Optional[Path], tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                       dtype: str) -> None:
    """A safetensors file written tensor by tensor: the header from the shapes, then each tensor
    produced (gathered and converted) only when its turn comes, written, and dropped. With no `path`
    (a process that does not write) each tensor is still produced, in the same order: its gather is
    a collective every process takes part in."""
    if path is None:
        for _, _, produce in tensors:
            produce()
        return
    itemsize = np.dtype(_NP_DTYPES[dtype]).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data, as the reference writer does
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape, produce in tensors:
            arr = np.ascontiguousarray(produce())
            if arr.shape != tuple(shape) or arr.dtype != np.dtype(_NP_DTYPES[dtype]):
                raise ValueError(f"{name}: produced {arr.shape} {arr.dtype}, header says {shape} {dtype}")
            f.write(arr.reshape(-1).view(np.uint8).data)  # the bytes, no copy
            del arr


def export_hf(source: str, out: str, *, step: Optional[int] = None, dtype: str = "bfloat16",
              max_shard_size: str = "5GB", model: Optional[ModelArch] = None) -> Exported:
    """Writes SOURCE's parameters to OUT as a Hugging Face directory (see the module docstring)."""
    from distillc.runtime.train.params import load_params

    if dtype not in _ST_DTYPES:
        raise CheckpointError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    limit = parse_size(max_shard_size)
    target = Path(out)
    if target.exists():
        raise CheckpointError(f"{out!r} exists: export writes a new directory (remove it or choose another)")
    side = resolve_source(source, step, model)
    config = hf_config(side.arch, dtype)
    if why := config_differences(config, side.arch):  # e.g. an inline arch with conventions no model type has
        raise CheckpointError(f"{side.arch.name} has no transformers config.json that computes it (written as "
                              f"{config['model_type']}, it would read back with " + "; ".join(why) + ")")
    _, params = load_params(side, False, export_mesh(side.arch))  # per-layer layout: one tensor per HF name
    jax.block_until_ready(params)  # every slice read before the first gather (in flight, they add to the peak)
    pure = nnx.to_pure_dict(params)
    del params  # `pure` holds the only references: each device copy goes when its tensor is gathered

    np_dtype = _NP_DTYPES[dtype]

    def node(path: tuple) -> Any:
        n: Any = pure
        for k in path:
            n = n[k]
        return n

    def leaf(path: tuple) -> np.ndarray:
        """The gathered tensor, its device copy dropped from the tree (each leaf has one HF name), so
        it is freed once gathered (or, where the host array aliases it on CPU, with that array)."""
        return gather(node(path[:-1]).pop(path[-1]))

    def leaf_shape(path: tuple) -> tuple[int, ...]:
        return tuple(node(path).shape)

    def converted(path: tuple, kind: str) -> Callable[[], np.ndarray]:
        return lambda: to_hf(kind, leaf(path)).astype(np_dtype, copy=False)

    writer = is_writer()  # process 0 writes; the others take part in the gathers only
    tmp: Optional[Path] = None
    if writer:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        itemsize = np.dtype(np_dtype).itemsize
        shards: list[list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]] = [[]]
        size = total = 0
        for our, _, name, kind in sorted(hf_names(pure, side.arch.num_layers), key=lambda r: _order(r[2])):
            shape = hf_shape(kind, tuple(leaf_shape(our)))
            nbytes = math.prod(shape) * itemsize
            if shards[-1] and size + nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append((name, shape, converted(our, kind)))
            size += nbytes
            total += nbytes
        files = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        for fname, shard in zip(files, shards):
            _write_safetensors(tmp / fname if tmp else None, shard, dtype)
        copied: list[str] = []
        if tmp is not None:
            if len(shards) > 1:
                weight_map = {name: fname for fname, shard in zip(files, shards) for name, _, _ in shard}
                (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2) + "\n")
            copied = _write_side_files(tmp, config, source)
        barrier("distillc-export-hf-written")  # every process's gathers done: OUT is complete
        if tmp is not None:
            os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier("distillc-export-hf-renamed")  # no process returns before OUT exists
    return Exported(out, tuple(files), tuple(copied), sum(len(s) for s in shards), total, side.arch, writer)


def _write_side_files(tmp: Path, config: dict, source: str) -> list[str]:
    """config.json, generation_config.json and the tokenizer files into `tmp`; returns the
    tokenizer files' names."""
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps({"_from_model_config": True}, indent=2) + "\n")
    copied = []
    for f in tokenizer_sources(source):
        if f.suffix.lower() == ".gguf":  # the tokenizer in a GGUF file's metadata, as tokenizer.json
            from distillc.runtime.convert.gguf_tokenizer import write_tokenizer_json

            write_tokenizer_json(str(f), str(tmp / "tokenizer.json"))
            copied.append("tokenizer.json")
            continue
        name = "tokenizer.model" if f.suffix == ".model" else "tokenizer.json" if f.suffix == ".json" and \
            f.name not in TOKENIZER_FILES else f.name
        shutil.copyfile(f, tmp / name)
        copied.append(name)
    return copied


def _order(name: str) -> tuple:
    """transformers' order: embeddings, layers by number, final norm, head."""
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers":
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)
