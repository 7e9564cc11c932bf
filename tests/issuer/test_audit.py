"""The member's audit (holder._audit, ``tessera wallet audit``) against the running issuer.

Lives with the issuer suite because it needs the service; the wallet side
imports nothing from issuer/.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from holder import _cli as wallet_cli
from holder._audit import audit
from holder._wallet import Wallet
from issuer import _translog
from issuer._admin import brand_by_slug
from issuer._db import session_scope
from issuer._issuance import issue_for_member
from issuer._keystore import SqlKeyStore
from issuer._log_models import LogLeafData, LogNode, TransparencyLog, TreeHead
from issuer._models import LedgerEntry, LotAllocation, Member, PointLot
from tessera.did import Resolver
from tessera.pointslog import Allocation, parse_leaf

from .conftest import Service

BASE = "http://testserver/brands/air"


def _world(service: Service, tmp_path: Path) -> tuple[Wallet, dict[str, Any], Resolver, str]:
    service.brand("air")
    program = service.program("air")
    doc = service.client.get("/brands/air/did.json").json()
    resolver = Resolver(documents={doc["id"]: doc})
    wallet = Wallet.create(tmp_path / "w.json", "passphrase-1", resolver=resolver,
                           clock=service.clock)
    member = service.enrol("air", program["id"], signer=wallet.signer)
    (tmp_path / "brand.json").write_text(json.dumps(doc))
    return wallet, member, resolver, doc["id"]


def _points_credential(service: Service, wallet: Wallet, member_id: str) -> None:
    with session_scope(service.engine) as s:
        brand = brand_by_slug(s, slug="air")
        member = s.get(Member, member_id)
        assert member is not None
        cred, _ = issue_for_member(
            s, settings=service.settings, keystore=SqlKeyStore(service.settings.master_key),
            brand=brand, member=member, configuration_id="LoyaltyPointsCredential_sd_jwt",
            holder_key=wallet.signer.public_key, now=service.clock.now)
    wallet.receive(cred)


def _history(service: Service, member_id: str) -> None:
    for path, body in (("earn", {"points": 500}), ("earn", {"points": 300}),
                       ("redeem", {"points": 100})):
        r = service.post("air", f"/admin/v1/members/{member_id}/points/{path}", body)
        assert r.status_code == 201, r.text
    service.integrate()  # the sequencer's batch (under a test's patches, if any)


def _audit(service: Service, wallet: Wallet, resolver: Resolver, did: str) -> Any:
    return audit(wallet, brand_did=did, http=service.client, resolver=resolver, base_url=BASE,
                 now=service.clock.now)


def test_clean_history_audits_and_the_head_is_remembered(service: Service,
                                                         tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    other = service.enrol("air", service.client.get(
        "/admin/v1/programs", headers=service.h("air")).json()[0]["id"])
    _history(service, member["id"])
    service.post("air", f"/admin/v1/members/{other['id']}/points/earn", {"points": 7})
    service.integrate()  # the sequencer (the audit integrates only the member's own leaves)
    _points_credential(service, wallet, member["id"])
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert (report.entries, report.log_total, report.ledger_total) == (3, 700, 700)
    assert report.tree_size == 4 and report.credentials_checked == 1
    assert Wallet.open(wallet.path, "passphrase-1").log_heads[did]["tree_size"] == 4
    service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 1})
    again = _audit(service, wallet, resolver, did)
    assert again.ok and again.previous_size == 4 and again.tree_size == 5


def test_member_entries_need_the_members_signature(service: Service, tmp_path: Path) -> None:
    wallet, member, _, did = _world(service, tmp_path)
    _history(service, member["id"])
    r = service.client.get("/brands/air/log/entries", params={"member": wallet.did})
    assert r.status_code == 401
    intruder = Wallet.create(tmp_path / "x.json", "passphrase-2")
    from holder._audit import log_access_token

    token = log_access_token(intruder, brand_did=did, path="/brands/air/log/entries",
                             now=service.clock.now)
    r = service.client.get("/brands/air/log/entries", params={"member": wallet.did},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (403, 404)  # not a member, and never the victim's data
    mine = log_access_token(wallet, brand_did=did, path="/brands/air/log/other",
                            now=service.clock.now)
    r = service.client.get("/brands/air/log/entries", params={"member": wallet.did},
                           headers={"Authorization": f"Bearer {mine}"})
    assert r.status_code == 401  # signed for another path


def test_rewritten_ledger_row_is_caught(service: Service, tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    assert _audit(service, wallet, resolver, did).ok
    with session_scope(service.engine) as s:
        entry = s.exec(select(LedgerEntry).where(LedgerEntry.kind == "redeem")).one()
        entry.points = -10  # the brand quietly "un-redeems" 90 points in its ledger
        s.add(entry)
    report = _audit(service, wallet, resolver, did)
    assert not report.ok
    assert any("ledger says 790" in p for p in report.problems)


def test_rewritten_log_row_is_caught(service: Service, tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    with session_scope(service.engine) as s:
        row = s.exec(select(LogLeafData).where(LogLeafData.idx == 0)).one()
        body = json.loads(row.data or "")
        body["delta"] = 50  # the member "earned" 50, not 500
        row.data = json.dumps(body, separators=(",", ":"), sort_keys=True)
        s.add(row)
    report = _audit(service, wallet, resolver, did)
    assert any("entry 0" in p and "not in the signed tree" in p for p in report.problems)


def rewrite_history(service: Service) -> None:
    """A thorough forger: the brand's history as another tree of the same size.

    The redemption changes in both the ledger and its leaf (and the lot it took from,
    everywhere, so the log's own rules hold), then every node is rebuilt so that all
    inclusion proofs check out again. Also the fork of tests/issuer/test_witnessing.py.
    """
    with session_scope(service.engine) as s:
        log = s.exec(select(TransparencyLog)).one()
        rows = list(s.exec(select(LogLeafData).order_by(LogLeafData.idx)))
        for row in [*s.exec(select(LogNode)), *s.exec(select(TreeHead)), *rows]:
            s.delete(row)
        s.flush()
        records = []
        for row in rows:
            leaf = parse_leaf(json.loads(row.data or ""))
            if leaf.kind == "redeem":
                (taken,) = leaf.alloc
                leaf = dataclasses.replace(leaf, delta=-10,
                                           alloc=(dataclasses.replace(taken, points=10),))
                entry = s.get(LedgerEntry, leaf.entry)
                assert entry is not None
                entry.points = -10
                alloc = s.exec(select(LotAllocation).where(
                    LotAllocation.entry_id == leaf.entry)).one()
                alloc.amount = 10
                lot = s.get(PointLot, alloc.lot_id)
                assert lot is not None
                lot.remaining += 90
                s.add_all([entry, alloc, lot])
            records.append(_translog.LeafRecord(leaf, row.entry_id))
        log.size, log.frontier = 0, []
        _translog.append_leaves(s, log, records)
        assert _translog.check_log(s, log.brand_id) == []  # internally consistent now


def test_history_rewritten_and_rehashed_is_caught(service: Service, tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    _points_credential(service, wallet, member["id"])
    assert _audit(service, wallet, resolver, did).ok  # the wallet remembers this head
    rewrite_history(service)
    report = _audit(service, wallet, resolver, did)
    assert not report.ok
    assert any("history was rewritten" in p for p in report.problems)
    assert any("checkpoint is not a head of this log" in p for p in report.problems)


def test_cli_audit(service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service.clock.now = datetime.now(UTC).replace(microsecond=0)  # the CLI uses real time
    wallet, member, _, _ = _world(service, tmp_path)
    _history(service, member["id"])
    _points_credential(service, wallet, member["id"])

    class _Client:
        def __enter__(self) -> Any:
            return service.client

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(wallet_cli, "_http_client", _Client)
    monkeypatch.setenv(wallet_cli.PASSPHRASE_ENV, "passphrase-1")
    from tessera.cli import app

    args = ["wallet", "audit", "--wallet", str(wallet.path), "--base-url", BASE,
            "--did-document", str(tmp_path / "brand.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "consistent" in result.output and "log total 700" in result.output
    with session_scope(service.engine) as s:
        entry = s.exec(select(LedgerEntry).where(LedgerEntry.kind == "earn")).first()
        assert entry is not None
        entry.points += 1000
        s.add(entry)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "MISMATCH" in result.output


# -- every figure the brand shows or signs comes from the log (issue 9 item 7) -------------------

TAMPERING = {
    # Drain 200 of the 300-point lot: the balance API and fresh credentials would drop.
    "lot_remaining": ("UPDATE point_lot SET remaining = remaining - 200 WHERE amount = 300",
                      "available 450; the log implies 650"),
    # Make the lots expire (sooner than they do): points_expiring_next changes.
    "lot_expiry": ("UPDATE point_lot SET expires_at = '2026-02-01 00:00:00' WHERE amount = 500",
                   "expiring next 400 points on 2026-02-01T00:00:00+00:00; the log implies "
                   "nothing"),
    # Inflate a hold: fewer points available, more held.
    "hold_points": ("UPDATE point_hold SET points = 650", "held 650; the log implies 50"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_lots_and_holds_rewritten_in_the_database_are_caught(service: Service, tmp_path: Path,
                                                             tamper: str) -> None:
    from sqlalchemy import text

    from tessera.errors import ErrorCode, TesseraError

    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    hold = service.post("air", f"/admin/v1/members/{member['id']}/holds", {"points": 50})
    assert hold.status_code == 201, hold.text
    _points_credential(service, wallet, member["id"])
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert (report.balances_checked, report.credentials_checked) == (1, 1)
    assert not report.notes  # every figure was derived from the leaves
    statement, expected = TAMPERING[tamper]
    with session_scope(service.engine) as s:
        assert s.execute(text(statement)).rowcount == 1  # type: ignore[attr-defined]
    shown = service.client.get(f"/admin/v1/members/{member['id']}/balance",
                               headers=service.h("air")).json()
    assert (shown["available"], shown["held"]) != (650, 50) or shown["expiring_next"]
    report = _audit(service, wallet, resolver, did)
    assert not report.ok
    assert any(expected in p and "changed outside the log" in p for p in report.problems), \
        report.problems
    # The brand will not sign figures its log does not support ...
    with pytest.raises(TesseraError) as info:
        _points_credential(service, wallet, member["id"])
    assert info.value.code is ErrorCode.INTERNAL_ERROR
    # ... and its own self-check names the cache that drifted.
    with session_scope(service.engine) as s:
        problems = _translog.check_log(s, brand_by_slug(s, slug="air").id)
    assert any("disagree with the log" in p for p in problems), problems


def _signed_points(service: Service, wallet: Wallet, member_id: str, balance: int) -> None:
    """A points credential signed by the brand's own key, stating ``balance`` available."""
    from issuer._credentials import CredentialIssuer
    from issuer._issuance import ledger_checkpoint
    from tessera import credentials

    with session_scope(service.engine) as s:
        brand = brand_by_slug(s, slug="air")
        row = s.get(Member, member_id)
        assert row is not None
        signer = SqlKeyStore(service.settings.master_key).signer(s, brand_id=brand.id,
                                                                  did=brand.did)
        genuine = next(c for c in wallet.credentials() if c.vct == credentials.POINTS.vct)
        claims = credentials.points_claims(
            program=genuine.claims["program"], membership_number=row.membership_number,
            balance=balance, as_of=service.clock.now, checkpoint=ledger_checkpoint(s, row))
        issuer = CredentialIssuer(signer=signer, did=brand.did, program=_program(genuine),
                                  clock=lambda: service.clock.now)
        cred = issuer.issue_claims("LoyaltyPointsCredential", claims,
                                   holder_key=wallet.signer.public_key)
    wallet.receive(cred)


def test_a_credential_stating_other_figures_than_the_log_is_a_problem(
        service: Service, tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    _points_credential(service, wallet, member["id"])
    # From a balance that lost 100 points beside the log: the wallet used to
    # call this a note ("pending or held at its checkpoint").
    _signed_points(service, wallet, member["id"], 600)
    report = _audit(service, wallet, resolver, did)
    assert report.credentials_checked == 2 and not report.ok
    assert [p for p in report.problems if "states available 600" in p
            and "the log implied 700" in p], report.problems


def test_a_brand_that_states_no_balances_still_has_its_credentials_checked(
        service: Service, tmp_path: Path) -> None:
    import httpx

    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    _points_credential(service, wallet, member["id"])

    class Silent:
        """The brand's API, answering /log/entries without its balances."""

        def get(self, url: str, **kw: Any) -> httpx.Response:
            r = service.client.get(url, **kw)
            if not url.endswith("/log/entries") or r.status_code != 200:
                return r
            body = r.json()
            del body["accounts"]
            return httpx.Response(200, json=body)

    def run() -> Any:
        return audit(wallet, brand_did=did, http=Silent(),  # type: ignore[arg-type]
                     resolver=resolver, base_url=BASE, now=service.clock.now)

    report = run()
    assert report.ok and report.balances_checked == 0 and report.credentials_checked == 1
    _signed_points(service, wallet, member["id"], 600)
    report = run()
    assert [p for p in report.problems if "states available 600" in p], report.problems


def _program(cred: Any) -> Any:
    from issuer._credentials import Program

    program = cred.claims["program"]
    return Program(id=program["id"], name=program["name"], brand=program["brand"])


def test_cli_audit_fails_on_a_drained_lot(service: Service, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    service.clock.now = datetime.now(UTC).replace(microsecond=0)  # the CLI uses real time
    wallet, member, _, _ = _world(service, tmp_path)
    _history(service, member["id"])
    _points_credential(service, wallet, member["id"])

    class _Client:
        def __enter__(self) -> Any:
            return service.client

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(wallet_cli, "_http_client", _Client)
    monkeypatch.setenv(wallet_cli.PASSPHRASE_ENV, "passphrase-1")
    from tessera.cli import app

    args = ["wallet", "audit", "--wallet", str(wallet.path), "--base-url", BASE,
            "--did-document", str(tmp_path / "brand.json")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with session_scope(service.engine) as s:
        s.execute(text("UPDATE point_lot SET remaining = 0 WHERE amount = 300"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "MISMATCH" in result.output and "changed outside the log" in result.output


def test_a_version_1_history_is_carried_into_the_log_by_its_next_write(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    # A brand that ran before leaves carried lots: its leaves are version 1.
    append = _translog.append_leaves

    def v1(session: Any, log: Any, records: Any, **kw: Any) -> Any:
        # The sequencer hands over pending leaves as their promised text alone.
        old = [_translog.LeafRecord(dataclasses.replace(
            r.leaf or parse_leaf(json.loads(r.raw)), v=1, lot=None, alloc=(), hold=None),
            r.entry_id) for r in records]
        return append(session, log, old, **kw)

    monkeypatch.setattr(_translog, "append_leaves", v1)
    monkeypatch.setattr(_translog, "carry_forward", lambda *a, **kw: False)
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    monkeypatch.undo()
    report = _audit(service, wallet, resolver, did)
    assert report.ok and report.balances_checked == 0
    assert "older leaves carry no lots: only totals are checked" in report.notes
    # The next write states the lots once (a zero-point snapshot) ...
    r = service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 5})
    assert r.status_code == 201, r.text
    kinds = [e["kind"] for e in service.client.get(
        f"/admin/v1/members/{member['id']}/ledger", headers=service.h("air")).json()]
    assert kinds == ["earn", "earn", "redeem", "snapshot", "earn"]
    _points_credential(service, wallet, member["id"])
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert (report.balances_checked, report.notes) == (1, [])
    with session_scope(service.engine) as s:
        assert _translog.check_log(s, brand_by_slug(s, slug="air").id) == []
    # ... and from then on a drained lot is caught like any other.
    with session_scope(service.engine) as s:
        s.execute(text("UPDATE point_lot SET remaining = 0 WHERE amount = 300"))
    report = _audit(service, wallet, resolver, did)
    assert any("available 405; the log implies 705" in p for p in report.problems), \
        report.problems


def test_the_audit_reads_every_page_against_one_head(service: Service, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_translog, "MAX_ENTRIES_PAGE", 2)
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    hold = service.post("air", f"/admin/v1/members/{member['id']}/holds", {"points": 50})
    assert hold.status_code == 201, hold.text
    _points_credential(service, wallet, member["id"])
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert (report.entries, report.log_total, report.balances_checked) == (4, 700, 1)
    # A later page names the first page's head, even after the log has grown.
    other = service.enrol("air", member["program_id"])
    service.post("air", f"/admin/v1/members/{other['id']}/points/earn", {"points": 1})
    from holder._audit import log_access_token

    token = log_access_token(wallet, brand_did=did, path="/brands/air/log/entries",
                             now=service.clock.now)
    r = service.client.get("/brands/air/log/entries", headers={
        "Authorization": f"Bearer {token}"}, params={
        "member": wallet.did, "after": 1, "size": report.tree_size})
    assert r.status_code == 200, r.text
    assert r.json()["head"]["tree_size"] == report.tree_size and r.json()["accounts"] == []
    assert [e["index"] for e in r.json()["entries"]] == [2, 3]
    r = service.client.get("/brands/air/log/entries", headers={
        "Authorization": f"Bearer {token}"}, params={"member": wallet.did, "size": 2})
    # Never signed (the sequencer signed the head after its batch of 3, then 4):
    # nothing to prove against.
    assert r.status_code == 404


def test_cli_audit_fails_on_a_debit_moved_to_a_longer_lived_lot(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md "expiry by lot (first earned, first expired)", checked from the leaves alone.

    A brand that debits a member's longest-lived lot lets the short-lived one
    expire with more points in it. Here the forger moves a redemption's
    allocation (``lot_allocation`` and both lots) to the later lot and
    rebuilds the log, so every hash, proof and cached figure agrees: only
    the order of the allocation betrays it. The wallet has no earlier head.
    """
    from datetime import timedelta

    real = datetime.now(UTC).replace(microsecond=0)  # the CLI audits at real time
    service.clock.now = real - timedelta(days=100)
    service.brand("air")
    program = service.program("air", points_validity_days=365)
    doc = service.client.get("/brands/air/did.json").json()
    wallet = Wallet.create(tmp_path / "w.json", "passphrase-1",
                           resolver=Resolver(documents={doc["id"]: doc}), clock=service.clock)
    member = service.enrol("air", program["id"], signer=wallet.signer)
    (tmp_path / "brand.json").write_text(json.dumps(doc))
    points = f"/admin/v1/members/{member['id']}/points"
    assert service.post("air", f"{points}/earn", {"points": 500}).status_code == 201
    service.clock.now = real - timedelta(days=10)
    assert service.post("air", f"{points}/earn", {"points": 300}).status_code == 201
    service.clock.now = real
    assert service.post("air", f"{points}/redeem", {"points": 100}).status_code == 201

    class _Client:
        def __enter__(self) -> Any:
            return service.client

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(wallet_cli, "_http_client", _Client)
    monkeypatch.setenv(wallet_cli.PASSPHRASE_ENV, "passphrase-1")
    from tessera.cli import app

    args = ["wallet", "audit", "--wallet", str(wallet.path), "--base-url", BASE,
            "--did-document", str(tmp_path / "brand.json"), "--brand", doc["id"]]
    unaudited = wallet.path.read_bytes()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    wallet.path.write_bytes(unaudited)  # no remembered head to compare the rebuilt log with
    with session_scope(service.engine) as s:
        soon = s.exec(select(PointLot).where(PointLot.amount == 500)).one()
        late = s.exec(select(PointLot).where(PointLot.amount == 300)).one()
        assert soon.expires_at is not None and late.expires_at is not None
        assert soon.expires_at < late.expires_at and soon.remaining == 400
        alloc = s.exec(select(LotAllocation)).one()
        alloc.lot_id = late.id  # type: ignore[assignment]
        soon.remaining, late.remaining = 500, 200
        s.add_all([alloc, soon, late])
        log = s.exec(select(TransparencyLog)).one()
        rows = list(s.exec(select(LogLeafData).order_by(col(LogLeafData.idx))))
        for row in [*s.exec(select(LogNode)), *s.exec(select(TreeHead)), *rows]:
            s.delete(row)
        s.flush()
        records = []
        for row in rows:
            leaf = parse_leaf(json.loads(row.data or ""))
            if leaf.kind == "redeem":
                leaf = dataclasses.replace(leaf, alloc=(Allocation(late.entry_id, 100),))
            records.append(_translog.LeafRecord(leaf, row.entry_id))
        log.size, log.frontier = 0, []
        _translog.append_leaves(s, log, records)
        # Lots, holds and leaves agree; the brand's self-check names the order.
        problems = _translog.check_log(s, log.brand_id)
        assert problems and all("first expired" in p for p in problems), problems
    shown = service.client.get(f"/admin/v1/members/{member['id']}/balance",
                               headers=service.h("air")).json()
    assert shown["expiring_next"]["points"] == 500  # 100 more points will now expire
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "MISMATCH" in result.output and "first expired" in result.output


def _drop_pending_earn(service: Service) -> None:
    """The brand accepted an earn, promised its leaf, then made it vanish: the pending
    leaf, the ledger entry and its lot, so the ledger and the log still agree."""
    from sqlalchemy import text

    from issuer._log_models import PendingLeaf

    with session_scope(service.engine) as s:
        (pending,) = s.exec(select(PendingLeaf)).all()
        entry_id = pending.entry_id
        s.delete(pending)
        s.flush()
        s.execute(text("DELETE FROM point_lot WHERE entry_id = :e"), {"e": entry_id})
        s.execute(text("DELETE FROM ledger_entry WHERE id = :e"), {"e": entry_id})


def test_a_kept_promise_passes_and_leaves_the_wallet(service: Service, tmp_path: Path) -> None:
    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    r = service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 40})
    assert wallet.add_log_promise(r.json()["log_promise"]) == did
    # Pending when the audit starts: its request integrates it (no timer to wait for).
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert report.promises_kept == 1 and report.entries == 4
    assert Wallet.open(wallet.path, "passphrase-1").log_promises == {}


def test_a_broken_promise_is_an_audit_failure(service: Service, tmp_path: Path) -> None:
    """The leaf promised is dropped: within the merge delay that is only a note; once
    the delay has passed, the head without it is a failure, code log_promise_broken."""
    from tessera.errors import ErrorCode

    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    assert _audit(service, wallet, resolver, did).ok
    r = service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 40})
    wallet.add_log_promise(r.json()["log_promise"])
    _drop_pending_earn(service)
    early = _audit(service, wallet, resolver, did)
    assert early.ok, early.problems  # the head predates the promise's deadline
    assert any("still within its 1000 ms merge delay" in n for n in early.notes)
    # A later head (another member's earn makes a new one) must include it.
    other = service.enrol("air", service.client.get(
        "/admin/v1/programs", headers=service.h("air")).json()[0]["id"])
    service.clock.advance(seconds=2)
    service.post("air", f"/admin/v1/members/{other['id']}/points/earn", {"points": 1})
    assert service.integrate() == 1  # the sequencer's next batch, and its signed head
    late = _audit(service, wallet, resolver, did)
    assert not late.ok
    assert late.codes == [ErrorCode.LOG_PROMISE_BROKEN]
    assert any("an entry was dropped from the log" in p for p in late.problems)
    # The failed audit keeps the promise (the evidence) and the old head.
    assert len(Wallet.open(wallet.path, "passphrase-1").log_promises[did]) == 1


def test_a_promise_not_signed_by_the_brand_proves_nothing(service: Service,
                                                         tmp_path: Path) -> None:
    from tessera import merkle
    from tessera.keys import generate_signer

    wallet, member, resolver, did = _world(service, tmp_path)
    _history(service, member["id"])
    forger = generate_signer("EdDSA").with_key_id(f"{did}#key-1")
    forged = merkle.InclusionPromise.sign([b"\1" * 32], forger, timestamp=service.clock.now,
                                          mmd_ms=1000, log_id=did)
    wallet.add_log_promise(forged.signature)
    service.clock.advance(minutes=10)
    report = _audit(service, wallet, resolver, did)
    assert report.ok, report.problems
    assert any("does not verify (invalid_signature)" in n for n in report.notes)
    assert Wallet.open(wallet.path, "passphrase-1").log_promises == {}


def test_cli_audit_holds_the_brand_to_a_promise(service: Service, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import timedelta

    now = datetime.now(UTC).replace(microsecond=0)  # the CLI audits at real time
    service.clock.now = now - timedelta(minutes=10)
    wallet, member, _, _ = _world(service, tmp_path)
    _history(service, member["id"])
    service.integrate()
    r = service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 40})
    promise = r.json()["log_promise"]
    _drop_pending_earn(service)
    service.clock.now = now

    class _Client:
        def __enter__(self) -> Any:
            return service.client

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(wallet_cli, "_http_client", _Client)
    monkeypatch.setenv(wallet_cli.PASSPHRASE_ENV, "passphrase-1")
    from tessera.cli import app

    result = CliRunner().invoke(app, [
        "wallet", "audit", "--wallet", str(wallet.path), "--base-url", BASE,
        "--did-document", str(tmp_path / "brand.json"), "--promise", promise])
    assert result.exit_code == 3, result.output
    assert "MISMATCH" in result.output and "log_promise_broken" in result.output
