"""Cold start of `distillc validate specs/quickstart.yaml`: median wall time over N fresh processes.

    python bench/validate_startup.py              # 21 runs, table
    python bench/validate_startup.py -n 51 --importtime

Each run is a new interpreter (nothing cached in memory; .pyc files as installed), so the figure
is what a user waits for at the shell. The interpreter's own start (`python -c pass`) is measured
alongside as the floor, and so is the stack alone (pydantic, PyYAML and Typer doing the least they
do in validate), so the table shows what distillc itself adds. Runs are interleaved, so every row
sees the same host noise. Each run's CPU time (user + system) is shown beside its wall time: on a
busy machine the wall time includes waiting for a core, the CPU time does not. Target: <= 0.3 s
median on the 2-core development machine. With --importtime, one extra run under
`python -X importtime` lists the slowest top-level imports (cumulative).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.3


# The libraries `distillc validate` is built on, each doing the least it does there: one frozen
# pydantic model validated, a YAML document loaded with positions, a Typer command parsed and run.
# distillc's own cost is the difference between this and the validate row.
STACK = """
import os, sys
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
import typer
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
@app.command()
def validate(specs: list[str], strict: bool = False) -> None:
    import yaml
    from pydantic import BaseModel, ConfigDict
    class M(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        name: str
    M(name=yaml.compose("name: x").value[0][1].value)
sys.argv = ["stack", "validate", "spec.yaml"]
app()
"""


def _distillc() -> list[str]:
    """The installed console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("distillc")
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("distillc")
    if found:
        return [sys.executable, found]
    return [sys.executable, "-c", "import sys; from distillc.compiler.cli import main; sys.argv[0] = 'distillc'; main()"]


def _env(bytecode: bool) -> dict[str, str]:
    """The children's environment. With `bytecode`, modules run from compiled .pyc files, as after
    `pip install` (which compiles them): the cache goes to its own prefix, so the bench works where
    PYTHONDONTWRITEBYTECODE is set and never writes __pycache__ into the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NO_COLOR"] = "1"
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "distillc-bench-pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="distillc-nopyc-")  # empty: nothing cached
    return env


def _time(argv: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds (user + system of the child) of each run."""
    wall, cpu = [], []
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return wall, cpu


def _importtime(argv: list[str], top: int, env: dict[str, str]) -> list[tuple[int, int, str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], cwd=ROOT, capture_output=True, text=True, env=env)
    rows = []
    for line in proc.stderr.splitlines():
        fields = line[len("import time:") :].split("|") if line.startswith("import time:") else []
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header, or not an importtime line
        name = fields[2].rstrip()
        if len(name) - len(name.lstrip()) == 1:  # top level: one space, nested imports indent more
            rows.append((int(fields[1]), int(fields[0]), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=21)
    ap.add_argument("--spec", default="specs/quickstart.yaml")
    ap.add_argument("--importtime", action="store_true", help="also list the slowest top-level imports")
    ap.add_argument(
        "--no-bytecode", action="store_true", help="compile every module from source on every run (worst case)"
    )
    args = ap.parse_args()
    env = _env(bytecode=not args.no_bytecode)

    validate = [*_distillc(), "validate", args.spec]
    cases = [
        ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"]),
        ("the stack alone (pydantic+PyYAML+typer)", [sys.executable, "-c", STACK]),
        (f"distillc validate {args.spec}", validate),
    ]
    for _, argv in cases:
        _time(argv, 2, env)  # warm the OS file cache and write the .pyc files
    load = os.getloadavg()[0]
    print(f"{'command':<44} {'wall median':>11} {'min':>7} {'max':>7} {'cpu median':>11}  runs")
    # interleaved, one run of each case at a time, so that both see the same host noise
    samples: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label, _ in cases}
    for _ in range(args.runs):
        for label, argv in cases:
            wall, cpu = _time(argv, 1, env)
            samples[label][0].extend(wall)
            samples[label][1].extend(cpu)
    result = {}
    for label, _ in cases:
        wall, cpu = samples[label]
        result[label] = (statistics.median(wall), statistics.median(cpu))
        print(
            f"{label:<44} {statistics.median(wall):>10.3f}s {min(wall):>6.3f}s {max(wall):>6.3f}s "
            f"{statistics.median(cpu):>10.3f}s  {len(wall)}"
        )
    med, cpu_med = result[cases[-1][0]]
    verdict = "meets" if med <= TARGET_S else "misses"
    stack = result[cases[1][0]][0]
    print(
        f"\nvalidate cold start: {med:.3f} s wall median ({verdict} the {TARGET_S:.1f} s target), {cpu_med:.3f} s CPU; "
        f"distillc's own work {med - stack:.3f} s over its libraries' {stack:.3f} s; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start, "
        f"{'modules compiled from source' if args.no_bytecode else 'compiled bytecode, as installed'}"
    )
    if load > (os.cpu_count() or 1) * 0.5:
        print("note: the machine is busy; the CPU column (user + system time of the process) is what the run "
              "costs, the wall column includes waiting for a core")
    if args.importtime:
        print(f"\n{'slowest top-level imports':<48} {'cumul.':>8} {'self':>8}")
        for cum, self_us, name in _importtime(validate, 12, env):
            print(f"{name:<48} {cum / 1e6:>7.3f}s {self_us / 1e6:>7.3f}s")


if __name__ == "__main__":
    main()
