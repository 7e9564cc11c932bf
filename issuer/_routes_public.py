"""Unauthenticated routes: each brand's did:web document (``/healthz`` and ``/readyz``
come from :mod:`tessera.health`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from issuer._admin import brand_by_slug, brand_did_document
from issuer._app import PROBLEM_RESPONSES, ReadSessionDep, StateDep

__all__ = ["router"]

router = APIRouter(tags=["public"])


class DidDocumentResponse(JSONResponse):
    media_type = "application/did+json"


@router.get("/brands/{slug}/did.json", responses={404: PROBLEM_RESPONSES[404]},
            response_model=dict[str, Any], response_class=DidDocumentResponse)
def did_json(slug: str, session: ReadSessionDep, state: StateDep) -> JSONResponse:
    """The brand's DID document (did:web §3.2: ``did:web:host:brands:<slug>``)."""
    brand = brand_by_slug(session, slug=slug)
    document = brand_did_document(session, keystore=state.keystore, brand=brand)
    # Short cache: a rotation must reach verifiers quickly, but a CDN may
    # still absorb verification traffic.
    return DidDocumentResponse(document, headers={"Cache-Control": "public, max-age=300"})
