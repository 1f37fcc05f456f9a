"""The models' parameters on the mesh: abstract shapes and shardings, random init, the frozen
teacher, the student's start (a checkpoint, the teacher minus pruned layers, or a random init).

Nothing here allocates a full model on one device: shapes come from `nnx.eval_shape`, shardings
from the logical axis names (models/sharding.py), and weights are created (or restored) directly
with their shardings.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from distillc.runtime.config import SideConfig
from distillc.runtime.convert.gguf import is_gguf_checkpoint, load_gguf_params
from distillc.runtime.convert.hf import is_hf_checkpoint, load_hf_params
from distillc.runtime.convert.layout import keep_layers, restack_layers, stored_scan_layers
from distillc.runtime.convert.maxtext import is_maxtext_checkpoint, load_maxtext_params
from distillc.runtime.convert.shipped_tokenizer import tokenizer_disagreement
from distillc.runtime.models.sharding import partition_specs
from distillc.runtime.models.transformer import build_model
from distillc.runtime.train import distributed
from distillc.runtime.train.checkpoints import CheckpointError, restore_params, stored_tree


def split(model: nnx.Module) -> tuple[Any, Any, Any]:
    """(graphdef, Param state, the rest): the optimizer sees only the Params."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # nnx types the result as variadic
    return graphdef, params, rest


def model_shardings(side: SideConfig, scan_layers: bool, mesh) -> tuple[Any, Any, Any]:
    """(graphdef, abstract params, param shardings) without allocating the weights."""
    abs_model = nnx.eval_shape(lambda: build_model(side, scan_layers=scan_layers))
    graphdef, abs_params, abs_rest = split(abs_model)
    if jax.tree.leaves(abs_rest):
        raise ValueError(f"{side.arch.name}: the model has non-parameter state, which this trainer does not carry")
    specs = partition_specs(abs_model)  # the whole state is Params (checked above)
    shardings = distributed.state_shardings(abs_params, specs, mesh)
    abs_params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_params, shardings)
    return graphdef, abs_params, shardings


def init_params(side: SideConfig, scan_layers: bool, mesh) -> tuple[Any, Any]:
    """Random-initialized params, created directly with their shardings (jit out_shardings)."""
    graphdef, abs_params, shardings = model_shardings(side, scan_layers, mesh)

    def init():
        return split(build_model(side, scan_layers=scan_layers))[1]

    return graphdef, jax.jit(init, out_shardings=shardings)()


def load_params(side: SideConfig, scan_layers: bool, mesh) -> tuple[Any, Any]:
    """One side's parameters: restored from side.checkpoint (cast to its weight dtype, onto this
    run's layer layout and shardings) in `side.format`, or the format detected (a directory with
    config.json and *.safetensors is a Hugging Face checkpoint, a .gguf file llama.cpp's GGUF, an
    Orbax tree holding params/params/decoder a MaxText one, anything else distillc's own); or
    randomly initialized from its init seed when no checkpoint is given. A missing or mismatched
    checkpoint is a CheckpointError (exit 2)."""
    if side.checkpoint is None:
        return init_params(side, scan_layers, mesh)
    graphdef, abs_params, shardings = model_shardings(side, scan_layers, mesh)
    fmt = side.format or ("gguf" if is_gguf_checkpoint(side.checkpoint)
                          else "hf" if is_hf_checkpoint(side.checkpoint)
                          else "maxtext" if is_maxtext_checkpoint(side.checkpoint) else "distillc")
    if fmt == "maxtext":  # restored onto device shards by Orbax, conventions undone (convert/maxtext.py)
        target = jax.tree.map(lambda x: x, abs_params)
        nnx.replace_by_pure_dict(target, load_maxtext_params(side.checkpoint, side.arch, nnx.to_pure_dict(abs_params),
                                                             scan_layers))
        return graphdef, target
    if fmt in ("hf", "gguf"):  # streamed: each device reads its own slices (convert/hf.py, convert/gguf.py)
        load = load_hf_params if fmt == "hf" else load_gguf_params
        target = jax.tree.map(lambda x: x, abs_params)
        nnx.replace_by_pure_dict(target, load(side.checkpoint, side.arch, nnx.to_pure_dict(abs_params)))
        return graphdef, target
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


def check_tokenizer(side: SideConfig, data_tokenizer: str) -> None:
    """A Hugging Face checkpoint's shipped tokenizer.json / tokenizer.model must be `data.tokenizer`
    (by sha256; 'byte' only for a byte-level model): validate checks local paths (DC185), this
    checks gs:// ones too before the side is loaded. A CheckpointError (exit 2) names both files."""
    if side.checkpoint is None:
        return
    if (side.format or ("hf" if is_hf_checkpoint(side.checkpoint) else None)) != "hf":
        return
    why = tokenizer_disagreement(side.role, side.checkpoint, data_tokenizer, side.arch.tokenizer, local_only=False)
    if why is not None:
        raise CheckpointError(f"{why}; point data.tokenizer at the checkpoint's tokenizer file, or the checkpoint at a "
                              "model trained with data.tokenizer")


def load_teacher(side: SideConfig, scan_layers: bool, mesh) -> tuple[Any, Any]:
    """The frozen teacher (read-only; the optimizer never sees it): see `load_params`."""
    return load_params(side, scan_layers, mesh)


def load_student(student: SideConfig, teacher: SideConfig, scan_layers: bool, mesh) -> tuple[Any, Any]:
    """The student's starting parameters: `student.checkpoint` when given (a warm start, or a pruned
    checkpoint, which must then have the pruned depth); else, with `student.pruned_layers`, the
    teacher's parameters (its checkpoint, or its random init) minus those layers, in the student's
    dtype; else a random init from the student's seed."""
    if student.checkpoint is not None or not student.pruned_layers:
        return load_params(student, scan_layers, mesh)
    keep = [i for i in range(teacher.arch.num_layers) if i not in set(student.pruned_layers)]
    if len(keep) != student.arch.num_layers:
        raise CheckpointError(
            f"student: the teacher ({teacher.arch.name}, {teacher.arch.num_layers} layers) minus pruned_layers "
            f"{list(student.pruned_layers)} has {len(keep)} layers, but the student has {student.arch.num_layers}")
    # the teacher read in the student's dtypes, so a float32 student never passes through bfloat16
    source = teacher.model_copy(update=dict(weight_dtype=student.weight_dtype, activation_dtype=student.activation_dtype))
    _, full = load_params(source, scan_layers, mesh)
    graphdef, abs_params, shardings = model_shardings(student, scan_layers, mesh)

    def prune(state):
        target = jax.tree.map(lambda x: x, abs_params)
        nnx.replace_by_pure_dict(target, keep_layers(nnx.to_pure_dict(state), keep, scan_layers))
        return target

    return graphdef, jax.jit(prune, out_shardings=shardings)(full)
