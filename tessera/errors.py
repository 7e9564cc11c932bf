"""The one exception root of Tessera and its machine-readable codes.

Every failure a caller can act on is a :class:`TesseraError` carrying an
:class:`ErrorCode`. The verifier SDK turns them into ``result.errors``; the
HTTP services turn them into RFC 9457 problem documents through a single
handler. Messages never contain key material.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "TesseraError"]


class ErrorCode(StrEnum):
    """The fixed, documented set of codes (see ``docs/errors.md``)."""

    # Parsing and shape of the input.
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    SCHEMA_INVALID = "schema_invalid"
    # Signatures and keys.
    INVALID_SIGNATURE = "invalid_signature"
    KEY_NOT_FOUND = "key_not_found"
    DID_RESOLUTION_FAILED = "did_resolution_failed"
    # A policy refusal, not a bad signature: the proof key is not the issuer's.
    ISSUER_KEY_MISMATCH = "issuer_key_mismatch"
    # Trust.
    UNTRUSTED_ISSUER = "untrusted_issuer"
    CREDENTIAL_TYPE_NOT_ALLOWED = "credential_type_not_allowed"
    # Time.
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    # Status.
    REVOKED = "revoked"
    SUSPENDED = "suspended"
    STATUS_UNAVAILABLE = "status_unavailable"
    # Presentation binding.
    NONCE_MISMATCH = "nonce_mismatch"
    AUDIENCE_MISMATCH = "audience_mismatch"
    REPLAYED = "replayed"
    KEY_BINDING_MISSING = "key_binding_missing"
    KEY_BINDING_INVALID = "key_binding_invalid"
    DISCLOSURE_MISMATCH = "disclosure_mismatch"
    TRANSACTION_DATA_MISMATCH = "transaction_data_mismatch"
    # Service-side codes (issuer, wallet, ledger).
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    INVALID_REQUEST = "invalid_request"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    CONSENT_DENIED = "consent_denied"
    WRONG_PASSPHRASE = "wrong_passphrase"  # noqa: S105 - an error code, not a secret
    POOL_EMPTY = "pool_empty"
    # A transparency log left out a leaf it had signed a promise to include by then.
    LOG_PROMISE_BROKEN = "log_promise_broken"
    # A client sent more requests than a service's per-client limit (HTTP 429).
    RATE_LIMITED = "rate_limited"
    # The service's database cannot be reached or has not been migrated.
    DATABASE_UNAVAILABLE = "database_unavailable"
    # A bug or an outage on our side; HTTP services answer 500 with it, no details.
    INTERNAL_ERROR = "internal_error"


class TesseraError(Exception):
    """Root of every error Tessera raises on purpose.

    ``code`` is stable and machine-readable; ``detail`` is for humans and
    logs, and must never contain private key material.
    """

    code: ErrorCode
    detail: str

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        self.code = ErrorCode(code)
        self.detail = detail or self.code.value.replace("_", " ")
        super().__init__(f"{self.code.value}: {self.detail}")

    @classmethod
    def from_problem(cls, body: object, *, fallback: str) -> TesseraError:
        """The error a Tessera service reported in an RFC 9457 problem document.

        An unknown or missing ``code`` becomes ``invalid_request``: the peer
        refused, and a client must not guess more than that.
        """
        fields = body if isinstance(body, dict) else {}
        try:
            code = ErrorCode(str(fields.get("code")))
        except ValueError:
            code = ErrorCode.INVALID_REQUEST
        return cls(code, str(fields.get("detail") or fallback))

    def __reduce__(self) -> tuple[type[TesseraError], tuple[ErrorCode, str]]:
        return (type(self), (self.code, self.detail))
