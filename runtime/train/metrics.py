"""Metrics: (sum, count) accumulation, and the sinks (metrics.jsonl, TensorBoard, the terminal).

Every token-weighted metric travels as a (sum, count) pair. Inside the jitted step the sums run
over the global batch (XLA reduces across devices and hosts), and here a logging window adds the
pairs of its steps, so a window's value is sum(sums) / sum(counts): an unbiased token mean however
many valid tokens each step had. Perplexities are exp of the reduced cross-entropies (never a mean
of per-step perplexities). Schedule values (alpha, temperature, beta, learning rate) are the value
at the window's last step.

Only process 0 writes; other processes keep the same accumulators (cheap) and write nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# name in the jsonl -> TensorBoard tag. The distill/* names follow the guide's monitoring table.
TAGS = {
    "soft_loss": "distill/soft_loss",
    "hard_loss": "distill/hard_loss",
    "teacher_ce": "distill/teacher_loss",
    "student_perplexity": "distill/student_perplexity",
    "teacher_perplexity": "distill/teacher_perplexity",
    "kl_T": "distill/kl_div_T",
    "kl_T1": "distill/kl_div_T1",
    "feature_loss": "distill/out_proj_feature_loss",
    "total_loss": "distill/total_loss",
    "alpha": "distill/alpha",
    "temperature": "distill/temperature",
    "beta": "distill/beta",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_sec": "perf/tokens_per_sec",
    "step_time_s": "perf/step_time_s",
    "mfu": "perf/mfu",
    "packing_efficiency": "data/packing_efficiency",
}

# Derived metrics: name -> the cross-entropy whose exp it is.
PERPLEXITY_OF = {"student_perplexity": "hard_loss", "teacher_perplexity": "teacher_ce"}


class Window:
    """Accumulates (sum, count) pairs and last-value scalars over a logging window."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.steps = 0

    def add(self, pairs: Mapping[str, tuple[Any, Any]], scalars: Mapping[str, Any] = {}) -> None:
        for k, (s, c) in pairs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(s)
            self.counts[k] = self.counts.get(k, 0.0) + float(c)
        for k, v in scalars.items():
            self.last[k] = float(v)
        self.steps += 1

    def reduce(self) -> dict[str, float]:
        """sum(sums) / sum(counts) per metric, exp of the cross-entropies, then the scalars."""
        out = {k: (self.sums[k] / self.counts[k] if self.counts[k] else float("nan")) for k in self.sums}
        for ppl, ce in PERPLEXITY_OF.items():
            if ce in out:
                out[ppl] = _safe_exp(out[ce])
        out.update(self.last)
        return out


def reduce_pairs(pairs_list) -> dict[str, float]:
    """The reduction of a list of {name: (sum, count)} dicts (devices, hosts or steps alike)."""
    w = Window()
    for p in pairs_list:
        w.add(p)
    return w.reduce()


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


