"""Batch issuance cost per credential (``python -m bench batch_issuance``).

Ten SD-JWT VCs for one member, through the issuer's credential endpoint in
process (FastAPI TestClient, SQLite file), two ways:

* **one batch**: one Credential Request with ten ``jwt`` proofs by fresh keys,
  each carrying the member's key attestation of all ten (OpenID4VCI 1.0
  Appendix D.1, F.1);
* **ten requests**: ten Credential Requests with one proof each by the
  member's DID key (the path before batches), each with its own access token
  and ``c_nonce``.

Each timed call issues ten credentials, so a row's median divided by ten is
the cost of one credential. Access tokens and nonces are fetched in the
untimed setup; what is timed is the credential endpoint: proof and
attestation checks, the nonce, status slots, signing, the rows.
"""

from __future__ import annotations

import atexit
import secrets
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from bench._harness import Case

BATCH = 10
CONFIG = "LoyaltyMembershipCredential_sd_jwt"
ISSUER = "https://issuer.example/brands/bench"


@cache
def _service() -> tuple[Any, dict[str, str], str, Any]:
    """The issuer app, an admin header, a member id and its DID (created once)."""
    from fastapi.testclient import TestClient

    from issuer._admin import create_brand
    from issuer._app import create_app
    from issuer._db import make_engine
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate
    from issuer._settings import Settings
    from issuer.migrations import upgrade
    from tessera.did import did_key
    from tessera.jose import sign_compact
    from tessera.keys import generate_signer
    from tessera.ratelimit import RateLimitConfig

    stack = ExitStack()
    atexit.register(stack.close)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    settings = Settings(database_url=f"sqlite:///{tmp / 'bench.db'}",
                        master_key=secrets.token_bytes(32), public_url="https://issuer.example",
                        # A timed run asks for thousands of c_nonces from one address: the
                        # per-client limits would measure the limiter, not issuance.
                        rate_limits=RateLimitConfig(enabled=False))
    engine = make_engine(settings.database_url)
    upgrade(engine)
    client = stack.enter_context(TestClient(create_app(settings, engine=engine)))
    token = run_write(engine, lambda s: create_brand(
        s, keystore=SqlKeyStore(settings.master_key),
        data=BrandCreate(slug="bench", name="Bench"), did=settings.brand_did("bench"))[1].token)
    admin = {"Authorization": f"Bearer {token}"}
    program = client.post("/admin/v1/programs", headers=admin, json={
        "name": "Miles", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]}).json()
    member_key = generate_signer("ES256")
    did = did_key(member_key.public_key)
    ch = client.post("/admin/v1/enrolment-challenges", headers=admin).json()
    proof = sign_compact({"typ": "tessera-enrolment+jwt",
                          "kid": f"{did}#{did.removeprefix('did:key:')}"},
                         {"iss": did, "aud": ch["audience"], "nonce": ch["nonce"],
                          "iat": int(time.time())}, member_key)
    member = client.post("/admin/v1/members", headers=admin, json={
        "program_id": program["id"], "did": did, "proof": proof}).json()
    return client, admin, member["id"], member_key


def _access_token(client: Any, admin: dict[str, str], member_id: str) -> str:
    offer = client.post(f"/admin/v1/members/{member_id}/offers", headers=admin,
                        json={"credential_configuration_ids": [CONFIG]}).json()
    code = offer["credential_offer"]["grants"][
        "urn:ietf:params:oauth:grant-type:pre-authorized_code"]["pre-authorized_code"]
    r = client.post(f"{ISSUER}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:pre-authorized_code",
        "pre-authorized_code": code})
    return str(r.json()["access_token"])


def _nonce(client: Any) -> str:
    return str(client.post(f"{ISSUER}/nonce").json()["c_nonce"])


def _batch_request(client: Any, admin: dict[str, str], member_id: str, member_key: Any
                   ) -> tuple[str, dict[str, Any]]:
    from tessera.did import did_key
    from tessera.jose import sign_compact
    from tessera.keys import generate_signer

    keys = [generate_signer("ES256") for _ in range(BATCH)]
    nonce = _nonce(client)
    iat = int(datetime.now(UTC).timestamp())
    did = did_key(member_key.public_key)
    attestation = sign_compact({"typ": "key-attestation+jwt",
                                "kid": f"{did}#{did.removeprefix('did:key:')}"}, {
        "iat": iat, "exp": iat + 300, "nonce": nonce,
        "attested_keys": [k.public_key.to_jwk() for k in keys]}, member_key)
    proofs = [sign_compact({"typ": "openid4vci-proof+jwt", "jwk": k.public_key.to_jwk(),
                            "key_attestation": attestation},
                           {"aud": ISSUER, "iat": iat, "nonce": nonce}, k) for k in keys]
    return _access_token(client, admin, member_id), {
        "credential_configuration_id": CONFIG, "proofs": {"jwt": proofs}}


def _single_request(client: Any, admin: dict[str, str], member_id: str, member_key: Any
                    ) -> tuple[str, dict[str, Any]]:
    from tessera.did import did_key
    from tessera.jose import sign_compact

    did = did_key(member_key.public_key)
    proof = sign_compact({"typ": "openid4vci-proof+jwt",
                          "kid": f"{did}#{did.removeprefix('did:key:')}"},
                         {"aud": ISSUER, "iat": int(datetime.now(UTC).timestamp()),
                          "nonce": _nonce(client)}, member_key)
    return _access_token(client, admin, member_id), {
        "credential_configuration_id": CONFIG, "proofs": {"jwt": [proof]}}


def _post(client: Any, request: tuple[str, dict[str, Any]]) -> list[str]:
    token, body = request
    r = client.post(f"{ISSUER}/credential", json=body,
                    headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 200:
        raise AssertionError(r.text)
    return [c["credential"] for c in r.json()["credentials"]]


def _ten(results: list[str]) -> None:
    if len(results) != BATCH or len(set(results)) != BATCH:
        raise AssertionError("expected ten distinct credentials")


def cases() -> list[Case]:
    def batch_setup(n: int) -> list[Any]:
        client, admin, member_id, key = _service()
        return [(client, _batch_request(client, admin, member_id, key)) for _ in range(n)]

    def single_setup(n: int) -> list[Any]:
        client, admin, member_id, key = _service()
        return [(client, [_single_request(client, admin, member_id, key)
                          for _ in range(BATCH)]) for _ in range(n)]

    def batch(state: list[Any]) -> list[str]:
        client, request = state.pop()
        return _post(client, request)

    def singles(state: list[Any]) -> list[str]:
        client, requests = state.pop()
        return [c for request in requests for c in _post(client, request)]

    return [
        Case(f"{BATCH} credentials, one batch request", batch_setup, batch, group="batch",
             label="attested fresh keys; /10 = per credential", check=_ten),
        Case(f"{BATCH} credentials, {BATCH} requests", single_setup, singles, group="batch",
             label="DID-key proof each; /10 = per credential", check=_ten),
    ]
