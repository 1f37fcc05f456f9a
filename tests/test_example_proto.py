"""The tf.train.Example wire-format reader: known bytes, protobuf's own encoding, malformed records."""

from __future__ import annotations

import numpy as np
import pytest

from distillc.runtime.data.example_proto import ExampleError, looks_like_example, packed_varints, parse_example
from tests.example_encoder import bytes_feature, example, field, float_feature, int64_feature, varint

# Worked out by hand from the wire format: Example{features{feature{key "text" value{bytes_list{"hi"}}}}}
TEXT_HI = bytes.fromhex("0a 10 0a 0e 0a 04 74 65 78 74 12 06 0a 04 0a 02 68 69")
# ... and {"tokens": int64_list [1, 300]} (300 = varint ac 02), packed
TOKENS = bytes.fromhex("0a 13 0a 11 0a 06 74 6f 6b 65 6e 73 12 07 1a 05 0a 03 01 ac 02")


def test_known_bytes():
    assert example(text=bytes_feature(b"hi")) == TEXT_HI
    assert example(tokens=int64_feature([1, 300])) == TOKENS
    assert parse_example(TEXT_HI) == {"text": [b"hi"]}
    got = parse_example(TOKENS)["tokens"]
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.tolist() == [1, 300]


def test_what_protobuf_accepts():
    values = [0, 1, 127, 128, 300, 2**31 - 1, 2**40 + 5, 2**63 - 1, -1, -(2**63)]
    for packed in (True, False):
        got = parse_example(example(ids=int64_feature(values, packed=packed)))["ids"]
        assert isinstance(got, np.ndarray) and got.tolist() == values
    floats = parse_example(example(f=float_feature([0.5, -2.0])))["f"]
    assert isinstance(floats, np.ndarray) and floats.dtype == np.float32 and floats.tolist() == [0.5, -2.0]
    unknown = field(7, b"ignored") + varint(2 << 3) + varint(5)  # unknown LEN and varint fields are skipped
    rec = example(a=bytes_feature(b"x", b"yz"), b=bytes_feature()) + unknown
    assert parse_example(rec) == {"a": [b"x", b"yz"], "b": []}
    assert parse_example(example(a=bytes_feature(b"1")) + example(a=bytes_feature(b"2"))) == {"a": [b"2"]}


def test_packed_varints_match_one_at_a_time():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.integers(0, 2**62, 500), rng.integers(-(2**62), 0, 50), [0, 2**63 - 1]])
    buf = b"".join(varint(int(v)) for v in values)
    assert packed_varints(buf).tolist() == values.tolist()


@pytest.mark.parametrize("bad", [TEXT_HI[:-1], TOKENS[:-2], b"\x0a\x05\x0a", b"\x0b\x00", b"\x08" + b"\xff" * 11])
def test_malformed_records(bad):
    with pytest.raises(ExampleError):
        parse_example(bad)
    assert not looks_like_example(bad)


def test_telling_examples_from_json_and_text():
    assert looks_like_example(TEXT_HI) and looks_like_example(TOKENS)
    for other in (b'{"text": "hi"}', b"plain text", b"\nA paragraph", b"", example()):
        assert not looks_like_example(other)


def test_protobufs_own_encoding():
    """tf.train.Example built from a descriptor in code (protobuf is installed with orbax; tensorflow is not):
    protobuf's bytes parse to the same features, and protobuf parses ours to the same message."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="distillc_test_example.proto", package="dctest", syntax="proto3")

    def msg(name, *fields, **opts):
        m = fd.message_type.add(name=name, **opts)
        for fname, number, ftype, label, tname in fields:
            m.field.add(name=fname, number=number, type=ftype, label=label, type_name=tname)
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    msg("BytesList", ("value", 1, F.TYPE_BYTES, rep, None))
    msg("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None))
    msg("Int64List", ("value", 1, F.TYPE_INT64, rep, None))
    feature = msg("Feature", ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".dctest.BytesList"),
                  ("float_list", 2, F.TYPE_MESSAGE, opt, ".dctest.FloatList"),
                  ("int64_list", 3, F.TYPE_MESSAGE, opt, ".dctest.Int64List"))
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = msg("Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".dctest.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".dctest.Feature")
    msg("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".dctest.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    Example = message_factory.GetMessageClass(pool.FindMessageTypeByName("dctest.Example"))

    ex = Example()
    ex.features.feature["text"].bytes_list.value.append("é 🙂".encode())
    ex.features.feature["tokens"].int64_list.value.extend([5, 2**40, -3])
    ex.features.feature["score"].float_list.value.extend([1.5])
    got = parse_example(ex.SerializeToString())
    assert got["text"] == ["é 🙂".encode()] and got["tokens"].tolist() == [5, 2**40, -3]  # type: ignore[union-attr]
    assert got["score"].tolist() == [1.5]  # type: ignore[union-attr]
    assert Example.FromString(TOKENS).features.feature["tokens"].int64_list.value == [1, 300]
    assert Example.FromString(TEXT_HI).features.feature["text"].bytes_list.value == [b"hi"]
