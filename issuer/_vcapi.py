"""W3C VC API issuer endpoint: ``POST /credentials/issue`` with Data Integrity proofs.

Request and response follow the VC API (w3c-ccg/vc-api ``issuer.yml``:
``IssueCredentialRequest`` = ``{credential, options}``, ``201`` with
``{verifiableCredential}``) as the W3C interop suites (vc-data-model-2.0,
vc-di-eddsa, vc-di-ecdsa, bitstring-status-list) call it. Every issuer is a
key with one cryptosuite and a path prefix, so one process can be listed
once per suite the way other implementations are (``/eddsa/credentials/issue``,
``/ecdsa-sd/credentials/issue``); ``/credentials/issue`` picks among all of
them by ``options.cryptosuite`` and the credential's ``issuer``.

The router raises :class:`~tessera.errors.TesseraError`; the host
application's one problem+json handler renders it. A credential is refused
*before* anything is signed when its shape breaks the data model: a
signature over a document other implementations read differently (or not at
all) is worse than an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tessera import jsonld
from tessera.did import did_key
from tessera.encoding import MAX_JSON_BYTES
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity
from tessera.observability import count_outcome
from tessera.typing import Clock, Signer
from tessera.web import read_json_body

__all__ = ["VCAPI_SUITES", "VcApiIssuer", "validate_credential",
           "vcapi_issuer_router"]

VCAPI_SUITES: Final[Mapping[str, str]] = {
    "eddsa-rdfc-2022": "Ed25519",
    "ecdsa-rdfc-2019": "P-256",
    "ecdsa-sd-2023": "P-256",
}
"""Cryptosuites the VC API issues, and the curve each one signs with."""

_OPTIONS: Final = frozenset({"type", "cryptosuite", "mandatoryPointers", "credentialId"})
# XML Schema 1.1 dateTime (§3.3.7), lexical form. VCDM 2.0 §4.9 asks for a
# dateTimeStamp for validFrom/validUntil, i.e. the time zone is required.
_XSD_DATETIME: Final = re.compile(
    r"^-?([1-9][0-9]{3,}|0[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T(([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?|24:00:00(\.0+)?)"
    r"(?P<tz>Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))?$"
)
_ABSOLUTE_URI: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


@dataclass(frozen=True)
class VcApiIssuer:
    """One issuing key behind the VC API.

    ``did`` is the ``issuer`` a request must name; ``verification_method``
    goes into the proof; ``path`` is the route prefix (``""`` for the root
    only, ``"/eddsa"`` for ``/eddsa/credentials/issue`` as well).
    """

    signer: Signer
    did: str
    verification_method: str
    cryptosuite: str
    path: str = ""

    def __post_init__(self) -> None:
        want = VCAPI_SUITES.get(self.cryptosuite)
        if want is None:
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                               f"unsupported cryptosuite {self.cryptosuite!r}")
        if self.signer.public_key.crv != want:
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                               f"{self.cryptosuite} needs a {want} key")
        if self.path and (not self.path.startswith("/") or self.path.endswith("/")):
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               "path must start with '/' and not end with one")

    @classmethod
    def did_key(cls, signer: Signer, cryptosuite: str, path: str = "") -> VcApiIssuer:
        """An issuer whose DID is the did:key of ``signer``."""
        did = did_key(signer.public_key)
        return cls(signer=signer, did=did,
                   verification_method=f"{did}#{did[len('did:key:'):]}",
                   cryptosuite=cryptosuite, path=path)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _bad(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.MALFORMED, detail)


def _is_uri(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and bool(_ABSOLUTE_URI.match(value))


def _objects(value: Any, what: str, *, allow_empty_object: bool = True) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, dict) for i in items):
        raise _bad(f"{what} must be an object or a non-empty list of objects")
    if not allow_empty_object and any(not i for i in items):
        raise _bad(f"{what} must not be empty")
    return items


def _check_datetime(credential: dict[str, Any], name: str, *, zone_required: bool) -> None:
    if name not in credential:
        return
    value = credential[name]
    match = _XSD_DATETIME.match(value) if isinstance(value, str) and len(value) <= 64 else None
    if match is None:
        raise _bad(f"{name} is not an XML Schema dateTime")
    if zone_required and match.group("tz") is None:
        raise _bad(f"{name} has no time zone (VCDM 2.0 requires a dateTimeStamp)")


def issuer_id_of(credential: Mapping[str, Any]) -> str:
    """The issuer URL of a credential, checking VCDM §4.7 (URL, or object with an id URL)."""
    issuer = credential.get("issuer")
    if isinstance(issuer, dict):
        issuer = issuer.get("id")
        if not _is_uri(issuer):
            raise _bad("issuer object must have an id that is a URL")
    elif not _is_uri(issuer):
        raise _bad("issuer must be a URL or an object with an id")
    assert isinstance(issuer, str)
    return issuer


def validate_credential(credential: Any) -> str:
    """Check an unsecured credential against VCDM 2.0 (or 1.1); return its version.

    Shape only: term definitions are checked by the signer
    (:func:`tessera.jsonld.check_all_terms_defined`), the issuer's identity
    by the caller.
    """
    if not isinstance(credential, dict):
        raise _bad("credential must be a JSON object")
    if "proof" in credential:
        raise _bad("credential already has a proof")
    ctx = credential.get("@context")
    if ctx is None:
        raise _bad("credential has no @context")
    contexts = ctx if isinstance(ctx, list) else [ctx]
    if not contexts:
        raise _bad("@context is empty")
    # VCDM 2.0 §4.3 / VCDM 1.1 §4.1: the base context comes first; the other
    # version's base context anywhere would redefine protected terms.
    if contexts[0] == jsonld.CREDENTIALS_V2:
        version, other = "2.0", jsonld.CREDENTIALS_V1
    elif contexts[0] == jsonld.CREDENTIALS_V1:
        version, other = "1.1", jsonld.CREDENTIALS_V2
    elif jsonld.CREDENTIALS_V2 in contexts or jsonld.CREDENTIALS_V1 in contexts:
        raise _bad("the credentials base context must be the first @context")
    else:
        raise _bad(f"first @context must be {jsonld.CREDENTIALS_V2}")
    if other in contexts:
        raise _bad("@context mixes VCDM 1.1 and 2.0")
    for item in contexts[1:]:
        if not (_is_uri(item) or isinstance(item, dict)):
            raise _bad("each @context entry must be a URL or an object")
    types = credential.get("type")
    type_list = types if isinstance(types, list) else [types]
    if not all(isinstance(t, str) for t in type_list) or "VerifiableCredential" not in type_list:
        raise _bad("type must include VerifiableCredential")
    if "id" in credential and not _is_uri(credential["id"]):
        raise _bad("credential id must be a URL")
    issuer_id_of(credential)
    if "credentialSubject" not in credential:
        raise _bad("credential has no credentialSubject")
    _objects(credential["credentialSubject"], "credentialSubject", allow_empty_object=False)
    for name in ("credentialStatus", "credentialSchema", "evidence", "termsOfUse",
                 "refreshService"):
        if name in credential:
            for item in _objects(credential[name], name):
                if "type" not in item:
                    raise _bad(f"each {name} needs a type")
                if "id" in item and not _is_uri(item["id"]):
                    raise _bad(f"{name} id must be a URL")
    if version == "2.0":
        for name in ("issuanceDate", "expirationDate"):
            if name in credential:
                raise _bad(f"{name} is VCDM 1.1; VCDM 2.0 uses validFrom/validUntil")
        _check_datetime(credential, "validFrom", zone_required=True)
        _check_datetime(credential, "validUntil", zone_required=True)
    else:
        _check_datetime(credential, "issuanceDate", zone_required=False)
        _check_datetime(credential, "expirationDate", zone_required=False)
    return version


def _parse_options(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad("options must be an object")
    unknown = sorted(set(raw) - _OPTIONS)
    if unknown:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"unsupported option(s): {', '.join(u[:40] for u in unknown[:5])}")
    if "type" in raw and raw["type"] != "DataIntegrityProof":
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           f"unsupported proof type {str(raw['type'])[:40]!r}")
    suite = raw.get("cryptosuite")
    if suite is not None and suite not in VCAPI_SUITES:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           f"unsupported cryptosuite {str(suite)[:40]!r}")
    pointers = raw.get("mandatoryPointers")
    if pointers is not None and not (
        isinstance(pointers, list) and all(isinstance(p, str) for p in pointers)
    ):
        raise _bad("mandatoryPointers must be a list of JSON pointers")
    if "credentialId" in raw and not isinstance(raw["credentialId"], str):
        raise _bad("credentialId must be a string")
    return raw


def _pick(candidates: Sequence[VcApiIssuer], issuer_id: str, suite: str | None) -> VcApiIssuer:
    by_suite = [i for i in candidates if suite is None or i.cryptosuite == suite]
    if not by_suite:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           f"this endpoint does not issue {suite}")
    by_issuer = [i for i in by_suite if i.did == issuer_id]
    if not by_issuer:
        raise _bad(f"issuer {issuer_id[:120]!r} is not an issuer configured here")
    return by_issuer[0]


def issue_credential(
    body: dict[str, Any],
    candidates: Sequence[VcApiIssuer],
    *,
    now: datetime,
    loader: jsonld.DocumentLoader | None = None,
) -> dict[str, Any]:
    """The work behind ``POST /credentials/issue`` (no HTTP): returns the signed credential."""
    unknown = sorted(set(body) - {"credential", "options"})
    if unknown:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"unexpected member(s): {', '.join(u[:40] for u in unknown[:5])}")
    if "credential" not in body:
        raise _bad("request has no credential")
    credential = body["credential"]
    version = validate_credential(credential)
    options = _parse_options(body.get("options"))
    chosen = _pick(candidates, issuer_id_of(credential), options.get("cryptosuite"))
    pointers = options.get("mandatoryPointers")
    if pointers is not None and chosen.cryptosuite != "ecdsa-sd-2023":
        raise _bad(f"mandatoryPointers apply to ecdsa-sd-2023, not {chosen.cryptosuite}")
    unsecured = dict(credential)
    if version == "1.1" and "issuanceDate" not in unsecured:
        # VCDM 1.1 §4.6 makes issuanceDate required; the issuer is who knows it.
        unsecured["issuanceDate"] = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return data_integrity.issue(
        unsecured, signer=chosen.signer, cryptosuite=chosen.cryptosuite,
        verification_method=chosen.verification_method, created=now,
        mandatory_pointers=pointers, loader=loader,
    )


_ISSUE_OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["credential"],
            "properties": {
                "credential": {"type": "object",
                               "description": "An unsecured VCDM 2.0 (or 1.1) credential."},
                "options": {"type": "object", "properties": {
                    "type": {"type": "string", "enum": ["DataIntegrityProof"]},
                    "cryptosuite": {"type": "string", "enum": sorted(VCAPI_SUITES)},
                    "mandatoryPointers": {"type": "array", "items": {"type": "string"}},
                    "credentialId": {"type": "string"},
                }},
            },
        }}},
    },
    "responses": {
        "201": {"description": "Credential issued", "content": {"application/json": {
            "schema": {"type": "object", "properties": {
                "verifiableCredential": {"type": "object"}}}}}},
        "400": {"description": "Malformed credential or options (RFC 9457 problem document "
                               "with a Tessera error code)",
                "content": {"application/problem+json": {}}},
    },
}


def vcapi_issuer_router(
    issuers: Sequence[VcApiIssuer],
    *,
    loader: jsonld.DocumentLoader | None = None,
    clock: Clock = _utcnow,
    max_body_bytes: int = MAX_JSON_BYTES,
) -> APIRouter:
    """``POST [/prefix]/credentials/issue`` for each issuer's path, plus the root one."""
    if not issuers:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "at least one issuer is needed")
    router = APIRouter(tags=["VC API: issuer"])
    by_path: dict[str, list[VcApiIssuer]] = {"": list(issuers)}
    for issuer in issuers:
        if issuer.path:
            by_path.setdefault(issuer.path, []).append(issuer)

    def make(candidates: Sequence[VcApiIssuer]) -> Callable[..., Any]:
        async def issue(request: Request) -> JSONResponse:
            body = await read_json_body(request, max_bytes=max_body_bytes)
            signed = await run_in_threadpool(
                issue_credential, body, candidates, now=clock(), loader=loader)
            return JSONResponse({"verifiableCredential": signed}, status_code=201)
        return issue

    for path, candidates in by_path.items():
        suites = ", ".join(sorted({c.cryptosuite for c in candidates}))
        router.add_api_route(
            f"{path}/credentials/issue", make(candidates), methods=["POST"],
            summary=f"Issue a credential ({suites})", status_code=201,
            operation_id=f"issueCredential{path.replace('/', '_').replace('-', '_')}",
            openapi_extra=_ISSUE_OPENAPI, response_class=JSONResponse,
            dependencies=[count_outcome("issuance")],
        )
    return router
