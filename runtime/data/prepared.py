"""Prepared data: the spec's sources tokenized and packed once (`distillc data prepare SPEC`).

A prepared directory (`data.prepared`, or a `data.source` that holds such a manifest):

    manifest.json           written last, atomically: the identity (below), the splits' shards
                            (records, bytes, sha256) and `digest`, a sha256 of all of it
    progress.json           while preparing: the identity, the finished shards and, after each
                            training shard, the pipeline's Grain state (atomic rewrites)
    train-00000.arecord ... the training rows in stream order: one pass over the source files in the
                            order given, tokenized and packed by the same code as streaming training
    eval-00000.arecord ...  the held-out rows (data.eval_fraction by hash, or data.eval_source), up
                            to data.eval_tokens real tokens
    .<name>.tmp             a shard being written, renamed into place when complete

A record is one row: magic b"DCPR", format version u16, seq_len u32, then inputs, labels,
segment_ids and positions, int32[seq_len] each, little-endian (mask = segment_ids > 0).

The identity is what the rows depend on: the tokenizer (name and sha256 of its file), vocabulary
size, bos/eos ids, seq_len, packing, text_field, the source files with their sizes, the held-out
settings, the rows per shard and PIPELINE_VERSION (the tokenize/pack code). Preparing again into a
directory with another identity is a DataError naming each differing field; with the same identity
a killed prepare resumes after its last finished shard (shards are re-hashed first, a damaged one
and everything after it redone) and a finished one is left as it is.

A data.sources mixture is prepared in mixture.py's deterministic order (the identity records each
source's weight and files, and where the mixture stops). A prepare split over P processes
(part/parts) gives each part the files p, p+P, ... and its own shards (train-pPPPPPofNNNNN-*),
progress file and, when finished, part file; the process that finds every part finished writes
manifest.json (the shards in part order, part 0's held-out rows). The bytes depend on the part
count, never on which process wrote a part.

Training reads the shards instead of the sources: row r of the training stream is row
perm_e(r mod N) of the N prepared rows in epoch e = r // N (Grain's index shuffle seeded with
data.shuffle_seed, a new order each epoch), global batches of consecutive stream rows, process p
taking its block. The iterator's state is one index, so a resumed run continues with exactly the
next batch. Each shard's sha256 is checked the first time a row of it is read.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import grain
import numpy as np

from distillc.runtime.config import DataConfig
from distillc.runtime.data.corpus import PREPARED_MAGIC
from distillc.runtime.data.tokenizers import Tokenizer, tokenizer_fingerprint
from distillc.runtime.file_digest import file_sha256

FORMAT = "distillc-prepared"
FORMAT_VERSION = 1
# The tokenize/pack code (pipeline.Tokenize, the packer): bump when it would make other rows.
PIPELINE_VERSION = 1
MIXTURE_VERSION = 1  # the mixture order (mixture.py): bump when it would draw documents in another order
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access by row
SHARD_BYTES = 64 << 20  # target size of a shard (rows of 16 bytes per position)
ROW_FIELDS = ("inputs", "labels", "segment_ids", "positions")
SPLITS = ("train", "eval")
_HEADER = struct.Struct("<4sHI")

Row = dict[str, np.ndarray]


class PreparedError(ValueError):
    """Prepared data that cannot be used (missing, damaged, made for other settings); the message
    names the place and the fix. The runtime reports it as a user error (exit 2)."""


# ---------------------------------------------------------------- records and files


def encode_row(row: Row, seq_len: int) -> bytes:
    parts = [_HEADER.pack(PREPARED_MAGIC, FORMAT_VERSION, seq_len)]
    for name in ROW_FIELDS:
        a = np.asarray(row[name])
        if a.shape != (seq_len,):
            raise ValueError(f"row field {name!r} has shape {a.shape}, expected ({seq_len},)")
        parts.append(np.ascontiguousarray(a, dtype="<i4").tobytes())
    return b"".join(parts)


def decode_row(data: bytes, seq_len: int, where: str) -> Row:
    if len(data) != _HEADER.size + 16 * seq_len:
        raise PreparedError(f"{where}: a record of {len(data)} bytes, expected {_HEADER.size + 16 * seq_len} "
                            f"(seq_len {seq_len}); the shard is damaged: delete it and run `distillc data prepare` again")
    magic, version, length = _HEADER.unpack_from(data, 0)
    if (magic, version, length) != (PREPARED_MAGIC, FORMAT_VERSION, seq_len):
        raise PreparedError(f"{where}: not a version-{FORMAT_VERSION} prepared row of seq_len {seq_len} "
                            f"(header {magic!r}, {version}, {length}); run `distillc data prepare` again")
    a = np.frombuffer(data, "<i4", offset=_HEADER.size).reshape(4, seq_len).astype(np.int32)
    row: Row = dict(zip(ROW_FIELDS, a))
    return {**row, "mask": row["segment_ids"] > 0}


def _write_json_atomic(path: str, obj: Any) -> None:
    """Local: a temporary file fsynced and renamed over the target; gs://: one object write (atomic there)."""
    from etils import epath

    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if "://" in path:
        epath.Path(path).write_text(text)
        return
    tmp = Path(path).parent / f".{Path(path).name}.{os.getpid()}.tmp"  # two processes may write the same file
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[dict]:
    from etils import epath

    p = epath.Path(path)
    if not p.exists():
        return None
    try:
        obj = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PreparedError(f"{path}: not JSON ({e}); delete the prepared directory and prepare again") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise PreparedError(f"{path}: not a {FORMAT} manifest; point data.prepared at a directory that "
                            "`distillc data prepare` wrote (or an empty one)")
    if not isinstance(obj.get("identity"), dict):  # every manifest, progress and part file has one
        raise PreparedError(f"{path}: a {FORMAT} file without its identity (damaged or edited by hand): delete the "
                            "prepared directory and prepare again")
    return obj


