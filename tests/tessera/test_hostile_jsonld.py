"""Hostile JSON-LD (issue 9, item 1): refused as too_large within a CPU bound, at every door.

Each shape is a credential an unauthenticated client can send. Before the work
budget in tessera/jsonld.py, pyld's node map was quadratic in the values of
one term (6,000 names: 11-13 s), RDFC-1.0 tried every permutation of blank
nodes sharing a hash (a 40-node clique: 13 s, 64 nodes: 28 s) and scoped
contexts were reprocessed under every new active context (a 24 KB document:
4-10 s). Now every shape is refused (``too_large``) and no request costs more
than a second of CPU, measured with ``time.process_time`` through the SDK
(``verifier.data_integrity.verify`` and ``Verifier.verify``) and through
``POST /credentials/verify`` of the verifier service and of ``tessera vcapi
serve`` (whose ``/presentations/verify`` and ``/credentials/issue`` are as
open, and tested too). The bodies are all under the services' body cap.
"""

from __future__ import annotations

import functools
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from issuer._vcapi_cli import create_vcapi_app, issuers_for
from tessera import credentials, jsonld
from tessera.did import Resolver, did_jwk, did_key
from tessera.encoding import MAX_JSON_BYTES
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from tests.conftest import ROOT
from verifier import TrustList, Verifier
from verifier import data_integrity as sdk_di
from verifier._service import ServiceSettings, create_app

CPU_BOUND = 1.0  # seconds per request, issue 9's acceptance bound on this machine
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
V2 = "https://www.w3.org/ns/credentials/v2"
EX = "https://example.org/"
VOCAB = {"@vocab": EX}

Shape = tuple[dict[str, Any], dict[str, Any] | None]


# -- shapes: (credentialSubject, extra @context) --------------------------------------


def _values(n: int) -> Shape:
    # The issue's credential: one term with n values (pyld dedups each by scan).
    return {"id": "did:example:m", "name": [f"name {i}" for i in range(n)]}, VOCAB


def _values_aliased(n: int, aliases: int = 6) -> Shape:
    # Under the per-array limit, but six aliases of one IRI merge in the node map.
    ctx = {f"n{a}": "https://schema.org/name" for a in range(aliases)}
    return {"id": "did:example:m",
            **{f"n{a}": [f"v{a}-{i}" for i in range(n)] for a in range(aliases)}}, ctx


def _values_same_node(n: int, copies: int = 6) -> Shape:
    # Six objects naming one node: their values merge into one term.
    return {"id": "did:example:m", "knows": [
        {"id": "urn:x:1", "name": [f"v{c}-{i}" for i in range(n)]} for c in range(copies)]}, VOCAB


def _clique(n: int) -> Shape:
    # Every blank node links to every other: all share a first-degree hash.
    return {"id": "did:example:m", "knows": [
        {"id": f"_:b{i}", "p": [{"id": f"_:b{j}"} for j in range(n) if j != i]}
        for i in range(n)]}, VOCAB


def _ring(n: int) -> Shape:
    return {"id": "did:example:m", "knows": [
        {"id": f"_:b{i}", "p": {"id": f"_:b{(i + 1) % n}"}} for i in range(n)]}, VOCAB


def _blank_tree(depth: int, width: int = 2) -> Shape:
    # Anonymous nodes of identical shape: a deep cascade of N-degree hashing.
    def build(d: int) -> dict[str, Any]:
        return {"v": 1} if d == 0 else {"c": [build(d - 1) for _ in range(width)]}

    return {"id": "did:example:m", **build(depth)}, VOCAB


def _twins(k: int, groups: int = 4) -> Shape:
    # Blank nodes with k identical anonymous children: k! permutations each.
    return {"id": "did:example:m",
            "g": [{"c": [{"v": 1} for _ in range(k)]} for _ in range(groups)]}, VOCAB


def _deep(depth: int) -> Shape:
    node: dict[str, Any] = {"v": 1}
    for _ in range(depth):
        node = {"c": node}
    return {"id": "did:example:m", "c": node}, VOCAB


