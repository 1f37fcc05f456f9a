"""The `distillc` command line (Typer). Data goes to stdout, diagnostics to stderr.

Exit codes: 0 valid (warnings allowed), 1 errors found, 2 usage or I/O error. User mistakes never
produce a traceback. Heavy modules (jinja2, the runtime) are imported inside the commands that
need them, so `distillc validate` starts fast and never imports jax.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from distillc import __version__

app = typer.Typer(
    name="distillc",
    help="A declarative experiment-spec compiler for LLM knowledge distillation.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


class Format(str, Enum):
    text = "text"
    concise = "concise"
    json = "json"
    github = "github"


def fail(message: str, code: int = EXIT_USAGE) -> "typer.Exit":
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"distillc: error: {message}", err=True)
    return typer.Exit(code)


def _color(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def emit_diagnostics(diags, fmt: Format, sources: dict, stream=None) -> None:
    """Write diagnostics in the chosen format (JSON goes to stdout, the rest to stderr)."""
    from distillc.compiler import diagnostics as D

    if fmt is Format.json:
        sys.stdout.write(D.to_json(diags) + "\n")
        return
    out = stream or sys.stderr
    color = _color(out)
    for d in diags:
        if fmt is Format.concise:
            out.write(D.format_concise(d) + "\n")
        elif fmt is Format.github:
            out.write(D.format_github(d) + "\n")
        else:
            src = sources.get(d.file)
            out.write(D.format_rich(d, src.line_text(d.span.line) if src else "", color) + "\n\n")


def load_and_check(path: Path, select=(), ignore=(), accelerator: Optional[str] = None):
    """The front end for every command: returns Checked, or raises Exit(2) for unreadable input."""
    from distillc.compiler.check import check_loaded
    from distillc.compiler.loader import LoadError, load_file

    try:
        loaded = load_file(path)
    except LoadError as exc:
        raise fail(str(exc))
    return loaded, check_loaded(loaded, select, ignore, accelerator)


def _split_codes(values: Optional[List[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or []:
        out += [c.strip().upper() for c in v.split(",") if c.strip()]
    return tuple(out)


def _is_clusters_file(data) -> bool:
    """A clusters file (specs/clusters.yaml): a top-level `clusters:` mapping and no `teacher`."""
    return isinstance(data, dict) and isinstance(data.get("clusters"), dict) and "teacher" not in data


def _check_clusters_file(loaded, select=(), ignore=()) -> list:
    """A clusters file's problems: its schema, each entry's values and accelerator."""
    from distillc.compiler import clusters as C
    from distillc.compiler.check import _wanted

    entries, diags = C.load_clusters(loaded)
    for name, entry in entries.items():
        if entry is not None:
            diags += C.select_entry(entries, name, loaded.source)[1]
    return [d for d in diags if _wanted(d.code, select, ignore)]


def _ablation_axes(loaded, select, ignore) -> list:
    """The spec's ablation.axes checked as `distillc ablate` checks them (imported only when the
    spec has that block, so validate's start-up does not pay for the ablation package)."""
    data = loaded.data
    if not (isinstance(data, dict) and isinstance(data.get("ablation"), dict) and data["ablation"].get("axes")):
        return []
    from distillc.compiler.ablation.axes import spec_axis_diagnostics
    from distillc.compiler.check import _wanted

    return [d for d in spec_axis_diagnostics(loaded) if _wanted(d.code, select, ignore)]


def _check_selectors(sel, ign) -> None:
    from distillc.compiler.registry import unknown_selectors

    for option, values in (("--select", sel), ("--ignore", ign)):
        bad = unknown_selectors(values)
        if bad:
            raise fail(f"{option}: {', '.join(bad)} matches no diagnostic code; `distillc rules` lists them")


class LaunchTarget(str, Enum):
    distillc = "distillc"
    maxtext = "maxtext"


SELECT_HELP = "Only these codes (prefixes, comma-separated)."
IGNORE_HELP = "Skip these codes (prefixes, comma-separated)."
TARGET_HELP = "distillc (our runtime) | maxtext (MaxText's train_distill): the rules of its limits."


