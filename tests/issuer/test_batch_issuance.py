"""OpenID4VCI 1.0 batch issuance with key attestations, driven by the spec-only wallet.

One request, N fresh holder keys vouched for by the member's key attestation
(Appendix D.1), N credentials: distinct keys, status slots and salts, coarse
shared times, all verified by the verifier SDK. The attacks: a stranger's
key, an attestation by another member, with another nonce, expired; too many
keys. Supersession acts on whole batches and never on a batch's siblings.
Runs on SQLite and PostgreSQL (the issuer suite's fixtures).
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jwcrypto import jwk

from issuer._settings import Settings
from tessera.did import HttpFetcher, Resolver
from tessera.encoding import b64url_decode
from tessera.errors import TesseraError
from tessera.keys import PublicKey
from tests.issuer.conftest import Service
from tests.issuer.oid4vci_wallet import (
    Session,
    SpecWallet,
    b64url_json,
    fresh_keys,
    present,
    public_jwk,
)
from tests.issuer.test_openid4vci import SD, _member, _oauth_error, _offer
from verifier import TrustList, Verifier, default_status_check
from verifier import sd_jwt as sdk_sd_jwt

MEMBERSHIP, POINTS = SD
MEMBERSHIP_TYPE = "LoyaltyMembershipCredential"
BRAND_DID = "did:web:issuer.example:brands:acme"
PARTNER = "https://partner.example"


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Points credentials: at most 3 a request; membership: the default, 10. No background
    # sequencer (as in conftest): a test integrates the log when it says so.
    return Settings(database_url=database_url, master_key=secrets.token_bytes(32),
                    public_url="https://issuer.example",
                    batch_sizes={POINTS: 3}, log_sequencer_interval=0)


def _wallet(service: Service, slug: str = "acme") -> tuple[dict[str, Any], SpecWallet]:
    member, key, did = _member(service, slug)
    return member, SpecWallet(service.client, key, kid=f"{did}#{did.removeprefix('did:key:')}")


def _session(service: Service, wallet: SpecWallet, member: dict[str, Any],
             ids: tuple[str, ...] = SD) -> Session:
    session = wallet.start(_offer(service, member["id"], ids)["offer_uri"])
    assert wallet.token(session).status_code == 200
    return session


def _brand_keys(service: Service) -> dict[str, PublicKey]:
    doc = service.client.get("/brands/acme/did.json").json()
    return {m["id"]: PublicKey.from_jwk(m["publicKeyJwk"]) for m in doc["verificationMethod"]
            if m["id"] in doc["assertionMethod"]}


def _payload(credential: str) -> dict[str, Any]:
    return dict(b64url_json(credential.split("~", 1)[0].split(".")[1]))


def _salts(credential: str) -> list[str]:
    return [b64url_json(d)[0] for d in credential.rstrip("~").split("~")[1:]]


def _got(r: Any) -> list[str]:
    assert r.status_code == 200, r.text
    return [c["credential"] for c in r.json()["credentials"]]


def _rows(service: Service, member_id: str) -> list[dict[str, Any]]:
    r = service.client.get(f"/admin/v1/members/{member_id}/credentials", headers=service.h("acme"))
    assert r.status_code == 200
    return list(r.json())


def test_n_attested_keys_give_n_unlinkable_credentials(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    assert wallet.batch_size(session, MEMBERSHIP) == 10
    now = service.clock.now
    keys = fresh_keys(5)
    issued = _got(wallet.request_batch(session, MEMBERSHIP, keys, now=now))
    assert len(issued) == 5

    payloads = [_payload(c) for c in issued]
    # Each credential is bound to its own key, in the order the proofs came.
    assert [p["cnf"]["jwk"]["x"] for p in payloads] == [public_jwk(k)["x"] for k in keys]
    # Its own random status slot, in a list shared with other members (herd privacy).
    slots = {(p["status"]["status_list"]["uri"], p["status"]["status_list"]["idx"])
             for p in payloads}
    assert len(slots) == 5
    # Its own salts and digests: no disclosure or digest appears in two credentials.
    salts = [s for c in issued for s in _salts(c)]
    assert len(salts) == len(set(salts))
    digests = [d for p in payloads for d in p["_sd"]]
    assert len(digests) == len(set(digests))
    # Coarse times, shared by the batch and by every credential issued in the hour.
    for p in payloads:
        assert p["iat"] == p["nbf"] == payloads[0]["iat"] and p["exp"] == payloads[0]["exp"]
        assert p["iat"] % 3600 == 0 and p["exp"] % 3600 == 0
        assert p["iat"] <= now.timestamp() < p["iat"] + 3600
    # Every one verifies with the verifier SDK, key-bound to its own key.
    brand_keys = _brand_keys(service)
    for credential, key in zip(issued, keys, strict=True):
        vp = present(credential, disclose={"tier"}, key=key, aud=PARTNER, nonce="n-1", now=now)
        result = sdk_sd_jwt.verify(vp, issuer_keys=brand_keys, audience=PARTNER, nonce="n-1",
                                   now=now)
        assert result.ok, result.errors
        assert result.claims["tier"] == {"name": "silver", "rank": 1}
        # Bound to its own key: the member's DID key cannot present it.
        stolen = present(credential, disclose={"tier"}, key=wallet.key, aud=PARTNER,
                         nonce="n-1", now=now)
        assert not sdk_sd_jwt.verify(stolen, issuer_keys=brand_keys, audience=PARTNER,
                                     nonce="n-1", now=now).ok

    rows = [r for r in _rows(service, member["id"]) if r["format"] == "dc+sd-jwt"]
    assert len(rows) == 5 and len({r["batch_id"] for r in rows}) == 1
    assert all(r["status"] == "valid" and r["superseded_by"] is None for r in rows)


@pytest.mark.parametrize("mode", ["attestation", "single-proof"])
def test_attestation_proof_type_and_one_proof_for_many_keys(service: Service, mode: str) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    now = service.clock.now
    keys = fresh_keys(3)
    if mode == "attestation":
        r = wallet.request_batch(session, POINTS, keys, now=now, mode="attestation")
    else:
        # Appendix F.1: one jwt proof by one attested key; every attested key is bound.
        nonce = wallet.nonce(session)
        attestation = wallet.attestation(keys=keys, nonce=nonce, now=now)
        r = wallet.credential(session, POINTS, proofs={"jwt": [wallet.proof(
            session, nonce=nonce, now=now, key=keys[1], key_attestation=attestation)]})
    issued = _got(r)
    assert [_payload(c)["cnf"]["jwk"]["x"] for c in issued] == [public_jwk(k)["x"]
                                                                for k in keys]
    brand_keys = _brand_keys(service)
    for credential, key in zip(issued, keys, strict=True):
        vp = present(credential, disclose={"points_balance"}, key=key, aud=PARTNER, nonce="n",
                     now=now)
        result = sdk_sd_jwt.verify(vp, issuer_keys=brand_keys, audience=PARTNER, nonce="n",
                                   now=now)
        assert result.ok and result.claims["points_balance"] == 1250


def test_a_batch_reads_its_shard_once_and_probes_its_slots_together(service: Service) -> None:
    """issuer._status_lists.allocate_batch: one read of the open shard and one probe of the
    batch's candidate slots, not a shard read and a probe per credential; the slots stay
    distinct (test_n_attested_keys_give_n_unlinkable_credentials)."""
    from sqlalchemy import event

    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(service.engine, "before_cursor_execute", seen)
    try:
        issued = _got(wallet.request_batch(session, MEMBERSHIP, fresh_keys(8),
                                           now=service.clock.now))
    finally:
        event.remove(service.engine, "before_cursor_execute", seen)
    assert len(issued) == 8
    shard_reads = [s for s in sent if s.startswith("SELECT status_list.")]
    probes = [s for s in sent if "FROM issued_credential WHERE issued_credential.status_list_id"
              in s]
    assert len(shard_reads) == 1 and len(probes) == 1, sent


def test_allocate_batch_fills_a_shard_then_opens_the_next(service: Service) -> None:
    from issuer._admin import brand_by_slug
    from issuer._db import session_scope
    from issuer._models import StatusListKind
    from issuer._status_lists import allocate_batch

    service.brand("acme")
    now = datetime.now(UTC)
    with session_scope(service.engine) as session:
        brand = brand_by_slug(session, slug="acme")
        slots = allocate_batch(session, brand_id=brand.id, kind=StatusListKind.TOKEN, now=now,
                               count=11, size=8)
    first = slots[0][0]
    # Every slot of the first shard, each once; the rest from a new shard, distinct too.
    assert sorted(i for s, i in slots if s.id == first.id) == list(range(8))
    rest = [(s.id, i) for s, i in slots if s.id != first.id]
    assert len(rest) == 3 and len(set(rest)) == 3 and first.full


def test_a_batch_is_committed_before_it_is_signed(service: Service,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The credential endpoint signs after its write transaction commits
    (issuer._issuance.PreparedBatch): the write lock is not held over the signatures.
    Another connection already sees every row of the batch when the first is signed."""
    from sqlalchemy import func, select

    from issuer import _issuance
    from issuer._db import read_scope
    from issuer._models import IssuedCredential

    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    seen: list[int] = []
    signing = _issuance.sd_jwt.issue

    def issue(*args: Any, **kwargs: Any) -> str:
        with read_scope(service.engine) as other:
            seen.append(other.exec(select(func.count()).select_from(IssuedCredential).where(
                IssuedCredential.member_id == member["id"])).one()[0])
        return signing(*args, **kwargs)

    monkeypatch.setattr(_issuance.sd_jwt, "issue", issue)
    issued = _got(wallet.request_batch(session, MEMBERSHIP, fresh_keys(3),
                                       now=service.clock.now))
    assert len(issued) == 3 and seen == [3, 3, 3]


