"""--target maxtext: the plan as a MaxText distillation config, for a MaxText version the spec pins.

The rendered YAML (templates/maxtext.yml.j2) follows MaxText's
src/maxtext/configs/post_train/distillation.yml and puts everything in the file: `train_distill`
runs with only the file on its command line, because MaxText builds the teacher from the YAML +
teacher_overrides alone (CLI overrides reach only the student).

Where each key goes, and why:
  * top level: what both sides and the input pipeline share (data, tokenizer, batch shape,
    steps, checkpointing, mesh, scan_layers/enable_nnx, the distill_* loss keys, offline_data_dir).
    The trainer requires the batch shape there;
  * <side>_overrides: the side's model (model_name, base_num_decoder_layers for a pruned student,
    load_parameters_path), its dtypes, remat policy and init seed, and the student's optimizer.
    MaxText merges a model's configs/models/<name>.yml over the top level, so a value that must
    win over a model file goes into the overrides, with override_model_config: true (without it,
    MaxText rejects an override that differs from the model file, e.g. a pruned depth).

What MaxText cannot express is a diagnostic (DC42x, rules/maxtext.py) for this target, never an approximation:
schedule tables (DC421), layer pairs that are not (i, i) (DC422), models outside the pinned
version's configs/models (DC423), different vocabulary sizes (DC424), data and tokenizers its
loaders cannot read (DC425, DC426), learning-rate decays other than cosine (DC427), offline losses
other than its renormalized top-k (DC428), a mesh that does not split over the slices (DC430).
Warnings say where the MaxText run differs from the distillc one: no held-out evaluation when the
spec asks for it (DC429; a note, DC432, when the eval_fraction is distillc's default), a data
directory read as its .jsonl files (DC431).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from distillc.compiler.catalog import load_catalog
from distillc.compiler.diagnostics import KeyPath
from distillc.compiler.resolve import Plan
from distillc.runtime.config import RuntimeConfig, Schedule, SideConfig

TRAIN_MODULE = "maxtext.trainers.post_train.distillation.train_distill"
TOPK_MODULE = "maxtext.trainers.post_train.distillation.save_top_k_teacher_logits"
CONFIG_FILE = "maxtext.yml"

# MaxText's configs/models/*.yml by release (git tags maxtext-v0.2.x), as added release by release.
_MODELS_V020 = frozenset(
    "deepseek-custom deepseek2-16b deepseek2-236b deepseek3-671b deepseek3-671b-2dfsdp deepseek3-test "
    "deepseek3-tiny deepseek3.2-671b gemma-2b gemma-7b gemma2-27b gemma2-2b gemma2-9b gemma3-12b gemma3-27b "
    "gemma3-4b gpt-oss-120b gpt-oss-20b gpt3-175b gpt3-22b gpt3-52k gpt3-6b kimi-k2-1t llama2-13b llama2-70b "
    "llama2-7b llama3-405b llama3-70b llama3-8b llama3.1-405b llama3.1-70b llama3.1-8b llama3.3-70b "
    "llama4-17b-128e llama4-17b-16e mistral-7b mixtral-8x22b mixtral-8x7b olmo3-32b olmo3-7b olmo3-7b-pt "
    "qwen3-0.6b qwen3-14b qwen3-235b-a22b qwen3-30b-a3b qwen3-32b qwen3-480b-a35b qwen3-4b "
    "qwen3-4b-thinking-2507 qwen3-8b qwen3-next-80b-a3b qwen3-omni-30b-a3b".split()
)
_MODELS_V021 = _MODELS_V020 | frozenset(
    "qwen2.5-14b qwen2.5-7b qwen3-1.7b qwen3-1.7b-base qwen3-14b-base qwen3-30b-a3b-base qwen3-4b-base "
    "qwen3-8b-base".split()
)
_MODELS_V022 = _MODELS_V021 | frozenset(
    "deepseek3-671b-batchsplit gemma4-26b gemma4-31b qwen2.5-1.5b qwen3-custom-30b-a3b qwen3.5-397b-a17b".split()
)
_MODELS_V023 = (_MODELS_V022 - {"deepseek3-671b-2dfsdp"}) | frozenset("gemma4-e2b gemma4-e4b qwen3.5-35b-a3b".split())
_MODELS_V024 = _MODELS_V023 | frozenset(
    "deepseek3-671b-2dfsdp deepseek4-284b deepseek4-tiny envy-switch-base envy-switch-large envy-switch-xxl "
    "envy-test qwen3-vl-2b qwen3-vl-30b-a3b qwen3-vl-4b".split()
)


@dataclass(frozen=True)
class MaxTextVersion:
    """What one MaxText release's distillation trainer reads (configs/types.py, class Distillation)."""

    tag: str
    schedules: bool  # distill_{alpha,temperature,beta}_{end,schedule} (added in v0.2.2)
    feature_loss_type: bool  # distill_feature_loss_type (v0.2.2)
    offline: bool  # offline_data_dir and save_top_k_teacher_logits (v0.2.1)
    models: frozenset[str]


