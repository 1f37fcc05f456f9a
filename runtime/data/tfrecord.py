"""TFRecord files (TFDS's and MaxText's other shard format) read record by record, without tensorflow.

A TFRecord file is a sequence of records, each

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

(little-endian; masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32 with c = CRC-32C
of x). Both checksums are verified, so a damaged or truncated file is an error naming the record,
never a document made of its bytes. The records are what ArrayRecord shards hold: usually
tf.train.Example protos (corpus.py reads them the same way). CRC-32C comes from google-crc32c (a
dependency of the Cloud Storage client already installed, with a C implementation).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Iterator

import google_crc32c

_MASK_DELTA = 0xA282EAD8


class TFRecordError(ValueError):
    """A TFRecord file that is damaged or truncated at a record (the message names it)."""


def masked_crc(data: bytes) -> int:
    crc = int.from_bytes(google_crc32c.Checksum(data).digest(), "big")
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def records(f: BinaryIO, path: str, start: int = 0) -> Iterator[bytes]:
    """The records of an open TFRecord file from record `start` on (earlier ones are skipped by
    their length, their data not read)."""
    index = 0
    while True:
        head = f.read(12)
        if not head:
            return
        if len(head) < 12:
            raise TFRecordError(f"{path}: truncated at record {index} (its header has {len(head)} of 12 bytes)")
        length, crc = struct.unpack("<QI", head)
        if masked_crc(head[:8]) != crc:
            raise TFRecordError(f"{path}: record {index}'s length fails its checksum: not a TFRecord file, or "
                                "a damaged one")
        if index < start:
            f.seek(length + 4, 1)
            index += 1
            continue
        data = f.read(length)
        tail = f.read(4)
        if len(data) < length or len(tail) < 4:
            raise TFRecordError(f"{path}: truncated in record {index} ({len(data)} of its {length} bytes)")
        if masked_crc(data) != struct.unpack("<I", tail)[0]:
            raise TFRecordError(f"{path}: record {index}'s data fails its checksum (a damaged file)")
        yield data
        index += 1


def write_record(f: BinaryIO, data: bytes) -> None:
    """One record in the format above (what tf.io.TFRecordWriter writes): for tests and benches."""
    head = struct.pack("<Q", len(data))
    f.write(head + struct.pack("<I", masked_crc(head)) + data + struct.pack("<I", masked_crc(data)))
