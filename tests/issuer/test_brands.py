"""Brands, keys, API keys and tenant isolation."""

from __future__ import annotations

import pytest
from sqlmodel import select

from issuer._admin import brand_by_slug
from issuer._db import session_scope
from issuer._keystore import SqlKeyStore
from issuer._models import BrandKey
from issuer._settings import Settings
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact, verify_compact
from tests.issuer.conftest import Service


def test_did_web_name() -> None:
    s = Settings(master_key=b"k" * 32, public_url="https://issuer.example:8443/t/")
    assert s.brand_did("acme") == "did:web:issuer.example%3A8443:t:brands:acme"


def test_settings_need_a_master_key_unless_dev() -> None:
    with pytest.raises(TesseraError) as err:
        Settings.from_env({})
    assert err.value.code is ErrorCode.MALFORMED
    dev = Settings.from_env({"TESSERA_DEV": "1"})
    assert len(dev.master_key) == 32 and dev.dev_mode
    pg = Settings.from_env({"TESSERA_MASTER_KEY": "A" * 43,
                            "DATABASE_URL": "postgresql://u@h/db"})
    assert pg.database_url == "postgresql+psycopg://u@h/db"
    assert "master_key" not in repr(pg)


def test_did_document_rotation_keeps_old_key(service: Service) -> None:
    service.brand("acme")
    doc = service.client.get("/brands/acme/did.json")
    assert doc.status_code == 200
    assert doc.headers["content-type"].startswith("application/did+json")
    did = service.settings.brand_did("acme")
    assert doc.json()["id"] == did
    old_vm = f"{did}#key-1"

    # sign with the current key, rotate, and the old signature still verifies
    store = SqlKeyStore(service.settings.master_key)
    with session_scope(service.engine) as session:
        brand = brand_by_slug(session, slug="acme")
        signer = store.signer(session, brand_id=brand.id, did=did)
    assert signer.key_id == old_vm
    token = sign_compact({"typ": "JWT"}, {"iss": did}, signer)

    r = service.client.post("/admin/v1/keys/rotate", json={"alg": "ES256"},
                            headers=service.h("acme"))
    assert r.status_code == 201, r.text
    assert r.json()["kid"] == "key-2" and r.json()["alg"] == "ES256"

    doc2 = service.client.get("/brands/acme/did.json").json()
    resolver = Resolver(documents={did: doc2})
    verify_compact(token, resolver.key(old_vm))  # old credentials still verify
    assert doc2["assertionMethod"] == [old_vm, f"{did}#key-2"]
    assert doc2["authentication"] == [f"{did}#key-2"]
    with session_scope(service.engine) as session:
        new_signer = store.signer(session, brand_id=brand.id, did=did)
    assert new_signer.key_id == f"{did}#key-2"
    assert new_signer.public_key == resolver.key(f"{did}#key-2")


def test_private_keys_sealed_and_bound_to_their_row(service: Service) -> None:
    service.brand("acme")
    service.brand("other")
    with session_scope(service.engine) as session:
        keys = list(session.exec(select(BrandKey)))
        assert all("d" not in k.public_jwk for k in keys)
        assert all(set(k.sealed_private) == {"alg", "nonce", "ciphertext"} for k in keys)
        # Swap one brand's sealed key onto the other's row: it must not unseal.
        a, b = keys
        b.sealed_private = a.sealed_private
        session.add(b)
    with session_scope(service.engine) as session, pytest.raises(TesseraError) as err:
        SqlKeyStore(service.settings.master_key).signer(session, brand_id=b.brand_id, did="x")
    assert err.value.code is ErrorCode.WRONG_PASSPHRASE
    with session_scope(service.engine) as session, pytest.raises(TesseraError):
        SqlKeyStore(b"\x01" * 32).signer(session, brand_id=a.brand_id, did="x")


def test_api_key_required_and_checked(service: Service) -> None:
    token = service.brand("acme")
    for headers in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": token[:-2] + "xx"},
                    {"Authorization": f"Bearer {token[:-2]}xx"},
                    {"Authorization": f"Basic {token}"}):
        r = service.client.get("/admin/v1/brand", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "unauthorized"
        assert "WWW-Authenticate" in r.headers
    r = service.client.get("/admin/v1/brand", headers=service.h("acme"))
    assert r.status_code == 200 and r.json()["slug"] == "acme"
    assert "sealed_private" not in r.text and '"d"' not in r.text
    # a second key for the same brand works; only its hash is stored
    r = service.client.post("/admin/v1/api-keys", json={"label": "pos"},
                            headers=service.h("acme"))
    assert r.status_code == 201
    second = r.json()["token"]
    r = service.client.get("/admin/v1/brand", headers={"Authorization": f"Bearer {second}"})
    assert r.json()["slug"] == "acme"


def test_cross_brand_access_refused(service: Service) -> None:
    service.brand("acme")
    service.brand("rival")
    program = service.program("acme")
    member = service.enrol("acme", program["id"])
    mid = member["id"]
    r = service.post("acme", f"/admin/v1/members/{mid}/points/earn", {"points": 500})
    assert r.status_code == 201
    entry_id = r.json()["entry"]["id"]
    r = service.post("acme", f"/admin/v1/members/{mid}/holds", {"points": 100})
    hold_id = r.json()["hold"]["id"]

    # The rival brand tries everything it can name.
    probes = [
        ("GET", f"/admin/v1/members/{mid}", None),
        ("GET", f"/admin/v1/members/{mid}/balance", None),
        ("GET", f"/admin/v1/members/{mid}/ledger", None),
        ("GET", f"/admin/v1/programs/{program['id']}", None),
        ("POST", f"/admin/v1/members/{mid}/points/earn", {"points": 1}),
        ("POST", f"/admin/v1/members/{mid}/points/redeem", {"points": 1}),
        ("POST", f"/admin/v1/members/{mid}/points/adjust",
         {"points": -1, "reason": "x", "operator": "y"}),
        ("POST", f"/admin/v1/members/{mid}/points/reverse",
         {"entry_id": entry_id, "reason": "x"}),
        ("POST", f"/admin/v1/members/{mid}/holds", {"points": 1}),
        ("POST", f"/admin/v1/holds/{hold_id}/capture", {}),
        ("POST", f"/admin/v1/holds/{hold_id}/release", {}),
        ("POST", f"/admin/v1/members/{mid}/tier/evaluate", None),
    ]
    for method, path, body in probes:
        r = service.client.request(method, path, json=body,
                                   headers=service.h("rival", "k-" + path + method))
        assert r.status_code == 404, (path, r.text)
        assert r.json()["code"] == "not_found"
    # Enrolling into another brand's program is refused too.
    r = service.client.post("/admin/v1/members", headers=service.h("rival"),
                            json={"program_id": program["id"], "did": "did:key:z6Mkxxxxxxxx",
                                  "proof": "a.b.c"})
    assert r.status_code == 404
    assert service.client.get("/admin/v1/programs", headers=service.h("rival")).json() == []
    # And nothing moved for acme.
    bal = service.client.get(f"/admin/v1/members/{mid}/balance", headers=service.h("acme"))
    assert bal.json()["available"] == 400 and bal.json()["held"] == 100


def test_admin_bodies_are_parsed_strictly(service: Service) -> None:
    service.brand("acme")
    # Two labels at once: FastAPI alone would keep the last; the service refuses.
    r = service.client.post("/admin/v1/api-keys", content=b'{"label": "a", "label": "b"}',
                            headers={**service.h("acme"), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed"
    r = service.client.post("/admin/v1/api-keys", content=b'{"label": NaN}',
                            headers={**service.h("acme"), "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed"