class MetricsWriter:
    """metrics.jsonl (one JSON object per line, flushed per line) and TensorBoard event files."""

    def __init__(self, metrics_file: str, tensorboard_dir: str, *, enabled: bool = True,
                 keep_through: int = 0, finished: bool = False):
        """Appends to `metrics_file` after cutting it back to `keep_through`, the step training
        (re)starts from, so no step appears twice (see `cut_back`)."""
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        cut_back(metrics_file, keep_through, finished)
        self._jsonl = open(metrics_file, "a", buffering=1)  # line-buffered: whole lines reach the file
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(logdir=tensorboard_dir, flush_secs=10)

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record.update({k: _json_float(v) for k, v in values.items()})
        assert self._jsonl is not None and self._tb is not None  # opened when enabled
        self._jsonl.write(json.dumps(record) + "\n")
        for k, v in values.items():
            tag = TAGS.get(k, f"other/{k}")
            if split != "train":
                tag = f"{split}/{tag.split('/', 1)[1]}"
            if math.isfinite(v):
                self._tb.add_scalar(tag, v, global_step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _json_float(v: float):
    v = float(v)
    return v if math.isfinite(v) else str(v)  # "nan" / "inf": valid JSON, still visible


def cut_back(path: str | os.PathLike, step: int, finished: bool = False) -> int:
    """Drops the records a run restarting at `step` will write again: every step after it and, when
    the run is `finished` (its final evaluation is redone), the evaluation at `step` too, and any torn
    line (a writer killed mid-line, or junk), said on stderr. Rewritten through a temporary file,
    only when something is dropped; returns the number of records dropped."""
    p = Path(path)
    if not p.exists():
        return 0
    records, torn = scan_jsonl(p)
    kept = [r for r in records if _kept(r, step, finished)]
    if torn:
        print(f"note: {p}: dropped {len(torn)} torn line(s) (line {', '.join(map(str, torn[:5]))}): "
              "not whole JSON records, as a writer killed mid-line leaves", file=sys.stderr)
    if len(kept) < len(records) or torn:
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(p)
    return len(records) - len(kept)


def _kept(record: dict, step: int, finished: bool) -> bool:
    at = record.get("step")
    if not isinstance(at, int):
        return True
    return at < step or (at == step and (record.get("split") == "train" or not finished))


def scan_jsonl(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """A metrics.jsonl's records, and the numbers of the lines that are not one (a torn last line
    from a killed writer, bytes that are not UTF-8, junk): read as bytes, line by line, so one bad
    line never hides the others."""
    records, torn = [], []
    for i, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn.append(i)
    return records, torn


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; torn lines are skipped (`scan_jsonl` names them)."""
    return scan_jsonl(path)[0]


def final_eval(run_dir: str | os.PathLike, metric: str = "hard_loss") -> float | None:
    """`metric` of a run's last held-out evaluation (metrics.jsonl, split "eval"); None when the run
    has none yet (not finished, or evaluation never ran)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    evals = [r for r in read_jsonl(path) if r.get("split") == "eval" and isinstance(r.get(metric), (int, float))]
    return float(max(evals, key=lambda r: r["step"])[metric]) if evals else None


def results_csv(run_dirs: list[str], metric: str = "hard_loss") -> tuple[str, list[str]]:
    """The `name,metric` CSV that `distillc ablate --best` reads: one row per run directory (named
    like its cell: runs go to <train.output_dir>/<name>) that has a final evaluation, and the
    directories left out."""
    rows, missing = ["name,metric"], []
    for d in run_dirs:
        value = final_eval(d, metric)
        if value is None:
            missing.append(str(d))
        else:
            rows.append(f"{Path(d).name},{value:.6g}")
    return "\n".join(rows) + "\n", missing


def main(argv: list[str] | None = None) -> int:
    """`python -m distillc.runtime.train.metrics RUN_DIR... > results.csv` (see docs/ablate.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distillc.runtime.train.metrics",
                                     description="Each run's final held-out metric as the CSV `distillc ablate --best` reads.")
    parser.add_argument("run_dirs", nargs="+", help="run directories (<train.output_dir>/<cell name>)")
    parser.add_argument("--metric", default="hard_loss", help="an eval metric of metrics.jsonl (default hard_loss: "
                        "the student's held-out cross-entropy; lower is better)")
    args = parser.parse_args(argv)
    text, missing = results_csv(args.run_dirs, args.metric)
    sys.stdout.write(text)
    for d in missing:
        print(f"note: {d}: no final evaluation with {args.metric} yet (not finished?); left out", file=sys.stderr)
    return 0


class Progress:
    """A progress bar on a terminal (rich) when `bar` is set, else one plain line per logging window
    (step, losses, tokens/s, ETA): what a log file or a pipe can show."""

    def __init__(self, title: str, total: int, start: int = 0, *, enabled: bool = True, bar: bool = True):
        self.enabled = enabled
        self.total = total
        self.title = title
        self._bar = None
        if enabled and bar and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(title, total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, values: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        info = _short(values) if values else None
        if self._bar is not None:
            if info is None:
                self._bar.update(self._task, completed=step)
            else:
                self._bar.update(self._task, completed=step, info=info)
        elif info is not None:
            eta = _eta((self.total - step) * values["step_time_s"]) if values and "step_time_s" in values else ""
            print(f"{self.title} step {step}/{self.total}  {info}{eta}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _short(v: Mapping[str, float]) -> str:
    parts = []
    for k, label in (("total_loss", "loss"), ("hard_loss", "ce"), ("kl_T1", "kl"),
                     ("tokens_per_sec", "tok/s"), ("packing_efficiency", "pack")):
        if k in v and np.isfinite(v[k]):
            fmt = {"tokens_per_sec": f"{v[k]:,.0f}", "packing_efficiency": f"{v[k]:.1%}"}.get(k, f"{v[k]:.4g}")
            parts.append(f"{label} {fmt}")
    return "  ".join(parts)


def _eta(seconds: float) -> str:
    """`  ETA 1m05s` (nothing once done or when the step time is unknown)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return ""
    m, s = divmod(int(round(seconds)), 60)
    return f"  ETA {m}m{s:02d}s" if m else f"  ETA {s}s"


if __name__ == "__main__":
    sys.exit(main())
