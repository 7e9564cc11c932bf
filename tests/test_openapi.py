"""The OpenAPI documents of both services say what the services answer (issue 9 item 20).

schemathesis checks the same against running services in .ci/schemathesis.sh; these
assertions name each gap it found, so a regression fails here first, without a server.
"""

from __future__ import annotations

import secrets
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from issuer._app import create_app as create_issuer
from issuer._settings import Settings
from tessera.did import did_jwk
from tessera.keys import generate_signer
from verifier._service import ServiceSettings
from verifier._service import create_app as create_verifier
from verifier._trust import TrustList

OAUTH = {"/brands/{slug}/token", "/brands/{slug}/nonce", "/brands/{slug}/credential"}


@pytest.fixture(scope="module")
def issuer_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    db = tmp_path_factory.mktemp("issuer") / "issuer.db"
    return create_issuer(Settings(database_url=f"sqlite:///{db}",
                                  master_key=secrets.token_bytes(32),
                                  public_url="https://issuer.example"))


@pytest.fixture(scope="module")
def issuer_doc(issuer_app: FastAPI) -> dict[str, Any]:
    doc: dict[str, Any] = issuer_app.openapi()
    return doc


@pytest.fixture(scope="module")
def verifier_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    path: Path = tmp_path_factory.mktemp("verifier")
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    return create_verifier(ServiceSettings(base_url="https://shop.example", trust=TrustList({}),
                                           signer=signer,
                                           store_url=f"sqlite:///{path / 'verifier.db'}"))


@pytest.fixture(scope="module")
def verifier_doc(verifier_app: FastAPI) -> dict[str, Any]:
    doc: dict[str, Any] = verifier_app.openapi()
    return doc


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # Recent FastAPI keeps an included router behind a wrapper of its own.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models a body annotation names, nested ones included."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models(field.annotation)
    for arg in typing.get_args(annotation):
        yield from _models(arg)


@pytest.mark.parametrize("which", ["issuer_app", "verifier_app"])
def test_every_body_model_is_strict(which: str, request: pytest.FixtureRequest) -> None:
    """A body that does not fit the schema is refused: no JSON false or "5" for an integer.

    schemathesis's negative_data_rejection checks the same against running services
    (.ci/schemathesis.sh); this names the model without a server.
    """
    app: FastAPI = request.getfixturevalue(which)
    bodies = [route.body_field.field_info.annotation for route in _api_routes(app.routes)
              if route.body_field is not None]
    models = {model.__qualname__: model for body in bodies for model in _models(body)}
    assert {"ProgramCreate", "TierCreate", "EarnRequest", "TxCodeRequest",
            "CreateRequest"} & set(models), sorted(models)
    lax = sorted(name for name, model in models.items() if not model.model_config.get("strict"))
    assert lax == []


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items()
            for method, op in item.items() if isinstance(op, dict) and "responses" in op]


def _types(op: dict[str, Any], status: str) -> set[str]:
    return set(op["responses"][status].get("content", {}))


@pytest.mark.parametrize("which", ["issuer_doc", "verifier_doc"])
def test_every_error_is_documented_as_what_leaves(which: str,
                                                  request: pytest.FixtureRequest) -> None:
    doc = request.getfixturevalue(which)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert set(doc["components"]["schemas"]["Problem"]["required"]) >= {"type", "status", "code"}
    bodies = 0
    for path, method, op in _operations(doc):
        where = f"{method.upper()} {path}"
        oauth = path in OAUTH
        for status, response in op["responses"].items():
            if status.startswith("4"):
                content = response.get("content", {})
                assert content, where
                for media, entry in content.items():
                    if media == "application/problem+json":
                        assert entry.get("schema"), f"{where} {status}: no schema"
                # FastAPI's validation shape never leaves; OAuth errors are application/json.
                if oauth:
                    assert set(content) == {"application/json"}, where
                    assert content["application/json"]["schema"]["$ref"].endswith("/OAuthError")
        if "requestBody" in op:
            bodies += 1
            # The strict-body middleware refuses malformed JSON (400) and big bodies (413).
            assert "400" in op["responses"], where
            if not oauth:
                assert "413" in op["responses"], where
                assert "application/problem+json" in _types(op, "400"), where
    assert bodies >= (21 if which == "issuer_doc" else 4)


def test_issuer_operations(issuer_doc: dict[str, Any]) -> None:
    paths = issuer_doc["paths"]
    credential = paths["/brands/{slug}/credential"]["post"]
    assert {"400", "401", "403"} <= set(credential["responses"])
    assert "422" not in credential["responses"]
    assert credential["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "credential_configuration_id", "proofs"]
    token = paths["/brands/{slug}/token"]["post"]
    assert set(token["requestBody"]["content"]) == {"application/x-www-form-urlencoded"}
    qr = paths["/brands/{slug}/offers/{reference}/qr.png"]["get"]
    assert _types(qr, "200") == {"image/png"}
    did = paths["/brands/{slug}/did.json"]["get"]
    assert _types(did, "200") == {"application/did+json"}
    assert "404" in did["responses"]


def test_issuer_security_schemes_are_distinct(issuer_doc: dict[str, Any]) -> None:
    schemes = issuer_doc["components"]["securitySchemes"]
    assert "brand API key" in schemes["ApiKey"]["description"]
    assert "partner key" in schemes["PartnerKey"]["description"]
    for path, _method, op in _operations(issuer_doc):
        names = {name for entry in op.get("security", []) for name in entry}
        if path.startswith("/admin/"):
            assert names == {"ApiKey"}, path
        elif "redemptions" in path or path.endswith(("/earns", "/settlement")):
            assert names == {"PartnerKey"}, path


def test_verifier_operations(verifier_doc: dict[str, Any]) -> None:
    paths = verifier_doc["paths"]
    assert _types(paths["/requests/{request_id}/qr.png"]["get"], "200") == {"image/png"}
    assert _types(paths["/requests/{request_id}/events"]["get"], "200") == {"text/event-stream"}
    assert _types(paths["/r/{request_id}"]["get"], "200") == {
        "application/oauth-authz-req+jwt"}
    for path in ("/requests/{request_id}/qr.png", "/requests/{request_id}/events",
                 "/r/{request_id}", "/requests/{request_id}/result"):
        assert "404" in paths[path]["get"]["responses"], path
    assert "409" in paths["/r/{request_id}"]["get"]["responses"]
    assert "404" in paths["/requests"]["post"]["responses"]
    response = paths["/response"]["post"]
    assert set(response["requestBody"]["content"]) == {"application/x-www-form-urlencoded"}
    assert {"400", "404", "409", "413", "415"} <= set(response["responses"])
