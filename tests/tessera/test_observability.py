"""Metrics and request logs (tessera.observability, issue 11 items 10 and 11): names and
labels after real requests, outcomes by code, /metrics access, JSON lines that carry the
response's request id, and no personal data or key material in the logs of a full flow."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tessera import observability
from tessera.did import Resolver, did_jwk, did_key
from tessera.errors import TesseraError
from tessera.keys import generate_signer
from verifier._service import ServiceSettings, create_app
from verifier._trust import TrustList

LOOPBACK = ("127.0.0.1", 40000)


def _verifier_app() -> Any:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    trust = TrustList.from_dict({"issuers": [{"id": "did:web:acme.example", "name": "Acme",
                                              "credential_types": ["LoyaltyPointsCredential"]}]})
    return create_app(ServiceSettings(base_url="https://till.test", trust=trust, signer=signer,
                                      store_url="memory://"))


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test, as the services write them in production (JSON)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(observability.JsonFormatter())
    root, client = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, client.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # As configure_logging has it: the test clients' own request lines are not the services'.
    client.setLevel(logging.WARNING)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        client.setLevel(levels[1])


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


# -- metrics ----------------------------------------------------------------------------------


def test_verifier_requests_are_counted_by_route_template_and_outcomes_by_code() -> None:
    route = {"service": "verifier", "method": "POST", "route": "/response", "status": "400"}
    before = _value("tessera_http_requests_total", **route)
    malformed = _value("tessera_outcomes_total", operation="verification", outcome="malformed")
    with TestClient(_verifier_app(), client=LOOPBACK) as c:
        assert c.post("/response", data={"state": "s", "vp_token": "{"}).status_code == 400
        assert c.get("/requests/Secret-Request-Id/result").status_code == 401
        assert c.get("/no/such/path/member-4711").status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = _samples(r.text)
    assert samples[("tessera_http_requests_total", frozenset(route.items()))] == before + 1
    # The histogram has the same labels; ids and raw paths never become a label.
    assert ("tessera_http_request_duration_seconds_count", frozenset(route.items())) in samples
    labels = {v for _, ls in samples for _, v in ls}
    assert "/requests/{request_id}/result" in labels and "<unmatched>" in labels
    assert not any("Secret-Request-Id" in v or "member-4711" in v for v in labels)
    assert samples[("tessera_outcomes_total", frozenset(
        {"operation": "verification", "outcome": "malformed"}.items()))] == malformed + 1


def test_metrics_need_the_token_when_one_is_set_and_loopback_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_METRICS_TOKEN", "scrape-secret-1")
    with TestClient(_verifier_app()) as c:
        refused = c.get("/metrics")
        assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"})
        assert ok.status_code == 200 and "tessera_http_requests_total" in ok.text
    monkeypatch.delenv("TESSERA_METRICS_TOKEN")
    with TestClient(_verifier_app(), client=("203.0.113.9", 5000)) as c:
        assert c.get("/metrics").json()["code"] == "forbidden"
    with TestClient(_verifier_app(), client=LOOPBACK) as c:
        assert c.get("/metrics").status_code == 200
        # A proxy on this host forwarding someone else's request is not a local scrape.
        assert c.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403


def test_did_cache_hits_and_misses_are_counted() -> None:
    did = did_key(generate_signer("ES256").public_key)
    hits, misses = (_value("tessera_cache_lookups_total", cache="did", result=r)
                    for r in ("hit", "miss"))
    resolver = Resolver()
    resolver.resolve(did)
    resolver.resolve(did)
    resolver.resolve(did)
    assert _value("tessera_cache_lookups_total", cache="did", result="miss") == misses + 1
    assert _value("tessera_cache_lookups_total", cache="did", result="hit") == hits + 2


# -- logs -------------------------------------------------------------------------------------


def test_one_json_line_per_request_with_the_response_request_id(logs: io.StringIO) -> None:
    with TestClient(_verifier_app()) as c:
        minted = c.get("/healthz")
        kept = c.get("/requests/abc/result", headers={"X-Request-ID": "trace-0123456789ab"})
        replaced = c.get("/healthz", headers={"X-Request-ID": "alice@example.com"})
    assert kept.headers["X-Request-ID"] == "trace-0123456789ab"
    assert re.fullmatch(r"[0-9a-f]{32}", minted.headers["X-Request-ID"])
    assert replaced.headers["X-Request-ID"] != "alice@example.com"
    access = [line for line in _lines(logs) if line["logger"] == "tessera.access"]
    assert [line["request_id"] for line in access] == [
        r.headers["X-Request-ID"] for r in (minted, kept, replaced)]
    assert access[1] | {"duration_ms": 0, "ts": ""} == {
        "ts": "", "level": "info", "logger": "tessera.access", "service": "verifier",
        "msg": access[1]["msg"], "request_id": "trace-0123456789ab", "method": "GET",
        "route": "/requests/{request_id}/result", "status": 401, "duration_ms": 0,
        "code": "unauthorized"}
    assert "alice@example.com" not in logs.getvalue()


def test_text_format_for_development_and_bad_settings_refused() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert observability.configure_logging({"TESSERA_DEV": "1"}) == "text"
        assert observability.configure_logging({"TESSERA_DEV_ORIGINS": "http://x:1"}) == "text"
        assert observability.configure_logging({}) == "json"
        assert observability.configure_logging({"TESSERA_LOG_FORMAT": "text"}) == "text"
        ours = [h for h in root.handlers if h not in handlers]
        assert len(ours) == 1  # idempotent: one handler however often it is called
        assert isinstance(ours[0].formatter, observability.TextFormatter)
        with pytest.raises(TesseraError, match="json or text"):
            observability.configure_logging({"TESSERA_LOG_FORMAT": "xml"})
        with pytest.raises(TesseraError, match="TESSERA_LOG_LEVEL"):
            observability.configure_logging({"TESSERA_LOG_LEVEL": "loud"})
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


def test_a_full_flow_logs_no_personal_data_and_no_key_material(
        logs: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo: brand, API key, member enrolment by DID proof, points, two OpenID4VCI
    issuances, checkouts with till keys, attacks, revocation, through both services."""
    from rich.console import Console

    from holder import Wallet
    from tessera import demo

    wallets: list[Any] = []
    create = Wallet.create

    def keep(*args: Any, **kwargs: Any) -> Any:
        wallets.append(create(*args, **kwargs))
        return wallets[-1]

    monkeypatch.setattr(Wallet, "create", keep)
    shown = io.StringIO()
    assert demo.run(Console(file=shown, width=300, emoji=False, highlight=False)) == 0
    text, story = logs.getvalue(), shown.getvalue()
    access = [line for line in _lines(logs) if line["logger"] == "tessera.access"]
    services = {line["service"] for line in access}
    assert services == {"issuer", "verifier"} and len(access) > 20
    assert {line["outcome"] for line in access if line.get("operation") == "issuance"} == {"ok"}
    assert {"ok", "disclosure_mismatch"} <= {
        line["outcome"] for line in access if line.get("operation") == "verification"}
    # What must not be there: the member's DID and private key, the membership number,
    # e-mail addresses, API and till keys, bearer tokens.
    member_did = wallets[0].did
    d = wallets[0].signer.export_private_jwk()["d"]
    number = re.search(r"\(no\. (\w+)\)", story)
    assert number, story
    assert member_did in story  # the values are real, and the demo printed them
    for secret in (member_did, d, number.group(1), "tsk_", "tvk_", "Bearer", '"d":',
                   "did:key:", "did:jwk:"):
        assert secret not in text, secret
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", text)
    # Every line is labelled by a route template, never a path with an id in it.
    for line in access:
        assert line["route"] == "<unmatched>" or line["route"].startswith("/")
        assert not re.search(r"/[0-9a-f]{8}-[0-9a-f]{4}-", line["route"]), line


