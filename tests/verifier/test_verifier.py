"""The verifier SDK contract (DESIGN.md): TrustList, create_request, verify, results."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import verifier.sd_jwt as low_level
from tessera import credentials
from tessera.dcql import claims_query
from tessera.did import did_key
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import generate_signer
from verifier import PresentationRequest, TrustList, Verifier
from verifier.testing import FixedClock, InMemoryResolver, TestHolder, TestIssuer

AUD = "https://shop.example"
MVCT = credentials.MEMBERSHIP.vct
PVCT = credentials.POINTS.vct


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def brand(clock: FixedClock) -> TestIssuer:
    return TestIssuer(clock=clock)


@pytest.fixture
def member(clock: FixedClock) -> TestHolder:
    return TestHolder(clock=clock)


@pytest.fixture
def verifier(brand: TestIssuer, clock: FixedClock) -> Verifier:
    return Verifier(trust=brand.trust_list(), resolver=InMemoryResolver(brand.did_document),
                    clock=clock)


# -- trust list ------------------------------------------------------------------------------


def test_trust_list_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps({"issuers": [
        {"id": "did:web:acme.example", "name": "Acme",
         "credential_types": ["LoyaltyMembershipCredential"]},
        {"id": "did:web:beta.example", "credential_types": ["*"]},
    ]}))
    trust = TrustList.from_file(path)
    trust.check("did:web:acme.example", "LoyaltyMembershipCredential")
    trust.check("did:web:beta.example", "LoyaltyPointsCredential")
    with pytest.raises(TesseraError) as exc:
        trust.check("did:web:acme.example", "LoyaltyPointsCredential")
    assert exc.value.code is ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED
    with pytest.raises(TesseraError) as exc:
        trust.check("did:web:gamma.example", "LoyaltyPointsCredential")
    assert exc.value.code is ErrorCode.UNTRUSTED_ISSUER
    again = TrustList.from_dict(json.loads(trust.to_json()))
    assert again == trust
    assert again.issuers["did:web:acme.example"].name == "Acme"


@pytest.mark.parametrize("data", [
    {}, {"issuers": {}}, {"issuers": ["did:web:x"]}, {"issuers": [{"name": "no id"}]},
    {"issuers": [{"id": "did:web:x", "credential_types": "LoyaltyPointsCredential"}]},
    {"issuers": [{"id": "did:web:x", "credential_types": [1]}]},
    {"issuers": [{"id": "did:web:x", "credential_types": []},
                 {"id": "did:web:x", "credential_types": []}]},
])
def test_trust_list_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(TesseraError) as exc:
        TrustList.from_dict(data)
    assert exc.value.code is ErrorCode.MALFORMED


def test_trust_list_file_is_parsed_strictly(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text('{"issuers": [], "issuers": [{"id": "did:web:evil", '
                    '"credential_types": ["*"]}]}')
    with pytest.raises(TesseraError) as exc:
        TrustList.from_file(path)
    assert exc.value.code is ErrorCode.MALFORMED


# -- requests --------------------------------------------------------------------------------


def test_create_request(verifier: Verifier, clock: FixedClock) -> None:
    dcql = {"credentials": [claims_query("m", MVCT, ["tier_at_least_gold"])]}
    a = verifier.create_request(audience=AUD, dcql=dcql, transaction_data=["e30"])
    b = verifier.create_request(audience=AUD)
    assert a.nonce != b.nonce and len(a.nonce) >= 32
    assert a.state != b.state
    assert a.audience == AUD and a.dcql == dcql and a.transaction_data == ("e30",)
    assert a.expires_at == clock() + timedelta(minutes=5)
    assert PresentationRequest.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_create_request_refuses_a_malformed_query(verifier: Verifier) -> None:
    with pytest.raises(TesseraError) as exc:
        verifier.create_request(audience=AUD, dcql={"credentials": [{"id": "bad id"}]})
    assert exc.value.code is ErrorCode.MALFORMED


# -- verification ----------------------------------------------------------------------------


def test_verify_result(verifier: Verifier, brand: TestIssuer, member: TestHolder) -> None:
    req = verifier.create_request(audience=AUD)
    cred = brand.issue_membership(member, tier="gold")
    result = verifier.verify(member.present(cred, ["tier_at_least_silver"], req), request=req)
    assert result.ok and result.errors == ()
    assert result.claims == {"program": brand.program, "tier_at_least_silver": True}
    assert result.issuer == brand.did
    assert result.holder == member.did == did_key(member.signer.public_key)
    assert result.credential_type == "LoyaltyMembershipCredential"
    assert result.to_dict() == {
        "ok": True, "errors": [], "issuer": brand.did, "holder": member.did,
        "credential_types": ["LoyaltyMembershipCredential"], "claims": result.claims,
    }


def test_nothing_hidden_leaks_into_the_result(verifier: Verifier, brand: TestIssuer,
                                              member: TestHolder) -> None:
    req = verifier.create_request(audience=AUD)
    cred = brand.issue_membership(member, tier="platinum", name="Zebulon",
                                  email="z@example.com")
    result = verifier.verify(member.present(cred, ["tier_at_least_gold"], req), request=req)
    assert result.ok
    text = json.dumps(result.to_dict()) + repr(result)
    for secret in ("Zebulon", "z@example.com", "platinum", "T-0001", "membership_number"):
        assert secret not in text


def test_dcql_keeps_only_asked_claims(verifier: Verifier, brand: TestIssuer,
                                      member: TestHolder) -> None:
    dcql = {"credentials": [claims_query("m", MVCT, ["tier_at_least_gold"], require_true=True)]}
    req = verifier.create_request(audience=AUD, dcql=dcql)
    cred = brand.issue_membership(member)
    # The holder over-shares; the verifier keeps only what it asked for.
    pres = member.present(cred, ["tier_at_least_gold", "name", "tier"], req)
    result = verifier.verify(pres, request=req)
    assert result.ok, result.errors
    assert result.claims == {"program": brand.program, "tier_at_least_gold": True}
    assert result.credentials[0].query_id == "m"


def test_dcql_two_credentials_of_one_member(verifier: Verifier, brand: TestIssuer,
                                            member: TestHolder) -> None:
    dcql = {"credentials": [
        claims_query("m", MVCT, ["tier_at_least_silver"], require_true=True),
        claims_query("p", PVCT, ["points_at_least_1000"], require_true=True),
    ]}
    req = verifier.create_request(audience=AUD, dcql=dcql)
    membership = member.present(brand.issue_membership(member), ["tier_at_least_silver"], req)
    points = member.present(brand.issue_points(member, balance=1250),
                            ["points_at_least_1000"], req)
    token = {"m": [membership], "p": [points]}
    result = verifier.verify(json.dumps(token), request=req)
    assert result.ok, result.errors
    assert result.claims == {"program": brand.program, "tier_at_least_silver": True,
                             "points_at_least_1000": True}
    assert result.credential_types == ("LoyaltyMembershipCredential", "LoyaltyPointsCredential")
    # The bare-string form only answers a one-credential query.
    req2 = verifier.create_request(audience=AUD, dcql=dcql)
    only = member.present(brand.issue_membership(member), ["tier_at_least_silver"], req2)
    assert verifier.verify(only, request=req2).errors == ("disclosure_mismatch",)


def test_dcql_credential_sets_allow_alternatives(verifier: Verifier, brand: TestIssuer,
                                                 member: TestHolder) -> None:
    dcql = {
        "credentials": [claims_query("m", MVCT, ["tier_at_least_gold"], require_true=True),
                        claims_query("p", PVCT, ["points_at_least_5000"], require_true=True)],
        "credential_sets": [{"options": [["m"], ["p"]]}],
    }
    req = verifier.create_request(audience=AUD, dcql=dcql)
    pres = member.present(brand.issue_membership(member), ["tier_at_least_gold"], req)
    result = verifier.verify({"m": [pres]}, request=req)
    assert result.ok, result.errors


def test_transaction_data_round_trip(verifier: Verifier, brand: TestIssuer,
                                     member: TestHolder) -> None:
    td = ["eyJ0eXBlIjoicmVkZWVtIiwicG9pbnRzIjo1MDB9"]
    req = verifier.create_request(audience=AUD, transaction_data=td)
    pres = member.present(brand.issue_points(member), ["points_at_least_500"], req)
    assert verifier.verify(pres, request=req).ok


def test_verify_uses_given_now(verifier: Verifier, brand: TestIssuer, member: TestHolder,
                               clock: FixedClock) -> None:
    req = verifier.create_request(audience=AUD)
    pres = member.present(brand.issue_points(member, valid_for=timedelta(hours=1)),
                          ["points_at_least_100"], req)
    later = clock() + timedelta(hours=2)
    assert verifier.verify(pres, request=req, now=later).errors == ("replayed",)  # request too
    assert verifier.verify(pres, request=req).ok


def test_failed_verification_does_not_burn_the_nonce(verifier: Verifier, brand: TestIssuer,
                                                     member: TestHolder) -> None:
    req = verifier.create_request(audience=AUD)
    cred = brand.issue_membership(member)
    bad = sd_jwt.present(cred, disclose=["tier_at_least_gold"], holder=generate_signer("EdDSA"),
                         audience=AUD, nonce=req.nonce, issued_at=member.clock())
    assert verifier.verify(bad, request=req).errors == ("key_binding_invalid",)
    # The genuine member can still answer the request, once.
    good = member.present(cred, ["tier_at_least_gold"], req)
    assert verifier.verify(good, request=req).ok
    assert verifier.verify(good, request=req).errors == ("replayed",)


class _ConsumeOnlyStore:
    """A partner's store with only the NonceStore protocol (no ``take``)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.consumed: list[str] = []

    def issue(self, value: str, *, ttl_seconds: int, data: dict[str, Any] | None = None) -> None:
        self.data[value] = dict(data or {})

    def consume(self, value: str) -> dict[str, Any] | None:
        self.consumed.append(value)
        return self.data.pop(value, None)


