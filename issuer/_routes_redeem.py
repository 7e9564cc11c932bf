"""Partners, cross-brand redemption, partner earns, settlement, and data-subject rights.

* ``/admin/v1/partners`` (brand API key): register a partner, get its key.
* ``/brands/{slug}/redemptions`` and ``/brands/{slug}/earns`` and
  ``/brands/{slug}/settlement``: the partner's side, authenticated by the
  partner's own key (``Authorization: Bearer tpk_...``), scoped to it.
* ``/admin/v1/members/{id}/export`` and ``/erase`` (brand API key), and
  ``/brands/{slug}/members/me/export`` signed by the member (as the log's
  entries endpoint, :mod:`issuer._routes_log`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlmodel import Session

from issuer import _redemption, _translog
from issuer._admin import brand_by_slug
from issuer._app import PROBLEM_RESPONSES, BrandDep, NowDep, SessionDep, StateDep
from issuer._db import session_scope
from issuer._keystore import KeyStore
from issuer._ledger import MAX_HOLD_SECONDS, run_write
from issuer._log_models import Partner, PartnerKeyPublic, PartnerPublic
from issuer._models import MAX_POINTS, Brand
from issuer._routes_log import authenticate_member
from tessera.errors import ErrorCode, TesseraError
from tessera.observability import count_outcome
from tessera.redemption import statement_csv
from tessera.web import StrictBody

__all__ = ["router"]

T = TypeVar("T")
router = APIRouter(tags=["redemption"], responses=PROBLEM_RESPONSES)
_bearer = HTTPBearer(auto_error=False, scheme_name="PartnerKey",
                     description="a partner key: `tpk_<id>_<secret>`")


class PartnerCreate(StrictBody):
    name: str = Field(min_length=1, max_length=200)
    client_id: str = Field(min_length=1, max_length=2048, description=(
        "the OpenID4VP Client Identifier of the partner's requests (KB-JWT aud)"))


class PartnerCreated(BaseModel):
    id: str
    name: str
    client_id: str
    token: str = Field(description="shown once; only its hash is stored")


class RedemptionRequest(StrictBody):
    vp_token: dict[str, Any] | str = Field(description="as the wallet posted it (§8.1)")
    transaction_data: str = Field(max_length=4096,
                                  description="the tessera_redeem item, as in the request")
    nonce: str = Field(min_length=1, max_length=255, description="the request's nonce")
    hold_ttl_seconds: int = Field(default=900, ge=30, le=MAX_HOLD_SECONDS)


class CaptureBody(StrictBody):
    points: int | None = Field(default=None, gt=0, le=MAX_POINTS)


class RefundBody(StrictBody):
    points: int = Field(gt=0, le=MAX_POINTS)
    refund_reference: str = Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")


class EarnBody(StrictBody):
    membership_number: str = Field(min_length=1, max_length=32)
    points: int = Field(gt=0, le=MAX_POINTS)
    order_reference: str = Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")


async def _partner_key(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                               Depends(_bearer)]) -> HTTPAuthorizationCredentials:
    # Resolved before the body is validated: a request without a bearer key is 401,
    # never a validation error that would describe the body to a caller with no key.
    # The key itself is checked in the route's own transaction (_authorised).
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid partner key")
    return credentials


PartnerKeyDep = Annotated[HTTPAuthorizationCredentials, Depends(_partner_key)]


def _authorised(session: Session, slug: str, credentials: HTTPAuthorizationCredentials,
                keystore: KeyStore | None = None) -> tuple[Brand, Partner]:
    """The brand and the partner the key names; ``keystore``: a transaction that will
    need the brand's keys reads them with the partner key (one statement)."""
    brand = brand_by_slug(session, slug=slug)
    return brand, _redemption.authenticate_partner(
        session, brand=brand, token=credentials.credentials, keystore=keystore)


def _partner(slug: str, state: StateDep, credentials: PartnerKeyDep) -> tuple[Brand, Partner]:
    with session_scope(state.engine) as session:
        return _authorised(session, slug, credentials)