@app.command()
def validate(
    specs: List[Path] = typer.Argument(..., help="Spec files to check ('-' reads stdin); clusters files too.", show_default=False),
    format: Format = typer.Option(Format.text, "--format", "-f", help="text | concise | json | github"),
    select: Optional[List[str]] = typer.Option(None, "--select", help=SELECT_HELP),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help=IGNORE_HELP),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
    target: LaunchTarget = typer.Option(LaunchTarget.distillc, "--target", help=TARGET_HELP),
    offline: bool = typer.Option(False, "--offline", envvar="DISTILLC_OFFLINE",
                                 help="Read no gs:// path: check local paths only."),
    remote_timeout: float = typer.Option(
        5.0, "--remote-timeout", envvar="DISTILLC_REMOTE_TIMEOUT", metavar="SECONDS",
        help="The most time all gs:// reads of this run take together; past it a path is noted (DC186), not checked."),
) -> None:
    """Check specs against every rule; print compiler-style diagnostics.

    gs:// checkpoints are checked like local ones when they can be reached within --remote-timeout;
    when they cannot (no credentials, no network), DC186 notes which and why. Load and structure
    errors (DC0xx) are reported whatever --select/--ignore say."""
    from distillc.compiler.check import check_loaded
    from distillc.compiler.diagnostics import sort_key, summary
    from distillc.compiler.loader import STDIN_NAME, LoadError, load_file, load_stream
    from distillc.compiler.remote import Remote

    sel, ign = _split_codes(select), _split_codes(ignore)
    _check_selectors(sel, ign)
    if not 0 < remote_timeout < float("inf"):  # also NaN
        raise fail(f"--remote-timeout {remote_timeout}: must be a positive, finite number of seconds")
    remote = None if offline else Remote(remote_timeout)
    all_diags, sources, io_errors, names = [], {}, [], []
    for path in specs:
        try:
            loaded = load_stream(getattr(sys.stdin, "buffer", sys.stdin)) if str(path) == "-" else load_file(path)
        except LoadError as exc:
            io_errors.append(str(exc))
            continue
        names.append(STDIN_NAME if str(path) == "-" else str(path))
        sources[loaded.source.file] = loaded.source
        if _is_clusters_file(loaded.data):
            all_diags += sorted(_check_clusters_file(loaded, sel, ign), key=sort_key)
        else:
            checked = check_loaded(loaded, sel, ign, target=target.value, remote=remote)
            all_diags += sorted((*checked.diagnostics, *_ablation_axes(loaded, sel, ign)), key=sort_key)
    if names:  # no JSON list at all when no file could be read
        emit_diagnostics(all_diags, format, sources)
    for message in io_errors:
        typer.echo(f"distillc: error: {message}", err=True)
    bad = any(d.is_error or (strict and d.severity.value == "warning") for d in all_diags)
    if format is Format.text and names:
        what = f"{len(names)} files" if len(names) > 3 else ", ".join(names)
        typer.echo(f"{what}: {summary(all_diags)}", err=True)
    raise typer.Exit(EXIT_USAGE if io_errors else EXIT_ERRORS if bad else EXIT_OK)


