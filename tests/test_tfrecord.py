"""runtime/data/tfrecord.py and TFRecord sources: the record framing checked against a known byte
string, both checksums enforced, and documents read as from ArrayRecord shards."""

from __future__ import annotations

import io
import json

import pytest

from distillc.runtime.data.corpus import CorpusError, expand, file_kind, read_documents
from distillc.runtime.data.tfrecord import TFRecordError, masked_crc, records, write_record
from tests.example_encoder import bytes_feature, example, int64_feature


def write(path, datas) -> None:
    with open(path, "wb") as f:
        for d in datas:
            write_record(f, d)


def test_known_bytes():
    """CRC-32C's check value (of b"123456789": 0xE3069283, RFC 3720), masked as TFRecord masks it; and
    one record laid out field by field."""
    crc = 0xE3069283
    assert masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    buf = io.BytesIO()
    write_record(buf, b"abc")
    raw = buf.getvalue()
    assert raw[:8] == (3).to_bytes(8, "little") and raw[12:15] == b"abc" and len(raw) == 8 + 4 + 3 + 4
    assert int.from_bytes(raw[8:12], "little") == masked_crc(raw[:8])
    assert int.from_bytes(raw[15:], "little") == masked_crc(b"abc")
    assert list(records(io.BytesIO(raw * 3), "f", start=1)) == [b"abc", b"abc"]


@pytest.mark.parametrize("damage, needle", [
    (lambda raw: raw[:-2], "truncated in record 1"),
    (lambda raw: raw[:25], "truncated at record 1"),
    (lambda raw: raw[:13] + b"X" + raw[14:], "record 0's data fails its checksum"),
    (lambda raw: b"\x07" + raw[1:], "record 0's length fails its checksum"),
    (lambda raw: b'{"text": "not a tfrecord"}\n' * 3, "record 0's length fails its checksum"),
])
def test_damage_is_named(damage, needle):
    buf = io.BytesIO()
    write_record(buf, b"abc"), write_record(buf, b"defg")
    with pytest.raises(TFRecordError, match=needle):
        list(records(io.BytesIO(damage(buf.getvalue())), "f"))


def test_documents_as_from_arrayrecord(tmp_path):
    ex = tmp_path / "c4-train.tfrecord-00000-of-00002"
    write(ex, [example(text=bytes_feature("héllo".encode())), example(tokens=int64_feature([5, 6, 7])),
               example(text=int64_feature([8, 9], packed=False))])
    assert file_kind(str(ex)) == "tfrecord"
    got = list(read_documents(str(ex)))
    assert got[0] == "héllo" and got[1].tolist() == [5, 6, 7] and got[2].tolist() == [8, 9]
    assert [d.tolist() for d in read_documents(str(ex), start=1)] == [[5, 6, 7], [8, 9]]  # resumed mid-file
    js = tmp_path / "b.tfrecord"
    write(js, [json.dumps({"body": "x"}).encode(), b"plain text"])
    assert list(read_documents(str(js), "body", start=0)) == ["x", "plain text"]
    assert list(read_documents(str(js), "body", start=1)) == ["plain text"]
    assert expand(str(tmp_path / "c4-train.tfrecord*")) == [str(ex)]  # TFDS's shard names, globbed as MaxText does
    assert expand(str(tmp_path)) == [str(js), str(ex)]


def test_a_damaged_file_is_a_corpus_error_naming_it(tmp_path):
    bad = tmp_path / "bad.tfrecord"
    write(bad, [b"one", b"two"])
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(CorpusError, match=r"bad.tfrecord: truncated in record 1 .*replace or remove the file"):
        list(read_documents(str(bad)))


def test_the_pipeline_packs_the_same_rows_as_from_arrayrecord(tmp_path):
    from distillc.runtime.data.pipeline import DataPipeline, Shard
    from tests.test_prepared import cfg, same, write_arecord

    texts = [f"document {i} " + "xy" * (i % 17) for i in range(300)]
    (tmp_path / "tf").mkdir(), (tmp_path / "ar").mkdir()
    write(tmp_path / "tf" / "a.tfrecord", [example(text=bytes_feature(t.encode())) for t in texts])
    write_arecord(tmp_path / "ar" / "a.arecord", [example(text=bytes_feature(t.encode())) for t in texts])
    rows = []
    for d in ("tf", "ar"):
        p = DataPipeline(cfg(source=str(tmp_path / d)))
        rows.append(list(p._rows(p._documents(p.train_files[0][0], "train", Shard(), 1, "data.source"))))
    assert len(rows[0]) == len(rows[1]) > 100 and all(same(a, b) for a, b in zip(*rows))
