"""Smoke test of ``python -m bench.load``: every path runs end to end in --quick mode.

No timing assertions (figures depend on the machine and its load): what is
checked is that each path drives real servers to completed operations with
no error, 2 workers and 2 instances included, and that the report carries
what the table promises (CPU accounting, ratios).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from bench import load

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_of_every_path(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.load", "--quick", "--config", "PostgreSQL, 2 instances",
         "--config", "Redis, 2 workers", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "TESSERA_BENCH_POSTGRES_URL": postgres_url,
             "TESSERA_BENCH_REDIS_URL": redis_url},
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "ops/s" in done.stdout and "2 instances" in done.stdout  # the table
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {r["path"] for r in rows} == set(load.PATHS)
    assert {(r["path"], r["name"]) for r in rows} == {
        ("issuance", "PostgreSQL, 2 instances"), ("checkout", "Redis, 2 workers"),
        ("checkout", "PostgreSQL, 2 instances"), ("redemption", "PostgreSQL, 2 instances")}
    for row in rows:
        assert row["skipped"] is None and row["errors"] == 0, row
        best = row["best"]
        assert best["ops"] >= load.QUICK_OPS - 1 and best["ops_per_second"] > 0, row
        assert best["p50_ms"] > 0 and best["p99_ms"] >= best["p50_ms"]
        assert best["server_cpu_ms_per_op"] > 0 and best["generator_cpu_s"] > 0
        assert 0 < best["generator_cpu_share"] < 1
        assert best["machine_cpu_ms_per_op"] > 0 and best["server_switches_per_op"] > 0
        if row["store"] == "postgres":
            # The backends serving the servers are measured, or the report says why not.
            assert (best["postgres_cpu_ms_per_op"] or 0) > 0 or best["postgres_skipped"], row
            if best["postgres_skipped"] is None:
                assert best["postgres_all_cpu_ms_per_op"] >= best["postgres_cpu_ms_per_op"]
                assert best["postgres_backends"] >= 1
            # The schema's tables, with what the window did to them (scans, rows written).
            assert "ledger_entry" in best["postgres_tables"] or row["path"] != "redemption"
        else:
            assert best["postgres_cpu_ms_per_op"] is None and best["postgres_skipped"] is None
        # Every client's connection to each instance is found on one of its serving
        # processes: two workers show two counts, each instance one count per worker.
        spread = best["connections_per_server_process"]
        if spread is None:
            assert best["connections_skipped"], row
        else:
            assert len(spread) == row["instances"], row
            for counts in spread:
                assert len(counts) == row["workers"] and counts == sorted(counts, reverse=True)
                assert sum(counts) == best["concurrency"], row
    assert "conn." in done.stdout
    assert report["meta"]["quick"] is True and report["meta"]["load_average_start"]


def test_quick_run_of_earn_with_the_log_on_and_off(tmp_path: Path) -> None:
    """The earn path over HTTP, log on and off back to back: SQLite always, PostgreSQL
    too where the tests have one. Off must really have written no leaf, on one per earn."""
    out = tmp_path / "earn.json"
    postgres = os.environ.get("TESSERA_TEST_POSTGRES_URL")
    args = [] if postgres else ["--config", "SQLite"]
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench.load", "--path", "earn", "--quick", *args,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, **({"TESSERA_BENCH_POSTGRES_URL": postgres} if postgres else {})},
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "log off / on" in done.stdout
    report = json.loads(out.read_text())
    rows = report["results"]
    stores = {"sqlite", "postgres"} if postgres else {"sqlite"}
    assert {(r["store"], r["log"]) for r in rows} == {(s, on) for s in stores
                                                      for on in (True, False)}
    for row in rows:
        assert row["skipped"] is None and row["errors"] == 0, row
        assert row["best"]["ops"] >= load.QUICK_OPS - 1 and row["workers"] == 2
        start, end = row["log_rows_start"], row["log_rows"]
        grown = {table: end[table] - start[table] for table in end}
        # Warm-up and measured earns each wrote one ledger entry.
        assert grown["ledger_entry"] >= row["best"]["ops"], row
        leaves = grown["log_pending"] + grown["log_leaf"]
        if row["log"]:
            # Each earn's leaf is pending or already integrated by the sequencer.
            assert leaves == grown["ledger_entry"], row
        else:
            # Nothing in either table since the servers started, setup's earns included.
            assert leaves == 0 and end["log_pending"] == end["log_leaf"] == 0, row
    assert set(report["log_ratios"]) == {
        f"earn {'PostgreSQL' if s == 'postgres' else 'SQLite'}, 2 workers, 4 clients (round 1)"
        for s in stores}
    for pair in report["log_ratios"].values():
        assert pair["ops_per_second"] and pair["server_cpu_per_op"]
    for figures in report["log_summary"].values():
        assert figures["server_cpu_per_op"]["pairs"] == 1
    # The sequencer was waited for around each window (its own leaves charged to it).
    for row in rows:
        before, after = row["best"]["settle_seconds"]
        assert before >= load.SETTLE_SECONDS and after >= load.SETTLE_SECONDS
        assert row["best"]["history"][0] == 1 and row["members"] == 8
    assert "append_for_member" in report["log_off_skips"]


def _earn_row(store: str, log: bool, round_: int, points: list[tuple[int, float, float]],
              history: int = 1) -> dict[str, object]:
    name = f"{store}, 2 workers, log {'on' if log else 'off'}"
    return {"path": "earn", "name": name if history == 1 else f"{name}, history {history}",
            "store": store, "workers": 2, "instances": 1, "log": log, "round": round_,
            "history": history,
            "points": [{"concurrency": c, "ops_per_second": rate, "server_cpu_ms_per_op": cpu,
                        "postgres_cpu_ms_per_op": None, "machine_cpu_ms_per_op": None}
                       for c, rate, cpu in points]}


def test_log_pairs_match_points_of_the_same_round_history_and_concurrency() -> None:
    rows = [_earn_row("sqlite", True, 0, [(4, 100.0, 5.0), (8, 120.0, 8.0)]),
            _earn_row("sqlite", False, 0, [(4, 110.0, 4.5), (8, 125.0, 7.2)]),
            # Another round of the same store, and a history with no off side: no pair.
            _earn_row("sqlite", False, 1, [(4, 90.0, 4.0)]),
            _earn_row("sqlite", True, 1, [(4, 100.0, 5.0)]),
            _earn_row("sqlite", True, 0, [(4, 50.0, 9.0)], history=200)]
    pairs = load.log_pairs(rows)
    by = {(group, round_): figures for group, round_, figures in pairs}
    assert set(by) == {("earn sqlite, 2 workers, 4 clients", 0),
                       ("earn sqlite, 2 workers, 8 clients", 0),
                       ("earn sqlite, 2 workers, 4 clients", 1)}
    # Off / on within each point; the best points (8 and 8 clients) are not compared
    # with each other across concurrencies.
    assert by[("earn sqlite, 2 workers, 4 clients", 0)]["server_cpu_per_op"] == 0.9
    assert by[("earn sqlite, 2 workers, 8 clients", 0)]["server_cpu_per_op"] == 0.9
    assert by[("earn sqlite, 2 workers, 4 clients", 1)]["ops_per_second"] == 0.9
    assert by[("earn sqlite, 2 workers, 4 clients", 1)]["server_cpu_ms_on"] == 5.0
    assert by[("earn sqlite, 2 workers, 4 clients", 1)]["machine_cpu_per_op"] is None
    assert "earn sqlite, 2 workers, 8 clients (round 1)" in load.log_ratios(rows)


def test_blocks_of_a_point_pair_block_by_block() -> None:
    on = _earn_row("sqlite", True, 0, [(4, 100.0, 5.0), (4, 100.0, 8.0)])
    off = _earn_row("sqlite", False, 0, [(4, 100.0, 4.0), (4, 100.0, 7.2)])
    for row in (on, off):
        for block, point in enumerate(row["points"]):
            point["block"] = block
    pairs = load.log_pairs([on, off])
    assert sorted(f["server_cpu_per_op"] for _, _, f in pairs) == [
        pytest.approx(0.8), pytest.approx(0.9)]
    assert len(load.log_ratios([on, off])) == 2
    assert load.log_summary(pairs)["earn sqlite, 2 workers, 4 clients"][
        "server_cpu_per_op"]["pairs"] == 2


def test_log_summary_gives_the_median_and_spread_over_the_pairs() -> None:
    pairs = [("g", r, {"server_cpu_per_op": v, "ops_per_second": None})
             for r, v in enumerate([0.9, 0.8, 1.0, 0.85])]
    pairs.append(("h", 0, {"server_cpu_per_op": 0.7, "ops_per_second": 1.1}))
    summary = load.log_summary(pairs)
    assert summary["g"]["server_cpu_per_op"] == {"median": pytest.approx(0.875), "min": 0.8,
                                                 "max": 1.0, "pairs": 4}
    assert "ops_per_second" not in summary["g"]  # no pair had it
    assert summary["h"]["ops_per_second"] == {"median": 1.1, "min": 1.1, "max": 1.1,
                                              "pairs": 1}


def test_earn_rounds_alternate_the_order_of_each_pair_and_configs_take_a_history() -> None:
    config = load.CONFIGS["earn"][0].with_history(50)
    assert config.history == 50 and config.name.endswith(", history 50")
    earn = load.CONFIGS["earn"]
    first = load.round_order("earn", earn, ["uvicorn"], 0)
    second = load.round_order("earn", earn, ["uvicorn"], 1)
    assert [c.log for c in first] == [True, False, True, False]
    assert [c.log for c in second] == [False, True, False, True]
    assert [c.store for c in second] == [c.store for c in first]
    assert load.round_order("earn", earn, ["uvicorn"], 2) == first
    # Other paths keep their order in every round.
    checkout = load.CONFIGS["checkout"]
    assert load.round_order("checkout", checkout, ["uvicorn"], 1) == list(checkout)


def test_ratios_compare_with_one_worker_of_the_same_store() -> None:
    def row(store: str, workers: int, instances: int, rate: float) -> dict[str, object]:
        return {"path": "checkout", "store": store, "workers": workers, "instances": instances,
                "best": {"ops_per_second": rate}}

    ratios = load.ratios([row("redis", 1, 1, 100.0), row("redis", 2, 1, 160.0),
                          row("redis", 1, 2, 150.0), row("sqlite", 2, 1, 50.0)])
    assert ratios == {"checkout redis: 2 workers / 1 worker": 1.6,
                      "checkout redis: 2 instances / 1 worker": 1.5}


def test_percentile_interpolates() -> None:
    assert load.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert load.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.99) == pytest.approx(4.96)


def test_http_client_reads_lengths_chunks_and_reconnects() -> None:
    """The generator's HTTP/1.1 client against a server that answers three ways."""
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ]
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head.split(b"\r\n")[0] + b" " + await reader.readexactly(length))
            writer.write(answers.pop(0))
            await writer.drain()
            if b"close" in head.lower() or not answers:
                break
        writer.close()

    async def scenario() -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = load.Connection("127.0.0.1", port)
        got = [await conn.request("GET", "/a"),
               await conn.request("POST", "/b", b"{}", (("Content-Type", "application/json"),)),
               await conn.request("GET", "/c")]
        assert conn._writer is None  # closed after "Connection: close"
        server.close()
        return got

    got = asyncio.run(scenario())
    assert got == [(200, b"hello"), (201, b"abcde"), (404, b"")]
    assert seen == [b"GET /a HTTP/1.1 ", b"POST /b HTTP/1.1 {}", b"GET /c HTTP/1.1 "]


