"""The checkout page in a real browser: Playwright driving Debian's Chromium.

The service runs under uvicorn on loopback; the test reads the request URI
off the page (nothing scans a QR code), lets Tessera's wallet answer over
HTTP, and asserts the page flips to the result. Screenshots go to
``test-output/``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from holder import Wallet
from holder._openid4vp import parse_request, respond
from tessera.devmode import dev_fetcher, dev_origins
from tessera.did import Resolver, did_web
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from verifier._service import ServiceSettings, create_app
from verifier._tills import TillKeys
from verifier.testing import TestHolder, TestIssuer

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed at /usr/bin/chromium "
                                "(apt-get install -y chromium; .ci/run does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def brand() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def tills() -> TillKeys:
    return TillKeys()


@pytest.fixture(scope="module")
def till_key(tills: TillKeys) -> str:
    return str(tills.create("lane 1")["token"])


@pytest.fixture(scope="module")
def base_url(brand: TestIssuer, tills: TillKeys,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    signer = generate_signer("ES256")
    # As `tessera verifier serve` does: the did:web of its base URL, served by it.
    signer = signer.with_key_id(did_web(url) + "#0")
    db = tmp_path_factory.mktemp("verifier") / "verifier.db"
    settings = ServiceSettings(
        base_url=url, trust=brand.trust_list(), signer=signer, client_name="Corner Shop",
        contacts=("help@corner.test",), store_url=f"sqlite:///{db}",
        resolver=Resolver(documents={brand.did: brand.did_document}), tills=tills,
    )
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def fresh_page(browser: Any, base_url: str) -> Iterator[Any]:
    """A till browser that has never been given a key."""
    context = browser.new_context(viewport={"width": 1000, "height": 1100})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(base_url)
    yield pg
    context.close()
    assert errors == [], errors  # no JavaScript error on the till


def _log_in(page: Any, key: str) -> None:
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#till-key", key)
    page.click("#till-save")


@pytest.fixture
def page(fresh_page: Any, till_key: str) -> Any:
    _log_in(fresh_page, till_key)
    fresh_page.wait_for_selector("button[data-policy='gold-10']")
    return fresh_page


@pytest.fixture(scope="module")
def resolver(brand: TestIssuer, base_url: str) -> Resolver:
    """The phone's resolver: the verifier's did:web over http, as development mode allows."""
    return Resolver(dev_fetcher(dev_origins([base_url], {})),
                    documents={brand.did: brand.did_document})


@pytest.fixture
def wallet(tmp_path: Path, brand: TestIssuer, resolver: Resolver) -> Wallet:
    w = Wallet.create(tmp_path / "m.wallet", "passphrase-1", resolver=resolver)
    w.receive(brand.issue_membership(TestHolder(w.signer), tier="platinum", name="Alice"))
    return w


def _start_checkout(page: Any, policy: str) -> str:
    page.click(f"button[data-policy='{policy}']")
    link = page.locator("#deep-link")
    # Locator waits, not wait_for_function: the page's CSP (kept on) forbids eval.
    page.wait_for_selector("#deep-link[href^='openid4vp://']")
    uri = str(link.get_attribute("href"))
    assert uri == link.text_content()
    assert uri.startswith("openid4vp://?client_id=decentralized_identifier")
    # The QR image really loaded (a PNG the browser decoded), fetched with the
    # till's key: the <img> shows it from memory.
    page.wait_for_selector("#qr[src^='blob:']")
    deadline = time.monotonic() + 5
    while page.locator("#qr").evaluate("img => img.naturalWidth") < 100:
        assert time.monotonic() < deadline, "QR image did not load"
        time.sleep(0.05)
    # A small symbol (issue 11 item 9): version 7 at most, 6 px a module, 2 of border.
    assert page.locator("#qr").evaluate("img => img.naturalWidth") <= (17 + 4 * 7 + 2 * 2) * 6
    assert uri.startswith("openid4vp://?client_id=decentralized_identifier:did:web:")
    return uri


def _outcome(page: Any, expected: str) -> None:
    page.wait_for_selector(f"#result[data-outcome='{expected}']", timeout=10_000)


def test_checkout_approved(page: Any, wallet: Wallet, resolver: Resolver) -> None:
    uri = _start_checkout(page, "gold-10")
    assert page.text_content("#status") == "waiting for the wallet"
    with httpx.Client(timeout=10) as http:
        request = parse_request(uri, http=http, resolver=resolver)
        page.wait_for_selector("#status:has-text('opened the request')")
        respond(wallet, request, consent=lambda c: True, http=http)
    _outcome(page, "approved")
    assert "Approved: Gold or better gets 10% off" in page.text_content("#result-title")
    rows = page.locator("#claims tbody tr").all_text_contents()
    assert any("tier_at_least_gold" in r and "true" in r for r in rows)
    # Exactly what was disclosed: the withheld name never reaches the till.
    assert "Alice" not in page.content() and "tier_at_least_platinum" not in page.content()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "checkout-approved.png"), full_page=True)
    assert (OUTPUT / "checkout-approved.png").stat().st_size > 10_000


def test_checkout_declined(page: Any, wallet: Wallet, resolver: Resolver) -> None:
    uri = _start_checkout(page, "gold-10")
    with httpx.Client(timeout=10) as http:
        request = parse_request(uri, http=http, resolver=resolver)
        with pytest.raises(TesseraError) as err:
            respond(wallet, request, consent=lambda c: False, http=http)
    assert err.value.code == ErrorCode.CONSENT_DENIED
    _outcome(page, "refused")
    assert page.text_content("#reason") == "The member declined to share."
    assert page.locator("#claims").is_hidden()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "checkout-declined.png"), full_page=True)


def test_checkout_request_opened_twice(page: Any, base_url: str, resolver: Resolver) -> None:
    uri = _start_checkout(page, "gold-10")
    with httpx.Client(timeout=10) as http:
        parse_request(uri, http=http, resolver=resolver)
        with pytest.raises(TesseraError) as err:
            parse_request(uri, http=http, resolver=resolver)
    assert err.value.code == ErrorCode.INVALID_REQUEST
    _outcome(page, "refused")
    assert "second device" in str(page.text_content("#reason"))


def test_checkout_points_without_enough_points(page: Any, brand: TestIssuer,
                                               tmp_path: Path, resolver: Resolver) -> None:
    w = Wallet.create(tmp_path / "p.wallet", "passphrase-1", resolver=resolver)
    w.receive(brand.issue_points(TestHolder(w.signer), balance=400))
    uri = _start_checkout(page, "points-1000")
    with httpx.Client(timeout=10) as http:
        request = parse_request(uri, http=http, resolver=resolver)
        # The wallet holds no credential that satisfies the query: it cannot answer,
        # and says so to the verifier as a refusal would.
        with pytest.raises(TesseraError) as err:
            respond(w, request, consent=lambda c: True, http=http)
        assert err.value.code == ErrorCode.DISCLOSURE_MISMATCH
        http.post(request.response_uri, data={"error": "access_denied", "state": request.state})
    _outcome(page, "refused")


def test_till_needs_its_key(fresh_page: Any, till_key: str) -> None:
    """No key, or a wrong one: no policy buttons, nothing can be asked."""
    _log_in(fresh_page, "tvk_0000000000000000_not-the-secret")
    fresh_page.wait_for_selector("#login-error:not([hidden])")
    assert fresh_page.locator("button[data-policy]").count() == 0
    _log_in(fresh_page, till_key)
    fresh_page.wait_for_selector("button[data-policy='gold-10']")
    assert fresh_page.locator("#login").is_hidden()
    # The key stays on this device, out of every URL the page uses.
    assert till_key not in fresh_page.url


def test_checkout_page_refuses_to_be_framed(browser: Any, base_url: str) -> None:
    """Clickjacking: a page of another origin frames the till; the browser shows nothing."""
    context = browser.new_context()
    pg = context.new_page()
    blocked: list[str] = []
    pg.on("console", lambda m: blocked.append(m.text) if "frame-ancestors" in m.text else None)
    pg.set_content(f'<iframe id="f" src="{base_url}/" width="600" height="400"></iframe>')
    deadline = time.monotonic() + 5
    while not blocked:
        assert time.monotonic() < deadline, "the checkout page loaded inside a frame"
        time.sleep(0.05)
    frame = pg.frame_locator("#f")
    assert frame.locator("#policies").count() == 0
    context.close()
