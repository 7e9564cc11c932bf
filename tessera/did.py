"""DIDs: did:key, did:jwk and did:web, one resolver with a cache.

* did:key (W3C CCG did:key v0.7): multicodec-prefixed public key in
  multibase base58btc; Ed25519 (``0xed``), P-256 (``0x1200``) and P-384
  (``0x1201``), EC points compressed (§3.1.2).
* did:jwk: the base64url of the public JWK's JSON; the one method is ``#0``.
* did:web (W3C CCG did:web §3.2): ``did:web:host[%3Aport][:path]`` maps to
  ``https://host[:port]/path/did.json`` (or ``/.well-known/did.json``),
  fetched through :class:`HttpFetcher`: https only, a per-read timeout and a
  total deadline per fetch (and per verification, :func:`fetch_budget`), a
  size cap, no private or loopback addresses (unless configured), the
  connection made to the very address that was checked (no DNS rebinding),
  and every redirect hop checked the same way (SSRF).
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from tessera import telemetry
from tessera.encoding import b64url_decode, b64url_encode, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey
from tessera.typing import DIDResolver, Fetcher

__all__ = [
    "DEFAULT_FETCH_BUDGET",
    "ENV_FETCH_BUDGET",
    "DIDDocument",
    "HttpFetcher",
    "Resolver",
    "base58btc_decode",
    "base58btc_encode",
    "did_document",
    "did_jwk",
    "did_key",
    "did_web",
    "did_web_url",
    "fetch_budget",
    "fetch_budget_seconds",
    "holder_key_of",
    "issuer_key_lookup",
    "method_key_lookup",
    "multikey_decode",
    "multikey_encode",
]

_B58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58_ALPHABET)}

# multicodec varint prefixes (https://github.com/multiformats/multicodec)
_MULTICODEC: Final[dict[str, bytes]] = {
    "Ed25519": bytes([0xED, 0x01]),
    "P-256": bytes([0x80, 0x24]),
    "P-384": bytes([0x81, 0x24]),
}

MAX_DID_LENGTH: Final = 2048
MAX_DID_DOCUMENT_BYTES: Final = 64 * 1024
RELATIONSHIPS: Final = (
    "authentication",
    "assertionMethod",
    "capabilityInvocation",
    "capabilityDelegation",
)


def base58btc_encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    leading = len(data) - len(data.lstrip(b"\0"))
    return "1" * leading + "".join(reversed(out))


def base58btc_decode(text: str) -> bytes:
    if len(text) > 512:
        raise TesseraError(ErrorCode.TOO_LARGE, "base58 value too long")
    n = 0
    for ch in text:
        try:
            n = n * 58 + _B58_INDEX[ch]
        except KeyError:
            raise TesseraError(ErrorCode.MALFORMED, "not base58btc") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    leading = len(text) - len(text.lstrip("1"))
    return b"\0" * leading + body


def multikey_encode(key: PublicKey) -> str:
    """``z``-multibase multicodec public key, as did:key and Multikey use."""
    return "z" + base58btc_encode(_MULTICODEC[key.crv] + key.raw(compressed=True))


def multikey_decode(value: str) -> PublicKey:
    if not isinstance(value, str) or not value.startswith("z"):
        raise TesseraError(ErrorCode.MALFORMED, "multikey must be base58btc multibase ('z')")
    raw = base58btc_decode(value[1:])
    for crv, prefix in _MULTICODEC.items():
        if raw.startswith(prefix):
            return PublicKey.from_raw(crv, raw[len(prefix):])
    raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "unsupported multicodec key type")


def did_key(key: PublicKey) -> str:
    return "did:key:" + multikey_encode(key)


def did_jwk(key: PublicKey) -> str:
    return "did:jwk:" + b64url_encode(json.dumps(key.to_jwk(), separators=(",", ":")).encode())


def did_web(url: str, *segments: str) -> str:
    """The did:web naming ``url`` (plus path ``segments``): the inverse of :func:`did_web_url`.

    did:web §3.2: the port's colon is percent-encoded and path segments are
    joined with ``:``; the document is then served at ``{url}/did.json``, or at
    ``/.well-known/did.json`` when there is no path.
    """
    parsed = urllib.parse.urlsplit(url)
    host = (parsed.hostname or "").lower()
    if not host:
        raise TesseraError(ErrorCode.MALFORMED, f"no host in {url!r}")
    if parsed.port is not None:
        host += f"%3A{parsed.port}"
    path = [s for s in parsed.path.split("/") if s] + list(segments)
    return "did:web:" + ":".join([host, *(urllib.parse.quote(s, safe="") for s in path)])


def did_document(did: str, keys: Iterable[tuple[str, PublicKey]]) -> dict[str, Any]:
    """A did:web document listing ``(method id, key)`` pairs for assertions and authentication.

    Rotation: list the new key first and keep the old ones until every
    credential (or request) they signed has expired.
    """
    methods = [
        {"id": kid, "type": "JsonWebKey", "controller": did, "publicKeyJwk": key.to_jwk()}
        for kid, key in keys
    ]
    ids = [m["id"] for m in methods]
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/jwk/v1"],
        "id": did,
        "verificationMethod": methods,
        "assertionMethod": ids,
        "authentication": ids,
    }


def did_web_url(did: str) -> str:
    """The https URL of a did:web document (did:web §3.2.1)."""
    parts = did.split(":")
    if len(parts) < 3 or parts[:2] != ["did", "web"] or not parts[2]:
        raise TesseraError(ErrorCode.MALFORMED, f"not a did:web DID: {did!r}")
    host = urllib.parse.unquote(parts[2])
    if "/" in host or "@" in host or "?" in host or "#" in host:
        raise TesseraError(ErrorCode.MALFORMED, "did:web host is not a plain host[:port]")
    path = [urllib.parse.unquote(p) for p in parts[3:]]
    if any(not p or "/" in p or p in (".", "..") for p in path):
        raise TesseraError(ErrorCode.MALFORMED, "did:web path segment is invalid")
    suffix = "/".join(path) + "/did.json" if path else ".well-known/did.json"
    return f"https://{host}/{suffix}"


_MAX_GRANTED = 64


@dataclass(frozen=True)
class DIDDocument:
    """A resolved DID document with its verification methods parsed on demand."""

    id: str
    document: dict[str, Any]
    _keys: dict[str, PublicKey] = field(default_factory=dict, repr=False, compare=False)
    # (method id as asked, relationship) -> key, once every rule below passed:
    # an issuer's kid recurs on every presentation, the document never changes.
    _granted: dict[tuple[str, str], PublicKey] = field(
        default_factory=dict, repr=False, compare=False)

    def _absolute(self, ref: str) -> str:
        return self.id + ref if ref.startswith("#") else ref

    def methods(self) -> Iterable[dict[str, Any]]:
        vms = self.document.get("verificationMethod", [])
        yield from (vm for vm in vms if isinstance(vm, dict))
        for rel in RELATIONSHIPS:  # embedded methods count too (DID Core §5.3)
            yield from (vm for vm in self.document.get(rel, []) if isinstance(vm, dict))

    def has_relationship(self, method_id: str, relationship: str) -> bool:
        refs = self.document.get(relationship, [])
        if not isinstance(refs, list):
            return False
        for ref in refs:
            ref_id = ref.get("id") if isinstance(ref, dict) else ref
            if isinstance(ref_id, str) and self._absolute(ref_id) == method_id:
                return True
        return False

    def key(self, method_id: str, *, relationship: str = "assertionMethod") -> PublicKey:
        """The public key of ``method_id``, which must be listed for ``relationship``."""
        granted = self._granted.get((method_id, relationship))
        if granted is not None:
            return granted
        asked = method_id
        method_id = self._absolute(method_id)
        if not method_id.startswith(self.id + "#"):
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "key is not controlled by this DID")
        if not self.has_relationship(method_id, relationship):
            raise TesseraError(
                ErrorCode.KEY_NOT_FOUND, f"{method_id} is not listed for {relationship}"
            )
        key = self._keys.get(method_id)
        if key is None:
            for vm in self.methods():
                if isinstance(vm.get("id"), str) and self._absolute(vm["id"]) == method_id:
                    key = _key_of_method(vm)
                    self._keys[method_id] = key
                    break
        if key is not None:
            if len(self._granted) < _MAX_GRANTED:  # bounded: method ids come from JWT headers
                self._granted[(asked, relationship)] = key
            return key
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, f"no verification method {method_id}")

    def keys_for(self, relationship: str = "assertionMethod") -> list[tuple[str, PublicKey]]:
        out = []
        for vm in self.methods():
            vm_id = vm.get("id")
            if not isinstance(vm_id, str):
                continue
            full = self._absolute(vm_id)
            if self.has_relationship(full, relationship):
                out.append((full, self.key(full, relationship=relationship)))
        return out

    def first_method_id(self, relationship: str = "assertionMethod") -> str:
        refs = self.document.get(relationship) or []
        for ref in refs:
            ref_id = ref.get("id") if isinstance(ref, dict) else ref
            if isinstance(ref_id, str):
                return self._absolute(ref_id)
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, f"{self.id} has no {relationship} key")


def _key_of_method(vm: dict[str, Any]) -> PublicKey:
    if "publicKeyJwk" in vm:
        return PublicKey.from_jwk(vm["publicKeyJwk"])
    if "publicKeyMultibase" in vm:
        value = vm["publicKeyMultibase"]
        if vm.get("type") == "Ed25519VerificationKey2020" or vm.get("type") == "Multikey":
            return multikey_decode(value)
    if "publicKeyBase58" in vm and vm.get("type") == "Ed25519VerificationKey2018":
        return PublicKey.from_raw("Ed25519", base58btc_decode(vm["publicKeyBase58"]))
    raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "unsupported verification method type")


def _document_for_key(did: str, method_id: str, method: dict[str, Any],
                      context: list[str]) -> DIDDocument:
    doc = {
        "@context": context,
        "id": did,
        "verificationMethod": [{"id": method_id, "controller": did, **method}],
        **{rel: [method_id] for rel in RELATIONSHIPS},
    }
    return DIDDocument(did, doc)


def _resolve_did_key(did: str) -> DIDDocument:
    fragment = did[len("did:key:"):]
    key = multikey_decode(fragment)
    if multikey_encode(key) != fragment:
        raise TesseraError(ErrorCode.MALFORMED, "did:key is not in canonical form")
    return _document_for_key(
        did,
        f"{did}#{fragment}",
        {"type": "Multikey", "publicKeyMultibase": fragment},
        ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
    )


def _resolve_did_jwk(did: str) -> DIDDocument:
    jwk = parse_json_object(b64url_decode(did[len("did:jwk:"):], max_len=4096))
    if jwk.get("use") == "enc":
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "did:jwk is an encryption key")
    key = PublicKey.from_jwk(jwk)  # refuses private JWKs
    return _document_for_key(
        did,
        f"{did}#0",
        {"type": "JsonWebKey2020", "publicKeyJwk": key.to_jwk()},
        ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"],
    )


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the system resolver, as httpx would ask it)."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The absolute time.monotonic() by which every fetch of the current
# verification must be done (see fetch_budget); None when no budget is set.
_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tessera_fetch_budget", default=None
)


ENV_FETCH_BUDGET: Final = "TESSERA_FETCH_BUDGET"
DEFAULT_FETCH_BUDGET: Final = 10.0
# A verification is a member waiting at a till (or a suite's HTTP call): past
# two minutes nobody is waiting for the answer any more.
MAX_FETCH_BUDGET: Final = 120.0


def fetch_budget_seconds(value: str | float | None) -> float:
    """The services' fetch budget (``--fetch-budget`` / ``TESSERA_FETCH_BUDGET``), in seconds.

    Unset or empty: :data:`DEFAULT_FETCH_BUDGET`. Anything but a number in
    (0, 120] is refused as ``invalid_request``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_FETCH_BUDGET
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= MAX_FETCH_BUDGET:  # NaN fails this too
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{ENV_FETCH_BUDGET} must be a number of seconds in "
                           f"(0, {MAX_FETCH_BUDGET:g}], got {str(value)[:32]!r}")
    return seconds


