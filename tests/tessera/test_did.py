"""DIDs: did:key vectors, did:jwk, did:web over a mocked HTTP client, the resolver cache."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.did import (
    MAX_DID_DOCUMENT_BYTES,
    DIDDocument,
    HttpFetcher,
    Resolver,
    base58btc_decode,
    base58btc_encode,
    did_jwk,
    did_key,
    did_web_url,
    fetch_budget,
    multikey_decode,
    multikey_encode,
)
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey, generate_signer
from tests.conftest import VECTORS, vectors_dir

# -- did:key against the did:key spec's published vectors ------------------------------


def _did_key_cases() -> list[Any]:
    folder = VECTORS / "did-key"
    if not folder.is_dir():
        return [pytest.param(None, None, id="vectors-absent")]
    cases = []
    for name in ("ed25519-x25519.json", "nist-curves.json"):
        for did, entry in json.loads((folder / name).read_text()).items():
            vm = entry.get("verificationKeyPair") or entry["verificationMethod"]
            cases.append(pytest.param(did, vm, id=f"{name.split('.')[0]}:{did[8:24]}"))
    return cases


def _vector_key(vm: dict[str, Any]) -> PublicKey:
    if "publicKeyBase58" in vm:
        # Ed25519VerificationKey2018: raw key; P256Key2021: compressed SEC1 point.
        crv = {"Ed25519VerificationKey2018": "Ed25519", "P256Key2021": "P-256"}[vm["type"]]
        return PublicKey.from_raw(crv, base58btc_decode(vm["publicKeyBase58"]))
    return PublicKey.from_jwk(vm["publicKeyJwk"])


@pytest.mark.parametrize(("did", "vm"), _did_key_cases())
def test_did_key_vectors(did: str | None, vm: dict[str, Any] | None) -> None:
    if did is None or vm is None:
        vectors_dir("did-key")  # skips with the reason
        return
    if vm.get("publicKeyJwk", {}).get("crv") == "P-521":
        pytest.skip("P-521 is not a supported curve (Tessera: Ed25519, P-256, P-384)")
    key = _vector_key(vm)
    assert did_key(key) == did  # encode: key -> DID
    fragment = did[len("did:key:"):]
    assert multikey_decode(fragment) == key  # decode: DID -> key
    doc = Resolver().resolve(did)
    assert doc.key(f"{did}#{fragment}") == key
    assert doc.key(f"#{fragment}", relationship="authentication") == key
    assert doc.first_method_id() == f"{did}#{fragment}"


def test_did_key_vectors_cover_both_files() -> None:
    folder = vectors_dir("did-key")
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "ed25519-x25519.json", "nist-curves.json",
    ]


def test_p521_did_key_is_refused_cleanly() -> None:
    nist = json.loads((vectors_dir("did-key") / "nist-curves.json").read_text())
    did = next(d for d, e in nist.items()
               if e["verificationMethod"]["publicKeyJwk"]["crv"] == "P-521")
    with pytest.raises(TesseraError) as exc:
        Resolver().resolve(did)
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "ES384"])
def test_did_key_and_did_jwk_round_trip(alg: str) -> None:
    key = generate_signer(alg).public_key
    resolver = Resolver()
    for did in (did_key(key), did_jwk(key)):
        doc = resolver.resolve(did)
        [(method_id, found)] = doc.keys_for("assertionMethod")
        assert found == key and method_id.startswith(did + "#")
        assert resolver.key(method_id) == key
    assert did_key(key).startswith({"EdDSA": "did:key:z6Mk", "ES256": "did:key:zDn",
                                    "ES384": "did:key:z82"}[alg])
    assert did_jwk(key).endswith(b64url_encode(json.dumps(
        key.to_jwk(), separators=(",", ":")).encode()))


def test_did_key_must_be_canonical() -> None:
    key = generate_signer("ES256").public_key
    uncompressed = "z" + base58btc_encode(bytes([0x80, 0x24]) + key.raw(compressed=False))
    assert multikey_decode(uncompressed) == key  # decodable ...
    with pytest.raises(TesseraError) as exc:  # ... but not the DID's canonical form
        Resolver().resolve("did:key:" + uncompressed)
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


@pytest.mark.parametrize("did", [
    "did:key:", "did:key:x6Mk", "did:key:z0OIl", "did:key:z" + "1" * 600,
    "did:key:z" + base58btc_encode(bytes([0xEC, 0x01]) + b"\x09" * 32),  # X25519
    "did:jwk:!!", "did:jwk:" + b64url_encode(b"[]"),
    "did:jwk:" + b64url_encode(json.dumps({"kty": "oct", "k": "AA"}).encode()),
    "did:example:123", "did:web:", "x" * 3000,
])
def test_unresolvable_dids(did: str) -> None:
    with pytest.raises(TesseraError) as exc:
        Resolver().resolve(did)
    assert exc.value.code in (ErrorCode.DID_RESOLUTION_FAILED, ErrorCode.MALFORMED)


def test_did_jwk_private_or_encryption_key_refused() -> None:
    signer = generate_signer("ES256")
    private = "did:jwk:" + b64url_encode(json.dumps(signer.export_private_jwk()).encode())
    enc = "did:jwk:" + b64url_encode(json.dumps({**signer.public_key.to_jwk(),
                                                  "use": "enc"}).encode())
    for did in (private, enc):
        with pytest.raises(TesseraError) as exc:
            Resolver().resolve(did)
        assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


# -- base58 / multikey ------------------------------------------------------------------


@given(st.binary(max_size=80))
def test_base58_round_trip(data: bytes) -> None:
    text = base58btc_encode(data)
    assert base58btc_decode(text) == data
    assert set(text) <= set("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def test_base58_known_values() -> None:
    # From the base58btc draft (draft-msporny-base58 §5).
    assert base58btc_encode(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert base58btc_encode(b"\x00\x00\x28\x7f\xb4\xcd") == "11233QC4"
    assert base58btc_decode("") == b""


@pytest.mark.parametrize("bad", ["0", "O", "I", "l", "abc+", "é"])
def test_base58_refuses_other_alphabets(bad: str) -> None:
    with pytest.raises(TesseraError) as exc:
        base58btc_decode(bad)
    assert exc.value.code is ErrorCode.MALFORMED


@given(st.text(max_size=60))
def test_multikey_decode_never_crashes(text: str) -> None:
    try:
        key = multikey_decode(text)
    except TesseraError:
        return
    assert multikey_decode(multikey_encode(key)) == key


# -- DID documents ------------------------------------------------------------------------


def _doc(did: str, *keys: tuple[str, PublicKey], assertion: list[str] | None = None
         ) -> dict[str, Any]:
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "verificationMethod": [
            {"id": f"{did}#{name}", "type": "JsonWebKey", "controller": did,
             "publicKeyJwk": key.to_jwk()} for name, key in keys
        ],
        "assertionMethod": assertion if assertion is not None else [
            f"#{name}" for name, _ in keys],
    }


def test_document_relationships_and_foreign_keys() -> None:
    a, b = generate_signer("EdDSA").public_key, generate_signer("ES256").public_key
    did = "did:web:brand.example"
    doc = DIDDocument(did, _doc(did, ("a", a), ("b", b), assertion=["#a"]))
    assert doc.key("#a") == a
    with pytest.raises(TesseraError) as exc:
        doc.key("#b")  # present, but not listed for assertions
    assert exc.value.code is ErrorCode.KEY_NOT_FOUND
    with pytest.raises(TesseraError) as exc:
        doc.key("did:web:evil.example#a")  # someone else's key
    assert exc.value.code is ErrorCode.KEY_NOT_FOUND
    with pytest.raises(TesseraError) as exc:
        doc.key("#a", relationship="authentication")
    assert exc.value.code is ErrorCode.KEY_NOT_FOUND
    with pytest.raises(TesseraError) as exc:
        DIDDocument(did, _doc(did, assertion=["#ghost"])).key("#ghost")
    assert exc.value.code is ErrorCode.KEY_NOT_FOUND
    # A key once granted (relative and absolute id) is remembered for that
    # relationship only: the refusals above still hold after it.
    assert doc.key("#a") is doc.key(f"{did}#a") is doc.key("#a")
    for relationship in ("authentication", "capabilityInvocation"):
        with pytest.raises(TesseraError) as exc:
            doc.key(f"{did}#a", relationship=relationship)
        assert exc.value.code is ErrorCode.KEY_NOT_FOUND
    with pytest.raises(TesseraError) as exc:
        doc.key("#b")
    assert exc.value.code is ErrorCode.KEY_NOT_FOUND


def test_document_method_types() -> None:
    key = generate_signer("EdDSA").public_key
    did = "did:web:x.example"
    vms = [
        {"id": "#m", "type": "Multikey", "publicKeyMultibase": multikey_encode(key)},
        {"id": "#e", "type": "Ed25519VerificationKey2020", "publicKeyMultibase":
            multikey_encode(key)},
        {"id": "#b", "type": "Ed25519VerificationKey2018", "publicKeyBase58":
            base58btc_encode(key.raw())},
        {"id": "#u", "type": "Unknown2099", "publicKeyHex": "00"},
    ]
    doc = DIDDocument(did, {"id": did, "verificationMethod": vms,
                            "assertionMethod": ["#m", "#e", "#b", "#u"]})
    assert doc.key("#m") == doc.key("#e") == doc.key("#b") == key
    with pytest.raises(TesseraError) as exc:
        doc.key("#u")
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


# -- did:web ------------------------------------------------------------------------------


@pytest.mark.parametrize(("did", "url"), [
    # did:web §3.2.1 examples.
    ("did:web:w3c-ccg.github.io", "https://w3c-ccg.github.io/.well-known/did.json"),
    ("did:web:w3c-ccg.github.io:user:alice", "https://w3c-ccg.github.io/user/alice/did.json"),
    ("did:web:example.com%3A3000", "https://example.com:3000/.well-known/did.json"),
    ("did:web:example.com%3A3000:user:alice", "https://example.com:3000/user/alice/did.json"),
])
def test_did_web_url(did: str, url: str) -> None:
    assert did_web_url(did) == url


@pytest.mark.parametrize("did", [
    "did:web:", "did:key:z6Mk", "did:web:evil.com%2Fx", "did:web:a%40b.com",
    "did:web:example.com::x", "did:web:example.com:..", "did:web:example.com:a%2F..",
    "did:web:x.com%3Fq", "did:web:x.com%23f",
])
def test_did_web_url_refuses_tricks(did: str) -> None:
    with pytest.raises(TesseraError) as exc:
        did_web_url(did)
    assert exc.value.code is ErrorCode.MALFORMED


PRIVATE_NAMES = {"intranet.corp": "10.1.2.3", "localhost": "127.0.0.1",
                 "metadata.internal": "169.254.169.254"}


def fake_dns(host: str, port: int) -> list[str]:
    """A stand-in for DNS: IP literals are themselves, names a fixed table or a public IP."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return [PRIVATE_NAMES.get(host, "93.184.216.34")]


