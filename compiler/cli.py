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


@app.command()
def validate(
    specs: List[Path] = typer.Argument(..., help="Spec files to check.", show_default=False),
    format: Format = typer.Option(Format.text, "--format", "-f", help="text | concise | json | github"),
    select: Optional[List[str]] = typer.Option(None, "--select", help="Only these codes (prefixes, comma-separated)."),
    ignore: Optional[List[str]] = typer.Option(None, "--ignore", help="Skip these codes (prefixes, comma-separated)."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
) -> None:
    """Check specs against every rule; print compiler-style diagnostics."""
    from distillc.compiler.diagnostics import summary

    sel, ign = _split_codes(select), _split_codes(ignore)
    all_diags, sources = [], {}
    for path in specs:
        loaded, checked = load_and_check(path, sel, ign)
        sources[loaded.source.file] = loaded.source
        all_diags += checked.diagnostics
    emit_diagnostics(all_diags, format, sources)
    bad = any(d.is_error or (strict and d.severity.value == "warning") for d in all_diags)
    if format is Format.text:
        typer.echo(f"{', '.join(str(s) for s in specs)}: {summary(all_diags)}", err=True)
    raise typer.Exit(EXIT_ERRORS if bad else EXIT_OK)


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (point your YAML editor at it for completion)."""
    from distillc.compiler.spec import Spec

    doc = Spec.model_json_schema()
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["$id"] = f"https://distillc.dev/schema/spec-v1-{__version__}.json"
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
def rules() -> None:
    """List every diagnostic code with its severity and title."""
    from distillc.compiler.registry import iter_codes

    for c in iter_codes():
        typer.echo(f"{c.code}  {c.severity.value:<7}  {c.title}")


@app.command()
def models() -> None:
    """List the model catalog."""
    from distillc.compiler.catalog import load_catalog

    for m in load_catalog().models.values():
        typer.echo(
            f"{m.name:<22} {m.family:<10} layers={m.num_layers:<3} d={m.emb_dim:<5} "
            f"vocab={m.vocab_size:<6} tokenizer={m.tokenizer} params={m.param_count() / 1e9:.2f}B"
        )


@app.command()
def accelerators() -> None:
    """List the accelerator catalog (xpk device names)."""
    from distillc.compiler.catalog import load_catalog

    for a in load_catalog().accelerators.values():
        typer.echo(f"{a.name:<22} {a.kind:<4} chips={a.chips:<5} hosts={a.hosts:<4} topology={a.topology:<8} hbm={a.hbm_gib:g}GiB")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"distillc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Print the version."),
) -> None:
    pass


def main() -> None:
    """Console entry point: usage errors exit 2; a broken pipe (`| head`) is not an error."""
    try:
        app()
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
