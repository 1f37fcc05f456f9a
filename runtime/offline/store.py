"""The offline teacher cache on disk: ArrayRecord shards, a manifest, and a checked reader.

Layout of `offline.data_dir`:

    manifest.json                    written last (atomically), only when every shard is complete
    progress-<split>-p<P>.json       one per writing process: its finished shards (atomic rewrites)
    <split>-p<P>-s<C>.arecord        shard C of process P; written as .<name>.tmp, renamed when full

Splits: `train` (the first train.steps global batches of the training stream, in order) and
`eval` (the held-out batches, padded rows included). One record = one sequence (one row of a
global batch). Global record r of a split is row r % G of global batch r // G (G = global batch
size at save time); with P writing processes of b = G / P rows each, it lives in process
p = (r % G) // b's shard (r // G) // batches_per_shard. The reader maps indices, so training may
use any process count.

A record (little-endian; `RecordSpec`):

    header  magic b"DCTK", format version u16, kind u8 (0 top_k, 1 random), value dtype u8
            (0 float32, 1 bfloat16), seq_len u32, slots u32, grid u32, record index u64,
            sha256 of the sequence (inputs, labels, mask bytes) 32 bytes
    body    inputs int32[L] | labels int32[L] | mask uint8[L] | segment_ids int32[L] |
            positions int32[L] | indices int32[L, S] |
            values dtype[L, S] | counts uint16[L, S] (random only) | lse f32[L, G] |
            lse_slope f32[L, G] | label_logit f32[L]

`values` are teacher logits minus the position's largest logit (log-probabilities are
shift-invariant; centring keeps bfloat16 rounding relative to the gaps, not to |z|). For top_k
caches `lse[g] = log sum_{j outside the top-S} exp(beta_g z_j)` and `lse_slope[g]` its beta
derivative (the tail-softmax mean of z); for random caches the same over the whole vocabulary.
`beta_g = 1 / temperatures[g]` of the manifest (`temperature_grid`). `label_logit` is the
(centred) teacher logit of the label token, so the teacher's CE is exact offline.

Integrity: each shard's sha256 and record count are in its process's progress file and in the
manifest; the reader checks the manifest against the run config (`check_compatible`), every shard
against its sha256 before reading it (`verify`), and each record's index and sequence hash as it
decodes it. Any mismatch raises `CacheError` naming the file, both values and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from distillc.runtime.config import DataConfig, RuntimeConfig, Schedule
from distillc.runtime.file_digest import file_sha256

FORMAT = "distillc-topk"
FORMAT_VERSION = 2  # 2: records carry segment_ids and positions (packed documents stay apart offline too)
MAGIC = b"DCTK"
# One record per chunk (random access by Grain), zstd for the index/token bytes. Fixed here so the
# same input always gives the same bytes; recorded in the manifest.
WRITER_OPTIONS = "group_size:1,zstd:3"
MAX_BETA_SPACING = 0.125  # inverse-temperature spacing of the cached grid (error bound in offline/losses.py)
DEFAULT_SHARD_BYTES = 64 << 20
SPLITS = ("train", "eval")
SAMPLER = "inverse-cdf-v1"  # offline/save.sample_tokens; the bytes of a random cache depend on it

_HEADER = struct.Struct("<4sHBBIIIQ32s")
_KINDS = {"top_k": 0, "random": 1}
_DTYPES = {"float32": 0, "bfloat16": 1}


class CacheError(RuntimeError):
    """The cache is missing, incomplete, corrupted or made for other settings. The message names
    the file, the two values that disagree, and what to do."""


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float32)


def sequence_sha256(inputs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> bytes:
    """The content hash of one sequence: sha256 of its int32 inputs, int32 labels, uint8 mask."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(inputs, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.digest()