PartnerDep = Annotated[tuple[Brand, Partner], Depends(_partner)]


def _body(session: Session, state: Any, brand: Brand, row: Any, now: datetime,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A redemption answer: its view and the brand's signed receipt of it."""
    view = _redemption.redemption_view(session, row, now)
    return {"redemption": view,
            "receipt": _redemption.receipt(session, keystore=state.keystore, brand=brand,
                                           row=row, now=now, view=view), **(extra or {})}


def _answer(state: Any, brand: Brand, row: Any, now: datetime, *, status: int = 200,
            replayed: bool = False, extra: dict[str, Any] | None = None) -> JSONResponse:
    with session_scope(state.engine) as session:
        body = _body(session, state, brand, row, now, extra)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JSONResponse(body, status_code=status, headers=headers)


def _promise_of(session: Session) -> dict[str, str]:
    """The inclusion promise of the log leaves this transaction wrote, if it wrote any
    (``log_promise``, docs/points-log-and-redemption.md)."""
    signed = session.info.get(_translog.LAST_PROMISE)
    return {"log_promise": signed} if signed else {}


# -- admin: partners and data-subject rights ------------------------------------------------------


@router.post("/admin/v1/partners", status_code=201, response_model=PartnerCreated,
             tags=["admin"])
def create_partner(body: PartnerCreate, brand: BrandDep, state: StateDep) -> PartnerCreated:
    def run(session: Session) -> PartnerCreated:
        partner, token = _redemption.create_partner(session, brand_id=brand.id, name=body.name,
                                                    client_id=body.client_id)
        return PartnerCreated(id=partner.id, name=partner.name, client_id=partner.client_id,
                              token=token)
    return run_write(state.engine, run)


@router.get("/admin/v1/partners", response_model=list[PartnerPublic], tags=["admin"])
def list_partners(brand: BrandDep, session: SessionDep) -> list[PartnerPublic]:
    return _redemption.list_partners(session, brand_id=brand.id)


class PartnerKeyCreated(BaseModel):
    partner_id: str
    token: str = Field(description="shown once; only its hash is stored")


@router.post("/admin/v1/partners/{partner_id}/keys", status_code=201,
             response_model=PartnerKeyCreated, tags=["admin"])
def create_partner_key(partner_id: str, brand: BrandDep, state: StateDep) -> PartnerKeyCreated:
    """Another key for the partner (rotate: create, switch, then revoke the old one)."""
    def run(session: Session) -> PartnerKeyCreated:
        partner = _redemption.get_partner(session, brand_id=brand.id, partner_id=partner_id)
        return PartnerKeyCreated(partner_id=partner.id, token=_redemption.create_partner_key(
            session, partner_id=partner.id))
    return run_write(state.engine, run)


@router.delete("/admin/v1/partners/{partner_id}/keys/{key_id}",
               response_model=PartnerKeyPublic, tags=["admin"])
def revoke_partner_key(partner_id: str, key_id: str, brand: BrandDep, state: StateDep,
                       now: NowDep) -> PartnerKeyPublic:
    """Revoke a partner key: its next request is ``unauthorized``."""
    return run_write(state.engine, lambda s: _redemption.revoke_partner_key(
        s, brand_id=brand.id, partner_id=partner_id, key_id=key_id, now=now))


@router.get("/admin/v1/members/{member_id}/export", tags=["admin"])
def export_member(member_id: str, brand: BrandDep, session: SessionDep,
                  now: NowDep) -> dict[str, Any]:
    """Everything held about the member, as JSON."""
    return _translog.export_member(session, brand_id=brand.id, member_id=member_id, now=now)


@router.post("/admin/v1/members/{member_id}/erase", tags=["admin"])
def erase_member(member_id: str, brand: BrandDep, state: StateDep,
                 now: NowDep) -> dict[str, Any]:
    """Erase personal data; the log keeps pseudonymous hashes and every proof verifies."""
    return run_write(state.engine, lambda s: _translog.erase_member(
        s, brand_id=brand.id, member_id=member_id, now=now))


@router.get("/brands/{slug}/members/me/export")
def export_me(slug: str, request: Request, session: SessionDep, state: StateDep,
              now: NowDep) -> dict[str, Any]:
    """The member's own export, signed by the member (``tessera-log-access+jwt``)."""
    brand = brand_by_slug(session, slug=slug)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid member signature")
    members = authenticate_member(session, brand=brand, token=token.strip(),
                                  resolver=state.resolver, method="GET",
                                  path=request.url.path, now=now)
    return {"memberships": [_translog.export_member(session, brand_id=brand.id,
                                                    member_id=m.id, now=now)
                            for m in members]}


# -- partners: redemption ----------------------------------------------------------------------


@router.post("/brands/{slug}/redemptions", status_code=201,
             dependencies=[count_outcome("redemption")])
def redeem(slug: str, body: RedemptionRequest, credentials: PartnerKeyDep, state: StateDep,
           now: NowDep) -> JSONResponse:
    """Verify the member's consent for exactly this transaction and hold the points.

    One transaction: the partner's key, the presentation, the hold and the signed
    answer (the hot path; bench/README.md "Redemption profile (session 4)").
    """
    def run(session: Session) -> tuple[dict[str, Any], bool]:
        brand, partner = _authorised(session, slug, credentials, state.keystore)
        verified = _redemption.verify_redemption(
            session, brand=brand, partner=partner, keystore=state.keystore,
            resolver=state.resolver, vp_token=body.vp_token,
            transaction_data=body.transaction_data, nonce=body.nonce, now=now)
        row, replayed = _redemption.place_hold(
            session, brand=brand, partner=partner, verified=verified, now=now,
            ttl_seconds=body.hold_ttl_seconds)
        return _body(session, state, brand, row, now, _promise_of(session)), replayed

    answer, replayed = run_write(state.engine, run, keystore=state.keystore)
    return JSONResponse(answer, status_code=200 if replayed else 201,
                        headers={"Idempotent-Replayed": "true"} if replayed else None)


def _promised(state: Any, fn: Callable[[Session], T]) -> tuple[T, dict[str, str]]:
    """Run a redemption write; with the inclusion promise of the log leaves it wrote
    (``log_promise``, docs/points-log-and-redemption.md), when it wrote any."""
    def run(session: Session) -> tuple[T, dict[str, str]]:
        return fn(session), _promise_of(session)

    return run_write(state.engine, run, keystore=state.keystore)


@router.get("/brands/{slug}/redemptions/{redemption_id}")
def get_redemption(redemption_id: str, auth: PartnerDep, state: StateDep,
                   now: NowDep) -> JSONResponse:
    brand, partner = auth
    with session_scope(state.engine) as session:
        row = _redemption._redemption(session, partner, redemption_id, lock=False)
        # A reader: its entries' pending leaves go into the tree, so log_entries lists them.
        _translog.catch_up(session, brand.id, now=now, keystore=state.keystore)
    return _answer(state, brand, row, now)


@router.post("/brands/{slug}/redemptions/{redemption_id}/capture",
             dependencies=[count_outcome("redemption_capture")])
def capture(slug: str, redemption_id: str, body: CaptureBody, credentials: PartnerKeyDep,
            state: StateDep, now: NowDep) -> JSONResponse:
    """The sale went through: debit the held points (once).

    One transaction: the partner's key, the capture, the member's offer of a fresh
    points credential and the signed answer (no capture without its offer).
    """
    def run(session: Session) -> dict[str, Any]:
        brand, partner = _authorised(session, slug, credentials, state.keystore)
        offer: dict[str, Any] = {}

        def fresh(row: _redemption.RedemptionRow) -> list[tuple[Any, Mapping[str, Any]]]:
            # The offer's INSERT goes with the capture's last statement (bench/README.md
            # "Redemption, sixth pass (session 8)").
            writes: list[tuple[Any, Mapping[str, Any]]] = []
            offer.update(_fresh_offer(session, state, brand, row.member_id, now, writes))
            return writes

        row = _redemption.capture(session, brand=brand, partner=partner,
                                  redemption_id=redemption_id, now=now, points=body.points,
                                  also=fresh)
        promise = _promise_of(session)
        return _body(session, state, brand, row, now, {"fresh_credential": offer, **promise})

    return JSONResponse(run_write(state.engine, run, keystore=state.keystore))


def _fresh_offer(session: Session, state: Any, brand: Brand, member_id: str,
                 now: datetime, writes: list[tuple[Any, Mapping[str, Any]]]) -> dict[str, Any]:
    """An OpenID4VCI offer of a fresh points credential; only the member's key can take it.
    Its INSERT is appended to ``writes``, for the caller to send."""
    from issuer._openid4vci import OfferRequest, create_offer

    created = create_offer(session, settings=state.settings, brand=brand, member_id=member_id,
                           request=OfferRequest(credential_configuration_ids=[
                               "LoyaltyPointsCredential_sd_jwt"]), now=now, writes=writes)
    return {"offer_uri": created.offer_uri_by_reference,
            "expires_at": created.expires_at.isoformat()}


@router.post("/brands/{slug}/redemptions/{redemption_id}/release",
             dependencies=[count_outcome("redemption_release")])
def release(redemption_id: str, auth: PartnerDep, state: StateDep,
            now: NowDep) -> JSONResponse:
    """The sale was cancelled: free the points."""
    brand, partner = auth
    row, promise = _promised(state, lambda s: _redemption.release(
        s, brand=brand, partner=partner, redemption_id=redemption_id, now=now))
    return _answer(state, brand, row, now, extra=promise)


@router.post("/brands/{slug}/redemptions/{redemption_id}/refund",
             dependencies=[count_outcome("redemption_refund")])
def refund(redemption_id: str, body: RefundBody, auth: PartnerDep, state: StateDep,
           now: NowDep) -> JSONResponse:
    """Goods returned: credit points back as a new ledger entry (once per refund reference)."""
    brand, partner = auth
    row, promise = _promised(state, lambda s: _redemption.refund(
        s, brand=brand, partner=partner, redemption_id=redemption_id, points=body.points,
        refund_reference=body.refund_reference, now=now))
    return _answer(state, brand, row, now, extra=promise)


@router.post("/brands/{slug}/earns", status_code=201,
             dependencies=[count_outcome("earn")])
def earn(body: EarnBody, auth: PartnerDep, state: StateDep, now: NowDep) -> JSONResponse:
    """Points the member earned at the partner (credited once per order reference)."""
    brand, partner = auth
    outcome = run_write(state.engine, lambda s: _redemption.partner_earn(
        s, brand=brand, partner=partner, membership_number=body.membership_number,
        points=body.points, order_reference=body.order_reference, now=now),
        keystore=state.keystore)
    entry = outcome.body["entry"]
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return JSONResponse({"entry_id": entry["id"], "points": entry["points"],
                         "order_reference": body.order_reference,
                         "log_promise": outcome.body.get("log_promise")},
                        status_code=200 if outcome.replayed else 201, headers=headers)


@router.get("/brands/{slug}/settlement")
def settlement(auth: PartnerDep, state: StateDep, now: NowDep,
               start: Annotated[datetime, Query(alias="from")],
               end: Annotated[datetime, Query(alias="to")],
               format: Annotated[Literal["json", "csv"], Query()] = "json") -> Response:
    """The partner's signed statement for ``[from, to)``; ``format=csv`` for spreadsheets."""
    brand, partner = auth
    with session_scope(state.engine) as session:
        statement = _redemption.settlement(session, keystore=state.keystore, brand=brand,
                                           partner=partner, start=start, end=end, now=now)
    if format == "csv":
        return Response(statement_csv(statement), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="settlement.csv"'})
    return JSONResponse(statement)