def test_cpu_of_a_process_tree_counts_children() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt=time.process_time()\n"
         "while time.process_time()-t<0.3: pass\nimport sys; sys.stdin.read()"],
        stdin=subprocess.PIPE)
    try:
        import time

        deadline = time.monotonic() + 30
        while (load.tree_cpu_seconds([child.pid]) or 0) < 0.25:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        child.communicate(b"")


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 501 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A001 01 00000000:00000000 00:00000000 00000000  1000        0 601 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A001 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 701 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:A002 01 00000000:00000000 00:00000000 00000000  1000        0 602 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:B000 01 00000000:00000000 00:00000000 00000000  1000        0 603 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1F90 0100007F:A003 06 00000000:00000000 03:00000F9E 00000000     0        0 0 3 0000000000000000
   6: 0100007F:1F91 0100007F:A002 01 00000000:00000000 00:00000000 00000000  1000        0 604 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501 (lines as the kernel writes them)
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A004 01 00000000:00000000 00:00000000 00000000  1000        0 605 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501


def test_server_sockets_are_found_by_the_generators_ports() -> None:
    sockets = load.parse_proc_net_tcp(PROC_NET_TCP) + load.parse_proc_net_tcp(PROC_NET_TCP6)
    assert sockets[:2] == [(0x1F90, 0, "0A", 501), (0x1F90, 0xA001, "01", 601)]
    # The server's side of our connections to port 8080 only: not our own side (701), not
    # another client's (0xB000), not one in TIME_WAIT (no inode), not another port's.
    accepted, listening = load.server_socket_inodes(sockets, 0x1F90, [0xA001, 0xA002, 0xA003,
                                                                      0xA004])
    assert accepted == {601, 602, 605} and listening == {501}


