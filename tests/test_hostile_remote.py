"""Hostile inputs around remote documents and numbers (issue 9, items 3-6).

Each case is an attacker's path: a number that parses to infinity inside a
signed claim, a server that trickles or floods, a name that rebinds to
loopback, an untrusted issuer whose DID would be fetched. Every case asserts
the refusal code, and where work is bounded, a CPU bound measured with
``time.process_time`` (never wall clock).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import credentials
from tessera.did import HttpFetcher, Resolver, did_key
from tessera.encoding import MAX_JSON_NUMBER, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.formats import sd_jwt
from tessera.formats.sd_jwt import SdJwt, parse
from tessera.jose import decode_unverified
from tessera.keys import generate_signer
from tessera.status import (
    BitstringStatusList,
    StatusList,
    bitstring_status_list_credential,
    sign_status_list_token,
)
from tessera.typing import Signer
from verifier import PresentationRequest, Verifier, default_status_check
from verifier.errors import VERIFICATION_CODES
from verifier.testing import FixedClock, InMemoryResolver, TestHolder, TestIssuer

AUD = "https://shop.example"

# -- numbers (item 6) -------------------------------------------------------------------------

# Literal JSON number texts: the ones that used to parse to inf or to a huge
# int, and every int/float the generators find, written as JSON writes them.
OUT_OF_RANGE = ["1e400", "-1e400", "1E309", "9007199254740992", "1" * 40, "-2e300"]
number_texts = st.sampled_from(OUT_OF_RANGE) | st.integers().map(str) | st.floats(
    allow_nan=False, allow_infinity=False).map(json.dumps)


def _in_range(text: str) -> bool:
    try:
        return abs(float(text)) <= MAX_JSON_NUMBER
    except OverflowError:
        return False


def _sign_raw(header: dict[str, Any], payload_text: str, signer: Signer) -> str:
    """A JWS over exactly ``payload_text`` (json.dumps cannot write ``1e400``)."""
    h = b64url_encode(json.dumps({**header, "alg": signer.alg}).encode())
    p = b64url_encode(payload_text.encode())
    return f"{h}.{p}.{b64url_encode(signer.sign(f'{h}.{p}'.encode()))}"


def _with_number(payload: dict[str, Any], path: tuple[str, ...], text: str) -> str:
    """``payload`` as JSON text with the member at ``path`` set to the literal ``text``."""
    marker = "__tessera_number__"
    edited = json.loads(json.dumps(payload))
    target = edited
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = marker
    return json.dumps(edited).replace(f'"{marker}"', text)


class _World:
    def __init__(self) -> None:
        self.clock = FixedClock()
        self.brand = TestIssuer(clock=self.clock)
        self.member = TestHolder(clock=self.clock)
        self.verifier = Verifier(trust=self.brand.trust_list(),
                                 resolver=InMemoryResolver(self.brand.did_document),
                                 clock=self.clock, status_check=self._no_status)

    @staticmethod
    def _no_status(status: Any, *, issuer: str, now: Any) -> None:
        return None

    def request(self) -> PresentationRequest:
        return self.verifier.create_request(audience=AUD)

    def presentation(self, req: PresentationRequest, *, issuer_claim: tuple[str, ...] = (),
                     kb_claim: tuple[str, ...] = (), text: str = "0") -> str:
        cred = self.brand.issue_membership(self.member)
        parsed = parse(cred)
        jwt = parsed.jwt
        if issuer_claim:
            jws = decode_unverified(jwt)
            header = {k: v for k, v in jws.header.items() if k != "alg"}
            jwt = _sign_raw(header, _with_number(jws.payload, issuer_claim, text),
                            self.brand.signer)
        cred = SdJwt(jwt, parsed.disclosures, None).serialize()
        presented = sd_jwt.present(cred, disclose=["tier_at_least_gold"],
                                   holder=self.member.signer, audience=req.audience,
                                   nonce=req.nonce, issued_at=self.clock())
        if kb_claim:
            head, _, kb = presented.rpartition("~")
            jws = decode_unverified(kb)
            header = {k: v for k, v in jws.header.items() if k != "alg"}
            presented = f"{head}~" + _sign_raw(
                header, _with_number(jws.payload, kb_claim, text), self.member.signer)
        return presented


# A KB-JWT that does not decode is a failed key binding (sd_jwt.verify maps
# every KB-JWT decoding failure to it); a credential JWT is malformed.
REFUSAL = {"issuer": "malformed", "kb": "key_binding_invalid"}
NUMERIC_CLAIMS = [
    ("issuer", ("iat",)), ("issuer", ("exp",)), ("issuer", ("nbf",)),
    ("issuer", ("status", "status_list", "idx")), ("kb", ("iat",)),
]


@pytest.mark.parametrize(("where", "claim"), NUMERIC_CLAIMS)
@pytest.mark.parametrize("text", ["1e400", "-1e400", "9007199254740992"])
def test_out_of_range_numeric_claim_is_malformed(where: str, claim: tuple[str, ...],
                                                 text: str) -> None:
    # Before the fix: iat 1e400 -> int(inf) -> OverflowError -> internal_error
    # from Verifier.verify (and a 500 from the services that wrap it).
    w = _World()
    req = w.request()
    vp = w.presentation(req, text=text, **{f"{where}_claim": claim})
    result = w.verifier.verify(vp, request=req)
    assert result.errors == (REFUSAL[where],)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_CLAIMS), number_texts)
def test_any_number_in_any_numeric_claim_gets_a_code(where_claim: tuple[str, tuple[str, ...]],
                                                     text: str) -> None:
    where, claim = where_claim
    w = _World()
    req = w.request()
    vp = w.presentation(req, text=text, **{f"{where}_claim": claim})
    result = w.verifier.verify(vp, request=req)
    assert set(result.errors) <= VERIFICATION_CODES
    assert "internal_error" not in result.errors
    if not _in_range(text):
        assert result.errors == (REFUSAL[where],)


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
def test_sd_jwt_verify_never_raises_overflow(claim: str) -> None:
    # Documented to raise only TesseraError; 1e400 raised OverflowError.
    w = _World()
    req = w.request()
    vp = w.presentation(req, issuer_claim=(claim,), text="1e400")
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(vp, issuer_key=w.brand.signer.public_key, now=w.clock(), audience=AUD,
                      nonce=req.nonce)
    assert exc.value.code is ErrorCode.MALFORMED


# -- trust before traffic (item 5) -------------------------------------------------------------


class Recorder:
    """A MockTransport web: serves ``pages`` and records every URL asked for."""

    def __init__(self, pages: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.pages = pages or {}
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        page = self.pages.get(str(request.url))
        if page is None:
            return httpx.Response(404)
        return httpx.Response(200, headers={"content-type": page[0]}, content=page[1])

    def fetcher(self) -> HttpFetcher:
        return HttpFetcher(httpx.Client(transport=httpx.MockTransport(self.handler)),
                           is_public_host=lambda host: True)


ROGUE = "did:web:rogue.test"
ROGUE_DOC_URL = "https://rogue.test/.well-known/did.json"
LIST_URL = "https://lists.test/1"


def _rogue() -> TestIssuer:
    return TestIssuer(ROGUE, signer=generate_signer("ES256"))


def _doc(issuer: TestIssuer) -> tuple[str, bytes]:
    return "application/did+json", json.dumps(issuer.did_document).encode()


def test_untrusted_sd_jwt_issuer_causes_no_traffic() -> None:
    # Before: the rogue's did.json was fetched and its signature checked, and
    # only then was the issuer found not to be on the trust list.
    clock = FixedClock()
    brand, rogue, member = TestIssuer(clock=clock), _rogue(), TestHolder(clock=clock)
    rogue.clock = clock
    web = Recorder({ROGUE_DOC_URL: _doc(rogue)})
    v = Verifier(trust=brand.trust_list(), resolver=Resolver(web.fetcher()), clock=clock)
    req = v.create_request(audience=AUD)
    result = v.verify(member.present(rogue.issue_membership(member), ["tier_at_least_gold"],
                                     req), request=req)
    assert result.errors == ("untrusted_issuer",)
    assert web.calls == []


def test_untrusted_data_integrity_issuer_causes_no_traffic() -> None:
    rogue = _rogue()
    holder = generate_signer("EdDSA")
    holder_did = did_key(holder.public_key)
    holder = holder.with_key_id(f"{holder_did}#{holder_did.split(':')[2]}")
    clock = FixedClock()
    claims = credentials.membership_claims(
        program={"id": "rogue-rewards", "name": "Rogue", "brand": ROGUE},
        membership_number="M-1", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=clock().date(), tier_valid_until=clock().date(), name="Alice",
    )
    vc = di.loyalty_credential(credentials.MEMBERSHIP, claims, issuer=ROGUE, subject=holder_did,
                               valid_from=clock() - timedelta(days=1))
    signed = di.issue(vc, signer=rogue.signer, cryptosuite="ecdsa-rdfc-2019",
                      verification_method=rogue.signer.key_id, created=clock())
    web = Recorder({ROGUE_DOC_URL: _doc(rogue)})
    v = Verifier(trust=TestIssuer().trust_list(), resolver=Resolver(web.fetcher()), clock=clock)
    req = v.create_request(audience=AUD)
    vp = di.present([signed], signer=holder, holder=holder_did, challenge=req.nonce,
                    domain=AUD, created=clock())
    assert v.verify(vp, request=req).errors == ("untrusted_issuer",)
    assert web.calls == []


def test_credential_refused_by_trust_fetches_no_status_list() -> None:
    # A trusted brand, but not for this credential type: the status URL (the
    # presenter's choice) is not fetched for a credential already refused.
    clock = FixedClock()
    brand, member = TestIssuer(clock=clock), TestHolder(clock=clock)
    web = Recorder()
    v = Verifier(trust=brand.trust_list("LoyaltyPointsCredential"),
                 resolver=Resolver(web.fetcher(), documents={brand.did: brand.did_document}),
                 clock=clock)
    req = v.create_request(audience=AUD)
    cred = brand.issue_membership(member, status={"status_list": {"idx": 3, "uri": LIST_URL}})
    result = v.verify(member.present(cred, ["tier_at_least_gold"], req), request=req)
    assert result.errors == ("credential_type_not_allowed",)
    assert web.calls == []


def test_status_list_token_of_an_untrusted_signer_resolves_no_did() -> None:
    # The list is fetched (the trusted issuer named it), but a token signed
    # by someone off the trust list never gets that signer's DID fetched.
    clock = FixedClock()
    brand, member, rogue = TestIssuer(clock=clock), TestHolder(clock=clock), _rogue()
    token = sign_status_list_token(StatusList(), rogue.signer, uri=LIST_URL, issued_at=clock(),
                                   expires_at=None, issuer=ROGUE)
    web = Recorder({LIST_URL: ("application/statuslist+jwt", token.encode()),
                    ROGUE_DOC_URL: _doc(rogue)})
    fetcher = web.fetcher()
    resolver = Resolver(fetcher, documents={brand.did: brand.did_document})
    v = Verifier(trust=brand.trust_list(), resolver=resolver, clock=clock,
                 status_check=default_status_check(resolver, fetcher, clock=clock,
                                                   trusted=lambda did: did == brand.did))
    req = v.create_request(audience=AUD)
    cred = brand.issue_membership(member, status={"status_list": {"idx": 3, "uri": LIST_URL}})
    result = v.verify(member.present(cred, ["tier_at_least_gold"], req), request=req)
    assert result.errors == ("status_unavailable",)
    assert web.calls == [LIST_URL]


def test_bitstring_list_signed_by_another_did_resolves_no_did() -> None:
    clock = FixedClock()
    brand, rogue = TestIssuer(clock=clock), _rogue()
    body = bitstring_status_list_credential(
        BitstringStatusList(), credential_id=LIST_URL, issuer=ROGUE, status_purpose="revocation",
        valid_from=clock() - timedelta(days=1))
    signed = di.issue(body, signer=rogue.signer, cryptosuite="ecdsa-rdfc-2019",
                      verification_method=rogue.signer.key_id, created=clock())
    web = Recorder({LIST_URL: ("application/vc+ld+json", json.dumps(signed).encode()),
                    ROGUE_DOC_URL: _doc(rogue)})
    fetcher = web.fetcher()
    check = default_status_check(Resolver(fetcher), fetcher, clock=clock)
    entry = {"type": "BitstringStatusListEntry", "statusPurpose": "revocation",
             "statusListIndex": "3", "statusListCredential": LIST_URL}
    with pytest.raises(TesseraError) as exc:
        check(entry, issuer=brand.did, now=clock())
    assert exc.value.code is ErrorCode.STATUS_UNAVAILABLE
    assert web.calls == [LIST_URL]
