"""The admin API of a brand: ``/admin/v1``, authenticated by that brand's API key.

The brand is taken from the key, never from the path, and every lookup is
filtered by it: another brand's program, member, entry or hold is
``not_found``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from issuer import _admin, _ledger, _openid4vci, _status_lists
from issuer._app import (
    PROBLEM_RESPONSES,
    BrandDep,
    IdempotencyKey,
    NowDep,
    ReadSessionDep,
    StateDep,
)
from issuer._models import (
    MAX_POINTS,
    ApiKeyCreated,
    ApiKeyPublic,
    Balance,
    BrandKeyPublic,
    BrandPublic,
    CredentialState,
    IssuedCredential,
    IssuedCredentialPublic,
    LedgerEntryPublic,
    MemberEnrol,
    MemberPublic,
    PointHoldPublic,
    ProgramCreate,
    ProgramPublic,
)
from tessera.web import StrictBody

__all__ = ["router"]

router = APIRouter(prefix="/admin/v1", tags=["admin"], responses=PROBLEM_RESPONSES)


# -- request and response shapes ---------------------------------------------------------------


class ApiKeyRequest(StrictBody):
    label: str = Field(default="", max_length=200)


class KeyRotation(StrictBody):
    alg: str | None = Field(default=None, pattern="^(EdDSA|ES256|ES384)$")


class BrandView(BrandPublic):
    keys: list[BrandKeyPublic]


class EnrolmentChallengeView(BaseModel):
    nonce: str
    audience: str
    typ: str
    expires_at: Any


class EarnRequest(StrictBody):
    points: int = Field(gt=0, le=MAX_POINTS)
    qualifying_points: int | None = Field(default=None, ge=0, le=MAX_POINTS,
                                          description="default: the same as points")
    reference: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=500)
    pending_days: int | None = Field(default=None, ge=0, le=365,
                                     description="default: the program's return window")


class RedeemRequest(StrictBody):
    points: int = Field(gt=0, le=MAX_POINTS)
    reference: str | None = Field(default=None, max_length=200)


class AdjustRequest(StrictBody):
    points: int = Field(ge=-MAX_POINTS, le=MAX_POINTS)
    qualifying_points: int = Field(default=0, ge=-MAX_POINTS, le=MAX_POINTS)
    reason: str = Field(min_length=1, max_length=500)
    operator: str = Field(min_length=1, max_length=200)


class ReverseRequest(StrictBody):
    entry_id: int = Field(gt=0)
    reason: str = Field(min_length=1, max_length=500)
    operator: str | None = Field(default=None, max_length=200)


class HoldRequest(StrictBody):
    points: int = Field(gt=0, le=MAX_POINTS)
    reference: str | None = Field(default=None, max_length=200)
    ttl_seconds: int = Field(default=3600, ge=1, le=_ledger.MAX_HOLD_SECONDS)


class CaptureRequest(StrictBody):
    points: int | None = Field(default=None, gt=0, le=MAX_POINTS,
                               description="default: the whole hold; the rest is released")


class LedgerWrite(BaseModel):
    entry: LedgerEntryPublic | None = None
    hold: PointHoldPublic | None = None
    balance: Balance
    log_promise: str | None = Field(
        default=None,
        description="the brand's signed promise (JWS, typ tessera-log-promise+jwt) that the "
                    "write's transparency-log leaves are in every tree head signed 1 s later "
                    "(docs/points-log-and-redemption.md)")


def _respond(outcome: _ledger.Outcome) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


def _write(state: Any, fn: Callable[[Session], _ledger.Outcome]) -> JSONResponse:
    return _respond(_ledger.run_write(state.engine, fn, keystore=state.keystore))


# -- brand, keys, API keys ---------------------------------------------------------------------


@router.get("/brand", response_model=BrandView)
def get_brand(brand: BrandDep, session: ReadSessionDep, state: StateDep) -> BrandView:
    keys = state.keystore.public_keys(session, brand_id=brand.id, did=brand.did)
    return BrandView(**BrandPublic.model_validate(brand, from_attributes=True).model_dump(),
                     keys=keys)


@router.post("/keys/rotate", status_code=201, response_model=BrandKeyPublic)
def rotate_key(body: KeyRotation, brand: BrandDep, state: StateDep) -> BrandKeyPublic:
    """New signing key; the old one is retired but stays in the DID document."""
    return _ledger.run_write(state.engine, lambda s: state.keystore.rotate(
        s, brand_id=brand.id, did=brand.did, alg=body.alg))


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyRequest, brand: BrandDep, state: StateDep) -> ApiKeyCreated:
    return _ledger.run_write(state.engine, lambda s: _admin.create_api_key(
        s, brand_id=brand.id, label=body.label))


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_api_keys(brand: BrandDep, session: ReadSessionDep) -> list[ApiKeyPublic]:
    """The brand's API keys (ids, labels, dates); secrets and their hashes are never shown."""
    return _admin.list_api_keys(session, brand_id=brand.id)


