"""The points ledger over the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import func
from sqlmodel import select

from issuer._db import make_engine, session_scope
from issuer._ledger import redeem, run_write
from issuer._models import LedgerEntry, LotAllocation, PointLot
from tessera.errors import ErrorCode, TesseraError
from tests.issuer.conftest import Service


def _setup(service: Service, **program: Any) -> str:
    service.brand("acme")
    prog = service.program("acme", **program)
    return str(service.enrol("acme", prog["id"])["id"])


def _balance(service: Service, mid: str) -> dict[str, Any]:
    r = service.client.get(f"/admin/v1/members/{mid}/balance", headers=service.h("acme"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ledger(service: Service, mid: str) -> list[dict[str, Any]]:
    r = service.client.get(f"/admin/v1/members/{mid}/ledger", headers=service.h("acme"))
    return list(r.json())


def _assert_projection_consistent(service: Service) -> None:
    """lot.remaining == amount - allocations, and entries sum to what the lots hold."""
    with session_scope(service.engine) as s:
        for lot in s.exec(select(PointLot)):
            taken = s.exec(select(func.coalesce(func.sum(LotAllocation.amount), 0))
                           .where(LotAllocation.lot_id == lot.id)).one()
            assert lot.remaining == lot.amount - taken
            assert 0 <= lot.remaining <= lot.amount
        entries = s.exec(select(func.coalesce(func.sum(LedgerEntry.points), 0))).one()
        lots = s.exec(select(func.coalesce(func.sum(PointLot.remaining), 0))).one()
        assert entries == lots


def test_negative_balance_refused(service: Service) -> None:
    mid = _setup(service)
    assert service.post("acme", f"/admin/v1/members/{mid}/points/earn",
                        {"points": 100}).status_code == 201
    for path, body in ((f"/admin/v1/members/{mid}/points/redeem", {"points": 101}),
                       (f"/admin/v1/members/{mid}/points/adjust",
                        {"points": -101, "reason": "fix", "operator": "ops@acme"}),
                       (f"/admin/v1/members/{mid}/holds", {"points": 101})):
        r = service.post("acme", path, body)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "insufficient_balance"
    assert _balance(service, mid)["available"] == 100
    assert len(_ledger(service, mid)) == 1
    # Exactly the balance is fine; then nothing is left.
    assert service.post("acme", f"/admin/v1/members/{mid}/points/redeem",
                        {"points": 100}).status_code == 201
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 1})
    assert r.json()["code"] == "insufficient_balance"
    # A malformed amount is a validation error, not a debit.
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": -5})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    _assert_projection_consistent(service)


def test_same_idempotency_key_applies_once(service: Service) -> None:
    mid = _setup(service)
    path = f"/admin/v1/members/{mid}/points/earn"
    first = service.post("acme", path, {"points": 250, "reference": "order-1"}, key="tx-1")
    second = service.post("acme", path, {"points": 250, "reference": "order-1"}, key="tx-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert _balance(service, mid)["available"] == 250
    assert len(_ledger(service, mid)) == 1
    # Same key, different request: conflict, nothing applied.
    r = service.post("acme", path, {"points": 999, "reference": "order-1"}, key="tx-1")
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 250},
                     key="tx-1")
    assert r.status_code == 409
    assert _balance(service, mid)["available"] == 250
    # A refused write stores nothing: the same key can succeed later.
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 300},
                     key="tx-2")
    assert r.json()["code"] == "insufficient_balance"
    service.post("acme", path, {"points": 50})
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 300},
                     key="tx-2")
    assert r.status_code == 201
    # Missing header is a validation error.
    r = service.client.post(path, json={"points": 1}, headers=service.h("acme"))
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_reversal_is_a_new_entry(service: Service) -> None:
    mid = _setup(service)
    earn = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 300}).json()
    red = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 120}).json()
    assert red["balance"]["available"] == 180
    rev = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                       {"entry_id": red["entry"]["id"], "reason": "order cancelled"})
    assert rev.status_code == 201, rev.text
    body = rev.json()
    assert body["entry"]["kind"] == "reverse" and body["entry"]["points"] == 120
    assert body["entry"]["reverses_id"] == red["entry"]["id"]
    assert body["balance"]["available"] == 300
    entries = _ledger(service, mid)
    assert [e["kind"] for e in entries] == ["earn", "redeem", "reverse"]
    assert entries[1] == red["entry"]  # the original is untouched
    again = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                         {"entry_id": red["entry"]["id"], "reason": "twice"})
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    no = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                      {"entry_id": body["entry"]["id"], "reason": "undo the undo"})
    assert no.status_code == 422
    # Reversing the earn takes its points back (and its qualifying points).
    r = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                     {"entry_id": earn["entry"]["id"], "reason": "fraud", "operator": "risk"})
    assert r.status_code == 201
    assert r.json()["balance"]["available"] == 0
    assert r.json()["balance"]["qualifying"] == 0
    _assert_projection_consistent(service)


def test_reversing_a_spent_earn_cannot_go_negative(service: Service) -> None:
    mid = _setup(service)
    earn = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 100}).json()
    service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 80})
    r = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                     {"entry_id": earn["entry"]["id"], "reason": "return"})
    assert r.status_code == 409 and r.json()["code"] == "insufficient_balance"
    _assert_projection_consistent(service)


def test_fifo_expiry_and_expiring_next(service: Service) -> None:
    mid = _setup(service, points_validity_days=365)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 100})   # lot A, t0
    service.clock.advance(days=30)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 50})    # lot B
    service.clock.advance(days=30)
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 30})
    bal = r.json()["balance"]
    # The oldest lot paid: 70 left in A, which expires first.
    assert bal["available"] == 120
    assert bal["expiring_next"]["points"] == 70
    assert bal["expiring_next"]["at"].startswith("2027-01-01T12:00:00")
    service.clock.advance(days=306)  # past A's expiry, before B's
    bal = _balance(service, mid)
    assert bal["available"] == 50
    assert bal["expiring_next"]["points"] == 50
    # The next write records the expiry as an entry, per lot.
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 10})
    entries = _ledger(service, mid)
    expired = [e for e in entries if e["kind"] == "expire"]
    assert [e["points"] for e in expired] == [-70]
    service.clock.advance(days=60)  # past B's expiry; the 10 earned since are still live
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 11})
    assert r.json()["code"] == "insufficient_balance"
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 10})
    assert r.status_code == 201
    expired = [e for e in _ledger(service, mid) if e["kind"] == "expire"]
    assert [e["points"] for e in expired] == [-70, -50]
    _assert_projection_consistent(service)


def test_fifo_spending_order_then_expiry(service: Service) -> None:
    mid = _setup(service, points_validity_days=100)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 100})   # A, t0
    service.clock.advance(days=10)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 50})    # B, t10
    service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 120})  # A0, B30
    service.clock.advance(days=95)  # t105: A expired (empty), B still live
    assert _balance(service, mid)["available"] == 30
    service.clock.advance(days=10)  # t115: B expired too
    bal = _balance(service, mid)
    assert bal["available"] == 0 and bal["expiring_next"] is None
    r = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 5})
    expired = [e["points"] for e in _ledger(service, mid) if e["kind"] == "expire"]
    assert expired == [-30]
    assert r.json()["balance"]["available"] == 5
    _assert_projection_consistent(service)


def test_pending_points_not_redeemable_until_window_closes(service: Service) -> None:
    mid = _setup(service, return_window_days=14)
    r = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 200})
    assert r.json()["balance"] == {**r.json()["balance"], "available": 0, "pending": 200}
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 1})
    assert r.json()["code"] == "insufficient_balance"
    r = service.post("acme", f"/admin/v1/members/{mid}/holds", {"points": 1})
    assert r.json()["code"] == "insufficient_balance"
    # A per-transaction override: this one is available at once.
    service.post("acme", f"/admin/v1/members/{mid}/points/earn",
                 {"points": 10, "pending_days": 0})
    assert _balance(service, mid)["available"] == 10
    service.clock.advance(days=13, hours=23)
    assert _balance(service, mid)["pending"] == 200
    service.clock.advance(hours=1)
    bal = _balance(service, mid)
    assert bal["available"] == 210 and bal["pending"] == 0
    assert service.post("acme", f"/admin/v1/members/{mid}/points/redeem",
                        {"points": 210}).status_code == 201


def test_return_inside_the_window_reverses_pending_points(service: Service) -> None:
    mid = _setup(service, return_window_days=14)
    earn = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 200}).json()
    r = service.post("acme", f"/admin/v1/members/{mid}/points/reverse",
                     {"entry_id": earn["entry"]["id"], "reason": "goods returned"})
    assert r.status_code == 201, r.text
    assert r.json()["balance"]["pending"] == 0 and r.json()["balance"]["qualifying"] == 0
    _assert_projection_consistent(service)


def test_hold_capture_release(service: Service) -> None:
    mid = _setup(service)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 1000})
    h1 = service.post("acme", f"/admin/v1/members/{mid}/holds",
                      {"points": 600, "reference": "basket-1"}).json()
    assert h1["hold"]["status"] == "held"
    assert h1["balance"]["available"] == 400 and h1["balance"]["held"] == 600
    # Held points cannot be spent twice.
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 401})
    assert r.json()["code"] == "insufficient_balance"
    # Partial capture: 500 debited, the other 100 go back.
    cap = service.post("acme", f"/admin/v1/holds/{h1['hold']['id']}/capture", {"points": 500})
    assert cap.status_code == 201, cap.text
    assert cap.json()["entry"]["kind"] == "redeem" and cap.json()["entry"]["points"] == -500
    assert cap.json()["entry"]["hold_id"] == h1["hold"]["id"]
    assert cap.json()["hold"]["status"] == "captured"
    assert cap.json()["balance"]["available"] == 500 and cap.json()["balance"]["held"] == 0
    r = service.post("acme", f"/admin/v1/holds/{h1['hold']['id']}/release")
    assert r.status_code == 409
    h2 = service.post("acme", f"/admin/v1/members/{mid}/holds", {"points": 200}).json()
    rel = service.post("acme", f"/admin/v1/holds/{h2['hold']['id']}/release")
    assert rel.json()["hold"]["status"] == "released"
    assert rel.json()["balance"]["available"] == 500
    r = service.post("acme", f"/admin/v1/holds/{h2['hold']['id']}/capture")
    assert r.status_code == 409
    # An expired hold stops reserving and cannot be captured.
    h3 = service.post("acme", f"/admin/v1/members/{mid}/holds",
                      {"points": 300, "ttl_seconds": 60}).json()
    assert _balance(service, mid)["available"] == 200
    service.clock.advance(seconds=61)
    assert _balance(service, mid)["available"] == 500
    r = service.post("acme", f"/admin/v1/holds/{h3['hold']['id']}/capture")
    assert r.status_code == 400 and r.json()["code"] == "expired"
    kinds = [e["kind"] for e in _ledger(service, mid)]
    # Holds are in the ledger (and so in the log) as zero-point entries.
    assert kinds == ["earn", "hold", "redeem", "hold", "release", "hold"]
    _assert_projection_consistent(service)


def test_adjust_needs_reason_and_operator(service: Service) -> None:
    mid = _setup(service)
    r = service.post("acme", f"/admin/v1/members/{mid}/points/adjust", {"points": 50})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    r = service.post("acme", f"/admin/v1/members/{mid}/points/adjust",
                     {"points": 50, "reason": "goodwill", "operator": "agent-7"})
    assert r.status_code == 201
    assert r.json()["entry"]["operator"] == "agent-7"
    assert r.json()["entry"]["qualifying_points"] == 0   # goodwill does not buy a tier
    assert r.json()["balance"]["available"] == 50


def test_tier_follows_qualifying_points(service: Service) -> None:
    service.brand("acme")
    prog = service.program("acme")
    mid = service.enrol("acme", prog["id"])["id"]
    member = service.client.get(f"/admin/v1/members/{mid}", headers=service.h("acme")).json()
    assert member["tier"] == "blue"
    # Redeemable-only points (qualifying 0) do not move the tier.
    r = service.post("acme", f"/admin/v1/members/{mid}/points/earn",
                     {"points": 5000, "qualifying_points": 0})
    assert r.json()["balance"]["tier"] == "blue"
    r = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 5200})
    assert r.json()["balance"]["tier"] == "gold"
    # Spending does not lower qualifying points.
    r = service.post("acme", f"/admin/v1/members/{mid}/points/redeem", {"points": 10000})
    assert r.json()["balance"]["tier"] == "gold"
    assert r.json()["balance"]["qualifying"] == 5200
    # A year later the points have left the window; gold holds through the
    # grace period, then drops one step (its policy), not straight to blue.
    service.clock.advance(days=366)
    m = service.client.post(f"/admin/v1/members/{mid}/tier/evaluate",
                            headers=service.h("acme")).json()
    assert m["tier"] == "gold"
    service.clock.advance(days=30)
    m = service.client.post(f"/admin/v1/members/{mid}/tier/evaluate",
                            headers=service.h("acme")).json()
    assert m["tier"] == "silver"
    # Silver's policy is end_of_grace straight to the earned tier.
    service.clock.advance(days=396)
    m = service.client.post(f"/admin/v1/members/{mid}/tier/evaluate",
                            headers=service.h("acme")).json()
    assert m["tier"] == "blue"


def test_concurrent_redemptions_never_overdraw(service: Service) -> None:
    """20 threads, each on its own connection, race to spend 100 of 1000 points... twice."""
    mid = _setup(service)
    service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 1000})
    brand_id = service.client.get("/admin/v1/brand", headers=service.h("acme")).json()["id"]
    engine = make_engine(service.settings.database_url)  # a separate pool
    results: list[str] = []
    barrier = threading.Barrier(20)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            run_write(engine, lambda s: redeem(s, brand_id=brand_id, member_id=mid,
                                               idempotency_key=f"race-{i}", points=100,
                                               now=service.clock.now))
            results.append("ok")
        except TesseraError as exc:
            results.append(exc.code.value)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    assert results.count("ok") == 10
    assert results.count(ErrorCode.INSUFFICIENT_BALANCE.value) == 10
    assert _balance(service, mid)["available"] == 0
    assert sum(e["points"] for e in _ledger(service, mid)) == 0
    _assert_projection_consistent(service)
