"""Development mode: off by default, only named local origins, refused beside production
markers, loud, and narrow (everything else still goes through the strict fetcher)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from tessera.devmode import DevFetcher, dev_fetcher, dev_origins, is_local_host
from tessera.did import HttpFetcher, Resolver
from tessera.errors import ErrorCode, TesseraError


def _client(seen: list[str]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"location": "http://10.0.0.9/x"})
        return httpx.Response(200, json={"id": "did:web:localhost%3A8000:brands:acme"})

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_off_by_default() -> None:
    assert dev_origins((), {}) == ()
    assert isinstance(dev_fetcher(()), HttpFetcher)


def test_names_from_flag_and_env_and_logs_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tessera.devmode"):
        found = dev_origins(["http://localhost:8000"],
                            {"TESSERA_DEV_ORIGINS": "http://127.0.0.1:9000, "
                                                    "http://localhost:8001=http://issuer:8000"})
    assert [(o.authority, o.target) for o in found] == [
        ("localhost:8000", "http://localhost:8000"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("localhost:8001", "http://issuer:8000"),
    ]
    assert caplog.text.count("DEVELOPMENT MODE") == 3


@pytest.mark.parametrize("origin", ["http://acme.example:8000", "http://8.8.8.8",
                                    "https://issuer.example.com"])
def test_only_local_names(origin: str) -> None:
    with pytest.raises(TesseraError) as info:
        dev_origins([origin], {})
    assert info.value.code == ErrorCode.FORBIDDEN


@pytest.mark.parametrize("origin", ["localhost:8000", "http://localhost:8000/path",
                                    "ftp://localhost", "http://u:p@localhost:8000"])
def test_an_origin_is_an_origin(origin: str) -> None:
    with pytest.raises(TesseraError) as info:
        dev_origins([origin], {})
    assert info.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(("env", "urls"), [
    ({"TESSERA_ENV": "production"}, []),
    ({"TESSERA_ENV": "Prod"}, []),
    ({}, ["https://till.beta-coffee.example"]),
])
def test_refused_beside_a_production_marker(env: dict[str, str], urls: list[str]) -> None:
    with pytest.raises(TesseraError) as info:
        dev_origins(["http://localhost:8000"], env, public_urls=urls)
    assert info.value.code == ErrorCode.FORBIDDEN
    assert "production" in info.value.detail or "public URL" in info.value.detail


def test_local_hosts() -> None:
    assert all(map(is_local_host, ["localhost", "api.localhost", "issuer", "127.0.0.1",
                                   "10.1.2.3", "[::1]"]))
    assert not any(map(is_local_host, ["acme.example", "8.8.8.8", "2001:4860::8888"]))


def test_did_web_of_a_named_origin_is_fetched_over_http_only_there() -> None:
    seen: list[str] = []
    local = HttpFetcher(_client(seen), allow_http=True, allow_private=True, max_redirects=0)
    strict = HttpFetcher(_client(seen))  # https and public hosts only
    fetcher = DevFetcher(strict, dev_origins(["http://localhost:8000"], {}), local=local)
    doc = Resolver(fetcher).resolve("did:web:localhost%3A8000:brands:acme")
    assert doc.id == "did:web:localhost%3A8000:brands:acme"
    assert seen == ["http://localhost:8000/brands/acme/did.json"]
    # Another local port is not named: the strict fetcher refuses it as before.
    with pytest.raises(TesseraError) as info:
        fetcher.fetch("https://localhost:8001/brands/acme/did.json")
    assert info.value.code == ErrorCode.DID_RESOLUTION_FAILED
    # A named origin cannot redirect the verifier anywhere else.
    with pytest.raises(TesseraError):
        fetcher.fetch("http://localhost:8000/moved")
    assert seen[-1] == "http://localhost:8000/moved"


def test_an_alias_fetches_from_its_target() -> None:
    seen: list[str] = []
    local = HttpFetcher(_client(seen), allow_http=True, allow_private=True, max_redirects=0)
    origins = dev_origins(["http://localhost:8000=http://issuer:8000"], {})
    DevFetcher(HttpFetcher(_client(seen)), origins, local=local).fetch(
        "http://localhost:8000/brands/acme/status/1?x=1")
    assert seen == ["http://issuer:8000/brands/acme/status/1?x=1"]


def test_verifier_service_settings_use_dev_mode_for_dids_and_status(
        tmp_path: Path) -> None:
    from verifier._service import settings_from_env

    trust = tmp_path / "trust.json"
    trust.write_text('{"issuers": []}')
    base = {"TESSERA_VERIFIER_TRUST": str(trust), "TESSERA_VERIFIER_STORE": "memory://"}
    strict = settings_from_env(base)
    assert strict.resolver is not None
    with pytest.raises(TesseraError) as info:
        strict.resolver.resolve("did:web:localhost%3A1:brands:acme")
    assert "non-public" in info.value.detail or "refusing" in info.value.detail
    with pytest.raises(TesseraError) as info:
        settings_from_env({**base, "TESSERA_DEV_ORIGINS": "http://localhost:8000",
                           "TESSERA_ENV": "production"})
    assert info.value.code == ErrorCode.FORBIDDEN
    dev = settings_from_env({**base, "TESSERA_DEV_ORIGINS": "http://localhost:1"})
    assert dev.resolver is not None and dev.status_check is not None
    with pytest.raises(TesseraError) as info:  # http attempted: nothing listens on port 1
        dev.resolver.resolve("did:web:localhost%3A1:brands:acme")
    assert "refusing" not in info.value.detail
