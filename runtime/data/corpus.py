"""Text corpora named by `data.source`: found as files, read lazily, document by document.

A source is one of
- `builtin:pydoc_topics`: the help topics of Python's own `pydoc_data.topics` (about 465 KB of
  English and code; ships with CPython, so nothing is downloaded), one document per topic, in
  key order;
- a file: `.txt` (a document per paragraph: blank lines separate them), `.jsonl` / `.jsonl.gz` / `.jsonl.zst` (one document per line, its
  `text_field`), `.parquet` (one document per row, its `text_field` column), `.arecord` /
  `.array_record` or a TFDS shard name `x.array_record-00000-of-01024` (ArrayRecord: one document per record, a JSON object with `text_field` or with
  pre-tokenized `tokens`, or plain UTF-8 text; or, told from the shard's first record, a
  tf.train.Example with a `text_field` bytes_list / int64_list or a `tokens` int64_list), `.tfrecord`
  or a TFDS shard name `x.tfrecord-00000-of-01024` (TFRecord: records read as ArrayRecord's are);
- a directory (the files above inside it, sorted by name), or a glob (`data/*.jsonl.gz`);
- a list of any of these (read in the order given).
Paths go through etils.epath, so gs:// works wherever an epath backend for it is installed.

Nothing reads a corpus whole: `expand` lists files (it opens none), and `read_documents` yields
one file's documents as it reads it (line by line, or Parquet row group by row group). Every
reading error is a CorpusError that names the file (and line) and says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from typing import Any, Iterator, Sequence, Union

import numpy as np

from distillc.runtime.data.example_proto import ExampleError, Feature, looks_like_example, parse_example

BUILTINS = ("pydoc_topics",)
SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet", ".arecord", ".array_record", ".tfrecord")
PREPARED_MAGIC = b"DCPR"  # the first bytes of a `distillc data prepare` record (runtime/data/prepared.py)

Document = Union[str, np.ndarray]  # text, or a pre-tokenized document (int32 ids, used as they are)
GLOB_CHARS = "*?["
# TFDS names its shards `<name>-<split>.array_record-00000-of-01024` (or .tfrecord-...); MaxText's docs
# glob them (`grain_train_files=.../c4-train.array_record*`), so such a name is a file of that kind too
TFDS_SHARD = re.compile(r"\.(array_record|tfrecord)-\d+-of-\d+\Z")


class CorpusError(ValueError):
    """A data.source that cannot be read; the message names the place and the fix."""


def file_kind(path: str) -> str | None:
    """The reader for a file name: one of SUFFIXES (without the dot), or None."""
    m = TFDS_SHARD.search(path)
    if m:
        return m.group(1)
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if path.endswith(suffix):
            return suffix[1:]
    return None


def expand(source: str | Sequence[str], key: str = "data.source") -> list[str]:
    """The files a source names, in reading order (builtins stay as they are). Opens no file."""
    if not isinstance(source, str):
        files = [f for s in source for f in expand(s, key)]
        if not files:
            raise CorpusError(f"{key} is an empty list: name at least one file")
        return files
    if source.startswith("builtin:"):
        if source.removeprefix("builtin:") not in BUILTINS:
            raise CorpusError(
                f"unknown builtin corpus {source!r} in {key}; known: {', '.join('builtin:' + b for b in BUILTINS)}")
        return [source]
    from etils import epath

    if any(c in source for c in GLOB_CHARS):
        head, _, pattern = _split_glob(source)
        base = epath.Path(head)
        matches = sorted(str(p) for p in base.glob(pattern)) if base.exists() else []
        files = [m for m in matches if file_kind(m)]
        if not files:
            raise CorpusError(f"{key} {source!r} matches no {'/'.join(SUFFIXES)} file: check the pattern")
        return files
    path = epath.Path(source)
    if not path.exists():
        raise CorpusError(f"{key} {source!r} does not exist: check the path (local, or gs://bucket/...)")
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if file_kind(str(p)))
        if not files:
            raise CorpusError(f"{key} directory {source!r} holds no {', '.join(SUFFIXES)} files")
        return files
    if not file_kind(source):
        raise CorpusError(
            f"{key} {source!r}: expected a {', '.join(SUFFIXES)} file, a directory or a glob (or builtin:pydoc_topics)")
    return [source]


def _split_glob(source: str) -> tuple[str, str, str]:
    """'gs://b/data/*.jsonl' -> ('gs://b/data', '/', '*.jsonl'): the fixed directory and the pattern."""
    first = min(source.index(c) for c in GLOB_CHARS if c in source)
    cut = source.rfind("/", 0, first)
    if cut < 0:
        return ".", "/", source
    return source[:cut] or "/", "/", source[cut + 1:]


def read_documents(path: str, text_field: str = "text", start: int = 0) -> Iterator[Document]:
    """One file's documents, lazily, from document `start` on (documents before it are skipped,
    not parsed). An empty or whitespace-only jsonl line is not a document."""
    if path.startswith("builtin:"):
        from pydoc_data.topics import topics

        yield from (topics[k] for k in sorted(topics)[start:])
        return
    kind = file_kind(path)
    try:
        if kind == "txt":
            yield from _paragraphs(path, start)
        elif kind == "parquet":
            yield from _parquet_documents(path, text_field, start)
        elif kind in ("arecord", "array_record"):
            yield from _arecord_documents(path, text_field, start)
        elif kind == "tfrecord":
            yield from _tfrecord_documents(path, text_field, start)
        else:
            yield from _jsonl_documents(path, kind or "jsonl", text_field, start)
    except CorpusError:
        raise
    except (OSError, EOFError, ValueError) as e:  # truncated gzip, unreadable file, bad zstd frame
        raise CorpusError(f"{path}: cannot read ({type(e).__name__}: {e}); replace or remove the file") from e


def _open(path: str, kind: str) -> Any:
    from etils import epath

    raw = epath.Path(path).open("rb")
    if kind == "jsonl.gz":
        return gzip.GzipFile(fileobj=raw)
    if kind == "jsonl.zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw


def _paragraphs(path: str, start: int) -> Iterator[str]:
    """A text file's documents: its paragraphs (separated by blank lines), read line by line."""
    n, lines = 0, []
    with _open(path, "txt") as f:
        for raw in f:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.strip():
                lines.append(line)
                continue
            if lines:
                n += 1
                if n > start:
                    yield "\n".join(lines)
                lines = []
        if lines and n + 1 > start:
            yield "\n".join(lines)


