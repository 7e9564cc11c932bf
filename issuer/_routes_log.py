"""Public routes of each brand's points transparency log.

Anyone may read the signed tree head and the proofs: they are hashes only.
A member's own entries (the leaf texts) need the member's signature:
``Authorization: Bearer <JWS>``, ``typ`` ``tessera-log-access+jwt``, signed by an
``authentication`` key of the member's DID (``kid`` its DID URL), with
``{"iss": <member DID>, "aud": <brand DID>, "htm": "GET", "htu": <path>, "iat": <now>}``.
It is the same key that enrolled the member, so nothing new is shared. The
token is accepted for five minutes: a replay within that window can only
re-read what the member already read, and it cannot reach another path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from issuer import _ledger, _translog, _witnessing
from issuer._admin import IAT_LEEWAY, brand_by_slug
from issuer._app import PROBLEM_RESPONSES, NowDep, ReadSessionDep, SessionDep, StateDep
from issuer._log_models import LogLeafData, TreeHead
from issuer._models import Balance, Brand, LedgerEntry, Member
from tessera.did import Resolver
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, verify_compact
from tessera.tlog import TileRef
from tessera.web import problem_responses

__all__ = ["LOG_ACCESS_TYP", "authenticate_member", "router"]

LOG_ACCESS_TYP: Final = "tessera-log-access+jwt"
router = APIRouter(prefix="/brands/{slug}/log", tags=["transparency log"],
                   responses=PROBLEM_RESPONSES)


class TreeHeadView(BaseModel):
    tree_size: int
    root_hash: str
    timestamp: int
    log_id: str
    sth: str


class InclusionView(BaseModel):
    index: int
    tree_size: int
    leaf_hash: str
    proof: list[str]


class ConsistencyView(BaseModel):
    first: int
    second: int
    proof: list[str]


class EntryView(BaseModel):
    index: int
    leaf: dict[str, Any] | None
    proof: list[str]


class AccountView(BaseModel):
    """One membership of the DID: its name in the log and what the balance API says now."""

    pseudonym: str
    program_id: str
    balance: Balance


class MemberEntriesView(BaseModel):
    member: str
    pseudonyms: list[str]
    head: TreeHeadView
    entries: list[EntryView]
    ledger_total: int
    """What the brand's ledger says these entries add up to (the audit compares)."""
    accounts: list[AccountView]
    """The balance the ledger shows for each membership, at the head: the audit
    recomputes every figure from the leaves (tessera.pointslog.fold)."""


def head_view(session: Session, state: Any, brand: Brand, now: datetime) -> TreeHeadView:
    row = _translog.signed_head(
        session, brand_id=brand.id, log_id=brand.did, now=now,
        signer=lambda: state.keystore.signer(session, brand_id=brand.id, did=brand.did))
    return _view(row)


def _view(row: TreeHead) -> TreeHeadView:
    payload = decode_unverified(row.jws).payload
    return TreeHeadView(tree_size=row.tree_size, root_hash=row.root_hash,
                        timestamp=int(payload["timestamp"]), log_id=str(payload["log_id"]),
                        sth=row.jws)


def authenticate_member(session: Session, *, brand: Brand, token: str, resolver: Resolver,
                        method: str, path: str, now: datetime) -> list[Member]:
    """The member rows (one per program) of the DID that signed ``token`` for this request."""
    refused = TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid member signature")
    try:
        header = decode_unverified(token).header
        kid = header.get("kid")
        if not isinstance(kid, str) or "#" not in kid:
            raise refused
        did = kid.split("#", 1)[0]
        payload = verify_compact(token, resolver.key(kid, relationship="authentication"),
                                 typ=LOG_ACCESS_TYP).payload
    except TesseraError as exc:
        raise refused from exc
    iat = payload.get("iat")
    if (payload.get("iss") != did or payload.get("aud") != brand.did
            or payload.get("htm") != method or payload.get("htu") != path
            or not isinstance(iat, int) or isinstance(iat, bool)
            or abs(now.timestamp() - iat) > IAT_LEEWAY.total_seconds()):
        raise refused
    members = list(session.exec(select(Member).where(Member.brand_id == brand.id,
                                                     Member.did == did)))
    if not members:
        raise TesseraError(ErrorCode.NOT_FOUND, "no member with this DID at this brand")
    return members