VERSIONS: dict[str, MaxTextVersion] = {
    "v0.2.0": MaxTextVersion("maxtext-v0.2.0", False, False, False, _MODELS_V020),
    "v0.2.1": MaxTextVersion("maxtext-v0.2.1", False, False, True, _MODELS_V021),
    "v0.2.2": MaxTextVersion("maxtext-v0.2.2", True, True, True, _MODELS_V022),
    "v0.2.3": MaxTextVersion("maxtext-v0.2.3", True, True, True, _MODELS_V023),
    "v0.2.4": MaxTextVersion("maxtext-v0.2.4", True, True, True, _MODELS_V024),
}


def version_of(pinned: str) -> Optional[MaxTextVersion]:
    """'v0.2.4', '0.2.4' and the git tag 'maxtext-v0.2.4' name the same release."""
    v = pinned.strip().removeprefix("maxtext-")
    return VERSIONS.get(v if v.startswith("v") else f"v{v}")


# ---------------------------------------------------------------- value mappings


def data_keys(source: str) -> Optional[dict[str, Any]]:
    """MaxText input-pipeline keys that read `data.source` as the runtime does, or None."""
    low = source.lower()
    if low.endswith(".jsonl"):  # one document per line, its "text" field: HF's json loader
        return {"dataset_type": "hf", "hf_path": "json", "hf_train_files": source, "train_data_columns": ["text"]}
    for marker, kind in (("arrayrecord", "arrayrecord"), ("array_record", "arrayrecord"), (".parquet", "parquet"), (".tfrecord", "tfrecord")):
        if marker in low:
            return {"dataset_type": "grain", "grain_train_files": source, "grain_file_type": kind}
    if is_directory(source):  # the runtime reads its .txt and .jsonl files; MaxText's json loader the .jsonl
        return {"dataset_type": "hf", "hf_path": "json", "hf_train_files": source.rstrip("/") + "/*.jsonl",
                "train_data_columns": ["text"]}
    return None


def is_directory(source: str) -> bool:
    """A source the runtime reads as a directory: a trailing '/', or a last component without a
    file extension (a file the runtime reads is .txt or .jsonl)."""
    if source.startswith("builtin:"):
        return False
    last = source.rstrip("/").rsplit("/", 1)[-1]
    return source.endswith("/") or "." not in last


def tokenizer_keys(tokenizer: str) -> Optional[dict[str, str]]:
    if tokenizer == "byte":
        return None
    if tokenizer.endswith(".model"):
        return {"tokenizer_type": "sentencepiece", "tokenizer_path": tokenizer}
    if tokenizer.endswith(".tiktoken"):
        return {"tokenizer_type": "tiktoken", "tokenizer_path": tokenizer}
    if tokenizer.endswith("tokenizer.json"):  # AutoTokenizer loads the directory holding it
        parent = tokenizer[: -len("tokenizer.json")].rstrip("/") or "."
        return {"tokenizer_type": "huggingface", "tokenizer_path": parent}
    return {"tokenizer_type": "huggingface", "tokenizer_path": tokenizer}  # a Hugging Face hub id


def warmup_fraction(warmup_steps: int, steps: int) -> float:
    """The warmup_steps_fraction f with int(f * steps) == warmup_steps, as MaxText computes it."""
    f = warmup_steps / steps
    while int(f * steps) < warmup_steps:
        f = math.nextafter(f, 1.0)
    return f


def _schedule_keys(name: str, s: Schedule, version: MaxTextVersion) -> dict[str, Any]:
    out: dict[str, Any] = {f"distill_{name}": s.start}
    if version.schedules:
        ramp = s.kind in ("linear", "cosine")
        out[f"distill_{name}_end"] = s.end if ramp else None
        out[f"distill_{name}_schedule"] = s.kind if ramp else "constant"
    return out


