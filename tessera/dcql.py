"""DCQL, the Digital Credentials Query Language of OpenID4VP 1.0 §6.

Used on both sides: the verifier states what it asks for and checks that a
response answers it; the wallet finds which credentials and which claims a
query needs, so the consent screen can list exactly those.

Supported: ``credentials`` with ``id``, ``format``, ``meta.vct_values`` /
``meta.type_values``, ``claims`` (``id``, ``path``, ``values``),
``claim_sets``, and ``credential_sets`` (``options``, ``required``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "ClaimQuery",
    "CredentialQuery",
    "Query",
    "claims_query",
]

FORMATS: Final = frozenset({"dc+sd-jwt", "ldp_vc"})
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Path = tuple[str | int | None, ...]


def _bad(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.MALFORMED, f"DCQL: {detail}")


@dataclass(frozen=True)
class ClaimQuery:
    id: str | None
    path: Path
    values: tuple[Any, ...] | None

    def lookup(self, claims: Mapping[str, Any]) -> tuple[bool, Any]:
        """(found, value) following ``path`` through the disclosed claims (§7)."""
        node: Any = claims
        for step in self.path:
            if isinstance(step, str) and isinstance(node, dict) and step in node:
                node = node[step]
            elif isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node):
                node = node[step]
            elif step is None and isinstance(node, list):
                return (bool(node), node)
            else:
                return (False, None)
        return (True, node)

    def satisfied_by(self, claims: Mapping[str, Any]) -> bool:
        found, value = self.lookup(claims)
        if not found:
            return False
        if self.values is None:
            return True
        # JSON equality, not Python's: ``True == 1`` in Python, but a query asking for the
        # number 1 must not be satisfied by the boolean true (or the reverse). A plain
        # loop, not any() over a generator: this runs for every asked claim of every
        # presentation.
        is_bool = isinstance(value, bool)
        for wanted in self.values:
            if isinstance(wanted, bool) is is_bool and value == wanted:
                return True
        return False


@dataclass(frozen=True)
class CredentialQuery:
    id: str
    format: str
    vct_values: tuple[str, ...] | None
    type_values: tuple[tuple[str, ...], ...] | None
    claims: tuple[ClaimQuery, ...]
    claim_sets: tuple[tuple[str, ...], ...] | None

    def matches_type(self, *, fmt: str, vct: str | None, types: Sequence[str] = ()) -> bool:
        if fmt != self.format:
            return False
        if self.vct_values is not None and vct not in self.vct_values:
            return False
        return self.type_values is None or any(set(t) <= set(types) for t in self.type_values)

    # The query is immutable and checked against every presentation of its
    # request: what derives from it is worked out once, when it is built.
    # Not cached_property: every request brings a fresh query, and its first
    # access (a lock, a descriptor call) cost more than the work itself.
    _options: tuple[tuple[ClaimQuery, ...], ...] = field(init=False, repr=False, compare=False)
    asked: frozenset[str] = field(init=False, repr=False, compare=False)
    """Top-level claim names the query asks for (``asked_names()`` without the copy)."""

    def __post_init__(self) -> None:
        if not self.claims:
            options: tuple[tuple[ClaimQuery, ...], ...] = ((),)
        elif self.claim_sets is None:
            options = (self.claims,)
        else:
            by_id = {c.id: c for c in self.claims}
            options = tuple(tuple(by_id[i] for i in option) for option in self.claim_sets)
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "asked", frozenset(
            c.path[0] for c in self.claims if isinstance(c.path[0], str)))

    def options(self) -> list[tuple[ClaimQuery, ...]]:
        """Acceptable claim combinations, most preferred first (§6.4.1)."""
        return list(self._options)

    def satisfied_option(self, claims: Mapping[str, Any]) -> tuple[ClaimQuery, ...] | None:
        for option in self._options:
            for c in option:
                if not c.satisfied_by(claims):
                    break
            else:
                return option
        return None

    def top_level_names(self, option: Sequence[ClaimQuery]) -> list[str]:
        """Top-level claim names a holder must disclose for ``option``."""
        names: list[str] = []
        for claim in option:
            head = claim.path[0]
            if isinstance(head, str) and head not in names:
                names.append(head)
        return names

    def asked_names(self) -> set[str]:
        return set(self.asked)


@dataclass(frozen=True)
class Query:
    credentials: tuple[CredentialQuery, ...]
    credential_sets: tuple[tuple[tuple[str, ...], ...], ...] | None
    required_sets: tuple[bool, ...]
    raw: dict[str, Any]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Query:
        if not isinstance(raw, Mapping):
            raise _bad("query must be an object")
        creds = raw.get("credentials")
        if not isinstance(creds, list) or not creds or len(creds) > 16:
            raise _bad("credentials must be a non-empty array (at most 16)")
        parsed = tuple(_credential(c) for c in creds)
        ids = [c.id for c in parsed]
        if len(set(ids)) != len(ids):
            raise _bad("credential ids must be unique")
        sets_raw = raw.get("credential_sets")
        sets: list[tuple[tuple[str, ...], ...]] = []
        required: list[bool] = []
        if sets_raw is not None:
            if not isinstance(sets_raw, list) or not sets_raw:
                raise _bad("credential_sets must be a non-empty array")
            for item in sets_raw:
                options = item.get("options") if isinstance(item, dict) else None
                if not isinstance(options, list) or not options:
                    raise _bad("credential_sets[].options must be a non-empty array")
                opts = tuple(tuple(_ids(o, set(ids))) for o in options)
                sets.append(opts)
                req = item.get("required", True)
                if not isinstance(req, bool):
                    raise _bad("credential_sets[].required must be a boolean")
                required.append(req)
        return cls(parsed, tuple(sets) if sets_raw is not None else None, tuple(required),
                   dict(raw))

    _ids: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", frozenset(c.id for c in self.credentials))

    def by_id(self, cred_id: str) -> CredentialQuery:
        for c in self.credentials:
            if c.id == cred_id:
                return c
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, f"no credential query {cred_id!r}")

    def check_answered(self, answered: set[str]) -> None:
        """Raise ``disclosure_mismatch`` unless the answered ids satisfy the query (§6.3)."""
        unknown = answered - self._ids
        if unknown:
            raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, f"unasked credentials {unknown}")
        if self.credential_sets is None:
            missing = self._ids - answered
            if missing:
                raise TesseraError(
                    ErrorCode.DISCLOSURE_MISMATCH, f"missing credentials {sorted(missing)}"
                )
            return
        for options, required in zip(self.credential_sets, self.required_sets, strict=True):
            if required and not any(set(o) <= answered for o in options):
                raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "a required credential set "
                                   "is not satisfied")


def _ids(value: Any, known: set[str]) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _bad("ids must be a non-empty array of strings")
    if not set(value) <= known:
        raise _bad("unknown id referenced")
    return list(value)


def _credential(raw: Any) -> CredentialQuery:
    if not isinstance(raw, dict):
        raise _bad("credential query must be an object")
    cred_id, fmt = raw.get("id"), raw.get("format")
    if not isinstance(cred_id, str) or not _ID.match(cred_id):
        raise _bad("credential id must match [A-Za-z0-9_-]{1,64}")
    if fmt not in FORMATS:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, f"DCQL format {fmt!r} not supported")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise _bad("meta must be an object")
    vct_values = meta.get("vct_values")
    if vct_values is not None and (
        not isinstance(vct_values, list) or not all(isinstance(v, str) for v in vct_values)
    ):
        raise _bad("meta.vct_values must be an array of strings")
    type_values = meta.get("type_values")
    if type_values is not None and (
        not isinstance(type_values, list)
        or not all(isinstance(t, list) and all(isinstance(x, str) for x in t) for t in type_values)
    ):
        raise _bad("meta.type_values must be an array of arrays of strings")
    claims_raw = raw.get("claims", [])
    if not isinstance(claims_raw, list) or len(claims_raw) > 64:
        raise _bad("claims must be an array (at most 64)")
    claims = tuple(_claim(c) for c in claims_raw)
    claim_ids = [c.id for c in claims if c.id is not None]
    if len(set(claim_ids)) != len(claim_ids):
        raise _bad("claim ids must be unique")
    claim_sets_raw = raw.get("claim_sets")
    claim_sets = None
    if claim_sets_raw is not None:
        if not claims or len(claim_ids) != len(claims):
            raise _bad("claim_sets needs claims that all have ids")
        if not isinstance(claim_sets_raw, list) or not claim_sets_raw:
            raise _bad("claim_sets must be a non-empty array")
        claim_sets = tuple(tuple(_ids(s, set(claim_ids))) for s in claim_sets_raw)
    return CredentialQuery(
        id=cred_id,
        format=fmt,
        vct_values=tuple(vct_values) if vct_values is not None else None,
        type_values=tuple(tuple(t) for t in type_values) if type_values is not None else None,
        claims=claims,
        claim_sets=claim_sets,
    )


def _claim(raw: Any) -> ClaimQuery:
    if not isinstance(raw, dict):
        raise _bad("claim query must be an object")
    path = raw.get("path")
    if (
        not isinstance(path, list)
        or not path
        or len(path) > 16
        or not all(p is None or isinstance(p, str) or (isinstance(p, int)
                   and not isinstance(p, bool) and p >= 0) for p in path)
    ):
        raise _bad("claim path must be a non-empty array of strings, indexes or null")
    claim_id = raw.get("id")
    if claim_id is not None and (not isinstance(claim_id, str) or not _ID.match(claim_id)):
        raise _bad("claim id must match [A-Za-z0-9_-]{1,64}")
    values = raw.get("values")
    if values is not None and (not isinstance(values, list) or not values or not all(
        isinstance(v, str | int | bool) for v in values
    )):
        raise _bad("claim values must be a non-empty array of strings, numbers or booleans")
    return ClaimQuery(claim_id, tuple(path), tuple(values) if values is not None else None)


def claims_query(
    cred_id: str, vct: str, claims: Sequence[str], *, require_true: bool = False,
    fmt: str = "dc+sd-jwt",
) -> dict[str, Any]:
    """A one-credential DCQL entry asking for top-level ``claims`` of ``vct``.

    With ``require_true`` each claim must be ``true``: the way to ask a
    derived boolean such as ``tier_at_least_gold``.
    """
    entry: dict[str, Any] = {
        "id": cred_id,
        "format": fmt,
        "meta": {"vct_values": [vct]},
        "claims": [
            {"path": [name], **({"values": [True]} if require_true else {})} for name in claims
        ],
    }
    return entry
