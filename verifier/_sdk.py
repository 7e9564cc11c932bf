from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera import credentials, jsonld
from tessera.dcql import CredentialQuery, Query
from tessera.did import HttpFetcher, Resolver, did_jwk, did_key, issuer_key_lookup
from tessera.did import fetch_budget as within_fetch_budget
from tessera.encoding import parse_json
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Clock, DIDResolver, Fetcher, NonceStore
from verifier._status import StatusCheck, default_status_check
from verifier._trust import TrustList

_log = logging.getLogger("tessera.verifier")


# A partial of the C function, not a def: the clock is read on every verify.
_utcnow: Clock = functools.partial(datetime.now, UTC)


@dataclass(frozen=True)
class PresentationRequest:
    """What the verifier asked for; its ``nonce`` is single use."""

    nonce: str
    audience: str
    dcql: dict[str, Any] | None
    transaction_data: tuple[str, ...] | None
    expires_at: datetime
    state: str
    # The parsed DCQL, kept so verify does not parse it again (not serialized).
    parsed_query: Query | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "audience": self.audience,
            "dcql": self.dcql,
            "transaction_data": list(self.transaction_data) if self.transaction_data else None,
            "expires_at": self.expires_at.isoformat(),
            "state": self.state,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PresentationRequest:
        td = data.get("transaction_data")
        return cls(
            nonce=str(data["nonce"]),
            audience=str(data["audience"]),
            dcql=data.get("dcql"),
            transaction_data=tuple(td) if td else None,
            expires_at=datetime.fromisoformat(str(data["expires_at"])),
            state=str(data.get("state", "")),
        )


@dataclass(frozen=True)
class PresentedCredential:
    """One verified credential of a presentation."""

    query_id: str | None
    format: str
    credential_type: str
    issuer: str
    holder: str | None
    claims: dict[str, Any]
    status: dict[str, Any] | None = None


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of :meth:`Verifier.verify`: never an exception.

    ``claims`` holds only what was disclosed *and* asked for; ``errors`` are
    codes from :mod:`verifier.errors`, empty exactly when ``ok``.
    """

    errors: tuple[str, ...]
    credentials: tuple[PresentedCredential, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.credentials)

    @property
    def issuer(self) -> str | None:
        return self.credentials[0].issuer if self.credentials else None

    @property
    def holder(self) -> str | None:
        return self.credentials[0].holder if self.credentials else None

    @property
    def credential_type(self) -> str | None:
        return self.credentials[0].credential_type if self.credentials else None

    @property
    def credential_types(self) -> tuple[str, ...]:
        return tuple(c.credential_type for c in self.credentials)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": list(self.errors),
            "issuer": self.issuer,
            "holder": self.holder,
            "credential_types": list(self.credential_types),
            "claims": self.claims,
        }

    @classmethod
    def failure(cls, *codes: ErrorCode | str) -> VerificationResult:
        return cls(errors=tuple(dict.fromkeys(str(ErrorCode(c)) for c in codes)))


def holder_id(key: PublicKey | None, payload: Mapping[str, Any]) -> str | None:
    """The holder's DID: a disclosed ``sub``, else the DID of the ``cnf`` key."""
    sub = payload.get("sub")
    if isinstance(sub, str):
        return sub
    if key is None:
        return None
    if key.crv in ("Ed25519", "P-256", "P-384"):
        return _did_key_of(key.crv, key.raw(compressed=True))
    return did_jwk(key)


@functools.lru_cache(maxsize=4096)
def _did_key_of(crv: str, raw: bytes) -> str:
    # did:key is base58 over a big integer in pure Python (~15 µs), paid twice
    # per presentation; a member's key recurs at every checkout.
    return did_key(PublicKey.from_raw(crv, raw))


