"""Strict decoders: base64url, JSON with caps, canonical JSON."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.encoding import (
    MAX_DEPTH,
    MAX_JSON_NUMBER,
    b64url_decode,
    b64url_encode,
    canonical_json,
    parse_json,
    parse_json_object,
)
from tessera.errors import ErrorCode, TesseraError

B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

json_scalars = (
    st.none() | st.booleans() | st.integers(-MAX_JSON_NUMBER, MAX_JSON_NUMBER)
    | st.text(max_size=20)
    | st.floats(-MAX_JSON_NUMBER, MAX_JSON_NUMBER, allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


def _code(exc: pytest.ExceptionInfo[TesseraError]) -> ErrorCode:
    return exc.value.code


# -- base64url ---------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@given(st.binary(min_size=1, max_size=64))
def test_b64url_refuses_padding(data: bytes) -> None:
    padded = base64.urlsafe_b64encode(data).decode()
    if "=" not in padded:
        padded += "="  # whole groups have no padding; a stray '=' must still fail
    with pytest.raises(TesseraError) as exc:
        b64url_decode(padded)
    assert _code(exc) is ErrorCode.MALFORMED


@given(st.binary(min_size=1, max_size=64))
def test_b64url_refuses_standard_alphabet(data: bytes) -> None:
    std = base64.b64encode(data).decode().rstrip("=")
    if "+" not in std and "/" not in std:
        std = "+" + std[1:] if len(std) > 1 else "+"
    with pytest.raises(TesseraError) as exc:
        b64url_decode(std)
    assert _code(exc) is ErrorCode.MALFORMED


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=1, max_value=15))
def test_b64url_refuses_non_canonical_trailing_bits(data: bytes, bits: int) -> None:
    text = b64url_encode(data)
    rem = len(text) % 4
    if rem == 0:
        return  # a whole group has no spare bits
    spare = 0x0F if rem == 2 else 0x03
    if bits & spare == 0:
        return
    last = B64URL_ALPHABET.index(text[-1]) | (bits & spare)
    tampered = text[:-1] + B64URL_ALPHABET[last]
    # Python's lenient decoder maps both strings to the same bytes ...
    assert base64.urlsafe_b64decode(tampered + "=" * (-len(tampered) % 4)) == data
    # ... ours refuses, since digests are computed over the string.
    with pytest.raises(TesseraError) as exc:
        b64url_decode(tampered)
    assert _code(exc) is ErrorCode.MALFORMED


@given(st.text(max_size=40))
def test_b64url_decode_arbitrary_text_never_crashes(text: str) -> None:
    try:
        data = b64url_decode(text)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)
    else:
        assert b64url_encode(data) == text  # only the canonical form decodes


@given(st.text(alphabet=B64URL_ALPHABET + "+/=*. \n\t\x00\x7f", max_size=24))
def test_b64url_decode_accepts_exactly_canonical_base64url(text: str) -> None:
    # Mostly alphabet characters with a few others anywhere: the decoder's one
    # translate-and-strict-decode pass must accept exactly what a plain
    # reading of the rules accepts.
    well_formed = (set(text) <= set(B64URL_ALPHABET) and len(text) % 4 != 1
                   and b64url_encode(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
                   == text)
    try:
        data = b64url_decode(text)
    except TesseraError as exc:
        assert exc.code is ErrorCode.MALFORMED
        assert not well_formed
    else:
        assert well_formed and b64url_encode(data) == text


@pytest.mark.parametrize("bad", ["A", "AAAAA", "ab cd", "ab\ncd", "é", "AA==", "A-_*"])
def test_b64url_refuses_junk(bad: str) -> None:
    with pytest.raises(TesseraError) as exc:
        b64url_decode(bad)
    assert _code(exc) is ErrorCode.MALFORMED


def test_b64url_size_cap_and_type() -> None:
    with pytest.raises(TesseraError) as exc:
        b64url_decode("A" * 17, max_len=16)
    assert _code(exc) is ErrorCode.TOO_LARGE
    with pytest.raises(TesseraError) as exc:
        b64url_decode(b"AAAA")  # type: ignore[arg-type]
    assert _code(exc) is ErrorCode.MALFORMED


# -- JSON ---------------------------------------------------------------------------


@given(json_values)
def test_parse_json_round_trip(value: Any) -> None:
    text = json.dumps(value)
    assert parse_json(text) == value
    assert parse_json(text.encode("utf-8")) == value


_ws = st.text(alphabet=" \t\r\n", max_size=3)


@given(json_values, _ws, _ws, st.sampled_from(["", "x", "}", "]", ",", "\u00a0", '"']))
def test_parse_json_whole_document_only(value: Any, before: str, after: str, junk: str) -> None:
    """Whitespace around a document is JSON; anything else after it is refused."""
    text = before + json.dumps(value) + after + junk
    if junk:
        with pytest.raises(TesseraError) as exc:
            parse_json(text.encode("utf-8"))
        assert _code(exc) is ErrorCode.MALFORMED
    else:
        assert parse_json(text.encode("utf-8")) == value
        assert parse_json(text) == value


@given(st.dictionaries(st.text(max_size=6), st.integers(-MAX_JSON_NUMBER, MAX_JSON_NUMBER),
                       min_size=1, max_size=5), st.data())
def test_parse_json_refuses_duplicate_members(obj: dict[str, int], data: st.DataObject) -> None:
    dup = data.draw(st.sampled_from(sorted(obj)))
    members = [json.dumps(k) + ":" + json.dumps(v) for k, v in obj.items()]
    members.append(json.dumps(dup) + ":0")
    text = "{" + ",".join(members) + "}"
    with pytest.raises(TesseraError) as exc:
        parse_json(text)
    assert _code(exc) is ErrorCode.MALFORMED


def test_parse_json_refuses_nested_duplicates() -> None:
    with pytest.raises(TesseraError) as exc:
        parse_json('{"a": [{"x": 1, "x": 2}]}')
    assert _code(exc) is ErrorCode.MALFORMED


@given(st.integers(min_value=MAX_DEPTH + 1, max_value=MAX_DEPTH + 200), st.booleans())
def test_parse_json_depth_cap(depth: int, arrays: bool) -> None:
    text = ("[" * depth + "]" * depth) if arrays else ('{"a":' * depth + "1" + "}" * depth)
    with pytest.raises(TesseraError) as exc:
        parse_json(text)
    assert _code(exc) is ErrorCode.TOO_LARGE


def test_parse_json_depth_at_the_cap_is_fine() -> None:
    text = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(text) is not None
    # Many brackets side by side are wide, not deep.
    assert len(parse_json("[" + ",".join(["[]"] * 100) + "]")) == 100


def test_parse_json_very_deep_input_is_too_large_not_a_crash() -> None:
    # Deep enough to hit the interpreter's recursion limit inside json.
    with pytest.raises(TesseraError) as exc:
        parse_json("[" * 100_000 + "]" * 100_000, max_bytes=10**6)
    assert _code(exc) is ErrorCode.TOO_LARGE


@given(st.integers(min_value=1, max_value=64))
def test_parse_json_size_cap(cap: int) -> None:
    text = json.dumps("x" * cap)  # cap + 2 bytes with the quotes
    with pytest.raises(TesseraError) as exc:
        parse_json(text, max_bytes=cap)
    assert _code(exc) is ErrorCode.TOO_LARGE
    assert parse_json(text, max_bytes=cap + 2) == "x" * cap


def test_parse_json_size_counts_utf8_bytes() -> None:
    text = json.dumps("é" * 10, ensure_ascii=False)  # 12 characters, 22 bytes
    with pytest.raises(TesseraError):
        parse_json(text, max_bytes=21)
    assert parse_json(text, max_bytes=22) == "é" * 10


@pytest.mark.parametrize("bad", ["NaN", "[Infinity]", '{"a": -Infinity}', "", "{", "[1,]",
                                 "{'a': 1}", '"\\x"'])
def test_parse_json_refuses_non_json(bad: str) -> None:
    with pytest.raises(TesseraError) as exc:
        parse_json(bad)
    assert _code(exc) is ErrorCode.MALFORMED


@pytest.mark.parametrize("bad", [
    "1e400", "-1e400", "[1E400]", '{"iat": 1e400}', "1e309", "9007199254740992",
    "-9007199254740992", "1e16", "-1.5e300", "1" * 5000, "[" + "9" * 18 + "]",
])
def test_parse_json_refuses_non_finite_and_out_of_range_numbers(bad: str) -> None:
    # 1e400 used to parse to inf, and int(inf) raised OverflowError deep in
    # the verifiers (issue 9 item 6).
    with pytest.raises(TesseraError) as exc:
        parse_json(bad)
    assert _code(exc) is ErrorCode.MALFORMED


@pytest.mark.parametrize("good", [
    "9007199254740991", "-9007199254740991", "9.007199254740991e15", "1e-400", "-0", "0.5",
])
def test_parse_json_keeps_numbers_at_the_edge_of_the_range(good: str) -> None:
    assert parse_json(good) == json.loads(good)


@given(st.integers() | st.floats(allow_nan=False))
def test_parse_json_numbers_in_range_or_malformed(value: int | float) -> None:
    text = json.dumps(value)
    if abs(value) <= MAX_JSON_NUMBER:
        assert parse_json(text) == value
    else:
        with pytest.raises(TesseraError) as exc:
            parse_json(text)
        assert _code(exc) is ErrorCode.MALFORMED


def test_parse_json_refuses_invalid_utf8() -> None:
    with pytest.raises(TesseraError) as exc:
        parse_json(b'"\xff"')
    assert _code(exc) is ErrorCode.MALFORMED


@given(st.text(max_size=60))
def test_parse_json_arbitrary_text_never_crashes(text: str) -> None:
    try:
        parse_json(text)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


@given(st.binary(max_size=60))
def test_parse_json_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        parse_json(data)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


def test_parse_json_object_requires_an_object() -> None:
    assert parse_json_object('{"a": 1}') == {"a": 1}
    for bad in ("[]", "1", '"x"', "null"):
        with pytest.raises(TesseraError) as exc:
            parse_json_object(bad)
        assert _code(exc) is ErrorCode.MALFORMED


@given(json_values)
def test_canonical_json_is_order_independent_and_parses_back(value: Any) -> None:
    encoded = canonical_json(value)
    assert parse_json(encoded) == value
    if isinstance(value, dict):
        reordered = dict(reversed(list(value.items())))
        assert canonical_json(reordered) == encoded


def test_canonical_json_known_form() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == \
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()