# ---------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    kind: str  # "top_k" | "random"
    seq_len: int
    slots: int  # k (top_k) or num_samples (random)
    grid: int  # number of cached temperatures
    value_dtype: str  # "float32" | "bfloat16"

    def fields(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
        L, S, G = self.seq_len, self.slots, self.grid
        out = [
            ("inputs", np.dtype("<i4"), (L,)),
            ("labels", np.dtype("<i4"), (L,)),
            ("mask", np.dtype(np.uint8), (L,)),
            ("segment_ids", np.dtype("<i4"), (L,)),
            ("positions", np.dtype("<i4"), (L,)),
            ("indices", np.dtype("<i4"), (L, S)),
            ("values", _np_dtype(self.value_dtype), (L, S)),
        ]
        if self.kind == "random":
            out.append(("counts", np.dtype("<u2"), (L, S)))
        out += [
            ("lse", np.dtype("<f4"), (L, G)),
            ("lse_slope", np.dtype("<f4"), (L, G)),
            ("label_logit", np.dtype("<f4"), (L,)),
        ]
        return out

    @property
    def nbytes(self) -> int:
        return self.header_bytes + sum(dt.itemsize * math.prod(shape) for _, dt, shape in self.fields())

    @property
    def header_bytes(self) -> int:
        return _HEADER.size

    @property
    def slot_bytes(self) -> int:
        """Bytes of one (token, slot) entry: id, value (and count for random sampling)."""
        return self._itemsizes("indices", "values", "counts")

    @property
    def token_bytes(self) -> int:
        """Bytes per token outside the slots and the grid: input, label, mask, segment id, position, label logit."""
        return self._itemsizes("inputs", "labels", "mask", "segment_ids", "positions", "label_logit")

    @property
    def grid_bytes(self) -> int:
        """Bytes per (token, cached temperature): the tail log-normalizer and its slope."""
        return self._itemsizes("lse", "lse_slope")

    def _itemsizes(self, *names: str) -> int:
        """The summed item sizes of the named fields (the compiler's storage figures derive from these)."""
        return sum(dt.itemsize for name, dt, _ in self.fields() if name in names)

    def encode(self, index: int, rec: Mapping[str, np.ndarray]) -> bytes:
        digest = sequence_sha256(rec["inputs"], rec["labels"], rec["mask"])
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, _KINDS[self.kind], _DTYPES[self.value_dtype],
                            self.seq_len, self.slots, self.grid, index, digest)
        parts = [head]
        for name, dt, shape in self.fields():
            a = np.asarray(rec[name])
            if a.shape != shape:
                raise ValueError(f"record field {name!r} has shape {a.shape}, expected {shape}")
            parts.append(np.ascontiguousarray(a.astype(dt, copy=False)).tobytes())
        return b"".join(parts)

    def decode(self, data: bytes, *, where: str, expect_index: Optional[int] = None) -> dict[str, np.ndarray]:
        if len(data) != self.nbytes:
            raise CacheError(f"{where}: record of {len(data)} bytes, expected {self.nbytes}; the shard is "
                             "damaged or from another cache: re-run the save stage")
        magic, version, kind, dtype, L, S, G, index, digest = _HEADER.unpack_from(data, 0)
        if (magic, version, kind, dtype, L, S, G) != (MAGIC, FORMAT_VERSION, _KINDS[self.kind],
                                                      _DTYPES[self.value_dtype], self.seq_len, self.slots, self.grid):
            raise CacheError(f"{where}: record header does not match the manifest's record format; "
                             "re-run the save stage into an empty offline.data_dir")
        if expect_index is not None and index != expect_index:
            raise CacheError(f"{where}: holds record {index} where record {expect_index} belongs "
                             "(lost or duplicated records); re-run the save stage")
        out, off = {}, _HEADER.size
        for name, dt, shape in self.fields():
            n = dt.itemsize * math.prod(shape)
            out[name] = np.frombuffer(data, dtype=dt, count=math.prod(shape), offset=off).reshape(shape)
            off += n
        out["mask"] = out["mask"].astype(np.bool_)
        if sequence_sha256(out["inputs"], out["labels"], out["mask"]) != digest:
            raise CacheError(f"{where}: record {index}'s tokens do not match their sha256; the shard is "
                             "corrupted: delete it and re-run the save stage (finished shards are kept)")
        out["index"] = np.asarray(index, np.int64)
        out["sha256"] = np.frombuffer(digest, np.uint8)
        return out


# ---------------------------------------------------------------- what the cache is for


