"""`canonical_json` is RFC 8785 (JCS) byte for byte: checked against the `rfc8785` package on
generated JSON values and on the cases where orjson's own output differs (issue 10)."""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.canonical import MAX_SAFE_INTEGER, canonical_json, ecmascript_number
from shared.errors import InvalidMessage

# Keys and strings from every plane, weighted towards the ranges where orders and escapes differ:
# ASCII controls, U+E000..U+FFFF (after the surrogates in UTF-16, before them in UTF-8) and
# astral characters (surrogate pairs in UTF-16).
_chars = st.one_of(
    st.characters(codec="utf-8"),
    st.characters(min_codepoint=0x00, max_codepoint=0x7F),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFF),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
)
_text = st.text(_chars, max_size=6)
_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    # every bit pattern, so exponents at the 1e-7 / 1e21 boundaries and subnormals come up
    st.integers(0, 2**64 - 1)
    .map(lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0])
    .filter(math.isfinite),
    st.integers(-(2**60), 2**60).map(float),
    st.sampled_from([1e-7, 1e-6, 1e20, 1e21, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1700000000.25]),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), _floats, _text)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_text, inner, max_size=6)),
    max_leaves=40,
)


@settings(max_examples=1000, deadline=None)
@given(_json)
@example({"\ue000": 1, "\U0001f600": 2, "a": {"\uffff": [1.0], "\U00010000": -0.0}})
@example([1e16, 1e20, 1e21, 1e-6, 1e-7, 123456789012345680000.0, 2.5e-7, 4.35, 0.000001234])
@example({'\x00\x1f\x7f\u2028\u2029"\\/\b\f\n\r\t': '\x00\x1f\x7f\u2028\u2029"\\/\b\f\n\r\t'})
def test_canonical_json_is_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(_floats)
def test_number_text_is_ecmascript_and_round_trips(number: float) -> None:
    text = ecmascript_number(number)
    assert text == rfc8785.dumps(number)
    assert float(text) == number


@settings(max_examples=1000)
@given(
    st.one_of(
        st.floats(min_value=1e-4, max_value=1e16, exclude_max=True),
        st.floats(min_value=1e-4, max_value=1e-3),
        st.floats(min_value=1e15, max_value=1e16, exclude_max=True),
    ).filter(lambda x: not x.is_integer())
)
@example(1e-4 + 1e-20)
@example(999999999999999.9)
def test_orjson_writes_jcs_for_the_floats_it_is_trusted_with(number: float) -> None:
    # canonical_json leaves these floats to orjson (its fast path)
    assert orjson.dumps(number) == orjson.dumps(-number)[1:] == ecmascript_number(number) == rfc8785.dumps(number)


@pytest.mark.parametrize(
    ("value", "jcs", "orjson_said"),
    [
        # the differences found between orjson's sorted output and JCS
        (1.0, b"1", b"1.0"),
        (-0.0, b"0", b"-0.0"),
        (1e16, b"10000000000000000", b"1e+16"),
        (1e20, b"100000000000000000000", b"1e+20"),
        (1e-6, b"0.000001", b"1e-6"),
        (
            {"\ue000": 1, "\U0001f600": 2},
            '{"\U0001f600":2,"\ue000":1}'.encode(),
            '{"\ue000":1,"\U0001f600":2}'.encode(),
        ),
        # where both agree
        (1e21, b"1e+21", b"1e+21"),
        (1e-7, b"1e-7", b"1e-7"),
        ("\u2028\x1f", b'"\xe2\x80\xa8\\u001f"', b'"\xe2\x80\xa8\\u001f"'),
    ],
)
def test_known_differences_from_orjson(value: Any, jcs: bytes, orjson_said: bytes) -> None:
    assert canonical_json(value) == jcs == rfc8785.dumps(value)
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == orjson_said


@pytest.mark.parametrize("value", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64, {"a": [2**60]}])
def test_integers_beyond_2_53_are_refused(value: Any) -> None:
    with pytest.raises(InvalidMessage, match="outside"):
        canonical_json(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, {"a": [-math.inf]}])
def test_non_finite_numbers_are_refused(value: Any) -> None:
    with pytest.raises(InvalidMessage, match="non-finite"):
        canonical_json(value)


def test_rfc8785_appendix_b_numbers() -> None:
    # RFC 8785 Appendix B: IEEE 754 bit patterns and their JCS text (the finite ones).
    vectors = {
        0x0000000000000000: "0",
        0x8000000000000000: "0",
        0x0000000000000001: "5e-324",
        0x8000000000000001: "-5e-324",
        0x7FEFFFFFFFFFFFFF: "1.7976931348623157e+308",
        0xFFEFFFFFFFFFFFFF: "-1.7976931348623157e+308",
        0x4340000000000000: "9007199254740992",
        0xC340000000000000: "-9007199254740992",
        0x4430000000000000: "295147905179352830000",
        0x44B52D02C7E14AF5: "9.999999999999997e+22",
        0x44B52D02C7E14AF6: "1e+23",
        0x44B52D02C7E14AF7: "1.0000000000000001e+23",
        0x444B1AE4D6E2EF4E: "999999999999999700000",
        0x444B1AE4D6E2EF4F: "999999999999999900000",
        0x444B1AE4D6E2EF50: "1e+21",
        0x3EB0C6F7A0B5ED8C: "9.999999999999997e-7",
        0x3EB0C6F7A0B5ED8D: "0.000001",
        0x41B3DE4355555553: "333333333.3333332",
        0x41B3DE4355555554: "333333333.33333325",
        0x41B3DE4355555555: "333333333.3333333",
        0x41B3DE4355555556: "333333333.3333334",
        0x41B3DE4355555557: "333333333.33333343",
        0xBECBF647612F3696: "-0.0000033333333333333333",
        0x43143FF3C1CB0959: "1424953923781206.2",
    }
    for bits, text in vectors.items():
        number = struct.unpack(">d", bits.to_bytes(8, "big"))[0]
        assert ecmascript_number(number) == text.encode(), hex(bits)


def test_rfc8785_section_3_2_4_example() -> None:
    # RFC 8785 §3.2.3 sorting example, keys written as in the RFC (UTF-16 order).
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = [key for key in orjson.loads(canonical_json(value))]
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(Exception, match="surrogate"):
        canonical_json({"\ud800": 1, "\U0001f600": 2})
    with pytest.raises(Exception, match="surrogate"):
        canonical_json("\ud800")


def test_subclasses_are_their_json_base_type_and_other_types_are_refused() -> None:
    from datetime import UTC, datetime
    from enum import IntEnum, StrEnum

    class Colour(StrEnum):
        RED = "red"

    class Level(IntEnum):
        HIGH = 3

    assert canonical_json({"c": Colour.RED, "l": Level.HIGH, "t": (1.5, 2.0)}) == b'{"c":"red","l":3,"t":[1.5,2]}'
    with pytest.raises(TypeError, match="not a JSON value"):
        canonical_json({"at": datetime(2026, 1, 1, tzinfo=UTC)})
