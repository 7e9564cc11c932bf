"""Low-level Data Integrity verification with the issuer's keys given directly.

Verifies a W3C Verifiable Presentation (holder proof with ``challenge`` and
``domain``, then every credential in it) or a single credential, and returns
a :class:`~verifier.VerificationResult`; it never raises on bad input. There
is no trust list and no nonce store here: single use of ``challenge`` is the
caller's job. Keys come from ``keys`` (verification method id -> key) and,
for the holder's did:key / did:jwk, from local resolution.

JSON-LD contexts come from ``loader``: the bundled ones when it is ``None``;
add a partner's with ``tessera.jsonld.DocumentLoader.from_files`` or
``from_manifest`` (URL -> local file pinned by its digest; never fetched).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tessera import credentials, jsonld
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as _fmt
from tessera.keys import PublicKey
from verifier._sdk import PresentedCredential, VerificationResult

__all__ = ["verify"]


def verify(
    document: Mapping[str, Any],
    *,
    keys: Mapping[str, PublicKey],
    now: datetime,
    challenge: str | None = None,
    domain: str | None = None,
    loader: jsonld.DocumentLoader | None = None,
    issuer_must_control_key: bool = True,
) -> VerificationResult:
    """Verify a VP (``challenge`` and ``domain`` required) or a lone credential.

    ``issuer_must_control_key`` (on by default) refuses a credential whose
    proof key is not a key of its issuer's DID, as ``issuer_key_mismatch``.
    """
    local = Resolver()

    def key_lookup(vm: str, relationship: str) -> PublicKey:
        if vm in keys:
            return keys[vm]
        if vm.startswith(("did:key:", "did:jwk:")):
            return local.key(vm, relationship=relationship)
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, f"no key given for {vm}")

    try:
        doc = dict(document)
        types = doc.get("type")
        types = types if isinstance(types, list) else [types]
        if "VerifiablePresentation" in types:
            if challenge is None or domain is None:
                raise TesseraError(ErrorCode.INVALID_REQUEST, "a VP needs challenge and domain")
            verified = _fmt.verify_presentation(
                doc, key_lookup=key_lookup, challenge=challenge, domain=domain, now=now,
                loader=loader, issuer_must_control_key=issuer_must_control_key,
            )
            holder: str | None = _fmt.holder_of(doc)
        else:
            verified = [_fmt.verify_credential(
                doc, key_lookup=key_lookup, now=now, loader=loader,
                issuer_must_control_key=issuer_must_control_key)]
            holder = None
        presented = tuple(_presented(vc, holder) for vc in verified)
    except TesseraError as exc:
        return VerificationResult.failure(exc.code)
    except (ValueError, TypeError, KeyError, RecursionError):
        return VerificationResult.failure(ErrorCode.MALFORMED)
    merged: dict[str, Any] = {}
    for cred in presented:
        merged.update(cred.claims)
    return VerificationResult(errors=(), credentials=presented, claims=merged)


def _presented(vc: dict[str, Any], holder: str | None) -> PresentedCredential:
    types = vc.get("type")
    types = types if isinstance(types, list) else [types]
    ctype = next((t.name for t in credentials.CREDENTIAL_TYPES if t.name in types), None)
    issuer = vc.get("issuer")
    subject = vc.get("credentialSubject")
    subject = subject if isinstance(subject, dict) else {}
    return PresentedCredential(
        query_id=None, format="ldp_vc",
        credential_type=ctype or str(types[-1]),
        issuer=str(issuer.get("id") if isinstance(issuer, dict) else issuer),
        holder=holder or (str(subject["id"]) if "id" in subject else None),
        claims={k: v for k, v in subject.items() if k != "id"},
        status=vc.get("credentialStatus") if isinstance(vc.get("credentialStatus"), dict)
        else None,
    )
