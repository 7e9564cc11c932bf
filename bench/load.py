"""Load benchmark of the three hot paths against real servers on loopback.

``python -m bench.load [--path issuance|checkout|redemption|earn ...] [--quick]
[--server uvicorn,granian] [--repeat N] [--balance request|operation]
[--concurrency 4,8,16,32] [--ops N] [--json PATH]`` (also ``python -m bench load``).

Paths (one *operation* each, counted only when every step answered as it must):

* ``issuance``: the full OpenID4VCI 1.0 pre-authorized exchange: ``POST
  /token`` (pre-authorized code), ``POST /nonce``, the wallet signs its key
  proof (ES256), ``POST /credential`` (an SD-JWT VC must come back). With
  ``--batch N`` (N >= 2) one exchange takes a batch of N credentials the way
  our wallet does (holder/_openid4vci.py): N fresh ES256 keys, a key
  attestation of all N signed by the member's DID key over the ``c_nonce``,
  and one ``jwt`` proof per fresh key carrying it in ``key_attestation``;
  N SD-JWT VCs must come back. ``--batch 1,10`` runs both. Server: ``tessera
  issuer serve``.
* ``checkout``: one OpenID4VP checkout at the verifier service: ``POST
  /requests`` (till), ``GET`` the request URI (signed request object), the
  wallet builds its SD-JWT presentation with a KB-JWT over the request's
  nonce, ``POST /response`` (``direct_post``), ``GET /requests/{id}/result``
  (must say ``ok``). Server: ``tessera verifier serve``.
* ``redemption``: a partner's hold and capture of 10 points (``POST
  /brands/{slug}/redemptions``, then ``/capture``). Server: ``tessera issuer
  serve``.
* ``earn`` (only when asked for: ``--path earn``): a brand's till crediting a
  member, ``POST /admin/v1/members/{id}/points/earn`` with the brand's API key
  and a fresh ``Idempotency-Key`` (201 with the entry must come back). Its
  configurations run the same servers with the transparency log on (as in
  production: leaf queued, inclusion promise signed, the sequencer integrating
  in every worker) and off (:mod:`bench._log_off`, a bench-only start-up hook:
  no leaf, no promise), back to back, and the report prints off / on of
  throughput and of CPU per earn (issue 10: earn with the log on within 10 %
  of earn with it off) per pair of points of the same round, member history
  and concurrency, and per configuration the median and spread (min-max) of
  those ratios over the rounds (``--repeat N``: rounds alternate A B / B A).
  An earn reads the member's qualifying entries and live lots, so its cost
  grows with the member's history: every round starts from fresh members of
  ``--history H`` entries each (seeded over HTTP before the first point;
  ``--members M`` of them), and the CPU readings wait for the log's
  sequencer before and after the window (:func:`settle_log`: each window
  holds the integration of its own leaves, none of earlier ones). Server:
  ``tessera issuer serve``.

Configurations (per path; :data:`CONFIGS`): 1 vs 2 uvicorn workers of one
instance, and 1 vs 2 separate instances (two server processes, one worker
each, on one PostgreSQL, + Redis for the verifier's store), with requests
handed to the instances round-robin as a load balancer would: the steps of
one operation land on different instances, so the run also shows that
nothing of an exchange lives in one instance's memory. Each
configuration runs at every concurrency of the sweep (closed loop: N virtual
clients, each starts its next operation when the last one ends); the table
shows the best point per configuration, the JSON every point.

HTTP server (``--server``): the services run on uvicorn; ``--server
uvicorn,granian`` runs each configuration on both, back to back, the granian
one through the same ``tessera ... serve`` command with granian in place of
uvicorn (:mod:`bench._granian`), and prints granian / uvicorn per pair.
``--repeat N`` runs a path's list of configurations N times in turn (A B A B),
so a drift of the shared machine's load falls on both sides of an A/B.

The load generator is one separate process with one event loop (uvloop where
installed) and a minimal HTTP/1.1 client on raw sockets (keep-alive, one
connection per virtual client, a response head read in one call): several
times less CPU per request than httpx, which matters when it shares two cores
with the servers. What can be prepared before the timed window is: members,
offers, credentials, key pairs, and for redemptions the whole presentation
(the partner chooses the nonce, so every request body is signed beforehand);
a batch's fresh keys are made before the window too, and each checkout
wallet's presentation up to its KB-JWT (:func:`checkout_wallet`). What cannot
is done inside the loop but outside the latency: the issuance key proof (one
ES256 signature over the server's ``c_nonce``; for a batch the attestation
and N proofs) and the checkout's KB-JWT over the request's nonce.

Reported per point: operations/s (completed operations inside the measured
window / its length), credentials/s (issuance: operations/s x batch size),
p50/p99 latency of one operation (the sum of its HTTP round trips as the
generator sees them), errors, the generator's CPU (its own process time /
wall time, in % of one core, and its share of the CPU used by generator +
servers), server CPU per operation (all processes of the
server(s), from ``/proc``: the per-operation cost that docs/scaling.md uses),
on PostgreSQL the database's CPU per operation (the backends serving the
servers, found by the ``application_name`` their URL sets, and every
``postgres`` process of the machine), the whole machine's busy CPU per
operation and what is left of it beyond servers, generator and PostgreSQL
(the kernel's unattributed work, other processes), and the machine's load
average. In the JSON only: context switches per operation of the servers'
threads and of their PostgreSQL backends, the backends held, and per table
of the schema the scans and rows written during the window (counts the
machine's load does not move). ``--balance operation`` sends each operation's steps to one instance
instead of round-robin per request (:class:`Balancer`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench._harness import git_commit

__all__ = ["ALL_PATHS", "CONFIGS", "PATHS", "Config", "main", "print_table", "run"]

PATHS: Final = ("issuance", "checkout", "redemption")  # the default run
ALL_PATHS: Final = (*PATHS, "earn")  # earn: only with --path earn
SERVERS: Final = ("uvicorn", "granian")


@dataclass(frozen=True)
class Config:
    name: str
    store: str  # "sqlite", "postgres" or "redis"
    workers: int = 1  # worker processes per instance
    instances: int = 1  # separate server processes on one database
    batch: int = 1  # issuance: credentials per exchange (OpenID4VCI batch issuance)
    server: str = "uvicorn"  # the HTTP server under the app: "uvicorn" or "granian"
    log: bool = True  # False: the servers start with bench/_log_off (no log leaf per write)
    # earn: ledger entries each member has before the first point's warm-up (the
    # enrolment's earn counts as one; the rest are seeded over HTTP before it).
    history: int = 1

    def with_server(self, server: str) -> Config:
        """This configuration on another HTTP server (its name says which, uvicorn's not)."""
        if server == self.server:
            return self
        return replace(self, name=f"{self.name}, {server}", server=server)

    def batched(self, size: int) -> Config:
        """This configuration taking ``size`` credentials per exchange."""
        if size == 1:
            return self
        return replace(self, name=f"{self.name}, batch {size}", batch=size)

    def with_history(self, entries: int) -> Config:
        """This earn configuration with members of ``entries`` ledger entries each."""
        return replace(self, name=f"{self.name}, history {entries}", history=entries)


CONFIGS: Final[dict[str, tuple[Config, ...]]] = {
    "issuance": (
        Config("SQLite, 1 worker", "sqlite", 1),
        Config("SQLite, 2 workers", "sqlite", 2),
        Config("PostgreSQL, 1 worker", "postgres", 1),
        Config("PostgreSQL, 2 workers", "postgres", 2),
        Config("PostgreSQL, 2 instances", "postgres", 1, 2),
    ),
    "checkout": (
        Config("SQLite, 1 worker", "sqlite", 1),
        Config("SQLite, 2 workers", "sqlite", 2),
        Config("Redis, 1 worker", "redis", 1),
        Config("Redis, 2 workers", "redis", 2),
        Config("Redis, 2 instances", "redis", 1, 2),
        Config("PostgreSQL, 2 instances", "postgres", 1, 2),
    ),
    "redemption": (
        Config("PostgreSQL, 1 worker", "postgres", 1),
        Config("PostgreSQL, 2 workers", "postgres", 2),
        Config("PostgreSQL, 2 instances", "postgres", 1, 2),
    ),
    # On and off back to back per store, so a drift of the shared machine's load
    # falls on both sides of the pair (--repeat N alternates the pairs).
    "earn": (
        Config("PostgreSQL, 2 workers, log on", "postgres", 2),
        Config("PostgreSQL, 2 workers, log off", "postgres", 2, log=False),
        Config("SQLite, 2 workers, log on", "sqlite", 2),
        Config("SQLite, 2 workers, log off", "sqlite", 2, log=False),
    ),
}

SWEEP: Final = (4, 8, 16, 32)
QUICK_SWEEP: Final = (4,)
OPS: Final = 600  # measured operations per point (plus a warm-up of 2 per client)
QUICK_OPS: Final = 16
MAX_SECONDS: Final = 60.0  # a point stops here even if its operations are not all done
POLICY: Final = "gold-10"
# What the gold-10 policy asks (verifier._service.DEFAULT_POLICIES) and the wallet shows.
DISCLOSED_CREDENTIAL: Final = "membership"
DISCLOSED_CLAIM: Final = "tier_at_least_gold"
REDEEM_POINTS: Final = 10
EARN_POINTS: Final = 10
EARN_BODY: Final = json.dumps({"points": EARN_POINTS}).encode()
LOG_OFF_DIR: Final = Path(__file__).resolve().parent / "_log_off"
LOG_OFF_SKIPS: Final = (
    "issuer._translog.append_for_member returns no leaf in every server process "
    "(bench/_log_off/sitecustomize.py): no log_pending row, no signed inclusion promise, "
    "nothing for the sequencer to integrate; the ledger write is otherwise unchanged")


# -- a minimal HTTP/1.1 client ---------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time, Content-Length or chunked."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.local_port: int | None = None  # of the open connection (:func:`connection_spread`)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self.local_port = int(self._writer.get_extra_info("sockname")[1])
        assert self._reader is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        try:
            # The head in one read, not a readline (an await) per header line.
            try:
                head = await self._reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise HttpError("connection closed") from None
                raise
            status_line, *header_lines = head[:-4].split(b"\r\n")
            status = int(status_line.split(b" ", 2)[1])
            length, chunked, close = -1, False, False
            for line in header_lines:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = b"close" in value.lower()
            if chunked:
                parts = []
                while (size := int((await self._reader.readline()).split(b";")[0], 16)):
                    parts.append(await self._reader.readexactly(size + 2))
                await self._reader.readline()
                data = b"".join(p[:-2] for p in parts)
            else:
                data = await self._reader.readexactly(max(length, 0))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError) as exc:
            self.close()
            raise HttpError(f"{method} {target}: {type(exc).__name__}") from exc
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        self.local_port = None


BALANCING: Final = ("request", "operation")


class Balancer:
    """A load balancer in the client: one keep-alive connection per instance, requests
    handed out round-robin. ``per="request"`` (an L7 balancer): the steps of one operation
    land on different instances (a checkout created on one, its request object fetched
    from the other, ...); ``per="operation"``: each operation's steps go to one instance,
    the next operation to the next (a balancer keeping a client's connection on one
    instance, or sticky sessions)."""

    def __init__(self, targets: Sequence[tuple[str, int]], start: int = 0,
                 per: str = "request") -> None:
        if per not in BALANCING:
            raise ValueError(per)
        self._connections = [Connection(*t) for t in targets]
        self._next = start % len(self._connections)
        self._per_request = per == "request"
        self._current = self._next

    def begin_operation(self) -> None:
        """The next operation starts (``per="operation"``: on the next instance)."""
        if not self._per_request:
            self._current = self._next
            self._next = (self._next + 1) % len(self._connections)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
        if self._per_request:
            self._current = self._next
            self._next = (self._next + 1) % len(self._connections)
        return await self._connections[self._current].request(method, target, body, headers)

    def local_ports(self) -> dict[int, int]:
        """Local port -> instance index of each open connection."""
        return {c.local_port: i for i, c in enumerate(self._connections)
                if c.local_port is not None}

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


