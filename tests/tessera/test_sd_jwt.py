"""SD-JWT VC format: issue, present, verify (RFC 9901, SD-JWT VC draft)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.formats.sd_jwt import (
    SdJwt,
    check_times,
    decode_disclosure,
    disclosed_claim_names,
    issue,
    parse,
    present,
    verify,
)
from tessera.jose import decode_unverified, sign_compact
from tessera.keys import LocalSigner, generate_signer

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ISS = "did:web:acme.example"
VCT = "https://example.com/vct/test"
AUD = "https://partner.example"
NONCE = "n-0S6_WzA2Mj"
CLAIMS = {"given_name": "Ada", "tier": {"name": "gold", "rank": 2}, "points": 1250,
          "tier_at_least_gold": True, "nickname": None, "tags": ["a", "b"], "ünï": "cödé"}


def _digest(text: str) -> str:
    return b64url_encode(hashlib.sha256(text.encode("ascii")).digest())


@pytest.fixture(scope="module")
def issuer() -> LocalSigner:
    return generate_signer("ES256", key_id=f"{ISS}#key-1")


@pytest.fixture(scope="module", params=["EdDSA", "ES256"])
def holder(request: pytest.FixtureRequest) -> LocalSigner:
    return generate_signer(request.param)


def _issue(issuer: LocalSigner, holder: LocalSigner | None, **kw: Any) -> str:
    args: dict[str, Any] = dict(signer=issuer, issuer=ISS, vct=VCT,
                                holder_key=holder.public_key if holder else None,
                                issued_at=NOW - timedelta(days=1),
                                expires_at=NOW + timedelta(days=30))
    args.update(kw)
    return issue(kw.pop("claims", CLAIMS), **{k: v for k, v in args.items() if k != "claims"})


def _present(cred: str, holder: LocalSigner, names: list[str], **kw: Any) -> str:
    args: dict[str, Any] = dict(disclose=names, holder=holder, audience=AUD, nonce=NONCE,
                                issued_at=NOW)
    args.update(kw)
    return present(cred, **args)


def _verify(pres: str, issuer: LocalSigner, **kw: Any) -> sd_jwt.VerifiedSdJwt:
    args: dict[str, Any] = dict(issuer_key=issuer.public_key, now=NOW, audience=AUD,
                                nonce=NONCE)
    args.update(kw)
    return verify(pres, **args)


def _code(fn: Any) -> ErrorCode:
    with pytest.raises(TesseraError) as exc:
        fn()
    return exc.value.code


# -- issuance --------------------------------------------------------------------------


def test_issued_shape(issuer: LocalSigner, holder: LocalSigner) -> None:
    cred = _issue(issuer, holder, always_visible={"points"}, decoys=3,
                  not_before=NOW - timedelta(hours=1),
                  status={"status_list": {"idx": 7, "uri": "https://s.example/1"}})
    parsed = parse(cred)
    assert parsed.kb_jwt is None and cred.endswith("~")
    jws = decode_unverified(parsed.jwt)
    assert jws.header == {"alg": "ES256", "typ": "dc+sd-jwt", "kid": f"{ISS}#key-1"}
    p = jws.payload
    assert p["iss"] == ISS and p["vct"] == VCT and p["_sd_alg"] == "sha-256"
    assert p["iat"] < p["exp"] and p["nbf"] == int((NOW - timedelta(hours=1)).timestamp())
    assert p["cnf"] == {"jwk": holder.public_key.to_jwk()}
    assert p["status"]["status_list"]["idx"] == 7
    assert p["points"] == 1250  # always visible
    hidden = set(CLAIMS) - {"points"}
    assert not hidden & set(p)  # every other claim only as a digest
    assert len(parsed.disclosures) == len(hidden)
    assert len(p["_sd"]) == len(hidden) + 3  # decoys hide the claim count
    assert p["_sd"] == sorted(p["_sd"])  # order says nothing about the claim
    assert {_digest(d) for d in parsed.disclosures} < set(p["_sd"])
    for d in parsed.disclosures:
        salt, name, value = decode_disclosure(d)
        assert len(b64url_decode(salt)) == 16 and CLAIMS[name] == value


def test_default_decoys_between_one_and_five(issuer: LocalSigner) -> None:
    counts = set()
    for _ in range(40):
        parsed = parse(_issue(issuer, None))
        counts.add(len(decode_unverified(parsed.jwt).payload["_sd"]) - len(CLAIMS))
    assert counts <= {1, 2, 3, 4, 5} and len(counts) > 1


def test_salts_are_fresh(issuer: LocalSigner) -> None:
    a, b = parse(_issue(issuer, None)), parse(_issue(issuer, None))
    assert not set(a.disclosures) & set(b.disclosures)


@pytest.mark.parametrize("name", sorted(sd_jwt.NEVER_DISCLOSABLE))
def test_reserved_claims_cannot_be_issued(issuer: LocalSigner, name: str) -> None:
    assert _code(lambda: _issue(issuer, None, claims={name: "x"})) is ErrorCode.MALFORMED


# -- presentation ----------------------------------------------------------------------


def test_round_trip(issuer: LocalSigner, holder: LocalSigner) -> None:
    cred = _issue(issuer, holder)
    pres = _present(cred, holder, ["tier_at_least_gold", "ünï"])
    vc = _verify(pres, issuer)
    assert vc.claims == {"tier_at_least_gold": True, "ünï": "cödé"}
    assert vc.disclosed == {"tier_at_least_gold", "ünï"}
    assert vc.issuer == ISS and vc.vct == VCT
    assert vc.holder_key == holder.public_key
    assert vc.key_binding is not None and vc.key_binding["aud"] == AUD
    kb = decode_unverified(parse(pres).kb_jwt or "")
    assert kb.header == {"alg": holder.alg, "typ": "kb+jwt"}  # no kid: cnf decides
    assert kb.payload["sd_hash"] == _digest(parse(pres).without_kb)


def test_present_everything_and_nothing(issuer: LocalSigner, holder: LocalSigner) -> None:
    cred = _issue(issuer, holder)
    assert _verify(_present(cred, holder, list(CLAIMS)), issuer).claims == CLAIMS
    assert _verify(_present(cred, holder, []), issuer).claims == {}


def test_presentation_leaks_nothing_undisclosed(issuer: LocalSigner, holder: LocalSigner
                                                 ) -> None:
    cred = _issue(issuer, holder, claims={"secret_name": "Zebulon", "tier_at_least_gold": True})
    pres = _present(cred, holder, ["tier_at_least_gold"])
    decoded = "".join(
        b64url_decode(part).decode("utf-8", "replace")
        for piece in pres.split("~") for part in piece.split(".") if part
    )
    assert "Zebulon" not in decoded and "secret_name" not in decoded


def test_present_without_key_binding(issuer: LocalSigner, holder: LocalSigner) -> None:
    cred = _issue(issuer, holder)
    pres = present(cred, disclose=["points"], holder=None)
    assert pres.endswith("~")
    vc = _verify(pres, issuer, require_key_binding=False, audience=None, nonce=None)
    assert vc.claims == {"points": 1250} and vc.key_binding is None
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.KEY_BINDING_MISSING


def test_present_refuses_unknown_claims_and_missing_aud(issuer: LocalSigner,
                                                        holder: LocalSigner) -> None:
    cred = _issue(issuer, holder)
    assert _code(lambda: _present(cred, holder, ["email"])) is ErrorCode.DISCLOSURE_MISMATCH
    assert _code(lambda: _present(cred, holder, ["points"], audience=None)) \
        is ErrorCode.INVALID_REQUEST


def test_disclosed_claim_names(issuer: LocalSigner) -> None:
    assert set(disclosed_claim_names(_issue(issuer, None))) == set(CLAIMS)


def test_transaction_data_binding(issuer: LocalSigner, holder: LocalSigner) -> None:
    td = [b64url_encode(json.dumps({"type": "redeem", "points": 500}).encode())]
    cred = _issue(issuer, holder)
    pres = _present(cred, holder, ["points"], transaction_data=td)
    vc = _verify(pres, issuer, transaction_data=td)
    assert vc.key_binding is not None
    assert vc.key_binding["transaction_data_hashes"] == [_digest(td[0])]
    other = [b64url_encode(b'{"type":"redeem","points":5000}')]
    for kwargs in ({"transaction_data": other}, {}):
        assert _code(lambda kw=kwargs: _verify(pres, issuer, **kw)) \
            is ErrorCode.TRANSACTION_DATA_MISMATCH
    plain = _present(cred, holder, ["points"])
    assert _code(lambda: _verify(plain, issuer, transaction_data=td)) \
        is ErrorCode.TRANSACTION_DATA_MISMATCH


# -- verification failures, one mechanism each -------------------------------------------


@pytest.fixture(scope="module")
def cred_and_holder(issuer: LocalSigner) -> tuple[str, LocalSigner]:
    holder = generate_signer("EdDSA")
    return _issue(issuer, holder), holder


def _forge_issuer_jwt(issuer: LocalSigner, payload_edit: Any, cred: str,
                      header: dict[str, Any] | None = None) -> SdJwt:
    parsed = parse(cred)
    jws = decode_unverified(parsed.jwt)
    payload = json.loads(json.dumps(jws.payload))
    payload_edit(payload)
    hdr = {k: v for k, v in jws.header.items() if k not in ("alg", "kid")}
    return SdJwt(sign_compact({**hdr, **(header or {})}, payload, issuer), parsed.disclosures,
                 None)


def _with_kb(parts: SdJwt, holder: LocalSigner, **kb_over: Any) -> str:
    kb = {"iat": int(NOW.timestamp()), "aud": AUD, "nonce": NONCE,
          "sd_hash": _digest(parts.without_kb), **kb_over}
    return SdJwt(parts.jwt, parts.disclosures,
                 sign_compact({"typ": "kb+jwt"}, kb, holder)).serialize()


def test_tampered_disclosure(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    parsed = parse(present(cred, disclose=["points"], holder=None))
    salt, name, _ = decode_disclosure(parsed.disclosures[0])
    forged = b64url_encode(json.dumps([salt, name, 999999]).encode())
    pres = _with_kb(SdJwt(parsed.jwt, (forged,), None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_disclosure_from_another_credential(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    other = parse(_issue(issuer, holder, claims={"vip": True}))
    parsed = parse(cred)
    pres = _with_kb(SdJwt(parsed.jwt, other.disclosures, None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_duplicated_disclosure(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    parsed = parse(cred)
    pres = _with_kb(SdJwt(parsed.jwt, (parsed.disclosures[0],) * 2, None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_digest_appearing_twice(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    first = parse(cred).disclosures[0]

    def twice(p: dict[str, Any]) -> None:
        p["_sd"].append(_digest(first))
        p["nested"] = {"_sd": [_digest(first)]}

    for edit in (lambda p: p["_sd"].append(_digest(first)), twice):
        parts = _forge_issuer_jwt(issuer, edit, cred)
        pres = _with_kb(SdJwt(parts.jwt, (first,), None), holder)
        assert _code(lambda pr=pres: _verify(pr, issuer)) is ErrorCode.DISCLOSURE_MISMATCH
        # Even when the doubled digest's disclosure is withheld (§7.1 step 4).
        bare = _with_kb(SdJwt(parts.jwt, (), None), holder)
        assert _code(lambda pr=bare: _verify(pr, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_disclosure_may_not_overwrite_a_clear_claim(issuer: LocalSigner,
                                                    cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    parsed = parse(cred)
    names = {decode_disclosure(d)[1]: d for d in parsed.disclosures}
    parts = _forge_issuer_jwt(issuer, lambda p: p.update(points=1), cred)
    pres = _with_kb(SdJwt(parts.jwt, (names["points"],), None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


@pytest.mark.parametrize("bad", [["s", "_sd", 1], ["s", "...", 1], ["s", "_sd_alg", "x"]])
def test_disclosure_with_reserved_name(issuer: LocalSigner, cred_and_holder: Any,
                                       bad: list[Any]) -> None:
    cred, holder = cred_and_holder
    disclosure = b64url_encode(json.dumps(bad).encode())
    parts = _forge_issuer_jwt(issuer, lambda p: p["_sd"].append(_digest(disclosure)), cred)
    pres = _with_kb(SdJwt(parts.jwt, (disclosure,), None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_structural_claim_made_disclosable(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    disclosure = b64url_encode(json.dumps(["salt", "exp", 9999999999]).encode())

    def edit(p: dict[str, Any]) -> None:
        del p["exp"]
        p["_sd"].append(_digest(disclosure))

    parts = _forge_issuer_jwt(issuer, edit, cred)
    pres = _with_kb(SdJwt(parts.jwt, (disclosure,), None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_array_element_disclosure_in_object_position(issuer: LocalSigner,
                                                     cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    element = b64url_encode(json.dumps(["salt", "x"]).encode())
    parts = _forge_issuer_jwt(issuer, lambda p: p["_sd"].append(_digest(element)), cred)
    pres = _with_kb(SdJwt(parts.jwt, (element,), None), holder)
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.DISCLOSURE_MISMATCH


def test_array_disclosures(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    element = b64url_encode(json.dumps(["salt", "FR"]).encode())
    decoy = _digest("decoy")
    parts = _forge_issuer_jwt(issuer, lambda p: p.update(
        nationalities=["DE", {"...": _digest(element)}, {"...": decoy}]), cred)
    pres = _with_kb(SdJwt(parts.jwt, (element,), None), holder)
    assert _verify(pres, issuer).claims["nationalities"] == ["DE", "FR"]
    withheld = _with_kb(SdJwt(parts.jwt, (), None), holder)
    assert _verify(withheld, issuer).claims["nationalities"] == ["DE"]
    bad = _forge_issuer_jwt(issuer, lambda p: p.update(x=[{"...": decoy, "y": 1}]), cred)
    assert _code(lambda: _verify(_with_kb(bad, holder), issuer)) is ErrorCode.MALFORMED


def test_unsupported_sd_alg(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    parts = _forge_issuer_jwt(issuer, lambda p: p.update(_sd_alg="sha-512"), cred)
    assert _code(lambda: _verify(_with_kb(parts, holder), issuer)) \
        is ErrorCode.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize(("typ", "code"), [
    ("example+sd-jwt", ErrorCode.UNSUPPORTED_FORMAT),
    ("JWT", ErrorCode.UNSUPPORTED_FORMAT),
    (None, ErrorCode.UNSUPPORTED_FORMAT),
    ("vc+sd-jwt", None),  # the draft's earlier media type is still accepted
])
def test_typ(issuer: LocalSigner, cred_and_holder: Any, typ: str | None,
             code: ErrorCode | None) -> None:
    cred, holder = cred_and_holder
    parts = _forge_issuer_jwt(issuer, lambda p: None, cred, header={"typ": typ})
    pres = _with_kb(SdJwt(parts.jwt, (), None), holder)
    if code is None:
        _verify(pres, issuer)
    else:
        assert _code(lambda: _verify(pres, issuer)) is code


@pytest.mark.parametrize("edit", [
    lambda p: p.pop("iss"), lambda p: p.pop("vct"), lambda p: p.update(iss=5),
    lambda p: p.update(exp="tomorrow"), lambda p: p.update(exp=True),
    lambda p: p.update(_sd="x"), lambda p: p.update(_sd=[5]),
])
def test_malformed_payloads(issuer: LocalSigner, cred_and_holder: Any, edit: Any) -> None:
    cred, holder = cred_and_holder
    parts = _forge_issuer_jwt(issuer, edit, cred)
    assert _code(lambda: _verify(_with_kb(parts, holder), issuer)) is ErrorCode.MALFORMED


def test_cnf_forms(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    parts = _forge_issuer_jwt(issuer, lambda p: p.update(cnf={"kid": "x"}), cred)
    assert _code(lambda: _verify(_with_kb(parts, holder), issuer)) \
        is ErrorCode.UNSUPPORTED_FORMAT
    parts = _forge_issuer_jwt(issuer, lambda p: p.pop("cnf"), cred)
    assert _code(lambda: _verify(_with_kb(parts, holder), issuer)) \
        is ErrorCode.KEY_BINDING_INVALID


def test_issuer_signature(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    pres = _present(cred, holder, ["points"])
    other = generate_signer("ES256")
    assert _code(lambda: _verify(pres, other)) is ErrorCode.INVALID_SIGNATURE
    assert _code(lambda: _verify(pres, generate_signer("EdDSA"))) \
        is ErrorCode.UNSUPPORTED_ALGORITHM
    assert _code(lambda: _verify(pres, issuer, allowed_algs={"EdDSA"})) \
        is ErrorCode.UNSUPPORTED_ALGORITHM
    # A lookup callback sees iss and the header.
    seen: list[Any] = []
    _verify(pres, issuer, issuer_key=lambda iss, hdr: seen.append((iss, hdr["kid"])) or
            issuer.public_key)
    assert seen == [(ISS, f"{ISS}#key-1")]


def test_key_binding_failures(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    base = parse(present(cred, disclose=["points"], holder=None))
    intruder = generate_signer("EdDSA")
    cases = {
        "other key": (_with_kb(base, intruder), ErrorCode.KEY_BINDING_INVALID),
        "bad sd_hash": (_with_kb(base, holder, sd_hash=_digest("x")),
                        ErrorCode.KEY_BINDING_INVALID),
        "stale": (_with_kb(base, holder, iat=int((NOW - timedelta(minutes=7)).timestamp())),
                  ErrorCode.KEY_BINDING_INVALID),
        "future": (_with_kb(base, holder, iat=int((NOW + timedelta(minutes=5)).timestamp())),
                   ErrorCode.KEY_BINDING_INVALID),
        "iat not a number": (_with_kb(base, holder, iat="now"), ErrorCode.MALFORMED),
        "nonce": (_with_kb(base, holder, nonce="other"), ErrorCode.NONCE_MISMATCH),
        "aud": (_with_kb(base, holder, aud="https://evil.example"),
                ErrorCode.AUDIENCE_MISMATCH),
        "aud list": (_with_kb(base, holder, aud=[AUD, "https://evil.example"]),
                     ErrorCode.AUDIENCE_MISMATCH),
        "garbage": (base.without_kb + "not.a.jwt", ErrorCode.KEY_BINDING_INVALID),
    }
    for name, (pres, code) in cases.items():
        assert _code(lambda p=pres: _verify(p, issuer)) is code, name
    wrong_typ = SdJwt(base.jwt, base.disclosures, sign_compact(
        {"typ": "JWT"}, {"iat": int(NOW.timestamp()), "aud": AUD, "nonce": NONCE,
                         "sd_hash": _digest(base.without_kb)}, holder)).serialize()
    assert _code(lambda: _verify(wrong_typ, issuer)) is ErrorCode.KEY_BINDING_INVALID
    # A disclosure appended after the holder signed is not covered by sd_hash.
    signed = _present(cred, holder, ["points"])
    jwt, *disc, kb = signed.split("~")
    extra = next(d for d in parse(cred).disclosures if d not in disc)
    appended = "~".join([jwt, *disc, extra, kb])
    assert _code(lambda: _verify(appended, issuer)) is ErrorCode.KEY_BINDING_INVALID
    # Verifying a KB needs the verifier's own aud and nonce.
    assert _code(lambda: _verify(signed, issuer, nonce=None)) is ErrorCode.INVALID_REQUEST


def test_kb_iat_none_is_key_binding_invalid(issuer: LocalSigner, cred_and_holder: Any) -> None:
    cred, holder = cred_and_holder
    base = parse(present(cred, disclose=[], holder=None))
    kb = {"aud": AUD, "nonce": NONCE, "sd_hash": _digest(base.without_kb)}
    pres = SdJwt(base.jwt, (), sign_compact({"typ": "kb+jwt"}, kb, holder)).serialize()
    assert _code(lambda: _verify(pres, issuer)) is ErrorCode.KEY_BINDING_INVALID


def test_times(issuer: LocalSigner, holder: LocalSigner) -> None:
    expired = _issue(issuer, holder, issued_at=NOW - timedelta(days=10),
                     expires_at=NOW - timedelta(minutes=2))
    assert _code(lambda: _verify(_present(expired, holder, []), issuer)) is ErrorCode.EXPIRED
    # Inside the skew it still verifies; check_validity=False leaves it to the caller.
    barely = _issue(issuer, holder, expires_at=NOW - timedelta(seconds=30))
    _verify(_present(barely, holder, []), issuer)
    _verify(_present(expired, holder, []), issuer, check_validity=False)
    early = _issue(issuer, holder, not_before=NOW + timedelta(hours=1))
    assert _code(lambda: _verify(_present(early, holder, []), issuer)) is ErrorCode.NOT_YET_VALID
    future = _issue(issuer, holder, issued_at=NOW + timedelta(hours=1))
    assert _code(lambda: _verify(_present(future, holder, []), issuer)) \
        is ErrorCode.NOT_YET_VALID
    naive = datetime(2026, 11, 23, 12, 0)
    assert _code(lambda: _verify(_present(barely, holder, []), issuer, now=naive)) \
        is ErrorCode.INVALID_REQUEST


def test_check_times_boundaries() -> None:
    t = int(NOW.timestamp())
    skew = timedelta(seconds=60)
    check_times({"exp": t + 1}, NOW, timedelta(0))
    assert _code(lambda: check_times({"exp": t}, NOW, timedelta(0))) is ErrorCode.EXPIRED
    check_times({"exp": t - 59}, NOW, skew)
    assert _code(lambda: check_times({"exp": t - 60}, NOW, skew)) is ErrorCode.EXPIRED
    check_times({"nbf": t + 60}, NOW, skew)
    assert _code(lambda: check_times({"nbf": t + 61}, NOW, skew)) is ErrorCode.NOT_YET_VALID


@pytest.mark.parametrize("name", ["exp", "nbf", "iat"])
def test_check_times_numeric_dates(name: str) -> None:
    # An int takes a shortcut in _ts; a bool (an int to Python), a string or
    # other junk must still be refused, and a float still read.
    for bad in (True, False, "1", [1], {"t": 1}):
        with pytest.raises(TesseraError) as exc:
            check_times({name: bad}, NOW, timedelta(0))
        assert exc.value.code is ErrorCode.MALFORMED
    t = int(NOW.timestamp())
    check_times({name: float(t + 100 if name == "exp" else t - 100)}, NOW, timedelta(0))


# -- parsing and encodings ---------------------------------------------------------------


@given(st.lists(st.text(alphabet="abcXYZ019-_.", min_size=1, max_size=12), min_size=1,
                max_size=6), st.one_of(st.none(), st.text(alphabet="ab.", min_size=1,
                                                           max_size=8)))
def test_serialize_parse_round_trip(disclosures: list[str], kb: str | None) -> None:
    parts = SdJwt("h.p.s", tuple(disclosures), kb)
    assert parse(parts.serialize()) == parts
    assert parts.without_kb.endswith("~")


@pytest.mark.parametrize("bad", ["", "no-tilde", "~", "a~~", "a~~b~"])
def test_parse_refuses_junk(bad: str) -> None:
    assert _code(lambda: parse(bad)) is ErrorCode.MALFORMED


def test_parse_limits() -> None:
    assert _code(lambda: parse("a~" * (sd_jwt.MAX_DISCLOSURES + 2))) is ErrorCode.TOO_LARGE
    assert _code(lambda: parse("a" * (sd_jwt.MAX_PRESENTATION_BYTES + 1) + "~")) \
        is ErrorCode.TOO_LARGE
    assert _code(lambda: parse(5)) is ErrorCode.MALFORMED  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


@given(st.text(max_size=20), st.text(max_size=20).filter(lambda n: n not in
                                                         ("_sd", "...", "_sd_alg")),
       json_values)
def test_disclosure_encode_decode(salt: str, name: str, value: Any) -> None:
    encoded = sd_jwt._encode_disclosure([salt, name, value])
    assert decode_disclosure(encoded) == [salt, name, value]
    element = sd_jwt._encode_disclosure([salt, value])
    assert decode_disclosure(element) == [salt, value]


@pytest.mark.parametrize("items", [[], ["s"], ["s", "n", 1, 2], [1, "n", 1], ["s", 5, 1],
                                   {"s": 1}, "s"])
def test_disclosure_shapes_refused(items: Any) -> None:
    encoded = b64url_encode(json.dumps(items).encode())
    assert _code(lambda: decode_disclosure(encoded)) is ErrorCode.MALFORMED


@given(st.text(max_size=200))
@settings(max_examples=150)
def test_verify_arbitrary_text_only_raises_tessera_errors(text: str) -> None:
    with pytest.raises(TesseraError):
        verify(text, issuer_key=_ED.public_key, now=NOW, audience=AUD, nonce=NONCE)


_ED = generate_signer("EdDSA")
