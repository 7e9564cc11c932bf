"""``tessera verifier serve --workers N``: one key and one store shared by every worker."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jwcrypto import jwk, jws
from typer.testing import CliRunner

from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import signer_from_jwk
from verifier._service import load_or_create_key, settings_from_env
from verifier._tills import TillKeys
from verifier.testing import TestHolder, TestIssuer

from .test_service import SpecWallet

MASTER = b64url_encode(bytes(range(32)))


# -- the key file -------------------------------------------------------------------------------


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "verifier.jwk"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["kty"] == "EC"
    second = load_or_create_key(path)
    assert first.public_key == second.public_key
    assert [p.name for p in tmp_path.iterdir()] == ["verifier.jwk"]  # no temp file left


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "verifier.jwk"
    load_or_create_key(path)
    path.chmod(0o644)
    with pytest.raises(TesseraError) as err:
        load_or_create_key(path)
    assert err.value.code == ErrorCode.FORBIDDEN and "chmod 600" in err.value.detail


def test_key_file_sealed_under_the_master_key(tmp_path: Path) -> None:
    path = tmp_path / "verifier.jwk"
    master = bytes(range(32))
    first = load_or_create_key(path, master_key=master)
    text = path.read_text()
    assert '"d"' not in text and "sealed" in json.loads(text)
    assert load_or_create_key(path, master_key=master).public_key == first.public_key
    with pytest.raises(TesseraError) as err:
        load_or_create_key(path)
    assert "TESSERA_MASTER_KEY" in err.value.detail
    with pytest.raises(TesseraError) as err:
        load_or_create_key(path, master_key=bytes(32))
    assert err.value.code == ErrorCode.WRONG_PASSPHRASE


def test_two_processes_creating_the_key_at_once_agree(tmp_path: Path) -> None:
    path = tmp_path / "verifier.jwk"
    code = ("import sys, json; from pathlib import Path; "
            "from verifier._service import load_or_create_key; "
            "print(json.dumps(load_or_create_key(Path(sys.argv[1])).public_key.to_jwk()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)],  # noqa: S603
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {p.communicate(timeout=60)[0] for p in procs}
    assert len(keys) == 1 and all(p.returncode == 0 for p in procs)


# -- settings from the environment --------------------------------------------------------------


@pytest.fixture
def trust_file(tmp_path: Path) -> Path:
    brand = TestIssuer()
    path = tmp_path / "trust.json"
    path.write_text(json.dumps({"issuers": [{"id": brand.did, "name": "Brand",
                                             "credential_types": ["*"]}]}))
    return path


def test_workers_need_a_shared_store_and_key(trust_file: Path, tmp_path: Path) -> None:
    env = {"TESSERA_VERIFIER_TRUST": str(trust_file), "TESSERA_VERIFIER_WORKERS": "2",
           "TESSERA_VERIFIER_TILLS": str(tmp_path / "tills.json")}
    with pytest.raises(TesseraError) as err:
        settings_from_env({**env, "TESSERA_VERIFIER_STORE": "memory://"})
    assert "memory://" in err.value.detail
    with pytest.raises(TesseraError) as err:
        settings_from_env({**env, "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}"})
    assert "--key" in err.value.detail
    key = tmp_path / "k.jwk"
    a = settings_from_env({**env, "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}",
                           "TESSERA_VERIFIER_KEY": str(key), "TESSERA_MASTER_KEY": MASTER,
                           "TESSERA_VERIFIER_CONTACTS": '["desk@shop.test"]',
                           "TESSERA_VERIFIER_RESPONSE_MODE": "direct_post.jwt"})
    b = settings_from_env({**env, "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}",
                           "TESSERA_VERIFIER_KEY": str(key), "TESSERA_MASTER_KEY": MASTER})
    assert a.signer is not None and b.signer is not None
    # One key for both workers, named by the did:web of the (default) base URL.
    assert a.signer.public_key.to_jwk() == b.signer.public_key.to_jwk()
    assert a.signer.key_id == b.signer.key_id == "did:web:127.0.0.1%3A8090#0"
    assert a.contacts == ("desk@shop.test",) and a.response_mode == "direct_post.jwt"
    with pytest.raises(TesseraError):
        settings_from_env({**env, "TESSERA_VERIFIER_WORKERS": "1",
                           "TESSERA_VERIFIER_RESPONSE_MODE": "query"})


def test_cli_refuses_memory_store_with_workers(trust_file: Path) -> None:
    from tessera.cli import app

    done = CliRunner().invoke(app, ["verifier", "serve", "--trust", str(trust_file),
                                    "--workers", "2", "--store", "memory://"])
    assert done.exit_code == 2
    assert "memory://" in done.output


# -- a real server with two workers -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(args: list[str], port: int, tmp_path: Path) -> subprocess.Popen[str]:
    code = "import sys; from tessera.cli import app; app(sys.argv[1:])"
    log = (tmp_path / f"server-{port}.log").open("w")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-c", code, "verifier", "serve", "--port", str(port),
         "--log-level", "warning", *args],
        stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )
    # Two workers start in 10-30 s on a machine other processes load (runnable 10 per
    # core); 90 s as bench.load's Servers.wait_ready allows.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    _kill_group(proc)
    raise AssertionError((tmp_path / f"server-{port}.log").read_text())


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """The supervisor and its workers: killing the supervisor alone leaves uvicorn's
    workers running, holding the port (its own session: start_new_session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


@pytest.fixture
def served(tmp_path: Path, trust_file: Path) -> Iterator[dict[str, Any]]:
    brand = TestIssuer()
    doc = tmp_path / "brand.json"
    doc.write_text(json.dumps(brand.did_document))
    tills = tmp_path / "tills.json"
    till = TillKeys(tills).create("lane 1")
    yield {"brand": brand, "till": {"Authorization": f"Bearer {till['token']}"},
           "args": ["--trust", str(trust_file), "--did-document", str(doc),
                    "--key", str(tmp_path / "verifier.jwk"), "--tills", str(tills)]}


def _checkout(base: str, wallet: SpecWallet, mode: str,
              till: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(base_url=base, timeout=10) as http:
        created = http.post("/requests", json={"policy": "gold-10", "response_mode": mode},
                            headers=till).json()
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(created["deep_link"]).query))
        token = jws.JWS()
        token.deserialize(http.get(query["request_uri"]).text)
        request = json.loads(token.objects["payload"])
        vp_token = wallet.present(query["client_id"], request)
        if mode == "direct_post.jwt":
            from .test_service import _spec_encrypt

            form = {"response": _spec_encrypt(request, {"vp_token": vp_token,
                                                        "state": request["state"]})}
        else:
            form = {"vp_token": json.dumps(vp_token), "state": request["state"]}
        answer = http.post(request["response_uri"], data=form)
        assert answer.status_code == 200, answer.text
        return dict(http.get(created["result"], headers=till).json(),
                    client_id=created["client_id"])


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_two_workers_complete_checkouts_and_keep_their_key(
    served: dict[str, Any], tmp_path: Path, store: str, request: pytest.FixtureRequest,
) -> None:
    if store == "redis":
        url = str(request.getfixturevalue("redis_url"))
    else:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
    member_key = jwk.JWK.generate(kty="EC", crv="P-256")
    member = TestHolder(signer_from_jwk(json.loads(member_key.export_private())))
    wallet = SpecWallet(member_key, served["brand"].issue_membership(member, tier="gold"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    args = [*served["args"], "--workers", "2", "--store", url]
    proc = _serve(args, port, tmp_path)
    try:
        # Enough checkouts that both workers serve steps of the same exchange.
        views = [_checkout(base, wallet, mode, served["till"])
                 for mode in ["direct_post", "direct_post.jwt"] * 4]
        # Whichever worker answers a scrape, it reports both workers' counts
        # (prometheus_client multiprocess mode, docs/operations.md).
        scrapes = [httpx.get(f"{base}/metrics", timeout=10) for _ in range(6)]
    finally:
        _stop(proc)
    for scrape in scrapes:
        assert scrape.status_code == 200, scrape.text
        assert ('tessera_http_requests_total{method="POST",route="/response",'
                'service="verifier",status="200"} 8.0') in scrape.text
        assert 'tessera_outcomes_total{operation="verification",outcome="ok"} 8.0' in scrape.text
    assert all(v["status"] == "done" and v["result"]["ok"] for v in views), views
    client_id = views[0]["client_id"]
    assert stat.S_IMODE((tmp_path / "verifier.jwk").stat().st_mode) == 0o600
    proc = _serve(args, port, tmp_path)  # a restart keeps the verifier's identity
    try:
        assert _checkout(base, wallet, "direct_post", served["till"])["client_id"] == client_id
    finally:
        _stop(proc)


def test_one_worker_without_a_till_file_prints_a_key_for_the_run(
    served: dict[str, Any], tmp_path: Path, trust_file: Path,
) -> None:
    """`tessera verifier serve` with no --tills: one till key, printed, for this run only."""
    member_key = jwk.JWK.generate(kty="EC", crv="P-256")
    member = TestHolder(signer_from_jwk(json.loads(member_key.export_private())))
    wallet = SpecWallet(member_key, served["brand"].issue_membership(member, tier="gold"))
    port = _free_port()
    args = [a for a in served["args"] if a != "--tills" and not a.endswith("tills.json")]
    proc = _serve([*args, "--store", "memory://"], port, tmp_path)
    try:
        log = (tmp_path / f"server-{port}.log").read_text()
        key = re.search(r"till key for this run .*: (tvk_\S+)", log)
        assert key is not None, log
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/requests", json={"policy": "gold-10"},
                          headers=served["till"]).status_code == 401
        view = _checkout(base, wallet, "direct_post",
                         {"Authorization": f"Bearer {key.group(1)}"})
        assert view["status"] == "done" and view["result"]["ok"], view
    finally:
        _stop(proc)


def test_two_workers_share_a_burst_of_keep_alive_connections(
    served: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--workers 2` deals a burst of connections out (tessera.serving.BalancedServer):
    uvicorn's workers share one listening socket, and libuv alone accepted every queued
    connection in the first worker to wake (splits of 4/0 and 6/2, bench/README.md)."""
    from bench.load import connection_spread
    from tessera.serving import ACCEPT_DELAY_ENV

    # A wait per held connection far above a loaded machine's scheduling delays.
    monkeypatch.setenv(ACCEPT_DELAY_ENV, "50")
    port = _free_port()
    proc = _serve([*served["args"], "--workers", "2", "--store",
                   f"sqlite:///{tmp_path / 'shared.db'}"], port, tmp_path)
    clients: list[socket.socket] = []
    try:
        # All eight queued before either worker takes one, then one request on each:
        # answered means accepted (and a worker holds it).
        clients = [socket.create_connection(("127.0.0.1", port), timeout=60)
                   for _ in range(8)]
        for client in clients:
            client.sendall(b"GET /checkout.css HTTP/1.1\r\nHost: x\r\n\r\n")
        for client in clients:
            assert client.recv(64).startswith(b"HTTP/1.1 200")
        mine = {client.getsockname()[1]: 0 for client in clients}
        spread, why = connection_spread([proc.pid], [port], [mine])
    finally:
        for client in clients:
            client.close()
        _stop(proc)
    assert spread is not None, why
    [held] = spread
    assert len(held) == 2 and sum(held) == 8 and max(held) <= 5, held
