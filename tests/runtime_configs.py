"""RuntimeConfigs for runtime tests: tiny byte-level models on the builtin corpus, in a temp dir.

Written out field by field (the compiler's resolver is not involved), so a runtime test fails only
for runtime reasons.
"""

from __future__ import annotations

from pathlib import Path

from distillc.runtime.config import (
    DataConfig, LossConfig, MeshConfig, ModelArch, OptimizerConfig, OutputConfig, RuntimeConfig,
    Schedule, SideConfig, TrainConfig, objective_of,
)


def arch(name: str, *, layers: int, d: int, heads: int, mlp: int) -> ModelArch:
    return ModelArch(name=name, family="tiny", tokenizer="byte", vocab_size=256, num_layers=layers,
                     emb_dim=d, num_heads=heads, num_kv_heads=heads, head_dim=d // heads, mlp_dim=mlp)


TEACHER = arch("tiny-teacher", layers=2, d=128, heads=4, mlp=512)  # the catalog's quickstart shapes
STUDENT = arch("tiny-student", layers=2, d=64, heads=2, mlp=256)
MICRO = arch("micro", layers=2, d=32, heads=2, mlp=64)  # for fast mechanics tests


def side(role: str, a: ModelArch, *, checkpoint: str | None = None, seed: int = 0,
         weight_dtype: str = "float32") -> SideConfig:
    return SideConfig(role=role, arch=a, checkpoint=checkpoint, weight_dtype=weight_dtype,
                      activation_dtype="float32", remat="none", init_seed=seed)


def const(v: float, steps: int) -> Schedule:
    return Schedule(kind="constant", start=v, end=v, max_steps=steps)


def make_config(
    run_dir: Path | str,
    *,
    name: str = "test",
    teacher: ModelArch = MICRO,
    student: ModelArch = MICRO,
    teacher_checkpoint: str | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    steps: int = 8,
    seq_len: int = 32,
    batch: int = 8,
    lr: float = 3e-3,
    warmup: int = 2,
    checkpoint_every: int = 4,
    log_every: int = 1,
    seed: int = 0,
    shuffle_seed: int = 0,
    mesh: tuple[int, int, int] = (1, 1, 1),
    eval_batches: int = 2,
    eval_every: int = 0,
    packing: bool = True,
) -> RuntimeConfig:
    run_dir = Path(run_dir)
    loss = LossConfig(alpha=const(alpha, steps), temperature=const(temperature, steps), beta=const(0.0, steps),
                      feature_loss="cosine", compare_vocab=min(teacher.shared_vocab, student.shared_vocab))
    return RuntimeConfig(
        name=name, mode="online", stage="train", scan_layers=True, enable_nnx=True,
        objective=objective_of("online", loss),  # as the compiler decides it
        teacher=side("teacher", teacher, checkpoint=teacher_checkpoint, seed=seed + 1),
        student=side("student", student, seed=seed),
        loss=loss,
        data=DataConfig(source="builtin:pydoc_topics", tokenizer="byte", seq_len=seq_len,
                        global_batch_size=batch, eval_fraction=0.1, packing=packing, shuffle_seed=shuffle_seed),
        optimizer=OptimizerConfig(name="adamw", learning_rate=lr, warmup_steps=warmup, decay="cosine",
                                  end_learning_rate=0.0, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                                  grad_clip=1.0),
        train=TrainConfig(steps=steps, checkpoint_every=checkpoint_every, log_every=log_every,
                          eval_every=eval_every, eval_batches=eval_batches, seed=seed, max_checkpoints=3),
        mesh=MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]),
        output=OutputConfig(run_dir=str(run_dir), checkpoint_dir=str(run_dir / "checkpoints"),
                            tensorboard_dir=str(run_dir / "tensorboard"),
                            metrics_file=str(run_dir / "metrics.jsonl")),
    )