class Verifier:
    """The partner SDK: create requests, verify presentations.

    ``resolver``, ``status_check``, ``nonces`` and ``clock`` have working
    defaults (DID resolution with an SSRF-safe HTTP client, status lists
    fetched the same way, an in-memory nonce store, the system clock); pass
    your own to share nonces across instances (SQL or Redis store) or to run
    without a network. ``fetcher`` is the HTTP client of both defaults
    (did:web documents and status lists), e.g.
    ``HttpFetcher(httpx.Client(transport=...))``; it is not used by a
    ``resolver`` or ``status_check`` you pass yourself.

    ``fetch_budget`` bounds the time one :meth:`verify` may spend fetching
    (DID documents and status lists together, through
    :class:`~tessera.did.HttpFetcher`); each fetch also has its own deadline.
    Past it the presentation is refused (``did_resolution_failed`` or
    ``status_unavailable``), never left waiting on a slow server.

    ``loader`` serves JSON-LD contexts to Data Integrity (``ldp_vc``)
    verification: the bundled ones by default; a partner's extra contexts
    with ``tessera.jsonld.DocumentLoader.from_files({url: (file, "sha256-...")})``
    or ``from_manifest(path)``, each file pinned by its digest and never
    fetched. ``issuer_must_control_key`` (default on) refuses an ``ldp_vc``
    credential signed with a key outside its issuer's DID
    (``issuer_key_mismatch``).
    """

    def __init__(
        self,
        *,
        trust: TrustList,
        resolver: DIDResolver | None = None,
        status_check: StatusCheck | None = None,
        fetcher: Fetcher | None = None,
        nonces: NonceStore | None = None,
        clock: Clock = _utcnow,
        allowed_algs: Collection[str] = SUPPORTED_ALGS,
        request_ttl: timedelta = timedelta(minutes=5),
        max_kb_age: timedelta = timedelta(minutes=5),
        clock_skew: timedelta = timedelta(seconds=60),
        fetch_budget: timedelta = timedelta(seconds=10),
        loader: jsonld.DocumentLoader | None = None,
        issuer_must_control_key: bool = True,
    ) -> None:
        from tessera.nonces import MemoryNonceStore, TakingNonceStore

        self.trust = trust
        # One fetcher for both defaults, as the VC API verifier does: the
        # default status check used to build its own HttpFetcher, which a
        # partner (or a test with httpx.MockTransport) could not replace.
        if fetcher is None and (resolver is None or status_check is None):
            fetcher = HttpFetcher()
        self._resolver: DIDResolver = resolver or Resolver(fetcher)
        self._status_check = status_check or default_status_check(
            self._resolver, fetcher, clock=clock, trusted=lambda did: self.trust.knows(did))
        # "is not None": an empty MemoryNonceStore has len() == 0, so it is falsy.
        # The system clock is the store's own default: told nothing, it reads
        # time.time() instead of making a datetime per take.
        self._nonces: NonceStore = nonces if nonces is not None else (
            MemoryNonceStore() if clock is _utcnow else MemoryNonceStore(clock))
        # With the request object in hand only "was the nonce live?" matters:
        # a store that can say so without reading the data back does.
        self._take_nonce: Callable[[str], bool] = (
            self._nonces.take if isinstance(self._nonces, TakingNonceStore)
            else lambda value: self._nonces.consume(value) is not None)
        self._clock = clock
        self._algs = frozenset(allowed_algs)
        self._ttl = request_ttl
        self._max_kb_age = max_kb_age
        self._skew = clock_skew
        self._fetch_budget = fetch_budget.total_seconds()
        self._resolve_issuer_key = issuer_key_lookup(self._resolver)
        self._loader = loader
        self._issuer_must_control_key = issuer_must_control_key

    # -- requests -------------------------------------------------------------
    def create_request(
        self,
        *,
        audience: str,
        dcql: Mapping[str, Any] | None = None,
        transaction_data: Sequence[str] | None = None,
        nonce: str | None = None,
    ) -> PresentationRequest:
        """A request with a fresh single-use nonce, recorded in the nonce store.

        ``nonce`` is for a request made elsewhere (an OpenID4VP front end, a
        till): it must carry at least 128 bits of randomness and is refused
        if already recorded.
        """
        if nonce is not None and len(nonce) < 16:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "a nonce needs at least 16 characters")
        # Parsed now so a malformed query is refused here, not at the till.
        query = Query.parse(dcql) if dcql is not None else None
        request = PresentationRequest(
            nonce=nonce or secrets.token_urlsafe(24),
            audience=audience,
            dcql=dict(dcql) if dcql is not None else None,
            transaction_data=tuple(transaction_data) if transaction_data else None,
            expires_at=self._clock() + self._ttl,
            state=secrets.token_urlsafe(16),
            parsed_query=query,
        )
        self._nonces.issue(
            request.nonce, ttl_seconds=int(self._ttl.total_seconds()), data=request.to_dict()
        )
        return request

    # -- verification ---------------------------------------------------------
    def _issuer_key(self, iss: str, header: dict[str, Any]) -> PublicKey:
        # Trust first, from the still unverified iss: resolving an unlisted
        # issuer's did:web would let anyone make this verifier fetch any URL
        # (and wait on it) before the answer is already known to be no.
        self._check_known(iss)
        return self._resolve_issuer_key(iss, header)

    def _check_known(self, issuer: str) -> None:
        if not self.trust.knows(issuer):
            raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, f"{issuer[:64]} is not trusted")

    def verify(
        self,
        vp_token: str | Mapping[str, Any],
        *,
        request: PresentationRequest | str,
        now: datetime | None = None,
    ) -> VerificationResult:
        """Verify a presentation against ``request``; never raises on bad input.

        ``request`` is the object from :meth:`create_request`, or its nonce
        (then the request is loaded from the shared nonce store, which makes
        any verifier instance able to finish it). Each nonce is accepted once.
        """
        try:
            with within_fetch_budget(self._fetch_budget):
                if (isinstance(vp_token, str) and (head := vp_token[:1]) != "{"
                        and not head.isspace()):
                    # A bare SD-JWT (the usual till answer) has no JSON-LD. Any
                    # leading whitespace (str.strip's: all of Unicode's) goes the
                    # long way, as _split_vp_token may then find JSON.
                    return self._verify(vp_token, request, now or self._clock())
                with _jsonld_work_budget(vp_token):
                    return self._verify(vp_token, request, now or self._clock())
        except TesseraError as exc:
            return VerificationResult.failure(exc.code)
        except (ValueError, TypeError, KeyError, RecursionError):
            return VerificationResult.failure(ErrorCode.MALFORMED)
        except Exception:
            # A plugged-in store, resolver or status checker failed (a database
            # or Redis outage): fail closed with a code, never crash the till.
            _log.exception("verification failed unexpectedly")
            return VerificationResult.failure(ErrorCode.INTERNAL_ERROR)

    def _verify(
        self, vp_token: str | Mapping[str, Any], request: PresentationRequest | str,
        now: datetime,
    ) -> VerificationResult:
        if isinstance(request, str):
            data = self._nonces.consume(request)
            if data is None:
                return VerificationResult.failure(ErrorCode.REPLAYED)
            req = PresentationRequest.from_dict(data)
            consumed = True
        else:
            req, consumed = request, False
        if now >= req.expires_at:
            return VerificationResult.failure(ErrorCode.REPLAYED)
        query = req.parsed_query
        if query is None and req.dcql is not None:
            query = Query.parse(req.dcql)
        items = _split_vp_token(vp_token, query)

        presented: list[PresentedCredential] = []
        errors: list[ErrorCode] = []
        holders: set[str] = set()
        for query_id, token in items:
            cq = query.by_id(query_id) if (query and query_id) else None
            creds, errs, holder = self._verify_one(token, req, cq, now)
            presented.extend(creds)
            errors.extend(errs)
            if holder is not None:
                holders.add(holder)
        if len(holders) > 1:
            # Credentials of two different members glued into one answer.
            errors.append(ErrorCode.KEY_BINDING_INVALID)
        if query is not None:
            try:
                query.check_answered({q for q, _ in items if q is not None})
            except TesseraError as exc:
                errors.append(exc.code)
        if not errors and not consumed and not self._take_nonce(req.nonce):
            errors.append(ErrorCode.REPLAYED)
        merged: dict[str, Any] = {}
        for cred in presented:
            for name, value in cred.claims.items():
                if name in merged and merged[name] != value:
                    errors.append(ErrorCode.DISCLOSURE_MISMATCH)
                merged.setdefault(name, value)
        return VerificationResult(
            # The usual answer has no errors: no generator and dict for it.
            errors=tuple(dict.fromkeys(str(e) for e in errors)) if errors else (),
            credentials=tuple(presented),
            claims=merged if not errors else {},
        )

    def _verify_one(
        self, token: Presentation, req: PresentationRequest, cq: CredentialQuery | None,
        now: datetime,
    ) -> tuple[list[PresentedCredential], list[ErrorCode], str | None]:
        if isinstance(token, dict):
            return self._verify_data_integrity(token, req, cq, now)
        vc = sd_jwt.verify(
            token,
            issuer_key=self._issuer_key,
            now=now,
            audience=req.audience,
            nonce=req.nonce,
            transaction_data=req.transaction_data,
            allowed_algs=self._algs,
            clock_skew=self._skew,
            max_kb_age=self._max_kb_age,
            check_validity=False,
        )
        errors: list[ErrorCode] = []
        ctype = credentials.by_vct(vc.vct)
        ctype.validate(vc.claims, partial=True)
        # vc is this call's own: its claims dict is not shared, no copy needed.
        claims = vc.claims
        if cq is not None:
            answered = cq.matches_type(fmt="dc+sd-jwt", vct=vc.vct)
            if not answered or cq.satisfied_option(claims) is None:
                errors.append(ErrorCode.DISCLOSURE_MISMATCH)
            else:
                # Nothing unasked is trusted: keep only what the query named
                # (two frozenset lookups rather than a union built per call;
                # a new dict only when something unasked was disclosed).
                asked, always = cq.asked, ctype.always_visible
                for name in claims:
                    if name not in asked and name not in always:
                        claims = {k: v for k, v in claims.items() if k in asked or k in always}
                        break
        try:
            sd_jwt.check_times(vc.payload, now, self._skew)
        except TesseraError as exc:
            errors.append(exc.code)
        status = vc.payload.get("status")
        errors.extend(self._trusted_status(vc.issuer, ctype.name, status, now))
        # Compared across credentials (and formats) as the DID of the holder key.
        holder = holder_id(vc.holder_key, {}) if vc.holder_key is not None else None
        sub = vc.payload.get("sub")
        cred = PresentedCredential(
            query_id=cq.id if cq else None,
            format="dc+sd-jwt",
            credential_type=ctype.name,
            issuer=vc.issuer,
            holder=sub if isinstance(sub, str) else holder,
            claims=claims,
            status=status if isinstance(status, dict) else None,
        )
        return [cred], errors, holder

    def _trusted_status(self, issuer: str, type_name: str, status: Any,
                        now: datetime) -> list[ErrorCode]:
        """The trust decision, then (only for a trusted issuer) the status list."""
        try:
            self.trust.check(issuer, type_name)
        except TesseraError as exc:
            # No fetch for a credential already refused: the list's URL is
            # the presenter's choice.
            return [exc.code]
        return self._check_status(status, issuer, now)

    def _check_status(self, status: Any, issuer: str, now: datetime) -> list[ErrorCode]:
        if status is None:
            return []
        try:
            self._status_check(status, issuer=issuer, now=now)
        except TesseraError as exc:
            return [exc.code]
        return []

    def _verify_data_integrity(
        self, vp: dict[str, Any], req: PresentationRequest, cq: CredentialQuery | None,
        now: datetime,
    ) -> tuple[list[PresentedCredential], list[ErrorCode], str | None]:
        """A W3C VP with a Data Integrity holder proof (``ldp_vc``)."""
        from tessera.formats import data_integrity

        embedded = vp.get("verifiableCredential")
        for unverified in embedded if isinstance(embedded, list) else [embedded]:
            # Trust first (see _issuer_key): no credential of an unlisted
            # issuer gets its proof key resolved.
            if isinstance(unverified, dict):
                self._check_known(_issuer_of_unverified(unverified))

        def key_lookup(vm: str, relationship: str) -> PublicKey:
            did = vm.split("#", 1)[0]
            # With issuer_must_control_key off the proof key may be another
            # DID's: a did:key / did:jwk resolves here without traffic, any
            # other key DID must be listed like an issuer (no request to a
            # party the trust list does not name).
            foreign_local = (not self._issuer_must_control_key
                             and did.startswith(("did:key:", "did:jwk:")))
            if relationship == "assertionMethod" and not foreign_local:
                self._check_known(did)
            return self._resolver.resolve(did).key(vm, relationship=relationship)

        verified = data_integrity.verify_presentation(
            vp, key_lookup=key_lookup, challenge=req.nonce, domain=req.audience, now=now,
            loader=self._loader, issuer_must_control_key=self._issuer_must_control_key,
        )
        holder = str(data_integrity.holder_of(vp))
        out: list[PresentedCredential] = []
        errors: list[ErrorCode] = []
        for vc in verified:
            types = vc.get("type")
            types = types if isinstance(types, list) else [types]
            ctype = next((t for t in credentials.CREDENTIAL_TYPES if t.name in types), None)
            if ctype is None:
                raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "not a loyalty credential type")
            issuer = _issuer_of_unverified(vc)
            subject = vc.get("credentialSubject")
            claims = {k: v for k, v in subject.items() if k != "id"} if isinstance(
                subject, dict) else {}
            if cq is not None:
                view = {**vc, "credentialSubject": subject}
                if not cq.matches_type(fmt="ldp_vc", vct=None, types=[str(t) for t in types]) \
                        or cq.satisfied_option(view) is None:
                    errors.append(ErrorCode.DISCLOSURE_MISMATCH)
                else:
                    asked = {str(c.path[1]) for c in cq.claims
                             if len(c.path) > 1 and c.path[0] == "credentialSubject"}
                    claims = {k: v for k, v in claims.items()
                              if k in asked | ctype.always_visible}
            errors.extend(self._trusted_status(issuer, ctype.name, vc.get("credentialStatus"), now))
            out.append(PresentedCredential(
                query_id=cq.id if cq else None, format="ldp_vc", credential_type=ctype.name,
                issuer=issuer, holder=holder, claims=claims,
                status=vc.get("credentialStatus") if isinstance(
                    vc.get("credentialStatus"), dict) else None,
            ))
        return out, errors, holder


