"""Metadata bounds and its S3 header encoding: anything enqueue accepts fits S3's 2 KB of user
metadata as header-safe ASCII, and the encoding reads back exactly."""

import re

from hypothesis import given
from hypothesis import strategies as st

from producer.core.metadata import (
    MAX_KEYS,
    decode_value,
    encode_value,
    metadata_problems,
    object_metadata,
)

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # an HTTP header name (lower-cased)
_VALUE = re.compile(r"[\x20-\x7e]*")
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


@given(st.dictionaries(any_text, any_text, max_size=40))
def test_accepted_metadata_always_fits_s3_as_header_safe_ascii(metadata):
    if metadata_problems(metadata):
        return
    encoded = object_metadata("job_" + "0" * 32, metadata)
    assert all(_TOKEN.fullmatch(k) for k in encoded)
    assert all(_VALUE.fullmatch(v) and v == v.strip() for v in encoded.values())
    assert sum(len(k.encode()) + len(v.encode()) for k, v in encoded.items()) <= 2048


@given(any_text)
def test_an_encoded_value_decodes_to_the_original(value):
    assert decode_value(encode_value(value)) == value


def test_a_value_with_a_newline_is_encoded_and_a_plain_one_is_kept():
    assert encode_value("order 17") == "order 17"
    assert encode_value("a\nb") == "=?UTF-8?B?YQpi?="
    assert encode_value("=?UTF-8?B?YQpi?=") != "=?UTF-8?B?YQpi?="  # no plain lookalike
    assert encode_value(" edge") != " edge"


def test_each_bound_is_refused_with_its_reason():
    def reasons(metadata):
        return " ".join(p["message"] for p in metadata_problems(metadata))

    assert "at most 32 keys" in reasons({str(i): "v" for i in range(MAX_KEYS + 1)})
    assert "1 to 128 characters" in reasons({"": "v"})
    assert "longer than 1024" in reasons({"k": "v" * 1025})
    assert "reserved" in reasons({"Job-Id": "x"})
    assert "differ only in case" in reasons({"User": "a", "user": "b"})
    assert "once encoded for S3" in reasons({f"k{i}": "é" * 100 for i in range(10)})
    assert metadata_problems({"order": "17", "note": "line\nbreak"}) == []


@given(st.dictionaries(st.text(min_size=1, max_size=8), any_text, max_size=12))
def test_the_size_check_refuses_exactly_what_is_too_big_once_encoded(metadata):
    # metadata_problems skips the encoding when a bound shows it fits: the verdict must not move
    from producer.core.metadata import MAX_ENCODED_BYTES

    exact = sum(len(k) + len(v) for k, v in object_metadata("", metadata).items())
    refused_for_size = any("once encoded" in p["message"] for p in metadata_problems(metadata))
    other_problems = [p for p in metadata_problems(metadata) if "once encoded" not in p["message"]]
    if not other_problems:
        assert refused_for_size == (exact > MAX_ENCODED_BYTES)
