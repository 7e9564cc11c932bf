"""VC-JWT (VCDM 1.1 §6.3.1): round trips, every refusal, and didkit 0.3.3 both ways.

didkit's verdicts are never trusted alone: it misreports an expired JWT-VC as
"No applicable JWS or proof" and does not look at the credentials inside a
JWT presentation; Tessera checks both.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import jsonld
from tessera.credentials import membership_claims
from tessera.did import Resolver, did_key, issuer_key_lookup
from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import jwt_vc
from tessera.jose import decode_unverified, sign_compact
from tessera.keys import LocalSigner, generate_signer

NOW = datetime(2025, 6, 1, tzinfo=UTC)
RESOLVER = Resolver()
ISSUERS = issuer_key_lookup(RESOLVER)
HOLDERS = jwt_vc.holder_key_lookup(RESOLVER)


def _party(alg: str = "EdDSA") -> tuple[LocalSigner, str]:
    signer = generate_signer(alg)
    did = did_key(signer.public_key)
    return signer.with_key_id(f"{did}#{did.removeprefix('did:key:')}"), did


ISSUER, ISSUER_DID = _party()
HOLDER, HOLDER_DID = _party()
OTHER, OTHER_DID = _party()


def _claims(brand: str) -> dict[str, Any]:
    return membership_claims(
        program={"id": "acme", "name": "Acme", "brand": brand},
        membership_number="M-7", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=date(2021, 3, 1), tier_valid_until=date(2026, 1, 1))


def _credential(issuer: str = ISSUER_DID, subject: str = HOLDER_DID,
                expires: str | None = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    vc: dict[str, Any] = {
        "@context": [jsonld.CREDENTIALS_V1, jsonld.LOYALTY_V1],
        "id": "urn:uuid:0f6c1a1e-0000-4000-8000-000000000001",
        "type": ["VerifiableCredential", "LoyaltyMembershipCredential"],
        "issuer": issuer, "issuanceDate": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": subject, **_claims(issuer)}}
    if expires is not None:
        vc["expirationDate"] = expires
    return vc


def _code(call: Any) -> ErrorCode:
    with pytest.raises(TesseraError) as err:
        call()
    return err.value.code


def _verify(token: str, now: datetime = NOW) -> dict[str, Any]:
    return jwt_vc.verify_credential(token, key_lookup=ISSUERS, now=now)


def _resign(token: str, signer: LocalSigner, *, header: dict[str, Any] | None = None,
            change: Any = None) -> str:
    """Re-sign a token's payload after ``change(payload)``; for refusals past the signature."""
    jws = decode_unverified(token)
    payload = copy.deepcopy(jws.payload)
    if change is not None:
        change(payload)
    return sign_compact(header if header is not None else dict(jws.header), payload, signer)


# -- credentials ---------------------------------------------------------------------


def test_round_trip_and_claims() -> None:
    vc = _credential()
    token = jwt_vc.issue_credential(vc, signer=ISSUER, now=NOW)
    jws = decode_unverified(token)
    assert jws.header == {"alg": "EdDSA", "typ": "JWT", "kid": ISSUER.key_id}
    p = jws.payload
    assert p["iss"] == ISSUER_DID and p["sub"] == HOLDER_DID and p["jti"] == vc["id"]
    assert p["nbf"] == int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert p["exp"] == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    assert p["vc"] == vc and "proof" not in p["vc"]
    assert _verify(token) == vc


def test_issuance_date_defaults_to_now_and_p256_issuer() -> None:
    signer, did = _party("ES256")
    vc = _credential(issuer=did)
    del vc["issuanceDate"]
    token = jwt_vc.issue_credential(vc, signer=signer, now=NOW.replace(microsecond=123))
    out = _verify(token)
    assert out["issuanceDate"] == "2025-06-01T00:00:00Z"
    assert decode_unverified(token).header["alg"] == "ES256"


