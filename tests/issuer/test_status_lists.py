"""Status lists through the API: revocation seen by the verifier SDK, list size, random slots,
caching headers, supersession. Runs on SQLite and (with TESSERA_TEST_POSTGRES_URL) PostgreSQL."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import pytest
from jwcrypto import jwk

from tessera import credentials
from tessera.did import HttpFetcher, Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import signer_from_jwk
from tessera.status import BitstringStatusList, verify_status_list_token
from tests.issuer.conftest import Service
from tests.issuer.oid4vci_wallet import SpecWallet
from tests.issuer.test_openid4vci import LDP, SD, _member, _offer
from verifier import TrustList, Verifier, default_status_check

BRAND_DID = "did:web:issuer.example:brands:acme"


def _fetcher(service: Service) -> HttpFetcher:
    # The TestClient is an httpx.Client bound to the app; every host is "public" here.
    return HttpFetcher(service.client, allow_http=True, is_public_host=lambda h: True)


def _issue(service: Service, ids: tuple[str, ...] = SD + LDP
           ) -> tuple[dict[str, Any], jwk.JWK, dict[str, Any]]:
    member, key, _ = _member(service)
    got = SpecWallet(service.client, key).receive(_offer(service, member["id"], ids)["offer_uri"],
                                                  now=service.clock.now)
    return member, key, got


def _credential_id(service: Service, member_id: str, ctype: str, fmt: str) -> str:
    rows = service.client.get(f"/admin/v1/members/{member_id}/credentials",
                              headers=service.h("acme")).json()
    return str(next(r["id"] for r in rows if r["credential_type"] == ctype
                    and r["format"] == fmt and r["superseded_by"] is None))


def test_revocation_suspension_resumption_seen_by_the_sdk(service: Service) -> None:
    member, key, got = _issue(service)
    resolver = Resolver(_fetcher(service))
    clock = service.clock
    # max_age=0: every verification fetches the list again (no stale cache in the test).
    check = default_status_check(resolver, _fetcher(service), max_age=timedelta(0), clock=clock)
    verifier = Verifier(trust=TrustList.of([(BRAND_DID, [t.name for t in
                                                         credentials.CREDENTIAL_TYPES])]),
                        resolver=resolver, status_check=check, clock=clock)
    holder = signer_from_jwk(json.loads(key.export_private()))
    membership = got["LoyaltyMembershipCredential_sd_jwt"]

    def verify() -> list[str]:
        request = verifier.create_request(audience="https://beta.example")
        vp = sd_jwt.present(membership, disclose=["tier_at_least_silver"], holder=holder,
                            audience="https://beta.example", nonce=request.nonce,
                            issued_at=clock.now)
        result = verifier.verify({"membership": [vp]}, request=request, now=clock.now)
        return [str(e) for e in result.errors]

    assert verify() == []
    cred_id = _credential_id(service, member["id"], "LoyaltyMembershipCredential", "dc+sd-jwt")
    h = service.h("acme")
    di_id = _credential_id(service, member["id"], "LoyaltyMembershipCredential", "ldp_vc")
    di_status = got["LoyaltyMembershipCredential_ldp_vc"]["credentialStatus"]

    r = service.client.post(f"/admin/v1/credentials/{cred_id}/suspend", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    assert verify() == ["suspended"]
    r = service.client.post(f"/admin/v1/credentials/{cred_id}/resume", headers=h)
    assert r.json()["status"] == "valid"
    assert verify() == []
    r = service.client.post(f"/admin/v1/credentials/{cred_id}/revoke", headers=h,
                            json={"reason": "card reported stolen"})
    assert r.json()["status"] == "revoked" and r.json()["status_reason"] == "card reported stolen"
    assert verify() == ["revoked"]
    r = service.client.post(f"/admin/v1/credentials/{cred_id}/resume", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "conflict"  # revocation is final

    # The Data Integrity credential's Bitstring lists, through the same SDK check.
    check(di_status, issuer=BRAND_DID, now=clock.now)
    service.client.post(f"/admin/v1/credentials/{di_id}/suspend", headers=h)
    with pytest.raises(TesseraError) as caught:
        check(di_status, issuer=BRAND_DID, now=clock.now)
    assert caught.value.code is ErrorCode.SUSPENDED
    service.client.post(f"/admin/v1/credentials/{di_id}/revoke", headers=h)
    with pytest.raises(TesseraError) as caught:
        check(di_status, issuer=BRAND_DID, now=clock.now)
    assert caught.value.code is ErrorCode.REVOKED

    # Another brand can neither see nor touch Acme's credentials.
    service.brand("rival")
    r = service.client.post(f"/admin/v1/credentials/{di_id}/resume", headers=service.h("rival"))
    assert r.status_code == 404


def test_lists_are_large_random_and_cacheable(service: Service) -> None:
    _issue(service)
    member, _, _ = _issue(service)
    rows = service.client.get(f"/admin/v1/members/{member['id']}/credentials",
                              headers=service.h("acme")).json()
    sd_row = next(r for r in rows if r["format"] == "dc+sd-jwt")
    url = f"/brands/acme/status/{sd_row['status_list_id']}"
    r = service.client.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/statuslist+jwt"
    assert "max-age=" in r.headers["cache-control"] and r.headers["etag"]
    doc = service.client.get("/brands/acme/did.json").json()
    from tessera.keys import PublicKey

    key = PublicKey.from_jwk(doc["verificationMethod"][0]["publicKeyJwk"])
    token = verify_status_list_token(r.text, key, uri=f"https://issuer.example{url}",
                                     now=service.clock.now)
    assert token.status_list.bits == 2 and token.status_list.size >= 131_072
    assert service.client.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304

    ldp_row = next(r for r in rows if r["format"] == "ldp_vc")
    for purpose in ("revocation", "suspension"):
        b = service.client.get(f"/brands/acme/status/{ldp_row['status_list_id']}/{purpose}")
        assert b.status_code == 200 and b.headers["content-type"] == "application/vc+ld+json"
        subject = b.json()["credentialSubject"]
        assert subject["statusPurpose"] == purpose
        assert BitstringStatusList.decode(subject["encodedList"]).size >= 131_072
    assert service.client.get(f"/brands/acme/status/{ldp_row['status_list_id']}").status_code \
        == 404
    assert service.client.get(f"/brands/acme/status/{sd_row['status_list_id']}/revocation"
                              ).status_code == 404
    service.brand("rival")
    assert service.client.get(f"/brands/rival/status/{sd_row['status_list_id']}"
                              ).status_code == 404

    # Random slots: both members' SD-JWT indexes in one shard, not handed out in order.
    all_rows = rows + service.client.get(
        f"/admin/v1/members/{_issue(service)[0]['id']}/credentials",
        headers=service.h("acme")).json()
    indexes = [r["status_index"] for r in all_rows if r["format"] == "dc+sd-jwt"]
    assert len(set(indexes)) == len(indexes) >= 4
    gaps = [abs(b - a) for a, b in itertools.pairwise(indexes)]
    assert max(indexes) - min(indexes) > 1000 and any(g > 1 for g in gaps)

    # A status change changes the ETag.
    service.client.post(f"/admin/v1/credentials/{sd_row['id']}/revoke",
                        headers=service.h("acme"))
    r2 = service.client.get(url)
    assert r2.headers["etag"] != r.headers["etag"]


def test_points_change_supersedes_the_points_credential(service: Service) -> None:
    member, key, got = _issue(service, SD)
    h = service.h("acme")

    def rows() -> dict[str, dict[str, Any]]:
        listed = service.client.get(f"/admin/v1/members/{member['id']}/credentials",
                                    headers=h).json()
        return {r["id"]: r for r in listed}

    before = rows()
    points_id = next(i for i, r in before.items()
                     if r["credential_type"] == "LoyaltyPointsCredential")
    membership_id = next(i for i in before if i != points_id)
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/redeem", {"points": 50})
    assert r.status_code == 201
    after = rows()
    assert after[points_id]["status"] == "revoked"
    assert after[points_id]["status_reason"].startswith("superseded")
    assert after[membership_id]["status"] == "valid"  # the tier did not move

    # Crossing a tier threshold supersedes the membership credential too.
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 5000})
    assert r.status_code == 201 and r.json()["balance"]["tier"] == "gold"
    assert rows()[membership_id]["status"] == "revoked"

    # A fresh points credential records what it superseded.
    fresh = SpecWallet(service.client, key).receive(
        _offer(service, member["id"], SD[1:])["offer_uri"], now=service.clock.now)
    assert set(fresh) == {SD[1]}
    final = rows()
    new_id = next(i for i in final if i not in before and
                  final[i]["credential_type"] == "LoyaltyPointsCredential")
    assert final[points_id]["superseded_by"] == new_id
    assert final[new_id]["status"] == "valid"
    assert got  # the earlier credentials were real


def test_a_batch_never_picks_a_slot_it_holds_but_has_not_inserted(service: Service) -> None:
    """A batch inserts its rows after all its picks (issuer._issuance.issue_batch): the
    slots it picked so far are passed as ``taken`` and never handed out again."""
    from datetime import UTC, datetime

    from issuer._admin import brand_by_slug
    from issuer._db import session_scope
    from issuer._models import StatusListKind
    from issuer._status_lists import allocate

    service.brand("acme")
    now = datetime.now(UTC)
    with session_scope(service.engine) as session:
        brand = brand_by_slug(session, slug="acme")
        shard, _ = allocate(session, brand_id=brand.id, kind=StatusListKind.TOKEN, now=now,
                            size=8)
        # Half the shard held: with 7 of 8 held, 64 random probes missed the free slot
        # once in ~5,000 picks, and allocate rightly called the shard nearly full.
        taken = {(shard.id, i) for i in range(0, 8, 2)}
        picks = [allocate(session, brand_id=brand.id, kind=StatusListKind.TOKEN, now=now,
                          taken=taken) for _ in range(20)]
    assert {(s.id, i) for s, i in picks} <= {(shard.id, i) for i in range(1, 8, 2)}


def test_revoke_current_updates_a_copy_loaded_in_the_same_transaction(service: Service) -> None:
    """revoke_current is one UPDATE ... RETURNING (no objects): a credential this
    transaction loaded before it shows the revocation, and a later flush of that
    object does not write the old status back."""
    from datetime import UTC, datetime

    from sqlmodel import select

    from issuer._db import session_scope
    from issuer._models import IssuedCredential
    from issuer._status_lists import revoke_current

    member, _, _ = _issue(service, SD)
    now = datetime.now(UTC)
    with session_scope(service.engine) as session:
        loaded = session.exec(select(IssuedCredential).where(
            IssuedCredential.member_id == member["id"],
            IssuedCredential.credential_type == "LoyaltyPointsCredential")).one()
        assert loaded.status == "valid"
        loaded.status_reason = None  # dirty: revoke_current writes it first, then revokes
        assert revoke_current(session, member_id=member["id"],
                              credential_type="LoyaltyPointsCredential", now=now,
                              reason="superseded: test") == 1
        assert (loaded.status, loaded.status_reason) == ("revoked", "superseded: test")
        session.flush()
    with session_scope(service.engine) as session:
        again = session.get(IssuedCredential, loaded.id)
        assert again is not None
        assert (again.status, again.status_reason) == ("revoked", "superseded: test")