_UNSAFE = re.compile(r"[^A-Za-z0-9_.~-]")


def form_quote(value: str) -> str:
    """One form field's name or value, percent-encoded as :func:`form` does."""
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def form(fields: dict[str, str]) -> bytes:
    """``application/x-www-form-urlencoded`` as ``urllib.parse.urlencode`` writes it (space
    as %20 rather than +, which a form parser reads the same), with one regex pass instead
    of a Python call per character: the vp_token is kilobytes, and the generator shares
    the machine's CPUs with the servers."""
    return "&".join(f"{form_quote(k)}={form_quote(v)}"
                    for k, v in fields.items()).encode("ascii")


def _target(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- operations (run in the generator process) -------------------------------------------------

Op = Callable[["Balancer", Any, dict[str, Any]], Awaitable[float]]
JSON_HEADERS: Final = (("Content-Type", "application/json"),)
FORM: Final = "application/x-www-form-urlencoded"


async def _timed(conn: Balancer, spent: list[float], method: str, target: str,
                 body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> tuple[int, bytes]:
    t = time.perf_counter()
    answer = await conn.request(method, target, body, headers)
    spent.append(time.perf_counter() - t)
    return answer


PROOF_TYP: Final = "openid4vci-proof+jwt"
ATTESTATION_TYP: Final = "key-attestation+jwt"


def _batch_proofs(signer: Any, fresh: Sequence[tuple[Any, dict[str, Any]]], audience: str,
                  nonce: str) -> list[str]:
    """What our wallet sends for a batch (holder._openid4vci._request_pools): the member's
    key attestation of every fresh key over the c_nonce, and one jwt proof per fresh key
    carrying it (OpenID4VCI 1.0 Appendix D.1, F.1)."""
    from tessera.jose import sign_compact

    iat = int(time.time())
    attestation = sign_compact({"typ": ATTESTATION_TYP}, {
        "iat": iat, "exp": iat + 300, "nonce": nonce,
        "attested_keys": [jwk for _, jwk in fresh]}, signer)
    return [sign_compact({"typ": PROOF_TYP, "jwk": jwk, "key_attestation": attestation},
                         {"aud": audience, "iat": iat, "nonce": nonce}, key)
            for key, jwk in fresh]


async def issuance_op(conn: Balancer, item: Any, ctx: dict[str, Any]) -> float:
    """One OpenID4VCI exchange; ``item`` = (offer JSON, fresh keys, kid): fresh keys is
    None for one credential on the member's DID key (kid), else the batch's
    (signer, public JWK) pairs, one credential each."""
    from tessera.jose import sign_compact

    offer = json.loads(item[0])
    issuer = offer["credential_issuer"]
    base = _target(issuer)
    code = offer["grants"]["urn:ietf:params:oauth:grant-type:pre-authorized_code"][
        "pre-authorized_code"]
    spent: list[float] = []
    token_form = form({"grant_type": "urn:ietf:params:oauth:grant-type:pre-authorized_code",
                       "pre-authorized_code": code})
    status, body = await _timed(conn, spent, "POST", f"{base}/token", token_form,
                                (("Content-Type", FORM),))
    if status != 200:
        raise HttpError(f"token {status}: {body[:120]!r}")
    access = json.loads(body)["access_token"]
    status, body = await _timed(conn, spent, "POST", f"{base}/nonce")
    if status != 200:
        raise HttpError(f"nonce {status}")
    signer, fresh = ctx["signers"][item[2]], item[1]
    nonce = json.loads(body)["c_nonce"]
    if fresh is None:
        proofs = [sign_compact({"typ": PROOF_TYP},
                               {"aud": issuer, "iat": int(time.time()), "nonce": nonce}, signer)]
    else:
        proofs = _batch_proofs(signer, fresh, issuer, nonce)
    request = json.dumps({"credential_configuration_id": offer["credential_configuration_ids"][0],
                          "proofs": {"jwt": proofs}}).encode()
    status, body = await _timed(conn, spent, "POST", f"{base}/credential", request,
                                (*JSON_HEADERS, ("Authorization", f"Bearer {access}")))
    issued = json.loads(body).get("credentials") if status == 200 else None
    if not isinstance(issued, list) or len(issued) != len(proofs) \
            or not all("~" in c["credential"] for c in issued):
        raise HttpError(f"credential {status}: {body[:120]!r}")
    return sum(spent)


_VP_OPEN: Final = '{"' + DISCLOSED_CREDENTIAL + '":["'
_VP_CLOSE: Final = '"]}'


def checkout_wallet(credential: str, signer: Any) -> dict[str, Any]:
    """A wallet's credential as it presents it at every checkout, made once.

    What a presentation holds apart from its KB-JWT does not change between
    checkouts: the issuer-signed JWT with the disclosure it shows (RFC 9901
    §4), the ``sd_hash`` over them that the KB-JWT carries (§4.3.1), and the
    form-encoded ``vp_token`` up to the KB-JWT (base64url and ``~`` need no
    escaping). Per checkout only the KB-JWT over the request's nonce is signed
    (:func:`checkout_answer`); the bytes are those of ``sd_jwt.present``.
    """
    import hashlib

    from tessera.encoding import b64url_encode
    from tessera.formats import sd_jwt

    shown = sd_jwt.present(credential, disclose=[DISCLOSED_CLAIM], holder=None)
    return {"signer": signer, "credential": credential,
            "sd_hash": b64url_encode(hashlib.sha256(shown.encode("ascii")).digest()),
            "form_head": form({"vp_token": _VP_OPEN + shown})}


def checkout_answer(wallet: dict[str, Any], request: dict[str, Any],
                    issued_at: int | None = None) -> bytes:
    """The ``direct_post`` body of a wallet's answer to ``request`` (a KB-JWT signed now)."""
    from tessera.formats.sd_jwt import KB_TYP
    from tessera.jose import sign_compact

    kb_jwt = sign_compact({"typ": KB_TYP}, {
        "iat": int(time.time()) if issued_at is None else issued_at,
        "aud": request["client_id"], "nonce": request["nonce"],
        "sd_hash": wallet["sd_hash"]}, wallet["signer"])
    tail = f"{form_quote(kb_jwt + _VP_CLOSE)}&state={form_quote(request['state'])}"
    head: bytes = wallet["form_head"]
    return head + tail.encode("ascii")


async def checkout_op(conn: Balancer, item: Any, ctx: dict[str, Any]) -> float:
    """One checkout; ``item`` is the index of a wallet (:func:`checkout_wallet`)."""
    from tessera.encoding import b64url_decode

    wallet = ctx["wallets"][item % len(ctx["wallets"])]
    till = (("Authorization", f"Bearer {ctx['till_key']}"),)
    spent: list[float] = []
    status, body = await _timed(conn, spent, "POST", "/requests",
                                json.dumps({"policy": POLICY}).encode(), (*JSON_HEADERS, *till))
    if status != 201:
        raise HttpError(f"create {status}: {body[:120]!r}")
    created = json.loads(body)
    status, token = await _timed(conn, spent, "GET", _target(created["request_uri"]))
    if status != 200:
        raise HttpError(f"request object {status}")
    # Wallet work, outside the latency: read the request (a wallet would also
    # check its signature), sign the KB-JWT over its nonce.
    request = json.loads(b64url_decode(token.split(b".")[1].decode()))
    answer = checkout_answer(wallet, request)
    status, body = await _timed(conn, spent, "POST", _target(request["response_uri"]), answer,
                                (("Content-Type", FORM),))
    if status != 200:
        raise HttpError(f"response {status}: {body[:120]!r}")
    status, body = await _timed(conn, spent, "GET", _target(created["result"]), b"", till)
    view = json.loads(body)
    if status != 200 or not (view.get("status") == "done" and view["result"]["ok"]):
        raise HttpError(f"result {status}: {view.get('result')}")
    return sum(spent)


async def redemption_op(conn: Balancer, item: Any, ctx: dict[str, Any]) -> float:
    """Hold + capture; ``item`` is a request body prepared (and signed) before the run."""
    slug, partner = ctx["slug"], (("Authorization", f"Bearer {ctx['partner_token']}"),)
    spent: list[float] = []
    status, body = await _timed(conn, spent, "POST", f"/brands/{slug}/redemptions", item,
                                (*JSON_HEADERS, *partner))
    if status != 201:
        raise HttpError(f"hold {status}: {body[:160]!r}")
    rid = json.loads(body)["redemption"]["id"]
    status, body = await _timed(conn, spent, "POST", f"/brands/{slug}/redemptions/{rid}/capture",
                                b"{}", (*JSON_HEADERS, *partner))
    if status != 200:
        raise HttpError(f"capture {status}: {body[:160]!r}")
    return sum(spent)


async def earn_op(conn: Balancer, item: Any, ctx: dict[str, Any]) -> float:
    """One earn; ``item`` = (target, headers) made before the run (member, idempotency key)."""
    spent: list[float] = []
    status, body = await _timed(conn, spent, "POST", item[0], EARN_BODY, item[1])
    if status != 201 or b'"entry"' not in body:
        raise HttpError(f"earn {status}: {body[:160]!r}")
    return sum(spent)


OPS_BY_PATH: Final[dict[str, Op]] = {
    "issuance": issuance_op, "checkout": checkout_op, "redemption": redemption_op,
    "earn": earn_op}


# -- CPU accounting (Linux /proc; None elsewhere) ----------------------------------------------

_TICK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + system CPU seconds) of every process we may read."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def tree_cpu_seconds(roots: Sequence[int]) -> float | None:
    """CPU seconds used so far by ``roots`` and every live descendant."""
    if not Path("/proc/self/stat").exists():
        return None
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][1]
        todo += children.get(pid, [])
    return total


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def postgres_backend_pids(probe: dict[str, str]) -> set[int] | None:
    """Pids of the PostgreSQL backends serving this run's servers: the connections whose
    ``application_name`` is the one the servers' database URL sets (:func:`postgres_schema`);
    None when the database does not answer."""
    try:
        import psycopg

        with psycopg.connect(probe["url"], autocommit=True, connect_timeout=2) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                (probe["application_name"],)).fetchall()
    except Exception:
        return None
    return {int(pid) for (pid,) in rows}


def postgres_table_stats(probe: dict[str, str]) -> dict[str, list[int]] | None:
    """Per table of the configuration's schema: [scans (sequential + index), rows
    inserted, updated, deleted, rows read (fetched by index scans + read by sequential
    scans)], from ``pg_stat_user_tables`` (counts the machine's load does not move; each
    backend reports them at most a second late)."""
    try:
        import psycopg

        with psycopg.connect(probe["url"], autocommit=True, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT relname, seq_scan + coalesce(idx_scan, 0), n_tup_ins, n_tup_upd, "
                "n_tup_del, seq_tup_read + coalesce(idx_tup_fetch, 0) "
                "FROM pg_stat_user_tables WHERE schemaname = %s",
                (probe["application_name"],)).fetchall()
    except Exception:
        return None
    return {str(name): [int(v) for v in values] for name, *values in rows}