def test_decoding_rebuilds_from_claims_only() -> None:
    """§6.3.1.2: a vc that left issuer, dates, id and subject id to the claims."""
    vc = _credential()
    for prop in ("issuer", "issuanceDate", "expirationDate", "id"):
        del vc[prop]
    del vc["credentialSubject"]["id"]
    payload = {"iss": ISSUER_DID, "sub": HOLDER_DID, "jti": "urn:uuid:1",
               "nbf": 1735689600, "exp": 1767225600.5, "vc": vc}
    out = _verify(sign_compact({"kid": ISSUER.key_id}, payload, ISSUER))
    assert out["issuer"] == ISSUER_DID and out["id"] == "urn:uuid:1"
    assert out["credentialSubject"]["id"] == HOLDER_DID
    assert out["issuanceDate"] == "2025-01-01T00:00:00Z"
    assert out["expirationDate"] == "2026-01-01T00:00:00.500Z"


def test_issuer_object_keeps_its_name() -> None:
    vc = _credential()
    vc["issuer"] = {"id": ISSUER_DID, "name": "Acme"}
    out = _verify(jwt_vc.issue_credential(vc, signer=ISSUER, now=NOW))
    assert out["issuer"] == {"id": ISSUER_DID, "name": "Acme"}


def _hs256(token: str) -> str:
    """HMAC with the issuer's public key as the secret: the classic confusion attack."""
    jws = decode_unverified(token)
    header = b64url_encode(json.dumps({**jws.header, "alg": "HS256"}).encode())
    body = token.split(".")[1]
    secret = ISSUER.public_key.raw()
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url_encode(mac)}"


def _alg_none(token: str) -> str:
    jws = decode_unverified(token)
    header = b64url_encode(json.dumps({**jws.header, "alg": "none"}).encode())
    return f"{header}.{token.split('.')[1]}."


def _tampered(token: str) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(b64url_decode(body))
    payload["vc"]["credentialSubject"]["tier"]["name"] = "silver"
    return f"{head}.{b64url_encode(json.dumps(payload).encode())}.{sig}"


def _es256_header_on_ed25519(token: str) -> str:
    es, _ = _party("ES256")
    return _resign(token, es.with_key_id(ISSUER.key_id))


GOOD = jwt_vc.issue_credential(_credential(), signer=ISSUER, now=NOW)


@pytest.mark.parametrize(("make", "code"), [
    (lambda t: _tampered(t), ErrorCode.INVALID_SIGNATURE),
    (lambda t: _resign(t, OTHER), ErrorCode.INVALID_SIGNATURE),  # issuer's kid, other key
    (_alg_none, ErrorCode.UNSUPPORTED_ALGORITHM),
    (_hs256, ErrorCode.UNSUPPORTED_ALGORITHM),
    (_es256_header_on_ed25519, ErrorCode.UNSUPPORTED_ALGORITHM),
    # a key of another DID, named honestly in kid: not a method of iss
    (lambda t: _resign(t, OTHER, header={"kid": OTHER.key_id}), ErrorCode.KEY_NOT_FOUND),
    (lambda t: _resign(t, ISSUER.with_key_id(None), header={}), ErrorCode.KEY_NOT_FOUND),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.pop("vc")), ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.pop("iss")), ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"].update(issuer=OTHER_DID)),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.update(sub=OTHER_DID)), ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.update(exp=p["exp"] + 86400 * 365)),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.update(jti="urn:uuid:2")),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p.update(nbf="yesterday")),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"].update(proof={"type": "x"})),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"].update(type=["Loyalty"])),
     ErrorCode.MALFORMED),
    (lambda t: _resign(t, ISSUER, header={"kid": ISSUER.key_id, "typ": "dc+sd-jwt"}),
     ErrorCode.UNSUPPORTED_FORMAT),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"].update(
        {"@context": [jsonld.CREDENTIALS_V2]})), ErrorCode.UNSUPPORTED_FORMAT),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"]["credentialSubject"].update(
        membership_number=7)), ErrorCode.SCHEMA_INVALID),
    (lambda t: _resign(t, ISSUER, change=lambda p: p["vc"]["credentialSubject"].update(
        favourite_colour="red")), ErrorCode.SCHEMA_INVALID),
    (lambda t: t[:-10] + ("A" if t[-10] != "A" else "B") + t[-9:], ErrorCode.INVALID_SIGNATURE),
    (lambda t: t + "x", ErrorCode.MALFORMED),
    (lambda t: t.rsplit(".", 1)[0], ErrorCode.MALFORMED),
])
def test_credential_refusals(make: Any, code: ErrorCode) -> None:
    assert _code(lambda: _verify(make(GOOD))) == code


