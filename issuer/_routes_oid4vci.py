"""Public OpenID4VCI and status list routes of every brand.

Errors go through the app's one problem handler; the dependency
:func:`issuer._app.oauth_errors` tells it which OAuth ``error`` member to add
(RFC 6749 §5.2 at the token endpoint, OpenID4VCI §8.3.1.2 and RFC 6750 §3.1
at the credential endpoint), which makes the answer ``application/json``.
"""

from __future__ import annotations

import contextlib
import io
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from issuer import _ledger
from issuer._admin import brand_by_slug, lookup_brand
from issuer._app import (
    PROBLEM_RESPONSES,
    NowDep,
    ReadSessionDep,
    StateDep,
    oauth_errors,
    oauth_responses,
)
from issuer._issuance import (
    CONFIGURATIONS,
    SD_JWT,
    PreparedBatch,
    issuer_url,
    prepare_batch,
    read_ahead,
    status_list_url,
)
from issuer._models import CredentialState, KeyStatus, StatusListShard
from issuer._openid4vci import (
    GRANT_PRE_AUTHORIZED,
    GRANT_REFRESH_TOKEN,
    authorization_server_metadata,
    authorize,
    check_nonce,
    check_offer_reference,
    check_proofs,
    credential_issuer_metadata,
    issue_nonce,
    offer_by_reference,
    parse_form,
    proofs_from_request,
    record_issuance,
    token_request,
)
from issuer._status_lists import change_state
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.nonces import SqlNonceStore
from tessera.observability import count_outcome
from tessera.web import PNG_CONTENT, PngResponse

__all__ = ["router"]

router = APIRouter(tags=["openid4vci"])
NO_STORE = {"Cache-Control": "no-store"}
_404: Final[dict[int | str, dict[str, Any]]] = {404: PROBLEM_RESPONSES[404]}
# The service's body limit. Ten jwt proofs that each carry the attestation of
# all ten keys take about 33 KB; larger batches send the attestation once
# (the attestation proof type, or one jwt proof: every attested key is bound).
MAX_CREDENTIAL_REQUEST: Final = 64 * 1024


def _signing_algs(state: Any, session: Any, brand: Any) -> list[str]:
    keys = state.keystore.public_keys(session, brand_id=brand.id, did=brand.did)
    return sorted({k.alg for k in keys if k.status == KeyStatus.ACTIVE})


# -- metadata ------------------------------------------------------------------------------


def _issuer_metadata(slug: str, session: ReadSessionDep, state: StateDep) -> JSONResponse:
    brand = brand_by_slug(session, slug=slug)
    body = credential_issuer_metadata(state.settings, brand, _signing_algs(state, session, brand))
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})


def _as_metadata(slug: str, session: ReadSessionDep, state: StateDep) -> JSONResponse:
    brand = brand_by_slug(session, slug=slug)
    return JSONResponse(authorization_server_metadata(state.settings, brand),
                        headers={"Cache-Control": "public, max-age=300"})


# OpenID4VCI §12.2.2 / RFC 8414 §3.1: the well-known suffix goes between host
# and path; the appended form is what many wallets of the drafts still fetch.
for _path in ("/.well-known/openid-credential-issuer/brands/{slug}",
              "/brands/{slug}/.well-known/openid-credential-issuer"):
    router.add_api_route(_path, _issuer_metadata, methods=["GET"], responses=_404,
                         response_model=dict[str, Any], summary="Credential Issuer Metadata")
for _path in ("/.well-known/oauth-authorization-server/brands/{slug}",
              "/brands/{slug}/.well-known/oauth-authorization-server"):
    router.add_api_route(_path, _as_metadata, methods=["GET"], responses=_404,
                         response_model=dict[str, Any], summary="OAuth AS Metadata")


# -- offers by reference -------------------------------------------------------------------


@router.get("/brands/{slug}/offers/{reference}", response_model=dict[str, Any], responses=_404)
def get_offer(slug: str, reference: str, session: ReadSessionDep, state: StateDep,
              now: NowDep) -> JSONResponse:
    """The Credential Offer behind a ``credential_offer_uri`` (OpenID4VCI §4.1.3)."""
    brand = brand_by_slug(session, slug=slug)
    body = offer_by_reference(session, settings=state.settings, brand=brand,
                              reference=reference, now=now)
    return JSONResponse(body, headers=NO_STORE)


@router.get("/brands/{slug}/offers/{reference}/qr.png", response_class=PngResponse,
            responses={**_404, 200: {"content": PNG_CONTENT}})
def get_offer_qr(slug: str, reference: str, session: ReadSessionDep, state: StateDep,
                 now: NowDep) -> Response:
    """A QR code of the by-reference offer URI, for a wallet's camera."""
    import urllib.parse

    import segno

    brand = brand_by_slug(session, slug=slug)
    check_offer_reference(session, brand=brand, reference=reference, now=now)
    uri = "openid-credential-offer://?" + urllib.parse.urlencode(
        {"credential_offer_uri": f"{issuer_url(state.settings, brand)}/offers/{reference}"})
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="png", scale=6, border=4)
    return PngResponse(buffer.getvalue(), headers=NO_STORE)