class Site:
    """A tiny in-memory web server for httpx.MockTransport, counting requests.

    The fetcher connects to the pinned address with the name in ``Host``;
    ``requests`` records the URL as named, ``connected`` the address used.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.requests: list[str] = []
        self.connected: list[str] = []

    def json(self, url: str, document: Any) -> None:
        body = json.dumps(document).encode()
        self.routes[url] = lambda _r: httpx.Response(
            200, content=body, headers={"content-type": "application/did+json"})

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.connected.append(request.url.host)
        url = str(request.url.copy_with(netloc=request.headers["host"].encode()))
        self.requests.append(url)
        route = self.routes.get(url)
        return route(request) if route else httpx.Response(404)

    def fetcher(self, **kwargs: Any) -> HttpFetcher:
        client = httpx.Client(transport=httpx.MockTransport(self.handler))
        kwargs.setdefault("resolve", fake_dns)
        return HttpFetcher(client, **kwargs)


@pytest.fixture
def site() -> Site:
    return Site()


@pytest.mark.parametrize(("did", "url"), [
    ("did:web:brand.example", "https://brand.example/.well-known/did.json"),
    ("did:web:brand.example%3A8443", "https://brand.example:8443/.well-known/did.json"),
    ("did:web:brand.example:programs:gold", "https://brand.example/programs/gold/did.json"),
])
def test_did_web_resolves_through_fetcher(site: Site, did: str, url: str) -> None:
    key = generate_signer("ES256").public_key
    site.json(url, _doc(did, ("key-1", key)))
    resolver = Resolver(site.fetcher())
    assert resolver.key(f"{did}#key-1") == key
    assert site.requests == [url]


def test_did_web_needs_a_fetcher() -> None:
    with pytest.raises(TesseraError) as exc:
        Resolver().resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


def test_did_web_document_id_mismatch(site: Site) -> None:
    key = generate_signer("EdDSA").public_key
    site.json("https://brand.example/.well-known/did.json",
              _doc("did:web:evil.example", ("key-1", key)))
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


def test_did_web_not_found_and_transport_errors(site: Site) -> None:
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    site.routes["https://slow.example/.well-known/did.json"] = boom
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:slow.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED


def test_did_web_malformed_document(site: Site) -> None:
    site.routes["https://brand.example/.well-known/did.json"] = lambda _r: httpx.Response(
        200, content=b'{"id": "did:web:brand.example", "id": "did:web:evil.example"}')
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.MALFORMED


def test_redirect_to_private_address_refused(site: Site) -> None:
    for target in ("https://169.254.169.254/latest/meta-data", "https://10.0.0.7/did.json",
                   "https://[::1]/did.json", "https://intranet.corp/did.json"):
        site.routes["https://brand.example/.well-known/did.json"] = lambda _r, t=target: (
            httpx.Response(302, headers={"location": t}))
        site.requests.clear()
        with pytest.raises(TesseraError) as exc:
            Resolver(site.fetcher()).resolve("did:web:brand.example")
        assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
        assert site.requests == ["https://brand.example/.well-known/did.json"]  # never followed


def test_redirect_to_public_https_followed(site: Site) -> None:
    key = generate_signer("EdDSA").public_key
    site.routes["https://brand.example/.well-known/did.json"] = lambda _r: httpx.Response(
        301, headers={"location": "https://cdn.example/brand/did.json"})
    site.json("https://cdn.example/brand/did.json", _doc("did:web:brand.example", ("k", key)))
    assert Resolver(site.fetcher()).key("did:web:brand.example#k") == key


def test_private_host_refused_unless_configured(site: Site) -> None:
    key = generate_signer("EdDSA").public_key
    site.json("https://intranet.corp/.well-known/did.json", _doc("did:web:intranet.corp",
                                                                   ("k", key)))
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:intranet.corp")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert site.requests == []
    assert Resolver(site.fetcher(allow_private=True)).key("did:web:intranet.corp#k") == key


def test_non_https_refused(site: Site) -> None:
    site.routes["http://brand.example/did.json"] = lambda _r: httpx.Response(200, content=b"{}")
    with pytest.raises(TesseraError) as exc:
        site.fetcher().fetch("http://brand.example/did.json")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    for scheme in ("file:///etc/passwd", "ftp://brand.example/x", "gopher://x/"):
        with pytest.raises(TesseraError):
            site.fetcher().fetch(scheme)
    # Nor by redirect (a downgrade).
    site.routes["https://brand.example/.well-known/did.json"] = lambda _r: httpx.Response(
        302, headers={"location": "http://brand.example/did.json"})
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert "http://brand.example/did.json" not in site.requests
    assert site.fetcher(allow_http=True).fetch("http://brand.example/did.json") == b"{}"


def test_redirect_loop_stops(site: Site) -> None:
    site.routes["https://brand.example/.well-known/did.json"] = lambda _r: httpx.Response(
        302, headers={"location": "/.well-known/did.json"})
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher(max_redirects=3)).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert len(site.requests) == 4


def test_oversized_document_refused(site: Site) -> None:
    url = "https://brand.example/.well-known/did.json"
    # Declared too large: refused from the header.
    site.routes[url] = lambda _r: httpx.Response(200, content=b"{" + b" " * 5000 + b"}")
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher(max_bytes=4096)).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.TOO_LARGE

    # Streamed without a length: cut off while reading.
    def endless() -> Iterator[bytes]:
        while True:
            yield b" " * 1024

    site.routes[url] = lambda _r: httpx.Response(200, content=endless())
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher(max_bytes=64 * 1024)).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.TOO_LARGE

    # Under the transport cap but over the DID document cap.
    doc = {"id": "did:web:brand.example", "pad": "x" * MAX_DID_DOCUMENT_BYTES}
    site.json(url, doc)
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher()).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_default_address_check_on_literals() -> None:
    # IP literals need no DNS, so the real resolver and check run offline.
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"{}")

    fetcher = HttpFetcher(httpx.Client(transport=httpx.MockTransport(handler)))
    for literal in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "[::1]", "[fd00::1]"):
        with pytest.raises(TesseraError) as exc:
            fetcher.fetch(f"https://{literal}/did.json")
        assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert seen == []
    assert fetcher.fetch("https://8.8.8.8/did.json") == b"{}"
    assert seen == ["https://8.8.8.8/did.json"]


# -- DNS rebinding: connect to the address that was checked (issue 9 item 4) -------------------


class Rebinder:
    """DNS that answers a public address first and loopback afterwards."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return [self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]]