def test_untampered_resign_still_verifies() -> None:
    # The refusals above are caused by the change, not by _resign itself.
    assert _verify(_resign(GOOD, ISSUER)) == _credential()


def test_validity_window() -> None:
    assert _code(lambda: _verify(GOOD, now=datetime(2026, 1, 1, 0, 1, tzinfo=UTC))) \
        == ErrorCode.EXPIRED
    assert _code(lambda: _verify(GOOD, now=datetime(2024, 12, 31, 23, 58, tzinfo=UTC))) \
        == ErrorCode.NOT_YET_VALID
    # within the 60 s skew on both ends
    _verify(GOOD, now=datetime(2025, 12, 31, 23, 59, 30, tzinfo=UTC))
    _verify(GOOD, now=datetime(2024, 12, 31, 23, 59, 30, tzinfo=UTC))
    # expirationDate in vc with no exp claim is still enforced
    no_exp = _resign(GOOD, ISSUER, change=lambda p: p.pop("exp"))
    assert _code(lambda: _verify(no_exp, now=datetime(2027, 1, 1, tzinfo=UTC))) \
        == ErrorCode.EXPIRED
    assert _code(lambda: _verify(GOOD, now=datetime(2025, 6, 1))) == ErrorCode.INVALID_REQUEST


def test_issue_refusals() -> None:
    bad = _credential()
    bad["credentialSubject"]["membership_number"] = 7
    assert _code(lambda: jwt_vc.issue_credential(bad, signer=ISSUER, now=NOW)) \
        == ErrorCode.SCHEMA_INVALID
    assert _code(lambda: jwt_vc.issue_credential(_credential(), signer=OTHER, now=NOW)) \
        == ErrorCode.KEY_NOT_FOUND
    assert _code(lambda: jwt_vc.issue_credential(
        _credential(), signer=ISSUER.with_key_id(None), now=NOW)) == ErrorCode.MALFORMED
    v2 = {**_credential(), "@context": [jsonld.CREDENTIALS_V2]}
    assert _code(lambda: jwt_vc.issue_credential(v2, signer=ISSUER, now=NOW)) \
        == ErrorCode.UNSUPPORTED_FORMAT


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_garbage_tokens_are_tesseraerrors(text: str) -> None:
    with pytest.raises(TesseraError):
        _verify(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["iss", "sub", "nbf", "exp", "jti", "vc", "x"]), _json,
                       max_size=6),
       st.dictionaries(st.sampled_from(["@context", "issuer", "credentialSubject", "type",
                                        "issuanceDate", "expirationDate", "id"]), _json))
def test_signed_junk_is_refused_cleanly(payload: dict[str, Any], vc: dict[str, Any]) -> None:
    """Correctly signed but arbitrary claims: a TesseraError, never another exception."""
    payload = {**payload, "iss": ISSUER_DID}
    if "vc" in payload:
        payload["vc"] = vc
    token = sign_compact({"kid": ISSUER.key_id}, payload, ISSUER)
    try:
        out = _verify(token)
    except TesseraError:
        return
    # Whatever passes is a well-formed VCDM 1.1 credential of this issuer.
    assert out["@context"][0] == jsonld.CREDENTIALS_V1
    assert "VerifiableCredential" in out["type"]
    assert out["issuer"] == ISSUER_DID or out["issuer"]["id"] == ISSUER_DID
    assert isinstance(out["issuanceDate"], str)


# -- presentations -------------------------------------------------------------------


