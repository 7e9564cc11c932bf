"""One attack per error code: each yields its documented code through ``Verifier.verify``,
never an exception.

Every attack starts from a valid presentation by the fixed test member of the
fixed test brand, changes one thing, and checks the exact error list.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import credentials
from tessera.dcql import claims_query
from tessera.encoding import b64url_encode, canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.formats.sd_jwt import SdJwt, decode_disclosure, parse
from tessera.jose import decode_unverified, sign_compact
from tessera.keys import generate_signer
from verifier import PresentationRequest, TrustList, VerificationResult, Verifier
from verifier.errors import VERIFICATION_CODES
from verifier.testing import FixedClock, InMemoryResolver, TestHolder, TestIssuer

AUD = "https://shop.example"
MVCT = credentials.MEMBERSHIP.vct
PVCT = credentials.POINTS.vct


@dataclass
class World:
    clock: FixedClock
    brand: TestIssuer
    member: TestHolder
    verifier: Verifier

    def request(self, **kw: Any) -> PresentationRequest:
        kw.setdefault("audience", AUD)
        return self.verifier.create_request(**kw)

    def cred(self) -> str:
        return self.brand.issue_membership(self.member)

    def present(self, cred: str, names: list[str], req: PresentationRequest, **kw: Any) -> str:
        args: dict[str, Any] = dict(disclose=names, holder=self.member.signer,
                                    audience=req.audience, nonce=req.nonce,
                                    issued_at=self.clock(),
                                    transaction_data=req.transaction_data)
        args.update(kw)
        return sd_jwt.present(cred, **args)

    def reissue(self, cred: str, *, payload: Callable[[dict[str, Any]], Any] = lambda p: None,
                header: dict[str, Any] | None = None, signer: Any = None,
                disclosures: tuple[str, ...] | None = None) -> str:
        """The brand's credential with its JWT edited and re-signed (by the brand by default)."""
        parsed = parse(cred)
        jws = decode_unverified(parsed.jwt)
        body = json.loads(json.dumps(jws.payload))
        payload(body)
        hdr = {k: v for k, v in jws.header.items() if k != "alg"}
        hdr.update(header or {})
        jwt = sign_compact(hdr, body, signer or self.brand.signer)
        return SdJwt(jwt, parsed.disclosures if disclosures is None else disclosures,
                     None).serialize()


def make_world(status_check: Any = None) -> World:
    clock = FixedClock()
    brand = TestIssuer(clock=clock)
    member = TestHolder(clock=clock)
    kwargs: dict[str, Any] = {"status_check": status_check} if status_check else {}
    verifier = Verifier(trust=brand.trust_list(), resolver=InMemoryResolver(brand.did_document),
                        clock=clock, **kwargs)
    return World(clock, brand, member, verifier)


@pytest.fixture
def world() -> World:
    return make_world()


def _digest(text: str) -> str:
    return b64url_encode(hashlib.sha256(text.encode("ascii")).digest())


def _by_name(cred: str) -> dict[str, str]:
    return {decode_disclosure(d)[1]: d for d in parse(cred).disclosures}


