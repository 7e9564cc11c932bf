from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from tessera import credentials
from tessera.credentials import DEFAULT_POINTS_LADDER
from tessera.did import did_document as did_document  # re-exported: issuer.did_document
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import PublicKey
from tessera.typing import Clock, Signer


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Program:
    """What a credential says about the programme that issued it."""

    id: str
    name: str
    brand: str
    tiers: Sequence[tuple[str, int]] = (("bronze", 0), ("silver", 1), ("gold", 2),
                                         ("platinum", 3))
    points_ladder: Sequence[int] = DEFAULT_POINTS_LADDER
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_claim(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "brand": self.brand}


class CredentialIssuer:
    """Issues the two loyalty credentials as SD-JWT VCs for one brand.

    The brand's key stays behind ``signer`` (``signer.key_id`` must be a
    verification method of ``did`` listed for ``assertionMethod``). Balances
    go stale the moment points move, so points credentials are short-lived by
    default; membership lasts longer but never beyond the tier's end.
    """

    def __init__(
        self,
        *,
        signer: Signer,
        did: str,
        program: Program,
        clock: Clock = _utcnow,
        membership_ttl: timedelta = timedelta(days=30),
        points_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        if not signer.key_id or signer.key_id.split("#", 1)[0] != did:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "signer key_id must be a method of did")
        if program.brand != did:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "programme brand must be the issuer DID")
        self.signer = signer
        self.did = did
        self.program = program
        self._clock = clock
        self._membership_ttl = membership_ttl
        self._points_ttl = points_ttl

    def issue_membership(
        self,
        *,
        holder_key: PublicKey,
        membership_number: str,
        tier: str,
        member_since: date,
        tier_valid_until: date,
        name: str | None = None,
        email: str | None = None,
        status: Mapping[str, Any] | None = None,
    ) -> str:
        now = self._clock()
        claims = credentials.membership_claims(
            program=self.program.as_claim(), membership_number=membership_number, tier=tier,
            tiers=self.program.tiers, member_since=member_since,
            tier_valid_until=tier_valid_until, name=name, email=email,
        )
        tier_end = datetime.combine(tier_valid_until, datetime.max.time(), tzinfo=UTC)
        expires = min(now + self._membership_ttl, tier_end)
        return sd_jwt.issue_credential(
            credentials.MEMBERSHIP, claims, signer=self.signer, issuer=self.did,
            holder_key=holder_key, issued_at=now, expires_at=expires, status=status,
        )

    def issue_points(
        self,
        *,
        holder_key: PublicKey,
        membership_number: str,
        balance: int,
        checkpoint: tuple[int, str],
        expiring_next: tuple[int, date] | None = None,
        status: Mapping[str, Any] | None = None,
    ) -> str:
        now = self._clock()
        claims = credentials.points_claims(
            program=self.program.as_claim(), membership_number=membership_number,
            balance=balance, as_of=now, checkpoint=checkpoint, expiring_next=expiring_next,
            ladder=self.program.points_ladder,
        )
        return sd_jwt.issue_credential(
            credentials.POINTS, claims, signer=self.signer, issuer=self.did,
            holder_key=holder_key, issued_at=now, expires_at=now + self._points_ttl,
            status=status,
        )

    def issue_claims(
        self,
        credential_type: str,
        claims: Mapping[str, Any],
        *,
        holder_key: PublicKey,
        valid_for: timedelta | None = None,
        status: Mapping[str, Any] | None = None,
    ) -> str:
        """Issue ready-made claims (the CLI's ``tessera issue --claims FILE``)."""
        ctype = credentials.by_name(credential_type)
        now = self._clock()
        ttl = valid_for or (self._points_ttl if ctype is credentials.POINTS
                            else self._membership_ttl)
        return sd_jwt.issue_credential(
            ctype, claims, signer=self.signer, issuer=self.did, holder_key=holder_key,
            issued_at=now, expires_at=now + ttl, status=status,
        )
