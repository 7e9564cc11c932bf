"""Till keys: only the till that made a checkout request can see it (issue 9, item 8).

The request id travels in the QR code's ``request_uri``, so anyone who reads
the till's screen knows it. Knowing it must not let anyone create requests in
the partner's name, read the claims a member disclosed, watch the events or
fetch the QR code: those routes need a till key, and the request's own till.
Only the request object and the response endpoint are public.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tessera.did import Resolver, did_jwk
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from verifier._cli import verifier_app
from verifier._service import ServiceSettings, create_app, settings_from_env
from verifier._tills import TillKeys
from verifier.testing import TestIssuer

BASE = "https://till.test"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tills() -> TillKeys:
    return TillKeys()


@pytest.fixture
def brand() -> TestIssuer:
    return TestIssuer()


def _app(brand: TestIssuer, tills: TillKeys | None) -> Any:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    return create_app(ServiceSettings(
        base_url=BASE, trust=brand.trust_list(), signer=signer, store_url="memory://",
        resolver=Resolver(documents={brand.did: brand.did_document}), tills=tills))


@pytest.fixture
def client(brand: TestIssuer, tills: TillKeys) -> Iterator[TestClient]:
    with TestClient(_app(brand, tills), base_url=BASE) as c:
        yield c


def _create(client: TestClient, token: str) -> dict[str, Any]:
    r = client.post("/requests", json={"policy": "gold-10"}, headers=_bearer(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _till_routes(created: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/policies", {}),
        ("POST", "/requests", {"json": {"policy": "gold-10"}}),
        ("POST", "/requests", {"json": {"dcql": {"credentials": [{
            "id": "m", "format": "dc+sd-jwt", "claims": [{"path": ["name"]}]}]},
            "purpose": "Your bank needs your name to refund you"}}),
        ("GET", created["qr"], {}),
        ("GET", created["result"], {}),
        ("GET", created["events"], {}),
    ]


def _bad_credentials(tills: TillKeys, token: str) -> list[dict[str, Any]]:
    revoked = tills.create("lost till")
    tills.revoke(str(revoked["id"]))
    key_id = token.removeprefix("tvk_").split("_", 1)[0]
    return [
        {},
        {"Authorization": ""},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},  # no scheme
        _bearer(f"tvk_{key_id}_not-the-secret"),  # a real till id, a wrong secret
        _bearer("tvk_0000000000000000_" + token.split("_", 2)[2]),  # right secret, other id
        _bearer(token.removeprefix("tvk_")),
        _bearer("tsk_" + token.removeprefix("tvk_")),  # an issuer API-key prefix
        _bearer(str(revoked["token"])),
        {"Authorization": ("Bearer tvk_" + "é" * 40).encode("latin-1")},
    ]


def test_every_till_route_refuses_a_missing_or_wrong_key(client: TestClient,
                                                         tills: TillKeys) -> None:
    token = str(tills.create("lane 1")["token"])
    created = _create(client, token)
    for method, path, kwargs in _till_routes(created):
        for headers in _bad_credentials(tills, token):
            r = client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == ErrorCode.UNAUTHORIZED.value
            assert r.headers["www-authenticate"].startswith("Bearer")
    # Nothing was created by the refused calls, and the refused reads saw nothing.
    view = client.get(created["result"], headers=_bearer(token)).json()
    assert view["status"] == "pending" and view["result"] is None


def test_a_till_sees_only_its_own_requests(client: TestClient, tills: TillKeys) -> None:
    lane1 = str(tills.create("lane 1")["token"])
    lane2 = str(tills.create("lane 2")["token"])
    created = _create(client, lane1)
    # The member declines, so the checkout is done and its event stream ends.
    obj = client.get(created["request_uri"]).text
    assert client.post("/response", data={"error": "access_denied",
                                          "state": _state(obj)}).status_code == 200
    for method, path, kwargs in _till_routes(created)[3:]:
        r = client.request(method, path, headers=_bearer(lane2), **kwargs)
        # As an unknown id: lane 2 learns nothing about lane 1's requests.
        assert r.status_code == 404 and r.json()["code"] == "not_found", path
        assert client.request(method, path, headers=_bearer(lane1),
                              **kwargs).status_code == 200, path


def test_only_the_wallet_routes_are_public(client: TestClient, tills: TillKeys) -> None:
    created = _create(client, str(tills.create("lane 1")["token"]))
    # No key: the wallet's two calls work.
    obj = client.get(f"/r/{created['id']}")
    assert obj.status_code == 200, obj.text
    answer = client.post("/response", data={"error": "access_denied",
                                            "state": _state(obj.text)})
    assert answer.status_code == 200, answer.text
    for path in ("/", "/checkout.js", "/checkout.css"):
        assert client.get(path).status_code == 200
    # The OpenAPI document says which routes take the till key, and which do not.
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["tillKey"]["scheme"].lower() == "bearer"
    guarded = {(path, method) for path, ops in spec["paths"].items()
               for method, op in ops.items() if op.get("security")}
    assert guarded == {("/policies", "get"), ("/requests", "post"),
                       ("/requests/{request_id}/qr.png", "get"),
                       ("/requests/{request_id}/result", "get"),
                       ("/requests/{request_id}/events", "get")}


def _state(request_object: str) -> str:
    from tessera.jose import decode_unverified

    return str(decode_unverified(request_object).payload["state"])


def test_a_service_without_tills_refuses_every_till(brand: TestIssuer) -> None:
    with TestClient(_app(brand, None), base_url=BASE) as client:
        r = client.post("/requests", json={"policy": "gold-10"},
                        headers=_bearer(str(TillKeys().create()["token"])))
        assert r.status_code == 401


# -- the till key file and its CLI ---------------------------------------------------------------


def _cli(*args: str) -> Any:
    result = CliRunner().invoke(verifier_app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_till_cli_create_list_revoke(brand: TestIssuer, tmp_path: Path) -> None:
    path = tmp_path / "tills.json"
    made = _cli("till", "create", "--tills", str(path), "--label", "store 12, lane 3")
    other = _cli("till", "create", "--tills", str(path), "--label", "lane 4")
    token = made["token"]
    assert token.startswith(f"tvk_{made['id']}_") and made["revoked_at"] is None
    # Only hashes are stored: the secret is nowhere in the file, which only its owner reads.
    stored = path.read_text()
    assert token.split("_", 2)[2] not in stored and "token" not in stored
    assert path.stat().st_mode & 0o077 == 0
    listed = _cli("till", "list", "--tills", str(path))
    assert [t["id"] for t in listed] == [made["id"], other["id"]]
    assert all(set(t) == {"id", "label", "created_at", "revoked_at"} for t in listed)

    trust = tmp_path / "trust.json"
    trust.write_text(brand.trust_list().to_json())
    settings = settings_from_env({"TESSERA_VERIFIER_TRUST": str(trust),
                                  "TESSERA_VERIFIER_STORE": "memory://",
                                  "TESSERA_VERIFIER_TILLS": str(path)})
    with TestClient(create_app(settings), base_url=BASE) as client:
        assert client.get("/policies", headers=_bearer(token)).status_code == 200
        # Revoked by the operator in another process: refused on the next request,
        # without a restart; the other till keeps working.
        revoked = _cli("till", "revoke", "--tills", str(path), made["id"])
        assert revoked["revoked_at"] is not None
        os.utime(path, ns=(0, 10**18))  # a coarse file clock must not hide the change
        assert client.get("/policies", headers=_bearer(token)).status_code == 401
        assert client.get("/policies",
                          headers=_bearer(other["token"])).status_code == 200
    result = CliRunner().invoke(verifier_app, ["till", "revoke", "--tills", str(path), "nope"])
    assert result.exit_code == 2 and "not_found" in result.output


def test_several_workers_need_a_till_file(brand: TestIssuer, tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    trust.write_text(brand.trust_list().to_json())
    env = {"TESSERA_VERIFIER_TRUST": str(trust), "TESSERA_VERIFIER_WORKERS": "2",
           "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}",
           "TESSERA_VERIFIER_KEY": str(tmp_path / "v.jwk")}
    with pytest.raises(TesseraError) as err:
        settings_from_env(env)
    assert "--tills" in err.value.detail
    settings = settings_from_env({**env, "TESSERA_VERIFIER_TILLS": str(tmp_path / "t.json"),
                                  "TESSERA_RATE_LIMITS": "requests=30/min"})
    assert settings.tills is not None and settings.tills.list() == []
    # Every worker reads the operator's rate limits from the same environment.
    from tessera.ratelimit import Limit

    assert settings.rate_limits.overrides == {"requests": Limit(30, 60)}