def _b64json(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


# -- the attacks ---------------------------------------------------------------------------
# Each returns (vp_token, request) for world.verifier; ATTACKS maps name -> (attack, codes).

Attack = Callable[[World], tuple[Any, PresentationRequest | str]]


def baseline(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req), req


def tampered_disclosure(w: World) -> tuple[Any, PresentationRequest]:
    cred = w.cred()
    salt, name, _ = decode_disclosure(_by_name(cred)["tier_at_least_platinum"])
    forged = b64url_encode(json.dumps([salt, name, True]).encode())
    parsed = parse(cred)
    swapped = tuple(forged if decode_disclosure(d)[1] == name else d for d in parsed.disclosures)
    req = w.request()
    return w.present(SdJwt(parsed.jwt, swapped, None).serialize(), [name], req), req


def disclosure_not_in_sd(w: World) -> tuple[Any, PresentationRequest]:
    # A genuine disclosure, signed by the brand, but from another member's credential.
    other = w.brand.issue_membership(TestHolder(generate_signer("EdDSA")), tier="platinum")
    cred = w.cred()
    parsed = parse(cred)
    foreign = _by_name(other)["tier_at_least_platinum"]
    kept = [d for d in parsed.disclosures if decode_disclosure(d)[1] != "tier_at_least_platinum"]
    mixed = (*kept, foreign)
    req = w.request()
    return w.present(SdJwt(parsed.jwt, mixed, None).serialize(),
                     ["tier_at_least_platinum"], req), req


def duplicated_disclosure(w: World) -> tuple[Any, PresentationRequest]:
    cred = w.cred()
    req = w.request()
    pres = parse(w.present(cred, ["tier_at_least_gold"], req, holder=None))
    doubled = SdJwt(pres.jwt, pres.disclosures * 2, None)
    return _rebind(w, doubled, req), req


def digest_twice(w: World) -> tuple[Any, PresentationRequest]:
    cred = w.cred()
    gold = _by_name(cred)["tier_at_least_gold"]
    forged = w.reissue(cred, payload=lambda p: p["_sd"].append(_digest(gold)))
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def alg_none(w: World) -> tuple[Any, PresentationRequest]:
    parsed = parse(w.cred())
    jws = decode_unverified(parsed.jwt)
    jwt = f"{_b64json({**jws.header, 'alg': 'none'})}.{_b64json(jws.payload)}."
    req = w.request()
    return w.present(SdJwt(jwt, parsed.disclosures, None).serialize(),
                     ["tier_at_least_gold"], req), req


def hmac_with_public_key(w: World) -> tuple[Any, PresentationRequest]:
    parsed = parse(w.cred())
    jws = decode_unverified(parsed.jwt)
    signing_input = f"{_b64json({**jws.header, 'alg': 'HS256'})}.{_b64json(jws.payload)}"
    secret = canonical_json(w.brand.signer.public_key.to_jwk())
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    jwt = f"{signing_input}.{b64url_encode(mac)}"
    req = w.request()
    return w.present(SdJwt(jwt, parsed.disclosures, None).serialize(),
                     ["tier_at_least_gold"], req), req


def kid_outside_issuer_did(w: World) -> tuple[Any, PresentationRequest]:
    # The attacker signs with its own did:key and names it as kid, keeping iss.
    attacker = generate_signer("ES256")
    from tessera.did import did_key

    did = did_key(attacker.public_key)
    forged = w.reissue(w.cred(), signer=attacker,
                       header={"kid": f"{did}#{did.split(':')[-1]}"})
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def kid_not_listed(w: World) -> tuple[Any, PresentationRequest]:
    forged = w.reissue(w.cred(), header={"kid": f"{w.brand.did}#key-9"})
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def forged_issuer_signature(w: World) -> tuple[Any, PresentationRequest]:
    # Someone else's P-256 key, claiming the brand's own kid.
    forged = w.reissue(w.cred(), signer=generate_signer("ES256"))
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def tampered_payload(w: World) -> tuple[Any, PresentationRequest]:
    parsed = parse(w.cred())
    h, _p, s = parsed.jwt.split(".")
    payload = decode_unverified(parsed.jwt).payload
    payload["exp"] += 10 * 365 * 86400
    jwt = f"{h}.{_b64json(payload)}.{s}"
    req = w.request()
    return w.present(SdJwt(jwt, parsed.disclosures, None).serialize(),
                     ["tier_at_least_gold"], req), req


def kb_by_another_key(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req,
                     holder=generate_signer("EdDSA")), req


def kb_missing(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req, holder=None), req


def disclosure_added_after_kb(w: World) -> tuple[Any, PresentationRequest]:
    cred = w.cred()
    req = w.request()
    jwt, *disc, kb = w.present(cred, ["tier_at_least_gold"], req).split("~")
    return "~".join([jwt, *disc, _by_name(cred)["name"], kb]), req


def stale_kb(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req,
                     issued_at=w.clock() - timedelta(minutes=10)), req


def wrong_nonce(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req, nonce="guessed"), req


def wrong_audience(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req,
                     audience="https://evil.example"), req


def other_requests_nonce(w: World) -> tuple[Any, PresentationRequest]:
    first, second = w.request(), w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], first), second


def expired(w: World) -> tuple[Any, PresentationRequest]:
    cred = w.brand.issue_membership(w.member, valid_for=timedelta(hours=1))
    w.clock.advance(hours=2)
    req = w.request()
    return w.present(cred, ["tier_at_least_gold"], req), req