def _jsonl_documents(path: str, kind: str, text_field: str, start: int) -> Iterator[str]:
    n = 0
    with _open(path, kind) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if n <= start:
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorpusError(f"{path}:{i}: not a JSON object ({e}); fix or remove the line") from e
            text = obj.get(text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{i}: expected an object with a string field {text_field!r} "
                                  "(set data.text_field to the field that holds the text)")
            yield text


def _parquet_documents(path: str, text_field: str, start: int) -> Iterator[str]:
    import pyarrow.parquet as pq

    from etils import epath

    with epath.Path(path).open("rb") as raw:
        pf = pq.ParquetFile(raw)
        if text_field not in pf.schema_arrow.names:
            raise CorpusError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                              "set data.text_field")
        n = 0
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if n + rows <= start:
                n += rows
                continue
            column = pf.read_row_group(g, columns=[text_field]).column(0).to_pylist()
            for text in column[max(start - n, 0):]:
                if not isinstance(text, str):
                    raise CorpusError(f"{path}: row group {g} holds a non-string {text_field!r} value")
                yield text
            n += rows


def _arecord_documents(path: str, text_field: str, start: int) -> Iterator[Document]:
    """An ArrayRecord file's documents, record by record (read in chunks of 1024 records). A shard whose
    first record is a tf.train.Example holds Examples (`_example_document`); otherwise a record is a
    JSON object with a string `text_field` or an integer list `tokens` (pre-tokenized: the ids are
    the document, markers included), or else UTF-8 text."""
    from array_record.python.array_record_module import ArrayRecordReader

    from etils import epath

    if not epath.Path(path).exists():
        raise CorpusError(f"{path}: no such file; check data.source")
    def unreadable(e: RuntimeError) -> CorpusError:  # not an ArrayRecord file, or a truncated one
        return CorpusError(f"{path}: not a readable ArrayRecord file ({e}); replace or remove it")

    try:
        reader = ArrayRecordReader(path)
        n = reader.num_records()
    except RuntimeError as e:
        raise unreadable(e) from None
    if not reader.ok():  # what a file that is not ArrayRecord (or lost its footer) gives: no error, no records
        raise unreadable(RuntimeError("the reader reports a bad file"))
    try:
        try:  # the shard's format, from its first record: tf.train.Example protos, or JSON / text records
            examples = n > 0 and looks_like_example(reader.read([0])[0])
        except RuntimeError as e:
            raise unreadable(e) from None
        for lo in range(start, n, 1024):
            try:
                raws = reader.read(list(range(lo, min(lo + 1024, n))))
            except RuntimeError as e:
                raise unreadable(e) from None
            for i, raw in enumerate(raws, lo):
                yield (_example_document if examples else _arecord_document)(path, i, raw, text_field)
    finally:
        try:
            reader.close()
        except RuntimeError:  # a damaged file also fails to close; the reading error says what to do
            pass


