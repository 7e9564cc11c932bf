"""The error codes a :class:`verifier.Verifier` reports in ``result.errors``.

They are the values of :class:`tessera.errors.ErrorCode`; this module lists
the ones a verification can produce, with what each means (also in
``docs/errors.md``). Compare with ``==`` against these constants or the
plain strings.
"""

from __future__ import annotations

from typing import Final

from tessera.errors import ErrorCode

__all__ = ["DESCRIPTIONS", "VERIFICATION_CODES", "ErrorCode"]

DESCRIPTIONS: Final[dict[ErrorCode, str]] = {
    ErrorCode.MALFORMED: "The presentation or a part of it cannot be parsed.",
    ErrorCode.TOO_LARGE: "The input is over a size, count or nesting limit.",
    ErrorCode.UNSUPPORTED_FORMAT: "Not a credential format or type this verifier knows.",
    ErrorCode.UNSUPPORTED_ALGORITHM: "Signature algorithm not allowed (none, HMAC, or not the "
    "key's own algorithm).",
    ErrorCode.SCHEMA_INVALID: "Disclosed claims do not fit the credential type's JSON Schema.",
    ErrorCode.INVALID_SIGNATURE: "The issuer's signature does not verify.",
    ErrorCode.KEY_NOT_FOUND: "The issuer's DID does not list the signing key for assertions.",
    ErrorCode.DID_RESOLUTION_FAILED: "The issuer's DID could not be resolved.",
    ErrorCode.ISSUER_KEY_MISMATCH: "The proof's key is not a key of the credential's issuer "
    "(policy issuer_must_control_key, on by default).",
    ErrorCode.UNTRUSTED_ISSUER: "The issuer is not in the trust list.",
    ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED: "The issuer is trusted, but not for this type.",
    ErrorCode.EXPIRED: "The credential's validity period has ended.",
    ErrorCode.NOT_YET_VALID: "The credential's validity period has not started.",
    ErrorCode.REVOKED: "The issuer revoked the credential.",
    ErrorCode.SUSPENDED: "The issuer suspended the credential.",
    ErrorCode.STATUS_UNAVAILABLE: "The status list could not be fetched or verified.",
    ErrorCode.NONCE_MISMATCH: "The key binding answers another request's nonce.",
    ErrorCode.AUDIENCE_MISMATCH: "The key binding is addressed to another verifier.",
    ErrorCode.REPLAYED: "The request's nonce was already used (or is unknown or expired).",
    ErrorCode.KEY_BINDING_MISSING: "No proof that the holder presented it (no KB-JWT).",
    ErrorCode.KEY_BINDING_INVALID: "The key binding is not signed by the credential's holder "
    "key, is stale, or does not cover this presentation.",
    ErrorCode.DISCLOSURE_MISMATCH: "A disclosure is tampered, duplicated, not in the credential, "
    "or the answer does not match what was asked.",
    ErrorCode.TRANSACTION_DATA_MISMATCH: "The key binding does not cover the requested "
    "transaction.",
    ErrorCode.INTERNAL_ERROR: "A plugged-in store, resolver or status service failed; the "
    "presentation was not accepted.",
}

VERIFICATION_CODES: Final[frozenset[ErrorCode]] = frozenset(DESCRIPTIONS)