# -- token, nonce, credential --------------------------------------------------------------


_RATE_LIMITED: Final = ("temporarily_unavailable: over this client's rate limit; the "
                        "Retry-After header says after how many seconds to retry")
_TOKEN_FORM: Final = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["grant_type"],
        "properties": {"grant_type": {"type": "string",
                                      "enum": [GRANT_PRE_AUTHORIZED, GRANT_REFRESH_TOKEN]},
                       "pre-authorized_code": {"type": "string"},
                       "tx_code": {"type": "string"},
                       "refresh_token": {"type": "string"},
                       "scope": {"type": "string"}}}}}}}
_CREDENTIAL_REQUEST: Final = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["credential_configuration_id", "proofs"],
        "properties": {"credential_configuration_id": {"type": "string"},
                       "proofs": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                  "properties": {
                           "jwt": {"type": "array", "items": {"type": "string"},
                                   "minItems": 1},
                           "attestation": {"type": "array", "items": {"type": "string"},
                                           "minItems": 1, "maxItems": 1}}}}}}}}}


@router.post("/brands/{slug}/token", dependencies=[Depends(oauth_errors("token"))],
             response_model=dict[str, Any], openapi_extra=_TOKEN_FORM,
             responses=oauth_responses({
                 400: "invalid_request, invalid_grant or unsupported_grant_type",
                 429: _RATE_LIMITED}))
async def token(slug: str, request: Request, state: StateDep, now: NowDep) -> JSONResponse:
    """Token endpoint (OpenID4VCI §6): ``grant_type`` pre-authorized_code or refresh_token
    (RFC 6749 §6, rotated), form-encoded; both answer an access and a refresh token."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "the token request must be application/x-www-form-urlencoded")
    form = parse_form(await request.body())

    def run() -> Any:
        brand = lookup_brand(state.engine, slug=slug)
        # Not durable on its own: the credential commit that uses the token is
        # (tessera.sqlite.write_transaction); a power cut before it can only take
        # back a redemption nothing was issued with.
        return _ledger.run_write(state.engine, lambda session: token_request(
            session, settings=state.settings, brand=brand, form=form, now=now), durable=False)

    outcome = await _in_thread(run)
    if outcome.error is not None:
        raise outcome.error
    return JSONResponse(outcome.body, headers=NO_STORE)


@router.post("/brands/{slug}/nonce", dependencies=[Depends(oauth_errors("credential"))],
             response_model=dict[str, str],
             responses=oauth_responses({400: "no such brand, or a malformed request",
                                        429: _RATE_LIMITED}))
def nonce(slug: str, state: StateDep) -> JSONResponse:
    """Nonce endpoint (OpenID4VCI §7): a fresh single-use ``c_nonce``."""
    # The brand from the cache (or a read scope ended before the nonce store
    # writes in its own transaction).
    brand = lookup_brand(state.engine, slug=slug)
    return JSONResponse({"c_nonce": issue_nonce(state.nonces, brand=brand)}, headers=NO_STORE)


@router.post("/brands/{slug}/credential",
             dependencies=[Depends(oauth_errors("credential")), count_outcome("issuance")],
             response_model=dict[str, Any], openapi_extra=_CREDENTIAL_REQUEST,
             responses=oauth_responses({
                 400: "invalid_credential_request, invalid_proof, invalid_nonce, "
                      "unknown_credential_configuration or credential_request_denied",
                 401: "invalid_token: missing, unknown or expired access token",
                 403: "insufficient_scope: the token does not cover this configuration"}))
async def credential(slug: str, request: Request, state: StateDep, now: NowDep,
                     authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Credential endpoint (OpenID4VCI §8): a batch of credentials, one per proven or
    attested key (``batch_credential_issuance`` in the metadata says how many)."""
    from issuer._db import read_scope

    raw = await request.body()
    # The c_nonce is consumed in the credential's own write transaction when the store
    # is a table of the service database (the default): one transaction fewer per
    # request, and on SQLite the only way (the file's write gate admits one writer).
    nonces = state.nonces
    in_write = nonces if isinstance(nonces, SqlNonceStore) \
        and nonces.engine is state.engine else None

    def check() -> Any:
        brand = lookup_brand(state.engine, slug=slug)
        # Read-only: the write below takes the lock; on SQLite this takes none.
        with read_scope(state.engine) as session:
            offer, member = authorize(session, brand=brand, authorization=authorization, now=now)
            body = parse_json_object(raw, max_bytes=MAX_CREDENTIAL_REQUEST)
            config_id, proof_type, proofs = proofs_from_request(body)
            if config_id not in offer.configuration_ids:
                raise TesseraError(ErrorCode.FORBIDDEN, "the access token does not cover "
                                                        "this credential configuration")
            # What the write would read that need not be read under its lock (the
            # programme, the signer, the member's log figures): the SQLite write gate
            # is held for the write alone (bench/README.md "Issuance on SQLite, the
            # gate's hold (session 8)").
            ahead = read_ahead(session, settings=state.settings, keystore=state.keystore,
                               brand=brand, member=member, configuration_id=config_id, now=now)
        keys, nonce = check_proofs(
            proof_type, proofs, audience=issuer_url(state.settings, brand), member=member,
            resolver=state.resolver, now=now, batch_size=state.settings.batch_size_for(config_id),
            attestations=CONFIGURATIONS[config_id].format == SD_JWT)
        if ahead is not None:
            ahead = ahead.with_keys(keys)
        if in_write is None:
            # Another store (Redis): consumed in its own step before the write.
            check_nonce(nonces.consume(nonce), brand=brand)
        return brand, offer.id, member.id, config_id, keys, nonce, ahead

    def check_and_issue() -> list[Any]:
        # One thread-pool hop for the whole request: the checks (read scope, proofs),
        # then the write, the c_nonce consumed first in it.
        brand, offer_id, member_id, config_id, keys, nonce, ahead = check()

        def issue(session: Any) -> PreparedBatch:
            if in_write is not None:
                check_nonce(in_write.consume_on(session.connection(), nonce), brand=brand)
            record_issuance(session, offer_id=offer_id, configuration_id=config_id)
            member = _ledger.lock_member(session, brand_id=brand.id, member_id=member_id)
            return prepare_batch(session, settings=state.settings, keystore=state.keystore,
                                 brand=brand, member=member, configuration_id=config_id,
                                 holder_keys=keys, now=now, ahead=ahead)

        try:
            batch: PreparedBatch = _ledger.run_write(state.engine, issue)
        except Exception:
            if in_write is not None:
                # The write rolled the nonce back with it; a request whose proofs checked
                # out uses its nonce up all the same, issued or not (as when the nonce was
                # consumed before the write): a retry needs a fresh one.
                with contextlib.suppress(Exception):
                    nonces.consume(nonce)
            raise
        # Signed after the commit: the write lock is not held over the batch's signatures.
        try:
            return batch.sign()
        except Exception:
            # A batch that could not be signed (a KMS refusing, say) was never delivered:
            # its committed rows are revoked by a write of their own (the whole batch,
            # change_state), not left as valid credentials that no wallet holds.
            with contextlib.suppress(Exception):
                _ledger.run_write(state.engine, lambda s: change_state(
                    s, brand_id=brand.id, credential_id=batch.rows[0].id,
                    state=CredentialState.REVOKED, now=now,
                    reason="not delivered: the credentials could not be signed"))
            raise

    credentials = await _in_thread(check_and_issue)
    return JSONResponse({"credentials": [{"credential": c} for c in credentials]},
                        headers=NO_STORE)