def _vp(creds: list[str], *, nonce: str = "n-1", audience: str = "https://partner.example",
        signer: LocalSigner = HOLDER, holder: str = HOLDER_DID, now: datetime = NOW) -> str:
    return jwt_vc.present(creds, signer=signer, holder=holder, audience=audience, nonce=nonce,
                          now=now)


def _verify_vp(token: str, *, nonce: str = "n-1", audience: str = "https://partner.example",
               now: datetime = NOW) -> list[dict[str, Any]]:
    return jwt_vc.verify_presentation(token, key_lookup=ISSUERS, holder_lookup=HOLDERS,
                                      audience=audience, nonce=nonce, now=now)


def test_presentation_round_trip() -> None:
    vp = _vp([GOOD, GOOD])
    p = decode_unverified(vp).payload
    assert (p["iss"], p["aud"], p["nonce"]) == (HOLDER_DID, "https://partner.example", "n-1")
    assert p["vp"]["verifiableCredential"] == [GOOD, GOOD]
    out = _verify_vp(vp)
    assert out == [_credential(), _credential()]
    # without a separate holder lookup, the issuer lookup serves (same keys for did:key)
    assert jwt_vc.verify_presentation(vp, key_lookup=ISSUERS, audience="https://partner.example",
                                      nonce="n-1", now=NOW) == out


def _forged_vp(change: Any, signer: LocalSigner = HOLDER) -> str:
    return _resign(_vp([GOOD]), signer, change=change)


ABOUT_OTHER = jwt_vc.issue_credential(_credential(subject=OTHER_DID), signer=ISSUER, now=NOW)
EXPIRED = jwt_vc.issue_credential(_credential(expires="2025-02-01T00:00:00Z"), signer=ISSUER,
                                  now=NOW)


@pytest.mark.parametrize(("token", "code"), [
    (lambda: _vp([GOOD], nonce="n-2"), ErrorCode.NONCE_MISMATCH),
    (lambda: _vp([GOOD], audience="https://evil.example"), ErrorCode.AUDIENCE_MISMATCH),
    (lambda: _vp([GOOD], now=NOW - timedelta(hours=1)), ErrorCode.EXPIRED),
    (lambda: _vp([GOOD], now=NOW + timedelta(hours=1)), ErrorCode.NOT_YET_VALID),
    (lambda: _vp([_tampered(GOOD)]), ErrorCode.INVALID_SIGNATURE),
    (lambda: _vp([EXPIRED]), ErrorCode.EXPIRED),
    (lambda: _forged_vp(lambda p: p["vp"].update(verifiableCredential=[ABOUT_OTHER])),
     ErrorCode.KEY_BINDING_INVALID),
    (lambda: _forged_vp(lambda p: p["vp"].update(holder=OTHER_DID)), ErrorCode.MALFORMED),
    (lambda: _forged_vp(lambda p: p["vp"].update(verifiableCredential=[])), ErrorCode.MALFORMED),
    (lambda: _forged_vp(lambda p: p.pop("vp")), ErrorCode.MALFORMED),
    (lambda: _forged_vp(lambda p: p["vp"].update(verifiableCredential=[{"proof": {}}])),
     ErrorCode.UNSUPPORTED_FORMAT),
    (lambda: _forged_vp(lambda p: p["vp"].update(verifiableCredential=[GOOD] * 33)),
     ErrorCode.TOO_LARGE),
    # the other party signs in the holder's name with its own key
    (lambda: _resign(_vp([GOOD]), OTHER, header={"kid": OTHER.key_id}), ErrorCode.KEY_NOT_FOUND),
    (lambda: _resign(_vp([GOOD]), OTHER), ErrorCode.INVALID_SIGNATURE),
    # a credential (no vp claim) offered as the presentation
    (lambda: _resign(GOOD, HOLDER, header={"kid": HOLDER.key_id},
                     change=lambda p: p.update(iss=HOLDER_DID, nonce="n-1",
                                               aud="https://partner.example")),
     ErrorCode.MALFORMED),
])
def test_presentation_refusals(token: Any, code: ErrorCode) -> None:
    assert _code(lambda: _verify_vp(token())) == code