def _side_keys(side: SideConfig, catalog_layers: Optional[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": side.arch.name}
    if catalog_layers is not None and side.arch.num_layers != catalog_layers:
        out["base_num_decoder_layers"] = side.arch.num_layers
    out["override_model_config"] = True
    if side.checkpoint:
        out["load_parameters_path"] = side.checkpoint
    out.update(
        weight_dtype=side.weight_dtype,
        dtype=side.activation_dtype,
        remat_policy=side.remat,
        init_weights_seed=side.init_seed,
    )
    out.update(side.extra)  # overrides.maxtext: the user's own keys, for this side only
    return out


def config_sections(plan: Plan, version: MaxTextVersion) -> dict[str, Any]:
    """The values of templates/maxtext.yml.j2, grouped as the file is. Assumes the DC42x rules passed."""
    cfg: RuntimeConfig = plan.train
    catalog = load_catalog()
    opt, train, data = cfg.optimizer, cfg.train, cfg.data

    def catalog_layers(side: SideConfig) -> Optional[int]:
        arch = catalog.models.get(side.arch.name)
        return arch.num_layers if arch is not None else None

    student = _side_keys(cfg.student, catalog_layers(cfg.student))
    student.update(
        opt_type="adamw",
        learning_rate=opt.learning_rate,
        warmup_steps_fraction=warmup_fraction(opt.warmup_steps, train.steps),
        learning_rate_final_fraction=opt.end_learning_rate / opt.learning_rate,
        adam_b1=opt.b1,
        adam_b2=opt.b2,
        adam_eps=opt.eps,
        adam_weight_decay=opt.weight_decay,
        gradient_clipping_threshold=opt.grad_clip,
    )
    loss: dict[str, Any] = {}
    for name in ("alpha", "temperature", "beta"):
        loss.update(_schedule_keys(name, getattr(cfg.loss, name), version))
    if version.feature_loss_type:
        loss["distill_feature_loss_type"] = cfg.loss.feature_loss
    loss["distill_layer_indices"] = [p.student for p in cfg.loss.layer_pairs] if cfg.loss.layer_pairs else None
    pdb = plan.mesh.per_device_batch
    mesh = plan.mesh
    split = mesh.dcn_split()
    assert split is not None, "DC430 reports meshes that do not split over the slices"
    dcn_data, dcn_fsdp = split
    return {
        "run": {"run_name": cfg.name, "base_output_directory": _output_base(cfg)},
        "student_overrides": student,
        "teacher_overrides": _side_keys(cfg.teacher, catalog_layers(cfg.teacher)),
        "loss": loss,
        "offline": {"offline_data_dir": cfg.offline.data_dir} if cfg.offline is not None else {},
        "model": {"scan_layers": cfg.scan_layers, "enable_nnx": cfg.enable_nnx},
        "data": {
            **(data_keys(data.source) or {}),
            **(tokenizer_keys(data.tokenizer) or {}),
            "max_target_length": data.seq_len,
            "packing": data.packing,
            "data_shuffle_seed": data.shuffle_seed,
            "per_device_batch_size": pdb.numerator if pdb.denominator == 1 else float(pdb),
            "gradient_accumulation_steps": 1,
        },
        "loop": {
            "steps": train.steps,
            "log_period": train.log_every,
            "enable_checkpointing": True,
            "checkpoint_period": train.checkpoint_every,
            "max_num_checkpoints_to_keep": train.max_checkpoints,
            "save_checkpoint_on_completion": True,
            "eval_interval": -1,
        },
        "mesh": {
            "ici_data_parallelism": mesh.data // dcn_data,
            "ici_fsdp_parallelism": mesh.fsdp // dcn_fsdp,
            "ici_tensor_parallelism": mesh.tensor,
            "dcn_data_parallelism": dcn_data,
            "dcn_fsdp_parallelism": dcn_fsdp,
            "dcn_tensor_parallelism": 1,
        },
    }


def _output_base(cfg: RuntimeConfig) -> str:
    """MaxText writes to <base_output_directory>/<run_name>/: the plan's run_dir minus the name."""
    run_dir = cfg.output.run_dir
    suffix = "/" + cfg.name
    return run_dir[: -len(suffix)] if run_dir.endswith(suffix) else run_dir


def stage_command(stage: str, config_path: str, cfg: RuntimeConfig) -> list[tuple[str, Optional[KeyPath]]]:
    """The words of one stage's command; each value word carries the spec key it came from (for
    DC406 when it cannot be quoted into xpk's --command), fixed words carry None."""
    if stage == "save_topk":
        assert cfg.offline is not None
        where = "--gcs_upload_path" if cfg.offline.data_dir.startswith("gs://") else "--local_tmp_dir"
        return [
            ("python3", None), ("-m", None), (TOPK_MODULE, None), (config_path, None),
            (f"--top_k={cfg.offline.top_k}", None),
            (f"{where}={cfg.offline.data_dir}", ("offline", "data_dir")),
        ]
    return [("python3", None), ("-m", None), (TRAIN_MODULE, None), (config_path, None)]
