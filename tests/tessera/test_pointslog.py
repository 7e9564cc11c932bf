"""tessera.pointslog: leaf encoding and pseudonyms."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.errors import ErrorCode, TesseraError
from tessera.merkle import leaf_hash
from tessera.pointslog import LogLeaf, member_pseudonym, parse_leaf, total

SECRET = bytes(range(32))


def _leaf(**kw: object) -> LogLeaf:
    args: dict = dict(entry=7, member=member_pseudonym(SECRET, "m1"), delta=-50,  # type: ignore[type-arg]
                      kind="redeem", reason=None,
                      time=datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
                      idempotency_key="k")
    args.update(kw)
    return LogLeaf.of(**args)


def test_leaf_bytes_are_canonical_and_hashed_per_rfc9162() -> None:
    leaf = _leaf()
    raw = leaf.to_bytes()
    assert json.loads(raw)["time"] == "2026-01-01T12:00:00.123Z"
    assert raw == json.dumps(json.loads(raw), separators=(",", ":"), sort_keys=True).encode()
    assert leaf.hash == leaf_hash(raw)
    # Same instant in another zone, same leaf.
    other = _leaf(time=datetime(2026, 1, 1, 14, 0, 0, 123999, tzinfo=timezone(timedelta(hours=2))))
    assert other.hash == leaf.hash
    assert parse_leaf(json.loads(raw)) == leaf


def test_pseudonym_is_keyed() -> None:
    a = member_pseudonym(SECRET, "m1")
    assert a == member_pseudonym(SECRET, "m1") != member_pseudonym(SECRET, "m2")
    assert a != member_pseudonym(bytes(32), "m1")
    with pytest.raises(TesseraError):
        member_pseudonym(b"short", "m1")


def test_total() -> None:
    assert total([_leaf(delta=100, kind="earn"), _leaf(delta=-30)]) == 70


@pytest.mark.parametrize("change", [
    {"v": 2}, {"kind": "mint"}, {"delta": "5"}, {"delta": True}, {"extra": 1},
    {"reason": 5}, {"time": None},
])
def test_parse_refuses(change: dict) -> None:  # type: ignore[type-arg]
    body = _leaf().as_json() | change
    with pytest.raises(TesseraError) as info:
        parse_leaf(body)
    assert info.value.code in (ErrorCode.MALFORMED, ErrorCode.UNSUPPORTED_FORMAT)


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.integers(), st.text(), st.none()),
                       max_size=10))
def test_parse_never_crashes(value: dict) -> None:  # type: ignore[type-arg]
    with contextlib.suppress(TesseraError):
        parse_leaf(value)