def test_an_unexpected_error_is_logged_with_the_request_id_it_answers_with(
        logs: io.StringIO) -> None:
    app = _verifier_app()

    @app.get("/boom/{member_id}")
    def boom(member_id: str) -> None:
        raise RuntimeError("unexpected")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom/member-4711")
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    lines = _lines(logs)
    error = next(line for line in lines if line["logger"] == "tessera.web")
    assert error["request_id"] == r.headers["X-Request-ID"]
    assert "RuntimeError: unexpected" in error["exc"]
    assert error["msg"] == "unhandled error on GET /boom/{member_id}"
    access = next(line for line in lines if line["logger"] == "tessera.access")
    assert access["status"] == 500 and access["request_id"] == r.headers["X-Request-ID"]
    assert "member-4711" not in logs.getvalue()


def test_a_rate_limited_request_is_logged_with_its_code(logs: io.StringIO) -> None:
    from tessera.ratelimit import Limit, RateLimitConfig
    from tests.tessera.test_ratelimit import TILL, _verifier

    app = _verifier(RateLimitConfig(overrides={"requests": Limit(1, 60)}))
    with TestClient(app, base_url="https://till.test", client=("198.51.100.7", 1)) as c:
        assert c.post("/requests", json={"policy": "gold-10"}, headers=TILL).status_code == 201
        refused = c.post("/requests", json={"policy": "gold-10"}, headers=TILL)
    assert refused.status_code == 429
    line = [line for line in _lines(logs) if line["logger"] == "tessera.access"][-1]
    assert line["request_id"] == refused.headers["X-Request-ID"]
    assert (line["status"], line["code"]) == (429, "rate_limited")


def test_status_list_cache_hits_and_misses_are_counted() -> None:
    from tests.tessera.test_status import URI, _checker_setup

    hits, misses = (_value("tessera_cache_lookups_total", cache="status_list", result=r)
                    for r in ("hit", "miss"))
    checker, *_ = _checker_setup()
    checker.status(URI, 5)
    checker.status(URI, 6)
    assert _value("tessera_cache_lookups_total", cache="status_list", result="miss") == misses + 1
    assert _value("tessera_cache_lookups_total", cache="status_list", result="hit") == hits + 1