def temperature_grid(schedule: Schedule, capture_temperature: float,
                     max_spacing: float = MAX_BETA_SPACING) -> tuple[float, ...]:
    """The temperatures whose log-normalizers are cached, sorted by increasing beta = 1/T.

    T = 1 (teacher CE), the capture temperature, every value the schedule names (constant start,
    linear/cosine endpoints, piecewise points), and between the schedule's bounds enough points
    that neighbours differ by at most `max_spacing` in beta. A constant schedule gets no
    interpolation at all: every temperature it takes is on the grid.
    """
    lo, hi = schedule.bounds()
    named = {1.0, float(capture_temperature), lo, hi}
    if schedule.kind == "piecewise":
        named |= {float(v) for _, v in schedule.points}
    betas = {1.0 / t for t in named}
    if hi > lo:
        b_lo, b_hi = 1.0 / hi, 1.0 / lo
        n = max(1, math.ceil((b_hi - b_lo) / max_spacing - 1e-9))
        betas |= {b_lo + (b_hi - b_lo) * i / n for i in range(n + 1)}
    ordered = sorted({round(b, 9) for b in betas})
    return tuple(float(f"{1.0 / b:.9g}") for b in ordered)


def grid_betas(temperatures: Sequence[float]) -> np.ndarray:
    return np.asarray([1.0 / t for t in temperatures], np.float64)


def tokenizer_fingerprint(name: str) -> dict[str, str]:
    """Identity of data.tokenizer (data/tokenizers.tokenizer_fingerprint: the file read in blocks, so a
    GGUF checkpoint named as the tokenizer is never held whole), a missing file as a CacheError."""
    from distillc.runtime.data.tokenizers import TokenizerError, tokenizer_fingerprint as fingerprint

    try:
        return fingerprint(name)
    except TokenizerError:
        raise CacheError(f"data.tokenizer {name!r} does not exist; cannot fingerprint it") from None


def prepared_digest(data: DataConfig) -> Optional[str]:
    """The digest of the prepared data a config reads (data.prepared, or a prepared data.source), or
    None when it streams its sources: the cache's records are those rows, so the two must match."""
    from distillc.runtime.data.prepared import Prepared, prepared_dir

    where = prepared_dir(data)
    return None if where is None else Prepared(where).digest


def checkpoint_fingerprint(path: Optional[str]) -> Optional[str]:
    """sha256 of an Orbax checkpoint's commit record (_CHECKPOINT_METADATA, which carries its commit
    time) and _METADATA: changes whenever the checkpoint is written again. None when there is no
    such file (no checkpoint, or a layout this does not know)."""
    if path is None:
        return None
    root = _epath(path)
    h, found = hashlib.sha256(), False
    for name in ("_CHECKPOINT_METADATA", "_METADATA"):
        f = root / name
        if f.exists():
            h.update(name.encode() + b"\0" + f.read_bytes())
            found = True
    return h.hexdigest() if found else None


def record_spec(config: RuntimeConfig) -> RecordSpec:
    off = _offline(config)
    slots = off.num_samples if off.sampling == "random" else off.top_k
    grid = len(temperature_grid(config.loss.temperature, off.capture_temperature))
    return RecordSpec(off.sampling, config.data.seq_len, slots, grid, off.dtype)


def provenance(config: RuntimeConfig) -> dict[str, Any]:
    """What the cached numbers depend on; the reader compares it with the training config."""
    from distillc import __version__

    off = _offline(config)
    teacher = config.teacher
    return {
        "teacher_model": teacher.arch.name,
        "teacher_checkpoint": teacher.checkpoint,
        "teacher_checkpoint_sha256": checkpoint_fingerprint(teacher.checkpoint),
        "teacher_weight_dtype": teacher.weight_dtype,
        "teacher_init_seed": teacher.init_seed if teacher.checkpoint is None else None,
        "tokenizer": tokenizer_fingerprint(config.data.tokenizer),
        "model_tokenizer": teacher.arch.tokenizer,
        "vocab_size": config.loss.compare_vocab,
        "sampling": off.sampling,
        "k": off.top_k if off.sampling == "top_k" else None,
        "num_samples": off.num_samples if off.sampling == "random" else None,
        "sample_seed": config.train.seed if off.sampling == "random" else None,
        "sampler": SAMPLER if off.sampling == "random" else None,
        "capture_temperature": off.capture_temperature,
        "temperatures": list(temperature_grid(config.loss.temperature, off.capture_temperature)),
        "dtype": off.dtype,
        "data": {
            "source": config.data.source,
            "seq_len": config.data.seq_len,
            "packing": config.data.packing,
            "shuffle_seed": config.data.shuffle_seed,
            "eval_fraction": config.data.eval_fraction,
            "prepared": prepared_digest(config.data),
        },
        "distillc_version": __version__,
    }


