"""Hostile inputs around remote documents and numbers (issue 9, items 3-6).

Each case is an attacker's path: a number that parses to infinity inside a
signed claim, a server that trickles or floods, a name that rebinds to
loopback, an untrusted issuer whose DID would be fetched. Every case asserts
the refusal code, and where work is bounded, a CPU bound measured with
``time.process_time`` (never wall clock).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import credentials
from tessera.did import HttpFetcher, Resolver, did_key
from tessera.encoding import MAX_JSON_NUMBER, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.formats import sd_jwt
from tessera.formats.sd_jwt import SdJwt, parse
from tessera.jose import decode_unverified
from tessera.keys import generate_signer
from tessera.status import (
    STATUS_LIST_JWT_TYP,
    BitstringStatusList,
    StatusChecker,
    StatusList,
    bitstring_status_list_credential,
    sign_status_list_token,
)
from tessera.typing import Signer
from verifier import PresentationRequest, Verifier, default_status_check
from verifier.errors import VERIFICATION_CODES
from verifier.testing import FixedClock, InMemoryResolver, TestHolder, TestIssuer

AUD = "https://shop.example"
LIST_URL = "https://lists.test/1"

# -- numbers (item 6) -------------------------------------------------------------------------

# Literal JSON number texts: the ones that used to parse to inf or to a huge
# int, and every int/float the generators find, written as JSON writes them.
OUT_OF_RANGE = ["1e400", "-1e400", "1E309", "9007199254740992", "1" * 40, "-2e300"]
number_texts = st.sampled_from(OUT_OF_RANGE) | st.integers().map(str) | st.floats(
    allow_nan=False, allow_infinity=False).map(json.dumps)


def _in_range(text: str) -> bool:
    try:
        return abs(float(text)) <= MAX_JSON_NUMBER
    except OverflowError:
        return False


def _sign_raw(header: dict[str, Any], payload_text: str, signer: Signer) -> str:
    """A JWS over exactly ``payload_text`` (json.dumps cannot write ``1e400``)."""
    h = b64url_encode(json.dumps({**header, "alg": signer.alg}).encode())
    p = b64url_encode(payload_text.encode())
    return f"{h}.{p}.{b64url_encode(signer.sign(f'{h}.{p}'.encode()))}"


def _with_number(payload: dict[str, Any], path: tuple[str, ...], text: str) -> str:
    """``payload`` as JSON text with the member at ``path`` set to the literal ``text``."""
    marker = "__tessera_number__"
    edited = json.loads(json.dumps(payload))
    target = edited
    for name in path[:-1]:
        target = target.setdefault(name, {})
    target[path[-1]] = marker
    return json.dumps(edited).replace(f'"{marker}"', text)


def with_kb_number(presentation: str, claim: str, text: str, holder: Signer) -> str:
    """``presentation`` with its KB-JWT re-signed by ``holder``, ``claim`` set to ``text``."""
    head, _, kb = presentation.rpartition("~")
    jws = decode_unverified(kb)
    header = {k: v for k, v in jws.header.items() if k != "alg"}
    return f"{head}~" + _sign_raw(header, _with_number(jws.payload, (claim,), text), holder)


class _World:
    def __init__(self) -> None:
        self.clock = FixedClock()
        self.brand = TestIssuer(clock=self.clock)
        self.member = TestHolder(clock=self.clock)
        self.verifier = Verifier(trust=self.brand.trust_list(),
                                 resolver=InMemoryResolver(self.brand.did_document),
                                 clock=self.clock, status_check=self._no_status)

    @staticmethod
    def _no_status(status: Any, *, issuer: str, now: Any) -> None:
        return None

    def request(self) -> PresentationRequest:
        return self.verifier.create_request(audience=AUD)

    def presentation(self, req: PresentationRequest, *, issuer_claim: tuple[str, ...] = (),
                     kb_claim: tuple[str, ...] = (), text: str = "0") -> str:
        cred = self.brand.issue_membership(self.member)
        parsed = parse(cred)
        jwt = parsed.jwt
        if issuer_claim:
            jws = decode_unverified(jwt)
            header = {k: v for k, v in jws.header.items() if k != "alg"}
            jwt = _sign_raw(header, _with_number(jws.payload, issuer_claim, text),
                            self.brand.signer)
        cred = SdJwt(jwt, parsed.disclosures, None).serialize()
        presented = sd_jwt.present(cred, disclose=["tier_at_least_gold"],
                                   holder=self.member.signer, audience=req.audience,
                                   nonce=req.nonce, issued_at=self.clock())
        if kb_claim:
            presented = with_kb_number(presented, kb_claim[0], text, self.member.signer)
        return presented


# A KB-JWT that does not decode is a failed key binding (sd_jwt.verify maps
# every KB-JWT decoding failure to it); a credential JWT is malformed.
REFUSAL = {"issuer": "malformed", "kb": "key_binding_invalid"}
NUMERIC_CLAIMS = [
    ("issuer", ("iat",)), ("issuer", ("exp",)), ("issuer", ("nbf",)),
    ("issuer", ("status", "status_list", "idx")), ("kb", ("iat",)),
]


@pytest.mark.parametrize(("where", "claim"), NUMERIC_CLAIMS)
@pytest.mark.parametrize("text", ["1e400", "-1e400", "9007199254740992"])
def test_out_of_range_numeric_claim_is_malformed(where: str, claim: tuple[str, ...],
                                                 text: str) -> None:
    # Before the fix: iat 1e400 -> int(inf) -> OverflowError -> internal_error
    # from Verifier.verify (and a 500 from the services that wrap it).
    w = _World()
    req = w.request()
    vp = w.presentation(req, text=text, **{f"{where}_claim": claim})
    result = w.verifier.verify(vp, request=req)
    assert result.errors == (REFUSAL[where],)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NUMERIC_CLAIMS), number_texts)
def test_any_number_in_any_numeric_claim_gets_a_code(where_claim: tuple[str, tuple[str, ...]],
                                                     text: str) -> None:
    where, claim = where_claim
    w = _World()
    req = w.request()
    vp = w.presentation(req, text=text, **{f"{where}_claim": claim})
    result = w.verifier.verify(vp, request=req)
    assert set(result.errors) <= VERIFICATION_CODES
    assert "internal_error" not in result.errors
    if not _in_range(text):
        assert result.errors == (REFUSAL[where],)


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
def test_sd_jwt_verify_never_raises_overflow(claim: str) -> None:
    # Documented to raise only TesseraError; 1e400 raised OverflowError.
    w = _World()
    req = w.request()
    vp = w.presentation(req, issuer_claim=(claim,), text="1e400")
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(vp, issuer_key=w.brand.signer.public_key, now=w.clock(), audience=AUD,
                      nonce=req.nonce)
    assert exc.value.code is ErrorCode.MALFORMED


class _OneDocument:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        return self.body


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["iat", "exp", "nbf", "ttl"]), number_texts)
def test_any_number_in_a_status_list_token_claim_gets_a_code(claim: str, text: str) -> None:
    clock = FixedClock()
    brand = TestIssuer(clock=clock)
    now = int(clock().timestamp())
    payload = {"sub": LIST_URL, "iat": now - 60, "exp": now + 3600,
               "status_list": StatusList(bits=1, size=16).encode()}
    token = _sign_raw({"typ": STATUS_LIST_JWT_TYP, "kid": brand.signer.key_id},
                      _with_number(payload, (claim,), text), brand.signer)
    checker = StatusChecker(_OneDocument(token.encode()),
                            lambda h, p: brand.signer.public_key, clock=clock)
    try:
        checker.status(LIST_URL, 3)
    except TesseraError as exc:
        assert exc.code is ErrorCode.STATUS_UNAVAILABLE
        if not _in_range(text):
            # Refused by the parser, not by an OverflowError caught later.
            assert ": malformed: " in exc.detail
    else:
        assert _in_range(text)


# -- trust before traffic (item 5) -------------------------------------------------------------


class Recorder:
    """A MockTransport web: serves ``pages`` and records every URL asked for."""

    def __init__(self, pages: dict[str, tuple[str, bytes]] | None = None) -> None:
        self.pages = pages or {}
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(str(request.url))
        page = self.pages.get(str(request.url))
        if page is None:
            return httpx.Response(404)
        return httpx.Response(200, headers={"content-type": page[0]}, content=page[1])

    def fetcher(self) -> HttpFetcher:
        return HttpFetcher(httpx.Client(transport=httpx.MockTransport(self.handler)),
                           is_public_host=lambda host: True)


ROGUE = "did:web:rogue.test"
ROGUE_DOC_URL = "https://rogue.test/.well-known/did.json"


def _rogue() -> TestIssuer:
    return TestIssuer(ROGUE, signer=generate_signer("ES256"))


def _doc(issuer: TestIssuer) -> tuple[str, bytes]:
    return "application/did+json", json.dumps(issuer.did_document).encode()


def test_untrusted_sd_jwt_issuer_causes_no_traffic() -> None:
    # Before: the rogue's did.json was fetched and its signature checked, and
    # only then was the issuer found not to be on the trust list.
    clock = FixedClock()
    brand, rogue, member = TestIssuer(clock=clock), _rogue(), TestHolder(clock=clock)
    rogue.clock = clock
    web = Recorder({ROGUE_DOC_URL: _doc(rogue)})
    v = Verifier(trust=brand.trust_list(), resolver=Resolver(web.fetcher()), clock=clock)
    req = v.create_request(audience=AUD)
    result = v.verify(member.present(rogue.issue_membership(member), ["tier_at_least_gold"],
                                     req), request=req)
    assert result.errors == ("untrusted_issuer",)
    assert web.calls == []


def test_untrusted_data_integrity_issuer_causes_no_traffic() -> None:
    rogue = _rogue()
    holder = generate_signer("EdDSA")
    holder_did = did_key(holder.public_key)
    holder = holder.with_key_id(f"{holder_did}#{holder_did.split(':')[2]}")
    clock = FixedClock()
    claims = credentials.membership_claims(
        program={"id": "rogue-rewards", "name": "Rogue", "brand": ROGUE},
        membership_number="M-1", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=clock().date(), tier_valid_until=clock().date(), name="Alice",
    )
    vc = di.loyalty_credential(credentials.MEMBERSHIP, claims, issuer=ROGUE, subject=holder_did,
                               valid_from=clock() - timedelta(days=1))
    signed = di.issue(vc, signer=rogue.signer, cryptosuite="ecdsa-rdfc-2019",
                      verification_method=rogue.signer.key_id, created=clock())
    web = Recorder({ROGUE_DOC_URL: _doc(rogue)})
    v = Verifier(trust=TestIssuer().trust_list(), resolver=Resolver(web.fetcher()), clock=clock)
    req = v.create_request(audience=AUD)
    vp = di.present([signed], signer=holder, holder=holder_did, challenge=req.nonce,
                    domain=AUD, created=clock())
    assert v.verify(vp, request=req).errors == ("untrusted_issuer",)
    assert web.calls == []


def test_credential_refused_by_trust_fetches_no_status_list() -> None:
    # A trusted brand, but not for this credential type: the status URL (the
    # presenter's choice) is not fetched for a credential already refused.
    clock = FixedClock()
    brand, member = TestIssuer(clock=clock), TestHolder(clock=clock)
    web = Recorder()
    v = Verifier(trust=brand.trust_list("LoyaltyPointsCredential"),
                 resolver=Resolver(web.fetcher(), documents={brand.did: brand.did_document}),
                 clock=clock)
    req = v.create_request(audience=AUD)
    cred = brand.issue_membership(member, status={"status_list": {"idx": 3, "uri": LIST_URL}})
    result = v.verify(member.present(cred, ["tier_at_least_gold"], req), request=req)
    assert result.errors == ("credential_type_not_allowed",)
    assert web.calls == []


def test_status_list_token_of_an_untrusted_signer_resolves_no_did() -> None:
    # The list is fetched (the trusted issuer named it), but a token signed
    # by someone off the trust list never gets that signer's DID fetched.
    clock = FixedClock()
    brand, member, rogue = TestIssuer(clock=clock), TestHolder(clock=clock), _rogue()
    token = sign_status_list_token(StatusList(), rogue.signer, uri=LIST_URL, issued_at=clock(),
                                   expires_at=None, issuer=ROGUE)
    web = Recorder({LIST_URL: ("application/statuslist+jwt", token.encode()),
                    ROGUE_DOC_URL: _doc(rogue)})
    fetcher = web.fetcher()
    resolver = Resolver(fetcher, documents={brand.did: brand.did_document})
    v = Verifier(trust=brand.trust_list(), resolver=resolver, clock=clock,
                 status_check=default_status_check(resolver, fetcher, clock=clock,
                                                   trusted=lambda did: did == brand.did))
    req = v.create_request(audience=AUD)
    cred = brand.issue_membership(member, status={"status_list": {"idx": 3, "uri": LIST_URL}})
    result = v.verify(member.present(cred, ["tier_at_least_gold"], req), request=req)
    assert result.errors == ("status_unavailable",)
    assert web.calls == [LIST_URL]


def test_bitstring_list_signed_by_another_did_resolves_no_did() -> None:
    clock = FixedClock()
    brand, rogue = TestIssuer(clock=clock), _rogue()
    body = bitstring_status_list_credential(
        BitstringStatusList(), credential_id=LIST_URL, issuer=ROGUE, status_purpose="revocation",
        valid_from=clock() - timedelta(days=1))
    signed = di.issue(body, signer=rogue.signer, cryptosuite="ecdsa-rdfc-2019",
                      verification_method=rogue.signer.key_id, created=clock())
    web = Recorder({LIST_URL: ("application/vc+ld+json", json.dumps(signed).encode()),
                    ROGUE_DOC_URL: _doc(rogue)})
    fetcher = web.fetcher()
    check = default_status_check(Resolver(fetcher), fetcher, clock=clock)
    entry = {"type": "BitstringStatusListEntry", "statusPurpose": "revocation",
             "statusListIndex": "3", "statusListCredential": LIST_URL}
    with pytest.raises(TesseraError) as exc:
        check(entry, issuer=brand.did, now=clock())
    assert exc.value.code is ErrorCode.STATUS_UNAVAILABLE
    assert web.calls == [LIST_URL]


# -- slow, huge and rebinding remote documents (items 3 and 4) -----------------------------------


class SlowServer:
    """A loopback HTTP(S) server in a thread, answering every GET with ``body``.

    ``pace`` seconds pass between chunks of ``chunk`` bytes; ``length`` is the
    declared Content-Length (None: close-delimited). ``sent`` counts the bytes
    actually written before the client hung up.
    """

    def __init__(self, body: Callable[[], Iterator[bytes]], *, pace: float = 0.0,
                 length: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.body, self.pace, self.length, self.tls = body, pace, length, tls
        self.sent = 0
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                self._answer(conn)
            except (OSError, ssl.SSLError):
                pass  # the client gave up (what the deadline tests want)
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        self.requests.append(head.split(b"\r\n", 1)[0].decode())
        length = f"Content-Length: {self.length}\r\n" if self.length is not None else ""
        conn.sendall(f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode())
        for chunk in self.body():
            if self._stop.is_set():
                return
            conn.sendall(chunk)
            self.sent += len(chunk)
            if self.pace:
                time.sleep(self.pace)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


def _trickle(total: int) -> Callable[[], Iterator[bytes]]:
    return lambda: (b" " for _ in range(total))


def _endless() -> Iterator[bytes]:
    while True:
        yield b" " * 65536


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    """A throwaway CA and a leaf certificate for ``did.test`` (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed: needed to make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp_path, check=True,  # noqa: S603 - fixed args
                       capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Tessera test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=did.test")
    (tmp_path / "san.ext").write_text("subjectAltName=DNS:did.test\n")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "san.ext")
    return {"ca": tmp_path / "ca.pem", "cert": tmp_path / "leaf.pem",
            "key": tmp_path / "leaf.key"}


