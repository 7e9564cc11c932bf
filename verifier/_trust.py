from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError


@dataclass(frozen=True)
class TrustedIssuer:
    id: str
    credential_types: frozenset[str]
    name: str = ""


@dataclass(frozen=True)
class TrustList:
    """Which issuers a verifier accepts, and for which credential types.

    File format (JSON)::

        {"issuers": [{"id": "did:web:acme.example", "name": "Acme",
                      "credential_types": ["LoyaltyMembershipCredential"]}]}

    ``"credential_types": ["*"]`` trusts an issuer for every type.
    """

    issuers: Mapping[str, TrustedIssuer] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustList:
        entries = data.get("issuers")
        if not isinstance(entries, list):
            raise TesseraError(ErrorCode.MALFORMED, "trust list needs an 'issuers' array")
        issuers: dict[str, TrustedIssuer] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise TesseraError(ErrorCode.MALFORMED, "each trusted issuer needs an 'id'")
            types = entry.get("credential_types")
            if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
                raise TesseraError(
                    ErrorCode.MALFORMED, f"issuer {entry['id']}: credential_types must be a list"
                )
            if entry["id"] in issuers:
                raise TesseraError(ErrorCode.MALFORMED, f"issuer {entry['id']} listed twice")
            issuers[entry["id"]] = TrustedIssuer(
                entry["id"], frozenset(types), str(entry.get("name", ""))
            )
        return cls(issuers)

    @classmethod
    def from_file(cls, path: str | Path) -> TrustList:
        return cls.from_dict(parse_json_object(Path(path).read_bytes()))

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, Iterable[str]]]) -> TrustList:
        """Build in code: ``TrustList.of([(did, ["LoyaltyMembershipCredential"])])``."""
        return cls({i: TrustedIssuer(i, frozenset(t)) for i, t in pairs})

    def knows(self, issuer: str) -> bool:
        """Whether ``issuer`` is listed at all (for any credential type).

        Asked *before* anything about a credential is fetched: an unlisted
        issuer's DID and status lists are never resolved.
        """
        return issuer in self.issuers

    def check(self, issuer: str, credential_type: str) -> None:
        entry = self.issuers.get(issuer)
        if entry is None:
            raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, f"{issuer} is not trusted")
        if "*" not in entry.credential_types and credential_type not in entry.credential_types:
            raise TesseraError(
                ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED,
                f"{issuer} is not trusted to issue {credential_type}",
            )

    def to_json(self) -> str:
        return json.dumps({"issuers": [
            {"id": i.id, "name": i.name, "credential_types": sorted(i.credential_types)}
            for i in self.issuers.values()
        ]}, indent=2)
