"""An OpenID4VCI 1.0 wallet written from the spec alone, for tests.

It uses jwcrypto and an httpx client and nothing from ``issuer/`` or
``holder/``: offer URI (§4.1), issuer metadata at the well-known URL with the
suffix inserted before the path (§12.2.2), AS metadata (RFC 8414 §3.1),
token request with the pre-authorized code (§6.1), nonce (§7), credential
request with a ``jwt`` key proof (§8.2, Appendix F.1).
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from jwcrypto import jwk, jws
from jwcrypto.common import json_encode

PRE_AUTH = "urn:ietf:params:oauth:grant-type:pre-authorized_code"


def well_known(identifier: str, suffix: str) -> str:
    parts = urllib.parse.urlsplit(identifier)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/{suffix}{path}"


@dataclass
class Session:
    offer: dict[str, Any]
    issuer: dict[str, Any]
    access_token: str | None = None


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
        return response

    def nonce(self, session: Session) -> str:
        r = self.http.post(session.issuer["nonce_endpoint"])
        r.raise_for_status()
        return str(r.json()["c_nonce"])

    def proof(self, session: Session, *, nonce: str, now: datetime,
              key: jwk.JWK | None = None, aud: str | None = None,
              typ: str = "openid4vci-proof+jwt", kid: str | None = None,
              extra: dict[str, Any] | None = None) -> str:
        key = key or self.key
        header: dict[str, Any] = {"typ": typ, "alg": "ES256"}
        kid = kid or self.kid
        if kid:
            header["kid"] = kid
        else:
            header["jwk"] = json.loads(key.export_public())
        payload = {"aud": aud or session.issuer["credential_issuer"],
                   "iat": int(now.timestamp()), "nonce": nonce, **(extra or {})}
        token = jws.JWS(json_encode(payload))
        token.add_signature(key, alg=None, protected=json_encode(header))
        return str(token.serialize(compact=True))

    def credential(self, session: Session, configuration_id: str, proof: str,
                   *, access_token: str | None = None) -> httpx.Response:
        return self.http.post(
            session.issuer["credential_endpoint"],
            json={"credential_configuration_id": configuration_id, "proofs": {"jwt": [proof]}},
            headers={"Authorization": f"Bearer {access_token or session.access_token}"})

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