def _server_tls(certs: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    return ctx


def _loopback_fetcher(certs: dict[str, Path], **kw: Any) -> HttpFetcher:
    """Names resolve to 127.0.0.1 (allowed here), TLS trusts only the test CA."""
    client = httpx.Client(verify=ssl.create_default_context(cafile=str(certs["ca"])))
    return HttpFetcher(client, resolve=lambda host, port: ["127.0.0.1"], allow_private=True,
                       **kw)


def test_pinned_connection_still_verifies_the_certificate_for_the_name(
    certs: dict[str, Path],
) -> None:
    # The connection goes to 127.0.0.1 (the pinned address), yet TLS is
    # checked against the name: the certificate has no IP address in it.
    doc = json.dumps({"id": "did:web:did.test"}).encode()
    server = SlowServer(lambda: iter([doc]), length=len(doc), tls=_server_tls(certs))
    try:
        fetcher = _loopback_fetcher(certs)
        assert fetcher.fetch(f"https://did.test:{server.port}/.well-known/did.json") == doc
        # Another name on the same address: the certificate does not cover it.
        with pytest.raises(TesseraError) as exc:
            fetcher.fetch(f"https://evil.test:{server.port}/.well-known/did.json")
        assert exc.value.code is ErrorCode.DID_RESOLUTION_FAILED
        assert len(server.requests) == 1  # no HTTP request without a verified certificate
    finally:
        server.close()


def _verify_once(v: Verifier, brand: TestIssuer, member: TestHolder,
                 status: dict[str, Any] | None = None) -> tuple[tuple[str, ...], float]:
    req = v.create_request(audience=AUD)
    vp = member.present(brand.issue_membership(member, status=status), ["tier_at_least_gold"],
                        req)
    started = time.process_time()
    result = v.verify(vp, request=req)
    return result.errors, time.process_time() - started


def test_did_web_trickled_one_byte_at_a_time_is_cut_at_the_verification_budget(
    certs: dict[str, Path],
) -> None:
    # 200 bytes at 20 ms each would take 4 s; per-read timeouts never fire.
    server = SlowServer(_trickle(200), pace=0.02, length=200, tls=_server_tls(certs))
    try:
        brand = TestIssuer(f"did:web:did.test%3A{server.port}")
        member = TestHolder()
        v = Verifier(trust=brand.trust_list(), resolver=Resolver(_loopback_fetcher(certs)),
                     fetch_budget=timedelta(seconds=0.3))
        errors, cpu = _verify_once(v, brand, member)
        assert errors == ("did_resolution_failed",)
        assert server.requests and server.sent < 200  # the client hung up early
        assert cpu < 1.0
    finally:
        server.close()


def test_status_list_trickled_is_cut_at_the_fetch_deadline() -> None:
    server = SlowServer(_trickle(200), pace=0.02, length=200)
    try:
        clock = FixedClock()
        brand, member = TestIssuer(clock=clock), TestHolder(clock=clock)
        resolver = Resolver(documents={brand.did: brand.did_document})
        fetcher = HttpFetcher(allow_http=True, allow_private=True, deadline=0.3)
        v = Verifier(trust=brand.trust_list(), resolver=resolver, clock=clock,
                     status_check=default_status_check(resolver, fetcher, clock=clock))
        status = {"status_list": {"idx": 3, "uri": f"http://127.0.0.1:{server.port}/list"}}
        errors, cpu = _verify_once(v, brand, member, status)
        assert errors == ("status_unavailable",)
        assert server.requests and server.sent < 200
        assert cpu < 1.0
    finally:
        server.close()


def test_huge_did_document_is_cut_at_the_size_cap(certs: dict[str, Path]) -> None:
    server = SlowServer(_endless, tls=_server_tls(certs))  # no Content-Length, never ends
    try:
        brand = TestIssuer(f"did:web:did.test%3A{server.port}")
        v = Verifier(trust=brand.trust_list(), resolver=Resolver(_loopback_fetcher(certs)))
        errors, cpu = _verify_once(v, brand, TestHolder())
        assert errors == ("too_large",)
        assert cpu < 1.0
    finally:
        server.close()


def test_dns_rebinding_to_loopback_reaches_nothing() -> None:
    # Simulated network: the transport stands for every host; the resolver
    # answers a public address for the first lookup and 127.0.0.1 after.
    clock = FixedClock()
    rogue_member = TestHolder(clock=clock)
    brand = TestIssuer("did:web:rebind.example", clock=clock)
    doc = json.dumps(brand.did_document).encode()
    answers = ["93.184.216.34", "127.0.0.1"]
    asked: list[str] = []
    connected: list[str] = []

    def dns(host: str, port: int) -> list[str]:
        asked.append(host)
        return [answers.pop(0) if len(answers) > 1 else answers[0]]

    def network(request: httpx.Request) -> httpx.Response:
        connected.append(request.url.host)
        if request.url.host == "127.0.0.1":  # what an attacker wants reached
            return httpx.Response(200, content=b'{"id": "did:web:rebind.example"}')
        return httpx.Response(200, content=doc)

    fetcher = HttpFetcher(httpx.Client(transport=httpx.MockTransport(network)), resolve=dns)
    v = Verifier(trust=brand.trust_list(), resolver=Resolver(fetcher), clock=clock)
    errors, cpu = _verify_once(v, brand, rogue_member)
    assert errors == ()
    assert asked == ["rebind.example"] and connected == ["93.184.216.34"]
    assert cpu < 1.0


def test_vc_api_verifier_bounds_its_fetches_per_request() -> None:
    # A zero budget: the did:web fetch is refused before any request is sent.
    from verifier._vcapi import VcApiVerifier

    brand = TestIssuer("did:web:brand.example", signer=generate_signer("ES256"))
    clock = FixedClock()
    vc = di.issue({"@context": ["https://www.w3.org/ns/credentials/v2"],
                   "type": ["VerifiableCredential"], "issuer": brand.did,
                   "credentialSubject": {"id": "did:example:a"}},
                  signer=brand.signer, cryptosuite="ecdsa-rdfc-2019",
                  verification_method=brand.signer.key_id, created=clock())
    web = Recorder({"https://brand.example/.well-known/did.json": _doc(brand)})
    v = VcApiVerifier(resolver=Resolver(web.fetcher()), clock=clock,
                      fetch_budget=timedelta(0))
    status, result = v.verify_credential({"verifiableCredential": vc})
    assert (status, result["errors"]) == (400, ["did_resolution_failed"])
    assert "deadline" in result["problemDetails"][0]["detail"]
    assert web.calls == []
    roomy = VcApiVerifier(resolver=Resolver(web.fetcher()), clock=clock)
    assert roomy.verify_credential({"verifiableCredential": vc})[0] == 200


def test_the_verifiers_fetcher_serves_its_default_resolver_and_status_check() -> None:
    # One injected fetcher (here over httpx.MockTransport) carries both the
    # issuer's did:web document and the status list; nothing else is asked.
    clock = FixedClock()
    brand, member = TestIssuer(clock=clock), TestHolder(clock=clock)
    revoked = StatusList()
    revoked.set(3, 1)
    token = sign_status_list_token(revoked, brand.signer, uri=LIST_URL, issued_at=clock(),
                                   expires_at=None, issuer=brand.did)
    brand_doc_url = "https://brand.test/.well-known/did.json"
    web = Recorder({LIST_URL: ("application/statuslist+jwt", token.encode()),
                    brand_doc_url: _doc(brand)})
    v = Verifier(trust=brand.trust_list(), clock=clock, fetcher=web.fetcher())
    for idx, errors in ((3, ("revoked",)), (4, ())):
        req = v.create_request(audience=AUD)
        cred = brand.issue_membership(member, status={"status_list": {"idx": idx,
                                                                       "uri": LIST_URL}})
        assert v.verify(member.present(cred, ["tier_at_least_gold"], req),
                        request=req).errors == errors
    # Each fetched once: the resolver's and the status list's caches answer the second time.
    assert sorted(web.calls) == sorted([brand_doc_url, LIST_URL])
