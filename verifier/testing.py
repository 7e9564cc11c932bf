"""Test helpers for partners: unit-test a checkout integration with no server.

Everything here is in memory and deterministic where it can be::

    from verifier.testing import TestIssuer, TestHolder, offline_verifier

    brand = TestIssuer()                       # did:web:brand.test, fixed key
    member = TestHolder()                      # did:key, fixed key
    cred = brand.issue_membership(member, tier="gold")
    v = offline_verifier(brand)                # trusts brand; no network
    req = v.create_request(audience="https://shop.test")
    result = v.verify(member.present(cred, ["tier_at_least_silver"], req), request=req)
    assert result.ok and result.claims["tier_at_least_silver"] is True

The fixed keys are public knowledge: never use them outside tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from tessera import credentials
from tessera.did import Resolver, did_key
from tessera.formats import sd_jwt
from tessera.keys import LocalSigner, signer_from_jwk
from tessera.typing import Clock
from verifier._sdk import PresentationRequest, Verifier
from verifier._trust import TrustList

__all__ = [
    "FIXED_HOLDER_JWK",
    "FIXED_ISSUER_JWK",
    "FixedClock",
    "InMemoryResolver",
    "TestHolder",
    "TestIssuer",
    "offline_verifier",
]

# Test-only keys, published here on purpose so tests are reproducible.
FIXED_ISSUER_JWK: Final = {
    "kty": "EC", "crv": "P-256",
    "x": "19WZgyhHhOfxzbRZ0VX4wUJqu_WDgsz0F0m1o56FUbQ",
    "y": "73ItbMYgZXGC0FOdI7hRsQ9ZzDezkS9QKI6oqOofumY",
    "d": "TlfCvbysUfdhx7iVDfWD-DkA_OXA0mLcb8tI6JS57Kc",
}
FIXED_HOLDER_JWK: Final = {
    "kty": "OKP", "crv": "Ed25519",
    "x": "5bqDY58gw5MkpgKke-2YvtSLVHhZTdoUYNSGRiswNwg",
    "d": "1HcRLCNZ_55KZVwUEiNFhRyi4_fveSx7MRQxDXZtaNM",
}
DEFAULT_TIERS: Final = (("bronze", 0), ("silver", 1), ("gold", 2), ("platinum", 3))


class FixedClock:
    """A clock you move by hand: ``clock.advance(minutes=10)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class InMemoryResolver(Resolver):
    """A resolver with no network: did:key and did:jwk, plus the documents you add."""

    def __init__(self, *documents: dict[str, Any]) -> None:
        super().__init__(fetcher=None, documents={d["id"]: d for d in documents})


class TestIssuer:
    """A throwaway brand with a did:web DID and an in-memory key."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        did: str = "did:web:brand.test",
        *,
        signer: LocalSigner | None = None,
        program_name: str = "Test Rewards",
        clock: Clock | None = None,
    ) -> None:
        self.did = did
        key_id = f"{did}#key-1"
        self.signer = (signer or signer_from_jwk(FIXED_ISSUER_JWK)).with_key_id(key_id)
        self.program = {"id": f"{did}/programs/main", "name": program_name, "brand": did}
        self.clock = clock or (lambda: datetime.now(UTC))

    @property
    def did_document(self) -> dict[str, Any]:
        key_id = self.signer.key_id
        return {
            "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/jwk/v1"],
            "id": self.did,
            "verificationMethod": [{
                "id": key_id, "type": "JsonWebKey", "controller": self.did,
                "publicKeyJwk": self.signer.public_key.to_jwk(),
            }],
            "assertionMethod": [key_id],
        }

    def trust_list(self, *types: str) -> TrustList:
        names = types or tuple(t.name for t in credentials.CREDENTIAL_TYPES)
        return TrustList.of([(self.did, names)])

    def issue_membership(
        self, holder: TestHolder, *, tier: str = "gold", membership_number: str = "T-0001",
        valid_for: timedelta = timedelta(days=30), tiers: Sequence[tuple[str, int]] = DEFAULT_TIERS,
        name: str | None = "Test Member", email: str | None = None,
        status: dict[str, Any] | None = None,
    ) -> str:
        now = self.clock()
        claims = credentials.membership_claims(
            program=self.program, membership_number=membership_number, tier=tier, tiers=tiers,
            member_since=date(2020, 5, 1), tier_valid_until=(now + timedelta(days=365)).date(),
            name=name, email=email,
        )
        return sd_jwt.issue_credential(
            credentials.MEMBERSHIP, claims, signer=self.signer, issuer=self.did,
            holder_key=holder.signer.public_key, issued_at=now, expires_at=now + valid_for,
            status=status,
        )

    def issue_points(
        self, holder: TestHolder, *, balance: int = 1250, membership_number: str = "T-0001",
        valid_for: timedelta = timedelta(days=1), status: dict[str, Any] | None = None,
    ) -> str:
        now = self.clock()
        claims = credentials.points_claims(
            program=self.program, membership_number=membership_number, balance=balance,
            as_of=now, checkpoint=(0, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
        )
        return sd_jwt.issue_credential(
            credentials.POINTS, claims, signer=self.signer, issuer=self.did,
            holder_key=holder.signer.public_key, issued_at=now, expires_at=now + valid_for,
            status=status,
        )


class TestHolder:
    """A member's key and DID, presenting with a KB-JWT."""

    __test__ = False

    def __init__(self, signer: LocalSigner | None = None, *, clock: Clock | None = None) -> None:
        self.signer = signer or signer_from_jwk(FIXED_HOLDER_JWK)
        self.did = did_key(self.signer.public_key)
        self.clock = clock or (lambda: datetime.now(UTC))

    def present(
        self, credential: str, disclose: Sequence[str], request: PresentationRequest,
    ) -> str:
        return sd_jwt.present(
            credential, disclose=disclose, holder=self.signer, audience=request.audience,
            nonce=request.nonce, issued_at=self.clock(),
            transaction_data=request.transaction_data,
        )


def offline_verifier(*issuers: TestIssuer, clock: Clock | None = None) -> Verifier:
    """A :class:`~verifier.Verifier` trusting ``issuers``, with no network at all."""
    trust = TrustList.of(
        [(i.did, [t.name for t in credentials.CREDENTIAL_TYPES]) for i in issuers]
    )
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return Verifier(
        trust=trust, resolver=InMemoryResolver(*(i.did_document for i in issuers)), **kwargs
    )