def test_connection_spread_counts_what_a_server_process_holds(tmp_path: Path) -> None:
    if not Path("/proc/self/net/tcp").exists():
        pytest.skip("no /proc")
    import socket

    ready = tmp_path / "port"
    server = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-c", "import socket, sys\ns = socket.create_server(('127.0.0.1', 0))\n"
         f"open({str(ready)!r}, 'w').write(str(s.getsockname()[1]))\n"
         "held = [s.accept()[0] for _ in range(3)]\nsys.stdin.read()"],
        stdin=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        import time

        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text():
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.05)
        port = int(ready.read_text())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        ports = [{c.getsockname()[1]: 0} for c in clients]
        while True:  # until the server has accepted all three
            spread, why = load.connection_spread([server.pid], [port], ports)
            if spread == [[3]] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert (spread, why) == ([[3]], None)
        # A connection of someone else's is not counted.
        assert load.connection_spread([server.pid], [port], ports[:2]) == ([[2]], None)
    finally:
        for c in clients:
            c.close()
        server.communicate(b"")


def test_postgres_cpu_counts_backends_alive_at_the_end_from_their_start() -> None:
    start = {10: 1.0, 11: 2.0, 12: 5.0}  # 12 ends during the window
    end = {10: 1.5, 11: 2.25, 13: 0.5}  # 13 starts during it: counted from zero
    assert load.cpu_between(start, end) == pytest.approx(0.5 + 0.25 + 0.5)
    assert load.cpu_between(start, end, only={11, 13}) == pytest.approx(0.25 + 0.5)
    assert load.cpu_between(start, end, only=set()) == 0