def postgres_cpu() -> dict[int, float] | None:
    """pid -> CPU seconds of every process named ``postgres`` on the machine: the
    postmaster, its WAL writer, checkpointer, background writer and every client's
    backend (other clients' included); None when /proc shows none (PostgreSQL on another
    machine or in a container, or /proc not readable)."""
    if not Path("/proc/self/stat").exists():
        return None
    table = _proc_table()
    found = {pid: cpu for pid, (_, cpu) in table.items() if _comm(pid) == "postgres"}
    return found or None


def cpu_between(start: dict[int, float], end: dict[int, float],
                only: set[int] | None = None) -> float:
    """CPU seconds spent between two :func:`postgres_cpu` readings by the processes alive
    at the end (``only``: those pids); one started in between counts from zero, one
    that ended in between is not seen."""
    return sum(cpu - start.get(pid, 0.0) for pid, cpu in end.items()
               if only is None or pid in only)


def context_switches(pids: Iterable[int]) -> dict[int, int]:
    """pid -> context switches (voluntary and not) of all its threads so far: how often
    they went to sleep and were woken, a count the machine's load moves less than CPU."""
    out: dict[int, int] = {}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        total = 0
        for tid in tasks:
            try:
                text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            except OSError:
                continue
            total += sum(int(line.rsplit(None, 1)[-1]) for line in text.splitlines()
                         if "ctxt_switches:" in line)
        out[pid] = total
    return out


def switches_between(start: dict[int, int], end: dict[int, int]) -> int:
    """Context switches between two readings, of the processes alive at both."""
    return sum(count - start[pid] for pid, count in end.items() if pid in start)


def tree_pids(roots: Sequence[int]) -> list[int]:
    """``roots`` and their live descendants."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
        todo += children.get(pid, [])
    return out


def machine_busy_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in first[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


# -- how the generator's connections are spread over the server processes --------------------

_TCP_ESTABLISHED: Final = "01"
_TCP_LISTEN: Final = "0A"


def parse_proc_net_tcp(text: str) -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of each socket in a ``/proc/net/tcp`` or
    ``tcp6`` text (ports and state are hex there; the addresses are not needed: every
    connection of the bench is on loopback, and a port pair names one of them)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            local = int(fields[1].rsplit(":", 1)[1], 16)
            remote = int(fields[2].rsplit(":", 1)[1], 16)
            out.append((local, remote, fields[3].upper(), int(fields[9])))
        except (IndexError, ValueError):
            continue
    return out


def server_socket_inodes(sockets: Iterable[tuple[int, int, str, int]], server_port: int,
                         client_ports: Iterable[int]) -> tuple[set[int], set[int]]:
    """(inodes of the server's established sockets whose peer is one of ``client_ports``,
    inodes of its listening sockets on ``server_port``)."""
    wanted = set(client_ports)
    accepted: set[int] = set()
    listening: set[int] = set()
    for local, remote, state, inode in sockets:
        if local != server_port or not inode:
            continue
        if state == _TCP_ESTABLISHED and remote in wanted:
            accepted.add(inode)
        elif state == _TCP_LISTEN:
            listening.add(inode)
    return accepted, listening


def _socket_inodes(pid: int) -> set[int]:
    """The socket inodes ``pid`` holds (its ``/proc/<pid>/fd`` links ``socket:[inode]``)."""
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def connection_spread(roots: Sequence[int], ports: Sequence[int],
                      client_ports: Sequence[dict[int, int]]
                      ) -> tuple[list[list[int]] | None, str | None]:
    """Per instance (``roots[i]`` serving ``ports[i]``): how many of the generator's open
    connections (``client_ports``: one local port -> instance map per client) each of its
    serving processes holds, largest first; (None, why) where /proc does not tell.

    The serving processes of an instance are those of its tree holding its listening
    socket, less the root when others hold it too (uvicorn's supervisor with
    ``--workers``: its workers accept; libuv alone let the first awake take every pending
    connection, bench/README.md "Session 8 run"; since session 9 they take one at a time,
    the one holding fewer first: "Session 9 (balanced accept)")."""
    try:
        sockets = [s for name in ("tcp", "tcp6")
                   for s in parse_proc_net_tcp(Path(f"/proc/self/net/{name}").read_text())]
    except OSError as exc:
        return None, f"/proc/self/net/tcp not readable ({type(exc).__name__})"
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    spread: list[list[int]] = []
    for index, (root, port) in enumerate(zip(roots, ports, strict=True)):
        mine = [p for ports_ in client_ports for p, i in ports_.items() if i == index]
        accepted, listening = server_socket_inodes(sockets, port, mine)
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in table:
                tree.append(pid)
            todo += children.get(pid, [])
        held = {pid: _socket_inodes(pid) for pid in tree}
        if not any(held.values()):
            return None, f"the server processes' /proc/<pid>/fd are not readable (port {port})"
        serving = [pid for pid in tree if held[pid] & listening]
        if len(serving) > 1:
            serving = [pid for pid in serving if pid != root]
        if not serving:
            return None, f"no process of the server's tree holds its listening socket ({port})"
        spread.append(sorted((len(held[pid] & accepted) for pid in serving), reverse=True))
    return spread, None


# -- the load generator (its own process) -----------------------------------------------------


@dataclass
class Point:
    """One configuration at one concurrency."""

    concurrency: int
    ops: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    generator_cpu_s: float | None = None
    server_cpu_s: float | None = None
    machine_busy_share: float | None = None
    machine_busy_s: float | None = None  # all CPUs of the machine, every process
    # PostgreSQL (servers on PostgreSQL only): its backends serving this run's servers,
    # and every postgres process on the machine (other clients' backends included).
    postgres_cpu_s: float | None = None
    postgres_all_cpu_s: float | None = None
    postgres_skipped: str | None = None  # why the two above are None
    postgres_backends: int | None = None  # connections the servers held at the end
    server_switches: int | None = None  # context switches of the servers' threads
    postgres_switches: int | None = None  # ... of the backends serving them
    # Per table: [scans, rows inserted, updated, deleted, rows read] during the window.
    postgres_tables: dict[str, list[int]] | None = None
    load_average: float | None = None
    # Per instance: the generator's connections each serving process held at the end of
    # the window, largest first (e.g. [[6, 2]]: 2 workers, one holding 6 of 8 clients).
    connections_per_server_process: list[list[int]] | None = None
    connections_skipped: str | None = None  # why the above is None
    credentials_per_op: int = 1  # issuance: the batch size (every credential must come back)
    # earn: seconds waited for the sequencer before the window and after it (settle_log);
    # the CPU readings include the second wait, the window's length does not.
    settle_seconds: list[float] | None = None
    # earn: ledger entries per member when the warm-up began and when the window ended.
    history: list[float] | None = None

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        lat = sorted(self.latencies_ms)
        out["ops_per_second"] = self.ops / self.seconds if self.seconds else 0.0
        out["credentials_per_second"] = out["ops_per_second"] * self.credentials_per_op
        out["p50_ms"] = percentile(lat, 0.50) if lat else None
        out["p99_ms"] = percentile(lat, 0.99) if lat else None
        gen, srv = self.generator_cpu_s, self.server_cpu_s
        out["generator_cpu_percent_of_core"] = (
            100 * gen / self.seconds if gen is not None and self.seconds else None)
        out["generator_cpu_share"] = (gen / (gen + srv) if gen is not None and srv
                                      else None)
        out["server_cpu_ms_per_op"] = 1000 * srv / self.ops if srv is not None and self.ops \
            else None
        out["server_cpu_ms_per_credential"] = (
            None if out["server_cpu_ms_per_op"] is None
            else out["server_cpu_ms_per_op"] / self.credentials_per_op)

        def per_op(seconds: float | None) -> float | None:
            return None if seconds is None or not self.ops else 1000 * seconds / self.ops

        out["generator_cpu_ms_per_op"] = per_op(gen)
        for who in ("server", "postgres"):
            count = getattr(self, f"{who}_switches")
            out[f"{who}_switches_per_op"] = count / self.ops if count is not None \
                and self.ops else None
        out["postgres_cpu_ms_per_op"] = per_op(self.postgres_cpu_s)
        out["postgres_all_cpu_ms_per_op"] = per_op(self.postgres_all_cpu_s)
        out["machine_cpu_ms_per_op"] = per_op(self.machine_busy_s)
        # Rows PostgreSQL read per operation, all tables: what grows with the history when
        # a plan filters behind an index prefix or scans a table (load-independent).
        tables = self.postgres_tables
        out["postgres_rows_read_per_op"] = (
            sum(v[4] for v in tables.values() if len(v) > 4) / self.ops
            if tables and self.ops else None)
        # What the machine spent beyond servers, generator and PostgreSQL: the kernel's
        # work not charged to a process (softirqs: loopback packets), other processes.
        known = [srv, gen, self.postgres_all_cpu_s]
        out["other_cpu_ms_per_op"] = (
            None if self.machine_busy_s is None or any(v is None for v in known)
            else per_op(self.machine_busy_s - sum(v for v in known if v is not None)))
        return out


SETTLE_SECONDS: Final = 0.6
"""Least wait of :func:`settle_log`: longer than a sequencer's idle period (interval +
hold-back, 0.5 s), so each mode's servers get at least one idle look per worker."""


def pending_leaves(where: dict[str, str]) -> int | None:
    """Rows of ``log_pending`` in an earn configuration's database: ``{"sqlite": path}`` or
    ``{"url": base URL, "schema": schema}``; None when it does not answer. Read on a
    connection of its own (not the servers' ``application_name``: not their backends)."""
    try:
        if "sqlite" in where:
            import sqlite3

            with contextlib.closing(sqlite3.connect(where["sqlite"], timeout=5)) as conn:
                return int(conn.execute("SELECT count(*) FROM log_pending").fetchone()[0])
        import psycopg

        with psycopg.connect(where["url"], autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                f'SELECT count(*) FROM "{where["schema"]}".log_pending').fetchone()  # noqa: S608
            return None if row is None else int(row[0])
    except Exception:
        return None


