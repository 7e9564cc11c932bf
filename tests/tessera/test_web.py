"""The shared HTTP glue: problem documents and strict request bodies."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tessera.errors import ErrorCode, TesseraError
from tessera.web import StrictBodies, install_problem_handlers


class Body(BaseModel):
    points: int


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(StrictBodies, max_bytes=1024)

    @app.post("/json")
    def take_json(body: Body) -> dict[str, int]:
        return {"points": body.points}

    @app.post("/form")
    async def take_form(request: Request) -> dict[str, str]:
        return {"raw": (await request.body()).decode()}

    @app.get("/boom")
    def boom() -> None:
        raise TesseraError(ErrorCode.INSUFFICIENT_BALANCE, "not enough points")

    @app.get("/items")
    def list_items() -> list[int]:
        return []

    # A second route of the same path, from an included router.
    router = APIRouter()

    @router.delete("/items")
    def delete_items() -> None:
        return None

    app.include_router(router)

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


def _problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith(code)
    return body


def test_valid_json_reaches_the_route(client: TestClient) -> None:
    r = client.post("/json", content=b'{"points": 5}', headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {"points": 5}


@pytest.mark.parametrize("raw", [
    b'{"points": 5, "points": 500}',          # duplicate member: which one is meant?
    b'{"points": NaN}',
    b'{"points": 5',
])
def test_ambiguous_or_broken_json_is_malformed(client: TestClient, raw: bytes) -> None:
    r = client.post("/json", content=raw, headers={"content-type": "application/json"})
    _problem(r, 400, "malformed")


def test_oversized_and_deep_bodies_are_refused(client: TestClient) -> None:
    big = b'{"points": 1, "pad": "' + b"x" * 2000 + b'"}'
    _problem(client.post("/json", content=big, headers={"content-type": "application/json"}),
             413, "too_large")
    deep = b"[" * 40 + b"]" * 40
    _problem(client.post("/json", content=deep, headers={"content-type": "application/json"}),
             413, "too_large")
    _problem(client.post("/form", content=b"a=" + b"x" * 2000,
                         headers={"content-type": "application/x-www-form-urlencoded"}),
             413, "too_large")


def test_non_json_bodies_pass_through(client: TestClient) -> None:
    r = client.post("/form", content=b"a=1&a=2",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == {"raw": "a=1&a=2"}


def test_errors_are_problem_documents(client: TestClient) -> None:
    _problem(client.get("/boom"), 409, "insufficient_balance")
    _problem(client.get("/nowhere"), 404, "not_found")
    body = _problem(client.get("/crash"), 500, "internal_error")
    assert "secret" not in body["detail"]
    body = _problem(client.post("/json", json={"points": "many"}), 422, "invalid_request")
    assert body["errors"][0]["loc"][-1] == "points"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "TRACE"])
def test_wrong_method_is_405_with_every_allowed_method(client: TestClient, method: str) -> None:
    r = client.request(method, "/items")
    _problem(r, 405, "invalid_request")
    # RFC 9110 §15.5.6: a 405 MUST carry Allow; both routes of the path count.
    assert set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}
    assert client.request(method, "/boom").headers["allow"] == "GET"


def test_a_customizer_keeps_405_and_may_make_oauth_errors_application_json() -> None:
    app = FastAPI()

    def oauth(request: Request, error: TesseraError) -> tuple[int | None, dict[str, Any]]:
        return 400, {"error": "invalid_request", "error_description": error.detail}

    install_problem_handlers(app, customize=oauth)
    app.add_middleware(StrictBodies, max_bytes=1024, customize=oauth)

    @app.post("/token")
    def token() -> None:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such code")

    client = TestClient(app)
    r = client.post("/token")
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "invalid_request" and r.json()["code"] == "not_found"
    r = client.post("/token", content=b'{"a": 1, "a": 1}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    r = client.request("TRACE", "/token")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/problem+json" and "error" not in r.json()
