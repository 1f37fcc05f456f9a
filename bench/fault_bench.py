"""Injects faults into real runtime runs and prints what survived: fault, injections, survived, data lost.

    python bench/fault_bench.py [--kills 6] [--corruptions 4] [--disk-full 2] [--writers 3] [--seed 0]
                                [--json FILE]

Every run is `python -m distillc.runtime.main --config run.json` in its own process, on the tiny
byte-level models of the runtime tests (24 steps, a checkpoint every 4, a held-out evaluation at
the end). A reference run without faults gives the expected final held-out loss and the expected
metrics (each training step logged once). Then, for each fault:

- **kill -9**: the run is SIGKILLed at a random moment (start-up, training, a checkpoint save), then
  the same command is run again. Survived: exit 0, the final held-out loss equal to the reference's
  (the resumed run computes exactly what an uninterrupted one does), every step in metrics.jsonl
  exactly once.
- **corruption**: after a finished run, one byte of a random file of its newest checkpoint is
  flipped (or the file truncated to half), and a torn line with junk is appended to metrics.jsonl;
  the same command is run again. Survived: exit 0, the damaged checkpoint named and set aside, the
  run resumed from the newest intact one to the reference's result, metrics complete and readable.
- **disk full**: the run directory is on a tmpfs too small for the run (needs root for `mount`;
  skipped otherwise). Survived: exit 2 with one message naming the path and no traceback, no
  unfinished checkpoint left looking finished, every finished checkpoint intact; then the run
  directory is copied to a roomy disk and the same command finishes it to the reference's result.
- **two writers**: the same command started twice at once. Survived: exactly one exits 0, the
  other exits 2 naming the holder before writing anything, metrics hold every step once.

"data lost" counts the injections after which a step's metrics were missing or repeated, or the
final result differed from the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distillc.runtime.train import integrity, metrics  # noqa: E402
from tests.runtime_configs import make_config  # noqa: E402

STEPS, EVERY = 24, 4


def write_config(run_dir: Path, where: Path) -> Path:
    cfg = make_config(run_dir, steps=STEPS, checkpoint_every=EVERY, log_every=1, eval_batches=2)
    path = where / f"{run_dir.name}.json"
    path.write_text(cfg.model_dump_json())
    return path


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "distillc.runtime.main", "--config", str(config), "--no-progress"]


def run(config: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command(config), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in metrics.read_jsonl(run_dir / "metrics.jsonl") if r.get("split") == "train"]


def complete(run_dir: Path, expected: float) -> tuple[bool, str]:
    """Every step logged once and the reference's final held-out loss."""
    steps = train_steps(run_dir)
    if steps != list(range(1, STEPS + 1)) and steps != list(range(STEPS)):
        return False, f"train steps logged: {len(steps)} records, {len(set(steps))} distinct"
    got = metrics.final_eval(run_dir)
    if got != expected:
        return False, f"final held-out loss {got} != {expected}"
    return True, ""