@router.get("/sth", response_model=TreeHeadView)
def get_sth(slug: str, session: SessionDep, state: StateDep, now: NowDep) -> TreeHeadView:
    """The latest signed tree head (RFC 9162 §4.10 in JWS form, ``typ`` ``tessera-sth+jwt``).

    Leaves still pending are integrated first (the sequencer does it within
    the maximum merge delay anyway), so the head covers every committed write.
    """
    brand = brand_by_slug(session, slug=slug)
    _translog.catch_up(session, brand.id, now=now, keystore=state.keystore)
    return head_view(session, state, brand, now)


_NOTE: Final = {200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                      "description": "a C2SP checkpoint (signed note) with witness cosignatures"},
                 **problem_responses({400: "the brand's signing key is not Ed25519 "
                                           "(unsupported_algorithm)"})}


def _checkpoint(state: Any, slug: str, size: int | None, now: datetime) -> PlainTextResponse:
    note = _witnessing.published(state.engine, settings=state.settings, keystore=state.keystore,
                                 http=state.witnesses(), slug=slug, size=size, now=now)
    return PlainTextResponse(note.to_text(), headers={"Cache-Control": "max-age=2"})


@router.get("/checkpoint", response_class=PlainTextResponse, responses=_NOTE)
def get_checkpoint(slug: str, state: StateDep, now: NowDep) -> PlainTextResponse:
    """The log head as a C2SP checkpoint (c2sp.org/tlog-tiles ``<prefix>/checkpoint``).

    Signed by the brand's Ed25519 key (key name: the origin line); carries the
    ``cosignature/v1`` lines of the witnesses that cosigned it.
    """
    return _checkpoint(state, slug, None, now)


@router.get("/checkpoints/{size}", response_class=PlainTextResponse, responses=_NOTE)
def get_checkpoint_at(slug: str, state: StateDep, now: NowDep,
                      size: Annotated[int, Path(ge=0, lt=2**62)]) -> PlainTextResponse:
    """The checkpoint of an earlier signed head (a points credential's), with its cosignatures."""
    return _checkpoint(state, slug, size, now)


@router.get("/tile/{path:path}", response_class=Response, responses={200: {
    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}},
    "description": "a hash tile or an entry bundle (c2sp.org/tlog-tiles)"}})