async def _in_thread(fn: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)


# -- status lists --------------------------------------------------------------------------


def _status(slug: str, list_id: str, purpose: str | None, request: Request,
            session: ReadSessionDep, state: StateDep, now: NowDep) -> Response:
    brand = brand_by_slug(session, slug=slug)
    shard = session.get(StatusListShard, list_id) if len(list_id) <= 36 else None
    if shard is None or shard.brand_id != brand.id:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such status list")
    url = status_list_url(state.settings, brand, shard.id)
    if purpose is not None:
        url = f"{url}/{purpose}"
    signer = state.keystore.signer(session, brand_id=brand.id, did=brand.did)
    published = state.status_publisher.publish(session, shard=shard, purpose=purpose, url=url,
                                               issuer=brand.did, signer=signer, now=now)
    headers = {"Cache-Control": "public, max-age=60", "ETag": published.etag}
    if request.headers.get("if-none-match") == published.etag:
        return Response(status_code=304, headers=headers)
    return Response(published.body, media_type=published.media_type, headers=headers)


@router.get("/brands/{slug}/status/{list_id}",
            responses={**_404, 200: {"content": {"application/statuslist+jwt": {
                "schema": {"type": "string"}}}}})
def token_status_list(slug: str, list_id: str, request: Request, session: ReadSessionDep,
                      state: StateDep, now: NowDep) -> Response:
    """IETF Token Status List (``statuslist+jwt``, 2 bits) of SD-JWT VCs."""
    return _status(slug, list_id, None, request, session, state, now)


@router.get("/brands/{slug}/status/{list_id}/{purpose}",
            responses={**_404, 200: {"content": {"application/vc+ld+json": {
                "schema": {"type": "object"}}}}})
def bitstring_status_list(slug: str, list_id: str, purpose: str, request: Request,
                          session: ReadSessionDep, state: StateDep, now: NowDep) -> Response:
    """W3C BitstringStatusListCredential (``revocation`` or ``suspension``)."""
    return _status(slug, list_id, purpose, request, session, state, now)
