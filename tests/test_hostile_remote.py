"""Hostile inputs around remote documents and numbers (issue 9, items 3-6).

Each case is an attacker's path: a number that parses to infinity inside a
signed claim, a server that trickles or floods, a name that rebinds to
loopback, an untrusted issuer whose DID would be fetched. Every case asserts
the refusal code, and where work is bounded, a CPU bound measured with
``time.process_time`` (never wall clock).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.encoding import MAX_JSON_NUMBER, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.formats.sd_jwt import SdJwt, parse
from tessera.jose import decode_unverified
from tessera.typing import Signer
from verifier import PresentationRequest, Verifier
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