def get_tile(slug: str, path: str, session: ReadSessionDep, state: StateDep) -> Response:
    """Hash tiles ``tile/<L>/<N>[.p/<W>]`` and entry bundles ``tile/entries/<N>[.p/<W>]``.

    Immutable once they exist (a partial tile of width W never changes either);
    entry bundles only where the operator publishes leaf texts
    (``TESSERA_LOG_PUBLIC_ENTRIES``).
    """
    brand = brand_by_slug(session, slug=slug)
    ref = TileRef.parse(f"tile/{path}")
    data = (_witnessing.entry_bundle(session, brand.id, ref,
                                     public=state.settings.log_public_entries)
            if ref.level is None else _witnessing.tile(session, brand.id, ref))
    return Response(data, media_type="application/octet-stream",
                    headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/proof/inclusion", response_model=InclusionView)
def get_inclusion(slug: str, session: SessionDep,
                  index: Annotated[int, Query(ge=0, lt=2**62)],
                  size: Annotated[int, Query(ge=1, lt=2**62)]) -> InclusionView:
    brand = brand_by_slug(session, slug=slug)
    proof = _translog.inclusion_proof(session, brand.id, index, size)
    leaf = _translog.SqlHashSource(session, brand.id).get_leaf_hash(index)
    return InclusionView(index=index, tree_size=size, leaf_hash=b64url_encode(leaf),
                         proof=[b64url_encode(p) for p in proof])


@router.get("/proof/consistency", response_model=ConsistencyView)
def get_consistency(slug: str, session: SessionDep,
                    first: Annotated[int, Query(ge=0, lt=2**62)],
                    second: Annotated[int, Query(ge=0, lt=2**62)]) -> ConsistencyView:
    brand = brand_by_slug(session, slug=slug)
    proof = _translog.consistency_proof(session, brand.id, first, second)
    return ConsistencyView(first=first, second=second, proof=[b64url_encode(p) for p in proof])


@router.get("/entries", response_model=MemberEntriesView)
def get_entries(slug: str, request: Request, session: SessionDep, state: StateDep,
                now: NowDep, member: Annotated[str, Query(min_length=8, max_length=2048)],
                after: Annotated[int, Query(ge=-1, lt=2**62)] = -1,
                size: Annotated[int | None, Query(ge=0, lt=2**62)] = None
                ) -> MemberEntriesView:
    """A member's own leaves with inclusion proofs against a fresh signed head.

    One page holds up to 1,000 leaves per membership; the next page is asked
    with ``after`` (the last index seen) and ``size`` (the head of the first
    page, a head handed out before), so every page proves against the same
    tree. ``accounts`` is stated only without ``size``: balances are now.
    """
    brand = brand_by_slug(session, slug=slug)
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid member signature")
    rows = authenticate_member(session, brand=brand, token=token.strip(),
                               resolver=state.resolver, method="GET",
                               path=request.url.path, now=now)
    if any(m.did != member for m in rows):
        raise TesseraError(ErrorCode.FORBIDDEN, "a member reads only their own entries")
    # Writers lock the member row before they append: holding it (shared)
    # keeps the head, the leaves and the balances below one consistent cut.
    session.exec(select(Member).where(col(Member.id).in_([m.id for m in rows]))
                 .with_for_update(read=True)).all()
    # Their pending leaves go into the tree now: the head below covers them.
    for row in rows:
        _translog.catch_up(session, brand.id, now=now, keystore=state.keystore,
                           member_id=row.id)
    if size is None:
        head = head_view(session, state, brand, now)
    else:
        stored = session.get(TreeHead, (brand.id, size))
        if stored is None:
            raise TesseraError(ErrorCode.NOT_FOUND, "no signed head of that size was handed out")
        head = _view(stored)
    entries: list[EntryView] = []
    names: list[str] = []
    accounts: list[AccountView] = []
    total = 0
    cut: int | None = None  # the page ends where the first membership's page is full
    for row in rows:
        names.append(_translog.pseudonym(session, brand.id, row.id))
        if size is None:
            accounts.append(AccountView(pseudonym=names[-1], program_id=row.program_id,
                                        balance=_ledger.balance(session, member=row, now=now)))
        page = _translog.member_leaves(session, brand_id=brand.id, member_id=row.id,
                                       size=head.tree_size, after=after,
                                       limit=_translog.MAX_ENTRIES_PAGE)
        if len(page) >= _translog.MAX_ENTRIES_PAGE:
            cut = page[-1][0] if cut is None else min(cut, page[-1][0])
        for index, leaf, proof in page:
            entries.append(EntryView(index=index, leaf=leaf,
                                     proof=[b64url_encode(p) for p in proof]))
        total += int(session.exec(
            select(func.coalesce(func.sum(LedgerEntry.points), 0))
            .join(LogLeafData, col(LogLeafData.entry_id) == col(LedgerEntry.id))
            .where(LedgerEntry.member_id == row.id,
                   col(LogLeafData.idx) < head.tree_size)).one())
    entries.sort(key=lambda e: e.index)
    if cut is not None:
        entries = [e for e in entries if e.index <= cut]
    return MemberEntriesView(member=member, pseudonyms=names, head=head, entries=entries,
                             ledger_total=total, accounts=accounts)
