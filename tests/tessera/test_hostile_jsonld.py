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

import json
import time
from collections.abc import Callable, Iterator
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


def _cpu(work: Callable[[], Any]) -> tuple[Any, float]:
    start = time.process_time()
    out = work()
    return out, time.process_time() - start


@pytest.fixture(scope="module")
def verifier_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    signer = generate_signer("ES256")
    db = tmp_path_factory.mktemp("hostile") / "v.db"
    settings = ServiceSettings(
        base_url="https://shop.test", trust=TrustList.of([]),
        signer=signer.with_key_id(did_jwk(signer.public_key) + "#0"),
        client_name="Shop", contacts=(), store_url=f"sqlite:///{db}", resolver=Resolver(),
    )
    with TestClient(create_app(settings), base_url="https://shop.test") as client:
        yield client


_vcapi_issuers = issuers_for([generate_signer("EdDSA"), generate_signer("ES256")])


@pytest.fixture(scope="module")
def vcapi_server() -> Iterator[TestClient]:
    app = create_vcapi_app(_vcapi_issuers, clock=lambda: NOW)
    with TestClient(app) as client:
        yield client


def _post(client: TestClient, vc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"verifiableCredential": vc}).encode()
    assert len(body) <= MAX_JSON_BYTES  # the shape must reach JSON-LD, not the body cap
    response = client.post("/credentials/verify", content=body,
                           headers={"content-type": "application/json"})
    return response.status_code, response.json()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_sdk_data_integrity_verify_refuses_fast(name: str, issuer: tuple[str, str]) -> None:
    vc = _credential(issuer, SHAPES[name]())
    result, cpu = _cpu(lambda: sdk_di.verify(vc, keys={}, now=NOW))
    assert result.errors == (ErrorCode.TOO_LARGE.value,)
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_sdk_verifier_refuses_a_presentation_carrying_it_fast(
    name: str, issuer: tuple[str, str]
) -> None:
    holder = generate_signer("EdDSA")
    holder_did = did_key(holder.public_key)
    # The verifier checks its trust list first, from the unverified issuer; a
    # hostile credential only has to name a trusted issuer to get past it.
    trust = TrustList.of([(issuer[0], [t.name for t in credentials.CREDENTIAL_TYPES])])
    verifier = Verifier(trust=trust, resolver=Resolver(), clock=lambda: NOW)
    request = verifier.create_request(audience="https://shop.test")
    vp = {
        "@context": [V2], "type": ["VerifiablePresentation"], "holder": holder_did,
        "verifiableCredential": [_credential(issuer, SHAPES[name]())],
        "proof": {"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
                  "created": "2026-11-23T12:00:00Z",
                  "verificationMethod": f"{holder_did}#{holder_did.split(':')[2]}",
                  "proofPurpose": "authentication", "challenge": request.nonce,
                  "domain": request.audience, "proofValue": "z" + "1" * 86},
    }
    result, cpu = _cpu(lambda: verifier.verify(vp, request=request))
    assert result.errors == (ErrorCode.TOO_LARGE.value,)
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


@pytest.mark.parametrize("name", sorted(set(SHAPES) - SDK_ONLY))
def test_verifier_service_credentials_verify_refuses_fast(
    name: str, issuer: tuple[str, str], verifier_service: TestClient
) -> None:
    vc = _credential(issuer, SHAPES[name]())
    (status, body), cpu = _cpu(lambda: _post(verifier_service, vc))
    assert (status, body["errors"]) == (400, [ErrorCode.TOO_LARGE.value])
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


@pytest.mark.parametrize("name", sorted(set(SHAPES) - SDK_ONLY))
def test_vcapi_server_credentials_verify_refuses_fast(
    name: str, issuer: tuple[str, str], vcapi_server: TestClient
) -> None:
    vc = _credential(issuer, SHAPES[name]())
    (status, body), cpu = _cpu(lambda: _post(vcapi_server, vc))
    assert (status, body["errors"]) == (400, [ErrorCode.TOO_LARGE.value])
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


@pytest.mark.parametrize("name", sorted(set(SHAPES) - SDK_ONLY))
def test_vcapi_server_presentations_verify_refuses_fast(
    name: str, issuer: tuple[str, str], vcapi_server: TestClient
) -> None:
    vc = _credential(issuer, SHAPES[name]())
    vp = {"@context": [V2], "type": ["VerifiablePresentation"], "holder": issuer[0],
          "verifiableCredential": [vc],
          "proof": {**vc["proof"], "proofPurpose": "authentication", "challenge": "c"}}
    response, cpu = _cpu(lambda: vcapi_server.post(
        "/presentations/verify",
        json={"verifiablePresentation": vp, "options": {"challenge": "c"}}))
    assert (response.status_code, response.json()["errors"]) == (
        400, [ErrorCode.TOO_LARGE.value])
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


@pytest.mark.parametrize("name", sorted(set(SHAPES) - SDK_ONLY))
def test_vcapi_server_credentials_issue_refuses_fast(name: str, vcapi_server: TestClient) -> None:
    # tessera vcapi serve signs what it is sent (it is the W3C suites' issuer),
    # so issuance is as open as verification; ecdsa-sd-2023 also compacts.
    did = next(i for i in _vcapi_issuers if i.cryptosuite == "ecdsa-sd-2023").did
    unsigned = {k: v for k, v in _credential((did, ""), SHAPES[name]()).items() if k != "proof"}
    response, cpu = _cpu(lambda: vcapi_server.post(
        "/credentials/issue", json={"credential": unsigned, "options": {
            "type": "DataIntegrityProof", "cryptosuite": "ecdsa-sd-2023"}}))
    assert (response.status_code, response.json()["code"]) == (413, ErrorCode.TOO_LARGE.value)
    assert cpu <= CPU_BOUND, f"{name}: {cpu:.2f} s of CPU"


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
    start = time.process_time()
    with pytest.raises(TesseraError) as err:
        work()
    return err.value, time.process_time() - start


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
