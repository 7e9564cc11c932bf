"""Issuance throughput over HTTP, and status-list costs at 1M entries.

``python -m bench.issuance http [options]`` is ``python -m bench.load --path
issuance [options]``: the full OpenID4VCI exchange per credential (token,
nonce, key proof, credential) against ``tessera issuer serve`` on loopback,
1 and 2 workers, SQLite and PostgreSQL, 2 instances (see :mod:`bench.load`).

``python -m bench.issuance status`` (and :func:`cases` for the harness):
encode, decode and one lookup on a 1,048,576-entry Token Status List
(2 bits) and Bitstring Status List, with 1 % of entries set at random.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from typing import Any

from bench._harness import Case

MILLION = 1_048_576


# -- status lists ---------------------------------------------------------------------------


def _filled_token_list() -> Any:
    from tessera.status import StatusList

    lst = StatusList(2, MILLION)
    for _ in range(MILLION // 100):
        lst.set(secrets.randbelow(MILLION), 1)
    return lst


def _filled_bitstring() -> Any:
    from tessera.status import BitstringStatusList

    lst = BitstringStatusList(MILLION)
    for _ in range(MILLION // 100):
        lst.set(secrets.randbelow(MILLION), 1)
    return lst


def cases() -> list[Case]:
    from tessera.status import BitstringStatusList, StatusList

    token = _filled_token_list()
    token_json = token.encode()
    bits = _filled_bitstring()
    bits_encoded = bits.encode()
    decoded_token = StatusList.decode(token_json)
    decoded_bits = BitstringStatusList.decode(bits_encoded)
    return [
        Case("token list encode (1M x 2 bit)", lambda n: token, lambda s: s.encode(),
             group="status", label="zlib + base64url"),
        Case("token list decode (1M x 2 bit)", lambda n: token_json,
             lambda s: StatusList.decode(s), group="status", label="bounded inflate",
             check=lambda r: None if r.size >= MILLION else (_ for _ in ()).throw(
                 AssertionError("short list"))),
        Case("token list lookup", lambda n: decoded_token,
             lambda s: s.get(secrets.randbelow(MILLION)), group="status"),
        Case("bitstring encode (1M)", lambda n: bits, lambda s: s.encode(), group="status",
             label="gzip + multibase"),
        Case("bitstring decode (1M)", lambda n: bits_encoded,
             lambda s: BitstringStatusList.decode(s), group="status"),
        Case("bitstring lookup", lambda n: decoded_bits,
             lambda s: s.get(secrets.randbelow(MILLION)), group="status"),
    ]


def status_figures(repeat: int = 5) -> dict[str, float]:
    out: dict[str, float] = {}
    for case in cases():
        state = case.setup(repeat)
        samples = []
        for _ in range(repeat if "lookup" not in case.name else 10_000):
            t = time.perf_counter_ns()
            case.fn(state)
            samples.append(time.perf_counter_ns() - t)
        out[case.name] = statistics.median(samples) / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["http"]:
        from bench import load

        return load.main(["--path", "issuance", *args[1:]])
    parser = argparse.ArgumentParser(prog="python -m bench.issuance",
                                     description="http [bench.load options] | status")
    parser.add_argument("what", choices=["http", "status"])
    parser.parse_args(args)
    print(json.dumps({k: round(v, 3) for k, v in status_figures().items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