def not_yet_valid(w: World) -> tuple[Any, PresentationRequest]:
    early = TestIssuer(clock=lambda: w.clock() + timedelta(hours=1))
    req = w.request()
    return w.present(early.issue_membership(w.member), ["tier_at_least_gold"], req), req


def untrusted_issuer(w: World) -> tuple[Any, PresentationRequest]:
    rogue = TestIssuer("did:web:rogue.test", signer=generate_signer("ES256"), clock=w.clock)
    w.verifier = Verifier(trust=w.brand.trust_list(),
                          resolver=InMemoryResolver(w.brand.did_document, rogue.did_document),
                          clock=w.clock)
    req = w.request()
    return w.present(rogue.issue_membership(w.member), ["tier_at_least_gold"], req), req


def type_not_allowed(w: World) -> tuple[Any, PresentationRequest]:
    w.verifier = Verifier(trust=w.brand.trust_list("LoyaltyPointsCredential"),
                          resolver=InMemoryResolver(w.brand.did_document), clock=w.clock)
    req = w.request()
    return w.present(w.cred(), ["tier_at_least_gold"], req), req


def unresolvable_issuer(w: World) -> tuple[Any, PresentationRequest]:
    ghost = TestIssuer("did:web:ghost.test", clock=w.clock)
    w.verifier = Verifier(trust=TrustList.of([(ghost.did, ["*"])]),
                          resolver=InMemoryResolver(), clock=w.clock)
    req = w.request()
    return w.present(ghost.issue_membership(w.member), ["tier_at_least_gold"], req), req


def claims_outside_schema(w: World) -> tuple[Any, PresentationRequest]:
    # Signed by the trusted brand, but the claims do not fit the type's schema.
    now = w.clock()
    cred = sd_jwt.issue({"nickname": "Ace", "tier_at_least_gold": "very"},
                        signer=w.brand.signer, issuer=w.brand.did, vct=MVCT,
                        holder_key=w.member.signer.public_key, issued_at=now,
                        expires_at=now + timedelta(days=1))
    req = w.request()
    return w.present(cred, ["nickname"], req), req


def wrong_typ(w: World) -> tuple[Any, PresentationRequest]:
    forged = w.reissue(w.cred(), header={"typ": "JWT"})
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def unknown_vct(w: World) -> tuple[Any, PresentationRequest]:
    forged = w.reissue(w.cred(), payload=lambda p: p.update(vct="https://evil.example/pass"))
    req = w.request()
    return w.present(forged, ["tier_at_least_gold"], req), req


def disallowed_alg(w: World) -> tuple[Any, PresentationRequest]:
    w.verifier = Verifier(trust=w.brand.trust_list(), allowed_algs={"EdDSA"},
                          resolver=InMemoryResolver(w.brand.did_document), clock=w.clock)
    return baseline(w)


def transaction_not_signed(w: World) -> tuple[Any, PresentationRequest]:
    td = [_b64json({"type": "redeem", "points": 500, "order": "o-1"})]
    req = w.request(transaction_data=td)
    return w.present(w.cred(), ["tier_at_least_gold"], req, transaction_data=None), req


def transaction_swapped(w: World) -> tuple[Any, PresentationRequest]:
    td = [_b64json({"type": "redeem", "points": 500, "order": "o-1"})]
    other = [_b64json({"type": "redeem", "points": 50, "order": "o-1"})]
    req = w.request(transaction_data=td)
    return w.present(w.cred(), ["tier_at_least_gold"], req, transaction_data=other), req


