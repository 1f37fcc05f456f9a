"""A tiny tf.train.Example encoder for test fixtures (protobuf wire format, by hand: no tensorflow)."""

from __future__ import annotations

from typing import Iterable


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 as protobuf writes it: two's complement, 10 bytes when negative
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bytes_feature(*values: bytes) -> bytes:
    return field(1, b"".join(field(1, v) for v in values))


def int64_feature(values: Iterable[int], packed: bool = True) -> bytes:
    if packed:
        body = field(1, b"".join(varint(v) for v in values))
    else:
        body = b"".join(varint(1 << 3) + varint(v) for v in values)
    return field(3, body)


def float_feature(values: Iterable[float]) -> bytes:
    import struct

    return field(2, field(1, b"".join(struct.pack("<f", v) for v in values)))


def example(**features: bytes) -> bytes:
    """An Example of the given (already encoded) features, map entries in the order given."""
    return field(1, b"".join(field(1, field(1, k.encode()) + field(2, f)) for k, f in features.items()))