def test_connection_goes_to_the_checked_address_with_name_in_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"{}")

    dns = Rebinder("93.184.216.34", "127.0.0.1")
    fetcher = HttpFetcher(httpx.Client(transport=httpx.MockTransport(handler)), resolve=dns)
    assert fetcher.fetch("https://rebind.example:8443/.well-known/did.json") == b"{}"
    # One lookup, checked, and used: httpx never gets the name to resolve again
    # (it would now answer 127.0.0.1).
    assert dns.asked == ["rebind.example"]
    [request] = seen
    assert request.url.host == "93.184.216.34" and request.url.port == 8443
    assert request.headers["host"] == "rebind.example:8443"
    assert request.extensions["sni_hostname"] == "rebind.example"


def test_every_redirect_hop_is_resolved_checked_and_pinned(site: Site) -> None:
    site.routes["https://brand.example/.well-known/did.json"] = lambda _r: httpx.Response(
        302, headers={"location": "https://cdn.example/did.json"})
    site.json("https://cdn.example/did.json", {"id": "did:web:brand.example"})
    dns = Rebinder("93.184.216.34", "127.0.0.1")
    with pytest.raises(TesseraError) as exc:
        Resolver(site.fetcher(resolve=dns)).resolve("did:web:brand.example")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert dns.asked == ["brand.example", "cdn.example"]
    assert site.connected == ["93.184.216.34"]  # the loopback hop is never connected

    dns = Rebinder("93.184.216.34", "8.8.4.4")
    site.requests.clear()
    site.connected.clear()
    assert site.fetcher(resolve=dns).fetch("https://brand.example/.well-known/did.json")
    assert site.requests == ["https://brand.example/.well-known/did.json",
                             "https://cdn.example/did.json"]
    assert site.connected == ["93.184.216.34", "8.8.4.4"]