def test_aud_array_and_present_refusals() -> None:
    vp = _forged_vp(lambda p: p.update(aud=["https://other.example", "https://partner.example"]))
    assert _verify_vp(vp)[0]["id"] == _credential()["id"]
    assert _code(lambda: _vp([ABOUT_OTHER])) == ErrorCode.KEY_BINDING_INVALID
    assert _code(lambda: _vp([GOOD], signer=OTHER)) == ErrorCode.KEY_BINDING_INVALID
    assert _code(lambda: _vp([])) == ErrorCode.MALFORMED
    assert _code(lambda: _vp([GOOD], nonce="")) == ErrorCode.INVALID_REQUEST


# -- didkit 0.3.3, both directions -----------------------------------------------------


def _run(call: Any) -> Any:
    # didkit's calls return futures bound to the running loop: call inside one.
    async def wrap() -> Any:
        return await call()
    return asyncio.run(wrap())


@pytest.fixture(scope="module")
def dk() -> Any:
    return pytest.importorskip("didkit")


@pytest.fixture(scope="module")
def dkeys(dk: Any) -> dict[str, Any]:
    from tessera.keys import signer_from_jwk

    out: dict[str, Any] = {}
    for who in ("issuer", "holder"):
        jwk = dk.generate_ed25519_key()
        vm = _run(lambda jwk=jwk: dk.key_to_verification_method("key", jwk))
        out[who] = {"jwk": jwk, "did": dk.key_to_did("key", jwk), "vm": vm,
                    "signer": signer_from_jwk(json.loads(jwk), key_id=vm)}
    return out


def _dk_issue(dk: Any, keys: dict[str, Any], vc: dict[str, Any]) -> str:
    opts = {"proofPurpose": "assertionMethod", "verificationMethod": keys["issuer"]["vm"],
            "proofFormat": "jwt"}
    return str(_run(lambda: dk.issue_credential(json.dumps(vc), json.dumps(opts),
                                                keys["issuer"]["jwk"])))


def _dk_verify(dk: Any, token: str) -> list[str]:
    res = json.loads(_run(lambda: dk.verify_credential(token, json.dumps(
        {"proofPurpose": "assertionMethod", "proofFormat": "jwt"}))))
    return list(res["errors"])


def _dk_present(dk: Any, keys: dict[str, Any], creds: list[str], challenge: str,
                domain: str) -> str:
    vp = {"@context": [jsonld.CREDENTIALS_V1], "type": ["VerifiablePresentation"],
          "holder": keys["holder"]["did"], "verifiableCredential": creds}
    opts = {"proofPurpose": "authentication", "verificationMethod": keys["holder"]["vm"],
            "proofFormat": "jwt", "challenge": challenge, "domain": domain}
    return str(_run(lambda: dk.issue_presentation(json.dumps(vp), json.dumps(opts),
                                                  keys["holder"]["jwk"])))


def _dk_verify_vp(dk: Any, token: str, challenge: str, domain: str) -> list[str]:
    res = json.loads(_run(lambda: dk.verify_presentation(token, json.dumps(
        {"proofPurpose": "authentication", "proofFormat": "jwt", "challenge": challenge,
         "domain": domain}))))
    return list(res["errors"])


def _dk_credential(keys: dict[str, Any], expires: str = "2035-01-01T00:00:00Z") -> dict[str, Any]:
    # didkit checks exp against the wall clock, so its credentials expire far away
    return _credential(issuer=keys["issuer"]["did"], subject=keys["holder"]["did"],
                       expires=expires)


def test_tessera_verifies_didkit_jwt_vc(dk: Any, dkeys: dict[str, Any]) -> None:
    vc = _dk_credential(dkeys)
    token = _dk_issue(dk, dkeys, vc)
    jws = decode_unverified(token)
    assert jws.header["kid"] == dkeys["issuer"]["vm"] and "typ" not in jws.header
    assert isinstance(jws.payload["nbf"], float)  # didkit writes non-integer NumericDates
    assert _verify(token) == vc
    assert _code(lambda: _verify(_tampered(token))) == ErrorCode.INVALID_SIGNATURE
    assert _dk_verify(dk, _tampered(token)) != []


