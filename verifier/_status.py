from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tessera import telemetry
from tessera.did import HttpFetcher, issuer_key_lookup
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey
from tessera.status import (
    StatusChecker,
    check_bitstring_status,
    check_token_status,
    parse_bitstring_status_entry,
    parse_status_claim,
)
from tessera.typing import Clock, DIDResolver, Fetcher


class StatusCheck(Protocol):
    """Raises ``revoked``, ``suspended`` or ``status_unavailable`` (or returns).

    ``status`` is the credential's status claim (SD-JWT VC ``status``) or
    ``credentialStatus`` entry (Data Integrity); ``issuer`` is the
    credential's issuer, who must be the one that signed the list.
    """

    def __call__(self, status: Any, *, issuer: str, now: datetime) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _signer_did(header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    kid = header.get("kid")
    return str(payload.get("iss") or (kid.split("#", 1)[0] if isinstance(kid, str) else ""))


class _BitstringLists:
    """Fetches and verifies BitstringStatusListCredentials, cached for ``max_age``."""

    def __init__(self, fetcher: Fetcher, resolver: DIDResolver, max_age: timedelta) -> None:
        self._fetcher = fetcher
        self._resolver = resolver
        self._max_age = max_age.total_seconds()
        self._cache: dict[str, tuple[float, dict[str, Any], str]] = {}
        self._lock = threading.Lock()

    def get(self, url: str, *, issuer: str, now: datetime) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and hit[0] > time.monotonic():
            if hit[2] != issuer:
                raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "status list not signed by issuer")
            telemetry.count(telemetry.CACHE_STATUS_LIST, "hit")
            return hit[1]
        telemetry.count(telemetry.CACHE_STATUS_LIST, "miss")
        from tessera.formats import data_integrity

        def key_lookup(vm: str, relationship: str) -> PublicKey:
            did = vm.split("#", 1)[0]
            if did != issuer:
                # Refused before resolving: a list signed by anyone else says
                # nothing about the credential, so that DID is never fetched.
                raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "status list not signed by issuer")
            return self._resolver.resolve(did).key(vm, relationship=relationship)

        try:
            document = parse_json_object(self._fetcher.fetch(url, accept="application/vc+ld+json"))
            verified = data_integrity.verify_credential(document, key_lookup=key_lookup, now=now)
        except TesseraError as exc:
            raise TesseraError(
                ErrorCode.STATUS_UNAVAILABLE, f"status list {url}: {exc.code.value}"
            ) from exc
        listed = verified.get("issuer")
        if (listed.get("id") if isinstance(listed, dict) else listed) != issuer:
            raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "status list not signed by issuer")
        with self._lock:
            self._cache[url] = (time.monotonic() + self._max_age, verified, issuer)
        return verified


def default_status_check(
    resolver: DIDResolver,
    fetcher: Fetcher | None = None,
    *,
    max_age: timedelta = timedelta(minutes=5),
    clock: Clock = _utcnow,
    trusted: Callable[[str], bool] | None = None,
) -> StatusCheck:
    """Status checking for both formats, with caches bounded by ``max_age``.

    SD-JWT VCs: IETF Token Status List (``statuslist+jwt``). Data Integrity
    credentials: W3C Bitstring Status List credentials, whose own proof is
    verified. In both cases the list must be signed by the credential's
    issuer: a list signed by anyone else says nothing about the credential.
    ``trusted`` (the verifier's trust list) is asked about a list's signer
    before its DID is resolved, so an unlisted signer causes no DID fetch.
    """
    fetcher = fetcher or HttpFetcher()
    lookup = issuer_key_lookup(resolver)

    def token_key(header: Mapping[str, Any], payload: Mapping[str, Any]) -> PublicKey:
        signer = _signer_did(header, payload)
        if trusted is not None and not trusted(signer):
            raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "status list signer is not trusted")
        return lookup(signer, dict(header))

    tokens = StatusChecker(fetcher, token_key, clock=clock, max_age=max_age)
    bitstrings = _BitstringLists(fetcher, resolver, max_age)

    def check(status: Any, *, issuer: str, now: datetime) -> None:
        if isinstance(status, Mapping) and "status_list" in status:
            ref = parse_status_claim(dict(status))
            token = tokens.token(ref.uri, now=now)
            if _signer_did(token.header, {"iss": token.issuer}) != issuer:
                raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "status list not signed by issuer")
            check_token_status(dict(status), tokens, now=now)
            return
        entries = status if isinstance(status, list) else [status]
        if not entries:
            raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, "empty credentialStatus")
        for raw in entries:
            try:
                entry = parse_bitstring_status_entry(raw)
            except TesseraError as exc:
                raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, exc.detail) from exc
            listed = bitstrings.get(entry.status_list_credential, issuer=issuer, now=now)
            check_bitstring_status(entry, listed)

    return check
