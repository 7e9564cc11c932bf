"""Tessera verifier SDK: what a partner embeds at checkout.

>>> from verifier import Verifier, TrustList
>>> v = Verifier(trust=TrustList.from_file("trust.json"))
>>> req = v.create_request(audience="https://partner.example", dcql=...)
>>> result = v.verify(vp_token, request=req)
>>> result.ok, result.claims, result.errors

Low-level, per format: :func:`verifier.sd_jwt.verify`. Testing helpers for
your own unit tests: :mod:`verifier.testing`. Error codes: :mod:`verifier.errors`.
"""

from __future__ import annotations

from tessera.errors import ErrorCode
from verifier._sdk import (
    PresentationRequest,
    PresentedCredential,
    StatusCheck,
    VerificationResult,
    Verifier,
    token_status_check,
)
from verifier._trust import TrustedIssuer, TrustList

__all__ = [
    "ErrorCode",
    "PresentationRequest",
    "PresentedCredential",
    "StatusCheck",
    "TrustList",
    "TrustedIssuer",
    "VerificationResult",
    "Verifier",
    "token_status_check",
]