PROVENANCE_KEYS = (
    "teacher_model", "teacher_checkpoint", "teacher_checkpoint_sha256", "teacher_weight_dtype", "teacher_init_seed",
    "tokenizer", "model_tokenizer", "vocab_size", "sampling", "k", "num_samples", "sample_seed", "sampler",
    "capture_temperature", "temperatures", "dtype", "data", "distillc_version",
)


def _offline(config: RuntimeConfig):
    if config.offline is None:
        raise CacheError(f"run {config.name!r} has no offline section (mode {config.mode!r}); "
                         "the top-k cache needs mode: offline")
    return config.offline


# ---------------------------------------------------------------- files


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _epath(path):
    from etils import epath

    return epath.Path(path)


def _write_json_atomic(path, obj) -> None:
    """Local: a temporary file renamed over the target. Remote (gs://): one object write, which the
    store makes visible atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    path = _epath(path)
    if _is_remote(str(path)):
        path.write_text(text)
        return
    tmp = Path(str(path.parent / f".{path.name}.tmp"))
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, str(path))


def shard_name(split: str, process: int, shard: int) -> str:
    return f"{split}-p{process:05d}-s{shard:05d}.arecord"


def progress_name(split: str, process: int) -> str:
    return f"progress-{split}-p{process:05d}.json"


def _read_json(path) -> Optional[dict]:
    p = _epath(path)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{p}: not valid JSON ({e.msg}); delete it and re-run the save stage") from e
    except UnicodeDecodeError as e:  # a damaged file: bytes that are not even text
        raise CacheError(f"{p}: not UTF-8 text (byte {e.start}); the file is damaged: delete it and re-run the "
                         "save stage") from e


# ---------------------------------------------------------------- writer


@dataclasses.dataclass(frozen=True)
class Layout:
    """How global records are spread over the writing processes' shards."""

    global_batch_size: int
    process_count: int
    batches_per_shard: int

    @property
    def rows_per_process(self) -> int:
        return self.global_batch_size // self.process_count

    def locate(self, record: int) -> tuple[int, int, int]:
        """global record -> (process, shard, position in the shard)."""
        g, b = self.global_batch_size, self.rows_per_process
        n, o = divmod(record, g)
        p, j = divmod(o, b)
        c, nb = divmod(n, self.batches_per_shard)
        return p, c, nb * b + j

    def shards(self, batches: int) -> int:
        return -(-batches // self.batches_per_shard)

    def shard_batches(self, shard: int, batches: int) -> range:
        return range(shard * self.batches_per_shard, min((shard + 1) * self.batches_per_shard, batches))


def choose_batches_per_shard(spec: RecordSpec, rows_per_process: int, target_bytes: int = DEFAULT_SHARD_BYTES) -> int:
    return max(1, target_bytes // max(1, spec.nbytes * rows_per_process))


class SplitWriter:
    """One process's writer for one split: whole shards, each renamed into place when complete.

    `resume()` returns the first global batch still to compute: shards listed in this process's
    progress file whose sha256 still matches are kept; everything after the first shard that is
    missing or damaged is redone (bytes are deterministic, so redoing a shard rewrites the same
    bytes). Records are added one global batch at a time, in order.
    """

    def __init__(self, data_dir: str, split: str, *, process: int, layout: Layout, spec: RecordSpec,
                 batches: int, provenance: Mapping[str, Any], log=print):
        self.dir = _epath(data_dir)
        self.split, self.process, self.layout, self.spec = split, process, layout, spec
        self.batches = batches
        self.header = {"format": FORMAT, "format_version": FORMAT_VERSION, "provenance": dict(provenance),
                       "layout": dataclasses.asdict(layout), "record": dataclasses.asdict(spec),
                       "writer_options": WRITER_OPTIONS, "split": split, "process": process, "batches": batches}
        self.done: list[dict] = []
        self._writer: Any = None  # the open shard's ArrayRecordWriter, between _open and _finish
        self._tmp: Optional[Path] = None
        self._shard: Optional[int] = None
        self._next_batch = 0
        self._log = log

    @property
    def progress_path(self):
        return self.dir / progress_name(self.split, self.process)

    def resume(self) -> int:
        self.dir.mkdir(parents=True, exist_ok=True)
        prog = _read_json(self.progress_path)
        kept: list[dict] = []
        if prog is not None:
            mine = {k: v for k, v in prog.items() if k != "shards"}
            if mine != self.header:
                diff = _first_difference(mine, self.header)
                raise CacheError(
                    f"{self.progress_path}: an unfinished save for other settings ({diff}); "
                    f"point offline.data_dir at an empty directory or delete {self.dir}")
            for entry in prog["shards"]:
                path = self.dir / entry["file"]
                if not path.exists():
                    self._log(f"topk cache: {path} is missing; redoing it and what follows")
                    break
                sha, size = file_sha256(path)
                if (sha, size) != (entry["sha256"], entry["bytes"]):
                    self._log(f"topk cache: {path} does not match its recorded sha256/size; redoing it")
                    break
                kept.append(entry)
        self.done = kept
        for stale in self.dir.glob(f".{self.split}-p{self.process:05d}-s*.tmp"):
            stale.unlink()
        self._write_progress()
        self._next_batch = len(kept) * self.layout.batches_per_shard
        return min(self._next_batch, self.batches)

    def add_batch(self, batch_index: int, records: Sequence[bytes]) -> None:
        if batch_index != self._next_batch:
            raise RuntimeError(f"{self.split}: batch {batch_index} given, batch {self._next_batch} expected")
        if len(records) != self.layout.rows_per_process:
            raise RuntimeError(f"{len(records)} rows given, {self.layout.rows_per_process} per process")
        shard = batch_index // self.layout.batches_per_shard
        if self._writer is None:
            self._open(shard)
        writer = self._writer
        for rec in records:
            writer.write(rec)
        self._next_batch += 1
        if self._next_batch == self.layout.shard_batches(shard, self.batches).stop:
            self._finish()

    def complete(self) -> bool:
        return self._next_batch >= self.batches and self._writer is None

    def _open(self, shard: int) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        name = shard_name(self.split, self.process, shard)
        self._shard = shard
        if _is_remote(str(self.dir)):
            import tempfile

            self._tmp = Path(tempfile.mkdtemp(prefix="distillc-topk-")) / name
        else:
            self._tmp = Path(str(self.dir / f".{name}.tmp"))
        self._writer = ArrayRecordWriter(str(self._tmp), WRITER_OPTIONS)
        if not self._writer.ok():
            raise CacheError(f"cannot open {self._tmp} for writing")

    def _finish(self) -> None:
        assert self._tmp is not None and self._shard is not None  # set by _open
        self._writer.close()
        self._writer = None
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        sha, size = file_sha256(self._tmp)
        name = shard_name(self.split, self.process, self._shard)
        final = self.dir / name
        if _is_remote(str(self.dir)):
            final.write_bytes(Path(self._tmp).read_bytes())
            self._tmp.unlink()
        else:
            os.replace(self._tmp, str(final))
        rows = self.layout.rows_per_process
        records = len(self.layout.shard_batches(self._shard, self.batches)) * rows
        self.done.append({"file": name, "shard": self._shard, "records": records, "bytes": size, "sha256": sha})
        self._write_progress()

    def _write_progress(self) -> None:
        _write_json_atomic(self.progress_path, dict(self.header, shards=self.done))

    def abort(self) -> None:
        """Drops the open (partial) shard; the next `resume()` redoes it."""
        if self._writer is not None and self._tmp is not None:
            self._writer.close()
            self._writer = None
            Path(self._tmp).unlink(missing_ok=True)


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'value'}: {a!r} vs {b!r}"


def finalize(data_dir: str, splits: Mapping[str, int], process_count: int) -> dict:
    """Merges the processes' progress files into manifest.json (process 0, after every writer is done)."""
    d = _epath(data_dir)
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": True, "splits": {}}
    for split, batches in splits.items():
        shards: list[dict[str, Any]] = []
        header: Optional[dict[str, Any]] = None
        for p in range(process_count):
            prog = _read_json(d / progress_name(split, p))
            if prog is None:
                raise CacheError(f"{d / progress_name(split, p)} is missing: process {p} has not finished its "
                                 "save; re-run the save stage (finished shards are kept)")
            h = {k: v for k, v in prog.items() if k not in ("shards", "process")}
            if header is None:
                header = h
            elif h != header:
                raise CacheError(f"{d}: processes 0 and {p} saved with different settings "
                                 f"({_first_difference(header, h)}); delete the directory and re-run")
            layout = Layout(**prog["layout"])
            if len(prog["shards"]) != layout.shards(batches):
                raise CacheError(f"{d / progress_name(split, p)} lists {len(prog['shards'])} of "
                                 f"{layout.shards(batches)} shards; re-run the save stage to finish it")
            shards += [dict(s, process=p) for s in prog["shards"]]
        assert header is not None  # process_count >= 1
        for k in ("provenance", "layout", "record", "writer_options"):
            if k in manifest and manifest[k] != header[k]:
                raise CacheError(f"{d}: splits saved with different {k}; delete the directory and re-run")
            manifest[k] = header[k]
        manifest["splits"][split] = {"batches": batches, "records": batches * header["layout"]["global_batch_size"],
                                     "shards": shards}
    _write_json_atomic(d / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------- reader


def _check_counts(splits: Mapping[str, Any], global_batch_size: int) -> None:
    """The manifest's counts agree with each other: records = batches x global batch, and the shards'
    records add up to them (an edited count would otherwise surface mid-training)."""
    for split, info in splits.items():
        records, batches = int(info["records"]), int(info["batches"])
        in_shards = sum(int(s["records"]) for s in info["shards"])
        if records != batches * global_batch_size or in_shards != records:
            raise CacheError(f"split {split!r} claims {records} records in {batches} batches of {global_batch_size}, "
                             f"its shards hold {in_shards}")
        for s in info["shards"]:
            if not (isinstance(s["file"], str) and isinstance(s["sha256"], str) and int(s["bytes"]) >= 0):
                raise CacheError(f"split {split!r}: shard entry {s!r} is malformed")


class TopKCache:
    """A finished cache: its manifest, checks against a run config, and random access by record."""

    def __init__(self, data_dir: str):
        self.dir = _epath(data_dir)
        path = self.dir / "manifest.json"
        m = _read_json(path)
        if m is None:
            partial = list(self.dir.glob("progress-*.json")) if self.dir.exists() else []
            what = "an unfinished save (progress files, no manifest)" if partial else "no cache"
            raise CacheError(f"{path} not found: {self.dir} holds {what}; run the save stage first "
                             "(`distillc launch SPEC --local` runs it; on a cluster the <name>-topk workload)")
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{path}: format {m.get('format')!r} v{m.get('format_version')}, this distillc "
                             f"reads {FORMAT!r} v{FORMAT_VERSION}; re-run the save stage with this version")
        if not m.get("complete"):
            raise CacheError(f"{path}: the cache is marked incomplete; re-run the save stage to finish it")
        missing = sorted(set(PROVENANCE_KEYS) - set(m.get("provenance", {})))
        if missing:
            raise CacheError(f"{path}: provenance lacks {', '.join(missing)} (written by another distillc); "
                             "re-run the save stage into an empty offline.data_dir")
        self.manifest = m
        self.provenance = m["provenance"]
        try:
            self.layout = Layout(**m["layout"])
            self.spec = RecordSpec(**m["record"])
            self.temperatures = tuple(self.provenance["temperatures"])
            self.betas = grid_betas(self.temperatures)
            _check_counts(m["splits"], self.layout.global_batch_size)
        except (CacheError, KeyError, TypeError, ValueError, AttributeError) as e:
            detail = str(e) if isinstance(e, CacheError) else f"{type(e).__name__}: {e}"
            raise CacheError(f"{path} is damaged or was edited ({detail}); re-run the save stage into an empty "
                             "offline.data_dir") from e
        self._verified: set[str] = set()
        self._sources: dict[str, CacheSource] = {}

    @property
    def path(self):
        return self.dir / "manifest.json"

    def records(self, split: str) -> int:
        return self.manifest["splits"][split]["records"] if split in self.manifest["splits"] else 0

    # -- checks

    def check_compatible(self, config: RuntimeConfig, *, steps: Optional[int] = None) -> None:
        """The manifest against the training config; every mismatch in one error, each with both values."""
        off = _offline(config)
        prov, m = self.provenance, self.path
        want_tok = tokenizer_fingerprint(config.data.tokenizer)
        problems: list[str] = []

        def differ(what: str, cache_value, spec_value, fix: str):
            problems.append(f"{what}: cache {cache_value!r}, spec {spec_value!r} ({fix})")

        resave = "re-run the save stage for this spec, or point offline.data_dir at a matching cache"
        if prov["tokenizer"] != want_tok:
            field = "name" if prov["tokenizer"]["name"] != want_tok["name"] else "sha256"
            differ(f"tokenizer {field}", prov["tokenizer"][field], want_tok[field], resave)
        if prov["vocab_size"] != config.loss.compare_vocab:
            differ("vocabulary size", prov["vocab_size"], config.loss.compare_vocab, resave)
        if prov["teacher_model"] != config.teacher.arch.name:
            differ("teacher model", prov["teacher_model"], config.teacher.arch.name, resave)
        if prov["teacher_checkpoint"] != config.teacher.checkpoint:
            differ("teacher checkpoint", prov["teacher_checkpoint"], config.teacher.checkpoint, resave)
        else:
            now = checkpoint_fingerprint(config.teacher.checkpoint)
            if prov["teacher_checkpoint_sha256"] != now:
                differ(f"teacher checkpoint content at {config.teacher.checkpoint} (sha256 of its commit record)",
                       prov["teacher_checkpoint_sha256"], now,
                       "the checkpoint was written again after the cache was saved; " + resave)
        if prov["sampling"] != off.sampling:
            differ("offline.sampling", prov["sampling"], off.sampling, resave)
        elif off.sampling == "top_k" and off.top_k > prov["k"]:
            differ("offline.top_k", prov["k"], off.top_k,
                   f"the cache keeps only the top-{prov['k']}: set offline.top_k <= {prov['k']} or re-save with a larger k")
        elif off.sampling == "random" and off.num_samples != prov["num_samples"]:
            differ("offline.num_samples", prov["num_samples"], off.num_samples, resave)
        needs = "random" if off.loss == "sampled" else "top_k"
        if prov["sampling"] != needs:
            problems.append(f"offline.loss {off.loss} reads a cache saved with sampling {needs!r}; this one was "
                            f"saved with {prov['sampling']!r} ({resave})")
        if prov["capture_temperature"] != off.capture_temperature:
            differ("offline.capture_temperature", prov["capture_temperature"], off.capture_temperature, resave)
        if prov["dtype"] != off.dtype:
            differ("offline.dtype", prov["dtype"], off.dtype, resave)
        lo, hi = config.loss.temperature.bounds()
        if lo < min(self.temperatures) - 1e-9 or hi > max(self.temperatures) + 1e-9:
            differ("temperature range", [min(self.temperatures), max(self.temperatures)], [lo, hi],
                   "the loss temperature schedule leaves the cached range; " + resave)
        data = config.data
        for key in ("source", "seq_len", "packing", "shuffle_seed", "eval_fraction"):
            if prov["data"][key] != getattr(data, key):
                differ(f"data.{key}", prov["data"][key], getattr(data, key), resave)
        prepared = prepared_digest(data)  # the records are rows of these prepared shards, in their order
        if prov["data"].get("prepared") != prepared:
            differ("prepared data (manifest digest)", prov["data"].get("prepared"), prepared,
                   "the cache was saved from other rows; " + resave)
        need = (steps if steps is not None else config.train.steps) * data.global_batch_size
        if self.records("train") < need:
            differ("training records", self.records("train"), need,
                   f"train.steps x data.global_batch_size needs {need}; lower train.steps or re-save")
        if problems:
            raise CacheError(f"{m} does not match run {config.name!r}:\n  " + "\n  ".join(problems))

    def check_pairing(self, split: str, expected: Iterable[tuple[int, bytes]]) -> None:
        """Records' sequence hashes against (record index, sha256) pairs from the spec's data."""
        for index, digest in expected:
            rec = self.read(split, index)
            got = bytes(rec["sha256"])
            if got != digest:
                p, c, _ = self.layout.locate(index)
                raise CacheError(
                    f"{self.dir / shard_name(split, p, c)}: {split} record {index} holds a sequence with sha256 "
                    f"{got.hex()[:16]}..., the spec's data gives {digest.hex()[:16]}... there: the cache was made "
                    f"from other data (data.source {self.provenance['data']['source']!r}); re-run the save stage "
                    "for this spec")

    def verify(self, split: str, records: Optional[int] = None, processes: Optional[Iterable[int]] = None) -> None:
        """sha256 and size of every shard holding one of the first `records` records of `split`."""
        if split not in self.manifest["splits"]:
            raise CacheError(f"{self.path}: no {split!r} split; re-run the save stage")
        info = self.manifest["splits"][split]
        n_batches = info["batches"] if records is None else -(-records // self.layout.global_batch_size)
        last_shard = self.layout.shards(n_batches)
        for entry in info["shards"]:
            if entry["shard"] >= last_shard or (processes is not None and entry["process"] not in processes):
                continue
            self._verify_entry(entry)

    def _verify_entry(self, entry: Mapping[str, Any]) -> None:
        if entry["file"] in self._verified:
            return
        path = self.dir / entry["file"]
        if not path.exists():
            raise CacheError(f"{path}: shard missing ({entry['records']} records); restore it or re-run the save "
                             "stage (its other shards are kept)")
        sha, size = file_sha256(path)
        if size != entry["bytes"]:
            raise CacheError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or "
                             "overwritten); delete it and re-run the save stage (finished shards are kept)")
        if sha != entry["sha256"]:
            raise CacheError(f"{path}: sha256 {sha[:16]}..., the manifest says {entry['sha256'][:16]}... "
                             "(corrupted); delete it and re-run the save stage (finished shards are kept)")
        self._verified.add(entry["file"])

    # -- access

    def source(self, split: str, records: Optional[int] = None, rows: Optional[tuple[int, int]] = None) -> "CacheSource":
        return CacheSource(self, split, records, rows)

    def read(self, split: str, index: int) -> dict[str, np.ndarray]:
        src = self._sources.get(split)
        if src is None:
            src = self._sources[split] = CacheSource(self, split)
        return src[index]


class CacheSource:
    """Random access to the decoded records [0, records) of one split, in global record order.

    Built on Grain's `ArrayRecordDataSource` (thread-safe, lazily opened readers) over the shard
    files; Grain's `MapDataset.source` accepts it. The shards it needs are sha256-verified when it is
    created (only those holding rows of `rows`, a [start, stop) range of each global batch, when
    given), so no record of a damaged shard is ever returned.
    """

    def __init__(self, cache: TopKCache, split: str, records: Optional[int] = None,
                 rows: Optional[tuple[int, int]] = None):
        from grain.python import ArrayRecordDataSource

        if split not in cache.manifest["splits"]:
            raise CacheError(f"{cache.path}: no {split!r} split; re-run the save stage")
        info = cache.manifest["splits"][split]
        self.cache, self.split = cache, split
        self._len = info["records"] if records is None else records
        if self._len > info["records"]:
            raise CacheError(f"{cache.path}: {split} holds {info['records']} records, {self._len} requested; "
                             "lower train.steps or re-run the save stage with more steps")
        b = cache.layout.rows_per_process
        procs = None if rows is None else range(rows[0] // b, (rows[1] - 1) // b + 1)
        cache.verify(split, self._len, procs)
        entries = sorted(info["shards"], key=lambda e: (e["process"], e["shard"]))
        self._offset, paths, total = {}, [], 0
        for e in entries:
            self._offset[(e["process"], e["shard"])] = total
            paths.append(f"{cache.dir / e['file']}[0:{e['records']}]")
            total += e["records"]
        self._paths = paths
        self._source = ArrayRecordDataSource(paths)

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[str, int]:
        p, c, pos = self.cache.layout.locate(index)
        return str(self.cache.dir / shard_name(self.split, p, c)), pos

    def __getitem__(self, index) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"{self.split} record {index} out of range [0, {self._len})")
        p, c, pos = self.cache.layout.locate(index)
        key = self._offset.get((p, c))
        if key is None:
            raise CacheError(f"{self.cache.path}: no entry for shard {shard_name(self.split, p, c)}; the manifest "
                             "is damaged: re-run the save stage")
        path = self.cache.dir / shard_name(self.split, p, c)
        try:
            data = self._source[key + pos]
        except RuntimeError as e:  # ArrayRecord's own chunk hashes: the file changed after it was verified
            raise CacheError(f"{path} record {pos}: the shard is damaged ({str(e).splitlines()[0]}); restore it "
                             "or re-run the save stage into an empty data_dir") from None
        return self.cache.spec.decode(data, where=f"{path} record {pos}", expect_index=index)
