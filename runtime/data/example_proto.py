"""`tf.train.Example` records read from the protobuf wire format, without tensorflow or protobuf.

MaxText's and TFDS's ArrayRecord datasets hold one serialized `tf.train.Example` per record:

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }        (entries: key = 1, value = 2)
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Four messages are all a reader needs, so this is a small wire-format parser (varints, lengths,
fixed32) rather than a dependency on tensorflow or on generated protobuf classes. It accepts what
protobuf's own parser accepts for these messages: packed and unpacked repeated scalars, unknown
fields (skipped), a repeated map key (the last one wins), a repeated singular message (merged).
Packed int64 lists (pre-tokenized documents: thousands of ids a record) are decoded with numpy.
"""

from __future__ import annotations

from typing import Union

import numpy as np

Feature = Union[list[bytes], np.ndarray]  # bytes_list values; int64_list (int64) or float_list (float32) values

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ExampleError(ValueError):
    """Bytes that are not a serialized tf.train.Example; the message says where in the record."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """One varint at buf[pos:]: (value, position after it)."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ExampleError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ExampleError("varint longer than 10 bytes")


def _fields(buf: bytes) -> list[tuple[int, int, Union[int, bytes]]]:
    """A message's fields in order: (number, wire type, value: an int, or the bytes of a LEN/fixed field)."""
    out: list[tuple[int, int, Union[int, bytes]]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ExampleError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            out.append((number, wire, value))
            continue
        if wire == _LEN:
            size, pos = _varint(buf, pos)
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
        else:
            raise ExampleError(f"wire type {wire} (field {number})")
        if pos + size > len(buf):
            raise ExampleError(f"field {number} runs past the end ({size} bytes at offset {pos} of {len(buf)})")
        out.append((number, wire, buf[pos : pos + size]))
        pos += size
    return out


def packed_varints(buf: bytes) -> np.ndarray:
    """A packed run of varints as int64 (two's complement, as protobuf's int64), vectorised."""
    b = np.frombuffer(buf, np.uint8)
    if b.size == 0:
        return np.zeros(0, np.int64)
    ends = np.flatnonzero(b < 0x80)
    if ends.size == 0 or ends[-1] != b.size - 1:
        raise ExampleError("truncated varint in a packed list")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if int(lengths.max()) > 10:
        raise ExampleError("varint longer than 10 bytes in a packed list")
    shift = (np.arange(b.size) - np.repeat(starts, lengths)) * 7
    parts = (b & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.add.reduceat(parts, starts).view(np.int64)  # the parts' bits are disjoint: a sum is an OR


def _feature(buf: bytes) -> Feature:
    kind, body = None, b""
    for number, wire, value in _fields(buf):
        if number in (1, 2, 3):
            if wire != _LEN:
                raise ExampleError(f"Feature field {number} with wire type {wire}")
            assert isinstance(value, bytes)
            kind, body = number, value  # a oneof: the last one set wins
    if kind == 1:
        values: list[bytes] = []
        for number, wire, value in _fields(body):
            if number == 1:
                if not isinstance(value, bytes) or wire != _LEN:
                    raise ExampleError("a BytesList value that is not length-delimited")
                values.append(value)
        return values
    if kind == 3:
        parts = []
        for number, wire, value in _fields(body):
            if number == 1:
                if wire == _LEN:
                    assert isinstance(value, bytes)
                    parts.append(packed_varints(value))
                elif wire == _VARINT:
                    assert isinstance(value, int)
                    parts.append(np.array([value], np.uint64).view(np.int64))
                else:
                    raise ExampleError(f"an Int64List value with wire type {wire}")
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if kind == 2:
        chunks = []
        for number, wire, value in _fields(body):
            if number == 1:
                if wire not in (_LEN, _I32) or not isinstance(value, bytes) or len(value) % 4:
                    raise ExampleError("a FloatList value that is not fixed32")
                chunks.append(value)
        return np.frombuffer(b"".join(chunks), "<f4").astype(np.float32)
    return []  # no kind set: an empty feature, as protobuf reads it (an empty bytes_list)


def parse_example(buf: bytes) -> dict[str, Feature]:
    """The features of a serialized tf.train.Example, by name."""
    features: dict[str, Feature] = {}
    for number, wire, value in _fields(buf):
        if number != 1:
            continue  # unknown Example fields are skipped, as protobuf does
        if wire != _LEN or not isinstance(value, bytes):
            raise ExampleError(f"Example.features with wire type {wire}")
        for fnum, fwire, entry in _fields(value):
            if fnum != 1:
                continue
            if fwire != _LEN or not isinstance(entry, bytes):
                raise ExampleError(f"a feature map entry with wire type {fwire}")
            key, feature = b"", b""
            for enum, ewire, item in _fields(entry):
                if ewire == _LEN and isinstance(item, bytes) and enum in (1, 2):
                    key, feature = (item, feature) if enum == 1 else (key, item)
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ExampleError(f"a feature name that is not UTF-8 ({e})") from None
            features[name] = _feature(feature)
    return features


def looks_like_example(buf: bytes) -> bool:
    """Whether a record is a serialized Example with at least one feature (how a shard's format is
    told from its first record: JSON starts with '{', and text almost never parses as an Example)."""
    if not buf or buf[:1] != b"\x0a":  # field 1, length-delimited: how every non-empty Example starts
        return False
    try:
        return bool(parse_example(buf))
    except ExampleError:
        return False


__all__ = ["ExampleError", "Feature", "looks_like_example", "packed_varints", "parse_example"]
