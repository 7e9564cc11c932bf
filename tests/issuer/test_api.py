"""Errors, OpenAPI and enrolment over HTTP."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tessera.did import did_key
from tessera.jose import sign_compact
from tessera.keys import generate_signer
from tests.issuer.conftest import Service, enrolment_proof


def _is_problem(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith(code) and body["title"] and isinstance(body["detail"], str)


def test_every_error_is_problem_json(service: Service) -> None:
    c = service.client
    service.brand("acme")
    _is_problem(c.get("/nowhere"), 404, "not_found")
    _is_problem(c.delete("/healthz"), 405, "invalid_request")
    _is_problem(c.get("/brands/nobody/did.json"), 404, "not_found")
    _is_problem(c.get("/admin/v1/brand"), 401, "unauthorized")
    h = service.h("acme")
    _is_problem(c.post("/admin/v1/programs", content=b"{not json",
                       headers={**h, "Content-Type": "application/json"}),
                400, "malformed")
    r = c.post("/admin/v1/programs", json={"name": "x", "tiers": [
        {"name": "Gold!", "rank": 0, "qualifying_points": 0}]}, headers=h)
    _is_problem(r, 422, "invalid_request")
    assert r.json()["errors"][0]["loc"][:2] == ["body", "tiers"]
    _is_problem(c.post("/admin/v1/programs", content=b"x" * 70_000,
                       headers={**h, "Content-Type": "application/json"}), 413, "too_large")
    _is_problem(c.get("/admin/v1/members/unknown", headers=h), 404, "not_found")
    _is_problem(c.get("/admin/v1/members/x/ledger?limit=0", headers=h), 422, "invalid_request")
    service.program("acme")
    _is_problem(c.post("/admin/v1/programs", json={"name": "Miles"}, headers=h),
                409, "conflict")


def test_unexpected_failure_is_problem_json_without_detail(service: Service) -> None:
    app: Any = service.client.app

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    _is_problem(r, 500, "internal_error")
    assert "secret" not in r.text


def test_openapi_served(service: Service) -> None:
    assert service.client.get("/docs").status_code == 200
    spec = service.client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    earn = spec["paths"]["/admin/v1/members/{member_id}/points/earn"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" and p["required"]
               for p in earn["parameters"])
    assert "application/problem+json" in earn["responses"]["409"]["content"]
    assert "Problem" in spec["components"]["schemas"]


def _challenge(service: Service) -> dict[str, Any]:
    return dict(service.client.post("/admin/v1/enrolment-challenges",
                                    headers=service.h("acme")).json())


def test_enrolment_requires_proof_of_did_control(service: Service) -> None:
    service.brand("acme")
    service.brand("rival")
    program = service.program("acme")
    signer = generate_signer("ES256")
    did = did_key(signer.public_key)
    now = service.clock.now

    def enrol(proof: str, member_did: str = did) -> Any:
        return service.client.post("/admin/v1/members", headers=service.h("acme"), json={
            "program_id": program["id"], "did": member_did, "proof": proof})

    ch = _challenge(service)
    # Signed by some other key, claiming to be the DID's.
    intruder = generate_signer("ES256")
    forged = enrolment_proof(intruder, did, ch["audience"], ch["nonce"], now)
    _is_problem(enrol(forged), 400, "invalid_signature")
    # A valid proof by another DID's key.
    other_did = did_key(intruder.public_key)
    _is_problem(enrol(enrolment_proof(intruder, other_did, ch["audience"], ch["nonce"], now)),
                400, "key_not_found")
    # Addressed to another brand.
    rival_aud = service.settings.brand_did("rival")
    _is_problem(enrol(enrolment_proof(signer, did, rival_aud, ch["nonce"], now)),
                400, "audience_mismatch")
    # Stale iat.
    _is_problem(enrol(enrolment_proof(signer, did, ch["audience"], ch["nonce"],
                                      now.replace(year=2025))), 400, "expired")
    # Unknown nonce, and a nonce from the rival brand.
    _is_problem(enrol(enrolment_proof(signer, did, ch["audience"], "made-up", now)),
                400, "nonce_mismatch")
    rival_ch = service.client.post("/admin/v1/enrolment-challenges",
                                   headers=service.h("rival")).json()
    _is_problem(enrol(enrolment_proof(signer, did, ch["audience"], rival_ch["nonce"], now)),
                400, "nonce_mismatch")
    # Wrong typ.
    kid = f"{did}#{did.removeprefix('did:key:')}"
    wrong_typ = sign_compact({"typ": "JWT", "kid": kid},
                             {"iss": did, "aud": ch["audience"], "nonce": ch["nonce"],
                              "iat": int(now.timestamp())}, signer)
    _is_problem(enrol(wrong_typ), 400, "malformed")
    # The real thing works once; the challenge was not burnt by the failures.
    good = enrolment_proof(signer, did, ch["audience"], ch["nonce"], now)
    assert enrol(good).status_code == 201
    _is_problem(enrol(good), 409, "replayed")
    ch2 = _challenge(service)
    _is_problem(enrol(enrolment_proof(signer, did, ch2["audience"], ch2["nonce"], now)),
                409, "conflict")
    # An expired challenge.
    ch3 = _challenge(service)
    service.clock.advance(seconds=301)
    s3 = generate_signer("EdDSA")
    d3 = did_key(s3.public_key)
    _is_problem(enrol(enrolment_proof(s3, d3, ch3["audience"], ch3["nonce"],
                                      service.clock.now), d3), 400, "expired")


def test_readyz_reports_an_unmigrated_or_unreachable_database(tmp_path: Any) -> None:
    import secrets

    from issuer._app import create_app
    from issuer._db import make_engine
    from issuer._settings import Settings
    from issuer.migrations import alembic_config, upgrade

    settings = Settings(database_url=f"sqlite:///{tmp_path}/fresh.db",
                        master_key=secrets.token_bytes(32))
    engine = make_engine(settings.database_url)
    with TestClient(create_app(settings, engine=engine)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}  # liveness only
        r = c.get("/readyz")
        _is_problem(r, 503, "database_unavailable")
        assert "tessera issuer migrate" in r.json()["detail"]
        assert r.json()["checks"]["database"].startswith("database_unavailable: ")
        upgrade(engine)
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert head is not None and head >= "0004"
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {
            "database": f"schema {head}", "keys": "no brands yet", "nonce_store": "ok"}}
    engine.dispose()
    gone = make_engine(f"sqlite:///{tmp_path}/no/such/dir.db")
    with TestClient(create_app(settings, engine=gone)) as c:
        r = c.get("/readyz")
        _is_problem(r, 503, "database_unavailable")
        assert "cannot reach the database" in r.json()["detail"]
    gone.dispose()


def test_readyz_checks_the_master_key_and_the_nonce_store(service: Service) -> None:
    from dataclasses import replace

    from issuer._app import create_app
    from tessera.nonces import nonce_store_from_url

    service.brand("acme")
    ready = service.client.get("/readyz").json()
    assert ready["checks"]["keys"] == "the master key opens the brand keys"
    # Another master key (a wrong TESSERA_MASTER_KEY): not ready, before any issuance fails.
    import secrets

    other = replace(service.settings, master_key=secrets.token_bytes(32))
    with TestClient(create_app(other, engine=service.engine)) as c:
        r = c.get("/readyz")
        _is_problem(r, 503, "wrong_passphrase")
        assert r.json()["checks"]["database"].startswith("schema ")
    # A nonce store that does not answer (Redis on a closed port).
    redis = nonce_store_from_url("redis://127.0.0.1:1/0")
    with TestClient(create_app(service.settings, engine=service.engine, nonces=redis)) as c:
        r = c.get("/readyz")
        _is_problem(r, 503, "database_unavailable")
        assert r.json()["checks"]["nonce_store"].startswith("database_unavailable: the nonce "
                                                              "store did not answer (")
        assert "127.0.0.1" not in r.text  # no connection strings in the answer


# JSON values that pydantic's lax mode took for an integer (false as 0, "5" as 5) and ones it
# never took (1.5), beside a number where a string is declared: each is refused as the
# OpenAPI document says (docs/conformance.md, negative_data_rejection).
NOT_AN_INTEGER = [False, True, "5", 1.5]


def test_a_body_is_what_its_schema_says(service: Service) -> None:
    c = service.client
    service.brand("acme")
    h = service.h("acme")
    program = service.program("acme")
    member = service.enrol("acme", program["id"])["id"]

    def tiers(rank: Any) -> dict[str, Any]:
        return {"name": "Beans", "tiers": [{"name": "gold", "rank": rank,
                                            "qualifying_points": 10}]}

    refused: list[tuple[str, dict[str, Any], list[str]]] = []
    for value in NOT_AN_INTEGER:
        refused += [
            ("/admin/v1/programs", tiers(value), ["body", "tiers", "0", "rank"]),
            ("/admin/v1/programs", {"name": "Beans", "return_window_days": value},
             ["body", "return_window_days"]),
            ("/admin/v1/programs", {"name": "Beans", "points_ladder": [100, value]},
             ["body", "points_ladder", "1"]),
            (f"/admin/v1/members/{member}/points/earn", {"points": value}, ["body", "points"]),
            (f"/admin/v1/members/{member}/holds", {"points": 1, "ttl_seconds": value},
             ["body", "ttl_seconds"]),
            (f"/admin/v1/members/{member}/offers",
             {"credential_configuration_ids": ["MembershipCredential"],
              "tx_code": {"length": value}}, ["body", "tx_code", "length"]),
        ]
    refused += [
        ("/admin/v1/programs", {"name": 5}, ["body", "name"]),
        (f"/admin/v1/members/{member}/points/earn", {"points": 5, "reference": 5},
         ["body", "reference"]),
        (f"/admin/v1/members/{member}/points/adjust",
         {"points": 5, "reason": 1.5, "operator": "ops"}, ["body", "reason"]),
    ]
    for path, body, loc in refused:
        r = service.post("acme", path, body)
        _is_problem(r, 422, "invalid_request")
        assert [e["loc"] for e in r.json()["errors"]] == [loc], (path, body, r.text)
    # What the schema says is taken: integers (5.0 is one to JSON Schema, 2020-12 Core
    # §4.2.1), and an enum as the string JSON carries.
    r = c.post("/admin/v1/programs", headers=h, json={
        "name": "Beans", "points_ladder": [100.0, 200], "return_window_days": 5,
        "tiers": [{"name": "gold", "rank": 5.0, "qualifying_points": 10,
                   "downgrade_policy": "immediate"}]})
    assert r.status_code == 201, r.text
    assert r.json()["points_ladder"] == [100, 200] and r.json()["tiers"][0]["rank"] == 5
    assert r.json()["tiers"][0]["downgrade_policy"] == "immediate"
    r = service.post("acme", f"/admin/v1/members/{member}/points/earn",
                     {"points": 5.0, "reference": "till 5"})
    assert r.status_code == 201 and r.json()["entry"]["points"] == 5, r.text
    assert service.post("acme", f"/admin/v1/members/{member}/holds",
                        {"points": 1, "ttl_seconds": 600}).status_code == 201


def test_the_hot_requests_are_matched_before_the_other_routes(service: Service) -> None:
    """Routing tries routes in order (issuer._app.HOT_ROUTES): an issuance's and a
    redemption's requests come before every other route of their routers, and the
    service's routers before FastAPI's docs, the health routes and /metrics."""
    from issuer._app import HOT_ROUTES

    order: list[tuple[str, str]] = []

    def walk(items: list[Any]) -> None:
        for route in items:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(inner.routes)
            else:
                order.extend((m, route.path) for m in sorted(getattr(route, "methods", None)
                                                             or {"GET"}))

    walk(service.client.app.routes)  # type: ignore[attr-defined]
    hot = {path.rsplit("/", 1)[-1]: order.index((method, path)) for method, path in HOT_ROUTES}
    assert len(hot) == 5
    for later in (("GET", "/openapi.json"), ("GET", "/healthz"), ("GET", "/metrics")):
        assert max(hot.values()) < order.index(later), (later, order[:15])
    issuance = max(hot["token"], hot["nonce"], hot["credential"])
    assert issuance < order.index(("GET", "/brands/{slug}/.well-known/openid-credential-issuer"))
    assert max(hot["redemptions"], hot["capture"]) < order.index(("POST", "/admin/v1/partners"))
    # And the hot requests still reach their routes.
    r = service.client.post("/brands/nobrand/redemptions", json={})
    assert r.status_code in (401, 422), r.text