def digest(obj: dict) -> str:
    """sha256 of a manifest's canonical JSON without its own digest: what the top-k cache records."""
    body = {k: v for k, v in obj.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- identity


def identity(cfg: DataConfig, tokenizer: Tokenizer, streams: list[tuple[list[str], float]],
             eval_files: Optional[list[str]], rows_per_shard: int, parts: int = 1,
             mixture_stop: str = "first_exhausted") -> dict[str, Any]:
    """What the prepared rows depend on (module docstring); compared field by field on resume.
    streams: the training files of each source with its weight. A single source and a single part
    add no fields, so a directory prepared before mixtures and parts existed keeps its identity."""
    ident: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "pipeline_version": PIPELINE_VERSION,
        "tokenizer": tokenizer_fingerprint(cfg.tokenizer), "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
        "seq_len": cfg.seq_len, "packing": cfg.packing, "text_field": cfg.text_field,
        "sources": [_file(f) for f in streams[0][0]] if len(streams) == 1 else None,
        "eval": {"fraction": cfg.eval_fraction, "tokens": cfg.eval_tokens,
                 "source": None if eval_files is None else [_file(f) for f in eval_files]},
        "rows_per_shard": rows_per_shard,
    }
    if len(streams) > 1:
        ident["mixture"] = {"stop": mixture_stop, "version": MIXTURE_VERSION,
                            "sources": [{"weight": w, "files": [_file(f) for f in files]} for files, w in streams]}
    if parts > 1:
        ident["parts"] = parts
    return ident


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "bytes": _size(path)}


def streams_of(ident: dict[str, Any]) -> list[tuple[float, list[str]]]:
    """The (weight, files) of each training source an identity records."""
    if "mixture" in ident:
        return [(float(m["weight"]), [f["path"] for f in m["files"]]) for m in ident["mixture"]["sources"]]
    return [(1.0, [f["path"] for f in ident["sources"]])]


def _size(path: str) -> Optional[int]:
    if path.startswith("builtin:"):
        return None
    from etils import epath

    return int(epath.Path(path).stat().length)


