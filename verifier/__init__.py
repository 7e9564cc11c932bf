"""Tessera verifier SDK: what a partner embeds at checkout.

>>> from verifier import Verifier, TrustList
>>> v = Verifier(trust=TrustList.from_file("trust.json"))
>>> req = v.create_request(audience="https://partner.example", dcql=...)
>>> result = v.verify(vp_token, request=req)
>>> result.ok, result.claims, result.errors

OpenID4VP 1.0 (DCQL, direct_post, signed request objects):
:class:`OpenID4VPVerifier`. Low-level, per format: :func:`verifier.sd_jwt.verify`.
Testing helpers for your own unit tests: :mod:`verifier.testing`.
Error codes: :mod:`verifier.errors`.
"""

from __future__ import annotations

from tessera.errors import ErrorCode
from verifier._openid4vp import (
    AuthorizationRequest,
    DirectPostResponse,
    OpenID4VPVerifier,
    decode_transaction_data,
    encode_transaction_data,
    parse_direct_post,
    split_client_id,
)
from verifier._sdk import (
    PresentationRequest,
    PresentedCredential,
    VerificationResult,
    Verifier,
)
from verifier._status import StatusCheck, default_status_check
from verifier._trust import TrustedIssuer, TrustList

__all__ = [
    "AuthorizationRequest",
    "DirectPostResponse",
    "ErrorCode",
    "OpenID4VPVerifier",
    "PresentationRequest",
    "PresentedCredential",
    "StatusCheck",
    "TrustList",
    "TrustedIssuer",
    "VerificationResult",
    "Verifier",
    "decode_transaction_data",
    "default_status_check",
    "encode_transaction_data",
    "parse_direct_post",
    "split_client_id",
]