def test_context_switches_count_the_processes_alive_at_both_readings() -> None:
    assert load.switches_between({1: 10, 2: 5}, {1: 25, 3: 7}) == 15
    if Path("/proc/self/task").exists():
        counts = load.context_switches([os.getpid(), 999_999_999])
        assert list(counts) == [os.getpid()] and counts[os.getpid()] > 0


def test_a_point_splits_the_machine_cpu_per_operation() -> None:
    point = load.Point(4, ops=100, seconds=2.0, generator_cpu_s=0.05, server_cpu_s=1.5,
                       postgres_cpu_s=0.4, postgres_all_cpu_s=0.45, machine_busy_s=2.1)
    out = point.summary()
    assert out["server_cpu_ms_per_op"] == pytest.approx(15.0)
    assert out["postgres_cpu_ms_per_op"] == pytest.approx(4.0)
    assert out["postgres_all_cpu_ms_per_op"] == pytest.approx(4.5)
    assert out["generator_cpu_ms_per_op"] == pytest.approx(0.5)
    assert out["machine_cpu_ms_per_op"] == pytest.approx(21.0)
    assert out["other_cpu_ms_per_op"] == pytest.approx(21.0 - 15.0 - 0.5 - 4.5)
    unmeasured = load.Point(4, ops=100, seconds=2.0, generator_cpu_s=0.05, server_cpu_s=1.5,
                            machine_busy_s=2.1, postgres_skipped="why").summary()
    assert unmeasured["postgres_cpu_ms_per_op"] is None
    assert unmeasured["other_cpu_ms_per_op"] is None


def test_the_balancer_sends_an_operation_to_one_instance_or_spreads_its_requests() -> None:
    async def scenario(per: str) -> list[int]:
        hits: list[int] = []

        def server(index: int) -> Any:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while True:
                    try:
                        await reader.readuntil(b"\r\n\r\n")
                    except asyncio.IncompleteReadError:
                        break
                    hits.append(index)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                writer.close()
            return handle

        servers = [await asyncio.start_server(server(i), "127.0.0.1", 0) for i in range(2)]
        balancer = load.Balancer([("127.0.0.1", s.sockets[0].getsockname()[1])
                                  for s in servers], per=per)
        for _ in range(2):  # two operations of two requests each
            balancer.begin_operation()
            await balancer.request("GET", "/")
            await balancer.request("GET", "/")
        balancer.close()
        for s in servers:
            s.close()
        return hits

    assert asyncio.run(scenario("request")) == [0, 1, 0, 1]
    assert asyncio.run(scenario("operation")) == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        load.Balancer([("127.0.0.1", 1)], per="connection")


def test_form_encoding_is_what_a_form_parser_reads_back() -> None:
    import urllib.parse

    fields = {"vp_token": '{"m":["eyJ.a~b~c"]} é+&=%/?#', "state": "s_-.~1"}
    encoded = load.form(fields)
    assert dict(urllib.parse.parse_qsl(encoded.decode(), strict_parsing=True)) == fields
    assert encoded == urllib.parse.urlencode(fields, quote_via=urllib.parse.quote).encode()