def differences(was: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """'field: prepared X, now Y' for every identity field that differs (nested fields as 'a.b')."""
    out = []
    for key in sorted(set(was) | set(now)):
        a, b = was.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b and \
                all(isinstance(x, dict) and isinstance(y, dict) for x, y in zip(a, b)):
            # lists of files or of mixture sources: name the entry and field (a weight after a long
            # file list would be cut off in the JSON of the whole list)
            for i, (x, y) in enumerate(zip(a, b)):
                out += differences(x, y, f"{prefix}{key}[{i}].")
        elif a != b:
            out.append(f"{prefix}{key}: prepared {_short(a)}, now {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _per_source(streams: list[tuple[float, list[str]]]) -> dict[str, Any]:
    """A mixture's sources as separate check fields ('data.sources[1].weight', 'data.sources[1]
    files'), so a changed weight is named even after a long file list (whose JSON a message cuts short)."""
    out: dict[str, Any] = {}
    for i, (weight, files) in enumerate(streams):
        out[f"data.sources[{i}].weight"], out[f"data.sources[{i}] files"] = weight, files
    return out


def default_rows_per_shard(seq_len: int) -> int:
    return max(1, SHARD_BYTES // (16 * seq_len))


# ---------------------------------------------------------------- writing


@dataclass
class PrepareResult:
    out: str
    skipped: bool  # the directory already held this prepared data (or this part of it)
    resumed_shards: int  # finished training shards kept from an earlier, interrupted prepare
    records: dict[str, int]  # empty while other parts are unfinished
    efficiency: float  # real tokens / row slots of the training rows
    digest: str  # the manifest's; "" while other parts are unfinished
    waiting: tuple[int, ...] = ()  # the parts not finished yet, when this one is


def part_tag(part: int, parts: int) -> str:
    """What names a part's files: nothing for a one-process prepare, '-p00001of00004' otherwise."""
    return "" if parts == 1 else f"-p{part:05d}of{parts:05d}"


def _shard_name(split: str, index: int, tag: str = "") -> str:
    return f"{split}{tag}-{index:05d}.arecord"


def _write_shard(out: str, split: str, index: int, rows: list[Row], seq_len: int, tag: str = "") -> dict[str, Any]:
    """One shard, written to a temporary name and renamed into place when complete; its entry."""
    import tempfile

    from array_record.python.array_record_module import ArrayRecordWriter
    from etils import epath

    name = _shard_name(split, index, tag)
    remote = "://" in out
    tmp = str(Path(tempfile.mkdtemp(prefix="distillc-prepare-")) / name) if remote else f"{out}/.{name}.tmp"
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    if not writer.ok():
        raise PreparedError(f"cannot open {tmp} for writing")
    for row in rows:
        writer.write(encode_row(row, seq_len))
    writer.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    sha, size = file_sha256(tmp)
    if remote:
        epath.Path(f"{out}/{name}").write_bytes(Path(tmp).read_bytes())
        Path(tmp).unlink()
    else:
        os.replace(tmp, f"{out}/{name}")
    tokens = int(sum(int(r["mask"].sum()) for r in rows))
    return {"file": name, "records": len(rows), "bytes": size, "sha256": sha, "tokens": tokens}


def _kept_shards(out: str, entries: list[dict[str, Any]], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The longest prefix of finished shards whose files still hash as recorded."""
    kept = []
    for e in entries:
        try:
            sha, size = file_sha256(f"{out}/{e['file']}")
        except FileNotFoundError:
            sha, size = "", 0
        if (sha, size) != (e["sha256"], e["bytes"]):
            log(f"prepare: {out}/{e['file']} is missing or damaged; redoing it and the shards after it")
            break
        kept.append(e)
    return kept


def _refuse_other(out: str, what: str, was: dict[str, Any], now: dict[str, Any]) -> None:
    diff = differences(was, now)
    if diff:
        raise PreparedError(f"{out} holds {what} for other settings ({'; '.join(diff)}): prepare into "
                            "another directory (data.prepared), or delete this one")


def _other_part_count(out: str, parts: int) -> Optional[str]:
    """The progress or part file (its name) of an unfinished prepare into `out` split over another
    number of processes than `parts`, if there is one: its shards are not this prepare's, and
    finishing beside it would leave two half-prepared datasets in one directory."""
    import re

    from etils import epath

    p = epath.Path(out)
    if not p.is_dir():
        return None
    for f in sorted(p.iterdir(), key=lambda f: f.name):
        m = re.fullmatch(r"progress\.json|(?:part|progress)-p\d{5}of(\d{5})\.json", f.name)
        if m and int(m.group(1) or 1) != parts:
            return f.name
    return None


def prepare(cfg: DataConfig, out: str, *, rows_per_shard: Optional[int] = None,
            log: Callable[[str], None] = print, stop_after_shards: Optional[int] = None,
            part: int = 0, parts: int = 1, mixture_stop: str = "first_exhausted") -> PrepareResult:
    """Tokenizes and packs cfg's sources into `out` (or resumes, or finds it done); see the module
    docstring. part/parts: this process's share of a prepare split over `parts` processes (each
    writes its part's shards; the one that finishes last writes manifest.json). mixture_stop: where
    a data.sources mixture ends (mixture.py). stop_after_shards: return after writing that many
    training shards in this call, as a killed prepare would leave the directory (for resume tests)."""
    from etils import epath

    from distillc.runtime.data.mixture import MixtureDocuments
    from distillc.runtime.data.pipeline import DataPipeline, Shard, _tuples

    if parts < 1:
        raise PreparedError(f"process count {parts}: a prepare needs at least one process (--process-count)")
    if not 0 <= part < parts:
        raise PreparedError(f"process index {part} is outside [0, {parts}) for {parts} process(es): pass "
                            f"--process-index 0 .. {parts - 1}, or --process-count with the number of processes")
    tag = part_tag(part, parts)
    out = out.rstrip("/")
    if epath.Path(out).exists() and not epath.Path(out).is_dir():
        raise PreparedError(f"{out} is a file: data.prepared (or --out) names the directory prepare writes its shards "
                            "and manifest.json into")
    stream = cfg.model_copy(update={"prepared": None})
    pipe = DataPipeline(stream, Shard())
    done_manifest = _read_json(f"{out}/manifest.json")
    progress = _read_json(f"{out}/progress{tag}.json")
    part_done = _read_json(f"{out}/part{tag}.json") if parts > 1 else None
    earlier = done_manifest or part_done or progress
    # no --rows-per-shard: keep the layout an earlier prepare into this directory chose
    n_shard = rows_per_shard or (earlier["identity"]["rows_per_shard"] if earlier else default_rows_per_shard(cfg.seq_len))
    ident = identity(cfg, pipe.tokenizer, pipe.train_files, pipe.eval_files, n_shard, parts, mixture_stop)
    epath.Path(out).mkdir(parents=True, exist_ok=True)
    if done_manifest is not None:
        _refuse_other(out, "data prepared", done_manifest["identity"], ident)
        train = done_manifest["splits"]["train"]
        log(f"prepare: {out} is complete ({train['records']} training rows); nothing to do")
        return PrepareResult(out, True, 0, {s: done_manifest["splits"][s]["records"] for s in SPLITS},
                             done_manifest["efficiency"], done_manifest["digest"])
    other = _other_part_count(out, parts)
    if other is not None:
        n = int(other[-10:-5]) if other != "progress.json" else 1
        raise PreparedError(f"{out} holds an unfinished prepare split over {n} process(es) ({other}), and this one is "
                            f"split over {parts} (the part count changes the rows): finish it with --process-count {n}, "
                            "or prepare into another directory (data.prepared), or delete this one")
    if part_done is not None:
        _refuse_other(out, f"a finished part {part} of {parts}", part_done["identity"], ident)
        log(f"prepare: part {part} of {parts} in {out} is finished already")
        return _assemble(out, ident, parts, cfg.seq_len, log, skipped=True, resumed=0)

    shards: list[dict[str, Any]] = []
    state, train_complete = None, False
    if "://" not in out:  # shards a killed prepare of this part was writing: never part of the result
        for stale in [*Path(out).glob(f".train{tag}-*.arecord.tmp"), *Path(out).glob(".eval-*.arecord.tmp")]:
            if stale.name.startswith(".train") or part == 0:
                stale.unlink(missing_ok=True)
    if progress is not None:
        _refuse_other(out, "an unfinished prepare", progress["identity"], ident)
        shards = _kept_shards(out, progress["train"], log)
        state = shards[-1]["state_after"] if shards else None
        train_complete = bool(progress.get("train_complete")) and len(shards) == len(progress["train"])
        if shards:
            log(f"prepare: resuming after {len(shards)} finished shard(s) ({sum(e['records'] for e in shards)} rows)")

    keep = "all" if pipe.eval_files is not None else "train"
    sources = [pipe._documents(files, keep, Shard(part, parts), 1, "data.source") for files, _ in pipe.train_files]
    if parts > 1 and min(len(files) for files, _ in pipe.train_files) < parts:
        log(f"prepare: warning: fewer files than the {parts} parts: each part reads every such file and keeps every "
            f"{parts}-th document (split the corpus into more files to read less)")
    docs = sources[0] if len(sources) == 1 else MixtureDocuments(sources, [w for _, w in pipe.train_files], mixture_stop)
    it = pipe._rows(docs).__iter__()
    if state is not None and not train_complete:
        it.set_state(_tuples(state))
    resumed = len(shards)
    written, buffer, finished = 0, [], train_complete  # the whole stream was written: only eval and the manifest remain
    while not finished:
        row = next(it, None)
        if row is not None:
            buffer.append(row)
        finished = row is None
        if buffer and (len(buffer) == n_shard or finished):
            entry = _write_shard(out, "train", len(shards), buffer, cfg.seq_len, tag)
            entry["state_after"] = it.get_state()
            shards.append(entry)
            buffer = []
            _write_json_atomic(f"{out}/progress{tag}.json", {"format": FORMAT, "identity": ident, "train": shards,
                                                             "train_complete": finished})
            written += 1
            if stop_after_shards is not None and written >= stop_after_shards and not finished:
                return PrepareResult(out, False, resumed, {}, float("nan"), "")
    if not shards and parts == 1:
        raise PreparedError(f"{out}: the sources hold no training documents (all held out, or empty): add data "
                            "or lower data.eval_fraction")
    eval_shards: list[dict[str, Any]] = []
    if part == 0:  # the held-out rows are the same for every part: part 0 writes them
        eval_rows = pipe.eval_rows()
        eval_shards = [_write_shard(out, "eval", i, eval_rows[a : a + n_shard], cfg.seq_len)
                       for i, a in enumerate(range(0, len(eval_rows), n_shard))]
    train = [{k: v for k, v in e.items() if k != "state_after"} for e in shards]
    if parts > 1:
        _write_json_atomic(f"{out}/part{tag}.json", {"format": FORMAT, "identity": ident, "part": part,
                                                     "train": train, "eval": eval_shards})
        epath.Path(f"{out}/progress{tag}.json").unlink(missing_ok=True)
        log(f"prepare: part {part} of {parts} finished: {sum(e['records'] for e in train)} training rows in "
            f"{len(train)} shard(s)")
        return _assemble(out, ident, parts, cfg.seq_len, log, skipped=False, resumed=resumed)
    manifest = _manifest(ident, train, eval_shards, cfg.seq_len)
    _write_json_atomic(f"{out}/manifest.json", manifest)
    epath.Path(f"{out}/progress.json").unlink(missing_ok=True)
    return _finished(out, manifest, log, skipped=False, resumed=resumed)


def _manifest(ident: dict[str, Any], train: list[dict[str, Any]], eval_shards: list[dict[str, Any]],
              seq_len: int) -> dict[str, Any]:
    records = sum(e["records"] for e in train)
    tokens = sum(e["tokens"] for e in train)
    manifest: dict[str, Any] = {
        "format": FORMAT, "identity": ident, "efficiency": tokens / max(1, records * seq_len),
        "splits": {
            "train": {"records": records, "tokens": tokens, "shards": train},
            "eval": {"records": sum(e["records"] for e in eval_shards), "tokens": sum(e["tokens"] for e in eval_shards),
                     "shards": eval_shards},
        },
    }
    manifest["digest"] = digest(manifest)
    return manifest


def _finished(out: str, manifest: dict[str, Any], log: Callable[[str], None], *, skipped: bool,
              resumed: int) -> PrepareResult:
    splits = manifest["splits"]
    log(f"prepare: {out} complete: {splits['train']['records']} training rows in {len(splits['train']['shards'])} "
        f"shard(s), {splits['eval']['records']} held-out rows, packing efficiency {manifest['efficiency']:.2%}, "
        f"digest {manifest['digest'][:16]}")
    return PrepareResult(out, skipped, resumed, {s: splits[s]["records"] for s in SPLITS}, manifest["efficiency"],
                         manifest["digest"])


def _assemble(out: str, ident: dict[str, Any], parts: int, seq_len: int, log: Callable[[str], None], *,
              skipped: bool, resumed: int) -> PrepareResult:
    """manifest.json from every part's file once all are there: the training shards in part order,
    the held-out shards of part 0. Every process that finds all parts writes the same manifest
    (deterministic, atomic), so two processes finishing together do no harm."""
    found = {p: _read_json(f"{out}/part{part_tag(p, parts)}.json") for p in range(parts)}
    waiting = tuple(p for p, f in found.items() if f is None)
    if waiting:
        log(f"prepare: waiting for part(s) {', '.join(map(str, waiting))} of {parts}: the process that finishes "
            "last writes manifest.json")
        return PrepareResult(out, skipped, resumed, {}, float("nan"), "", waiting)
    for p, f in found.items():
        assert f is not None
        _refuse_other(out, f"a part {p} of {parts}", f["identity"], ident)
    train = [e for p in range(parts) for e in found[p]["train"]]  # type: ignore[index]
    if not train:
        raise PreparedError(f"{out}: the sources hold no training documents (all held out, or empty): add data "
                            "or lower data.eval_fraction")
    manifest = _manifest(ident, train, found[0]["eval"], seq_len)  # type: ignore[index]
    _write_json_atomic(f"{out}/manifest.json", manifest)
    return _finished(out, manifest, log, skipped=skipped, resumed=resumed)


# ---------------------------------------------------------------- reading


def _missing_parts(path: str) -> Optional[tuple[list[int], int]]:
    """(the unfinished parts, the part count) of a multi-process prepare in `path`, or None."""
    import re

    from etils import epath

    p = epath.Path(path)
    if not p.is_dir():
        return None
    done, parts = set(), 0
    for f in p.iterdir():
        m = re.fullmatch(r"(part|progress)-p(\d{5})of(\d{5})\.json", f.name)
        if m:
            parts = int(m.group(3))
            if m.group(1) == "part":
                done.add(int(m.group(2)))
    return (sorted(set(range(parts)) - done), parts) if parts else None


def prepared_dir(cfg: DataConfig) -> Optional[str]:
    """Where cfg's prepared data is: data.prepared, or a data.source directory holding a prepared
    manifest (the prepared data named as a source). None: stream from the sources."""
    if cfg.prepared is not None:
        return cfg.prepared.rstrip("/")
    if cfg.sources or cfg.source.startswith("builtin:") or any(c in cfg.source for c in "*?[,"):
        return None
    from etils import epath

    path = epath.Path(cfg.source)
    manifest = path / "manifest.json"
    if not (path.is_dir() and manifest.exists()):
        return None
    try:  # a corpus directory may hold some other manifest.json: then it is read as a corpus
        ours = json.loads(manifest.read_text()).get("format") == FORMAT
    except (ValueError, AttributeError):
        ours = False
    return cfg.source.rstrip("/") if ours else None


class Prepared:
    """A finished prepared directory: its manifest, checks against a DataConfig, and the splits' rows."""

    def __init__(self, path: str):
        self.path = path
        manifest = _read_json(f"{path}/manifest.json")
        if manifest is None:
            missing = _missing_parts(path)
            if missing is not None:
                todo, parts = missing
                what = (f"part(s) {', '.join(map(str, todo))} are not finished; run `distillc data prepare SPEC "
                        f"--process-count {parts} --process-index I` for each (it resumes them; the last writes "
                        "manifest.json)") if todo else (
                        f"every part is finished; run `distillc data prepare SPEC --process-count {parts} "
                        "--process-index 0` to write it")
                raise PreparedError(f"data.prepared {path!r} holds an unfinished {parts}-process prepare (no "
                                    f"manifest.json): {what}")
            unfinished = _read_json(f"{path}/progress.json") is not None
            what = "an unfinished prepare (no manifest.json)" if unfinished else "no prepared data (no manifest.json)"
            raise PreparedError(f"data.prepared {path!r} holds {what}: run `distillc data prepare SPEC` first "
                                "(it resumes an unfinished one)")
        self.manifest = manifest
        self.identity: dict[str, Any] = manifest["identity"]
        self.digest: str = manifest["digest"]
        if digest(manifest) != self.digest:
            raise PreparedError(f"{path}/manifest.json: its content does not match its digest (edited or damaged): "
                                "prepare again into an empty directory")

    def check(self, cfg: DataConfig, tokenizer: Tokenizer, streams: Optional[list[tuple[list[str], float]]],
              eval_files: Optional[list[str]]) -> None:
        """The manifest against the spec: every mismatch in one error. `streams` (each source's files
        and weight) None: the spec names the prepared directory itself as its source, so there are no
        sources to compare."""
        ident = self.identity
        want = {"tokenizer sha256": tokenizer_fingerprint(cfg.tokenizer)["sha256"], "data.seq_len": cfg.seq_len,
                "data.packing": cfg.packing, "vocabulary size": tokenizer.vocab_size,
                "pipeline version": PIPELINE_VERSION, "format version": FORMAT_VERSION}
        have = {"tokenizer sha256": ident["tokenizer"]["sha256"], "data.seq_len": ident["seq_len"],
                "data.packing": ident["packing"], "vocabulary size": ident["vocab_size"],
                "pipeline version": ident["pipeline_version"], "format version": ident["format_version"]}
        if streams is not None:
            mixed = len(streams) > 1 or "mixture" in ident
            if mixed:
                spec_streams, prepared_streams = [(w, f) for f, w in streams], streams_of(ident)
                if len(spec_streams) == len(prepared_streams):
                    want.update(_per_source(spec_streams))
                    have.update(_per_source(prepared_streams))
                else:
                    want["number of data.sources"], have["number of data.sources"] = len(spec_streams), len(prepared_streams)
            else:
                want["data.source files"], have["data.source files"] = streams[0][0], streams_of(ident)[0][1]
            want.update({"data.text_field": cfg.text_field,
                         "data.eval_fraction": cfg.eval_fraction, "data.eval_tokens": cfg.eval_tokens,
                         "data.eval_source files": eval_files})
            have.update({"data.text_field": ident["text_field"], "data.eval_fraction": ident["eval"]["fraction"],
                         "data.eval_tokens": ident["eval"]["tokens"],
                         "data.eval_source files": None if ident["eval"]["source"] is None
                         else [s["path"] for s in ident["eval"]["source"]]})
        diff = [f"{k}: prepared {_short(have[k])}, spec {_short(want[k])}" for k in want if have[k] != want[k]]
        if diff:
            raise PreparedError(f"{self.path} was prepared for other settings ({'; '.join(diff)}): run "
                                "`distillc data prepare SPEC` into another directory, or fix the spec")

    def records(self, split: str) -> int:
        return int(self.manifest["splits"][split]["records"])

    def source(self, split: str) -> "PreparedSource":
        return PreparedSource(self, split)


class PreparedSource:
    """Random access to one split's rows (Grain's ArrayRecordDataSource over its shards); a shard's
    sha256 is checked the first time one of its rows is read, so a damaged shard is an error naming
    it, never rows of it."""

    def __init__(self, prepared: Prepared, split: str):
        from grain.python import ArrayRecordDataSource

        self.prepared, self.split = prepared, split
        self.seq_len = int(prepared.identity["seq_len"])
        self._entries = prepared.manifest["splits"][split]["shards"]
        self._starts, total = [], 0
        for e in self._entries:
            self._starts.append(total)
            total += e["records"]
        self._len = total
        paths = [f"{prepared.path}/{e['file']}" for e in self._entries]
        self._source = ArrayRecordDataSource(paths) if paths else None
        self._verified: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def _verify(self, shard: int) -> None:
        with self._lock:
            if shard in self._verified:
                return
            e = self._entries[shard]
            path = f"{self.prepared.path}/{e['file']}"
            try:
                sha, size = file_sha256(path)
            except FileNotFoundError:
                raise PreparedError(f"{path}: missing; run `distillc data prepare SPEC` again (it redoes missing "
                                    "shards)") from None
            if (sha, size) != (e["sha256"], e["bytes"]):
                raise PreparedError(f"{path}: sha256 {sha[:16]}... ({size} bytes), the manifest says "
                                    f"{e['sha256'][:16]}... ({e['bytes']} bytes): the shard is damaged; delete "
                                    f"{self.prepared.path}/manifest.json and this shard, then run `distillc data "
                                    "prepare SPEC` again")
            self._verified.add(shard)

    def __getitem__(self, index: int) -> Row:
        index = int(index)
        if not 0 <= index < self._len or self._source is None:
            raise IndexError(f"{self.split} row {index} out of range [0, {self._len})")
        shard = bisect.bisect_right(self._starts, index) - 1
        self._verify(shard)
        where = f"{self.prepared.path}/{self._entries[shard]['file']} record {index - self._starts[shard]}"
        return decode_row(self._source[index], self.seq_len, where)


def train_dataset(source: PreparedSource, seed: int, local_batch_size: int, shard_index: int,
                  shard_count: int) -> grain.IterDataset:
    """This process's training batches: the rows index-shuffled per epoch, global batches of consecutive
    shuffled rows, this process's block of each (module docstring)."""
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    ds = ds.batch(local_batch_size, drop_remainder=True)[shard_index::shard_count]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


__all__ = ["Prepared", "PreparedError", "PrepareResult", "prepare", "prepared_dir", "train_dataset"]


def process_from_env(env: Optional[dict[str, str]] = None) -> tuple[int, int]:
    """(process index, process count) as a launcher sets them, read the way runtime/train/distributed.py
    does (JAX_PROCESS_ID / JAX_NUM_PROCESSES, or NODE_RANK / NNODES; on a TPU VM, TPU_WORKER_ID and
    TPU_WORKER_HOSTNAMES), without joining jax.distributed: a prepare's processes never talk. (0, 1) if unset."""
    env = dict(os.environ) if env is None else env

    def number(name: str) -> int:
        try:
            return int(env[name])
        except ValueError:
            raise PreparedError(f"{name}={env[name]!r} is not an integer: fix the variable, or pass --process-index "
                                "and --process-count") from None

    for index, count in (("JAX_PROCESS_ID", "JAX_NUM_PROCESSES"), ("NODE_RANK", "NNODES")):
        if env.get(index) and env.get(count):
            return number(index), number(count)
    if env.get("TPU_WORKER_ID") and "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return number("TPU_WORKER_ID"), len(env["TPU_WORKER_HOSTNAMES"].split(","))
    return 0, 1


def run_prepare(cfg: DataConfig, out: str, rows_per_shard: Optional[int] = None,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                mixture_stop: str = "first_exhausted") -> int:
    """`distillc data prepare`'s runtime half (the compiler CLI stays free of grain and the tokenizer
    libraries): prepare this process's part (the flags, else the launcher's environment), and report
    bad input as one message with exit 2, never a traceback."""
    import sys

    from distillc.runtime.data.corpus import CorpusError
    from distillc.runtime.data.pipeline import DataError
    from distillc.runtime.data.tokenizers import TokenizerError

    from distillc.runtime.gcs_credentials import missing_credentials

    problem = missing_credentials({"data": cfg.model_dump(mode="json"), "--out": out})
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        env_index, env_count = process_from_env() if process_index is None or process_count is None else (0, 1)
        count = process_count if process_count is not None else env_count
        index = process_index if process_index is not None else env_index
        prepare(cfg, out, rows_per_shard=rows_per_shard, log=lambda line: print(line, file=sys.stderr, flush=True),
                part=index, parts=count, mixture_stop=mixture_stop)
    except (CorpusError, DataError, PreparedError, TokenizerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
