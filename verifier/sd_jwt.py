"""Low-level SD-JWT VC verification with the issuer's keys given directly.

For a partner who manages issuer keys itself (no trust list, no DID
resolution). Like :meth:`verifier.Verifier.verify`, it returns a
:class:`~verifier.VerificationResult` and never raises on a bad presentation;
there is no nonce store here, so single use of ``nonce`` is the caller's job.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from tessera import credentials
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt as _fmt
from tessera.keys import SUPPORTED_ALGS, PublicKey
from verifier._sdk import PresentedCredential, VerificationResult, holder_id

__all__ = ["verify"]

IssuerKeys = PublicKey | Sequence[PublicKey] | Mapping[str, PublicKey]


def _lookup(keys: IssuerKeys) -> PublicKey | _fmt.IssuerKeyLookup:
    if isinstance(keys, PublicKey):
        return keys
    if isinstance(keys, Mapping):
        by_kid = dict(keys)

        def by_header(iss: str, header: dict[str, Any]) -> PublicKey:
            kid = header.get("kid")
            if isinstance(kid, str) and kid.startswith("#"):
                kid = iss + kid
            if not isinstance(kid, str) or kid not in by_kid:
                raise TesseraError(ErrorCode.KEY_NOT_FOUND, "no issuer key for this kid")
            return by_kid[kid]

        return by_header
    candidates = list(keys)

    def by_alg(iss: str, header: dict[str, Any]) -> PublicKey:
        # Without kids, the key must be unambiguous for the header's algorithm.
        fitting = [k for k in candidates if k.alg == header.get("alg")]
        if len(fitting) != 1:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "no single issuer key for this alg")
        return fitting[0]

    return by_alg


def verify(
    presentation: str,
    *,
    issuer_keys: IssuerKeys,
    audience: str | None,
    nonce: str | None,
    now: datetime,
    require_key_binding: bool = True,
    transaction_data: Collection[str] | None = None,
    allowed_algs: Collection[str] = SUPPORTED_ALGS,
    clock_skew: timedelta = timedelta(seconds=60),
    max_kb_age: timedelta = timedelta(minutes=5),
) -> VerificationResult:
    """Verify one SD-JWT VC presentation against the given issuer keys."""
    try:
        vc = _fmt.verify(
            presentation,
            issuer_key=_lookup(issuer_keys),
            now=now,
            audience=audience,
            nonce=nonce,
            require_key_binding=require_key_binding,
            transaction_data=transaction_data,
            allowed_algs=allowed_algs,
            clock_skew=clock_skew,
            max_kb_age=max_kb_age,
        )
        ctype = credentials.by_vct(vc.vct)
        ctype.validate(vc.claims, partial=True)
    except TesseraError as exc:
        return VerificationResult.failure(exc.code)
    except (ValueError, TypeError, KeyError, RecursionError):
        return VerificationResult.failure(ErrorCode.MALFORMED)
    status = vc.payload.get("status")
    cred = PresentedCredential(
        query_id=None,
        format="dc+sd-jwt",
        credential_type=ctype.name,
        issuer=vc.issuer,
        holder=holder_id(vc.holder_key, vc.payload),
        claims=dict(vc.claims),
        status=status if isinstance(status, dict) else None,
    )
    return VerificationResult(errors=(), credentials=(cred,), claims=dict(vc.claims))