def test_each_configuration_runs_once_per_server_and_is_compared_with_uvicorn() -> None:
    config = load.Config("Redis, 2 workers", "redis", 2)
    assert config.with_server("uvicorn") == config
    granian = config.with_server("granian")
    assert (granian.name, granian.server, granian.workers) == (
        "Redis, 2 workers, granian", "granian", 2)

    def row(server: str, round_: int, rate: float, cpu: float) -> dict[str, object]:
        return {"path": "checkout", "name": config.with_server(server).name, "store": "redis",
                "workers": 2, "instances": 1, "server": server, "round": round_,
                "best": {"ops_per_second": rate, "server_cpu_ms_per_op": cpu}}

    rows = [row("uvicorn", 0, 100.0, 5.0), row("granian", 0, 80.0, 6.0),
            row("uvicorn", 1, 200.0, 4.0), row("granian", 1, 300.0, 2.0)]
    assert load.server_ratios(rows) == {
        "checkout Redis, 2 workers, granian (round 1)": {"ops_per_second": 0.8,
                                                         "server_cpu_per_op": 1.2},
        "checkout Redis, 2 workers, granian (round 2)": {"ops_per_second": 1.5,
                                                         "server_cpu_per_op": 0.5}}
    # Scaling ratios stay within one server: granian's 2 workers are not divided by
    # uvicorn's one worker.
    assert load.ratios(rows) == {}


def test_the_granian_command_serves_the_same_cli_command(tmp_path: Path) -> None:
    """``--server granian``: the verifier CLI as the uvicorn runs use it, under granian."""
    pytest.importorskip("granian")
    import urllib.request

    from verifier.testing import TestIssuer

    (tmp_path / "trust.json").write_text(json.dumps({"issuers": [
        {"id": TestIssuer().did, "name": "b", "credential_types": ["*"]}]}))
    port = load.free_port()
    cmd = load._cli("verifier", "serve", "--port", str(port), "--workers", "2",
                    "--store", f"sqlite:///{tmp_path / 'v.db'}", "--trust",
                    str(tmp_path / "trust.json"), "--key", str(tmp_path / "v.jwk"),
                    "--tills", str(tmp_path / "tills.json"), server="granian")
    servers = load.Servers([cmd], load._bench_env(), tmp_path, 2)
    try:
        servers.wait_ready("/healthz")
        procs = {pid for pid, (ppid, _) in load._proc_table().items()
                 if ppid == servers.pids[0]}
        assert len(procs) >= 2  # granian's worker processes under the CLI's process
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers.get("server") == "granian", answer.headers
    finally:
        servers.stop()


def test_checkout_answer_is_the_wallet_presentation_with_a_fresh_kb_jwt() -> None:
    """The generator's precomputed answer: the bytes ``sd_jwt.present`` + ``form`` give."""
    import base64
    from datetime import UTC, datetime

    from tessera.formats import sd_jwt
    from tessera.keys import generate_signer
    from verifier.testing import TestHolder, TestIssuer

    signer = generate_signer("ES256")
    credential = TestIssuer().issue_membership(TestHolder(signer), tier="gold")
    wallet = load.checkout_wallet(credential, signer)
    request = {"client_id": "decentralized_identifier:did:web:till.test", "nonce": "n-1",
               "state": "s_1"}
    answer = load.checkout_answer(wallet, request, issued_at=1_700_000_000)
    fields = dict(urllib.parse.parse_qsl(answer.decode(), strict_parsing=True))
    (presented,) = json.loads(fields["vp_token"])[load.DISCLOSED_CREDENTIAL]
    assert fields["state"] == "s_1"
    # ES256 signatures are randomized: compare everything but the KB-JWT's signature.
    expected = sd_jwt.present(credential, disclose=[load.DISCLOSED_CLAIM], holder=signer,
                              audience=request["client_id"], nonce="n-1",
                              issued_at=datetime.fromtimestamp(1_700_000_000, UTC))
    assert presented.rsplit(".", 1)[0] == expected.rsplit(".", 1)[0]
    signing_input, signature = presented.rsplit("~", 1)[1].rsplit(".", 1)
    signer.public_key.verify(base64.urlsafe_b64decode(signature + "=="),
                             signing_input.encode())
    assert answer == load.form({"vp_token": json.dumps(
        {load.DISCLOSED_CREDENTIAL: [presented]}, separators=(",", ":")), "state": "s_1"})