YAML_1_2 = ("Plain YAML values follow YAML 1.2's core schema (as YAML language servers read them): "
            "1e-5 is a number; yes, no, on, off and 1_000 are strings.")


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (point your YAML editor at it for completion)."""
    from distillc.compiler.spec import Spec

    doc = Spec.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = f"https://distillc.dev/schema/spec-v1-{__version__}.json"
    doc["description"] = f"{doc.get('description', '')} {YAML_1_2}".strip()
    typer.echo(json.dumps(doc, indent=2))


@app.command()
def explain(code: str = typer.Argument(..., help="A diagnostic code, e.g. DC120.")) -> None:
    """Explain a diagnostic code: why the rule exists, a failing and a passing example."""
    from distillc.compiler.registry import explain as explain_code

    text = explain_code(code)
    if text is None:
        raise fail(f"unknown code '{code}'; `distillc rules` lists them")
    typer.echo(text, nl=False)


@app.command()
def rules(
    markdown: bool = typer.Option(False, "--markdown", help="Print the rules page (docs/rules.md) instead."),
) -> None:
    """List every diagnostic code with its severity and title."""
    from distillc.compiler.registry import iter_codes

    if markdown:
        from distillc.compiler.rules._docs import render_markdown

        typer.echo(render_markdown(), nl=False)
        return
    for c in iter_codes():
        typer.echo(f"{c.code}  {c.severity.value:<7}  {c.title}")


@app.command()
def models() -> None:
    """List the model catalog."""
    from distillc.compiler.catalog import load_catalog
    from distillc.runtime.arch import human_count

    for m in load_catalog().models.values():
        typer.echo(
            f"{m.name:<22} {m.family:<10} layers={m.num_layers:<3} d={m.emb_dim:<5} "
            f"vocab={m.vocab_size:<6} tokenizer={m.tokenizer} params={human_count(m.param_count())}"
        )


@app.command()
def accelerators() -> None:
    """List the accelerator catalog (xpk device names)."""
    from distillc.compiler.catalog import load_catalog

    for a in load_catalog().accelerators.values():
        typer.echo(f"{a.name:<22} {a.kind:<4} chips={a.chips:<5} hosts={a.hosts:<4} topology={a.topology:<8} hbm={a.hbm_gib:g}GiB")


class AblateFormat(str, Enum):
    text = "text"
    csv = "csv"
    json = "json"


class AblateStrategy(str, Enum):
    grid = "grid"
    staged = "staged"
    random = "random"


@app.command()
def ablate(
    spec: Path = typer.Argument(..., help="The base spec (its `ablation:` block gives the axes).", show_default=False),
    axis: Optional[List[str]] = typer.Option(None, "--axis", help="KEY=V1,V2,... (repeatable; YAML scalars), e.g. loss.alpha.end=0.3,0.5,0.7."),
    strategy: Optional[AblateStrategy] = typer.Option(None, "--strategy", help="grid | staged | random (overrides ablation.strategy)."),
    samples: Optional[int] = typer.Option(None, "--samples", min=1, help="random: cells to draw."),
    seed: Optional[int] = typer.Option(None, "--seed", help="random: the seed (default ablation.seed, 0)."),
    best: Optional[Path] = typer.Option(None, "--best", help="staged: RESULTS (CSV or JSON of cell name -> metric) fixing earlier stages' winners."),
    stage: Optional[int] = typer.Option(None, "--stage", min=1, help="staged: the stage to list (default: the first without a result)."),
    maximize: bool = typer.Option(False, "--maximize", help="staged: a higher metric wins (default: lower is better)."),
    max_cells: Optional[int] = typer.Option(None, "--max-cells", min=1, help="Refuse more cells than this (default ablation.max_cells, 1000)."),
    format: AblateFormat = typer.Option(AblateFormat.text, "--format", "-f", help="text | csv | json"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write one child spec per valid cell, index.json and launch_all.sh here."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Validate cells for this clusters-file entry; launch_all.sh launches on it."),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="The clusters file (default ./clusters.yaml, then the user config dir)."),
    target: LaunchTarget = typer.Option(LaunchTarget.distillc, "--target", help=TARGET_HELP),
) -> None:
    """Expand an ablation into cells: validated, deduplicated by resolved plan, and named."""
    from distillc.compiler import clusters as clusters_mod
    from distillc.compiler.ablation import Options, StrategyError, ablate as run_ablation, on_cluster, read_results
    from distillc.compiler.ablation import output
    from distillc.compiler.loader import LoadError, load_file

    try:
        loaded = load_file(spec)
        if cluster is not None:
            entry, cdiags, csource = clusters_mod.load_cluster(cluster, clusters)
            emit_diagnostics(cdiags, Format.text, {csource.file: csource})
            if entry is None:
                raise typer.Exit(EXIT_ERRORS)
            loaded = on_cluster(loaded, entry.accelerator.name, entry.entry.num_slices)
            typer.echo(f"cells are checked for cluster '{cluster}': {entry.accelerator.name} x {entry.entry.num_slices} slice(s)", err=True)
        results = read_results(best) if best is not None else None
        opts = Options(
            strategy=strategy.value if strategy else None,
            samples=samples,
            seed=seed,
            max_cells=max_cells,
            stage=stage,
            results=results,
            maximize=maximize,
            target=target.value,
        )
        result = run_ablation(loaded, axis or (), opts)
    except (LoadError, StrategyError, clusters_mod.ClustersNotFound, clusters_mod.UnknownCluster) as exc:
        raise fail(str(exc))
    if format is not AblateFormat.json:
        emit_diagnostics(result.diagnostics, Format.text, result.sources)
    if not result.ok:
        if format is AblateFormat.json:
            typer.echo(output.to_json(result))
        raise typer.Exit(EXIT_ERRORS)
    if out is not None:
        try:
            result = output.write_out(result, out, cluster, clusters)
        except OSError as exc:
            raise fail(f"--out {out}: {exc.strerror or exc}")
    for line in (*output.stage_header(result), *result.notes):
        typer.echo(line, err=True)
    if format is AblateFormat.json:
        typer.echo(output.to_json(result))
    elif format is AblateFormat.csv:
        typer.echo(output.to_csv(result), nl=False)
    else:
        typer.echo(output.table(result), nl=False)
    typer.echo(output.summary(result) + (f"; wrote {out}/" if out is not None else ""), err=True)
    raise typer.Exit(EXIT_OK if result.count("valid") else EXIT_ERRORS)


class DataFormat(str, Enum):
    text = "text"
    json = "json"


def _diagnostics_or_exit(compiled_front, diags, fmt: DataFormat, empty: dict) -> None:
    """Text: print diagnostics to stderr. JSON: print nothing here (the diagnostics go into the one
    JSON document on stdout), except on errors, where that document is `empty` plus "diagnostics".
    Exit 1 when any diagnostic is an error."""
    from distillc.compiler.diagnostics import has_errors

    if fmt is DataFormat.json:
        if has_errors(diags):
            from distillc.compiler import launch as L

            L.print_json({**empty, "diagnostics": [d.to_json() for d in diags]})
    else:
        emit_diagnostics(diags, Format.text, compiled_front.sources)
    if has_errors(diags):
        raise typer.Exit(EXIT_ERRORS)


data_app = typer.Typer(help="Data tools: `prepare` tokenizes and packs a spec's sources once.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    spec: Path = typer.Argument(..., help="The spec whose data section to prepare.", show_default=False),
    out: Optional[str] = typer.Option(None, "--out", help="Directory to write (default: the spec's data.prepared)."),
    rows_per_shard: Optional[int] = typer.Option(None, "--rows-per-shard", min=1,
                                                 help="Rows per ArrayRecord shard (default: about 64 MB of rows)."),
    process_index: Optional[int] = typer.Option(None, "--process-index", min=0,
                                                help="This process's part of a multi-process prepare (default: "
                                                     "JAX_PROCESS_ID / NODE_RANK / TPU_WORKER_ID, else 0)."),
    process_count: Optional[int] = typer.Option(None, "--process-count", min=1,
                                                help="Processes the prepare is split over (default: "
                                                     "JAX_NUM_PROCESSES / NNODES / the TPU workers, else 1)."),
    mixture_stop: Optional[str] = typer.Option(None, "--mixture-stop",
                                               help="Where a data.sources mixture ends: first_exhausted (the "
                                                    "default: when a source runs out) or all_exhausted (smaller "
                                                    "sources repeat until every source has run out once)."),
    select: Optional[List[str]] = typer.Option(None, "--select", help=SELECT_HELP),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help=IGNORE_HELP),
) -> None:
    """Tokenize and pack SPEC's data.source (or data.sources mixture) once into ArrayRecord shards and
    a manifest.json (docs/data.md, "Prepared data"); training with data.prepared set reads them. With
    --process-count N, N processes each write their part and the last to finish writes the manifest.
    A killed prepare resumes from its finished shards; a directory prepared for other settings is
    exit 2, naming each differing field. The spec is validated first; the work then runs in the distillc runtime
    (Grain, which imports jax, and the tokenizer libraries), imported only then, as `launch --local` does."""
    from distillc.compiler import launch

    if mixture_stop is not None and mixture_stop not in ("first_exhausted", "all_exhausted"):
        raise fail(f"--mixture-stop {mixture_stop!r}: expected first_exhausted or all_exhausted")
    sel, ign = _split_codes(select), _split_codes(ignore)
    _check_selectors(sel, ign)
    try:
        fr = launch.front(spec, None, None, "distillc", sel, ign)
        ctx = launch.planned(fr)
        diags = list(launch.plan_diagnostics(fr, ctx, stopped=ctx.plan is None))
        _diagnostics_or_exit(fr, diags, DataFormat.text, {})
    except launch.UsageError as exc:
        raise fail(str(exc))
    assert ctx.plan is not None
    data = ctx.plan.configs[0].data  # every workload of a plan reads the same data section
    if mixture_stop is not None and not data.sources:
        raise fail(f"--mixture-stop {mixture_stop}: {spec} has one data.source, not a data.sources mixture; "
                   "drop the flag, or list the sources with weights under data.sources")
    where = out or data.prepared
    if where is None:
        raise fail(f"{spec}: set data.prepared (where training will read the prepared shards) or pass --out DIR")
    try:
        from distillc.runtime.data.prepared import run_prepare
    except ImportError as exc:
        raise fail(f"the distillc runtime is not available ({exc}); install distillc with its runtime dependencies")
    raise typer.Exit(run_prepare(data, where, rows_per_shard, process_index, process_count,
                                 mixture_stop or "first_exhausted"))


@app.command()
def plan(
    spec: Path = typer.Argument(..., help="The spec to resolve.", show_default=False),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="Plan for this clusters-file entry's accelerator and slices."),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="The clusters file (default ./clusters.yaml, then the user config dir)."),
    format: DataFormat = typer.Option(DataFormat.text, "--format", "-f", help="text | json"),
    target: LaunchTarget = typer.Option(LaunchTarget.distillc, "--target", help=TARGET_HELP),
    select: Optional[List[str]] = typer.Option(None, "--select", help=SELECT_HELP),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help=IGNORE_HELP),
) -> None:
    """Print the resolved plan: schedules, layer pairs, mesh, memory per chip, workloads."""
    from distillc.compiler import launch

    sel, ign = _split_codes(select), _split_codes(ignore)
    _check_selectors(sel, ign)
    try:
        fr = launch.front(spec, cluster, clusters, target.value, sel, ign)
        ctx = launch.planned(fr)
        diags = list(launch.plan_diagnostics(fr, ctx, stopped=ctx.plan is None))
        _diagnostics_or_exit(fr, diags, format, {"workloads": []})
    except launch.UsageError as exc:
        raise fail(str(exc))
    assert ctx.plan is not None and ctx.spec is not None
    if format is DataFormat.json:
        launch.print_json({**launch.plan_json(ctx.plan), "diagnostics": [d.to_json() for d in diags]})
    else:
        typer.echo(launch.plan_text(ctx.plan, ctx.spec), nl=False)


@app.command()
def launch(
    spec: Path = typer.Argument(..., help="The spec to compile and launch.", show_default=False),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="The clusters-file entry to launch on."),
    clusters: Optional[Path] = typer.Option(None, "--clusters", help="The clusters file (default ./clusters.yaml, then the user config dir)."),
    target: LaunchTarget = typer.Option(LaunchTarget.distillc, "--target", help=TARGET_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Build directory (default build/<name>)."),
    execute: bool = typer.Option(False, "--execute", help="Run the xpk commands (default: dry run, print them)."),
    format: DataFormat = typer.Option(DataFormat.text, "--format", "-f", help="text | json"),
    local: bool = typer.Option(False, "--local", help="Compile, then train here with the distillc runtime."),
    restart: bool = typer.Option(False, "--restart", help="With --local: move earlier runs of this spec aside (kept, not deleted) and train afresh."),
    select: Optional[List[str]] = typer.Option(None, "--select", help=SELECT_HELP),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help=IGNORE_HELP),
) -> None:
    """Compile SPEC into build/<name>/ (runtime configs, launch.sh, manifest.json) and print, or
    run, the xpk commands. A dry run unless --execute."""
    from distillc.compiler import launch as L

    sel, ign = _split_codes(select), _split_codes(ignore)
    _check_selectors(sel, ign)
    try:
        if restart and not local:
            raise L.UsageError("--restart goes with --local; a cluster run of a changed plan needs a new `name` "
                               "or `train.output_dir`")
        compiled = L.compile_launch(spec, cluster_name=cluster, clusters_file=clusters, target=target.value,
                                    out_dir=out, local=local, select=sel, ignore=ign)
        diags = list(compiled.diagnostics)
        _diagnostics_or_exit(compiled.front, diags, format, {"workloads": [], "artifacts": []})
        build = compiled.build
        assert build is not None
        if execute and not local and not L.xpk_available():
            raise L.UsageError(f"xpk is not on PATH: {L.INSTALL_XPK}")
        L.write(build)
        typer.echo(f"wrote {build.out_dir}/: {', '.join(a.name for a in build.artifacts)}", err=True)
        if local:
            raise typer.Exit(L.run_local(build.plan, spec, restart))
        if format is DataFormat.json:
            L.print_json({"workloads": build.workloads_json(), "artifacts": build.artifacts_json(),
                          "diagnostics": [d.to_json() for d in diags]})
        elif not execute:
            for step in build.steps:
                typer.echo(step.shell_line(str(build.out_dir)))
        if execute:
            L.execute(build.steps, lambda line: typer.echo(line, err=True))
    except L.UsageError as exc:
        raise fail(str(exc))
    except L.ExecuteError as exc:
        typer.echo(exc.output, err=True)
        raise fail(str(exc), EXIT_ERRORS)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"distillc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version."),
) -> None:
    pass


def _catalog_model(model: Optional[str]):
    """The catalog architecture `--model` names (None when not given); an unknown name is exit 2."""
    from distillc.compiler.catalog import load_catalog

    if model is None:
        return None
    catalog = load_catalog()
    if model not in catalog.models:
        raise fail(f"--model {model!r} is not in the catalog (`distillc models` lists it)")
    return catalog.models[model]


class ExportTarget(str, Enum):
    hf = "hf"
    maxtext = "maxtext"


class ExportDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.command()
def export(
    source: str = typer.Argument(..., help="A run directory, a Hugging Face directory, or a distillc parameter checkpoint."),
    out: str = typer.Argument(..., help="The directory to write (must not exist; written atomically)."),
    to: ExportTarget = typer.Option(..., "--to", help="Output format: hf (safetensors + index + config.json) or maxtext "
                                    "(an Orbax checkpoint OUT/0/items, MaxText's load_parameters_path)."),
    step: Optional[int] = typer.Option(None, "--step", help="A run's saved step (default: the latest)."),
    dtype: ExportDtype = typer.Option(ExportDtype.bfloat16, "--dtype", help="Parameter dtype written."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB."),
    model: Optional[str] = typer.Option(None, "--model", help="Catalog model of SOURCE when it has no config.json or manifest "
                                        "(a MaxText SOURCE); for --to maxtext, the MaxText model it is for."),
    unscanned: bool = typer.Option(False, "--unscanned", help="--to maxtext: one entry per layer (MaxText scan_layers: false)."),
) -> None:
    """Export parameters as a Hugging Face directory that transformers' from_pretrained loads, or as a
    MaxText checkpoint that MaxText restores (load_parameters_path=OUT/0/items). In a multi-process
    job (JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES / JAX_PROCESS_ID, or a TPU cluster) every
    process runs it; process 0 writes OUT and reports."""
    arch = _catalog_model(model)
    from distillc.runtime.train import distributed
    from distillc.runtime.train.checkpoints import CheckpointError

    try:
        distributed.initialize()
    except distributed.MeshError as e:
        raise fail(str(e))

    if to == ExportTarget.maxtext:
        from distillc.runtime.convert.maxtext import convention, export_maxtext

        try:
            mt = export_maxtext(source, out, step=step, dtype=dtype.value, model=arch, scanned=not unscanned)
        except CheckpointError as e:
            raise fail(str(e))
        conv = convention(mt.arch)
        if not mt.wrote:
            return
        typer.echo(f"exported {mt.arch.name} ({mt.tensors} tensors, {mt.bytes / 1e6:.1f} MB {dtype.value}, "
                   f"{'scanned' if mt.scanned else 'unscanned'}) to {mt.items} (MaxText load_parameters_path; "
                   f"query {'scaled by 1/sqrt(head_dim)' if conv.scale_query else 'unscaled'}, RoPE "
                   f"{'interleaved (llama3.1)' if conv.rope_interleaved else 'rotate-half'})")
        return
    from distillc.runtime.convert.export import export_hf

    try:
        done = export_hf(source, out, step=step, dtype=dtype.value, max_shard_size=max_shard_size, model=arch)
    except CheckpointError as e:
        raise fail(str(e))
    if not done.wrote:
        return
    typer.echo(f"exported {done.arch.name} ({done.tensors} tensors, {done.bytes / 1e6:.1f} MB {dtype.value}) "
               f"to {done.out}: {', '.join(done.files + ('config.json',) + done.tokenizer)}")


class LogitsDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.command()
def logits(
    checkpoint: str = typer.Argument(..., help="A Hugging Face directory, a run directory, or a MaxText or parameter checkpoint (with --model)."),
    golden: Optional[str] = typer.Option(None, "--golden", help="MaxText golden file: JSON lines {prompt, tokens, logits}."),
    out: Optional[str] = typer.Option(None, "--out", help="Write our logits for the golden's (or the prompts') tokens in the same format."),
    max_kl: float = typer.Option(1e-4, "--max-kl", help="Exit 1 when a prompt's max KL(golden || ours) exceeds this."),
    model: Optional[str] = typer.Option(None, "--model", help="Catalog model of CHECKPOINT when it has no config.json or manifest."),
    dtype: LogitsDtype = typer.Option(LogitsDtype.float32, "--dtype", help="Weights and activations dtype."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="New goldens from text instead of --golden: prompts separated by ';'."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="With --prompts: 'byte', a tokenizer.model, a tokenizer.json or a .gguf."),
) -> None:
    """Compare our forward pass with golden logits (MaxText's forward_pass_logit_checker format), or
    make new goldens from text (--prompts, --tokenizer, --out)."""
    if (golden is None) == (prompts is None):
        raise fail("give --golden FILE.jsonl (the tokens to run, and the logits to compare with), or --prompts "
                   "'a;b' --tokenizer PATH (new goldens from text), not both")
    if prompts is not None and tokenizer is None:
        raise fail("--prompts needs --tokenizer: 'byte', the model's tokenizer.model, tokenizer.json or .gguf")
    if prompts is None and tokenizer is not None:
        raise fail("--tokenizer goes with --prompts (a golden file carries its tokens)")
    arch = _catalog_model(model)
    from distillc.runtime.convert.logits import (compare, read_golden, rows_from_prompts, run_logits, split_prompts,
                                                 top_next, write_rows)
    from distillc.runtime.train.checkpoints import CheckpointError

    tok = None
    try:
        if prompts is not None:
            assert tokenizer is not None
            rows, tok = rows_from_prompts(split_prompts(prompts), tokenizer)
        else:
            assert golden is not None
            rows = read_golden(golden)
        ours = run_logits(checkpoint, rows, model=arch, dtype=dtype.value)
        if out is not None:
            write_rows(out, rows, ours)
    except CheckpointError as e:
        raise fail(str(e))
    if tok is not None:
        for r, x in zip(rows, ours):
            nxt = "  ".join(f"{i}:{t!r} {p:.3f}" for i, t, p in top_next(x, tok))
            typer.echo(f"{r.prompt[:40]!r:<44} {len(r.tokens)} tokens; next: {nxt}")
        if out is not None:
            typer.echo(f"wrote {len(rows)} golden rows to {out}")
        return
    worst = 0.0
    for r, x in zip(rows, ours):
        if r.logits is None:
            continue
        c = compare(r.prompt, r.logits, x)
        worst = max(worst, c.max_kl)
        typer.echo(f"{c.prompt[:40]!r:<44} max KL {c.max_kl:.3e}  max |diff| {c.max_abs:.3e}  top-1 {c.top1:.1%}")
    if worst > max_kl:
        typer.echo(f"distillc: max KL {worst:.3e} exceeds --max-kl {max_kl:g}", err=True)
        raise typer.Exit(EXIT_ERRORS)


def main() -> None:
    """Console entry point: usage errors exit 2; a broken pipe (`| head`) ends quietly (exit 1, as
    click has it); output that cannot be written (a full disk) is one line and exit 2."""
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # inside the try: a write error is reported here, not at exit
    except BrokenPipeError:
        _drop_stdout()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        _drop_stdout()
        typer.echo(f"distillc: error: cannot write the output: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_USAGE)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what could not be written
    does not fail again at exit (the pattern Python's signal docs give for SIGPIPE)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