@router.delete("/api-keys/{key_id}", response_model=ApiKeyPublic)
def revoke_api_key(key_id: str, brand: BrandDep, state: StateDep, now: NowDep
                   ) -> ApiKeyPublic:
    """Revoke a key at once (the last active key of the brand cannot be revoked)."""
    return _ledger.run_write(state.engine, lambda s: _admin.revoke_api_key(
        s, brand_id=brand.id, key_id=key_id, now=now))


# -- programs --------------------------------------------------------------------------------


@router.post("/programs", status_code=201, response_model=ProgramPublic)
def create_program(body: ProgramCreate, brand: BrandDep, state: StateDep) -> ProgramPublic:
    return _ledger.run_write(state.engine, lambda s: _admin.create_program(
        s, brand_id=brand.id, data=body))


@router.get("/programs", response_model=list[ProgramPublic])
def list_programs(brand: BrandDep, session: ReadSessionDep) -> list[ProgramPublic]:
    return _admin.list_programs(session, brand_id=brand.id)


@router.get("/programs/{program_id}", response_model=ProgramPublic)
def get_program(program_id: str, brand: BrandDep, session: ReadSessionDep) -> ProgramPublic:
    program = _admin.get_program(session, brand_id=brand.id, program_id=program_id)
    return _admin.program_public(session, program)


# -- members ---------------------------------------------------------------------------------


@router.post("/enrolment-challenges", status_code=201, response_model=EnrolmentChallengeView)
def enrolment_challenge(brand: BrandDep, state: StateDep, now: NowDep) -> dict[str, Any]:
    """A single-use nonce the member signs to prove control of its DID."""
    ttl = state.settings.enrolment_challenge_ttl_seconds
    return _ledger.run_write(state.engine, lambda s: _admin.new_enrolment_challenge(
        s, brand=brand, now=now, ttl_seconds=ttl))


@router.post("/members", status_code=201, response_model=MemberPublic)
def enrol(body: MemberEnrol, brand: BrandDep, state: StateDep, now: NowDep) -> MemberPublic:
    def run(session: Session) -> MemberPublic:
        member = _admin.enrol_member(session, brand=brand, data=body,
                                     resolver=state.resolver, now=now)
        _ledger.evaluate_tier(session, member=member, now=now)
        return _admin.member_public(session, member)

    return _ledger.run_write(state.engine, run)


@router.get("/members/{member_id}", response_model=MemberPublic)
def get_member(member_id: str, brand: BrandDep, session: ReadSessionDep) -> MemberPublic:
    member = _admin.get_member(session, brand_id=brand.id, member_id=member_id)
    return _admin.member_public(session, member)


@router.get("/members/{member_id}/balance", response_model=Balance)
def get_balance(member_id: str, brand: BrandDep, session: ReadSessionDep, now: NowDep) -> Balance:
    member = _admin.get_member(session, brand_id=brand.id, member_id=member_id)
    return _ledger.balance(session, member=member, now=now)