def test_a_name_with_any_private_address_is_refused(site: Site) -> None:
    with pytest.raises(TesseraError) as exc:
        site.fetcher(resolve=lambda h, p: ["93.184.216.34", "127.0.0.1"]).fetch(
            "https://both.example/did.json")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    with pytest.raises(TesseraError) as exc:
        site.fetcher(resolve=lambda h, p: []).fetch("https://nothing.example/did.json")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED

    def fails(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    with pytest.raises(TesseraError) as exc:
        site.fetcher(resolve=fails).fetch("https://nothing.example/did.json")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert site.connected == []


# -- deadlines (issue 9 item 3) ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_trickled_body_hits_the_total_deadline(site: Site) -> None:
    # Each chunk arrives well within the per-read timeout; only the total
    # deadline stops it (before: the fetch ran until 1 MiB had arrived).
    clock = FakeClock()
    chunks: list[int] = []

    def trickle() -> Iterator[bytes]:
        while True:
            clock.t += 1.0  # one byte a second
            chunks.append(1)
            yield b" "

    url = "https://slow.example/.well-known/did.json"
    site.routes[url] = lambda _r: httpx.Response(200, content=trickle())
    with pytest.raises(TesseraError) as exc:
        site.fetcher(deadline=30.0, monotonic=clock).fetch(url)
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
    assert "deadline" in exc.value.detail
    assert 29 <= len(chunks) <= 31


def test_deadline_counts_across_redirects(site: Site) -> None:
    clock = FakeClock()

    def slow_redirect(_r: httpx.Request) -> httpx.Response:
        clock.t += 4.0
        return httpx.Response(302, headers={"location": "/.well-known/did.json"})

    site.routes["https://brand.example/.well-known/did.json"] = slow_redirect
    with pytest.raises(TesseraError) as exc:
        site.fetcher(deadline=10.0, max_redirects=10, monotonic=clock).fetch(
            "https://brand.example/.well-known/did.json")
    assert "deadline" in exc.value.detail
    assert len(site.requests) == 3  # 4 s each: the fourth hop would start past 10 s


def test_fetch_budget_bounds_all_fetches_of_a_block(site: Site) -> None:
    site.json("https://brand.example/.well-known/did.json", {"id": "did:web:brand.example"})
    fetcher = site.fetcher()
    with fetch_budget(0.0), pytest.raises(TesseraError) as exc:
        fetcher.fetch("https://brand.example/.well-known/did.json")
    assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED and "deadline" in exc.value.detail
    assert site.requests == []
    with fetch_budget(60.0), fetch_budget(30.0):
        assert fetcher.fetch("https://brand.example/.well-known/did.json")


def test_slow_name_resolution_hits_the_deadline(site: Site) -> None:
    import threading

    release = threading.Event()

    def hangs(host: str, port: int) -> list[str]:
        release.wait(5)
        return ["93.184.216.34"]

    try:
        with pytest.raises(TesseraError) as exc:
            site.fetcher(resolve=hangs, deadline=0.05).fetch("https://slow.example/did.json")
        assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
        assert site.connected == []
    finally:
        release.set()


# -- cache -------------------------------------------------------------------------------


class Ticker:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_resolver_cache_ttl(site: Site) -> None:
    did, url = "did:web:brand.example", "https://brand.example/.well-known/did.json"
    k1, k2 = generate_signer("EdDSA").public_key, generate_signer("EdDSA").public_key
    site.json(url, _doc(did, ("k", k1)))
    clock = Ticker()
    resolver = Resolver(site.fetcher(), cache_ttl=60, monotonic=clock)
    assert resolver.key(f"{did}#k") == k1
    site.json(url, _doc(did, ("k", k2)))  # the brand rotates in place
    clock.t += 59
    assert resolver.key(f"{did}#k") == k1  # cached
    assert len(site.requests) == 1
    clock.t += 2
    assert resolver.key(f"{did}#k") == k2  # TTL over: fetched again
    assert len(site.requests) == 2


def test_resolver_cache_is_bounded(site: Site) -> None:
    clock = Ticker()
    for i in range(3):
        did = f"did:web:b{i}.example"
        site.json(f"https://b{i}.example/.well-known/did.json", {"id": did})
    resolver = Resolver(site.fetcher(), max_entries=2, monotonic=clock)
    for i in (0, 1, 2, 0):
        resolver.resolve(f"did:web:b{i}.example")
    assert len(site.requests) == 4  # b0 was evicted by b2, so fetched twice


def test_pinned_documents_win_and_add(site: Site) -> None:
    did = "did:web:brand.example"
    key = generate_signer("ES256").public_key
    resolver = Resolver(site.fetcher(), documents={did: _doc(did, ("k", key))})
    assert resolver.key(f"{did}#k") == key
    assert site.requests == []
    other = generate_signer("ES256").public_key
    resolver.add(_doc(did, ("k", other)))
    assert resolver.key(f"{did}#k") == other
    with pytest.raises(TesseraError) as exc:
        resolver.add({"no": "id"})
    assert exc.value.code is ErrorCode.MALFORMED


# -- key rotation, end to end through the verifier -----------------------------------------


def test_key_rotation(site: Site) -> None:
    from verifier import TrustList, Verifier
    from verifier.testing import FixedClock, TestHolder, TestIssuer

    did, url = "did:web:brand.example", "https://brand.example/.well-known/did.json"
    clock = FixedClock(datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    old = generate_signer("ES256")
    new = generate_signer("EdDSA")
    issuer_old = TestIssuer(did, signer=old, clock=clock)  # key id did#key-1
    issuer_new = TestIssuer(did, signer=new, clock=clock)
    issuer_new.signer = issuer_new.signer.with_key_id(f"{did}#key-2")
    holder = TestHolder(clock=clock)
    old_cred = issuer_old.issue_membership(holder)

    both = _doc(did, ("key-1", old.public_key), ("key-2", new.public_key))
    site.json(url, both)
    ticks = Ticker()
    verifier = Verifier(trust=TrustList.of([(did, ["*"])]),
                        resolver=Resolver(site.fetcher(), cache_ttl=300, monotonic=ticks),
                        clock=clock)

    def check(cred: str) -> tuple[str, ...]:
        req = verifier.create_request(audience="https://shop.example")
        return verifier.verify(holder.present(cred, ["tier_at_least_gold"], req),
                               request=req).errors

    assert check(old_cred) == ()  # old key still listed: old credentials verify
    assert check(issuer_new.issue_membership(holder)) == ()  # and new ones too

    site.json(url, _doc(did, ("key-2", new.public_key)))  # old key retired
    ticks.t += 301
    assert check(old_cred) == ("key_not_found",)
    assert check(issuer_new.issue_membership(holder)) == ()
