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


# --- compiled validator (jsonschema-rs) against the jsonschema reference -------------------

def _names(schema: Any) -> list[str]:
    """Every property name the schema mentions, at any depth."""
    found: list[str] = []
    if isinstance(schema, dict):
        found += list(schema.get("properties", {}))
        for value in schema.values():
            found += _names(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _names(value)
    return found


_KEYS = [
    *sorted({*_names(MEMBERSHIP.schema), *_names(POINTS.schema)}),
    "tier_at_least_gold", "tier_at_least_", "tier_at_least_GOLD", "points_at_least_1000",
    "points_at_least_1x", "nickname"]
# Python's re.search lets "$" match before one trailing "\n"; ECMA-262 (what JSON Schema
# patterns are) does not. That one known difference has its own test below.
_text = st.one_of(
    st.sampled_from(["", "a", "gold", "GOLD", "did:web:acme.example", "did::x", "https://x",
                     "2020-05-01", "2020-02-30", "2020-5-1", "a@b", "ab", "2026-11-23T12:00:00Z",
                     ROOT, ROOT[:-1], "x" * 65, "x" * 201]),
    st.text(alphabet="abz09_-:@. GÅ\n", max_size=40),
).filter(lambda s: not s.endswith("\n"))
_scalar = st.one_of(
    _text, st.booleans(), st.none(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([1000, 1001, 10**12, 10**12 + 1, 2**70]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([2.0, 5.5, -0.0]),
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), _text), inner, max_size=5),
    ),
    max_leaves=12,
)
_claims = st.dictionaries(st.one_of(st.sampled_from(_KEYS), _text), _json, max_size=8)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    """Valid claims with one claim or nested member replaced, added or removed."""
    bases = [_membership(), _membership(name="Ann", email="a@b.example"),
             _points(expiring_next=(100, date(2027, 1, 1)))]

    @st.composite
    def mutate(draw: st.DrawFn) -> dict[str, Any]:
        claims: dict[str, Any] = dict(draw(st.sampled_from(bases)))
        key = draw(st.sampled_from([*claims, *_KEYS]))
        action = draw(st.sampled_from(["replace", "drop", "nested"]))
        if action == "drop":
            claims.pop(key, None)
        elif action == "nested" and isinstance(claims.get(key), dict):
            inner = dict(claims[key])
            inner[draw(st.sampled_from([*inner, *_KEYS]))] = draw(_json)
            claims[key] = inner
        else:
            claims[key] = draw(_json)
        return claims

    return mutate()


@pytest.mark.parametrize("ctype", CREDENTIAL_TYPES, ids=lambda c: c.name)
@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
@given(claims=st.one_of(_claims, _mutations()))
def test_compiled_validator_agrees_with_reference(ctype: Any, partial: bool,
                                                  claims: dict[str, Any]) -> None:
    reference = ctype._partial if partial else ctype._full
    expected = reference.is_valid(claims)
    compiled = ctype._compiled_partial if partial else ctype._compiled_full
    assert compiled.is_valid(claims) is expected
    if expected:
        ctype.validate(claims, partial=partial)
    else:
        with pytest.raises(TesseraError) as exc:
            ctype.validate(claims, partial=partial)
        assert exc.value.code is ErrorCode.SCHEMA_INVALID


def test_rejections_keep_the_reference_message() -> None:
    claims = {**_membership(), "tier": {"name": "Gold!", "rank": 2}}
    with pytest.raises(TesseraError) as exc:
        MEMBERSHIP.validate(claims)
    assert str(exc.value) == ("schema_invalid: LoyaltyMembershipCredential tier/name: "
                              "'Gold!' does not match '^[a-z0-9_]{1,32}$'")


@pytest.mark.parametrize("claims", [
    {"tier": {"name": "gold\n", "rank": 2}},
    {"tier_at_least_gold\n": True},
    {"program": {**PROGRAM, "brand": "did:web:acme.example\n"}},
])
def test_pattern_end_is_end_of_input(claims: dict[str, Any]) -> None:
    """A trailing newline does not slip past "$" (ECMA-262, unlike Python's re.search)."""
    with pytest.raises(TesseraError) as exc:
        MEMBERSHIP.validate(claims, partial=True)
    assert exc.value.code is ErrorCode.SCHEMA_INVALID
    with pytest.raises(TesseraError):
        MEMBERSHIP.validate({**_membership(), **claims})


def test_non_json_values_are_refused() -> None:
    with pytest.raises(TesseraError) as exc:
        MEMBERSHIP.validate({"member_since": date(2020, 5, 1)}, partial=True)
    assert exc.value.code is ErrorCode.SCHEMA_INVALID


def test_compiled_validator_fetches_nothing() -> None:
    with pytest.raises(ValueError, match="not bundled"):
        credentials._compiled({"$ref": "https://example.invalid/other.json"})