def test_a_store_without_take_still_consumes_each_nonce_once(
        brand: TestIssuer, member: TestHolder, clock: FixedClock) -> None:
    store = _ConsumeOnlyStore()
    v = Verifier(trust=brand.trust_list(), resolver=InMemoryResolver(brand.did_document),
                 clock=clock, nonces=store)
    req = v.create_request(audience=AUD)
    pres = member.present(brand.issue_membership(member), ["tier_at_least_gold"], req)
    assert v.verify(pres, request=req).ok
    assert store.consumed == [req.nonce] and req.nonce not in store.data
    assert v.verify(pres, request=req).errors == ("replayed",)


def test_the_default_store_takes_the_nonce(verifier: Verifier, brand: TestIssuer,
                                          member: TestHolder) -> None:
    req = verifier.create_request(audience=AUD)
    pres = member.present(brand.issue_membership(member), ["tier_at_least_gold"], req)
    assert verifier.verify(pres, request=req).ok
    # Gone from the store, whichever way it is asked for again.
    assert verifier._nonces.consume(req.nonce) is None
    assert verifier.verify(pres, request=req.nonce).errors == ("replayed",)


# -- low level -------------------------------------------------------------------------------


def test_low_level_verify_with_key_forms(brand: TestIssuer, member: TestHolder,
                                         clock: FixedClock) -> None:
    cred = brand.issue_membership(member)
    pres = sd_jwt.present(cred, disclose=["tier_at_least_gold"], holder=member.signer,
                          audience=AUD, nonce="n1", issued_at=clock())
    key = brand.signer.public_key
    other = generate_signer("ES256").public_key
    kid = brand.signer.key_id or ""
    for keys in (key, [key], [key, generate_signer("EdDSA").public_key], {kid: key}):
        result = low_level.verify(pres, issuer_keys=keys, audience=AUD, nonce="n1", now=clock())
        assert result.ok, (keys, result.errors)
        assert result.claims == {"program": brand.program, "tier_at_least_gold": True}
        assert result.holder == member.did and result.issuer == brand.did
    for keys, code in (([key, other], "key_not_found"), ({kid + "x": key}, "key_not_found"),
                       (other, "invalid_signature"), ([], "key_not_found")):
        result = low_level.verify(pres, issuer_keys=keys, audience=AUD, nonce="n1", now=clock())
        assert result.errors == (code,), keys
    # The low-level call has no nonce store: the same nonce verifies again.
    assert low_level.verify(pres, issuer_keys=key, audience=AUD, nonce="n1", now=clock()).ok
    unbound = sd_jwt.present(cred, disclose=["tier_at_least_gold"], holder=None)
    assert low_level.verify(unbound, issuer_keys=key, audience=None, nonce=None, now=clock(),
                            require_key_binding=False).ok
    assert low_level.verify(unbound, issuer_keys=key, audience=AUD, nonce="n1",
                            now=clock()).errors == ("key_binding_missing",)