def _tfrecord_documents(path: str, text_field: str, start: int) -> Iterator[Document]:
    """A TFRecord file's documents (tfrecord.py: both checksums verified), each record read as an
    ArrayRecord record is: a tf.train.Example when the file's first record is one, else JSON or text."""
    from etils import epath

    from distillc.runtime.data.tfrecord import TFRecordError, records

    examples = None
    with epath.Path(path).open("rb") as f:
        if start:  # the format is the first record's, so look at it before skipping
            first = next(records(f, path), None)
            examples = first is not None and looks_like_example(first)
            f.seek(0)
        try:
            for i, raw in enumerate(records(f, path, start), start):
                if examples is None:
                    examples = looks_like_example(raw)
                yield (_example_document if examples else _arecord_document)(path, i, raw, text_field)
        except TFRecordError as e:
            raise CorpusError(f"{e}; replace or remove the file") from None


def _arecord_document(path: str, index: int, raw: bytes, text_field: str) -> Document:
    where = f"{path} record {index}"
    if raw[:4] == PREPARED_MAGIC:
        raise CorpusError(f"{where} is a packed row of `distillc data prepare`: point data.source (or "
                          "data.prepared) at the prepared directory, not at its shards")
    if raw[:1] == b"{":
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorpusError(f"{where}: starts like JSON but is not ({e}); fix or remove the record") from e
        if isinstance(obj, dict) and isinstance(obj.get(text_field), str):
            return obj[text_field]
        tokens = obj.get("tokens") if isinstance(obj, dict) else None
        if isinstance(tokens, list) and all(isinstance(t, int) and t >= 0 for t in tokens):
            return np.asarray(tokens, np.int32)
        raise CorpusError(f"{where}: expected a string field {text_field!r} (data.text_field) or a list of "
                          "non-negative integer 'tokens'")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: neither JSON nor UTF-8 text ({e}), in a shard whose first record is not a "
                          "tf.train.Example; fix or remove the record") from e


def _example_document(path: str, index: int, raw: bytes, text_field: str) -> Document:
    """A record of a tf.train.Example shard: the `text_field` feature as text (a bytes_list of one
    UTF-8 value) or as ids (an int64_list: MaxText's pre-tokenized form), else an int64_list `tokens`."""
    where = f"{path} record {index}"
    try:
        features = parse_example(raw)
    except ExampleError as e:
        raise CorpusError(f"{where}: not a tf.train.Example ({e}), as the shard's first record is; fix or "
                          "remove the record") from None
    for name in (text_field, "tokens"):
        value = features.get(name)
        if isinstance(value, list) and name == text_field:
            if len(value) != 1:
                raise CorpusError(f"{where}: feature {name!r} holds {len(value)} values; expected one text")
            try:
                return value[0].decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{where}: feature {name!r} is not UTF-8 text ({e}); fix or remove the record") from None
        if isinstance(value, np.ndarray) and value.dtype == np.int64:
            bad = value[(value < 0) | (value >= 2**31)]
            if bad.size:
                raise CorpusError(f"{where}: feature {name!r} holds {int(bad[0])}, not a token id (outside "
                                  "[0, 2^31)); fix or remove the record")
            return value.astype(np.int32)
    have = ", ".join(f"{k} ({_feature_kind(v)})" for k, v in sorted(features.items()))
    raise CorpusError(f"{where}: a tf.train.Example without a bytes_list or int64_list feature {text_field!r} "
                      f"(data.text_field) or an int64_list 'tokens' (it has: {have}); set data.text_field")


def _feature_kind(value: Feature) -> str:
    if isinstance(value, list):
        return "bytes_list"
    return "int64_list" if value.dtype == np.int64 else "float_list"


def held_out(doc: Document, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: by a hash of its text (of its int32 ids when
    pre-tokenized), so the split needs no pass over the corpus, is the same for any process count,
    and duplicates land on one side."""
    if fraction <= 0:
        return False
    data = doc.encode("utf-8", errors="replace") if isinstance(doc, str) else np.asarray(doc, "<i4").tobytes()
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    return h < fraction * 2**64