def settle_log(where: dict[str, str], least: float = SETTLE_SECONDS,
               most: float = 10.0) -> float:
    """Wait until no leaf is pending and at least ``least`` seconds passed; the seconds
    waited. Around an earn window, in both modes alike: before it, the sequencer has
    integrated the seeding's and the warm-up's leaves (not this window's work); after
    it, this window's own leaves (its work, charged to it)."""
    start = time.monotonic()
    while time.monotonic() - start < most:
        if time.monotonic() - start >= least and pending_leaves(where) in (0, None):
            break
        time.sleep(0.05)
    return time.monotonic() - start


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted samples."""
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def drive(op: Op, targets: Sequence[tuple[str, int]], items: Sequence[Any],
                concurrency: int, warmup: int, ctx: dict[str, Any], server_pids: Sequence[int],
                max_seconds: float = MAX_SECONDS,
                postgres: dict[str, str] | None = None, balance: str = "request",
                settle: dict[str, str] | None = None) -> Point:
    """Run ``items`` through ``concurrency`` closed-loop clients; the first ``warmup``
    operations are not measured. ``postgres`` (``url``, ``application_name``): the
    servers' database, whose backends' CPU is measured over the window too. ``settle``
    (earn, :func:`pending_leaves`): the CPU readings wait for the transparency log's
    sequencer (:func:`settle_log`) before the window and after its last operation, so
    the window holds the integration of its own leaves, no earlier ones; throughput and
    the generator's CPU stay the window's."""
    point = Point(concurrency)
    pg_start: dict[int, float] | None = None
    tables_start: dict[str, list[int]] | None = None
    srv_switches: dict[int, int] = {}
    pg_switches: dict[int, int] = {}
    queue: Iterator[tuple[int, Any]] = iter(enumerate(items))
    clients = [Balancer(targets, start=i, per=balance) for i in range(concurrency)]
    started: dict[str, float] = {}
    window_open = asyncio.Event()
    done_warm = 0

    def open_window() -> None:
        nonlocal pg_start, tables_start
        if settle is not None:
            point.settle_seconds = [settle_log(settle), 0.0]
        if postgres is not None:  # before the generator's clock starts: not its CPU
            tables_start = postgres_table_stats(postgres)
            pg_start = postgres_cpu()
            pg_switches.update(context_switches(pg_start or ()))
            if pg_start is None:
                point.postgres_skipped = "no postgres process in /proc (not this machine?)"
        started["wall"] = time.perf_counter()
        started["gen"] = time.process_time()
        started["srv"] = tree_cpu_seconds(server_pids) or 0.0
        srv_switches.update(context_switches(tree_pids(server_pids)))
        busy = machine_busy_seconds()
        started["busy"], started["total"] = busy if busy else (0.0, 0.0)
        window_open.set()

    async def client(conn: Balancer) -> None:
        nonlocal done_warm
        for index, item in queue:
            measured = index >= warmup
            if measured and not window_open.is_set():
                # Every warm-up operation has been handed out: wait for them to end.
                while done_warm < warmup:
                    await asyncio.sleep(0.001)
                if not window_open.is_set():
                    open_window()
            conn.begin_operation()
            try:
                latency = await op(conn, item, ctx)
            except (HttpError, KeyError, ValueError, TypeError) as exc:
                if measured:
                    point.errors += 1
                    if len(point.error_samples) < 5:
                        point.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
                latency = None
            if not measured:
                done_warm += 1
            elif latency is not None:
                point.latencies_ms.append(latency * 1000)
            if window_open.is_set() and time.perf_counter() - started["wall"] > max_seconds:
                return
        # Kept open until every client is done: the spread is read over all of them.

    await asyncio.gather(*(client(c) for c in clients))
    if not window_open.is_set():
        for c in clients:
            c.close()
        return point
    point.seconds = time.perf_counter() - started["wall"]
    point.generator_cpu_s = time.process_time() - started["gen"]
    if settle is not None and point.settle_seconds is not None:
        point.settle_seconds[1] = settle_log(settle)
    srv = tree_cpu_seconds(server_pids)
    point.server_cpu_s = None if srv is None else srv - started["srv"]
    if srv is not None:
        point.server_switches = switches_between(
            srv_switches, context_switches(tree_pids(server_pids)))
    busy = machine_busy_seconds()
    if busy and busy[1] > started["total"]:
        point.machine_busy_share = (busy[0] - started["busy"]) / (busy[1] - started["total"])
        point.machine_busy_s = busy[0] - started["busy"]
    if postgres is not None and pg_start is not None:
        pg_end = postgres_cpu()
        # Asked after the reading: the query's own backend is not in it.
        backends = postgres_backend_pids(postgres)
        if pg_end is None:
            point.postgres_skipped = "postgres processes gone from /proc during the window"
        elif backends is None:
            point.postgres_skipped = "PostgreSQL did not answer the backend query"
        elif backends and not backends & pg_end.keys():
            # pg_stat_activity's pids are not this machine's postgres processes.
            point.postgres_skipped = ("its backends are not in /proc (PostgreSQL in another "
                                      "pid namespace or on another machine)")
        else:
            point.postgres_cpu_s = cpu_between(pg_start, pg_end, backends)
            point.postgres_all_cpu_s = cpu_between(pg_start, pg_end)
            point.postgres_backends = len(backends)
            point.postgres_switches = switches_between(pg_switches,
                                                       context_switches(backends))
    if postgres is not None and tables_start is not None:
        tables_end = postgres_table_stats(postgres) or {}
        point.postgres_tables = {
            name: [a - b for a, b in zip(values, tables_start.get(name, [0] * 5), strict=True)]
            for name, values in tables_end.items()}
    point.ops = len(point.latencies_ms)
    point.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # After the window's readings (its /proc walk is not charged to the window), before
    # the connections close.
    point.connections_per_server_process, point.connections_skipped = connection_spread(
        server_pids, [port for _, port in targets],
        [c.local_ports() for c in clients])
    for c in clients:
        c.close()
    return point


def _run_loop(main: Awaitable[Point]) -> Point:
    """The generator's event loop: uvloop where installed (the servers' loop too, through
    uvicorn), whose transports and scheduling cost the generator less CPU per request
    than asyncio's own loop, and the generator shares the machine with the servers."""
    async def wrapped() -> Point:
        return await main

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapped())
    return uvloop.run(wrapped())


def _generator(jobs: Any, results: Any) -> None:
    """The load generator process: one job per (configuration, concurrency)."""
    from tessera.keys import signer_from_jwk

    ctx: dict[str, Any] = {}
    results.put({"ready": True})
    while (job := jobs.get()) is not None:
        try:
            if "context" in job:  # per configuration: keys and credentials, built once
                raw = job["context"]
                ctx = dict(raw)
                ctx["signers"] = {kid: signer_from_jwk(json.loads(jwk), key_id=kid)
                                  for kid, jwk in raw.get("signers", {}).items()}
                ctx["wallets"] = [checkout_wallet(w["credential"],
                                                  signer_from_jwk(json.loads(w["jwk"])))
                                  for w in raw.get("wallets", [])]
                results.put({"ok": True})
                continue
            items = job["items"]
            if job["path"] == "issuance":  # a batch's fresh keys, parsed before the window
                items = [(offer, None if fresh is None else [
                    (key := signer_from_jwk(json.loads(jwk)), key.public_key.to_jwk())
                    for jwk in fresh], kid) for offer, fresh, kid in items]
            point = _run_loop(drive(
                OPS_BY_PATH[job["path"]], job["targets"], items, job["concurrency"],
                job["warmup"], ctx, job["server_pids"], job.get("max_seconds", MAX_SECONDS),
                job.get("postgres"), job.get("balance", "request"), job.get("settle")))
            results.put({"point": asdict(point)})
        except Exception as exc:  # reported to the parent, which stops the run
            results.put({"fatal": f"{type(exc).__name__}: {exc}"})


