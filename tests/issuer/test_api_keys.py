"""Revoking brand API keys and partner keys through the admin API."""

from __future__ import annotations

from typing import Any

from .conftest import Service


def _key_id(token: str) -> str:
    return token.split("_")[1]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_brand_revokes_its_own_keys(service: Service) -> None:
    c = service.client
    first = service.brand("acme")
    service.brand("beta")
    r = c.post("/admin/v1/api-keys", json={"label": "till"}, headers=service.h("acme"))
    assert r.status_code == 201, r.text
    second = r.json()["token"]
    assert c.get("/admin/v1/brand", headers=_auth(second)).status_code == 200

    listed = c.get("/admin/v1/api-keys", headers=service.h("acme")).json()
    assert [k["id"] for k in listed] == [_key_id(first), _key_id(second)]
    assert [k["label"] for k in listed] == ["initial", "till"]
    assert all(set(k) == {"id", "label", "created_at", "revoked_at"} for k in listed)
    # The secret is everything after the id (base64url, so it may itself hold "_").
    assert second.split("_", 2)[2] not in str(listed)

    # Another brand's key is not_found, and stays usable.
    r = c.delete(f"/admin/v1/api-keys/{_key_id(second)}", headers=service.h("beta"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert c.get("/admin/v1/brand", headers=_auth(second)).status_code == 200
    r = c.delete("/admin/v1/api-keys/nope", headers=service.h("acme"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"

    r = c.delete(f"/admin/v1/api-keys/{_key_id(second)}", headers=service.h("acme"))
    assert r.status_code == 200, r.text
    revoked_at = r.json()["revoked_at"]
    assert revoked_at is not None
    r = c.get("/admin/v1/brand", headers=_auth(second))
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    # Revoking again changes nothing.
    r = c.delete(f"/admin/v1/api-keys/{_key_id(second)}", headers=service.h("acme"))
    assert r.status_code == 200 and r.json()["revoked_at"] == revoked_at

    # The key in use is now the last active one.
    r = c.delete(f"/admin/v1/api-keys/{_key_id(first)}", headers=service.h("acme"))
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    assert c.get("/admin/v1/brand", headers=service.h("acme")).status_code == 200
    # A revoked key cannot revoke anything either.
    r = c.delete(f"/admin/v1/api-keys/{_key_id(first)}", headers=_auth(second))
    assert r.status_code == 401
    # With a second active key, the one in use may go.
    third = c.post("/admin/v1/api-keys", json={}, headers=service.h("acme")).json()["token"]
    r = c.delete(f"/admin/v1/api-keys/{_key_id(first)}", headers=service.h("acme"))
    assert r.status_code == 200
    assert c.get("/admin/v1/brand", headers=service.h("acme")).status_code == 401
    listed = c.get("/admin/v1/api-keys", headers=_auth(third)).json()
    assert [k["revoked_at"] is not None for k in listed] == [True, True, False]


def test_partner_keys_are_revoked_by_their_brand_only(service: Service) -> None:
    c = service.client
    service.brand("acme")
    service.brand("beta")
    r = c.post("/admin/v1/partners", headers=service.h("acme"),
               json={"name": "cafe", "client_id": "redirect_uri:https://cafe.example/cb"})
    assert r.status_code == 201, r.text
    partner: dict[str, Any] = r.json()
    old = partner["token"]

    def partner_call(token: str) -> Any:
        # Any partner route: authentication comes before the lookup.
        return c.get("/brands/acme/redemptions/unknown", headers=_auth(token))

    assert partner_call(old).json()["code"] == "not_found"
    r = c.post(f"/admin/v1/partners/{partner['id']}/keys", headers=service.h("acme"))
    assert r.status_code == 201, r.text
    new = r.json()["token"]
    assert new.startswith("tpk_")
    r = c.post(f"/admin/v1/partners/{partner['id']}/keys", headers=service.h("beta"))
    assert r.status_code == 404

    path = f"/admin/v1/partners/{partner['id']}/keys/{_key_id(old)}"
    r = c.delete(path, headers=service.h("beta"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert partner_call(old).json()["code"] == "not_found"  # still works
    r = c.delete(path, headers=service.h("acme"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    r = partner_call(old)
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert partner_call(new).json()["code"] == "not_found"
    # A brand key is not a partner key and the other way round.
    assert c.delete(f"/admin/v1/partners/{partner['id']}/keys/{_key_id(new)}",
                    headers=_auth(new)).status_code == 401

    listed = c.get("/admin/v1/partners", headers=service.h("acme")).json()
    assert [p["name"] for p in listed] == ["cafe"]
    assert [(k["id"], k["revoked_at"] is not None) for k in listed[0]["keys"]] == \
        [(_key_id(old), True), (_key_id(new), False)]
    assert "secret" not in str(listed) and new.split("_", 2)[2] not in str(listed)
    assert c.get("/admin/v1/partners", headers=service.h("beta")).json() == []