Presentation = str | dict[str, Any]


def _issuer_of_unverified(vc: Mapping[str, Any]) -> str:
    issuer = vc.get("issuer")
    return str(issuer.get("id") if isinstance(issuer, dict) else issuer)


def _jsonld_work_budget(vp_token: str | Mapping[str, Any]) -> AbstractContextManager[object]:
    """One JSON-LD work budget for a whole answer: every VP in it and their status lists.

    An answer of SD-JWTs only has no JSON-LD: pyld is then not even imported.
    """
    if isinstance(vp_token, str) and not vp_token.lstrip().startswith("{"):
        return nullcontext()
    from tessera import jsonld

    return jsonld.work_budget()


def _is_di_presentation(value: Mapping[str, Any]) -> bool:
    return "@context" in value or "proof" in value


def _split_vp_token(
    vp_token: str | Mapping[str, Any], query: Query | None
) -> list[tuple[str | None, Presentation]]:
    """(DCQL id, presentation) pairs from the forms a vp_token takes.

    OpenID4VP 1.0 §8.1: a JSON object keyed by credential query id, each value
    an array of presentations (SD-JWT strings, or VP objects for ``ldp_vc``).
    A bare SD-JWT string or a bare VP object is accepted for direct SDK use
    when there is at most one credential query.
    """
    if isinstance(vp_token, str):
        text = vp_token.strip()
        if text.startswith("{"):
            parsed = parse_json(text)
            if not isinstance(parsed, dict):
                raise TesseraError(ErrorCode.MALFORMED, "vp_token must be an object")
            return _split_vp_token(parsed, query)
        return [(_single_query_id(query), text)]
    if not isinstance(vp_token, Mapping) or not vp_token:
        raise TesseraError(ErrorCode.MALFORMED, "vp_token must be a string or an object")
    if _is_di_presentation(vp_token):
        return [(_single_query_id(query), dict(vp_token))]
    out: list[tuple[str | None, Presentation]] = []
    for key, value in vp_token.items():
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > 8:
            raise TesseraError(ErrorCode.MALFORMED, "vp_token entries must be 1..8 presentations")
        for item in values:
            if isinstance(item, dict) and _is_di_presentation(item):
                out.append((str(key), item))
            elif isinstance(item, str):
                out.append((str(key), item))
            else:
                raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "unknown presentation form")
    if len(out) > 16:
        raise TesseraError(ErrorCode.TOO_LARGE, "too many presentations")
    return out


def _single_query_id(query: Query | None) -> str | None:
    if query is None:
        return None
    if len(query.credentials) != 1:
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "query asks for several credentials")
    return query.credentials[0].id
