"""The two loyalty credential types, their claims and their schemas.

Claims are format-neutral: the SD-JWT VC format carries them at the top level
of the payload; the Data Integrity format carries them in
``credentialSubject``. The derived booleans (``tier_at_least_<tier>``,
``points_at_least_<N>``) let a holder prove "Gold or better" or "at least 1000
points" without showing the tier or the balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any, Final

import jsonschema
import jsonschema_rs
from jsonschema import Draft202012Validator

import schemas
from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "CREDENTIAL_TYPES",
    "DEFAULT_POINTS_LADDER",
    "MEMBERSHIP",
    "POINTS",
    "CredentialType",
    "by_name",
    "by_vct",
    "membership_claims",
    "points_claims",
]

DEFAULT_POINTS_LADDER: Final[tuple[int, ...]] = (100, 250, 500, 1000, 2500, 5000, 10000)

_FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER


def _without_required(schema: Any) -> Any:
    """The schema for a *disclosed subset*: every ``required`` dropped, all else kept."""
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_without_required(v) for v in schema]
    return schema


def _inline_local_refs(schema: Any, defs: Mapping[str, Any], depth: int = 0) -> Any:
    """Replace each bare ``{"$ref": "#/$defs/x"}`` by a copy of ``x``.

    Same validation (a lone ``$ref`` applies the referenced schema to the same
    instance, JSON Schema 2020-12 §8.2.3.1), but jsonschema no longer resolves
    a reference on every call: a third of a partial validation's time went
    there (bench/README.md). ``$defs`` stays, so any ``$ref`` left in place
    (recursive, or with sibling keywords) still resolves.
    """
    if isinstance(schema, list):
        return [_inline_local_refs(v, defs, depth) for v in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if len(schema) == 1 and isinstance(ref, str) and ref.startswith("#/$defs/") and depth < 8:
        target = defs.get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict) and not {"$id", "$anchor", "$dynamicAnchor"} & set(target):
            return _inline_local_refs(target, defs, depth + 1)
    return {k: _inline_local_refs(v, defs, depth) for k, v in schema.items()}


def _fast(schema: Any) -> Any:
    defs = schema.get("$defs") if isinstance(schema, dict) else None
    return _inline_local_refs(schema, defs) if isinstance(defs, dict) else schema


def _formats_in(schema: Any) -> set[str]:
    if isinstance(schema, list):
        return set().union(*(_formats_in(v) for v in schema))
    if not isinstance(schema, dict):
        return set()
    found = {schema["format"]} if isinstance(schema.get("format"), str) else set()
    return found.union(*(_formats_in(v) for v in schema.values()))


def _format_function(name: str) -> Any:
    if name not in _FORMAT_CHECKER.checkers:
        # A format the reference does not check stays an annotation (JSON Schema
        # 2020-12 Validation §7.2), as it always was here: "date-time" included.
        return lambda _instance: True
    return lambda instance: _FORMAT_CHECKER.conforms(instance, name)


def _no_retrieval(uri: str) -> Any:
    # Our schemas only use local references; nothing is fetched at run time.
    raise TesseraError(ErrorCode.INTERNAL_ERROR, f"schema reference {uri!r} is not bundled")


def _compiled(schema: Any) -> jsonschema_rs.Validator:
    """``schema`` compiled by jsonschema-rs, with exactly the reference's format checks.

    The same JSON Schema file is the single source of truth for both
    validators; the compiled one decides (about 100x faster than building
    jsonschema's validators per sub-schema on every call, bench/README.md),
    jsonschema words the error. ``format`` uses the reference's checkers, so
    both agree on formats. Where they differ is ``pattern``: jsonschema uses
    Python's ``re.search``, whose ``$`` also matches before a trailing newline
    ("gold\\n" would pass ``^[a-z0-9_]{1,32}$``); JSON Schema patterns are
    ECMA-262 regular expressions (Validation §6.3.3, Core §6.4), where ``$`` is
    the end of input, which is what jsonschema-rs implements.
    """
    return jsonschema_rs.validator_for(
        schema,
        validate_formats=True,
        formats={name: _format_function(name) for name in _formats_in(schema)},
        retriever=_no_retrieval,
    )


@dataclass(frozen=True)
class CredentialType:
    name: str
    vct: str
    schema_file: str
    metadata_file: str
    # Claims a verifier may see even though they are not personal: they name the
    # programme, which the issuer's DID and vct already reveal.
    always_visible: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = schemas.load(self.schema_file)
        return loaded

    @cached_property
    def type_metadata(self) -> dict[str, Any]:
        loaded: dict[str, Any] = schemas.load(self.metadata_file)
        return loaded

    @cached_property
    def _full(self) -> Draft202012Validator:
        return Draft202012Validator(_fast(self.schema), format_checker=_FORMAT_CHECKER)

    @cached_property
    def _partial(self) -> Draft202012Validator:
        return Draft202012Validator(
            _fast(_without_required(self.schema)), format_checker=_FORMAT_CHECKER
        )

    # Compiled once per process per schema (cached_property on a module-level
    # constant), like the reference validators above.
    @cached_property
    def _compiled_full(self) -> jsonschema_rs.Validator:
        return _compiled(self.schema)

    @cached_property
    def _compiled_partial(self) -> jsonschema_rs.Validator:
        return _compiled(_without_required(self.schema))

    def validate(self, claims: Mapping[str, Any], *, partial: bool = False) -> None:
        """Raise ``schema_invalid`` unless ``claims`` fit the schema.

        ``partial`` is for a verifier: a selective presentation legitimately
        omits required claims, but whatever it shows must still be well-typed
        and nothing outside the schema is accepted.
        """
        # A copy only for other mappings: the validators take a dict, and a
        # dict is never changed here.
        instance = claims if type(claims) is dict else dict(claims)
        compiled = self._compiled_partial if partial else self._compiled_full
        try:
            if compiled.is_valid(instance):
                return
        except ValueError:
            pass  # not a JSON value (a date object, a non-string key): the reference words it
        # Rejected: the reference validator gives the message it always gave.
        validator = self._partial if partial else self._full
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            raise TesseraError(ErrorCode.SCHEMA_INVALID, f"{self.name} {where}: {error.message}")
        # Only an ECMA-262 pattern (see _compiled) gets here.
        try:
            first = next(iter(compiled.iter_errors(instance)), None)
        except ValueError as exc:
            raise TesseraError(ErrorCode.SCHEMA_INVALID, f"{self.name} (top): {exc}") from exc
        where = "/".join(str(p) for p in first.instance_path) if first is not None else ""
        message = first.message if first is not None else "rejected"
        raise TesseraError(ErrorCode.SCHEMA_INVALID, f"{self.name} {where or '(top)'}: {message}")


MEMBERSHIP: Final = CredentialType(
    name="LoyaltyMembershipCredential",
    vct="https://w3id.org/tessera/vct/LoyaltyMembershipCredential/v1",
    schema_file="LoyaltyMembershipCredential.schema.json",
    metadata_file="LoyaltyMembershipCredential.vct.json",
    always_visible=frozenset({"program"}),
)
POINTS: Final = CredentialType(
    name="LoyaltyPointsCredential",
    vct="https://w3id.org/tessera/vct/LoyaltyPointsCredential/v1",
    schema_file="LoyaltyPointsCredential.schema.json",
    metadata_file="LoyaltyPointsCredential.vct.json",
    always_visible=frozenset({"program"}),
)
CREDENTIAL_TYPES: Final[tuple[CredentialType, ...]] = (MEMBERSHIP, POINTS)


def by_name(name: str) -> CredentialType:
    for ctype in CREDENTIAL_TYPES:
        if ctype.name == name:
            return ctype
    raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, f"unknown credential type {name!r}")


def by_vct(vct: str) -> CredentialType:
    for ctype in CREDENTIAL_TYPES:
        if ctype.vct == vct:
            return ctype
    raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, f"unknown vct {vct!r}")


def _program(program: Mapping[str, str]) -> dict[str, str]:
    return {"id": program["id"], "name": program["name"], "brand": program["brand"]}


def membership_claims(
    *,
    program: Mapping[str, str],
    membership_number: str,
    tier: str,
    tiers: Sequence[tuple[str, int]],
    member_since: date,
    tier_valid_until: date,
    name: str | None = None,
    email: str | None = None,
) -> dict[str, Any]:
    """Claims of a membership credential, with ``tier_at_least_<t>`` for every tier.

    ``tiers`` is the programme's ladder as (name, rank). A member holds
    ``tier_at_least_<t>: true`` for every tier ranked at or below theirs and
    ``false`` above it, so "Gold or better" is one boolean to disclose.
    """
    ranks = dict(tiers)
    if tier not in ranks:
        raise TesseraError(ErrorCode.SCHEMA_INVALID, f"tier {tier!r} is not in the programme")
    rank = ranks[tier]
    claims: dict[str, Any] = {
        "program": _program(program),
        "membership_number": membership_number,
        "tier": {"name": tier, "rank": rank},
        "member_since": member_since.isoformat(),
        "tier_valid_until": tier_valid_until.isoformat(),
    }
    if name is not None:
        claims["name"] = name
    if email is not None:
        claims["email"] = email
    for other, other_rank in sorted(tiers, key=lambda t: t[1]):
        claims[f"tier_at_least_{other}"] = rank >= other_rank
    MEMBERSHIP.validate(claims)
    return claims


def points_claims(
    *,
    program: Mapping[str, str],
    membership_number: str,
    balance: int,
    as_of: datetime,
    checkpoint: tuple[int, str],
    expiring_next: tuple[int, date] | None = None,
    ladder: Iterable[int] = DEFAULT_POINTS_LADDER,
) -> dict[str, Any]:
    """Claims of a points credential with ``points_at_least_<N>`` for the ladder."""
    if as_of.tzinfo is None:
        raise TesseraError(ErrorCode.SCHEMA_INVALID, "as_of must be timezone-aware")
    tree_size, root_hash = checkpoint
    claims: dict[str, Any] = {
        "program": _program(program),
        "membership_number": membership_number,
        "points_balance": balance,
        "as_of": as_of.isoformat().replace("+00:00", "Z"),
        "checkpoint": {"tree_size": tree_size, "root_hash": root_hash},
    }
    if expiring_next is not None:
        claims["points_expiring_next"] = {
            "points": expiring_next[0], "on": expiring_next[1].isoformat(),
        }
    for step in sorted(set(ladder)):
        claims[f"points_at_least_{step}"] = balance >= step
    POINTS.validate(claims)
    return claims