def test_didkit_verifies_tessera_jwt_vc(dk: Any, dkeys: dict[str, Any]) -> None:
    token = jwt_vc.issue_credential(_dk_credential(dkeys), signer=dkeys["issuer"]["signer"],
                                    now=NOW)
    assert _dk_verify(dk, token) == []
    assert _dk_verify(dk, _tampered(token)) != []
    # a token of another key in the issuer's name: both refuse
    forged = _resign(token, OTHER)
    assert _dk_verify(dk, forged) != []
    assert _code(lambda: _verify(forged)) == ErrorCode.INVALID_SIGNATURE


def test_expired_jwt_vc_both_refuse(dk: Any, dkeys: dict[str, Any]) -> None:
    token = _dk_issue(dk, dkeys, _dk_credential(dkeys, expires="2025-02-01T00:00:00Z"))
    # didkit refuses against its wall clock but with a misleading message
    assert _dk_verify(dk, token) == ["No applicable JWS or proof"]
    assert _code(lambda: _verify(token)) == ErrorCode.EXPIRED


def test_tessera_verifies_didkit_jwt_vp(dk: Any, dkeys: dict[str, Any]) -> None:
    vc = _dk_credential(dkeys)
    cred = _dk_issue(dk, dkeys, vc)
    vp = _dk_present(dk, dkeys, [cred], "n-1", "partner.example")
    p = decode_unverified(vp).payload
    assert (p["aud"], p["nonce"], p["iss"]) == ("partner.example", "n-1", dkeys["holder"]["did"])
    assert _verify_vp(vp, audience="partner.example") == [vc]
    assert _code(lambda: _verify_vp(vp, nonce="n-2", audience="partner.example")) \
        == ErrorCode.NONCE_MISMATCH
    assert _code(lambda: _verify_vp(vp, audience="other.example")) \
        == ErrorCode.AUDIENCE_MISMATCH


def test_didkit_verifies_tessera_jwt_vp(dk: Any, dkeys: dict[str, Any]) -> None:
    cred = jwt_vc.issue_credential(_dk_credential(dkeys), signer=dkeys["issuer"]["signer"],
                                   now=NOW)
    # didkit checks exp against its wall clock, so the VP is made now
    vp = jwt_vc.present([cred], signer=dkeys["holder"]["signer"], holder=dkeys["holder"]["did"],
                        audience="partner.example", nonce="n-3", now=datetime.now(UTC))
    assert _dk_verify_vp(dk, vp, "n-3", "partner.example") == []
    assert _dk_verify_vp(dk, vp, "n-4", "partner.example") != []
    assert _dk_verify_vp(dk, vp, "n-3", "other.example") != []


@pytest.mark.parametrize("bad", ["tampered", "expired", "about_someone_else"])
def test_didkit_accepts_bad_embedded_credential_tessera_refuses(
        dk: Any, dkeys: dict[str, Any], bad: str) -> None:
    if bad == "tampered":
        cred, code = _tampered(_dk_issue(dk, dkeys, _dk_credential(dkeys))), \
            ErrorCode.INVALID_SIGNATURE
    elif bad == "expired":
        cred, code = _dk_issue(dk, dkeys, _dk_credential(dkeys, expires="2025-02-01T00:00:00Z")), \
            ErrorCode.EXPIRED
    else:
        vc = _credential(issuer=dkeys["issuer"]["did"], subject=OTHER_DID)
        cred, code = _dk_issue(dk, dkeys, vc), ErrorCode.KEY_BINDING_INVALID
    vp = _dk_present(dk, dkeys, [cred], "n-1", "partner.example")
    assert _dk_verify_vp(dk, vp, "n-1", "partner.example") == []  # didkit: fine
    assert _code(lambda: _verify_vp(vp, audience="partner.example")) == code