def _many_terms(n: int) -> Shape:
    return {"id": "did:example:m", **{f"t{i}": i for i in range(n)}}, VOCAB


def _many_nodes(n: int) -> Shape:
    return {"id": "did:example:m", **{
        f"i{j}": [{"a": i, "b": {"c": i}} for i in range(100)] for j in range(n // 100)}}, VOCAB


def _scoped_contexts(terms: int, depth: int = 6) -> Shape:
    # Two property-scoped contexts of many terms, alternated down a binary
    # tree: each node is a new active context, so pyld processes one again.
    defs = {f"t{i}": EX + f"t{i}" for i in range(terms)}
    ctx = {"@vocab": EX,
           "a": {"@id": EX + "a", "@context": {**defs, "b": {"@id": EX + "b",
                                                            "@context": {"@vocab": EX}}}},
           "b": {"@id": EX + "b", "@context": defs}}

    def build(d: int) -> dict[str, Any]:
        return {"t0": 1} if d == 0 else {"a": build(d - 1), "b": build(d - 1)}

    return {"id": "did:example:m", **build(depth)}, ctx


SHAPES: dict[str, Callable[[], Shape]] = {
    "values_6000": lambda: _values(6000),
    "values_aliased_6x1000": lambda: _values_aliased(1000),
    "values_one_node_6x1000": lambda: _values_same_node(1000),
    "clique_8": lambda: _clique(8),
    "clique_16": lambda: _clique(16),
    "clique_40": lambda: _clique(40),
    "clique_64": lambda: _clique(64),
    "ring_64": lambda: _ring(64),
    "blank_tree_depth_9": lambda: _blank_tree(9),
    "twins_9": lambda: _twins(9),
    "deep_200": lambda: _deep(200),
    "many_terms_1001": lambda: _many_terms(1001),
    "many_nodes_9000": lambda: _many_nodes(9000),
    "scoped_contexts_300": lambda: _scoped_contexts(300),
}
# Nested beyond the HTTP parser's depth: the services refuse it before JSON-LD.
SDK_ONLY = {"deep_200"}


# -- doors ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> tuple[str, str]:
    key = generate_signer("EdDSA")
    did = did_key(key.public_key)
    return did, f"{did}#{did.split(':')[2]}"


def _credential(issuer: tuple[str, str], shape: Shape) -> dict[str, Any]:
    subject, ctx = shape
    did, vm = issuer
    return {
        "@context": [V2, *([ctx] if ctx else [])],
        "type": ["VerifiableCredential"],
        "issuer": did,
        "validFrom": "2026-01-01T00:00:00Z",
        "credentialSubject": subject,
        # Never checked: every shape is refused before the signature is.
        "proof": {"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
                  "created": "2026-01-01T00:00:00Z", "verificationMethod": vm,
                  "proofPurpose": "assertionMethod", "proofValue": "z" + "1" * 86},
    }


def _service_app() -> Any:
    signer = generate_signer("ES256")
    db = Path(tempfile.mkdtemp(prefix="hostile-")) / "v.db"
    settings = ServiceSettings(
        base_url="https://shop.test", trust=TrustList.of([]),
        signer=signer.with_key_id(did_jwk(signer.public_key) + "#0"),
        client_name="Shop", contacts=(), store_url=f"sqlite:///{db}", resolver=Resolver(),
    )
    return create_app(settings)


def _vcapi_app() -> tuple[Any, str]:
    """tessera vcapi serve's app, and the DID its ecdsa-sd-2023 issuer signs as."""
    issuers = issuers_for([generate_signer("EdDSA"), generate_signer("ES256")])
    sd_did = next(i for i in issuers if i.cryptosuite == "ecdsa-sd-2023").did
    return create_vcapi_app(issuers, clock=lambda: NOW), sd_did


def _json_post(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    assert len(raw) <= MAX_JSON_BYTES  # the shape must reach JSON-LD, not the body cap
    return client.post(path, content=raw, headers={"content-type": "application/json"})


def _presentation(issuer: tuple[str, str], name: str, *, holder: str, vm: str,
                  challenge: str, domain: str | None) -> dict[str, Any]:
    proof = {"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
             "created": "2026-11-23T12:00:00Z", "verificationMethod": vm,
             "proofPurpose": "authentication", "challenge": challenge,
             "proofValue": "z" + "1" * 86}
    if domain is not None:
        proof["domain"] = domain
    return {"@context": [V2], "type": ["VerifiablePresentation"], "holder": holder,
            "verifiableCredential": [_credential(issuer, SHAPES[name]())], "proof": proof}


Door = tuple[Callable[[str], Any], Callable[[Any], Any]]  # (input for a shape, send it)


def _open_door(door: str, stack: ExitStack) -> Door:
    key = generate_signer("EdDSA")
    did = did_key(key.public_key)
    issuer = (did, f"{did}#{did.split(':')[2]}")
    if door == "sdk":
        return (lambda name: _credential(issuer, SHAPES[name]()),
                lambda vc: list(sdk_di.verify(vc, keys={}, now=NOW).errors))
    if door == "verifier":
        # Verifier.verify checks its trust list first, from the unverified
        # issuer: a hostile credential only has to name a trusted issuer.
        trust = TrustList.of([(did, [t.name for t in credentials.CREDENTIAL_TYPES])])
        verifier = Verifier(trust=trust, resolver=Resolver(), clock=lambda: NOW)

        def build(name: str) -> Any:
            request = verifier.create_request(audience="https://shop.test")
            return _presentation(issuer, name, holder=did, vm=issuer[1],
                                 challenge=request.nonce, domain=request.audience), request

        return build, lambda vp_request: list(
            verifier.verify(vp_request[0], request=vp_request[1]).errors)
    app, sd_did = (_service_app(), "") if door == "service" else _vcapi_app()
    client = stack.enter_context(TestClient(app, base_url="https://shop.test"))
    if door in ("service", "vcapi"):
        def send_vc(vc: dict[str, Any]) -> Any:
            r = _json_post(client, "/credentials/verify", {"verifiableCredential": vc})
            return [r.status_code, r.json()["errors"]]

        return lambda name: _credential(issuer, SHAPES[name]()), send_vc
    if door == "vcapi-presentations":
        def send_vp(vp: dict[str, Any]) -> Any:
            r = _json_post(client, "/presentations/verify",
                           {"verifiablePresentation": vp, "options": {"challenge": "c"}})
            return [r.status_code, r.json()["errors"]]

        return (lambda name: _presentation(issuer, name, holder=did, vm=issuer[1],
                                           challenge="c", domain=None)), send_vp
    # tessera vcapi serve signs what it is sent (it is the W3C suites' issuer),
    # so issuance is as open as verification; ecdsa-sd-2023 also compacts.
    def build_unsigned(name: str) -> dict[str, Any]:
        vc = _credential((sd_did, ""), SHAPES[name]())
        return {k: v for k, v in vc.items() if k != "proof"}

    def send_issue(unsigned: dict[str, Any]) -> Any:
        r = _json_post(client, "/credentials/issue", {"credential": unsigned, "options": {
            "type": "DataIntegrityProof", "cryptosuite": "ecdsa-sd-2023"}})
        return [r.status_code, r.json().get("code")]

    return build_unsigned, send_issue


DOORS: dict[str, Any] = {
    "sdk": ["too_large"],
    "verifier": ["too_large"],
    "service": [400, ["too_large"]],
    "vcapi": [400, ["too_large"]],
    "vcapi-presentations": [400, ["too_large"]],
    "vcapi-issue": [413, "too_large"],
}


def _door_shapes(door: str) -> list[str]:
    return sorted(SHAPES if door in ("sdk", "verifier") else set(SHAPES) - SDK_ONLY)


def _run_door(door: str) -> None:
    """In a fresh interpreter: every shape through one door; prints {shape: [answer, cpu]}."""
    with ExitStack() as stack:
        build, send = _open_door(door, stack)
        results: dict[str, Any] = {}
        for name in _door_shapes(door):
            payload = build(name)
            # The least of three identical requests: the bound is about the work a
            # request makes the door do; one measurement on a shared two-core machine
            # also carries a collection or another process's pressure on the caches.
            spent = []
            for _ in range(3):
                gc.collect()
                start = time.process_time()
                answer = send(payload)
                spent.append(time.process_time() - start)
            results[name] = [answer, min(spent)]
    print(json.dumps(results))


@functools.cache
def _measured(door: str) -> dict[str, Any]:
    # A fresh process per door: time.process_time counts every thread of the
    # process, and a long test session leaves other apps' threads running.
    done = subprocess.run(  # noqa: S603 - our interpreter, our module, a door name
        [sys.executable, "-c",
         "import sys; from tests.tessera.test_hostile_jsonld import _run_door; "
         "_run_door(sys.argv[1])", door],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("door", "name"),
                         [(d, n) for d in DOORS for n in _door_shapes(d)])
def test_refused_as_too_large_within_the_cpu_bound(door: str, name: str) -> None:
    answer, cpu = _measured(door)[name]
    assert answer == DOORS[door], (door, name)
    assert cpu <= CPU_BOUND, f"{door} {name}: {cpu:.2f} s of CPU"


@pytest.fixture(scope="module")
def verifier_service() -> Iterator[TestClient]:
    with TestClient(_service_app(), base_url="https://shop.test") as client:
        yield client


@pytest.fixture(scope="module")
def vcapi_server() -> Iterator[TestClient]:
    with TestClient(_vcapi_app()[0]) as client:
        yield client


def test_too_deep_for_the_services_is_refused_by_their_parser(
    issuer: tuple[str, str], verifier_service: TestClient, vcapi_server: TestClient
) -> None:
    vc = _credential(issuer, _deep(200))
    for client in (verifier_service, vcapi_server):
        response = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert response.status_code == 413
        assert response.json()["code"] == ErrorCode.TOO_LARGE.value


# -- the budget itself --------------------------------------------------------------


def _refused(work: Callable[[], Any]) -> tuple[TesseraError, float]:
    # The work runs in this thread: its CPU time, not other threads' of the session.
    start = time.thread_time()
    with pytest.raises(TesseraError) as err:
        work()
    return err.value, time.thread_time() - start


def test_a_blank_node_group_too_big_to_permute_is_refused_before_permuting() -> None:
    # Nine blank nodes related to one by the same hash: 9! permutations.
    lines = [f"_:x <{EX}p> _:b{i} .\n" for i in range(9)]
    lines += [f"_:y <{EX}p> _:b{i} .\n" for i in range(9)]
    err, cpu = _refused(lambda: jsonld.canonicalize_nquads("".join(lines)))
    assert err.code == ErrorCode.TOO_LARGE and "blank nodes" in err.detail
    assert cpu < 0.1


def test_clique_nquads_are_refused_within_the_bound() -> None:
    for n in (8, 16, 40, 64):
        lines = [f"_:b{i} <{EX}p> _:b{j} .\n" for i in range(n) for j in range(n) if i != j]
        err, cpu = _refused(lambda lines=lines: jsonld.canonicalize_nquads("".join(lines)))
        assert err.code == ErrorCode.TOO_LARGE
        assert cpu <= CPU_BOUND, (n, cpu)


def test_values_of_one_term_are_limited_where_they_merge() -> None:
    # Each array is at the limit; together, on one node, they are over it.
    subject, ctx = _values_same_node(jsonld.MAX_VALUES_PER_TERM // 2, copies=3)
    doc = {"@context": [V2, ctx], "@id": "urn:x:doc", "credentialSubject": subject}
    err, _ = _refused(lambda: jsonld.canonicalize(doc))
    assert err.code == ErrorCode.TOO_LARGE and "values for one term" in err.detail
    small, ctx = _values_same_node(10, copies=3)
    assert jsonld.canonicalize({"@context": [V2, ctx], "credentialSubject": small})


def test_nodes_and_quads_are_limited_whatever_the_budget() -> None:
    # With work to spare, the counts still stop the document.
    per = jsonld.MAX_VALUES_PER_TERM
    # One reference per term, so no value is compared with another.
    refs = {"@context": [V2, VOCAB], "@id": "urn:x:doc", "items": [
        {f"k{i}": {"@id": f"urn:x:{t}-{i}"} for i in range(per - 1)}
        for t in range(jsonld.MAX_NODES // per + 1)]}
    lists = {"@context": [V2, VOCAB], "@id": "urn:x:doc", **{
        f"l{t}": {"@list": list(range(per))} for t in range(jsonld.MAX_QUADS // per + 1)}}
    for doc, detail in ((refs, "nodes"), (lists, "quads")):
        with jsonld.work_budget(10**9):
            err, _ = _refused(lambda doc=doc: jsonld.canonicalize(doc))
        assert err.code == ErrorCode.TOO_LARGE and detail in err.detail


def test_operations_in_one_block_share_one_budget() -> None:
    doc = {"@context": [V2, VOCAB], "@id": "urn:x:doc",
           "name": [f"v{i}" for i in range(600)]}
    with jsonld.work_budget() as budget:
        jsonld.canonicalize(doc)
        once = budget.used
        assert once > jsonld.MAX_WORK // 4  # ~180,000 comparisons, charged
        with pytest.raises(TesseraError) as err:
            for _ in range(4):
                jsonld.canonicalize(doc)
        assert err.value.code == ErrorCode.TOO_LARGE
    # Outside a block each operation has a budget of its own.
    for _ in range(4):
        jsonld.canonicalize(doc)


def test_the_budget_is_charged_before_the_work() -> None:
    # A budget too small for the comparisons refuses before doing them.
    doc = {"@context": [V2, VOCAB], "@id": "urn:x:doc", "name": [f"v{i}" for i in range(900)]}
    with jsonld.work_budget(50_000) as budget:
        err, cpu = _refused(lambda: jsonld.canonicalize(doc))
    assert err.code == ErrorCode.TOO_LARGE
    assert budget.used > budget.limit
    assert cpu < 0.1


def test_prescan_refuses_before_pyld(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pyld was reached")

    monkeypatch.setattr(jsonld._Processor, "expand", boom)
    for doc in ({"@context": [V2], "name": list(range(jsonld.MAX_VALUES_PER_TERM + 1))},
                {"@context": [V2], **{f"t{i}": 1 for i in range(jsonld.MAX_VALUES_PER_TERM)}},
                {"@context": [V2], "c": _deep(200)[0]}):
        with pytest.raises(TesseraError) as err:
            jsonld.expand(doc)
        assert err.value.code == ErrorCode.TOO_LARGE


def test_legitimate_documents_stay_far_below_the_budget() -> None:
    vc = {"@context": [V2, VOCAB], "type": ["VerifiableCredential"], "issuer": "did:example:i",
          "credentialSubject": {"id": "did:example:m", "name": [f"n{i}" for i in range(100)],
                                "items": [{"sku": i, "qty": 1} for i in range(100)]}}
    with jsonld.work_budget() as budget:
        jsonld.check_all_terms_defined(vc)
        jsonld.canonicalize(vc)
    assert budget.used < jsonld.MAX_WORK // 4


def test_measured_shapes_fit_the_body_cap(issuer: tuple[str, str]) -> None:
    for name, shape in SHAPES.items():
        size = len(json.dumps({"verifiableCredential": _credential(issuer, shape())}))
        assert size <= MAX_JSON_BYTES, (name, size)


def test_docs_state_the_limits() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "data-integrity.md").read_text()
    for value in (jsonld.MAX_WORK, jsonld.MAX_VALUES_PER_TERM, jsonld.MAX_NODES,
                  jsonld.MAX_QUADS, jsonld.MAX_RELATED_BLANK_NODES):
        assert f"{value:,}" in text, value
