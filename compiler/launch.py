"""`distillc plan` and `distillc launch`: check -> resolve -> render -> (write, print, execute).

compile_launch() does everything up to the artifacts and the command lists, as data; the CLI
prints them, writes them (render.write_atomic) and, with --execute, runs them (execute()). A
cluster entry (clusters.py) fixes the hardware: its accelerator and slice count replace the
spec's, with a note (DC400/DC401), and the rules run again for them, so the memory fit, batch
divisibility and mesh checks are for the machine the run gets.

How a workload finds its compiled config inside the container:
  * base_docker_image: xpk layers the build directory onto the image as /app (its --script-dir),
    and the command reads /app/<config>;
  * docker_image (used as is): the config travels in the environment variable
    DISTILLC_CONFIG_B64 (base64, so xpk and YAML carry it untouched), and the command decodes it
    to /tmp/<config> with Python's own base64 module before running.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from distillc import __version__
from distillc.compiler import clusters as clusters_mod
from distillc.compiler import maxtext, render, xpk
from distillc.compiler.check import Checked, check_loaded, shown
from distillc.compiler.diagnostics import Diagnostic, KeyPath, has_errors, sort_key
from distillc.compiler.loader import LoadError, Loaded, SourceMap, load_file
from distillc.compiler.parse import PartialSpec
from distillc.compiler.plan_check import PlanContext, check_plan
from distillc.compiler.registry import Target
from distillc.compiler.spec import Spec
from distillc.compiler.resolve import Plan, PlanError, Workload, resolve_checked

RUNTIME_MODULE = "distillc.runtime.main"
CONFIG_ENV = clusters_mod.CONFIG_ENV
SCRIPT_DIR_IN_IMAGE = "/app"  # where xpk puts --script-dir (core/docker_image.py: arcname app/...)
SAFE_SCRIPT_DIR = re.compile(r"[A-Za-z0-9._/+-]+")
INSTALL_XPK = "pip install 'distillc[xpk]'"


class UsageError(Exception):
    """A problem with the command line or its files (exit 2), not with the spec."""


@dataclass(frozen=True)
class Step:
    """One command of the launch: create a workload, or wait for one to complete."""

    name: str
    kind: Literal["create", "wait"]
    argv: tuple[str, ...]
    depends_on: tuple[str, ...]
    comment: str
    config_env_file: Optional[str] = None  # the artifact whose base64 is the CONFIG_ENV value

    def shell_words(self, directory: str) -> list[str]:
        """The argv as bash words, with the config's base64 computed from its file in `directory`
        (the same bytes, without a multi-kilobyte literal on the command line)."""
        words = []
        prefix = f"--env={CONFIG_ENV}="
        for a in self.argv:
            if self.config_env_file is not None and a.startswith(prefix):
                path = xpk.shell_word(f"{directory}/{self.config_env_file}" if directory != "." else self.config_env_file)
                words.append(f'{prefix}"$(python3 -m base64 -e {path} | tr -d \'\\n\')"')
            else:
                words.append(xpk.shell_word(a))
        return words

    def shell_line(self, directory: str) -> str:
        return " ".join(self.shell_words(directory))


@dataclass(frozen=True)
class Build:
    plan: Plan
    target: Target
    out_dir: Path
    artifacts: tuple[render.Artifact, ...]
    steps: tuple[Step, ...]  # argv with --script-dir=<out_dir>, as --execute runs them

    def workloads_json(self) -> list[dict[str, Any]]:
        return [{"name": s.name, "argv": list(s.argv), "depends_on": list(s.depends_on)} for s in self.steps if s.kind == "create"]

    def artifacts_json(self) -> list[dict[str, str]]:
        return [{"path": str(self.out_dir / a.name), "sha256": a.sha256} for a in self.artifacts]


@dataclass(frozen=True)
class Front:
    """The checked spec (rules rerun for the cluster's hardware) and what the cluster brought."""

    loaded: Loaded
    checked: Checked
    cluster: Optional[clusters_mod.Cluster]
    diagnostics: tuple[Diagnostic, ...]
    sources: dict[str, SourceMap]
    target: Target = "distillc"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


# ---------------------------------------------------------------- front end: spec + cluster


def _with_slices(loaded: Loaded, num_slices: int) -> Loaded:
    """The loaded spec with resources.num_slices set (positions kept), so rules see the cluster's."""
    data = loaded.data
    if not isinstance(data, dict) or not isinstance(data.get("resources", {}), dict):
        return loaded
    patched = copy.deepcopy(data)
    patched.setdefault("resources", {})["num_slices"] = num_slices
    return dataclasses.replace(loaded, data=patched)


def front(
    spec_path: Path, cluster_name: Optional[str] = None, clusters_file: Optional[Path] = None, target: Target = "distillc",
    select: Sequence[str] = (), ignore: Sequence[str] = (),
) -> Front:
    """Load and check the spec for `target`, for the cluster's accelerator and slices when one is
    named; `select` / `ignore` as `distillc validate` takes them, for every stage's codes."""
    select, ignore = tuple(select), tuple(ignore)
    try:
        loaded = load_file(spec_path)
    except LoadError as exc:
        raise UsageError(str(exc)) from None
    sources = {loaded.source.file: loaded.source}
    diags: list[Diagnostic] = []
    cluster = None
    if cluster_name is not None:
        try:
            cluster, cdiags, csource = clusters_mod.load_cluster(cluster_name, clusters_file, select=select, ignore=ignore)
        except (LoadError, clusters_mod.ClustersNotFound, clusters_mod.UnknownCluster) as exc:
            raise UsageError(str(exc)) from None
        diags += cdiags
        sources[csource.file] = csource
        if cluster is None:
            return Front(loaded, Checked(PartialSpec(), None, ()), None, tuple(sorted(diags, key=sort_key)), sources,
                         target, select, ignore)
    spec_for_rules = loaded
    if cluster is not None:
        spec_for_rules = _with_slices(loaded, cluster.entry.num_slices)
    checked = check_loaded(spec_for_rules, select, ignore, accelerator=cluster.accelerator.name if cluster else None,
                           target=target)
    diags += checked.diagnostics
    return Front(loaded, checked, cluster, tuple(sorted(diags, key=sort_key)), sources, target, select, ignore)


def plan_for(fr: Front) -> Plan:
    slices = fr.cluster.entry.num_slices if fr.cluster is not None else None
    try:
        return resolve_checked(fr.checked, num_slices=slices)
    except PlanError as exc:
        raise UsageError(f"internal error: {exc} (please report: a rule should have caught this)") from None


def planned(fr: Front, render: bool = False) -> PlanContext:
    """Resolve the plan when the front end passed, and bind it for the plan rules (with the spec
    alone, and no plan, when it did not: the cluster notes still explain the spec's errors)."""
    plan = plan_for(fr) if fr.ok and fr.checked.context is not None else None
    spec = fr.checked.spec.full() if plan is not None else None
    data = fr.loaded.data
    resources = data.get("resources") if isinstance(data, dict) else None
    written_slices = resources.get("num_slices", 1) if isinstance(resources, dict) else 1
    return PlanContext(spec, plan, fr.checked.spec.resources, fr.loaded.source, fr.target, fr.cluster,
                       written_slices, render)


def plan_diagnostics(fr: Front, ctx: PlanContext, stopped: bool = False) -> tuple[Diagnostic, ...]:
    """The front end's diagnostics and the plan rules', as --select/--ignore leave them (but never
    hiding why nothing was made: check.shown), sorted."""
    found = [*fr.diagnostics, *check_plan(ctx)]
    return tuple(sorted(shown(found, fr.select, fr.ignore, stopped), key=sort_key))


# ---------------------------------------------------------------- launch: image, commands, artifacts


def _target(cluster: clusters_mod.Cluster, image: xpk.Image) -> xpk.Target:
    e, acc = cluster.entry, cluster.accelerator
    return xpk.Target(
        project=e.project,
        zone=e.zone,
        cluster=e.cluster,
        device_flag=acc.flag,  # type: ignore[arg-type]
        device_type=acc.name,
        accelerator_kind=acc.kind,
        num_slices=e.num_slices,
        priority=e.priority,
        max_restarts=e.max_restarts,
        restart_on_exit_codes=tuple(sorted(set(e.restart_on_exit_codes))),
        env=tuple(sorted(e.env.items())),
        image=image,
    )


def _command(words: Sequence[tuple[str, Optional[KeyPath]]], image: xpk.Image, config_file: str, gpu: bool) -> str:
    """Join command words for the container's bash; in docker_image mode, decode the config first
    (a word that cannot be carried is DC406, rules/launch.py)."""
    command = " ".join(xpk.command_word(word, gpu)[0] for word, _ in words)
    if image.mode == "docker_image":
        command = f"printenv {CONFIG_ENV} | python3 -m base64 -d > /tmp/{config_file} && {command}"
    return command


def _config_path(image: xpk.Image, config_file: str) -> str:
    return f"{SCRIPT_DIR_IN_IMAGE}/{config_file}" if image.mode == "base_docker_image" else f"/tmp/{config_file}"


def command_words(plan: Plan, workload: Workload, target: Target, image: xpk.Image) -> tuple[str, list[tuple[str, Optional[KeyPath]]]]:
    """A workload's config file and the words of its command, each value word with the spec key it
    came from (fixed words carry None)."""
    file_name = maxtext.CONFIG_FILE if target == "maxtext" else workload.config_file
    path = _config_path(image, file_name)
    if target == "maxtext":
        return file_name, maxtext.stage_command(workload.stage, path, plan.config_for(workload))
    return file_name, [("python3", None), ("-m", None), (RUNTIME_MODULE, None), ("--config", None), (path, None)]


def _steps(plan: Plan, xt: xpk.Target, target: Target, files: dict[str, render.Artifact], script_dir: str) -> list[Step]:
    steps: list[Step] = []
    for workload in plan.workloads:
        file_name, words = command_words(plan, workload, target, xt.image)
        command = _command(words, xt.image, file_name, xt.gpu)
        env = []
        if xt.image.mode == "docker_image":
            env.append((CONFIG_ENV, base64.b64encode(files[file_name].content).decode("ascii")))
        for dep in workload.depends_on:
            steps.append(Step(f"wait-{dep}", "wait", xpk.wait_for(xt, dep), (dep,),
                              f"wait for {dep} to complete (xpk exits non-zero if it failed)"))
        argv = xpk.workload_create(xt, workload.name, command, env,
                                   script_dir if xt.image.mode == "base_docker_image" else None)
        steps.append(Step(workload.name, "create", argv, workload.depends_on,
                          f"{workload.name}: stage {workload.stage} on {xt.device_type} x {xt.num_slices}",
                          file_name if xt.image.mode == "docker_image" else None))
    return steps


def _spec_info(loaded: Loaded, spec_name: str) -> dict[str, str]:
    text = loaded.source.text.encode("utf-8")
    return {"file": Path(loaded.source.file).name, "name": spec_name, "sha256": hashlib.sha256(text).hexdigest()}


@dataclass(frozen=True)
class Compiled:
    front: Front
    build: Optional[Build]
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.build is not None and not has_errors(self.diagnostics)


def compile_launch(
    spec_path: Path,
    *,
    cluster_name: Optional[str],
    clusters_file: Optional[Path] = None,
    target: Target = "distillc",
    out_dir: Optional[Path] = None,
    local: bool = False,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> Compiled:
    """Everything `launch` does short of writing and running: diagnostics, artifacts, steps."""
    if local and target != "distillc":
        raise UsageError("--local runs the distillc runtime; it cannot be combined with --target maxtext")
    if cluster_name is None and not local:
        raise UsageError("launch needs --cluster NAME (an entry of the clusters file), or --local")
    if cluster_name is not None and local:
        raise UsageError("--local trains on this machine; it takes no --cluster")
    fr = front(spec_path, cluster_name, clusters_file, target, select, ignore)
    ctx = planned(fr, render=True)
    plan, spec = ctx.plan, ctx.spec
    image = ctx.image
    version = ctx.maxtext_version
    # what makes nothing renderable, whatever --ignore says (check.shown keeps its error)
    stopped = plan is None or (not local and image is None) or (
        target == "maxtext" and (version is None or plan.mesh.dcn_split() is None))
    diags = plan_diagnostics(fr, ctx, stopped)
    if stopped or has_errors(diags):
        return Compiled(fr, None, diags)
    assert plan is not None and spec is not None
    out = Path(out_dir) if out_dir is not None else Path("build") / plan.name
    spec_info = _spec_info(fr.loaded, plan.name)

    files: dict[str, render.Artifact] = {}
    if target == "maxtext":
        assert version is not None
        context = dict(
            name=plan.name, maxtext_version=spec.maxtext.version, maxtext_tag=version.tag,
            base_config=spec.maxtext.base_config,
            distillc_version=__version__, spec_file=spec_info["file"], spec_sha256=spec_info["sha256"],
            train_module=maxtext.TRAIN_MODULE, topk_module=maxtext.TOPK_MODULE, config_path=maxtext.CONFIG_FILE,
            s=maxtext.config_sections(plan, version),
            mesh_comment=f"{plan.mesh.data} data x {plan.mesh.fsdp} fsdp x {plan.mesh.tensor} tensor over "
                         f"{_count(plan.mesh.devices, 'device')} ({_count(plan.mesh.num_slices, 'slice')} of {plan.mesh.chips_per_slice})",
        )
        files[maxtext.CONFIG_FILE] = render.maxtext_config(maxtext.CONFIG_FILE, context)
    else:
        for workload, cfg in zip(plan.workloads, plan.configs):
            files[workload.config_file] = render.runtime_config(workload.config_file, cfg)

    steps: list[Step] = []
    extra: dict[str, Any] = {"target": target}
    if not local:
        assert fr.cluster is not None and image is not None
        xt = _target(fr.cluster, image)
        if image.mode == "base_docker_image" and not SAFE_SCRIPT_DIR.fullmatch(str(out)):
            raise UsageError(f"--out {str(out)!r}: xpk passes --script-dir to a shell; use letters, digits and . _ / + -")
        steps = _steps(plan, xt, target, files, str(out))
        script_steps = _steps(plan, xt, target, files, ".")  # launch.sh runs from the build dir
        e = fr.cluster.entry
        cluster_doc = {"name": fr.cluster.name, "project": e.project, "zone": e.zone, "cluster": e.cluster,
                       "accelerator": e.accelerator, "num_slices": e.num_slices, "image": {"mode": image.mode, "ref": image.ref}}
        extra.update(cluster=cluster_doc, workloads=[
            {"name": s.name, "kind": s.kind, "argv": list(s.argv), "depends_on": list(s.depends_on)} for s in script_steps
        ])
        regenerate = ["distillc", "launch", str(spec_path), f"--clusters={fr.cluster.source.file}",
                      f"--cluster={fr.cluster.name}", f"--target={target}"]
        if out_dir is not None:
            regenerate.append(f"--out={out}")
        files[render.LAUNCH_SCRIPT] = render.launch_script(dict(
            name=plan.name, cluster=cluster_doc, distillc_version=__version__, spec_file=spec_info["file"],
            regenerate=xpk.shell_line(regenerate),
            spec_sha256=spec_info["sha256"], target=target, steps=script_steps,
            uses_script_dir=image.mode == "base_docker_image",
        ))
    artifacts = list(files.values())
    artifacts.append(render.manifest(artifacts, spec_info, extra))
    build = Build(plan, target, out, tuple(artifacts), tuple(steps))
    return Compiled(fr, build, diags)


# ---------------------------------------------------------------- execute


class ExecuteError(Exception):
    def __init__(self, step: Step, code: int, output: str):
        super().__init__(f"`{xpk.shell_line(step.argv[:3])} ...` for {step.name} failed (exit {code})")
        self.step, self.code, self.output = step, code, output


def xpk_available() -> bool:
    return shutil.which(xpk.XPK) is not None


def execute(steps: Sequence[Step], echo: Callable[[str], None], tail_lines: int = 40,
            popen: Callable[..., Any] = subprocess.Popen) -> None:
    """Run each step's argv (a list, never through a shell), streaming its output to `echo`;
    stop at the first failure with the end of xpk's output."""
    for step in steps:
        echo(f"$ {xpk.shell_line(step.argv)}")
        with popen(list(step.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                   encoding="utf-8", errors="replace") as proc:
            tail: list[str] = []
            assert proc.stdout is not None
            for line in proc.stdout:
                echo(line.rstrip("\n"))
                tail = (tail + [line.rstrip("\n")])[-tail_lines:]
            code = proc.wait()
        if code != 0:
            raise ExecuteError(step, code, "\n".join(tail))


# ---------------------------------------------------------------- plan output


@dataclass(frozen=True)
class TopkStorage:
    """What the offline cache holds on disk (runtime/offline/store.py's record layout, before zstd).

    One record per sequence of seq_len L, S slots (top_k, or num_samples for random sampling), G
    cached temperatures (the grid topk_store.temperature_grid builds from the temperature schedule):

        record = 60 header + L * (4 input + 4 label + 1 mask + 4 label logit)
               + L * S * (4 index + value bytes (4 float32, 2 bfloat16) [+ 2 count, random only])
               + L * G * (4 lse + 4 lse slope)

    Every byte count is read from topk_store.RecordSpec, the layout the runtime writes, so the plan
    cannot drift from it. Training tokens = steps * global_batch_size * seq_len. The held-out split adds whole global
    batches covering data.eval_fraction of the corpus, which is not known before it is read, so
    it is given per batch."""

    record_bytes: int
    seq_len: int
    slots: int
    grid: int
    train_records: int
    global_batch_size: int
    eval_fraction: float
    slot_bytes: int  # 4 id + value bytes (+ 2 count for random sampling)
    header_bytes: int
    token_bytes: int  # input, label, mask, segment id, position, label logit
    grid_bytes: int  # tail lse + slope per cached temperature

    @property
    def bytes_per_token(self) -> float:
        return self.record_bytes / self.seq_len

    @property
    def train_tokens(self) -> int:
        return self.train_records * self.seq_len

    @property
    def train_bytes(self) -> int:
        return self.train_records * self.record_bytes

    @property
    def eval_batch_bytes(self) -> int:
        return self.global_batch_size * self.record_bytes

    def json(self) -> dict[str, Any]:
        return {"train_tokens": self.train_tokens, "train_records": self.train_records, "bytes_per_token": self.bytes_per_token,
                "record_bytes": self.record_bytes, "train_bytes": self.train_bytes, "slots": self.slots,
                "temperature_grid": self.grid, "slot_bytes": self.slot_bytes, "header_bytes": self.header_bytes,
                "eval_bytes_per_batch": self.eval_batch_bytes if self.eval_fraction > 0 else 0,
                "compressed": False}


def topk_storage(plan: Plan) -> Optional[TopkStorage]:
    """The offline cache's size, from the runtime's own record layout (None for online plans)."""
    cfg = plan.train
    if cfg.offline is None:
        return None
    from distillc.runtime.offline.store import record_spec  # numpy only; no jax

    rec = record_spec(cfg)
    return TopkStorage(rec.nbytes, rec.seq_len, rec.slots, rec.grid, cfg.train.steps * cfg.data.global_batch_size,
                       cfg.data.global_batch_size, cfg.data.eval_fraction, rec.slot_bytes, rec.header_bytes,
                       rec.token_bytes, rec.grid_bytes)


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def plan_json(plan: Plan) -> dict[str, Any]:
    from distillc.compiler.plan_schedules import schedule_table, table_steps

    cfg = plan.train
    return {
        "name": plan.name,
        "mode": plan.mode,
        "accelerator": plan.accelerator.name,
        "mesh": {"data": plan.mesh.data, "fsdp": plan.mesh.fsdp, "tensor": plan.mesh.tensor,
                 "devices": plan.mesh.devices, "num_slices": plan.mesh.num_slices,
                 "per_chip_batch": float(plan.mesh.per_chip_batch)},
        "schedule": [dict(zip(("step", "alpha", "temperature", "beta"), row))
                     for row in schedule_table(cfg.loss, table_steps(cfg.train.steps))],
        "layer_pairs": [[p.teacher, p.student] for p in cfg.loss.layer_pairs],
        "compare_vocab": cfg.loss.compare_vocab,
        "memory": {stage: {"total_bytes": est.total, "usable_bytes": est.usable, "fits": est.fits,
                           "components": est.components()} for stage, est in plan.memory.items()},
        "workloads": [{"name": w.name, "stage": w.stage, "config": w.config_file, "depends_on": list(w.depends_on)}
                      for w in plan.workloads],
        "configs": {w.config_file: c.model_dump(mode="json") for w, c in zip(plan.workloads, plan.configs)},
        "topk_storage": storage.json() if (storage := topk_storage(plan)) is not None else None,
    }


def _count(n: int, word: str) -> str:
    """'1 device', '8 devices'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def plan_text(plan: Plan, spec: Spec) -> str:
    from distillc.compiler.mesh import format_batch
    from distillc.compiler.memory import GiB
    from distillc.compiler.plan_schedules import describe, schedule_table, table_steps

    cfg = plan.train
    lines = [f"plan {plan.name}: {plan.mode}, {cfg.train.steps} steps, {len(plan.workloads)} workload(s)", ""]

    def side(s) -> str:
        pruned = f" (teacher minus layers {', '.join(map(str, s.pruned_layers))})" if s.pruned_layers else ""
        ckpt = s.checkpoint or "random init (seed %d)" % s.init_seed
        return (f"  {s.role:<8} {s.arch.name}: {s.arch.num_layers} layers{pruned}, d={s.arch.emb_dim}; "
                f"weights {s.weight_dtype}, activations {s.activation_dtype}, remat {s.remat}; {ckpt}")

    lines += ["models", side(cfg.teacher), side(cfg.student)]
    vocab = plan.vocab_note or f"same vocabulary: logits compared over {cfg.loss.compare_vocab} tokens"
    lines += [f"  vocab    {vocab}", ""]
    loss = cfg.loss
    lines.append(f"schedules (progress = step / {cfg.train.steps}, frozen after)")
    for label, s in (("alpha", loss.alpha), ("T", loss.temperature), ("beta", loss.beta)):
        lines.append(f"  {label:<6} {describe(s)}")
    lines.append(f"  {'step':>8}  {'alpha':>8}  {'T':>8}  {'beta':>8}")
    for step, a, t, b in schedule_table(loss, table_steps(cfg.train.steps)):
        lines.append(f"  {step:>8}  {a:>8.4f}  {t:>8.4f}  {b:>8.4f}")
    lines.append("")
    if loss.layer_pairs:
        strategy = spec.loss.layers.strategy if spec.loss.layers is not None else "explicit"
        lines.append(f"feature loss ({loss.feature_loss}, {strategy}): {len(loss.layer_pairs)} layer pair(s), teacher <-> student")
        lines.append("  " + ", ".join(f"{p.teacher}<->{p.student}" for p in loss.layer_pairs))
    else:
        why = "offline mode" if plan.mode == "offline" else "beta is 0 at every step: nothing is sown"
        lines.append(f"feature loss: off ({why})")
    if cfg.offline is not None:
        o = cfg.offline
        lines.append(f"offline: top-{o.top_k} ({o.sampling}, {o.loss}) cached in {o.data_dir}")
        st = topk_storage(plan)
        assert st is not None
        value = "2 (bfloat16)" if o.dtype == "bfloat16" else "4 (float32)"
        count = " + 2 count" if o.sampling == "random" else ""
        lines.append(f"  cache  {st.train_tokens:,} training tokens ({cfg.train.steps} steps x {cfg.data.global_batch_size} x "
                     f"{st.seq_len}) x {st.bytes_per_token:.1f} B/token = {_bytes(st.train_bytes)} before compression")
        temps = "temperature" if st.grid == 1 else "temperatures"
        lines.append(f"         per token: {st.slots} slots x (4 id + {value} value{count}) + {st.grid} {temps} x {st.grid_bytes} "
                     f"(tail lse + slope) + {st.token_bytes} (input, label, mask, segment id, position, label logit) + "
                     f"{st.header_bytes}/{st.seq_len} header")
        if cfg.data.eval_fraction > 0:
            lines.append(f"         + held-out split: {_bytes(st.eval_batch_bytes)} per global batch of eval windows "
                         f"(data.eval_fraction {cfg.data.eval_fraction:g} of the corpus)")
    m = plan.mesh
    lines += [
        "",
        f"mesh     {plan.accelerator.name} x {_count(m.num_slices, 'slice')} = {_count(m.devices, 'device')}: "
        f"data {m.data} x fsdp {m.fsdp} x tensor {m.tensor}",
        f"batch    {cfg.data.global_batch_size} sequences of {cfg.data.seq_len} tokens; per chip "
        f"{format_batch(m.per_chip_batch)} (over data x fsdp = {m.batch_shards})",
    ]
    for stage, est in plan.memory.items():
        pct = 100.0 * est.total / est.usable if est.usable else float("inf")
        verdict = "fits" if est.fits else "DOES NOT FIT"
        lines.append(f"memory   {stage}: {est.total / GiB:.2f} GiB of {est.usable / GiB:.1f} GiB usable per chip "
                     f"({pct:.0f}%, {verdict}): {est.breakdown()}")
    lines += ["", "workloads"]
    for w in plan.workloads:
        after = f", after {', '.join(w.depends_on)}" if w.depends_on else ""
        lines.append(f"  {w.name:<40} {w.stage:<9} {w.config_file}{after}")
    lines.append(f"outputs  {cfg.output.run_dir}")
    return "\n".join(lines) + "\n"


def run_local(plan: Plan, spec_path: Path, restart: bool = False) -> int:
    """Hand the compiled configs to the runtime in this process (imports jax). `restart`: earlier runs
    in the plan's run directories are moved aside (never deleted) before training."""
    try:
        from distillc.runtime.local import run_local as runtime_run_local
    except ImportError as exc:
        raise UsageError(f"the local runtime is not available ({exc}); install distillc with its runtime dependencies") from None
    return int(runtime_run_local(list(plan.configs), spec_path, restart=restart))


def write(build: Build) -> list[Path]:
    try:
        return render.write_atomic(build.out_dir, build.artifacts)
    except (render.OutputDirError, OSError) as exc:
        raise UsageError(str(exc)) from None


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
