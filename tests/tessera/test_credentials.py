"""Credential types: claim builders, derived booleans, schema validation."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import credentials
from tessera.credentials import (
    CREDENTIAL_TYPES,
    DEFAULT_POINTS_LADDER,
    MEMBERSHIP,
    POINTS,
    by_name,
    by_vct,
    membership_claims,
    points_claims,
)
from tessera.errors import ErrorCode, TesseraError

PROGRAM = {"id": "https://acme.example/programs/miles", "name": "Acme Miles",
           "brand": "did:web:acme.example"}
TIERS = (("bronze", 0), ("silver", 1), ("gold", 2), ("platinum", 3))
ROOT = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def _membership(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        program=PROGRAM, membership_number="A-1", tier="gold", tiers=TIERS,
        member_since=date(2020, 5, 1), tier_valid_until=date(2027, 1, 31),
    )
    kwargs.update(overrides)
    return membership_claims(**kwargs)


def _points(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        program=PROGRAM, membership_number="A-1", balance=1250,
        as_of=datetime(2026, 11, 23, 12, 0, tzinfo=UTC), checkpoint=(7, ROOT),
    )
    kwargs.update(overrides)
    return points_claims(**kwargs)


def test_lookup_by_name_and_vct() -> None:
    for ctype in CREDENTIAL_TYPES:
        assert by_name(ctype.name) is ctype
        assert by_vct(ctype.vct) is ctype
        assert ctype.type_metadata["vct"] == ctype.vct
        assert ctype.schema["title"] == ctype.name
    for bad in (lambda: by_name("Passport"), lambda: by_vct("https://evil.example/vct")):
        with pytest.raises(TesseraError) as exc:
            bad()
        assert exc.value.code is ErrorCode.UNSUPPORTED_FORMAT


def test_membership_derived_booleans() -> None:
    claims = _membership(name="Ada", email="ada@example.com")
    assert claims["tier"] == {"name": "gold", "rank": 2}
    assert claims["tier_at_least_bronze"] is True
    assert claims["tier_at_least_silver"] is True
    assert claims["tier_at_least_gold"] is True
    assert claims["tier_at_least_platinum"] is False
    assert claims["member_since"] == "2020-05-01"
    assert claims["program"] == PROGRAM


@pytest.mark.parametrize(("tier", "expected"), [
    ("bronze", [True, False, False, False]),
    ("platinum", [True, True, True, True]),
])
def test_membership_ladder_ends(tier: str, expected: list[bool]) -> None:
    claims = _membership(tier=tier)
    assert [claims[f"tier_at_least_{t}"] for t, _ in TIERS] == expected


def test_membership_unknown_tier() -> None:
    with pytest.raises(TesseraError) as exc:
        _membership(tier="diamond")
    assert exc.value.code is ErrorCode.SCHEMA_INVALID


@given(st.integers(min_value=0, max_value=10**9))
def test_points_ladder(balance: int) -> None:
    claims = _points(balance=balance)
    for step in DEFAULT_POINTS_LADDER:
        assert claims[f"points_at_least_{step}"] is (balance >= step)
    assert claims["points_balance"] == balance


def test_points_shape() -> None:
    claims = _points(expiring_next=(200, date(2027, 3, 1)), ladder=(1000, 100, 1000))
    assert claims["as_of"] == "2026-11-23T12:00:00Z"
    assert claims["checkpoint"] == {"tree_size": 7, "root_hash": ROOT}
    assert claims["points_expiring_next"] == {"points": 200, "on": "2027-03-01"}
    assert sorted(k for k in claims if k.startswith("points_at_least_")) == [
        "points_at_least_100", "points_at_least_1000"]


@pytest.mark.parametrize("overrides", [
    {"balance": -1},
    {"as_of": datetime(2026, 11, 23)},  # naive
    {"checkpoint": (1, "not-a-hash")},
    {"membership_number": ""},
])
def test_points_invalid(overrides: dict[str, Any]) -> None:
    with pytest.raises(TesseraError) as exc:
        _points(**overrides)
    assert exc.value.code is ErrorCode.SCHEMA_INVALID


@pytest.mark.parametrize("change", [
    {"email": "not an email"},
    {"nickname": "extra claim"},
    {"tier": {"name": "gold", "rank": 2, "secret": 1}},
    {"tier": {"name": "Gold!", "rank": 2}},
    {"member_since": "yesterday"},
    {"tier_at_least_gold": "yes"},
    {"program": {**PROGRAM, "brand": "https://not-a-did"}},
])
def test_membership_schema_refuses(change: dict[str, Any]) -> None:
    claims = {**_membership(), **change}
    with pytest.raises(TesseraError) as exc:
        MEMBERSHIP.validate(claims)
    assert exc.value.code is ErrorCode.SCHEMA_INVALID


def test_partial_validation_allows_subsets_but_not_junk() -> None:
    full = _membership()
    subset = {"tier_at_least_silver": True, "program": PROGRAM}
    with pytest.raises(TesseraError):
        MEMBERSHIP.validate(subset)  # the issuer must give every required claim
    MEMBERSHIP.validate(subset, partial=True)  # a verifier sees a subset
    MEMBERSHIP.validate({}, partial=True)
    for junk in ({"nickname": "x"}, {"tier": {"name": 5}}, {"tier_at_least_gold": 1}):
        with pytest.raises(TesseraError) as exc:
            MEMBERSHIP.validate(junk, partial=True)
        assert exc.value.code is ErrorCode.SCHEMA_INVALID
    POINTS.validate({"points_at_least_1000": True}, partial=True)
    with pytest.raises(TesseraError):
        POINTS.validate({k: v for k, v in full.items() if k.startswith("tier_")}, partial=True)


def test_schemas_are_not_mutated_by_partial_copies() -> None:
    assert "required" in MEMBERSHIP.schema
    assert credentials._without_required({"required": ["a"], "x": [{"required": []}]}) == {
        "x": [{}]}
