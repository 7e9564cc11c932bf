"""An OpenID4VCI 1.0 wallet written from the spec alone, for tests.

It uses jwcrypto and an httpx client and nothing from ``issuer/`` or
``holder/``: offer URI (§4.1), issuer metadata at the well-known URL with the
suffix inserted before the path (§12.2.2), AS metadata (RFC 8414 §3.1),
token request with the pre-authorized code (§6.1), nonce (§7), credential
request with a ``jwt`` key proof (§8.2, Appendix F.1); batch issuance with
fresh keys vouched for by a key attestation (Appendix D.1) in each proof's
``key_attestation`` header or as the ``attestation`` proof type (Appendix
F.3); the refresh token grant (RFC 6749 §6); an SD-JWT presentation with a
KB-JWT (RFC 9901 §4.3) at an explicit time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from jwcrypto import jwk, jws
from jwcrypto.common import json_encode

PRE_AUTH = "urn:ietf:params:oauth:grant-type:pre-authorized_code"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def sign_jwt(key: jwk.JWK, header: dict[str, Any], payload: dict[str, Any]) -> str:
    alg = "EdDSA" if key.get("kty") == "OKP" else "ES256"
    token = jws.JWS(json_encode(payload))
    token.add_signature(key, alg=None, protected=json_encode({"alg": alg, **header}))
    return str(token.serialize(compact=True))


def fresh_keys(n: int) -> list[jwk.JWK]:
    return [jwk.JWK.generate(kty="EC", crv="P-256") for _ in range(n)]


def public_jwk(key: jwk.JWK) -> dict[str, Any]:
    return dict(json.loads(key.export_public()))


def present(credential: str, *, disclose: set[str], key: jwk.JWK, aud: str, nonce: str,
            now: datetime) -> str:
    """An SD-JWT presentation of the named top-level claims, with a KB-JWT (RFC 9901 §4.3)."""
    jwt, *disclosures = credential.rstrip("~").split("~")
    kept = [d for d in disclosures if b64url_json(d)[1] in disclose]
    body = "~".join([jwt, *kept]) + "~"
    sd_hash = b64url(hashlib.sha256(body.encode("ascii")).digest())
    kb = sign_jwt(key, {"typ": "kb+jwt"}, {"iat": int(now.timestamp()), "aud": aud,
                                            "nonce": nonce, "sd_hash": sd_hash})
    return body + kb


def well_known(identifier: str, suffix: str) -> str:
    parts = urllib.parse.urlsplit(identifier)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/{suffix}{path}"


@dataclass
class Session:
    offer: dict[str, Any]
    issuer: dict[str, Any]
    access_token: str | None = None
    refresh_token: str | None = None


class SpecWallet:
    def __init__(self, http: httpx.Client, key: jwk.JWK, *, kid: str | None = None) -> None:
        self.http = http
        self.key = key
        self.kid = kid  # a DID URL: use ``kid`` in the proof header instead of ``jwk``

    def parse_offer(self, uri: str) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(uri)
        assert parts.scheme == "openid-credential-offer"
        query = dict(urllib.parse.parse_qsl(parts.query))
        if "credential_offer" in query:
            return dict(json.loads(query["credential_offer"]))
        r = self.http.get(query["credential_offer_uri"])
        r.raise_for_status()
        return dict(r.json())

    def start(self, uri: str) -> Session:
        offer = self.parse_offer(uri)
        r = self.http.get(well_known(offer["credential_issuer"], "openid-credential-issuer"))
        r.raise_for_status()
        metadata = r.json()
        assert metadata["credential_issuer"] == offer["credential_issuer"]
        return Session(offer, metadata)

    def token(self, session: Session, *, tx_code: str | None = None,
              code: str | None = None) -> httpx.Response:
        servers = session.issuer.get("authorization_servers") or [
            session.issuer["credential_issuer"]]
        r = self.http.get(well_known(servers[0], "oauth-authorization-server"))
        r.raise_for_status()
        grant = session.offer["grants"][PRE_AUTH]
        form = {"grant_type": PRE_AUTH,
                "pre-authorized_code": code or grant["pre-authorized_code"]}
        if tx_code is not None:
            form["tx_code"] = tx_code
        response = self.http.post(r.json()["token_endpoint"], data=form)
        if response.status_code == 200:
            session.access_token = response.json()["access_token"]
            session.refresh_token = response.json().get("refresh_token")
        return response

    def refresh(self, session: Session, *, refresh_token: str | None = None,
                **extra: str) -> httpx.Response:
        """RFC 6749 §6: a new access token (and, rotated, a new refresh token)."""
        servers = session.issuer.get("authorization_servers") or [
            session.issuer["credential_issuer"]]
        r = self.http.get(well_known(servers[0], "oauth-authorization-server"))
        r.raise_for_status()
        assert "refresh_token" in r.json()["grant_types_supported"]
        form = {"grant_type": "refresh_token",
                "refresh_token": refresh_token or session.refresh_token or "", **extra}
        response = self.http.post(r.json()["token_endpoint"], data=form)
        if response.status_code == 200:
            session.access_token = response.json()["access_token"]
            session.refresh_token = response.json().get("refresh_token")
        return response

    def nonce(self, session: Session) -> str:
        r = self.http.post(session.issuer["nonce_endpoint"])
        r.raise_for_status()
        return str(r.json()["c_nonce"])

    def attestation(self, *, keys: list[jwk.JWK], nonce: str, now: datetime,
                    signer: jwk.JWK | None = None, kid: str | None = None,
                    ttl: int = 300, extra: dict[str, Any] | None = None,
                    typ: str = "key-attestation+jwt") -> str:
        """A key attestation (Appendix D.1) of ``keys``, signed by the member's DID key."""
        kid = kid or self.kid
        assert kid, "the attestation names the member's DID key by its DID URL"
        payload: dict[str, Any] = {"iat": int(now.timestamp()),
                                   "exp": int(now.timestamp()) + ttl,
                                   "attested_keys": [public_jwk(k) for k in keys],
                                   "nonce": nonce, **(extra or {})}
        return sign_jwt(signer or self.key, {"typ": typ, "kid": kid}, payload)

    def proof(self, session: Session, *, nonce: str, now: datetime,
              key: jwk.JWK | None = None, aud: str | None = None,
              typ: str = "openid4vci-proof+jwt", kid: str | None = None,
              extra: dict[str, Any] | None = None, key_attestation: str | None = None,
              use_jwk: bool = False) -> str:
        key = key or self.key
        header: dict[str, Any] = {"typ": typ, "alg": "ES256"}
        kid = kid or (None if use_jwk or key_attestation else self.kid)
        if kid:
            header["kid"] = kid
        else:
            header["jwk"] = json.loads(key.export_public())
        if key_attestation is not None:
            header["key_attestation"] = key_attestation
        payload = {"aud": aud or session.issuer["credential_issuer"],
                   "iat": int(now.timestamp()), "nonce": nonce, **(extra or {})}
        token = jws.JWS(json_encode(payload))
        token.add_signature(key, alg=None, protected=json_encode(header))
        return str(token.serialize(compact=True))

    def credential(self, session: Session, configuration_id: str, proof: str | None = None,
                   *, access_token: str | None = None,
                   proofs: dict[str, list[str]] | None = None) -> httpx.Response:
        return self.http.post(
            session.issuer["credential_endpoint"],
            json={"credential_configuration_id": configuration_id,
                  "proofs": proofs if proofs is not None else {"jwt": [proof]}},
            headers={"Authorization": f"Bearer {access_token or session.access_token}"})

    def batch_size(self, session: Session, configuration_id: str) -> int:
        """How many credentials one request may ask for (§12.2.4 ``batch_credential_issuance``):
        the issuer-wide limit, or 1 without it."""
        return int(session.issuer.get("batch_credential_issuance", {}).get("batch_size", 1))

    def request_batch(self, session: Session, configuration_id: str, keys: list[jwk.JWK], *,
                      now: datetime, mode: str = "header") -> httpx.Response:
        """One Credential Request binding every key in ``keys``: one c_nonce, one attestation
        of all of them; ``mode`` "header" sends one jwt proof per key with the attestation
        in its ``key_attestation`` header, "attestation" the ``attestation`` proof type."""
        nonce = self.nonce(session)
        attestation = self.attestation(keys=keys, nonce=nonce, now=now)
        if mode == "attestation":
            return self.credential(session, configuration_id,
                                   proofs={"attestation": [attestation]})
        proofs = [self.proof(session, nonce=nonce, now=now, key=k, key_attestation=attestation)
                  for k in keys]
        return self.credential(session, configuration_id, proofs={"jwt": proofs})

    def receive(self, uri: str, *, now: datetime, tx_code: str | None = None
                ) -> dict[str, Any]:
        """The whole pre-authorized flow: every offered configuration, one credential each."""
        session = self.start(uri)
        r = self.token(session, tx_code=tx_code)
        assert r.status_code == 200, r.text
        got: dict[str, Any] = {}
        for config_id in session.offer["credential_configuration_ids"]:
            assert config_id in session.issuer["credential_configurations_supported"]
            proof = self.proof(session, nonce=self.nonce(session), now=now)
            r = self.credential(session, config_id, proof)
            assert r.status_code == 200, r.text
            got[config_id] = r.json()["credentials"][0]["credential"]
        return got