@router.get("/members/{member_id}/ledger", response_model=list[LedgerEntryPublic])
def get_ledger(member_id: str, brand: BrandDep, session: ReadSessionDep,
               after: Annotated[int, Query(ge=0)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[LedgerEntryPublic]:
    member = _admin.get_member(session, brand_id=brand.id, member_id=member_id)
    return _ledger.list_entries(session, member=member, after=after, limit=limit)


@router.post("/members/{member_id}/tier/evaluate", response_model=MemberPublic)
def evaluate_tier(member_id: str, brand: BrandDep, state: StateDep, now: NowDep
                  ) -> MemberPublic:
    """Apply the tier rules now (downgrades after a grace period need no points movement)."""
    def run(session: Session) -> MemberPublic:
        member = _admin.get_member(session, brand_id=brand.id, member_id=member_id)
        _ledger.evaluate_tier(session, member=member, now=now)
        return _admin.member_public(session, member)

    return _ledger.run_write(state.engine, run)


# -- points ----------------------------------------------------------------------------------

_WRITE = {"status_code": 201, "response_model": LedgerWrite}


@router.post("/members/{member_id}/points/earn", **_WRITE)  # type: ignore[arg-type]
def earn(member_id: str, body: EarnRequest, brand: BrandDep, state: StateDep, now: NowDep,
         key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.earn(
        s, brand_id=brand.id, member_id=member_id, idempotency_key=key, now=now,
        **body.model_dump()))


@router.post("/members/{member_id}/points/redeem", **_WRITE)  # type: ignore[arg-type]
def redeem(member_id: str, body: RedeemRequest, brand: BrandDep, state: StateDep,
           now: NowDep, key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.redeem(
        s, brand_id=brand.id, member_id=member_id, idempotency_key=key, now=now,
        **body.model_dump()))


@router.post("/members/{member_id}/points/adjust", **_WRITE)  # type: ignore[arg-type]
def adjust(member_id: str, body: AdjustRequest, brand: BrandDep, state: StateDep,
           now: NowDep, key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.adjust(
        s, brand_id=brand.id, member_id=member_id, idempotency_key=key, now=now,
        **body.model_dump()))


@router.post("/members/{member_id}/points/reverse", **_WRITE)  # type: ignore[arg-type]
def reverse(member_id: str, body: ReverseRequest, brand: BrandDep, state: StateDep,
            now: NowDep, key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.reverse(
        s, brand_id=brand.id, member_id=member_id, idempotency_key=key, now=now,
        **body.model_dump()))


@router.post("/members/{member_id}/holds", **_WRITE)  # type: ignore[arg-type]
def create_hold(member_id: str, body: HoldRequest, brand: BrandDep, state: StateDep,
                now: NowDep, key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.create_hold(
        s, brand_id=brand.id, member_id=member_id, idempotency_key=key, now=now,
        **body.model_dump()))


@router.post("/holds/{hold_id}/capture", **_WRITE)  # type: ignore[arg-type]
def capture_hold(hold_id: str, body: CaptureRequest, brand: BrandDep, state: StateDep,
                 now: NowDep, key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.capture_hold(
        s, brand_id=brand.id, hold_id=hold_id, idempotency_key=key, now=now,
        points=body.points))


@router.post("/holds/{hold_id}/release", **_WRITE)  # type: ignore[arg-type]
def release_hold(hold_id: str, brand: BrandDep, state: StateDep, now: NowDep,
                 key: IdempotencyKey) -> JSONResponse:
    return _write(state, lambda s: _ledger.release_hold(
        s, brand_id=brand.id, hold_id=hold_id, idempotency_key=key, now=now))


class ExpiredHoldsReleased(BaseModel):
    released: list[PointHoldPublic]
    more: bool = Field(description="the batch was full: call again")


@router.post("/holds/release-expired", response_model=ExpiredHoldsReleased)
def release_expired_holds(brand: BrandDep, state: StateDep, now: NowDep,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 500
                          ) -> ExpiredHoldsReleased:
    """Close the brand's holds past their expiry (one zero-point ``expire`` entry each)."""
    released = _ledger.run_write(state.engine, lambda s: _ledger.release_expired_holds(
        s, brand_id=brand.id, now=now, limit=limit), keystore=state.keystore)
    return ExpiredHoldsReleased(released=released, more=len(released) >= limit)


# -- OpenID4VCI offers and issued credentials ----------------------------------------------------


@router.post("/members/{member_id}/offers", status_code=201,
             response_model=_openid4vci.OfferCreated)
def create_offer(member_id: str, body: _openid4vci.OfferRequest, brand: BrandDep,
                 state: StateDep, now: NowDep) -> _openid4vci.OfferCreated:
    """A pre-authorized credential offer for an enrolled member (OpenID4VCI §4.1).

    The response holds the secrets (the code inside the offer, the tx_code):
    hand the offer URI or QR code to the member and the tx_code through
    another channel. Only hashes are stored.
    """
    return _ledger.run_write(state.engine, lambda s: _openid4vci.create_offer(
        s, settings=state.settings, brand=brand, member_id=member_id, request=body, now=now))


@router.get("/members/{member_id}/credentials", response_model=list[IssuedCredentialPublic])
def list_credentials(member_id: str, brand: BrandDep, session: ReadSessionDep
                     ) -> list[IssuedCredentialPublic]:
    member = _admin.get_member(session, brand_id=brand.id, member_id=member_id)
    stmt = select(IssuedCredential).where(IssuedCredential.member_id == member.id) \
        .order_by(col(IssuedCredential.issued_at))
    return [IssuedCredentialPublic.model_validate(c, from_attributes=True)
            for c in session.exec(stmt)]


class StatusChange(StrictBody):
    reason: str | None = Field(default=None, max_length=200)


def _change(state: Any, brand: Any, credential_id: str, target: CredentialState,
            now: Any, reason: str | None) -> IssuedCredentialPublic:
    def run(session: Session) -> IssuedCredentialPublic:
        cred = _status_lists.change_state(session, brand_id=brand.id,
                                          credential_id=credential_id, state=target, now=now,
                                          reason=reason)
        return IssuedCredentialPublic.model_validate(cred, from_attributes=True)

    return _ledger.run_write(state.engine, run)


@router.post("/credentials/{credential_id}/revoke", response_model=IssuedCredentialPublic)
def revoke_credential(credential_id: str, brand: BrandDep, state: StateDep, now: NowDep,
                      body: StatusChange | None = None) -> IssuedCredentialPublic:
    """Revoke for good: the status list shows it as invalid/revoked from now on."""
    return _change(state, brand, credential_id, CredentialState.REVOKED, now,
                   body.reason if body else None)


@router.post("/credentials/{credential_id}/suspend", response_model=IssuedCredentialPublic)
def suspend_credential(credential_id: str, brand: BrandDep, state: StateDep, now: NowDep,
                       body: StatusChange | None = None) -> IssuedCredentialPublic:
    return _change(state, brand, credential_id, CredentialState.SUSPENDED, now,
                   body.reason if body else None)


@router.post("/credentials/{credential_id}/resume", response_model=IssuedCredentialPublic)
def resume_credential(credential_id: str, brand: BrandDep, state: StateDep, now: NowDep,
                      body: StatusChange | None = None) -> IssuedCredentialPublic:
    """Lift a suspension (a revoked credential stays revoked)."""
    return _change(state, brand, credential_id, CredentialState.VALID, now,
                   body.reason if body else None)