def checkpoint_steps(run_dir: Path) -> list[Path]:
    d = run_dir / "checkpoints"
    return sorted((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) if d.exists() else []


def no_traceback(p: subprocess.CompletedProcess) -> bool:
    return "Traceback" not in p.stderr


# ---------------------------------------------------------------- faults

def fault_kill(work: Path, rng: random.Random, n: int, expected: float, duration: float) -> list[dict]:
    out = []
    for i in range(n):
        run_dir = work / f"kill{i}"
        cfg = write_config(run_dir, work)
        at = rng.uniform(0.2, 1.0) * duration
        p = subprocess.Popen(command(cfg), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=at)
            killed = False
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            killed = True
        before = len(checkpoint_steps(run_dir))
        r = run(cfg)
        ok, why = complete(run_dir, expected) if r.returncode == 0 else (False, f"exit {r.returncode}: {r.stderr[-300:]}")
        out.append(dict(fault="kill -9", detail=f"at {at:.1f} s ({'killed' if killed else 'had finished'}, "
                                                f"{before} checkpoints)", survived=ok and no_traceback(r),
                        lost=not ok, why=why))
    return out


def fault_corrupt(work: Path, rng: random.Random, n: int, expected: float, finished: Path) -> list[dict]:
    out = []
    for i in range(n):
        run_dir = work / f"corrupt{i}"
        shutil.copytree(finished, run_dir)
        cfg = write_config(run_dir, work)
        newest = checkpoint_steps(run_dir)[-1]
        files = sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0
                       and p.name != integrity.RECORD)
        victim = rng.choice(files)
        data = bytearray(victim.read_bytes())
        how = rng.choice(["flip", "truncate"])
        if how == "flip":
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = data[: len(data) // 2]
        victim.write_bytes(bytes(data))
        with open(run_dir / "metrics.jsonl", "ab") as f:
            f.write(b'{"step": 99, "spl\xff\xfejunk')
        r = run(cfg)
        named = victim.name in r.stderr or newest.name in r.stderr
        ok, why = complete(run_dir, expected) if r.returncode == 0 else (False, f"exit {r.returncode}: {r.stderr[-300:]}")
        out.append(dict(fault="corruption", detail=f"{how} {victim.relative_to(run_dir)}",
                        survived=ok and no_traceback(r), lost=not ok, why=why or ("" if named else "damage not named")))
    return out


def disk_kib(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) // 1024


def fault_disk_full(work: Path, n: int, expected: float, full_kib: int) -> list[dict]:
    out = []
    for i in range(n):
        mnt = work / f"tmpfs{i}"
        mnt.mkdir()
        size = max(64, int(full_kib * (0.25 + 0.5 * i / max(n - 1, 1))))  # KiB: fills part-way through the run
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mnt)], capture_output=True)
        if m.returncode != 0:
            return [dict(fault="disk full", detail="skipped: mount -t tmpfs needs root", survived=None, lost=None,
                         why=m.stderr.decode()[-200:])]
        try:
            run_dir = mnt / "run"
            cfg = write_config(run_dir, work)
            r = run(cfg)
            one_message = r.returncode == 2 and no_traceback(r) and "No space left on device" in r.stderr
            tmp_left = [p.name for p in (run_dir / "checkpoints").glob("*") if not p.name.isdigit()] \
                if (run_dir / "checkpoints").exists() else []
            intact = all(integrity.verify(p) for p in checkpoint_steps(run_dir))
            roomy = work / f"diskfull{i}"
            shutil.copytree(run_dir, roomy)
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        cfg2 = write_config(roomy, work)
        r2 = run(cfg2)
        ok, why = complete(roomy, expected) if r2.returncode == 0 else (False, f"exit {r2.returncode}")
        why = why or ("" if one_message else f"first run: exit {r.returncode}, {r.stderr.count('Traceback')} tracebacks")
        out.append(dict(fault="disk full", detail=f"tmpfs {size} KiB: exit {r.returncode}, "
                                                  f"{len(r.stderr.splitlines())} stderr lines",
                        survived=one_message and not tmp_left and intact and ok, lost=not ok, why=why,
                        stderr=r.stderr.splitlines()[-20:]))
    return out


def fault_two_writers(work: Path, n: int, expected: float) -> list[dict]:
    out = []
    for i in range(n):
        run_dir = work / f"writers{i}"
        cfg = write_config(run_dir, work)
        procs = [subprocess.Popen(command(cfg), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=900), p.stderr.read() if p.stderr else "") for p in procs]
        codes = sorted(c for c, _ in results)
        refused = [e for c, e in results if c == 2]
        ok, why = complete(run_dir, expected)
        survived = codes == [0, 2] and "is in use by process" in refused[0] and ok
        out.append(dict(fault="two writers", detail=f"exits {codes}", survived=survived, lost=not ok,
                        why=why or ("" if survived else f"exits {codes}")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--corruptions", type=int, default=4)
    ap.add_argument("--disk-full", type=int, default=2)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="distillc-faults-"))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    t0 = time.time()
    ref_dir = work / "reference"
    r = run(write_config(ref_dir, work))
    duration = time.time() - t0
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return 1
    expected = metrics.final_eval(ref_dir)
    assert expected is not None
    rows = (fault_kill(work, rng, args.kills, expected, duration)
            + fault_corrupt(work, rng, args.corruptions, expected, ref_dir)
            + fault_disk_full(work, args.disk_full, expected, disk_kib(ref_dir))
            + fault_two_writers(work, args.writers, expected))
    print(f"reference run: {duration:.1f} s, {disk_kib(ref_dir)} KiB on disk, final held-out CE {expected:.6f}\n")
    print(f"{'fault':<12} {'injections':>10} {'survived':>9} {'data lost':>10}")
    for fault in ("kill -9", "corruption", "disk full", "two writers"):
        mine = [x for x in rows if x["fault"] == fault and x["survived"] is not None]
        skipped = [x for x in rows if x["fault"] == fault and x["survived"] is None]
        if skipped and not mine:
            print(f"{fault:<12} {'skipped':>10}   ({skipped[0]['detail']})")
            continue
        print(f"{fault:<12} {len(mine):>10} {sum(x['survived'] for x in mine):>9} {sum(x['lost'] for x in mine):>10}")
    print()
    for x in rows:
        if x["survived"] is False:
            print(f"  FAILED {x['fault']}: {x['detail']}: {x['why']}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(reference_s=duration, rows=rows), indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(x["survived"] is not False for x in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