# -- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_url() -> str | None:
    url = (os.environ.get("TESSERA_BENCH_REDIS_URL") or os.environ.get("TESSERA_TEST_REDIS_URL")
           or "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


def postgres_base_url() -> str | None:
    url = (os.environ.get("TESSERA_BENCH_POSTGRES_URL")
           or os.environ.get("TESSERA_TEST_POSTGRES_URL")
           or "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except Exception:
        return None
    return url


_schemas: dict[str, tuple[str, str]] = {}  # URL of a bench schema -> (server URL, schema)


def schema_bytes(base: str, schema: str) -> int:
    """Bytes on disk of every table, index and TOAST relation of ``schema``."""
    import psycopg

    with psycopg.connect(base, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relkind = 'r'", (schema,)).fetchone()
    return int(row[0]) if row else 0


def schema_tables(base: str, schema: str) -> dict[str, dict[str, int]]:
    """Rows and bytes (with indexes and TOAST) of each non-empty table of ``schema``."""
    import psycopg
    from psycopg import sql

    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(base, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relkind = 'r' ORDER BY 1", (schema,)).fetchall()
        for name, size in tables:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name))).fetchone()
            if count and count[0]:
                out[name] = {"rows": int(count[0]), "bytes": int(size)}
    return out


@contextlib.contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    """A fresh schema on ``base`` for one configuration, dropped afterwards."""
    import psycopg

    schema = "bench_" + secrets.token_hex(4)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    # The schema's name is also the connections' application_name: pg_stat_activity
    # then tells which backends serve this configuration (their CPU is measured).
    url = f"{base}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    _schemas[url] = (base, schema)
    try:
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


class Servers:
    """``instances`` server processes (each ``workers`` workers), stopped on exit."""

    def __init__(self, commands: Sequence[list[str]], env: dict[str, str], work: Path,
                 workers: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self._workers = workers
        for i, cmd in enumerate(commands):
            port = int(cmd[cmd.index("--port") + 1])
            log = (work / f"server-{port}.log").open("wb")
            self.procs.append(subprocess.Popen(  # noqa: S603 - our interpreter, our arguments
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                cwd=SERVER_CODE))
            self.ports.append(port)
            self._log = work / f"server-{port}.log" if i == 0 else self._log

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def targets(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    def wait_ready(self, probe: str, timeout: float = 90.0) -> None:
        """Every instance answers ``probe``, and every worker has finished loading the app.

        Uvicorn answers as soon as one worker listens; the others may still be
        importing (seconds on a loaded machine), so "answers" is not "ready":
        a worker is taken as loaded once its CPU time stops growing.
        """
        import urllib.request

        deadline = time.monotonic() + timeout
        for proc, port in zip(self.procs, self.ports, strict=True):
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("a server did not start:\n" + self._log.read_text(
                        errors="replace")[-3000:])
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}",
                                                timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)
        if not Path("/proc/self/stat").exists():
            time.sleep(3.0)
            return
        quiet, last = 0, None
        while quiet < 2 and time.monotonic() < deadline:
            table = _proc_table()
            workers = {pid: cpu for pid, (ppid, cpu) in table.items() if ppid in self.pids}
            if last is not None and len(workers) >= (self._workers if self._workers > 1 else 0):
                grown = max((cpu - last.get(pid, 0.0) for pid, cpu in workers.items()),
                            default=0.0)
                quiet = quiet + 1 if grown < 0.05 else 0
            last = workers
            time.sleep(0.4)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


SERVER_CODE: Final = os.environ.get("TESSERA_BENCH_SERVER_CODE") or None
"""A directory holding other ``tessera``/``issuer``/``verifier`` packages (e.g. ``git archive
OLD tessera issuer verifier holder schemas | tar -x -C DIR``): the servers run that code
(their working directory comes first on their path), the generator this one. Before/after
tables from one sitting."""


def _cli(*args: str, server: str = "uvicorn") -> list[str]:
    """A ``tessera`` command in a fresh interpreter; ``server="granian"``: the same command
    with granian in place of uvicorn (:mod:`bench._granian`)."""
    if server == "granian":
        # Appended, not inserted: with TESSERA_BENCH_SERVER_CODE the servers' own
        # packages (their working directory) still come first.
        root = str(Path(__file__).resolve().parents[1])
        return [sys.executable, "-c", f"import sys; sys.path.append({root!r}); "
                "from bench._granian import main; main(sys.argv[1:])", *args]
    return [sys.executable, "-c", "import sys; from tessera.cli import app; app(sys.argv[1:])",
            *args]


def _bench_env(**extra: str) -> dict[str, str]:
    # One load generator on loopback is one client: far over the per-client rate
    # limits by design (docs/configuration.md), so they are off here.
    return {**os.environ, "TESSERA_RATE_LIMITS": "off", "TESSERA_LOG_LEVEL": "warning", **extra}


# -- setup per path (main process, before the timed window) --------------------------------------


@dataclass
class Prepared:
    """What one configuration runs: servers, the generator's context, items per point."""

    servers: Servers
    context: dict[str, Any]
    items: Callable[[int], list[Any]]  # n -> that many fresh operation inputs
    db_url: str | None = None  # a PostgreSQL bench schema: its growth per operation is measured
    log_rows: Callable[[], dict[str, int]] | None = None  # earn: rows of the log's tables
    settle: dict[str, str] | None = None  # earn: where settle_log reads the pending leaves
    members: int = 0  # earn: members the operations go round-robin over
    seed: list[Any] | None = None  # earn: operations giving each member its history first

    def db_bytes(self) -> int | None:
        where = _schemas.get(self.db_url or "")
        return None if where is None else schema_bytes(*where)

    def db_tables(self) -> dict[str, dict[str, int]] | None:
        where = _schemas.get(self.db_url or "")
        return None if where is None else schema_tables(*where)

    def postgres_probe(self) -> dict[str, str] | None:
        """What the generator needs to find this configuration's PostgreSQL backends."""
        where = _schemas.get(self.db_url or "")
        return None if where is None else {"url": where[0], "application_name": where[1]}


def _issuer_servers(config: Config, work: Path, db_url: str, master: str) -> Servers:
    ports = [free_port() for _ in range(config.instances)]
    public = f"http://127.0.0.1:{ports[0]}"  # every instance is one issuer behind an LB
    env = _bench_env(TESSERA_DATABASE_URL=db_url, TESSERA_MASTER_KEY=master,
                     TESSERA_PUBLIC_URL=public)
    if config.batch > 10:  # the issuer's default batch_size is 10
        env["TESSERA_BATCH_SIZE"] = str(config.batch)
    if not config.log:
        # Python's site imports bench/_log_off/sitecustomize.py in the server and in
        # each worker it spawns; production code has no switch for it.
        env["PYTHONPATH"] = os.pathsep.join(
            [str(LOG_OFF_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    commands = [_cli("issuer", "serve", "--port", str(p), "--workers", str(config.workers),
                     server=config.server) for p in ports]
    servers = Servers(commands, env, work, config.workers)
    servers.wait_ready("/healthz")
    return servers


def _issuer_db(config: Config, work: Path, stack: contextlib.ExitStack) -> str:
    from issuer.migrations import upgrade

    if config.store == "sqlite":
        url = f"sqlite:///{work / 'issuer.db'}"
    else:
        base = postgres_base_url()
        if base is None:
            raise LookupError("no PostgreSQL answered (set TESSERA_BENCH_POSTGRES_URL)")
        url = stack.enter_context(postgres_schema(base))
    upgrade(url)
    return url


def _enrol(http: Any, headers: dict[str, str], program_id: str, count: int,
           points: int) -> list[tuple[str, Any]]:
    """``count`` members with ES256 did:key holders, each given ``points``."""
    from tessera.did import did_key
    from tessera.jose import sign_compact
    from tessera.keys import generate_signer

    people = []
    for _ in range(count):
        signer = generate_signer("ES256")
        did = did_key(signer.public_key)
        signer = signer.with_key_id(f"{did}#{did.removeprefix('did:key:')}")
        ch = http.post("/admin/v1/enrolment-challenges", headers=headers).json()
        proof = sign_compact({"typ": ch["typ"]}, {"iss": did, "aud": ch["audience"],
                                                  "nonce": ch["nonce"], "iat": int(time.time())},
                             signer)
        member = http.post("/admin/v1/members", headers=headers, json={
            "program_id": program_id, "did": did, "proof": proof})
        member.raise_for_status()
        earned = http.post(f"/admin/v1/members/{member.json()['id']}/points/earn",
                           json={"points": points},
                           headers={**headers, "Idempotency-Key": secrets.token_hex(8)})
        earned.raise_for_status()
        people.append((member.json()["id"], signer))
    return people


def _issuer_brand(db_url: str, master: str, public: str) -> tuple[Any, str]:
    from issuer._admin import create_brand
    from issuer._db import make_engine
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate
    from issuer._settings import Settings
    from tessera.encoding import b64url_decode

    settings = Settings(database_url=db_url, master_key=b64url_decode(master),
                        public_url=public)
    engine = make_engine(db_url)
    try:
        _, key = run_write(engine, lambda s: create_brand(
            s, keystore=SqlKeyStore(settings.master_key),
            data=BrandCreate(slug="bench", name="Bench"), did=settings.brand_did("bench")))
    finally:
        engine.dispose()
    return settings, key.token


def _issuer_up(config: Config, work: Path, stack: contextlib.ExitStack
               ) -> tuple[str, Servers, str, Any, dict[str, str]]:
    """A fresh database, the issuer servers on it, a brand: (db url, servers, url, settings,
    admin headers); the servers stop with ``stack``."""
    from issuer._settings import generate_master_key

    db_url = _issuer_db(config, work, stack)
    master = generate_master_key()
    servers = _issuer_servers(config, work, db_url, master)
    stack.callback(servers.stop)
    public = f"http://127.0.0.1:{servers.ports[0]}"
    settings, token = _issuer_brand(db_url, master, public)
    return db_url, servers, public, settings, {"Authorization": f"Bearer {token}"}


def prepare_issuance(config: Config, work: Path, stack: contextlib.ExitStack,
                     members: int) -> Prepared:
    import httpx

    from tessera.keys import generate_signer

    db_url, servers, public, settings, headers = _issuer_up(config, work, stack)
    with httpx.Client(base_url=public, timeout=60) as http:
        program = http.post("/admin/v1/programs", headers=headers, json={
            "name": "P", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]})
        program.raise_for_status()
        people = _enrol(http, headers, program.json()["id"], members, 1250)
    signers = {s.key_id: json.dumps(s.export_private_jwk()) for _, s in people}

    def items(n: int) -> list[Any]:
        """``n`` pre-authorized offers, written straight to the database (one transaction)."""
        from issuer import _openid4vci
        from issuer._admin import brand_by_slug
        from issuer._db import make_engine
        from issuer._ledger import run_write

        engine = make_engine(db_url)
        request = _openid4vci.OfferRequest(
            credential_configuration_ids=["LoyaltyPointsCredential_sd_jwt"], ttl_seconds=3600)
        now = datetime.now(UTC)

        def make(session: Any) -> list[Any]:
            brand = brand_by_slug(session, slug="bench")
            out = []
            for i in range(n):
                member_id, signer = people[i % len(people)]
                offer = _openid4vci.create_offer(session, settings=settings, brand=brand,
                                                 member_id=member_id, request=request, now=now)
                # A batch binds fresh keys, made here (a wallet makes them ahead too).
                fresh = None if config.batch == 1 else [
                    json.dumps(generate_signer("ES256").export_private_jwk())
                    for _ in range(config.batch)]
                out.append((json.dumps(offer.credential_offer), fresh, signer.key_id))
            return out

        try:
            return run_write(engine, make)
        finally:
            engine.dispose()

    return Prepared(servers, {"signers": signers}, items, db_url)


def prepare_redemption(config: Config, work: Path, stack: contextlib.ExitStack,
                       members: int, budget: int) -> Prepared:
    """Members with enough points for ``budget`` redemptions, a partner, credentials."""
    import httpx

    from issuer._admin import brand_by_slug
    from issuer._db import make_engine, session_scope
    from issuer._issuance import issue_for_member
    from issuer._keystore import SqlKeyStore
    from issuer._models import Member
    from tessera.formats import sd_jwt
    from tessera.redemption import build_redeem_transaction_data

    db_url, servers, public, settings, headers = _issuer_up(config, work, stack)
    client_id = "redirect_uri:https://cafe.example/checkout"
    per_member = REDEEM_POINTS * (budget // members + 2)
    with httpx.Client(base_url=public, timeout=60) as http:
        program = http.post("/admin/v1/programs", headers=headers, json={
            "name": "Miles", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]})
        program.raise_for_status()
        people = _enrol(http, headers, program.json()["id"], members, per_member)
        partner = http.post("/admin/v1/partners", headers=headers,
                            json={"name": "cafe", "client_id": client_id})
        partner.raise_for_status()
        brand_did = http.get("/brands/bench/did.json").json()["id"]
    engine = make_engine(db_url)
    credentials = []
    try:
        with session_scope(engine) as session:
            brand = brand_by_slug(session, slug="bench")
            for member_id, signer in people:
                row = session.get(Member, member_id)
                cred, _ = issue_for_member(
                    session, settings=settings, keystore=SqlKeyStore(settings.master_key),
                    brand=brand, member=row, configuration_id="LoyaltyMembershipCredential_sd_jwt",
                    holder_key=signer.public_key, now=datetime.now(UTC))
                credentials.append((cred, signer))
    finally:
        engine.dispose()
    partner_id, counter = partner.json()["id"], iter(range(10**9))

    def items(n: int) -> list[Any]:
        out = []
        for _ in range(n):
            i = next(counter)
            cred, signer = credentials[i % len(credentials)]
            td = build_redeem_transaction_data(brand=brand_did, points=REDEEM_POINTS,
                                               partner=partner_id, order_reference=f"o{i}",
                                               credential_ids=["loyalty"])
            nonce = secrets.token_urlsafe(16)
            vp = sd_jwt.present(cred, disclose=["membership_number"], holder=signer,
                                audience=client_id, nonce=nonce, transaction_data=[td])
            out.append(json.dumps({"vp_token": {"loyalty": [vp]}, "transaction_data": td,
                                   "nonce": nonce}).encode())
        return out

    return Prepared(servers, {"slug": "bench", "partner_token": partner.json()["token"]}, items,
                    db_url)


LOG_TABLES: Final = ("ledger_entry", "log_pending", "log_leaf")


def count_rows(db_url: str, tables: Sequence[str] = LOG_TABLES) -> dict[str, int]:
    """Rows of ``tables`` in the issuer database at ``db_url`` (SQLite or a bench schema)."""
    from sqlalchemy import text

    from issuer._db import make_engine

    # One statement, so one snapshot: the sequencer moving rows from log_pending to
    # log_leaf between two counts would count them twice (PostgreSQL, read committed).
    # The names are this module's constants, not input.
    query = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in tables)  # noqa: S608
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            counts = conn.execute(text(query)).one()
    finally:
        engine.dispose()
    return {t: int(n) for t, n in zip(tables, counts, strict=True)}


def prepare_earn(config: Config, work: Path, stack: contextlib.ExitStack,
                 members: int) -> Prepared:
    """Members of a brand, and per earn its target and headers: the brand's API key and
    an idempotency key of its own (a till's retry would reuse it; these never retry).
    ``config.history`` - 1 earns per member to run before the first point (``seed``):
    an earn reads the member's qualifying entries and live lots, so its cost grows with
    the member's history, and every round must start from the same history."""
    import httpx

    db_url, servers, public, _, headers = _issuer_up(config, work, stack)
    with httpx.Client(base_url=public, timeout=60) as http:
        program = http.post("/admin/v1/programs", headers=headers, json={
            "name": "Miles", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]})
        program.raise_for_status()
        # One earn each already (_enrol): a member's first write is not in the window.
        people = [m for m, _ in _enrol(http, headers, program.json()["id"], members, 1)]
    auth = ("Authorization", headers["Authorization"])
    run_id, counter = secrets.token_hex(4), iter(range(10**9))

    def items(n: int) -> list[Any]:
        out = []
        for _ in range(n):
            i = next(counter)
            out.append((f"/admin/v1/members/{people[i % len(people)]}/points/earn",
                        (*JSON_HEADERS, auth, ("Idempotency-Key", f"bench-{run_id}-{i}"))))
        return out

    base_schema = _schemas.get(db_url)
    settle = ({"sqlite": str(work / "issuer.db")} if base_schema is None
              else {"url": base_schema[0], "schema": base_schema[1]})
    return Prepared(servers, {}, items, db_url, log_rows=lambda: count_rows(db_url),
                    settle=settle, members=len(people),
                    seed=items(len(people) * max(0, config.history - 1)) or None)


def prepare_checkout(config: Config, work: Path, stack: contextlib.ExitStack,
                     wallets: int) -> Prepared:
    from tessera.keys import generate_signer
    from verifier._tills import TillKeys
    from verifier.testing import TestHolder, TestIssuer

    if config.store == "redis":
        store = redis_url()
        if store is None:
            raise LookupError("no Redis answered (set TESSERA_BENCH_REDIS_URL)")
    elif config.store == "postgres":
        base = postgres_base_url()
        if base is None:
            raise LookupError("no PostgreSQL answered (set TESSERA_BENCH_POSTGRES_URL)")
        store = stack.enter_context(postgres_schema(base))
    else:
        store = f"sqlite:///{work / 'verifier.db'}"
    brand = TestIssuer()
    (work / "trust.json").write_text(json.dumps({"issuers": [
        {"id": brand.did, "name": "Bench brand", "credential_types": ["*"]}]}))
    (work / "brand.json").write_text(json.dumps(brand.did_document))
    made = []
    for i in range(wallets):
        signer = generate_signer("ES256")
        credential = brand.issue_membership(TestHolder(signer), tier="gold",
                                            membership_number=f"B-{i:04d}")
        made.append({"credential": credential, "jwk": json.dumps(signer.export_private_jwk())})
    till = str(TillKeys(work / "tills.json").create("bench")["token"])
    ports = [free_port() for _ in range(config.instances)]
    commands = [_cli("verifier", "serve", "--port", str(p), "--workers", str(config.workers),
                     "--base-url", f"http://127.0.0.1:{ports[0]}", "--store", store,
                     "--trust", str(work / "trust.json"),
                     "--did-document", str(work / "brand.json"),
                     "--key", str(work / "verifier.jwk"), "--tills", str(work / "tills.json"),
                     "--log-level", "warning", server=config.server) for p in ports]
    if config.instances > 1:  # the key file is created once, not raced by two instances
        from verifier._service import load_or_create_key

        load_or_create_key(work / "verifier.jwk")
    servers = Servers(commands, _bench_env(), work, config.workers)
    stack.callback(servers.stop)
    servers.wait_ready("/healthz")
    counter = iter(range(10**9))
    return Prepared(servers, {"wallets": made, "till_key": till},
                    lambda n: [next(counter) for _ in range(n)], store)


# -- the run ----------------------------------------------------------------------------------


def _prepare(path: str, config: Config, work: Path, stack: contextlib.ExitStack,
             concurrencies: Sequence[int], ops: int, members: int | None = None) -> Prepared:
    clients = max(concurrencies)
    if path == "issuance":
        return prepare_issuance(config, work, stack, members=min(32, clients))
    if path == "redemption":
        budget = sum(ops + 2 * c for c in concurrencies)
        return prepare_redemption(config, work, stack, members=clients, budget=budget)
    if path == "earn":
        # Twice the clients: concurrent earns seldom wait on one member's row lock,
        # as at a coalition's tills (a member earns at one till at a time).
        return prepare_earn(config, work, stack, members=members or 2 * clients)
    return prepare_checkout(config, work, stack, wallets=clients)


def round_order(path: str, configs: Sequence[Config], servers: Sequence[str],
                round_: int) -> list[Config]:
    """The configurations of one round of ``path``, in the order they run."""
    order = [config.with_server(server) for config in configs for server in servers]
    if path == "earn" and round_ % 2:
        # A B then B A (the earn list is on / off pairs): a drift of the machine's load
        # within a pair (its second side runs later) falls on off and on alike.
        order = [c for i in range(0, len(order), 2) for c in reversed(order[i:i + 2])]
    return order


def run(*, quick: bool = False, paths: Sequence[str] = PATHS,
        concurrencies: Sequence[int] | None = None, ops: int | None = None,
        configs: dict[str, Sequence[Config]] | None = None,
        batches: Sequence[int] = (1,),
        progress: Callable[[str], None] | None = None,
        servers: Sequence[str] = ("uvicorn",), repeat: int = 1,
        balance: str = "request", histories: Sequence[int] | None = None,
        members: int | None = None, blocks: int = 1) -> dict[str, Any]:
    """Every configuration of every path at every concurrency; the JSON-ready report.

    ``batches``: the issuance configurations run once per batch size (credentials per
    exchange; 1 = one credential on the member's DID key). ``servers``: each
    configuration once per HTTP server, back to back (an A/B of the server under the
    same machine load); ``repeat``: a path's whole list that many times in turn
    (A B A B ...), so a drift of the load hits both sides alike. ``balance``: how the
    generator spreads requests over several instances (:class:`Balancer`). Earn only:
    ``histories``, each configuration once per member history (ledger entries per member
    before the first point); ``members``, how many (default twice the largest
    concurrency); its rounds alternate the order of each on / off pair (A B, B A, ...);
    ``blocks`` > 1: each on / off pair's servers run side by side and each point is cut
    into that many blocks of ``ops / blocks``, on and off alternated block by block (A B,
    B A, ...): both sides of a block pair see the machine's load of the same few seconds
    and the same member history."""
    sweep = tuple(concurrencies or (QUICK_SWEEP if quick else SWEEP))
    n_ops = ops or (QUICK_OPS if quick else OPS)
    chosen = {path: list(cs) for path, cs in (configs or CONFIGS).items()}
    if "issuance" in chosen:
        chosen["issuance"] = [c.batched(b) for c in chosen["issuance"] for b in batches]
    if "earn" in chosen and histories:
        chosen["earn"] = [c.with_history(h) for h in histories for c in chosen["earn"]]
    say = progress or (lambda _m: None)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    jobs, results = ctx.Queue(), ctx.Queue()
    generator = ctx.Process(target=_generator, args=(jobs, results), daemon=True)
    generator.start()

    def ask(job: dict[str, Any], timeout: float) -> dict[str, Any]:
        jobs.put(job)
        answer: dict[str, Any] = results.get(timeout=timeout)
        if "fatal" in answer:
            raise RuntimeError(f"load generator failed: {answer['fatal']}")
        return answer

    def _start(row: dict[str, Any], config: Config, prepared: Prepared) -> None:
        """After the servers are up: the generator's context, the earn seeding, the
        counts the row's growth is read against."""
        ask({"context": prepared.context}, 120)
        if prepared.seed:
            say(f"{row['path']}: {config.name}: seeding {len(prepared.seed)} earns")
            seeded = ask({"path": row["path"], "targets": prepared.servers.targets(),
                          "items": prepared.seed, "concurrency": 8, "warmup": 0,
                          "server_pids": prepared.servers.pids,
                          "max_seconds": 3600.0}, 3600)
            if seeded["point"]["errors"]:
                raise RuntimeError(f"seeding failed: {seeded['point']}")
            if prepared.settle is not None:  # the row counts start settled
                settle_log(prepared.settle)
        # After the seeding: the growth per operation is the measured operations'.
        row["size_before"] = prepared.db_bytes()
        row["db_tables_start"] = prepared.db_tables()
        if prepared.members:
            row["members"] = prepared.members
        if prepared.log_rows is not None:
            row["log_rows_start"] = prepared.log_rows()

    def _point(row: dict[str, Any], config: Config, prepared: Prepared, concurrency: int,
               count: int, block: int | None) -> None:
        warmup = 2 * concurrency
        items = prepared.items(warmup + count)
        say(f"{row['path']}: {config.name}: {concurrency} clients"
            + ("" if block is None else f", block {block + 1}"))
        answer = ask({"path": row["path"], "targets": prepared.servers.targets(),
                      "items": items, "concurrency": concurrency,
                      "warmup": warmup, "server_pids": prepared.servers.pids,
                      "postgres": prepared.postgres_probe(),
                      "balance": balance, "settle": prepared.settle,
                      "max_seconds": MAX_SECONDS}, MAX_SECONDS + 600)
        point = Point(**answer["point"])
        point.credentials_per_op = config.batch
        if prepared.members:
            before = config.history + row["done_ops"] / prepared.members
            point.history = [before, before + (warmup + point.ops + point.errors)
                             / prepared.members]
        row["done_ops"] += warmup + point.ops + point.errors
        summary = point.summary()
        if block is not None:
            summary["block"] = block
        row["points"].append(summary)

    def _finish(row: dict[str, Any], prepared: Prepared) -> None:
        if prepared.log_rows is not None:
            row["log_rows"] = prepared.log_rows()
        size_before, size_after = row["size_before"], prepared.db_bytes()
        if size_before is not None and size_after is not None and row["done_ops"]:
            # Tables with their indexes and TOAST: what the path adds to the
            # database per operation (docs/scaling.md sizes storage from it).
            row["db_bytes_per_op"] = (size_after - size_before) / row["done_ops"]
            row["db_tables"] = prepared.db_tables()
        row["best"] = max(row["points"], key=lambda p: p["ops_per_second"], default=None)
        row["errors"] = sum(p["errors"] for p in row["points"])

    try:
        results.get(timeout=120)  # the generator has started
        for path in paths:
            runs = [(r, config) for r in range(max(1, repeat))
                    for config in round_order(path, chosen[path], servers, r)]
            # --blocks N (earn): each on / off pair runs side by side, its servers up
            # together, in alternated blocks of the point's operations.
            groups = ([runs[i:i + 2] for i in range(0, len(runs), 2)]
                      if path == "earn" and blocks > 1 else [[r] for r in runs])
            for group in groups:
                with contextlib.ExitStack() as stack:
                    sides = []
                    for round_, config in group:
                        row: dict[str, Any] = {
                            "path": path, **asdict(config), "round": round_, "points": [],
                            "skipped": None, "best": None, "errors": 0,
                            "db_bytes_per_op": None, "db_tables": None,
                            "db_tables_start": None, "log_rows_start": None, "log_rows": None,
                            "done_ops": 0, "size_before": None}
                        rows.append(row)
                        say(f"{path}: {config.name}: starting")
                        tmp = stack.enter_context(
                            tempfile.TemporaryDirectory(prefix="tessera-bench-load-"))
                        try:
                            prepared = _prepare(path, config, Path(tmp), stack, sweep, n_ops,
                                                members)
                        except LookupError as exc:
                            row["skipped"] = str(exc)
                            continue
                        _start(row, config, prepared)
                        sides.append((row, config, prepared))
                    for concurrency in sweep:
                        for block in range(blocks if len(sides) > 1 else 1):
                            # A B, then B A: the second side of a block runs later.
                            for row, config, prepared in (sides if block % 2 == 0
                                                          else sides[::-1]):
                                _point(row, config, prepared, concurrency,
                                       n_ops if len(sides) == 1 else n_ops // blocks,
                                       None if len(sides) == 1 else block)
                    for row, _config, prepared in sides:
                        _finish(row, prepared)
            for row in rows:
                row.pop("done_ops", None)
                row.pop("size_before", None)
    finally:
        jobs.put(None)
        generator.join(timeout=30)
        if generator.is_alive():
            generator.kill()
    return {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "topic": "load", "quick": quick, "paths": list(paths),
            "concurrency_sweep": list(sweep), "ops_per_point": n_ops,
            "servers": list(servers), "repeat": repeat, "balance": balance,
            "blocks": blocks,
            "issuance_batches": list(batches),
            "max_seconds_per_point": MAX_SECONDS,
            "generator": "one process, asyncio, raw-socket HTTP/1.1 keep-alive client",
            "server_code": SERVER_CODE,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average_start": list(load_start) if load_start else None,
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "git_commit": git_commit(),
        },
        "results": rows,
        "ratios": ratios(rows),
        "server_ratios": server_ratios(rows),
        "log_ratios": log_ratios(rows),
        "log_summary": log_summary(log_pairs(rows)),
        "log_off_skips": LOG_OFF_SKIPS if any(not r.get("log", True) for r in rows) else None,
    }


def ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Scaling ratios from the best points: 2 workers / 1 worker, 2 instances / 1 worker
    (within one HTTP server; the best of repeated rounds)."""
    best: dict[tuple[Any, ...], float] = {}
    for r in rows:
        if r.get("best") and r["best"]["ops_per_second"]:
            if not r.get("log", True):  # the earn path's log-off rows: log_ratios
                continue
            key = (r["path"], r["store"], r["workers"], r["instances"], r.get("batch", 1),
                   r.get("server", "uvicorn"))
            best[key] = max(best.get(key, 0.0), r["best"]["ops_per_second"])
    out: dict[str, float] = {}
    for (path, store, workers, instances, batch, server), value in best.items():
        one = best.get((path, store, 1, 1, batch, server))
        if one and (workers, instances) != (1, 1):
            kind = f"{workers} workers" if instances == 1 else f"{instances} instances"
            what = path if batch == 1 else f"{path} batch {batch}"
            on = "" if server == "uvicorn" else f" ({server})"
            out[f"{what} {store}{on}: {kind} / 1 worker"] = value / one
    return out


LOG_METRICS: Final = ("ops_per_second", "server_cpu_per_op", "server_and_postgres_cpu_per_op",
                      "machine_cpu_per_op")


def log_pairs(rows: Sequence[dict[str, Any]]
              ) -> list[tuple[str, int, dict[str, float | None]]]:
    """Each earn pair: a log-off row's point against the log-on row's point of the same
    store, workers, instances, server, member history, round and concurrency (the same
    history trajectory: an earn's cost grows with the member's entries, so best points
    of different concurrencies are not comparable). Per pair (group, round, figures):
    off / on of throughput, server CPU per operation, server + PostgreSQL backends' CPU
    per operation and the machine's CPU per operation, and the two sides' server (+
    PostgreSQL) CPU per operation in ms."""
    on: dict[tuple[Any, ...], dict[str, Any]] = {}
    off: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
    for r in rows:
        name = str(r["name"]).replace(", log off", "").replace(", log on", "")
        for p in r.get("points") or ():
            if not p.get("ops_per_second"):
                continue
            key = (r["path"], r["store"], r["workers"], r["instances"],
                   r.get("server", "uvicorn"), r.get("history", 1), p["concurrency"],
                   r.get("round", 0), p.get("block", 0))
            if r.get("log", True):
                on[key] = p
            else:
                off[key] = (f"{r['path']} {name}, {p['concurrency']} clients", p)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def with_pg(p: dict[str, Any]) -> float | None:
        srv, pg = p.get("server_cpu_ms_per_op"), p.get("postgres_cpu_ms_per_op")
        return None if srv is None else srv + (pg or 0.0)

    out = []
    for key, (group, b) in off.items():
        a = on.get(key)
        if a is None:
            continue
        out.append((group, int(key[-2]), {
            "ops_per_second": ratio(b["ops_per_second"], a["ops_per_second"]),
            "server_cpu_per_op": ratio(b.get("server_cpu_ms_per_op"),
                                       a.get("server_cpu_ms_per_op")),
            "server_and_postgres_cpu_per_op": ratio(with_pg(b), with_pg(a)),
            "machine_cpu_per_op": ratio(b.get("machine_cpu_ms_per_op"),
                                        a.get("machine_cpu_ms_per_op")),
            "server_cpu_ms_on": a.get("server_cpu_ms_per_op"),
            "server_cpu_ms_off": b.get("server_cpu_ms_per_op"),
            "server_and_postgres_cpu_ms_on": with_pg(a),
            "server_and_postgres_cpu_ms_off": with_pg(b)}))
    return out


def log_ratios(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """:func:`log_pairs` by name: "<group> (round N)", "<group> (round N, block M)"."""
    out: dict[str, dict[str, float | None]] = {}
    for group, round_, figures in log_pairs(rows):
        name, n = f"{group} (round {round_ + 1})", 1
        while name in out:  # the blocks of a round
            n += 1
            name = f"{group} (round {round_ + 1}, block {n})"
        out[name] = figures
    return out


def log_summary(pairs: Sequence[tuple[str, int, dict[str, float | None]]]
                ) -> dict[str, dict[str, dict[str, float]]]:
    """Per group of :func:`log_pairs` (the rounds of one configuration and concurrency),
    per figure: the median over its pairs, the least and the greatest, and how many
    pairs had it. A ratio is judged by its median with the spread beside it: the
    spread over the pairs is what the machine's noise did to one pair."""
    import statistics

    grouped: dict[str, list[dict[str, float | None]]] = {}
    for group, _round, figures in pairs:
        grouped.setdefault(group, []).append(figures)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group, rounds in grouped.items():
        out[group] = {}
        for metric in rounds[0]:
            values = [v for f in rounds if (v := f.get(metric)) is not None]
            if values:
                out[group][metric] = {"median": statistics.median(values), "min": min(values),
                                      "max": max(values), "pairs": len(values)}
    return out