class fetch_budget:  # lower case: it was, and is used as, a function
    """Bound every :class:`HttpFetcher` fetch made inside the block to ``seconds`` in total.

    A verification may resolve several DIDs and status lists; each fetch has
    its own deadline, and this bounds their sum. Nested budgets keep the
    earlier end. ``Verifier(fetch_budget=...)`` wraps each ``verify`` in one.
    """

    # A class, not @contextmanager: it wraps every Verifier.verify, and the
    # generator machinery cost more than the ContextVar work itself.
    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> None:
        end = time.monotonic() + self._seconds
        outer = _BUDGET.get()
        self._token = _BUDGET.set(end if outer is None else min(end, outer))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _BUDGET.reset(self._token)
            self._token = None


def _within(seconds: float, work: Callable[[], list[str]]) -> list[str]:
    # getaddrinfo has no timeout of its own; a worker thread lets the caller
    # give up at the deadline (the thread ends when the system resolver does).
    box: list[list[str] | BaseException] = []

    def run() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    worker = threading.Thread(target=run, name="tessera-resolve", daemon=True)
    worker.start()
    worker.join(max(seconds, 0.0))
    if not box:
        raise TimeoutError("name resolution did not finish before the deadline")
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class HttpFetcher:
    """Bounded HTTP GET for DID documents and status lists.

    * ``timeout`` bounds each connect and each read; ``deadline`` bounds the
      whole fetch, redirects, name resolution and a body trickled one byte
      at a time included (and :func:`fetch_budget`, when active, bounds all
      fetches of one verification). Past it the fetch fails with
      ``did_resolution_failed`` (status lists report ``status_unavailable``).
    * SSRF: https only (unless ``allow_http``), and every address the host
      resolves to must be public (unless ``allow_private``). The connection
      then goes to the (first) address that was checked, with the name as
      ``Host`` and as TLS SNI, so the certificate is still verified for the
      name: a resolver that answers a public address for the check and
      127.0.0.1 for the connect (DNS rebinding) reaches nothing. Every
      redirect hop is resolved, checked and pinned the same way.

    ``client`` may carry an ``httpx.MockTransport`` so tests never touch the
    network; a real client you pass should have keep-alive off
    (``httpx.Limits(max_keepalive_connections=0)``), as the default one has,
    so that a pooled connection to an address, verified for one name, never
    carries a request for another name on that address. ``resolve``
    (``(host, port) -> addresses``) replaces the system resolver. With
    ``allow_private`` and no ``resolve`` nothing is checked, so nothing is
    pinned (development mode, tests). ``is_public_host`` is the older,
    name-only check: when given, it decides and the connection is not pinned
    (tests with mock transports).
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        timeout: float = 5.0,
        deadline: float = 10.0,
        max_bytes: int = 1024 * 1024,
        max_redirects: int = 3,
        allow_http: bool = False,
        allow_private: bool = False,
        resolve: Callable[[str, int], Sequence[str]] | None = None,
        is_public_host: Callable[[str], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # No keep-alive: a pooled connection is keyed by the pinned address,
        # and one verified for another name must never carry this request.
        self._client = client or httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._timeout = timeout
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._max_redirects = max_redirects
        self._allow_http = allow_http
        self._allow_private = allow_private
        self._resolve = resolve or system_resolve
        # With allow_private nothing is checked, so there is nothing to pin
        # and the name is left to httpx, unless the caller maps names itself.
        self._pin = not allow_private or resolve is not None
        self._is_public_host = is_public_host
        self._now = monotonic

    def _left(self, end: float, url: str) -> float:
        left = end - self._now()
        if left <= 0:
            raise TesseraError(
                ErrorCode.DID_RESOLUTION_FAILED, f"GET {url}: deadline exceeded"
            )
        return left

    def _route(self, url: str, end: float) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Check ``url`` and say where to connect: (request URL, headers, extensions)."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "https" and not (self._allow_http and parsed.scheme == "http"):
            raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, f"refusing non-https URL {url}")
        host = parsed.hostname or ""
        if not host:
            raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "URL has no host")
        if self._is_public_host is not None:
            if not self._allow_private and not self._is_public_host(host):
                raise TesseraError(
                    ErrorCode.DID_RESOLUTION_FAILED, f"refusing non-public address for {host}"
                )
            return url, {}, {}
        if not self._pin:
            return url, {}, {}
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            addresses = _within(self._left(end, url), lambda: list(self._resolve(host, port)))
            ips = [ipaddress.ip_address(a) for a in addresses]
        except (OSError, ValueError) as exc:
            raise TesseraError(
                ErrorCode.DID_RESOLUTION_FAILED, f"cannot resolve {host}: {type(exc).__name__}"
            ) from exc
        if not ips or not (self._allow_private or all(ip.is_global for ip in ips)):
            raise TesseraError(
                ErrorCode.DID_RESOLUTION_FAILED, f"refusing non-public address for {host}"
            )
        pinned = ips[0]
        literal = f"[{pinned}]" if pinned.version == 6 else str(pinned)
        netloc = literal if parsed.port is None else f"{literal}:{parsed.port}"
        target = urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
        # Host keeps the name (and port) for virtual hosting; sni_hostname
        # makes httpcore send the name in the TLS handshake and check the
        # certificate against it (ssl server_hostname), not against the IP.
        headers = {"Host": parsed.netloc.rpartition("@")[2]}
        return target, headers, {"sni_hostname": host}

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        end = self._now() + self._deadline
        budget = _BUDGET.get()
        if budget is not None:
            # The budget is on time.monotonic; carry what is left of it over.
            end = min(end, self._now() + (budget - time.monotonic()))
        for _ in range(self._max_redirects + 1):
            target, headers, extensions = self._route(url, end)
            try:
                with self._client.stream(
                    "GET", target, headers={"Accept": accept, **headers},
                    follow_redirects=False, timeout=min(self._timeout, self._left(end, url)),
                    extensions=extensions,
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urllib.parse.urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        raise TesseraError(
                            ErrorCode.DID_RESOLUTION_FAILED,
                            f"GET {url} answered {response.status_code}",
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self._max_bytes:
                        raise TesseraError(ErrorCode.TOO_LARGE, f"{url} is over the size cap")
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise TesseraError(ErrorCode.TOO_LARGE, f"{url} is over the size cap")
                        # Each read is bounded by the timeout; this bounds
                        # their sum (a server trickling one byte a second).
                        self._left(end, url)
                    return bytes(body)
            except httpx.HTTPError as exc:
                raise TesseraError(
                    ErrorCode.DID_RESOLUTION_FAILED, f"GET {url} failed: {type(exc).__name__}"
                ) from exc
        raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "too many redirects")


class Resolver:
    """Resolves did:key, did:jwk and did:web with a TTL cache.

    did:key and did:jwk are computed locally; did:web goes through the
    injected :class:`~tessera.typing.Fetcher`. ``documents`` pre-seeds
    documents (an operator's pinned brand DIDs, or tests).
    """

    def __init__(
        self,
        fetcher: Fetcher | None = None,
        *,
        documents: dict[str, dict[str, Any]] | None = None,
        cache_ttl: float = 300.0,
        max_entries: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetcher = fetcher
        self._pinned = {did: DIDDocument(did, doc) for did, doc in (documents or {}).items()}
        self._ttl = cache_ttl
        self._max = max_entries
        self._now = monotonic
        self._cache: OrderedDict[str, tuple[float, DIDDocument]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, document: dict[str, Any]) -> None:
        did = document.get("id")
        if not isinstance(did, str):
            raise TesseraError(ErrorCode.MALFORMED, "DID document has no id")
        self._pinned[did] = DIDDocument(did, document)
        with self._lock:
            self._cache.pop(did, None)

    def resolve(self, did: str) -> DIDDocument:
        if not isinstance(did, str) or len(did) > MAX_DID_LENGTH:
            raise TesseraError(ErrorCode.MALFORMED, "DID missing or too long")
        did = did.split("#", 1)[0]
        pinned = self._pinned.get(did)
        if pinned is not None:
            return pinned
        with self._lock:
            hit = self._cache.get(did)
            if hit is not None and hit[0] > self._now():
                self._cache.move_to_end(did)
                telemetry.count(telemetry.CACHE_DID, "hit")
                return hit[1]
        telemetry.count(telemetry.CACHE_DID, "miss")
        doc = self._resolve_uncached(did)
        with self._lock:
            self._cache[did] = (self._now() + self._ttl, doc)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return doc

    def key(self, did_url: str, *, relationship: str = "assertionMethod") -> PublicKey:
        """Dereference a DID URL (``did#fragment``) to a public key for ``relationship``."""
        did = did_url.split("#", 1)[0]
        return self.resolve(did).key(did_url, relationship=relationship)

    def _resolve_uncached(self, did: str) -> DIDDocument:
        try:
            if did.startswith("did:key:"):
                return _resolve_did_key(did)
            if did.startswith("did:jwk:"):
                return _resolve_did_jwk(did)
        except TesseraError as exc:
            raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, exc.detail) from exc
        if did.startswith("did:web:"):
            if self._fetcher is None:
                raise TesseraError(
                    ErrorCode.DID_RESOLUTION_FAILED, "did:web needs a fetcher; none configured"
                )
            body = self._fetcher.fetch(did_web_url(did), accept="application/did+json")
            document = parse_json_object(body, max_bytes=MAX_DID_DOCUMENT_BYTES)
            if document.get("id") != did:
                raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "document id is not the DID")
            return DIDDocument(did, document)
        raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, f"unsupported DID method: {did[:32]}")


