"""DCQL (OpenID4VP 1.0 §6): parsing, claim paths, claim_sets and credential_sets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.dcql import ClaimQuery, Query, claims_query
from tessera.errors import ErrorCode, TesseraError

VCT = "https://w3id.org/tessera/vct/LoyaltyMembershipCredential/v1"
PVCT = "https://w3id.org/tessera/vct/LoyaltyPointsCredential/v1"


def test_claims_query_helper() -> None:
    entry = claims_query("m", VCT, ["tier_at_least_gold"], require_true=True)
    assert entry == {"id": "m", "format": "dc+sd-jwt", "meta": {"vct_values": [VCT]},
                     "claims": [{"path": ["tier_at_least_gold"], "values": [True]}]}
    query = Query.parse({"credentials": [entry]})
    cq = query.by_id("m")
    assert cq.matches_type(fmt="dc+sd-jwt", vct=VCT)
    assert not cq.matches_type(fmt="dc+sd-jwt", vct=PVCT)
    assert not cq.matches_type(fmt="ldp_vc", vct=VCT)
    assert cq.satisfied_option({"tier_at_least_gold": True}) is not None
    assert cq.satisfied_option({"tier_at_least_gold": False}) is None
    assert cq.satisfied_option({}) is None
    assert cq.asked_names() == {"tier_at_least_gold"}


def test_claim_paths() -> None:
    claims = {"tier": {"name": "gold", "rank": 2}, "list": [{"a": 1}, {"a": 2}], "empty": []}
    assert ClaimQuery(None, ("tier", "name"), None).lookup(claims) == (True, "gold")
    assert ClaimQuery(None, ("list", 1, "a"), None).lookup(claims) == (True, 2)
    assert ClaimQuery(None, ("list", 5), None).lookup(claims) == (False, None)
    assert ClaimQuery(None, ("list", None), None).lookup(claims)[0] is True
    assert ClaimQuery(None, ("empty", None), None).lookup(claims)[0] is False
    assert ClaimQuery(None, ("tier", 0), None).lookup(claims) == (False, None)
    assert ClaimQuery(None, ("tier", "name"), ("gold", "platinum")).satisfied_by(claims)
    assert not ClaimQuery(None, ("tier", "name"), ("silver",)).satisfied_by(claims)


@pytest.mark.parametrize(("value", "wanted"), [(True, 1), (1, True), (False, 0), (0, False),
                                                 ("1", 1), (1, "1")])
def test_values_match_by_json_type(value: object, wanted: object) -> None:
    # DCQL values compare as JSON values: Python's True == 1 must not leak through.
    query = ClaimQuery(None, ("a",), (wanted,))
    assert not query.satisfied_by({"a": value})
    assert query.satisfied_by({"a": wanted})


def test_claim_sets_prefer_first_satisfiable_option() -> None:
    query = Query.parse({"credentials": [{
        "id": "m", "format": "dc+sd-jwt", "meta": {"vct_values": [VCT]},
        "claims": [
            {"id": "gold", "path": ["tier_at_least_gold"], "values": [True]},
            {"id": "tier", "path": ["tier", "name"]},
            {"id": "num", "path": ["membership_number"]},
        ],
        "claim_sets": [["gold"], ["tier", "num"]],
    }]})
    cq = query.by_id("m")
    assert [c.id for c in cq.satisfied_option({"tier_at_least_gold": True}) or ()] == ["gold"]
    both = {"tier": {"name": "gold"}, "membership_number": "1"}
    assert [c.id for c in cq.satisfied_option(both) or ()] == ["tier", "num"]
    assert cq.satisfied_option({"tier": {"name": "gold"}}) is None
    assert cq.top_level_names(cq.options()[1]) == ["tier", "membership_number"]


def test_credential_sets() -> None:
    query = Query.parse({
        "credentials": [claims_query("m", VCT, ["tier_at_least_gold"]),
                        claims_query("p", PVCT, ["points_at_least_1000"]),
                        claims_query("x", PVCT, ["points_at_least_100"])],
        "credential_sets": [{"options": [["m"], ["p"]]},
                            {"options": [["x"]], "required": False}],
    })
    query.check_answered({"m"})
    query.check_answered({"p", "x"})
    for answered in (set(), {"x"}, {"m", "other"}):
        with pytest.raises(TesseraError) as exc:
            query.check_answered(answered)
        assert exc.value.code is ErrorCode.DISCLOSURE_MISMATCH


def test_without_credential_sets_every_query_must_be_answered() -> None:
    query = Query.parse({"credentials": [claims_query("m", VCT, ["tier"]),
                                         claims_query("p", PVCT, ["points_balance"])]})
    query.check_answered({"m", "p"})
    with pytest.raises(TesseraError) as exc:
        query.check_answered({"m"})
    assert exc.value.code is ErrorCode.DISCLOSURE_MISMATCH
    with pytest.raises(TesseraError) as exc:
        query.by_id("zzz")
    assert exc.value.code is ErrorCode.DISCLOSURE_MISMATCH


def _cred(**over: Any) -> dict[str, Any]:
    return {"id": "m", "format": "dc+sd-jwt", "claims": [{"path": ["a"]}], **over}


@pytest.mark.parametrize("raw", [
    None, [], {}, {"credentials": []}, {"credentials": "x"},
    {"credentials": [_cred()] * 17},
    {"credentials": [_cred(), _cred()]},  # duplicate ids
    {"credentials": [_cred(id="has space")]},
    {"credentials": [_cred(id="x" * 65)]},
    {"credentials": [_cred(meta=[])]},
    {"credentials": [_cred(meta={"vct_values": "x"})]},
    {"credentials": [_cred(meta={"type_values": ["x"]})]},
    {"credentials": [_cred(claims=[{"path": []}])]},
    {"credentials": [_cred(claims=[{"path": [-1]}])]},
    {"credentials": [_cred(claims=[{"path": [True]}])]},
    {"credentials": [_cred(claims=[{"path": ["a"] * 17}])]},
    {"credentials": [_cred(claims=[{"path": ["a"], "values": []}])]},
    {"credentials": [_cred(claims=[{"path": ["a"], "values": [{"x": 1}]}])]},
    {"credentials": [_cred(claims=[{"path": ["a"], "id": "c"}, {"path": ["b"], "id": "c"}])]},
    {"credentials": [_cred(claim_sets=[["c"]])]},  # claims without ids
    {"credentials": [_cred(claims=[{"path": ["a"], "id": "c"}], claim_sets=[["d"]])]},
    {"credentials": [_cred(claims=[{"path": ["a"]}] * 65)]},
    {"credentials": [_cred()], "credential_sets": []},
    {"credentials": [_cred()], "credential_sets": [{"options": [["nope"]]}]},
    {"credentials": [_cred()], "credential_sets": [{"options": [["m"]], "required": "yes"}]},
])
def test_malformed_queries(raw: Any) -> None:
    with pytest.raises(TesseraError) as exc:
        Query.parse(raw)
    assert exc.value.code is ErrorCode.MALFORMED


def test_unknown_format_is_unsupported() -> None:
    with pytest.raises(TesseraError) as exc:
        Query.parse({"credentials": [_cred(format="mso_mdoc")]})
    assert exc.value.code is ErrorCode.UNSUPPORTED_FORMAT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@given(json_values)
def test_parse_arbitrary_json_only_raises_tessera_errors(raw: Any) -> None:
    for candidate in (raw, {"credentials": raw}, {"credentials": [raw]}):
        try:
            Query.parse(candidate)
        except TesseraError as exc:
            assert exc.code in (ErrorCode.MALFORMED, ErrorCode.UNSUPPORTED_FORMAT)