def server_ratios(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per configuration and round: each other server's best point against uvicorn's in
    the same round (ops/s and server CPU per operation, other / uvicorn)."""
    uvicorn: dict[tuple[Any, ...], dict[str, Any]] = {}
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        best = r.get("best")
        if not best or not best["ops_per_second"]:
            continue
        key = (r["path"], r["store"], r["workers"], r["instances"], r.get("batch", 1),
               r.get("round", 0))
        server = r.get("server", "uvicorn")
        if server == "uvicorn":
            uvicorn[key] = best
            continue
        base = uvicorn.get(key)
        if base is None or not base["server_cpu_ms_per_op"] or not best["server_cpu_ms_per_op"]:
            continue
        out[f"{r['path']} {r['name']} (round {key[-1] + 1})"] = {
            "ops_per_second": best["ops_per_second"] / base["ops_per_second"],
            "server_cpu_per_op": best["server_cpu_ms_per_op"] / base["server_cpu_ms_per_op"]}
    return out


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=200)
    meta = report["meta"]
    table = Table(title="bench load: best concurrency per configuration (loopback, real servers)",
                  title_justify="left")
    for col in ("path", "configuration", "clients", "ops/s", "creds/s", "p50", "p99", "errors",
                "server CPU/op", "PG CPU/op", "gen. CPU/op", "gen. share", "machine CPU/op",
                "machine busy", "conn.", "load"):
        table.add_column(col, justify="left" if col in ("path", "configuration") else "right")

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f} ms"

    def label(row: dict[str, Any]) -> str:
        repeated = (meta.get("repeat") or 1) > 1
        return f"{row['name']} #{row.get('round', 0) + 1}" if repeated else str(row["name"])

    def pct(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.0f} %"

    def spread(value: list[list[int]] | None) -> str:
        # "6/2": one instance whose two workers hold 6 and 2 of the generator's
        # connections; "4 | 4": two instances of one worker each.
        return "—" if not value else " | ".join("/".join(map(str, i)) for i in value)

    last = None
    for row in report["results"]:
        if last is not None and row["path"] != last:
            table.add_section()
        last = row["path"]
        best = row.get("best")
        if row["skipped"] or not best:
            table.add_row(row["path"], label(row), "", "skipped: " + str(row["skipped"]),
                          *[""] * 12)
            continue
        pg, pg_all = best.get("postgres_cpu_ms_per_op"), best.get("postgres_all_cpu_ms_per_op")
        table.add_row(row["path"], label(row), str(best["concurrency"]),
                      f"{best['ops_per_second']:.1f}",
                      "" if row["path"] != "issuance"
                      else f"{best.get('credentials_per_second', best['ops_per_second']):.1f}",
                      ms(best["p50_ms"]), ms(best["p99_ms"]),
                      str(sum(p["errors"] for p in row["points"])),
                      ms(best["server_cpu_ms_per_op"]),
                      "—" if pg is None or pg_all is None else f"{pg:.1f} ({pg_all:.1f}) ms",
                      ms(best.get("generator_cpu_ms_per_op")),
                      pct(best["generator_cpu_share"]), ms(best.get("machine_cpu_ms_per_op")),
                      pct(best["machine_busy_share"]),
                      spread(best.get("connections_per_server_process")),
                      "—" if best["load_average"] is None else f"{best['load_average']:.2f}")
    console.print(table)
    for name, value in report["ratios"].items():
        console.print(f"  {name}: {value:.2f}×")
    for name, pair in report.get("server_ratios", {}).items():
        console.print(f"  {name} / uvicorn: ops/s {pair['ops_per_second']:.2f}×, "
                      f"server CPU/op {pair['server_cpu_per_op']:.2f}×")

    def times(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}×"

    for name, pair in report.get("log_ratios", {}).items():
        console.print(f"  {name}, log off / on: ops/s {times(pair['ops_per_second'])}, "
                      f"server CPU/earn {times(pair['server_cpu_per_op'])}, server + PG "
                      f"CPU/earn {times(pair['server_and_postgres_cpu_per_op'])}, machine "
                      f"CPU/earn {times(pair['machine_cpu_per_op'])}")

    def med(figure: dict[str, float] | None, fmt: str = "{:.2f}") -> str:
        if not figure:
            return "—"
        return (f"{fmt.format(figure['median'])} ({fmt.format(figure['min'])}-"
                f"{fmt.format(figure['max'])})")

    for group, figures in report.get("log_summary", {}).items():
        pairs = max((f["pairs"] for f in figures.values()), default=0)
        console.print(
            f"  {group}, log off / on over {pairs} pair(s), median (min-max): server "
            f"CPU/earn {med(figures.get('server_cpu_per_op'))}, server + PG CPU/earn "
            f"{med(figures.get('server_and_postgres_cpu_per_op'))}, ops/s "
            f"{med(figures.get('ops_per_second'))}, machine CPU/earn "
            f"{med(figures.get('machine_cpu_per_op'))}; server + PG CPU/earn on "
            f"{med(figures.get('server_and_postgres_cpu_ms_on'))} ms, off "
            f"{med(figures.get('server_and_postgres_cpu_ms_off'))} ms")
    for row in report["results"]:
        for p in row["points"]:
            if p.get("history"):
                before, after = p["history"]
                console.print(f"  {label(row)} ×{p['concurrency']}: {row.get('members')} "
                              f"members, {before:.0f} -> {after:.0f} ledger entries each, "
                              f"server CPU/earn {ms(p['server_cpu_ms_per_op'])}, PG "
                              f"{ms(p.get('postgres_cpu_ms_per_op'))}, {p['ops_per_second']:.1f}"
                              f" earns/s, load {p['load_average'] or 0:.2f}")
    if report.get("log_off_skips"):
        console.print(f"  log off: {report['log_off_skips']}")
    for row in report["results"]:
        counts = row.get("log_rows")
        if counts is not None:
            start = row.get("log_rows_start") or {}
            grown = ", ".join(f"{t} {n - start.get(t, 0):+d}" for t, n in counts.items())
            console.print(f"  {label(row)}: rows written during the run: {grown}")
    load = meta.get("load_average_start")
    console.print(
        f"Python {meta['python']} on {meta['cpu_count']} CPU(s)"
        + (f", load average {load[0]:.2f} at the start" if load else "")
        + f"; concurrency sweep {meta['concurrency_sweep']}, {meta['ops_per_point']} measured "
        "operations per point after a warm-up of 2 per client. ops/s = operations completed "
        "in the measured window / its length; creds/s = issuance exchanges/s x credentials "
        "per exchange (batch); latency = the HTTP round trips of one operation "
        "(client-side signing excluded); server CPU/op = CPU of all server processes / "
        "operations; PG CPU/op = CPU of the PostgreSQL backends serving the servers (in "
        "parentheses: every postgres process, WAL writer and other clients included); gen. = "
        "the load generator, gen. share = generator / (generator + servers); machine CPU/op "
        "and machine busy = all CPUs of the machine, other processes and the kernel's "
        "softirq work included; conn. = the generator's connections each server process "
        "held at the end of the window, largest first ('6/2': two workers of one instance, "
        "dealt out by tessera.serving's balanced accept; ' | ' between instances).")
    for row in report["results"]:
        read = (row.get("best") or {}).get("postgres_rows_read_per_op")
        if read is not None:
            console.print(f"  {label(row)}: PostgreSQL read {read:.1f} rows per operation "
                          "(idx_tup_fetch + seq_tup_read, every table)")
    skipped = {row["name"]: p["postgres_skipped"] for row in report["results"]
               for p in row["points"] if p.get("postgres_skipped")}
    for name, why in skipped.items():
        console.print(f"  {name}: PostgreSQL CPU not measured: {why}")
    unspread = {row["name"]: p["connections_skipped"] for row in report["results"]
                for p in row["points"] if p.get("connections_skipped")}
    for name, why in unspread.items():
        console.print(f"  {name}: connections per server process not read: {why}")
    for row in report["results"]:
        for p in row["points"]:
            for sample in p["error_samples"]:
                console.print(f"  {row['path']} {row['name']} ×{p['concurrency']}: {sample}")


# -- capacity: what the measured per-operation costs mean at coalition scale ---------------------

MEMBERS: Final = 10_000_000
LEDGER_ENTRIES: Final = 100_000_000
REDEMPTIONS_PER_S: Final = 1_000
CORES_PER_INSTANCE: Final = 4
UTILISATION: Final = 0.6  # service CPUs kept at most this busy: headroom for peaks and a lost node
LEDGER_TABLES: Final = ("ledger_entry", "log_leaf", "log_node", "point_lot", "lot_allocation")
ISSUANCE_TABLES: Final = ("issued_credential", "credential_offer", "status_list")


def _scale_out_row(report: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The configuration a multi-machine deployment runs: 2 instances on shared stores."""
    rows = [r for r in report["results"] if r["path"] == path and r.get("best")
            and r["best"].get("server_cpu_ms_per_op") and r.get("batch", 1) == 1]
    rows.sort(key=lambda r: (r["instances"] > 1, r["store"] != "sqlite",
                             r["best"]["ops_per_second"]), reverse=True)
    return rows[0] if rows else None


def capacity(report: dict[str, Any]) -> list[str]:
    """Lines of the sizing table docs/scaling.md shows, derived from a ``--json`` report."""
    import math

    meta = report["meta"]
    load = meta.get("load_average_start") or [float("nan")]
    out = [f"measured: {meta['when']}, commit {meta.get('git_commit')}, "
           f"{meta['cpu_count']} CPUs, load average {load[0]:.1f} at the start",
           f"{'path':<11}{'configuration':<26}{'ops/s':>8}{'CPU ms/op':>11}"
           f"{'ops/core·s':>12}{'DB bytes/op':>13}"]
    rows: dict[str, dict[str, Any]] = {}
    for path in PATHS:
        row = _scale_out_row(report, path)
        if row is None:
            out.append(f"{path:<11}(not measured)")
            continue
        rows[path] = row
        best = row["best"]
        db = row.get("db_bytes_per_op")
        out.append(f"{path:<11}{row['name']:<26}{best['ops_per_second']:>8.1f}"
                   f"{best['server_cpu_ms_per_op']:>11.1f}"
                   f"{1000 / best['server_cpu_ms_per_op']:>12.1f}"
                   f"{'—' if db is None else f'{db:,.0f}':>13}")
    per_instance = CORES_PER_INSTANCE * UTILISATION
    out.append(f"sizing: {CORES_PER_INSTANCE}-vCPU instances, at most {UTILISATION:.0%} busy "
               "(service processes only; PostgreSQL on its own line, its rows below)")
    for path, rate in (("redemption", REDEMPTIONS_PER_S), ("checkout", REDEMPTIONS_PER_S)):
        if path in rows:
            cores = rate * rows[path]["best"]["server_cpu_ms_per_op"] / 1000
            out.append(f"  {rate:,} {path}s/s: {cores:.0f} busy cores -> "
                       f"{math.ceil(cores / per_instance)} instances")
            # The database's own CPU, where the run could read its backends (PostgreSQL
            # paths, bench/README.md "PostgreSQL's share of a redemption"): what one
            # primary must have free before partitioning by brand is needed.
            pg = rows[path]["best"].get("postgres_cpu_ms_per_op")
            if pg:
                out.append(f"  {rate:,} {path}s/s: PostgreSQL {rate * pg / 1000:.0f} busy "
                           f"cores ({pg:.1f} ms of its backends' CPU per {path})")
    if "issuance" in rows:
        core_hours = MEMBERS * rows["issuance"]["best"]["server_cpu_ms_per_op"] / 3.6e6
        instances = 8
        out.append(f"  re-issue to {MEMBERS:,} members: {core_hours:.0f} core-hours -> "
                   f"{core_hours / (instances * per_instance):.1f} h on {instances} instances")
    def grown(path: str, names: Sequence[str], per: str) -> float | None:
        """Bytes the tables ``names`` grew by during the sweep, per row added to ``per``."""
        row = rows.get(path) or {}
        end, start = row.get("db_tables") or {}, row.get("db_tables_start") or {}
        added = end.get(per, {}).get("rows", 0) - start.get(per, {}).get("rows", 0)
        if added <= 0:
            return None
        return sum(end.get(t, {}).get("bytes", 0) - start.get(t, {}).get("bytes", 0)
                   for t in names) / added

    per_entry = grown("redemption", LEDGER_TABLES, "ledger_entry")
    if per_entry is not None:
        out.append(f"  {LEDGER_ENTRIES:,} ledger entries: {per_entry:,.0f} bytes each "
                   f"({' + '.join(LEDGER_TABLES)}) -> "
                   f"{LEDGER_ENTRIES * per_entry / 1e9:,.0f} GB")
    per_credential = grown("issuance", ISSUANCE_TABLES, "issued_credential")
    if per_credential is not None:
        out.append(f"  {MEMBERS:,} members, one credential each: {per_credential:,.0f} bytes "
                   f"per credential ({' + '.join(ISSUANCE_TABLES)}) -> "
                   f"{MEMBERS * per_credential / 1e9:,.0f} GB")
    red = rows.get("redemption") or {}
    db = red.get("db_bytes_per_op")
    if db:
        out.append(f"  database growth at {REDEMPTIONS_PER_S:,} redemptions/s: "
                   f"{REDEMPTIONS_PER_S * db * 3600 / 1e9:,.0f} GB per hour of that peak")
    start, end = red.get("db_tables_start") or {}, red.get("db_tables") or {}
    entries = (end.get("ledger_entry", {}).get("rows", 0)
               - start.get("ledger_entry", {}).get("rows", 0))
    redeemed = (end.get("redemption", {}).get("rows", 0)
                - start.get("redemption", {}).get("rows", 0))
    if entries and redeemed:
        per = entries / redeemed
        hours = LEDGER_ENTRIES / per / REDEMPTIONS_PER_S / 3600
        out.append(f"  {per:.1f} ledger entries per redemption: {LEDGER_ENTRIES:,} entries are "
                   f"{hours:.0f} h of {REDEMPTIONS_PER_S:,} redemptions/s")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--path", action="append", choices=ALL_PATHS,
                        help="path to run (repeatable; default: issuance, checkout and "
                             "redemption; earn runs only when asked for)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one concurrency, a few operations (figures meaningless)")
    parser.add_argument("--concurrency", default=None,
                        help="comma-separated sweep of concurrent clients (default 4,8,16,32)")
    parser.add_argument("--ops", type=int, default=None,
                        help=f"measured operations per point (default {OPS})")
    parser.add_argument("--config", action="append", default=None,
                        help="only configurations whose name contains this (repeatable)")
    parser.add_argument("--batch", default="1",
                        help="issuance: comma-separated credentials per exchange, each a "
                             "configuration (default 1; e.g. 1,10: single and batches of 10 "
                             "on fresh attested keys, as our wallet asks)")
    parser.add_argument("--server", default="uvicorn",
                        help="comma-separated HTTP servers to run each configuration on, "
                             "back to back (uvicorn, granian; default uvicorn)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each path's configurations this many times in turn")
    parser.add_argument("--balance", choices=BALANCING, default="request",
                        help="several instances: round-robin per request (default: the steps "
                             "of one operation on different instances) or per operation")
    parser.add_argument("--history", default=None,
                        help="earn: comma-separated ledger entries per member before the "
                             "first point (seeded over HTTP; default 1, the enrolment's earn), "
                             "each a configuration")
    parser.add_argument("--members", type=int, default=None,
                        help="earn: members the earns go round-robin over (default twice "
                             "the largest concurrency)")
    parser.add_argument("--blocks", type=int, default=1,
                        help="earn: run each on / off pair's servers side by side and cut each "
                             "point into this many blocks, on and off alternated block by "
                             "block (default 1: one after the other)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the report here")
    parser.add_argument("--capacity", metavar="REPORT", type=Path,
                        help="run nothing: print the sizing docs/scaling.md derives from a "
                             "report written with --json")
    args = parser.parse_args(argv)
    if args.capacity:
        print("\n".join(capacity(json.loads(args.capacity.read_text(encoding="utf-8")))))
        return 0
    paths = tuple(args.path or PATHS)
    sweep = ([max(1, int(v)) for v in args.concurrency.split(",") if v.strip()]
             if args.concurrency else None)
    batches = tuple(dict.fromkeys(max(1, int(v)) for v in args.batch.split(",") if v.strip()))
    histories = tuple(dict.fromkeys(max(1, int(v)) for v in (args.history or "").split(",")
                                    if v.strip()))
    configs = None
    if args.config:
        configs = {p: [c for c in CONFIGS[p] if any(k.lower() in c.name.lower()
                                                    for k in args.config)] for p in paths}

    def progress(message: str) -> None:
        print(f"[bench load] {message}", file=sys.stderr, flush=True)

    # Servers run in their own sessions: a terminated run must still stop them
    # (the finally blocks run on SystemExit, not on a bare SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    servers = [v.strip() for v in args.server.split(",") if v.strip()]
    if not servers or any(v not in SERVERS for v in servers):
        parser.error(f"--server takes {', '.join(SERVERS)}")
    report = run(quick=args.quick, paths=paths, concurrencies=sweep, ops=args.ops,
                 configs=configs, batches=batches or (1,), progress=progress,
                 servers=servers, repeat=args.repeat, balance=args.balance,
                 histories=histories or None, members=args.members, blocks=args.blocks)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    failed = any(p["errors"] for r in report["results"] for p in r["points"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