def dcql_claim_missing(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request(dcql={"credentials": [claims_query("m", MVCT, ["tier_at_least_gold"])]})
    return w.present(w.cred(), ["name"], req), req


def dcql_false_when_true_required(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request(dcql={"credentials": [claims_query(
        "m", MVCT, ["tier_at_least_platinum"], require_true=True)]})
    return w.present(w.cred(), ["tier_at_least_platinum"], req), req


def dcql_wrong_type(w: World) -> tuple[Any, PresentationRequest]:
    req = w.request(dcql={"credentials": [claims_query("p", PVCT, ["tier_at_least_gold"])]})
    return w.present(w.cred(), ["tier_at_least_gold"], req), req


def glued_holders(w: World) -> tuple[Any, PresentationRequest]:
    # Alice's membership and Bob's points, each correctly bound, in one answer.
    bob = TestHolder(generate_signer("ES256"), clock=w.clock)
    req = w.request(dcql={"credentials": [
        claims_query("m", MVCT, ["tier_at_least_gold"]),
        claims_query("p", PVCT, ["points_at_least_1000"]),
    ]})
    alice_part = w.present(w.cred(), ["tier_at_least_gold"], req)
    bob_part = sd_jwt.present(w.brand.issue_points(bob, balance=9000),
                              disclose=["points_at_least_1000"], holder=bob.signer,
                              audience=req.audience, nonce=req.nonce, issued_at=w.clock())
    return {"m": [alice_part], "p": [bob_part]}, req


def oversized(w: World) -> tuple[Any, PresentationRequest]:
    return "x" * (sd_jwt.MAX_PRESENTATION_BYTES + 10) + "~", w.request()


def oversized_json(w: World) -> tuple[Any, PresentationRequest]:
    return json.dumps({"m": ["a" * 300_000]}), w.request()


def too_many_disclosures(w: World) -> tuple[Any, PresentationRequest]:
    return "a.b.c" + "~x" * (sd_jwt.MAX_DISCLOSURES + 5) + "~", w.request()


def garbage(w: World) -> tuple[Any, PresentationRequest]:
    return "not~an~sd-jwt", w.request()


def revoked(w: World) -> tuple[Any, PresentationRequest]:
    return _with_status(w, ErrorCode.REVOKED)


def suspended(w: World) -> tuple[Any, PresentationRequest]:
    return _with_status(w, ErrorCode.SUSPENDED)


def status_unreachable(w: World) -> tuple[Any, PresentationRequest]:
    return _with_status(w, ErrorCode.STATUS_UNAVAILABLE)


def _with_status(w: World, code: ErrorCode) -> tuple[Any, PresentationRequest]:
    seen: list[Any] = []

    def check(status: Any, *, issuer: str, now: Any) -> None:
        seen.append((status, issuer))
        raise TesseraError(code, "status list says so")

    w.verifier = Verifier(trust=w.brand.trust_list(), status_check=check,
                          resolver=InMemoryResolver(w.brand.did_document), clock=w.clock)
    status = {"status_list": {"idx": 42, "uri": "https://brand.test/status/1"}}
    cred = w.brand.issue_membership(w.member, status=status)
    req = w.request()
    return w.present(cred, ["tier_at_least_gold"], req), req


def resolver_outage(w: World) -> tuple[Any, PresentationRequest]:
    class DownResolver:
        def resolve(self, did: str) -> Any:
            raise ConnectionError("DID cache backend unreachable")

    w.verifier = Verifier(trust=w.brand.trust_list(), resolver=DownResolver(), clock=w.clock)
    return baseline(w)


def ldp_signed_by_a_foreign_key(w: World) -> tuple[Any, PresentationRequest]:
    # A Data Integrity credential naming the brand as issuer, signed with a
    # did:key the brand does not control (issuer_must_control_key, on by default).
    from tessera.did import did_key
    from tessera.formats import data_integrity as di

    other = generate_signer("EdDSA")
    other_did = did_key(other.public_key)
    other = other.with_key_id(f"{other_did}#{other_did[len('did:key:'):]}")
    member = w.member.signer.with_key_id(f"{w.member.did}#{w.member.did[len('did:key:'):]}")
    claims = credentials.membership_claims(
        program=w.brand.program, membership_number="M-1", tier="gold",
        tiers=[("silver", 1), ("gold", 2)], member_since=w.clock().date(),
        tier_valid_until=w.clock().date())
    vc = di.loyalty_credential(credentials.MEMBERSHIP, claims, issuer=w.brand.did,
                               subject=w.member.did, valid_from=w.clock() - timedelta(days=1))
    signed = di.issue(vc, signer=other, cryptosuite="eddsa-rdfc-2022",
                      verification_method=other.key_id, created=w.clock())
    req = w.request()
    return di.present([signed], signer=member, holder=w.member.did, challenge=req.nonce,
                      domain=req.audience, created=w.clock()), req


def _rebind(w: World, parts: SdJwt, req: PresentationRequest) -> str:
    kb = {"iat": int(w.clock().timestamp()), "aud": req.audience, "nonce": req.nonce,
          "sd_hash": _digest(parts.without_kb)}
    return SdJwt(parts.jwt, parts.disclosures,
                 sign_compact({"typ": "kb+jwt"}, kb, w.member.signer)).serialize()


ATTACKS: dict[str, tuple[Attack, tuple[str, ...]]] = {
    "tampered disclosure": (tampered_disclosure, ("disclosure_mismatch",)),
    "disclosure not in _sd": (disclosure_not_in_sd, ("disclosure_mismatch",)),
    "duplicated disclosure": (duplicated_disclosure, ("disclosure_mismatch",)),
    "digest appearing twice": (digest_twice, ("disclosure_mismatch",)),
    "alg none": (alg_none, ("unsupported_algorithm",)),
    "HS256 with the public key": (hmac_with_public_key, ("unsupported_algorithm",)),
    "alg not allowed by verifier": (disallowed_alg, ("unsupported_algorithm",)),
    "kid outside the issuer DID": (kid_outside_issuer_did, ("key_not_found",)),
    "kid not listed in the DID": (kid_not_listed, ("key_not_found",)),
    "issuer signature by another key": (forged_issuer_signature, ("invalid_signature",)),
    "payload tampered": (tampered_payload, ("invalid_signature",)),
    "issuer DID unresolvable": (unresolvable_issuer, ("did_resolution_failed",)),
    "KB-JWT by another key": (kb_by_another_key, ("key_binding_invalid",)),
    "KB-JWT missing": (kb_missing, ("key_binding_missing",)),
    "disclosure added after KB": (disclosure_added_after_kb, ("key_binding_invalid",)),
    "stale KB iat": (stale_kb, ("key_binding_invalid",)),
    "wrong nonce": (wrong_nonce, ("nonce_mismatch",)),
    "answer to another request": (other_requests_nonce, ("nonce_mismatch",)),
    "wrong audience": (wrong_audience, ("audience_mismatch",)),
    "expired": (expired, ("expired",)),
    "not yet valid": (not_yet_valid, ("not_yet_valid",)),
    "untrusted issuer": (untrusted_issuer, ("untrusted_issuer",)),
    "issuer not allowed for the type": (type_not_allowed, ("credential_type_not_allowed",)),
    "claims outside the schema": (claims_outside_schema, ("schema_invalid",)),
    "wrong typ": (wrong_typ, ("unsupported_format",)),
    "unknown vct": (unknown_vct, ("unsupported_format",)),
    "transaction data not signed": (transaction_not_signed, ("transaction_data_mismatch",)),
    "transaction data swapped": (transaction_swapped, ("transaction_data_mismatch",)),
    "DCQL required claim missing": (dcql_claim_missing, ("disclosure_mismatch",)),
    "DCQL false when true required": (dcql_false_when_true_required,
                                      ("disclosure_mismatch",)),
    "DCQL other credential type": (dcql_wrong_type, ("disclosure_mismatch",)),
    "two holders glued together": (glued_holders, ("key_binding_invalid",)),
    "oversized presentation": (oversized, ("too_large",)),
    "oversized vp_token JSON": (oversized_json, ("too_large",)),
    "too many disclosures": (too_many_disclosures, ("too_large",)),
    "garbage": (garbage, ("malformed",)),
    "revoked": (revoked, ("revoked",)),
    "suspended": (suspended, ("suspended",)),
    "status unavailable": (status_unreachable, ("status_unavailable",)),
    "resolver backend down": (resolver_outage, ("internal_error",)),
    "ldp_vc signed by a key outside the issuer DID": (ldp_signed_by_a_foreign_key,
                                                       ("issuer_key_mismatch",)),
}


def test_baseline_is_accepted(world: World) -> None:
    token, req = baseline(world)
    result = world.verifier.verify(token, request=req)
    assert result.ok and result.errors == ()
    assert result.claims == {"program": world.brand.program, "tier_at_least_gold": True}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_yields_its_code(name: str) -> None:
    attack, codes = ATTACKS[name]
    w = make_world()
    token, req = attack(w)
    result = w.verifier.verify(token, request=req)
    assert isinstance(result, VerificationResult)
    assert result.errors == codes, name
    assert not result.ok and result.claims == {}


def test_every_verification_code_has_an_attack() -> None:
    covered = {code for _, codes in ATTACKS.values() for code in codes}
    # replayed has its own tests below.
    assert {str(c) for c in VERIFICATION_CODES} - covered == {"replayed"}


# -- replay -------------------------------------------------------------------------------


def test_same_presentation_twice_is_replayed(world: World) -> None:
    token, req = baseline(world)
    assert world.verifier.verify(token, request=req).ok
    second = world.verifier.verify(token, request=req)
    assert second.errors == ("replayed",) and second.claims == {}


def test_request_by_nonce_string_is_consumed_once(world: World) -> None:
    token, req = baseline(world)
    first = world.verifier.verify(token, request=req.nonce)
    assert first.ok, first.errors
    assert world.verifier.verify(token, request=req.nonce).errors == ("replayed",)
    assert world.verifier.verify(token, request=req).errors == ("replayed",)


def test_unknown_nonce_is_replayed(world: World) -> None:
    token, _ = baseline(world)
    assert world.verifier.verify(token, request="never-issued").errors == ("replayed",)


def test_expired_request_is_refused(world: World) -> None:
    token, req = baseline(world)
    world.clock.advance(minutes=6)
    assert world.verifier.verify(token, request=req).errors == ("replayed",)


def test_nonce_shared_by_verifier_instances(world: World) -> None:
    # A second instance over the same nonce store finishes the first's request, once.
    from tessera.nonces import MemoryNonceStore

    store = MemoryNonceStore()
    resolver = InMemoryResolver(world.brand.did_document)
    a = Verifier(trust=world.brand.trust_list(), resolver=resolver, nonces=store,
                 clock=world.clock)
    b = Verifier(trust=world.brand.trust_list(), resolver=resolver, nonces=store,
                 clock=world.clock)
    req = a.create_request(audience=AUD)
    token = world.present(world.cred(), ["tier_at_least_gold"], req)
    assert b.verify(token, request=req.nonce).ok
    assert a.verify(token, request=req).errors == ("replayed",)


# -- never an exception ---------------------------------------------------------------------


_FUZZ_WORLD = make_world()
_FUZZ_REQ = _FUZZ_WORLD.request()


def _assert_clean_failure(token: Any) -> None:
    result = _FUZZ_WORLD.verifier.verify(token, request=_FUZZ_REQ)
    assert isinstance(result, VerificationResult)
    assert result.errors and not result.ok
    assert set(result.errors) <= {str(c) for c in VERIFICATION_CODES}


@given(st.text(max_size=300))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_text_never_raises(text: str) -> None:
    _assert_clean_failure(text)


_PIECES = st.one_of(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.",
            max_size=40),
    st.sampled_from(["eyJhbGciOiJub25lIn0", "e30", "W10", "WyJhIiwiYiIsMV0", ""]),
    st.builds(lambda v: b64url_encode(json.dumps(v).encode()),
              st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=4)),
)


@given(st.lists(_PIECES, min_size=1, max_size=8), st.booleans())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_tilde_separated_junk_never_raises(pieces: list[str], trailing: bool) -> None:
    _assert_clean_failure("~".join(pieces) + ("~" if trailing else ""))


@given(st.lists(st.sampled_from(list(parse(_FUZZ_WORLD.cred()).disclosures)) | _PIECES,
                max_size=6), st.sampled_from(["", "junk", "a.b.c", "e30.e30.AA"]))
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_real_jwt_with_junk_disclosures_never_raises(disclosures: list[str], kb: str) -> None:
    jwt = parse(_FUZZ_WORLD.cred()).jwt
    _assert_clean_failure("~".join([jwt, *disclosures]) + "~" + kb)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@given(_JSON)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_vp_token_objects_never_raise(value: Any) -> None:
    for token in (value, {"m": value}, json.dumps(value)):
        if isinstance(token, str | dict):
            result = _FUZZ_WORLD.verifier.verify(token, request=_FUZZ_REQ)
            assert result.errors and not result.ok