def test_low_level_checks_schema_and_type(brand: TestIssuer, member: TestHolder,
                                          clock: FixedClock) -> None:
    now = clock()
    cred = sd_jwt.issue({"nickname": "x"}, signer=brand.signer, issuer=brand.did, vct=MVCT,
                        holder_key=None, issued_at=now, expires_at=now + timedelta(days=1))
    pres = sd_jwt.present(cred, disclose=["nickname"], holder=None)
    result = low_level.verify(pres, issuer_keys=brand.signer.public_key, audience=None,
                              nonce=None, now=now, require_key_binding=False)
    assert result.errors == ("schema_invalid",)


def test_verifier_with_did_key_issuer(clock: FixedClock, member: TestHolder) -> None:
    # Any resolvable DID can issue: here a did:key brand, resolved with no documents.
    signer = generate_signer("EdDSA")
    did = did_key(signer.public_key)
    brand = TestIssuer(did, signer=signer, clock=clock)
    brand.signer = brand.signer.with_key_id(f"{did}#{did.split(':')[-1]}")
    v = Verifier(trust=TrustList.of([(did, ["LoyaltyMembershipCredential"])]),
                 resolver=InMemoryResolver(), clock=clock)
    req = v.create_request(audience=AUD)
    result = v.verify(member.present(brand.issue_membership(member), ["tier_at_least_gold"],
                                     req), request=req)
    assert result.ok, result.errors
    assert result.issuer == did


@pytest.mark.parametrize(("prefix", "json_ld"), [
    ("", False), ("{", True), (" {", True), ("\x0c{", True), ("\u00a0{", True), ("\u2028{", True),
])
def test_jsonld_work_budget_for_every_token_that_may_be_json(
        verifier: Verifier, monkeypatch: pytest.MonkeyPatch, prefix: str, json_ld: bool) -> None:
    # A vp_token is JSON after any str.strip() whitespace: such a token must run under
    # one JSON-LD work budget for the whole answer (every VP in it and their status
    # lists), entered by verify itself; a bare SD-JWT need not.
    import sys

    from tessera import jsonld

    entered: list[str] = []
    real = jsonld.work_budget

    def spy(*args: Any, **kwargs: Any) -> Any:
        entered.append(sys._getframe(1).f_code.co_name)
        return real(*args, **kwargs)

    monkeypatch.setattr(jsonld, "work_budget", spy)
    req = verifier.create_request(audience=AUD)
    token = prefix + '"proof": {}}' if prefix else "eyJhbGciOiJFUzI1NiJ9.e30.sig~"
    result = verifier.verify(token, request=req)
    assert not result.ok
    assert ("_jsonld_work_budget" in entered) is json_ld, entered