def method_key_lookup(
    resolver: DIDResolver,
    *,
    relationship: str = "assertionMethod",
    not_a_did: ErrorCode = ErrorCode.UNTRUSTED_ISSUER,
) -> Callable[[str, dict[str, Any]], PublicKey]:
    """``(did, jose_header) -> key``: ``kid`` must be a method *of that DID* for ``relationship``.

    A key from any other DID would let one party sign in another's name.
    """

    def lookup(did: str, header: dict[str, Any]) -> PublicKey:
        if not did.startswith("did:"):
            raise TesseraError(not_a_did, "signer is not a DID")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "JWT has no kid")
        if kid.startswith("#"):
            kid = did + kid
        if kid.split("#", 1)[0] != did:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND, "kid is not a method of the signer's DID")
        return resolver.resolve(did).key(kid, relationship=relationship)

    return lookup


def issuer_key_lookup(resolver: DIDResolver) -> Callable[[str, dict[str, Any]], PublicKey]:
    """``(iss, jose_header) -> key`` for a DID issuer's ``assertionMethod`` keys."""
    return method_key_lookup(resolver)


def holder_key_of(resolver: DIDResolver, did: str) -> PublicKey:
    """The key a member authenticates with: the DID's first ``authentication`` method."""
    document = resolver.resolve(did)
    return document.key(document.first_method_id("authentication"), relationship="authentication")
