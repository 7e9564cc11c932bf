"""OpenID4VCI 1.0 through the HTTP API, driven by a wallet written from the spec alone.

Runs on SQLite and, with TESSERA_TEST_POSTGRES_URL, on PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from datetime import timedelta
from typing import Any

import pytest
from jwcrypto import jwk
from sd_jwt.holder import SDJWTHolder
from sd_jwt.verifier import SDJWTVerifier

from tessera.did import did_key
from tessera.formats import data_integrity
from tessera.keys import PublicKey, signer_from_jwk
from tests.issuer.conftest import Service
from tests.issuer.oid4vci_wallet import SpecWallet, well_known

SD = ("LoyaltyMembershipCredential_sd_jwt", "LoyaltyPointsCredential_sd_jwt")
LDP = ("LoyaltyMembershipCredential_ldp_vc", "LoyaltyPointsCredential_ldp_vc")


def _member(service: Service, slug: str = "acme") -> tuple[dict[str, Any], jwk.JWK, str]:
    """An enrolled member whose DID key is a jwcrypto P-256 key (the sd-jwt package's alg)."""
    if slug not in service.tokens:
        service.brand(slug)
    program = service.program(slug, name=f"Miles {secrets.token_hex(4)}")
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    signer = signer_from_jwk(json.loads(key.export_private()))
    member = service.enrol(slug, program["id"], signer)
    r = service.post(slug, f"/admin/v1/members/{member['id']}/points/earn", {"points": 1250})
    assert r.status_code == 201, r.text
    return member, key, did_key(signer.public_key)


def _offer(service: Service, member_id: str, ids: tuple[str, ...] = SD, *,
           slug: str = "acme", **extra: Any) -> dict[str, Any]:
    r = service.client.post(f"/admin/v1/members/{member_id}/offers", headers=service.h(slug),
                            json={"credential_configuration_ids": list(ids), **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _oauth_error(r: Any, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    # RFC 6749 §5.2, OpenID4VCI 1.0 §8.3.1.2: OAuth errors are application/json.
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == error and body["code"] and body["error_description"]
    assert r.headers["cache-control"] == "no-store"


def _issuer_jwk(service: Service, iss: str, header: dict[str, Any]) -> jwk.JWK:
    slug = iss.rsplit(":", 1)[1]
    doc = service.client.get(f"/brands/{slug}/did.json").json()
    method = next(m for m in doc["verificationMethod"] if m["id"] == header["kid"])
    assert header["kid"] in doc["assertionMethod"]
    return jwk.JWK(**method["publicKeyJwk"])


def test_metadata_at_the_well_known_urls(service: Service) -> None:
    service.brand("acme")
    c = service.client
    issuer = "https://issuer.example/brands/acme"
    r = c.get(well_known(issuer, "openid-credential-issuer"))
    assert r.status_code == 200 and r.json() == c.get(
        f"{issuer}/.well-known/openid-credential-issuer").json()
    meta = r.json()
    assert meta["credential_issuer"] == issuer
    assert meta["credential_endpoint"] == f"{issuer}/credential"
    assert meta["nonce_endpoint"] == f"{issuer}/nonce"
    configs = meta["credential_configurations_supported"]
    assert set(configs) == set(SD) | set(LDP)
    for cid in SD:
        assert configs[cid]["format"] == "dc+sd-jwt"
        assert configs[cid]["vct"].startswith("https://w3id.org/tessera/vct/")
        assert configs[cid]["cryptographic_binding_methods_supported"] == ["jwk", "did:key"]
        assert configs[cid]["credential_signing_alg_values_supported"] == ["EdDSA"]
    for cid in LDP:
        assert configs[cid]["format"] == "ldp_vc"
        assert configs[cid]["credential_definition"]["type"][0] == "VerifiableCredential"
        assert configs[cid]["credential_signing_alg_values_supported"] == ["eddsa-rdfc-2022"]
    for config in configs.values():
        algs = config["proof_types_supported"]["jwt"]["proof_signing_alg_values_supported"]
        assert set(algs) == {"ES256", "EdDSA"}
    # Batch issuance (§12.2.4): the issuer-wide limit, and each configuration's own.
    assert meta["batch_credential_issuance"] == {"batch_size": 10}
    for cid in SD:
        assert configs[cid]["batch_credential_issuance"] == {"batch_size": 10}
        # Fresh holder keys need the member's key attestation (Appendix D).
        for proof_type in ("jwt", "attestation"):
            assert configs[cid]["proof_types_supported"][proof_type][
                "key_attestations_required"] == {}
    for cid in LDP:
        assert configs[cid]["batch_credential_issuance"] == {"batch_size": 1}
        assert set(configs[cid]["proof_types_supported"]) == {"jwt"}
        assert "key_attestations_required" not in configs[cid]["proof_types_supported"]["jwt"]
    as_meta = c.get(well_known(issuer, "oauth-authorization-server")).json()
    assert as_meta["issuer"] == issuer and as_meta["token_endpoint"] == f"{issuer}/token"
    assert as_meta["grant_types_supported"] == [
        "urn:ietf:params:oauth:grant-type:pre-authorized_code", "refresh_token"]
    assert c.get(well_known("https://issuer.example/brands/nobody",
                            "openid-credential-issuer")).status_code == 404


def test_spec_wallet_gets_both_types_in_both_formats(service: Service) -> None:
    member, key, did = _member(service)
    offer = _offer(service, member["id"], SD + LDP)
    assert offer["offer_uri"].startswith("openid-credential-offer://?credential_offer=")
    assert offer["tx_code"] is None
    wallet = SpecWallet(service.client, key)
    got = wallet.receive(offer["offer_uri"], now=service.clock.now)
    assert set(got) == set(SD) | set(LDP)

    # The sd-jwt reference package verifies what the wallet got, with key binding.
    for cid in SD:
        holder = SDJWTHolder(got[cid])
        holder.create_presentation({}, nonce="n-0S6_WzA2Mj", aud="https://partner.example",
                                   holder_key=key, sign_alg="ES256")
        verifier = SDJWTVerifier(holder.sd_jwt_presentation,
                                 lambda iss, header: _issuer_jwk(service, iss, header),
                                 expected_aud="https://partner.example",
                                 expected_nonce="n-0S6_WzA2Mj")
        payload = verifier.get_verified_payload()
        assert payload["iss"] == "did:web:issuer.example:brands:acme"
        assert payload["cnf"]["jwk"]["x"] == json.loads(key.export_public())["x"]
        assert payload["status"]["status_list"]["uri"].startswith(
            "https://issuer.example/brands/acme/status/")
        full = SDJWTHolder(got[cid])
        wanted = ({"points_balance": True, "points_at_least_1000": True}
                  if cid.startswith("LoyaltyPoints") else
                  {"tier": True, "membership_number": True})
        full.create_presentation(wanted, nonce="n2-0S6_WzA2Mj", aud="https://p.example",
                                 holder_key=key, sign_alg="ES256")
        claims = SDJWTVerifier(full.sd_jwt_presentation,
                               lambda iss, header: _issuer_jwk(service, iss, header),
                               expected_aud="https://p.example",
                               expected_nonce="n2-0S6_WzA2Mj").get_verified_payload()
        if cid.startswith("LoyaltyPoints"):
            assert claims["points_balance"] == 1250 and claims["points_at_least_1000"] is True
        else:
            assert claims["tier"] == {"name": "silver", "rank": 1}
            assert claims["membership_number"] == member["membership_number"]

    # The Data Integrity credentials verify and name the member's DID as subject.
    doc = service.client.get("/brands/acme/did.json").json()

    def lookup(vm: str, relationship: str) -> PublicKey:
        assert vm in doc[relationship]
        return PublicKey.from_jwk(next(m["publicKeyJwk"] for m in doc["verificationMethod"]
                                       if m["id"] == vm))

    for cid in LDP:
        vc = data_integrity.verify_credential(got[cid], key_lookup=lookup, now=service.clock.now)
        assert vc["credentialSubject"]["id"] == did
        assert vc["proof"]["cryptosuite"] == "eddsa-rdfc-2022" if "proof" in vc else True
        purposes = [e["statusPurpose"] for e in vc["credentialStatus"]]
        assert purposes == ["revocation", "suspension"]

    listed = service.client.get(f"/admin/v1/members/{member['id']}/credentials",
                                headers=service.h("acme")).json()
    assert sorted((c["credential_type"], c["format"], c["status"]) for c in listed) == sorted(
        [(n.rsplit("_", 2)[0], "dc+sd-jwt", "valid") for n in SD]
        + [(n.rsplit("_", 2)[0], "ldp_vc", "valid") for n in LDP])


def test_offer_by_reference_and_qr(service: Service) -> None:
    member, key, _ = _member(service)
    offer = _offer(service, member["id"], SD[:1])
    ref = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(
        offer["offer_uri_by_reference"]).query))["credential_offer_uri"]
    assert ref == offer["credential_offer_uri"]
    fetched = service.client.get(ref)
    assert fetched.status_code == 200 and fetched.headers["cache-control"] == "no-store"
    assert fetched.json() == offer["credential_offer"]
    png = service.client.get(offer["qr_png_uri"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    got = SpecWallet(service.client, key).receive(offer["offer_uri_by_reference"],
                                                  now=service.clock.now)
    assert set(got) == {SD[0]}
    # Redeemed: the reference no longer serves the code.
    assert service.client.get(ref).status_code == 404
    assert service.client.get(ref[:-4] + "AAAA").status_code == 404


def test_replayed_pre_authorized_code_refused(service: Service) -> None:
    member, key, _ = _member(service)
    offer = _offer(service, member["id"])
    wallet = SpecWallet(service.client, key)
    session = wallet.start(offer["offer_uri"])
    assert wallet.token(session).status_code == 200
    _oauth_error(wallet.token(session), 400, "invalid_grant")
    _oauth_error(wallet.token(session, code="not-a-code"), 400, "invalid_grant")
    r = service.client.post("https://issuer.example/brands/acme/token",
                            data={"grant_type": "authorization_code", "code": "x"})
    _oauth_error(r, 400, "unsupported_grant_type")
    r = service.client.post("https://issuer.example/brands/acme/token",
                            content=b"grant_type=a&grant_type=b",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    _oauth_error(r, 400, "invalid_request")


def test_tx_code_checked_and_guessing_burns_the_offer(service: Service) -> None:
    member, key, _ = _member(service)
    offer = _offer(service, member["id"], tx_code={"length": 6, "description": "sent by SMS"})
    code = offer["tx_code"]
    assert code is not None and len(code) == 6 and code.isdigit()
    grant = offer["credential_offer"]["grants"][
        "urn:ietf:params:oauth:grant-type:pre-authorized_code"]
    assert grant["tx_code"] == {"input_mode": "numeric", "length": 6,
                                "description": "sent by SMS"}
    wallet = SpecWallet(service.client, key)
    session = wallet.start(offer["offer_uri"])
    wrong = "000000" if code != "000000" else "111111"
    _oauth_error(wallet.token(session, tx_code=wrong), 400, "invalid_grant")
    _oauth_error(wallet.token(session), 400, "invalid_request")  # tx_code missing
    assert wallet.token(session, tx_code=code).status_code == 200

    offer2 = _offer(service, member["id"], tx_code={"length": 4})
    session2 = wallet.start(offer2["offer_uri"])
    bad = "0000" if offer2["tx_code"] != "0000" else "1111"
    for _ in range(5):
        _oauth_error(wallet.token(session2, tx_code=bad), 400, "invalid_grant")
    # Five wrong guesses burnt it: even the right code is refused now.
    _oauth_error(wallet.token(session2, tx_code=offer2["tx_code"]), 400, "invalid_grant")


def test_stale_or_reused_c_nonce_refused(service: Service) -> None:
    member, key, _ = _member(service)
    offer = _offer(service, member["id"])
    wallet = SpecWallet(service.client, key)
    session = wallet.start(offer["offer_uri"])
    stale = wallet.nonce(session)
    service.clock.advance(seconds=301)
    assert wallet.token(session).status_code == 200
    now = service.clock.now
    _oauth_error(wallet.credential(session, SD[0], wallet.proof(session, nonce=stale, now=now)),
                 400, "invalid_nonce")
    _oauth_error(wallet.credential(session, SD[0], wallet.proof(
        session, nonce="never-issued-nonce-value", now=now)), 400, "invalid_nonce")
    fresh = wallet.nonce(session)
    assert wallet.credential(session, SD[0], wallet.proof(
        session, nonce=fresh, now=now)).status_code == 200
    _oauth_error(wallet.credential(session, SD[1], wallet.proof(session, nonce=fresh, now=now)),
                 400, "invalid_nonce")
    # A second credential of a configuration already issued under the offer is refused.
    _oauth_error(wallet.credential(session, SD[0], wallet.proof(
        session, nonce=wallet.nonce(session), now=now)), 400, "credential_request_denied")


def test_c_nonce_is_consumed_in_the_credential_write(service: Service) -> None:
    """The default store is a table of the service database: the credential request
    consumes its c_nonce in its write transaction (issuer._routes_oid4vci), not in one of
    its own: two commits per request (the access token's read scope, the write)."""
    from sqlalchemy import event

    member, key, _ = _member(service)
    wallet = SpecWallet(service.client, key)
    session = wallet.start(_offer(service, member["id"])["offer_uri"])
    assert wallet.token(session).status_code == 200
    proof = wallet.proof(session, nonce=wallet.nonce(session), now=service.clock.now)
    commits: list[object] = []

    def committed(connection: object) -> None:
        commits.append(connection)

    event.listen(service.engine, "commit", committed)
    try:
        assert wallet.credential(session, SD[0], proof).status_code == 200
    finally:
        event.remove(service.engine, "commit", committed)
    assert len(commits) == 2
    # Consumed all the same: the proof cannot be sent again.
    _oauth_error(wallet.credential(session, SD[1], proof), 400, "invalid_nonce")


def test_c_nonce_is_used_up_when_the_write_refuses_the_request(service: Service) -> None:
    """A request whose proofs checked out uses its nonce up even when the write then
    refuses it (here: the configuration was already issued under the offer) and rolls the
    consumption back with it: a retry of the same request is an invalid_nonce."""
    member, key, _ = _member(service)
    wallet = SpecWallet(service.client, key)
    session = wallet.start(_offer(service, member["id"])["offer_uri"])
    assert wallet.token(session).status_code == 200
    now = service.clock.now
    assert wallet.credential(session, SD[0], wallet.proof(
        session, nonce=wallet.nonce(session), now=now)).status_code == 200
    again = wallet.proof(session, nonce=wallet.nonce(session), now=now)
    _oauth_error(wallet.credential(session, SD[0], again), 400, "credential_request_denied")
    _oauth_error(wallet.credential(session, SD[0], again), 400, "invalid_nonce")


def test_key_proof_must_be_by_the_members_key(service: Service) -> None:
    member, key, did = _member(service)
    _, other_key, other_did = _member(service, "rival")
    offer = _offer(service, member["id"])
    wallet = SpecWallet(service.client, key)
    session = wallet.start(offer["offer_uri"])
    assert wallet.token(session).status_code == 200
    now = service.clock.now

    def attempt(**kwargs: Any) -> Any:
        proof = wallet.proof(session, nonce=wallet.nonce(session), now=now, **kwargs)
        return wallet.credential(session, SD[0], proof)

    # Someone else's key, as jwk and as a did:key kid; a kid of another DID.
    _oauth_error(attempt(key=other_key), 400, "invalid_proof")
    other_kid = f"{other_did}#{other_did.removeprefix('did:key:')}"
    _oauth_error(attempt(key=other_key, kid=other_kid), 400, "invalid_proof")
    # The member's key id, signed by another key: the signature fails.
    own_kid = f"{did}#{did.removeprefix('did:key:')}"
    _oauth_error(attempt(key=other_key, kid=own_kid), 400, "invalid_proof")
    _oauth_error(attempt(aud="https://issuer.example/brands/rival"), 400, "invalid_proof")
    _oauth_error(attempt(typ="JWT"), 400, "invalid_proof")
    _oauth_error(attempt(extra={"iss": "some-client"}), 400, "invalid_proof")
    _oauth_error(attempt(extra={"iat": int((now - timedelta(minutes=10)).timestamp())}), 400,
                 "invalid_proof")
    # The member's own key, by kid (did:key), works.
    r = attempt(kid=own_kid)
    assert r.status_code == 200, r.text


def test_expired_offer_and_bad_tokens_refused(service: Service) -> None:
    member, key, _ = _member(service)
    offer = _offer(service, member["id"], ttl_seconds=60)
    wallet = SpecWallet(service.client, key)
    session = wallet.start(offer["offer_uri"])
    service.clock.advance(seconds=61)
    _oauth_error(wallet.token(session), 400, "invalid_grant")
    assert service.client.get(offer["credential_offer_uri"]).status_code == 404

    offer = _offer(service, member["id"], SD[:1])
    session = wallet.start(offer["offer_uri"])
    assert wallet.token(session).status_code == 200
    now = service.clock.now
    proof = wallet.proof(session, nonce=wallet.nonce(session), now=now)
    r = wallet.credential(session, SD[0], proof, access_token="forged-token")
    _oauth_error(r, 401, "invalid_token")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    _oauth_error(wallet.credential(session, SD[1], proof), 403, "insufficient_scope")
    _oauth_error(wallet.credential(session, "NoSuchCredential", proof), 400,
                 "unknown_credential_configuration")
    r = service.client.post(session.issuer["credential_endpoint"],
                            content=b'{"credential_configuration_id":"a","credential_configuration_id":"b"}',
                            headers={"Authorization": f"Bearer {session.access_token}",
                                     "Content-Type": "application/json"})
    _oauth_error(r, 400, "invalid_credential_request")
    service.clock.advance(seconds=301)  # the access token is short-lived
    proof = wallet.proof(session, nonce=wallet.nonce(session), now=service.clock.now)
    _oauth_error(wallet.credential(session, SD[0], proof), 401, "invalid_token")


def test_oauth_errors_before_routing_are_application_json(service: Service) -> None:
    service.brand("acme")
    base = "https://issuer.example/brands/acme"
    # Refused by the strict-body middleware, before any route ran.
    r = service.client.post(f"{base}/credential", content=b'{"a": 1, "a": 2}',
                            headers={"Content-Type": "application/json"})
    _oauth_error(r, 400, "invalid_credential_request")
    _oauth_error(service.client.post(f"{base}/nonce", content=b'{"a": NaN}',
                                     headers={"Content-Type": "application/json"}),
                 400, "invalid_credential_request")
    # Anything else stays RFC 9457.
    r = service.client.get("/admin/v1/brand")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("endpoint", ["token", "nonce", "credential"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "TRACE"])
def test_wrong_method_on_oauth_endpoints_is_405_with_allow(service: Service, endpoint: str,
                                                           method: str) -> None:
    service.brand("acme")
    r = service.client.request(method, f"https://issuer.example/brands/acme/{endpoint}")
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST"
    assert r.json()["status"] == 405 and "error" not in r.json()


def test_offers_are_scoped_to_the_brand(service: Service) -> None:
    member, _key, _ = _member(service)
    service.brand("rival")
    r = service.client.post(f"/admin/v1/members/{member['id']}/offers", headers=service.h("rival"),
                            json={"credential_configuration_ids": list(SD)})
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    offer = _offer(service, member["id"])
    # Acme's code presented at Rival's token endpoint is unknown there.
    grant = offer["credential_offer"]["grants"][
        "urn:ietf:params:oauth:grant-type:pre-authorized_code"]
    r = service.client.post("https://issuer.example/brands/rival/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:pre-authorized_code",
        "pre-authorized_code": grant["pre-authorized_code"]})
    _oauth_error(r, 400, "invalid_grant")
    r = service.client.post(f"/admin/v1/members/{member['id']}/offers", headers=service.h("acme"),
                            json={"credential_configuration_ids": ["Nope"]})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


@pytest.mark.parametrize("ids", [SD[:1]])
def test_member_without_points_still_gets_membership(service: Service, ids: tuple[str]) -> None:
    service.brand("acme")
    program = service.program("acme")
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    member = service.enrol("acme", program["id"],
                           signer_from_jwk(json.loads(key.export_private())))
    got = SpecWallet(service.client, key).receive(_offer(service, member["id"], ids)["offer_uri"],
                                                  now=service.clock.now)
    assert set(got) == set(ids)


def test_cached_brand_sees_key_rotation_and_credential_status(service: Service) -> None:
    """The brand is served from the per-process cache once seen (issuer._admin.brand_by_slug),
    and what changes about a brand is not cached with it: after a key rotation the next
    credential is signed by the new key, which the DID document lists as active; a
    revocation changes the brand's status list at once."""
    from issuer import _cache
    from tests.issuer.oid4vci_wallet import b64url_json

    member, key, _ = _member(service)
    wallet = SpecWallet(service.client, key)

    def receive() -> str:
        offer = _offer(service, member["id"], SD[:1])["offer_uri"]
        return str(wallet.receive(offer, now=service.clock.now)[SD[0]])

    first = receive()
    cached = _cache.peek(service.engine, ("brand", "acme"))  # filled by a committed read
    assert cached is not None and cached.slug == "acme"
    r = service.client.post("/admin/v1/keys/rotate", json={}, headers=service.h("acme"))
    assert r.status_code == 201, r.text
    second = receive()
    assert _cache.peek(service.engine, ("brand", "acme")) is cached  # never re-read
    kids = [b64url_json(c.split(".")[0])["kid"] for c in (first, second)]
    assert kids == [f"{cached.did}#key-1", f"{cached.did}#key-2"]
    _issuer_jwk(service, cached.did, {"kid": kids[1]})  # in the DID document
    doc = service.client.get("/brands/acme/did.json").json()
    assert doc["authentication"] == [kids[1]]  # key-1 retired: asserts no more
    status = b64url_json(second.split("~")[0].split(".")[1])["status"]["status_list"]
    url = status["uri"].removeprefix("https://issuer.example")
    before = service.client.get(url)
    assert before.status_code == 200
    rows = service.client.get(f"/admin/v1/members/{member['id']}/credentials",
                              headers=service.h("acme")).json()
    target = next(row for row in rows if row["status_index"] == status["idx"])
    r = service.client.post(f"/admin/v1/credentials/{target['id']}/revoke",
                            headers=service.h("acme"))
    assert r.status_code == 200 and r.json()["status"] == "revoked", r.text
    after = service.client.get(url)
    assert after.status_code == 200 and after.headers["etag"] != before.headers["etag"]