def test_a_batch_that_cannot_be_signed_is_revoked_not_left_valid(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows commit before the signatures: when signing then fails (a KMS refusing,
    say), the wallet gets an error and the batch's rows are revoked, not left as valid
    credentials nobody holds. A later batch is issued as usual."""
    from issuer import _issuance

    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    signing = _issuance.sd_jwt.issue
    calls: list[int] = []

    def refuse_the_second(*args: Any, **kwargs: Any) -> str:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the key service refused")
        return signing(*args, **kwargs)

    monkeypatch.setattr(_issuance.sd_jwt, "issue", refuse_the_second)
    # The test client re-raises what the server would answer as a 500 problem.
    with pytest.raises(RuntimeError, match="the key service refused"):
        wallet.request_batch(session, MEMBERSHIP, fresh_keys(3), now=service.clock.now)
    rows = _rows(service, member["id"])
    assert len(rows) == 3 and {row["status"] for row in rows} == {"revoked"}, rows

    monkeypatch.setattr(_issuance.sd_jwt, "issue", signing)
    again = _session(service, wallet, member)
    assert len(_got(wallet.request_batch(again, MEMBERSHIP, fresh_keys(2),
                                         now=service.clock.now))) == 2
    rows = _rows(service, member["id"])
    assert sorted(row["status"] for row in rows) == ["revoked"] * 3 + ["valid"] * 2


def test_batch_size_is_published_and_enforced(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    meta = session.issuer
    assert meta["batch_credential_issuance"] == {"batch_size": 10}
    configs = meta["credential_configurations_supported"]
    assert configs[POINTS]["batch_credential_issuance"] == {"batch_size": 3}
    assert configs[MEMBERSHIP]["batch_credential_issuance"] == {"batch_size": 10}
    now = service.clock.now
    # More proofs than the configuration's batch size: the request is refused.
    _oauth_error(wallet.request_batch(session, POINTS, fresh_keys(4), now=now), 400,
                 "invalid_credential_request")
    # One attestation of more keys than that: refused too, whatever carries it.
    _oauth_error(wallet.request_batch(session, POINTS, fresh_keys(4), now=now,
                                      mode="attestation"), 400, "invalid_proof")
    # More proofs than the issuer-wide batch_size.
    _oauth_error(wallet.request_batch(session, MEMBERSHIP, fresh_keys(11), now=now), 400,
                 "invalid_credential_request")
    # Nothing was issued by the refused requests; the limit itself is fine.
    assert _rows(service, member["id"]) == []
    assert len(_got(wallet.request_batch(session, POINTS, fresh_keys(3), now=now))) == 3


def test_settings_refuse_impossible_batch_sizes(database_url: str) -> None:
    from tessera.errors import TesseraError

    base = {"database_url": database_url, "master_key": secrets.token_bytes(32)}
    for bad in ({"batch_size": 0}, {"batch_size": 101},
                {"batch_sizes": {"LoyaltyMembershipCredential_ldp_vc": 2}},
                {"batch_sizes": {"NoSuchConfiguration": 2}}):
        with pytest.raises(TesseraError):
            Settings(**base, **bad)  # type: ignore[arg-type]
    env = {"TESSERA_MASTER_KEY": "A" * 43, "TESSERA_BATCH_SIZE": "20",
           "TESSERA_BATCH_SIZES": f"{POINTS}=5, {MEMBERSHIP}=1"}
    settings = Settings.from_env(env)
    assert settings.batch_size_for(POINTS) == 5 and settings.batch_size_for(MEMBERSHIP) == 1
    assert settings.batch_size_for("LoyaltyPointsCredential_ldp_vc") == 1
    with pytest.raises(TesseraError):
        Settings.from_env({**env, "TESSERA_BATCH_SIZES": "oops"})


def test_a_configuration_without_batches_asks_for_no_attestation() -> None:
    from issuer._models import Brand
    from issuer._openid4vci import credential_issuer_metadata

    settings = Settings(master_key=secrets.token_bytes(32), public_url="https://issuer.example",
                        batch_sizes={POINTS: 1})
    brand = Brand(slug="acme", name="Acme", did=settings.brand_did("acme"))
    configs = credential_issuer_metadata(settings, brand, ["EdDSA"])[
        "credential_configurations_supported"]
    assert set(configs[POINTS]["proof_types_supported"]) == {"jwt"}
    assert "key_attestations_required" not in configs[POINTS]["proof_types_supported"]["jwt"]
    assert configs[MEMBERSHIP]["proof_types_supported"]["attestation"][
        "key_attestations_required"] == {}
    everything_one = Settings(master_key=secrets.token_bytes(32), batch_size=1)
    # §12.2.4: batch_size "MUST be 2 or greater", so without batches it is not published.
    assert "batch_credential_issuance" not in credential_issuer_metadata(
        everything_one, brand, ["EdDSA"])


def test_a_strangers_key_is_refused_without_the_members_attestation(service: Service) -> None:
    member, wallet = _wallet(service)
    _, rival_wallet = _wallet(service, "rival")
    _, other_wallet = _wallet(service)  # another member of the same brand
    session = _session(service, wallet, member)
    now = service.clock.now
    stranger = fresh_keys(1)[0]

    def attempt(**kwargs: Any) -> Any:
        nonce = wallet.nonce(session)
        return wallet.credential(session, MEMBERSHIP, wallet.proof(
            session, nonce=nonce, now=now, **kwargs))

    # A fresh key without any attestation: not the member's, refused.
    _oauth_error(attempt(key=stranger, use_jwk=True), 400, "invalid_proof")
    # Attested by another member of the brand, or a member of another brand: refused.
    for signer in (other_wallet, rival_wallet):
        nonce = wallet.nonce(session)
        forged = signer.attestation(keys=[stranger], nonce=nonce, now=now)
        _oauth_error(wallet.credential(session, MEMBERSHIP, wallet.proof(
            session, nonce=nonce, now=now, key=stranger, key_attestation=forged)), 400,
            "invalid_proof")
        _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [forged]}),
                     400, "invalid_proof")
    # Naming the member's DID key but signed by another key: the signature fails.
    nonce = wallet.nonce(session)
    lying = wallet.attestation(keys=[stranger], nonce=nonce, now=now, signer=stranger)
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [lying]}), 400,
                 "invalid_proof")
    # The member's attestation of other keys does not vouch for the proof's key.
    nonce = wallet.nonce(session)
    others = wallet.attestation(keys=fresh_keys(2), nonce=nonce, now=now)
    _oauth_error(wallet.credential(session, MEMBERSHIP, wallet.proof(
        session, nonce=nonce, now=now, key=stranger, key_attestation=others)), 400,
        "invalid_proof")
    # A proof of the member's attestation by a proof without one, by a stranger's key.
    nonce = wallet.nonce(session)
    keys = fresh_keys(2)
    good = wallet.attestation(keys=keys, nonce=nonce, now=now)
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"jwt": [
        wallet.proof(session, nonce=nonce, now=now, key=keys[0], key_attestation=good),
        wallet.proof(session, nonce=nonce, now=now, key=stranger, use_jwk=True)]}),
        400, "invalid_proof")
    # A private key in attested_keys, a wrong typ: refused.
    nonce = wallet.nonce(session)
    private = wallet.attestation(keys=[stranger], nonce=nonce, now=now,
                                 extra={"attested_keys": [json.loads(stranger.export_private())]})
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [private]}), 400,
                 "invalid_proof")
    untyped = wallet.attestation(keys=[stranger], nonce=nonce, now=now, typ="JWT")
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [untyped]}), 400,
                 "invalid_proof")
    assert _rows(service, member["id"]) == []
    # Batch size 1, today's rule: the member's own DID key proves itself, no attestation.
    assert len(_got(attempt())) == 1


def test_attestation_nonce_expiry_and_replay(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    now = service.clock.now
    keys = fresh_keys(2)

    def send(attestation: str, nonce: str) -> Any:
        return wallet.credential(session, MEMBERSHIP, proofs={"jwt": [
            wallet.proof(session, nonce=nonce, now=now, key=k, key_attestation=attestation)
            for k in keys]})

    # The attestation carries another (valid) c_nonce than the proofs: one nonce per request.
    nonce, other = wallet.nonce(session), wallet.nonce(session)
    _oauth_error(send(wallet.attestation(keys=keys, nonce=other, now=now), nonce), 400,
                 "invalid_nonce")
    # A nonce the issuer never gave, in both.
    _oauth_error(send(wallet.attestation(keys=keys, nonce="made-up-nonce", now=now),
                      "made-up-nonce"), 400, "invalid_nonce")
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [
        wallet.attestation(keys=keys, nonce="made-up-nonce", now=now)]}), 400, "invalid_nonce")
    # Expired, without exp, issued long ago: refused.
    nonce = wallet.nonce(session)
    _oauth_error(send(wallet.attestation(keys=keys, nonce=nonce, now=now, ttl=0), nonce), 400,
                 "invalid_proof")
    _oauth_error(send(wallet.attestation(keys=keys, nonce=nonce, now=now - timedelta(hours=1),
                                         ttl=7200), nonce), 400, "invalid_proof")
    no_exp = wallet.attestation(keys=keys, nonce=nonce, now=now, extra={"exp": None})
    _oauth_error(send(no_exp, nonce), 400, "invalid_proof")
    # Those failures did not use the nonce up; the good request does, once.
    good = wallet.attestation(keys=keys, nonce=nonce, now=now)
    assert len(_got(send(good, nonce))) == 2
    _oauth_error(wallet.credential(session, POINTS, proofs={"attestation": [good]}), 400,
                 "invalid_nonce")


def _verifier(service: Service) -> Verifier:
    fetcher = HttpFetcher(service.client, allow_http=True, is_public_host=lambda h: True)
    resolver = Resolver(fetcher)
    check = default_status_check(resolver, fetcher, max_age=timedelta(0), clock=service.clock)
    return Verifier(trust=TrustList.of([(BRAND_DID, ["LoyaltyMembershipCredential"])]),
                    resolver=resolver, status_check=check, clock=service.clock)


def _errors(service: Service, credential: str, key: jwk.JWK) -> list[str]:
    verifier = _verifier(service)
    request = verifier.create_request(audience=PARTNER)
    vp = present(credential, disclose={"tier"}, key=key, aud=PARTNER, nonce=request.nonce,
                 now=service.clock.now)
    result = verifier.verify({"membership": [vp]}, request=request, now=service.clock.now)
    return [str(e) for e in result.errors]


def _batch(service: Service, wallet: SpecWallet, member: dict[str, Any], n: int
           ) -> list[tuple[str, jwk.JWK]]:
    session = _session(service, wallet, member, (MEMBERSHIP,))
    keys = fresh_keys(n)
    issued = _got(wallet.request_batch(session, MEMBERSHIP, keys, now=service.clock.now))
    return list(zip(issued, keys, strict=True))


def test_supersession_and_revocation_act_on_whole_batches(service: Service) -> None:
    member, wallet = _wallet(service)
    silver = _batch(service, wallet, member, 3)
    assert all(_errors(service, c, k) == [] for c, k in silver)

    # A top-up with the same claims: the unused rest of the pool stays valid (§13.2).
    service.clock.advance(minutes=10)
    topup = _batch(service, wallet, member, 2)
    assert all(_errors(service, c, k) == [] for c, k in silver + topup)
    rows = _rows(service, member["id"])
    assert len(rows) == 5 and {r["status"] for r in rows} == {"valid"}
    assert len({r["batch_id"] for r in rows}) == 2

    # A tier change: every credential of the old tier is revoked, both batches.
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 4000})
    assert r.status_code == 201, r.text
    assert all(_errors(service, c, k) == ["revoked"] for c, k in silver + topup)
    gold = _batch(service, wallet, member, 3)
    assert all(_errors(service, c, k) == [] for c, k in gold)
    assert _payload(gold[0][0]) != _payload(silver[0][0])
    rows = _rows(service, member["id"])
    gold_batch = {r["batch_id"] for r in rows if r["status"] == "valid"}
    assert len(gold_batch) == 1
    old = [r for r in rows if r["batch_id"] not in gold_batch]
    assert len(old) == 5 and all(r["status"] == "revoked" for r in old)
    # The gold batch replaced them; its own siblings are not superseded.
    assert {r["superseded_by"] for r in old} <= {r["id"] for r in rows
                                                  if r["batch_id"] in gold_batch}
    assert all(r["superseded_by"] is None for r in rows if r["batch_id"] in gold_batch)

    # Revoking one credential of a batch revokes its siblings, and only them.
    service.clock.advance(minutes=5)
    topup_gold = _batch(service, wallet, member, 2)
    first_gold = next(r for r in rows if r["batch_id"] in gold_batch)
    r = service.client.post(f"/admin/v1/credentials/{first_gold['id']}/revoke",
                            headers=service.h("acme"), json={"reason": "phone lost"})
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    assert all(_errors(service, c, k) == ["revoked"] for c, k in gold)
    assert all(_errors(service, c, k) == [] for c, k in topup_gold)


def test_a_top_up_reads_only_what_it_supersedes(service: Service) -> None:
    """A batch's supersession reads the member's credentials it supersedes (revoked, or of
    other claims), never the pool of its own claims, which grows with every top-up: on
    PostgreSQL the index scans return exactly those rows and filter none out; on SQLite
    every branch searches the index on a range of the dataset (bench/README.md "Issuance
    on SQLite, the gate's hold (session 8)")."""
    from sqlalchemy import select

    from issuer._models import IssuedCredential
    from issuer._status_lists import _SUPERSEDABLE

    member, wallet = _wallet(service)
    for _ in range(3):
        _batch(service, wallet, member, 2)
    rows = _rows(service, member["id"])
    assert len(rows) == 6 and {r["status"] for r in rows} == {"valid"}
    r = service.client.post(f"/admin/v1/credentials/{rows[0]['id']}/revoke",
                            headers=service.h("acme"), json={"reason": "phone lost"})
    assert r.status_code == 200
    revoked = {x["id"] for x in _rows(service, member["id"]) if x["status"] == "revoked"}
    assert len(revoked) == 2  # the batch
    with service.engine.connect() as conn:
        dataset = conn.execute(select(IssuedCredential.dataset_sha256).where(
            IssuedCredential.id == rows[0]["id"])).scalar_one()
        stmt = _SUPERSEDABLE.params(member_id=member["id"], credential_type=MEMBERSHIP_TYPE,
                                    format="dc+sd-jwt", dataset=dataset)
        assert {row.id for row in conn.execute(stmt)} == revoked
        sql = str(stmt.compile(dialect=service.engine.dialect,
                               compile_kwargs={"literal_binds": True}))
        if service.engine.dialect.name == "postgresql":
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").scalar_one()
            scans = [n for n in _plan_nodes(plan[0]["Plan"]) if "Relation Name" in n]
            assert scans and all("Filter" not in n for n in scans), scans
            assert sum(n["Actual Rows"] for n in scans) == len(revoked)
        else:
            details = [str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
                       if "issued_credential" in str(row[-1])]
            assert len(details) == 4 and all(
                d.startswith("SEARCH issued_credential USING INDEX "
                             "ix_issued_credential_member_current") and "dataset_sha256" in d
                for d in details), details
    # The next top-up supersedes the revoked batch and keeps the valid pool.
    _batch(service, wallet, member, 2)
    after = {x["id"]: x for x in _rows(service, member["id"])}
    assert all(after[i]["superseded_by"] is not None for i in revoked)
    assert all(x["superseded_by"] is None and x["status"] == "valid"
               for i, x in after.items() if i not in revoked)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", ()) for n in _plan_nodes(child))]


def test_coarse_times_are_hours_whatever_the_minute(service: Service) -> None:
    member, wallet = _wallet(service)
    first = _batch(service, wallet, member, 1)
    service.clock.advance(minutes=37, seconds=11)
    second = _batch(service, wallet, member, 1)
    a, b = _payload(first[0][0]), _payload(second[0][0])
    # Issued 37 minutes apart in the same hour: the same iat, nbf and exp.
    assert (a["iat"], a["nbf"], a["exp"]) == (b["iat"], b["nbf"], b["exp"])
    start = datetime.fromtimestamp(a["iat"], UTC)
    assert start.minute == start.second == 0


# -- refresh tokens: top-ups without a new offer --------------------------------------------


def test_refresh_token_tops_up_the_pool_without_a_new_offer(service: Service) -> None:
    member, wallet = _wallet(service)
    session = wallet.start(_offer(service, member["id"], (MEMBERSHIP,))["offer_uri"])
    r = wallet.token(session)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["refresh_token"] != body["access_token"]
    first = _got(wallet.request_batch(session, MEMBERSHIP, fresh_keys(3), now=service.clock.now))
    # One batch per configuration per access token.
    _oauth_error(wallet.request_batch(session, MEMBERSHIP, fresh_keys(3), now=service.clock.now),
                 400, "credential_request_denied")

    # Days later, the pool runs low: the refresh token gets a new access token.
    service.clock.advance(days=6)
    old_access, old_refresh = session.access_token, session.refresh_token
    r = wallet.refresh(session)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert session.access_token != old_access and session.refresh_token != old_refresh
    assert r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == 300
    topup = _got(wallet.request_batch(session, MEMBERSHIP, fresh_keys(4),
                                      now=service.clock.now))
    assert len(topup) == 4
    # The access token before the refresh is gone; the unused rest of the pool is not.
    _oauth_error(wallet.credential(session, MEMBERSHIP, proofs={"attestation": [
        wallet.attestation(keys=fresh_keys(1), nonce=wallet.nonce(session),
                           now=service.clock.now)]}, access_token=old_access),
                 401, "invalid_token")
    rows = _rows(service, member["id"])
    assert len(rows) == 7 and {r["status"] for r in rows} == {"valid"}
    assert len(first) == 3

    # Narrowing the scope to what was granted is fine; widening it is not (RFC 6749 §6).
    _oauth_error(wallet.refresh(session, scope=f"{MEMBERSHIP} {POINTS}"), 400, "invalid_scope")
    assert wallet.refresh(session, scope=MEMBERSHIP).status_code == 200


def test_refresh_token_replay_revokes_the_family(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    stolen = session.refresh_token
    assert stolen
    assert wallet.refresh(session).status_code == 200
    current_refresh, current_access = session.refresh_token, session.access_token
    # The copier (or the wallet, after the copier) shows the used token again:
    _oauth_error(wallet.refresh(session, refresh_token=stolen), 400, "invalid_grant")
    # ... and the family is over, for both of them: the newest refresh token,
    # and the access token it gave, are revoked too.
    _oauth_error(wallet.refresh(session, refresh_token=current_refresh), 400, "invalid_grant")
    session.access_token = current_access
    _oauth_error(wallet.request_batch(session, MEMBERSHIP, fresh_keys(2), now=service.clock.now),
                 401, "invalid_token")
    assert _rows(service, member["id"]) == []
    # A new offer starts a new family.
    fresh = _session(service, wallet, member)
    assert wallet.refresh(fresh).status_code == 200


def test_refresh_tokens_are_scoped_and_expire(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    _oauth_error(wallet.refresh(session, refresh_token="never-issued-token"), 400,
                 "invalid_grant")
    # Another brand's token endpoint does not know Acme's refresh token.
    service.brand("rival")
    r = service.client.post("https://issuer.example/brands/rival/token", data={
        "grant_type": "refresh_token", "refresh_token": session.refresh_token or ""})
    _oauth_error(r, 400, "invalid_grant")
    r = service.client.post("https://issuer.example/brands/acme/token",
                            data={"grant_type": "refresh_token"})
    _oauth_error(r, 400, "invalid_request")
    # Unused for more than 30 days: expired.
    service.clock.advance(days=31)
    _oauth_error(wallet.refresh(session), 400, "invalid_grant")
    # Used every 29 days, the family still ends 90 days after the offer was redeemed.
    session = _session(service, wallet, member)
    for _ in range(3):
        service.clock.advance(days=29)
        assert wallet.refresh(session).status_code == 200
    service.clock.advance(days=4)
    _oauth_error(wallet.refresh(session), 400, "invalid_grant")


def test_an_erased_member_cannot_refresh(service: Service) -> None:
    member, wallet = _wallet(service)
    session = _session(service, wallet, member)
    r = service.post("acme", f"/admin/v1/members/{member['id']}/erase")
    assert r.status_code in (200, 201), r.text
    _oauth_error(wallet.refresh(session), 400, "invalid_grant")


def _checkpoint(credential: str) -> Any:
    """The ``checkpoint`` a points SD-JWT VC states, in clear or in a disclosure."""
    parts = credential.split("~")
    payload = _payload(credential)
    if "checkpoint" in payload:
        return payload["checkpoint"]
    for disclosure in parts[1:]:
        if disclosure:
            decoded = json.loads(b64url_decode(disclosure))
            if decoded[1] == "checkpoint":
                return decoded[2]
    raise AssertionError("no checkpoint in the credential")


def test_a_points_top_up_keeps_the_pool_when_only_the_log_moved(service: Service) -> None:
    """A points credential names the brand's log checkpoint, which every member's ledger
    write moves. That is when the balance was read, like ``as_of``, not the state stated:
    another member's earn must not make this member's top-up revoke its unused pool."""
    member, wallet = _wallet(service)
    other, _ = _wallet(service)

    def points_batch(n: int) -> list[tuple[str, jwk.JWK]]:
        session = _session(service, wallet, member, (POINTS,))
        keys = fresh_keys(n)
        issued = _got(wallet.request_batch(session, POINTS, keys, now=service.clock.now))
        return list(zip(issued, keys, strict=True))

    first = points_batch(2)
    r = service.post("acme", f"/admin/v1/members/{other['id']}/points/earn", {"points": 5})
    assert r.status_code == 201
    assert service.integrate() >= 1  # the log's head moves past the first batch's checkpoint
    second = points_batch(2)
    rows = [r for r in _rows(service, member["id"])
            if r["credential_type"] == "LoyaltyPointsCredential"]
    assert len(rows) == 4 and all(r["status"] == "valid" for r in rows), rows
    # The two batches do name different log heads (the case this test is about).
    assert _checkpoint(first[0][0]) != _checkpoint(second[0][0])

    # The member's own balance moving does supersede the pool.
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 5})
    assert r.status_code == 201
    points_batch(1)
    rows = [r for r in _rows(service, member["id"])
            if r["credential_type"] == "LoyaltyPointsCredential"]
    assert sum(r["status"] == "revoked" for r in rows) == 4


def test_the_log_figures_read_before_the_write_are_checked_again_in_it(service: Service) -> None:
    """The credential write's programme, signer and log figures are read before the write
    (bench/README.md "Issuance on SQLite, the gate's hold (session 8)"). A ledger write of
    the member in between is seen: the balance and the checkpoint are the write's; with
    none, the figures read ahead are used and the balance is still checked against them."""
    from sqlalchemy import text

    from issuer import _ledger
    from issuer._admin import brand_by_slug, get_member
    from issuer._db import read_scope, session_scope
    from issuer._issuance import prepare_batch, read_ahead

    member, _ = _wallet(service)
    assert service.integrate() >= 1
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    keys = [PublicKey.from_jwk(public_jwk(k)) for k in fresh_keys(2)]
    now = service.clock.now

    def ahead() -> Any:
        with read_scope(service.engine) as s:
            brand = brand_by_slug(s, slug="acme")
            row = get_member(s, brand_id=brand.id, member_id=member["id"])
            got = read_ahead(s, settings=service.settings, keystore=state.keystore, brand=brand,
                             member=row, configuration_id=POINTS, now=now)
        assert got is not None and got.log is not None
        return brand, got.with_keys(keys)

    def issue(brand: Any, read: Any) -> dict[str, Any]:
        def write(s: Any) -> dict[str, Any]:
            row = _ledger.lock_member(s, brand_id=brand.id, member_id=member["id"])
            return prepare_batch(s, settings=service.settings, keystore=state.keystore,
                                 brand=brand, member=row, configuration_id=POINTS,
                                 holder_keys=keys, now=now, ahead=read).claims
        return _ledger.run_write(service.engine, write)

    # Nothing logged in between: the figures and the head read ahead.
    brand, read = ahead()
    claims = issue(brand, read)
    assert claims["points_balance"] == 1250
    assert (claims["checkpoint"]["tree_size"], claims["checkpoint"]["root_hash"]) \
        == read.log.checkpoint

    # An earn between the read and the write: the write reads the log itself, puts the
    # member's pending leaf in the tree and names a head that holds it.
    brand, read = ahead()
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 5})
    assert r.status_code == 201, r.text
    claims = issue(brand, read)
    assert claims["points_balance"] == 1255
    assert claims["checkpoint"]["tree_size"] > read.log.checkpoint[0]

    # A lot rewritten behind the ledger's back is refused with the figures read ahead too.
    brand, read = ahead()
    with session_scope(service.engine) as s:
        s.execute(text("UPDATE point_lot SET remaining = remaining - 1 WHERE member_id = :m"),
                  {"m": member["id"]})
    with pytest.raises(TesseraError, match="disagree with its log"):
        issue(brand, read)
