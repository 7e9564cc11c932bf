"""A Credential Issuer written from OpenID4VCI 1.0 alone, to test the wallet against the spec.

It shares no code with ``issuer/``: metadata (§12.2), the pre-authorized and
refresh_token grants (§6, RFC 6749 §6), the Nonce Endpoint (§7) and the Credential
Endpoint (§8) taking ``jwt`` proofs with a ``key_attestation`` header (Appendix F.1)
or the ``attestation`` proof type (Appendix F.3), whose key attestation (Appendix D.1)
must be signed by the member's enrolled did:key and carry the request's ``c_nonce``.
It records every request so tests can check what the wallet sent.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx

from tessera import credentials
from tessera.did import Resolver
from tessera.errors import TesseraError
from tessera.formats import sd_jwt
from tessera.jose import decode_unverified, verify_signature
from tessera.keys import PublicKey
from verifier.testing import TestIssuer

BASE = "https://brand.test"
CONFIG = "membership"


@dataclass
class SpecIssuer:
    member_did: str
    brand: TestIssuer
    batch_size: int = 4
    proof_type: str = "jwt"  # or "attestation"
    rotate_refresh_tokens: bool = True
    tier: str = "gold"
    refresh_tokens: set[str] = field(default_factory=set)
    access_tokens: set[str] = field(default_factory=set)
    nonces: set[str] = field(default_factory=set)
    codes: set[str] = field(default_factory=set)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    attested: list[list[dict[str, Any]]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    tamper: Any = None  # a callable rewriting the list of issued credentials

    def offer(self) -> str:
        code = secrets.token_urlsafe(16)
        self.codes.add(code)
        offer = {"credential_issuer": BASE, "credential_configuration_ids": [CONFIG],
                 "grants": {"urn:ietf:params:oauth:grant-type:pre-authorized_code": {
                     "pre-authorized_code": code}}}
        return "openid-credential-offer://?credential_offer=" + urllib.parse.quote(
            json.dumps(offer))

    def metadata(self) -> dict[str, Any]:
        proofs: dict[str, Any] = {"jwt": {"proof_signing_alg_values_supported": ["ES256"],
                                          "key_attestations_required": {}}}
        if self.proof_type == "attestation":
            proofs = {"attestation": {"proof_signing_alg_values_supported": ["ES256"]}}
        return {
            "credential_issuer": BASE, "credential_endpoint": f"{BASE}/credential",
            "nonce_endpoint": f"{BASE}/nonce",
            "batch_credential_issuance": {"batch_size": self.batch_size},
            "credential_configurations_supported": {CONFIG: {
                "format": "dc+sd-jwt", "vct": credentials.MEMBERSHIP.vct,
                "proof_types_supported": proofs}},
        }

    # -- endpoints -------------------------------------------------------------------------
    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/.well-known/openid-credential-issuer":
            return httpx.Response(200, json=self.metadata())
        if request.method == "GET" and path == "/.well-known/oauth-authorization-server":
            return httpx.Response(200, json={"issuer": BASE, "token_endpoint": f"{BASE}/token"})
        if request.method == "POST" and path == "/token":
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            self.requests.append(("token", form))
            return self._token(form)
        if request.method == "POST" and path == "/nonce":
            nonce = secrets.token_urlsafe(16)
            self.nonces.add(nonce)
            return httpx.Response(200, json={"c_nonce": nonce})
        if request.method == "POST" and path == "/credential":
            body = json.loads(request.content)
            self.requests.append(("credential", body))
            if request.headers.get("authorization", "")[7:] not in self.access_tokens:
                return httpx.Response(401, json={"error": "invalid_token"})
            try:
                return self._credential(body)
            except (TesseraError, KeyError, ValueError, AssertionError) as exc:
                return httpx.Response(400, json={"error": "invalid_proof",
                                                 "error_description": repr(exc)})
        return httpx.Response(404)

    def _token(self, form: dict[str, str]) -> httpx.Response:
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:pre-authorized_code":
            if form.get("pre-authorized_code") not in self.codes:
                return httpx.Response(400, json={"error": "invalid_grant"})
            self.codes.discard(form["pre-authorized_code"])
        elif grant == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return httpx.Response(400, json={"error": "invalid_grant"})
            if self.rotate_refresh_tokens:
                self.refresh_tokens.discard(form["refresh_token"])
        else:
            return httpx.Response(400, json={"error": "unsupported_grant_type"})
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.access_tokens.add(access)
        answer = {"access_token": access, "token_type": "Bearer", "expires_in": 300}
        if grant != "refresh_token" or self.rotate_refresh_tokens:
            self.refresh_tokens.add(refresh)
            answer["refresh_token"] = refresh
        return httpx.Response(200, json=answer)

    def _attestation(self, token: str) -> list[dict[str, Any]]:
        jws = decode_unverified(token)
        assert jws.header["typ"] == "key-attestation+jwt"
        kid = jws.header["kid"]
        assert kid.split("#")[0] == self.member_did, "attestation not by the member's DID"
        verify_signature(jws, Resolver().resolve(self.member_did).key(
            kid, relationship="assertionMethod"), {"ES256", "ES384", "EdDSA"})
        nonce = jws.payload["nonce"]
        assert nonce in self.nonces, "c_nonce unknown or used"
        assert isinstance(jws.payload["iat"], int) and isinstance(jws.payload["exp"], int)
        keys = jws.payload["attested_keys"]
        assert isinstance(keys, list) and keys
        return list(keys)

    def _credential(self, body: dict[str, Any]) -> httpx.Response:
        assert body["credential_configuration_id"] == CONFIG
        proofs = body["proofs"]
        assert len(proofs) == 1
        if "attestation" in proofs:
            (token,) = proofs["attestation"]
            keys = self._attestation(token)
            nonce = decode_unverified(token).payload["nonce"]
        else:
            jwts = proofs["jwt"]
            assert 1 <= len(jwts) <= self.batch_size
            attestations = {decode_unverified(p).header["key_attestation"] for p in jwts}
            assert len(attestations) == 1, "one attestation for the whole request"
            (token,) = attestations
            keys = self._attestation(token)
            nonce = decode_unverified(token).payload["nonce"]
            for proof in jwts:
                jws = decode_unverified(proof)
                assert jws.header["typ"] == "openid4vci-proof+jwt"
                assert jws.header["jwk"] in keys, "proof key not attested"
                verify_signature(jws, PublicKey.from_jwk(jws.header["jwk"]), {"ES256"})
                assert jws.payload["aud"] == BASE and jws.payload["nonce"] == nonce
        self.nonces.discard(nonce)  # one c_nonce per request (§13)
        self.attested.append(keys)
        now = self.brand.clock()
        coarse = now.replace(hour=0, minute=0, second=0, microsecond=0)
        out = []
        for jwk in keys[:self.batch_size]:
            claims = credentials.membership_claims(
                program=self.brand.program, membership_number="M-4711", tier=self.tier,
                tiers=(("silver", 0), ("gold", 1), ("platinum", 2)),
                member_since=date(2020, 5, 1), tier_valid_until=date(2030, 1, 1))
            out.append(sd_jwt.issue_credential(
                credentials.MEMBERSHIP, claims, signer=self.brand.signer, issuer=self.brand.did,
                holder_key=PublicKey.from_jwk(jwk), issued_at=coarse,
                expires_at=coarse + timedelta(days=30)))
        if self.tamper is not None:
            out = self.tamper(out)
        self.issued += out
        return httpx.Response(200, json={"credentials": [{"credential": c} for c in out]})

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))
