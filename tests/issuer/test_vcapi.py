"""VC API issuer: POST /credentials/issue on the standalone app (tessera vcapi serve)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from issuer._vcapi import VcApiIssuer, validate_credential
from issuer._vcapi_cli import create_vcapi_app, issuers_for
from tessera import jsonld
from tessera.cli import app as cli_app
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, generate_signer

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
V2 = "https://www.w3.org/ns/credentials/v2"
V1 = "https://www.w3.org/2018/credentials/v1"


@pytest.fixture(scope="module")
def keys() -> tuple[LocalSigner, LocalSigner]:
    return generate_signer("EdDSA"), generate_signer("ES256")


@pytest.fixture(scope="module")
def issuers(keys: tuple[LocalSigner, LocalSigner]) -> list[VcApiIssuer]:
    return issuers_for(list(keys))


@pytest.fixture(scope="module")
def client(issuers: list[VcApiIssuer]) -> TestClient:
    return TestClient(create_vcapi_app(issuers, clock=lambda: NOW))


def _by_suite(issuers: list[VcApiIssuer], suite: str) -> VcApiIssuer:
    return next(i for i in issuers if i.cryptosuite == suite)


def _credential(issuer: str, **extra: Any) -> dict[str, Any]:
    return {
        "@context": [V2],
        "id": "urn:uuid:5b1f0c1e-6a43-4d52-9b8b-8e2f2f7c4a11",
        "type": ["VerifiableCredential"],
        "issuer": issuer,
        "validFrom": "2026-01-01T00:00:00Z",
        "validUntil": "2027-01-01T00:00:00Z",
        "credentialSubject": {"id": "did:example:alice", "name": "Alice"},
        **extra,
    }


def _verify_locally(vc: dict[str, Any]) -> dict[str, Any]:
    return di.verify_credential(vc, key_lookup=lambda vm, rel: Resolver().key(vm, relationship=rel),
                                now=NOW)


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "ecdsa-rdfc-2019", "ecdsa-sd-2023"])
def test_path_prefix_issues_with_its_suite_and_the_result_verifies(
    client: TestClient, issuers: list[VcApiIssuer], suite: str,
) -> None:
    issuer = _by_suite(issuers, suite)
    r = client.post(f"{issuer.path}/credentials/issue",
                    json={"credential": _credential(issuer.did), "options": {}})
    assert r.status_code == 201, r.text
    vc = r.json()["verifiableCredential"]
    proof = vc["proof"]
    assert proof["type"] == "DataIntegrityProof" and proof["cryptosuite"] == suite
    assert proof["verificationMethod"] == issuer.verification_method
    assert proof["proofPurpose"] == "assertionMethod" and proof["created"] == "2026-11-23T12:00:00Z"
    assert {k: v for k, v in vc.items() if k != "proof"} == _credential(issuer.did)
    if suite == "ecdsa-sd-2023":
        # The base proof is the holder's; a verifier gets a derived one.
        vc = di.derive(vc, selective_pointers=["/credentialSubject/name"])
    assert _verify_locally(vc)["credentialSubject"]["name"] == "Alice"


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "ecdsa-rdfc-2019", "ecdsa-sd-2023"])
def test_root_endpoint_picks_the_suite_from_options(
    client: TestClient, issuers: list[VcApiIssuer], suite: str,
) -> None:
    issuer = _by_suite(issuers, suite)
    r = client.post("/credentials/issue", json={
        "credential": _credential(issuer.did),
        "options": {"type": "DataIntegrityProof", "cryptosuite": suite}})
    assert r.status_code == 201, r.text
    assert r.json()["verifiableCredential"]["proof"]["cryptosuite"] == suite


def test_vcdm_1_1_credential_is_signed_and_gets_an_issuance_date(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    cred = {"@context": [V1], "type": ["VerifiableCredential"], "issuer": {"id": issuer.did},
            "credentialSubject": {"id": "did:example:alice"}}
    r = client.post("/eddsa/credentials/issue", json={"credential": cred})
    assert r.status_code == 201, r.text
    vc = r.json()["verifiableCredential"]
    assert vc["issuanceDate"] == "2026-11-23T12:00:00Z"
    _verify_locally(vc)


def test_ecdsa_sd_mandatory_pointers_are_honoured_and_derived_proof_verifies(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _by_suite(issuers, "ecdsa-sd-2023")
    cred = _credential(issuer.did, credentialSubject={
        "id": "did:example:alice", "name": "Alice", "description": "Gold member"})
    r = client.post("/ecdsa-sd/credentials/issue", json={
        "credential": cred,
        "options": {"mandatoryPointers": ["/issuer", "/validFrom", "/credentialSubject/name"]}})
    assert r.status_code == 201, r.text
    base = r.json()["verifiableCredential"]
    derived = di.derive(base, selective_pointers=["/credentialSubject/description"])
    subject = _verify_locally(derived)["credentialSubject"]
    # name is mandatory, description chosen; selectJsonLd keeps node ids (DI §3.4.11).
    assert subject == {"id": "did:example:alice", "name": "Alice",
                       "description": "Gold member"}
    only_mandatory = di.derive(base, selective_pointers=[])
    assert "description" not in _verify_locally(only_mandatory)["credentialSubject"]


def _refused(client: TestClient, path: str, body: Any) -> dict[str, Any]:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = r.json()
    assert problem["status"] == 400 and problem["detail"]
    return problem


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


MALFORMED: list[tuple[str, Any, str, str]] = [
    ("no @context", lambda c: _without(c, "@context"), "malformed", "no @context"),
    ("context order", lambda c: {**c, "@context": ["https://w3id.org/security/data-integrity/v2",
                                                    V2]}, "malformed", "first"),
    ("unknown base context", lambda c: {**c, "@context": ["https://example.com/ctx"]},
     "malformed", "first @context"),
    ("v1 and v2 mixed", lambda c: {**c, "@context": [V2, V1]}, "malformed", "mixes"),
    ("issuer missing", lambda c: _without(c, "issuer"), "malformed", "issuer"),
    ("issuer not a URL", lambda c: {**c, "issuer": "not a url"}, "malformed", "issuer"),
    ("issuer object without id", lambda c: {**c, "issuer": {"name": "Acme"}}, "malformed",
     "issuer"),
    ("issuer a number", lambda c: {**c, "issuer": 7}, "malformed", "issuer"),
    ("issuer not configured", lambda c: {**c, "issuer": "did:example:someone-else"},
     "malformed", "not an issuer configured here"),
    ("validFrom a date only", lambda c: {**c, "validFrom": "2026-01-01"}, "malformed",
     "validFrom"),
    ("validFrom nonsense", lambda c: {**c, "validFrom": "yesterday"}, "malformed", "validFrom"),
    ("validUntil without zone", lambda c: {**c, "validUntil": "2027-01-01T00:00:00"},
     "malformed", "time zone"),
    ("validUntil a number", lambda c: {**c, "validUntil": 1767225600}, "malformed",
     "validUntil"),
    ("v1 date in v2", lambda c: {**c, "issuanceDate": "2026-01-01T00:00:00Z"}, "malformed",
     "issuanceDate"),
    ("no credentialSubject", lambda c: _without(c, "credentialSubject"), "malformed",
     "credentialSubject"),
    ("empty credentialSubject", lambda c: {**c, "credentialSubject": {}}, "malformed",
     "credentialSubject"),
    ("credentialSubject a string", lambda c: {**c, "credentialSubject": "alice"}, "malformed",
     "credentialSubject"),
    ("no VerifiableCredential type", lambda c: {**c, "type": ["Badge"]}, "malformed", "type"),
    ("id not a URL", lambda c: {**c, "id": "12345"}, "malformed", "id"),
    ("status without type", lambda c: {**c, "credentialStatus": {"id": "https://x.test/1"}},
     "malformed", "credentialStatus"),
    ("already has a proof", lambda c: {**c, "proof": {"type": "DataIntegrityProof"}},
     "malformed", "proof"),
    ("undefined term", lambda c: {**c, "credentialSubject": {"id": "did:example:a",
                                                              "favouriteColour": "green"}},
     "schema_invalid", "favouriteColour"),
    ("undefined type", lambda c: {**c, "type": ["VerifiableCredential", "MysteryCredential"]},
     "schema_invalid", "MysteryCredential"),
]


@pytest.mark.parametrize(("mutate", "code", "reason"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_credentials_are_refused_with_400_and_a_reason(
    client: TestClient, issuers: list[VcApiIssuer], mutate: Any, code: str, reason: str,
) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    problem = _refused(client, "/eddsa/credentials/issue",
                       {"credential": mutate(_credential(issuer.did))})
    assert problem["code"] == code
    assert reason in problem["detail"]


@pytest.mark.parametrize(("options", "code"), [
    ({"cryptosuite": "bbs-2023"}, "unsupported_algorithm"),
    ({"cryptosuite": "ecdsa-sd-2023"}, "unsupported_algorithm"),  # not at /eddsa
    ({"type": "Ed25519Signature2020"}, "unsupported_algorithm"),
    ({"mandatoryPointers": ["/issuer"]}, "malformed"),  # not a selective suite
    ({"mandatoryPointers": "/issuer"}, "malformed"),
    ({"proofPurpose": "authentication"}, "invalid_request"),
    ("fast", "malformed"),
])
def test_bad_options_are_refused(
    client: TestClient, issuers: list[VcApiIssuer], options: Any, code: str,
) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    problem = _refused(client, "/eddsa/credentials/issue",
                       {"credential": _credential(issuer.did), "options": options})
    assert problem["code"] == code


def test_mandatory_pointer_that_matches_nothing_is_refused(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _by_suite(issuers, "ecdsa-sd-2023")
    problem = _refused(client, "/ecdsa-sd/credentials/issue", {
        "credential": _credential(issuer.did),
        "options": {"mandatoryPointers": ["/credentialSubject/nothingHere"]}})
    assert problem["code"] == "malformed"


def test_the_p256_key_does_not_sign_for_the_ed25519_issuer(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    # /ecdsa only knows the P-256 did:key; naming the Ed25519 DID there is refused.
    ed = _by_suite(issuers, "eddsa-rdfc-2022")
    problem = _refused(client, "/ecdsa/credentials/issue", {"credential": _credential(ed.did)})
    assert "not an issuer configured here" in problem["detail"]


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b'{"credential": {}, "credential": {}}',
                                 b'{"options": {}}', b'{"credential": {}, "extra": 1}'])
def test_bodies_that_are_not_a_request_are_refused(client: TestClient, raw: bytes) -> None:
    r = client.post("/credentials/issue", content=raw,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] in ("malformed", "invalid_request")


def test_oversized_body_is_refused(client: TestClient, issuers: list[VcApiIssuer]) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    cred = _credential(issuer.did, credentialSubject={"id": "did:example:a",
                                                       "name": "x" * 300_000})
    r = client.post("/eddsa/credentials/issue", json={"credential": cred})
    assert r.status_code == 413 and r.json()["code"] == "too_large"


def test_validate_credential_versions() -> None:
    assert validate_credential(_credential("did:example:i")) == "2.0"
    v1 = {"@context": V1, "type": "VerifiableCredential", "issuer": "https://i.example",
          "issuanceDate": "2020-01-01T00:00:00", "credentialSubject": {"id": "did:example:a"}}
    assert validate_credential(v1) == "1.1"  # VCDM 1.1 dateTime may omit the zone
    with pytest.raises(TesseraError) as err:
        validate_credential([_credential("did:example:i")])
    assert err.value.code == ErrorCode.MALFORMED


def test_issuer_configuration_is_checked(keys: tuple[LocalSigner, LocalSigner]) -> None:
    ed, p256 = keys
    with pytest.raises(TesseraError) as err:
        VcApiIssuer.did_key(ed, "ecdsa-rdfc-2019")
    assert err.value.code == ErrorCode.UNSUPPORTED_ALGORITHM
    with pytest.raises(TesseraError):
        VcApiIssuer.did_key(p256, "eddsa-rdfc-2022")
    with pytest.raises(TesseraError):
        issuers_for([ed, generate_signer("EdDSA")])
    with pytest.raises(TesseraError):
        issuers_for([generate_signer("ES384")])


def test_openapi_schema_lists_the_vc_api(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in ("/credentials/issue", "/eddsa/credentials/issue", "/ecdsa/credentials/issue",
                 "/ecdsa-sd/credentials/issue", "/credentials/verify",
                 "/presentations/verify", "/challenges"):
        assert "post" in paths[path], path
    body = paths["/credentials/issue"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["credential"]
    assert "201" in paths["/eddsa/credentials/issue"]["post"]["responses"]


def test_operator_context_lets_the_examples_vocabulary_through(
    issuers: list[VcApiIssuer],
) -> None:
    examples = "https://www.w3.org/ns/credentials/examples/v2"
    cred = _credential(_by_suite(issuers, "eddsa-rdfc-2022").did)
    cred["@context"] = [V2, examples]
    cred["credentialSubject"]["alumniOf"] = "Example University"
    plain = TestClient(create_vcapi_app(issuers, clock=lambda: NOW))
    assert plain.post("/eddsa/credentials/issue", json={"credential": cred}).json()["code"] \
        == "unsupported_format"
    loader = jsonld.DocumentLoader(
        {examples: {"@context": {"@vocab": "https://www.w3.org/ns/credentials/examples#"}}})
    configured = TestClient(create_vcapi_app(issuers, loader=loader, clock=lambda: NOW))
    r = configured.post("/eddsa/credentials/issue", json={"credential": copy.deepcopy(cred)})
    assert r.status_code == 201, r.text
    r = configured.post("/credentials/verify",
                        json={"verifiableCredential": r.json()["verifiableCredential"]})
    assert r.status_code == 200 and r.json()["verified"] is True


def test_cli_refuses_unusable_keys(tmp_path: Path) -> None:
    key = tmp_path / "k.jwk"
    key.write_text(json.dumps(generate_signer("ES384").export_private_jwk()))
    done = CliRunner().invoke(cli_app, ["vcapi", "serve", "--key", str(key)])
    assert done.exit_code == 2
    assert "unsupported_algorithm" in done.output
    bad_ctx = CliRunner().invoke(cli_app, ["vcapi", "serve", "--key", str(key),
                                           "--context", "no-equals-sign"])
    assert bad_ctx.exit_code != 0


# -- issue 9: what the W3C suites and Digital Bazaar's libraries caught -------------


def test_vcdm_1_1_credential_gets_data_integrity_context_and_created_is_signed(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    cred = {"@context": [V1], "type": ["VerifiableCredential"], "issuer": issuer.did,
            "credentialSubject": {"id": "did:example:alice"}}
    r = client.post("/eddsa/credentials/issue", json={"credential": cred})
    assert r.status_code == 201, r.text
    vc = r.json()["verifiableCredential"]
    assert vc["@context"] == [V1, jsonld.DATA_INTEGRITY_V2]
    assert client.post("/credentials/verify", json={"verifiableCredential": vc}).status_code \
        == 200
    vc["proof"]["created"] = "2020-01-01T00:00:00Z"
    r = client.post("/credentials/verify", json={"verifiableCredential": vc})
    assert r.status_code == 400 and r.json()["errors"] == ["invalid_signature"]


def test_ecdsa_sd_without_mandatory_pointers_issues_a_subject_with_only_an_id(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _by_suite(issuers, "ecdsa-sd-2023")
    cred = _credential(issuer.did, credentialSubject={"id": "did:example:alice"})
    r = client.post("/ecdsa-sd/credentials/issue", json={"credential": cred})
    assert r.status_code == 201, r.text
    derived = di.derive(r.json()["verifiableCredential"], selective_pointers=[])
    assert _verify_locally(derived)["credentialSubject"] == {"id": "did:example:alice"}


RELATED = {"id": V2, "mediaType": "application/ld+json",
           "digestSRI": "sha384-NSOcNpmdIVUxIJGvGUoe22FjTWrXiaXlsZ8q6912LdnR3KraQO2n75Ica4wK4Qeg",
           "digestMultibase": "uJKGMkOmFbVJhEfKTduMC2XCyvRAYLjOVmZWwIH1wQ7k"}


@pytest.mark.parametrize(("extra", "ok"), [
    ({"credentialSchema": {"id": "https://example.org/s.json", "type": "JsonSchema"}}, True),
    ({"credentialSchema": {"type": "JsonSchema"}}, False),
    ({"credentialSchema": [{"id": "https://example.org/s.json", "type": "JsonSchema"},
                           {"type": "JsonSchema"}]}, False),
    ({"credentialSchema": {"id": 42, "type": "JsonSchema"}}, False),
    ({"relatedResource": RELATED}, True),
    ({"relatedResource": [{"id": V2, "digestSRI": RELATED["digestSRI"]}]}, True),
    ({"relatedResource": [V2]}, False),
    ({"relatedResource": [{"digestSRI": RELATED["digestSRI"]}]}, False),
    ({"relatedResource": [{"id": V2, "digestSRI": RELATED["digestSRI"]},
                          {"id": V2, "digestMultibase": RELATED["digestMultibase"]}]}, False),
    ({"relatedResource": [{"id": V2}]}, False),
    ({"relatedResource": [{"id": V2, "digestMultibase":
                           "uM4RgWQc3RUDtjJCSgTJtTfvpZ7SPEg_LNO0ESlovQC0"}]}, False),
])
def test_credential_schema_and_related_resource_rules(
    client: TestClient, issuers: list[VcApiIssuer], extra: dict[str, Any], ok: bool,
) -> None:
    issuer = _by_suite(issuers, "eddsa-rdfc-2022")
    r = client.post("/eddsa/credentials/issue", json={"credential": _credential(issuer.did,
                                                                                **extra)})
    if ok:
        assert r.status_code == 201, r.text
        _verify_locally(r.json()["verifiableCredential"])
    else:
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "malformed"


def test_cli_switches_for_contexts_and_the_issuer_key_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, issuers: list[VcApiIssuer],
) -> None:
    import base64
    import hashlib

    import uvicorn

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    ed = generate_signer("EdDSA")
    key = tmp_path / "ed.jwk"
    key.write_text(json.dumps(ed.export_private_jwk()))
    examples = "https://www.w3.org/ns/credentials/examples/v2"
    raw = json.dumps({"@context": {"@vocab": "https://www.w3.org/ns/credentials/examples#"}})
    (tmp_path / "examples.jsonld").write_text(raw)
    pin = "sha256-" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode()
    (tmp_path / "contexts.json").write_text(json.dumps(
        {examples: {"file": "examples.jsonld", "digestSRI": pin}}))
    base = ["vcapi", "serve", "--key", str(key), "--contexts", str(tmp_path / "contexts.json")]
    assert CliRunner().invoke(cli_app, base).exit_code == 0
    assert CliRunner().invoke(cli_app, [*base, "--any-issuer-key"]).exit_code == 0
    strict, lax = (TestClient(app) for app in served)
    # The pinned examples context is served; an https issuer signing with a did:key
    # is refused by default (issuer_key_mismatch) and accepted with --any-issuer-key.
    did = did_key_of(ed)
    cred = {**_credential(did), "@context": [V2, examples]}
    cred["credentialSubject"]["alumniOf"] = "Example University"
    r = strict.post("/eddsa/credentials/issue", json={"credential": cred})
    assert r.status_code == 201, r.text
    vc = r.json()["verifiableCredential"]
    unsigned = {k: v for k, v in vc.items() if k != "proof"}
    unsigned["issuer"] = "https://university.example"
    loader = jsonld.DocumentLoader.from_manifest(tmp_path / "contexts.json")
    foreign = di.issue(unsigned, signer=ed.with_key_id(vc["proof"]["verificationMethod"]),
                       cryptosuite="eddsa-rdfc-2022",
                       verification_method=vc["proof"]["verificationMethod"], created=NOW,
                       loader=loader)
    r = strict.post("/credentials/verify", json={"verifiableCredential": foreign})
    assert r.status_code == 400 and r.json()["errors"] == ["issuer_key_mismatch"]
    r = lax.post("/credentials/verify", json={"verifiableCredential": foreign})
    assert r.status_code == 200, r.text
    # A context file that is not what was pinned stops the server from starting.
    (tmp_path / "examples.jsonld").write_text(raw + " ")
    done = CliRunner().invoke(cli_app, base)
    assert done.exit_code == 2 and "pinned digest" in done.output


def did_key_of(signer: LocalSigner) -> str:
    from tessera.did import did_key

    return did_key(signer.public_key)


LOOPBACK = ("127.0.0.1", 40000)


def test_vcapi_app_mounts_health_metrics_and_request_ids(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    """The shared stack, as the issuer and verifier services mount it."""
    from prometheus_client.parser import text_string_to_metric_families

    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"keys": "3 issuers"}
    local = TestClient(client.app, client=LOOPBACK)
    stranger = issuers_for([generate_signer("EdDSA")])[0]
    r = local.post("/eddsa/credentials/issue", json={"credential": _credential(stranger.did)},
                   headers={"X-Request-ID": "suite-run-0001"})
    assert r.status_code == 400  # another key's DID: refused, and counted
    assert r.headers["X-Request-ID"] == "suite-run-0001"
    did = _by_suite(issuers, "eddsa-rdfc-2022").did
    issued = local.post("/eddsa/credentials/issue", json={"credential": _credential(did)})
    assert issued.status_code == 201, issued.text
    assert len(issued.headers["X-Request-ID"]) >= 8  # one is made when none is given
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(local.get("/metrics").text)
               for s in family.samples}
    assert samples.get(("tessera_http_requests_total", frozenset({
        "service": "vcapi", "method": "POST", "route": "/eddsa/credentials/issue",
        "status": "201"}.items())), 0) >= 1
    assert samples.get(("tessera_outcomes_total", frozenset({
        "operation": "issuance", "outcome": "ok"}.items())), 0) >= 1
    # Not loopback (the test client's peer is "testclient") and no token: refused.
    assert client.get("/metrics").status_code == 403


def test_vcapi_serve_fetch_budget_reaches_the_verifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import time

    import uvicorn

    from tessera import did as did_module

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    seen: list[tuple[float, float]] = []

    def fetch(self: did_module.HttpFetcher, url: str, *, accept: str = "") -> bytes:
        end = did_module._BUDGET.get()
        assert end is not None, "a fetch outside any fetch budget"
        seen.append((self._deadline, end - time.monotonic()))
        raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "offline test")

    monkeypatch.setattr(did_module.HttpFetcher, "fetch", fetch)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    ed = generate_signer("EdDSA")
    key = tmp_path / "ed.jwk"
    key.write_text(json.dumps(ed.export_private_jwk()))
    base = ["vcapi", "serve", "--key", str(key)]
    for args, env in (([*base, "--fetch-budget", "2.5"], {}),
                      (base, {"TESSERA_FETCH_BUDGET": "4"}), (base, {})):
        monkeypatch.setattr(os, "environ", {**clean, **env})
        done = CliRunner().invoke(cli_app, args)
        assert done.exit_code == 0, done.output
    web = "did:web:issuer.example"
    vc = di.issue(_credential(web), signer=ed.with_key_id(f"{web}#k"),
                  cryptosuite="eddsa-rdfc-2022", verification_method=f"{web}#k", created=NOW)
    for app in served:
        r = TestClient(app).post("/credentials/verify", json={"verifiableCredential": vc})
        assert r.status_code == 400 and "did_resolution_failed" in r.json()["errors"], r.text
    deadlines = [deadline for deadline, _left in seen]
    assert deadlines == [2.5, 4, 10], seen
    assert all(0 < left <= deadline for deadline, left in seen), seen
    monkeypatch.setattr(os, "environ", dict(clean))
    done = CliRunner().invoke(cli_app, [*base, "--fetch-budget", "0"])
    assert done.exit_code == 2 and "TESSERA_FETCH_BUDGET" in done.output
