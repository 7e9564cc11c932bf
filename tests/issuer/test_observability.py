"""The issuer's /metrics (tessera.observability, issue 11 item 10): outcomes by code,
database pool use, and each brand's transparency log (size, unsigned leaves, head age)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.issuer.conftest import Service

LOOPBACK = ("127.0.0.1", 40000)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_issuer_metrics_outcomes_pool_and_log(service: Service) -> None:
    service.brand("acme")
    program = service.program("acme")
    member = service.enrol("acme", program["id"])
    earned = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn",
                          {"points": 100})
    assert earned.status_code in (200, 201), earned.text
    unauthorized = _value("tessera_outcomes_total", operation="issuance", outcome="unauthorized")
    r = service.client.post("/brands/acme/credential", json={})
    assert r.status_code == 401
    c = TestClient(service.client.app, client=LOOPBACK)
    samples = _samples(c.get("/metrics").text)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("tessera_outcomes_total", operation="issuance",
                 outcome="unauthorized") == unauthorized + 1
    assert value("tessera_http_requests_total", service="issuer", method="POST",
                 route="/admin/v1/members/{member_id}/points/earn", status=str(
                     earned.status_code)) is not None
    assert (value("tessera_db_pool_capacity", pool="issuer") or 0) >= 1
    assert value("tessera_db_pool_checked_out", pool="issuer") is not None
    # The earn's leaf is pending: promised, not yet in the tree.
    assert value("tessera_translog_size", brand="acme") == 0
    assert value("tessera_translog_pending_leaves", brand="acme") == 1
    assert value("tessera_translog_pending_age_seconds", brand="acme") == 0
    service.clock.advance(seconds=3)
    samples = _samples(c.get("/metrics").text)
    assert value("tessera_translog_pending_age_seconds", brand="acme") == 3  # past its MMD
    assert value("tessera_translog_head_age_seconds", brand="acme") is None  # never signed
    assert service.client.get("/brands/acme/log/sth").status_code == 200  # integrates
    service.clock.advance(seconds=90)
    samples = _samples(c.get("/metrics").text)
    assert value("tessera_translog_size", brand="acme") == 1
    assert value("tessera_translog_pending_leaves", brand="acme") == 0
    assert value("tessera_translog_unsigned_leaves", brand="acme") == 0
    assert value("tessera_translog_head_age_seconds", brand="acme") == 90
