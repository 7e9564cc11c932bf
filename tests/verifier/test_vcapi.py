"""VC API verifier: /credentials/verify, /presentations/verify, /challenges."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from issuer._vcapi import VcApiIssuer
from issuer._vcapi_cli import create_vcapi_app, issuers_for
from tessera.did import Resolver, did_key
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, generate_signer
from tessera.status import BitstringStatusList, bitstring_status_list_credential

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
V2 = "https://www.w3.org/ns/credentials/v2"
LIST_URL = "https://brand.test/status/1"
DOMAIN = "https://partner.test"
SUITES = ["eddsa-rdfc-2022", "ecdsa-rdfc-2019", "ecdsa-sd-2023"]


class _Lists:
    """A fetcher serving status list credentials from memory, counting the calls."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.calls = 0

    def fetch(self, url: str, *, accept: str) -> bytes:
        self.calls += 1
        if url not in self.documents:
            raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, f"GET {url} answered 404")
        return self.documents[url]


@pytest.fixture(scope="module")
def issuers() -> list[VcApiIssuer]:
    return issuers_for([generate_signer("EdDSA"), generate_signer("ES256")])


@pytest.fixture
def lists() -> _Lists:
    return _Lists()


@pytest.fixture
def client(issuers: list[VcApiIssuer], lists: _Lists) -> TestClient:
    return TestClient(create_vcapi_app(issuers, clock=lambda: NOW, fetcher=lists))


@pytest.fixture(scope="module")
def holder() -> tuple[LocalSigner, str]:
    signer = generate_signer("EdDSA")
    did = did_key(signer.public_key)
    return signer.with_key_id(f"{did}#{did[len('did:key:'):]}"), did


def _suite(issuers: list[VcApiIssuer], suite: str) -> VcApiIssuer:
    return next(i for i in issuers if i.cryptosuite == suite)


def _issue(client: TestClient, issuer: VcApiIssuer, subject: str = "did:example:alice",
           **extra: Any) -> dict[str, Any]:
    cred = {"@context": [V2], "type": ["VerifiableCredential"], "issuer": issuer.did,
            "validFrom": "2026-01-01T00:00:00Z",
            "credentialSubject": {"id": subject, "name": "Alice"}, **extra}
    r = client.post(f"{issuer.path}/credentials/issue", json={"credential": cred})
    assert r.status_code == 201, r.text
    vc: dict[str, Any] = r.json()["verifiableCredential"]
    if issuer.cryptosuite == "ecdsa-sd-2023":
        vc = di.derive(vc, selective_pointers=["/credentialSubject/name"])
    return vc


def _verify(client: TestClient, vc: Any) -> tuple[int, dict[str, Any]]:
    r = client.post("/credentials/verify",
                    json={"verifiableCredential": vc, "options": {"checks": ["proof"]}})
    return r.status_code, r.json()


@pytest.mark.parametrize("suite", SUITES)
def test_issue_then_verify_round_trip(client: TestClient, issuers: list[VcApiIssuer],
                                      suite: str) -> None:
    status, result = _verify(client, _issue(client, _suite(issuers, suite)))
    assert status == 200, result
    assert result == {"verified": True, "checks": ["proof", "validity"], "warnings": [],
                      "errors": [], "problemDetails": []}


@pytest.mark.parametrize("suite", SUITES)
def test_credential_changed_after_signing_fails(client: TestClient, issuers: list[VcApiIssuer],
                                                suite: str) -> None:
    vc = _issue(client, _suite(issuers, suite))
    vc["credentialSubject"]["name"] = "Mallory"
    status, result = _verify(client, vc)
    assert status == 400
    assert result["verified"] is False and result["errors"] == ["invalid_signature"]
    assert result["problemDetails"][0]["code"] == "invalid_signature"


def test_ecdsa_sd_base_proof_is_not_accepted_by_a_verifier(
    client: TestClient, issuers: list[VcApiIssuer],
) -> None:
    issuer = _suite(issuers, "ecdsa-sd-2023")
    cred = {"@context": [V2], "type": ["VerifiableCredential"], "issuer": issuer.did,
            "credentialSubject": {"id": "did:example:alice", "name": "Alice"}}
    base = client.post("/ecdsa-sd/credentials/issue", json={"credential": cred}).json()
    status, result = _verify(client, base["verifiableCredential"])
    assert status == 400 and result["errors"] == ["malformed"]


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda vc: vc.update(validUntil="2026-02-01T00:00:00Z"), "invalid_signature"),
    (lambda vc: vc["proof"].update(cryptosuite="unknown-2017"), "unsupported_algorithm"),
    (lambda vc: vc["proof"].update(proofPurpose="authentication"), "invalid_signature"),
    (lambda vc: vc.pop("proof"), "malformed"),
    (lambda vc: vc.update(issuer="did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"),
     "issuer_key_mismatch"),
    (lambda vc: vc.update({"@context": [V2, "https://evil.test/ctx"]}), "unsupported_format"),
])
def test_verification_failures_carry_their_code(
    client: TestClient, issuers: list[VcApiIssuer], mutate: Any, code: str,
) -> None:
    vc = _issue(client, _suite(issuers, "eddsa-rdfc-2022"))
    mutate(vc)
    status, result = _verify(client, vc)
    assert status == 400 and result["errors"] == [code], result


def test_expired_and_not_yet_valid(issuers: list[VcApiIssuer], lists: _Lists) -> None:
    issuer = _suite(issuers, "eddsa-rdfc-2022")
    at_issue = TestClient(create_vcapi_app(issuers, clock=lambda: NOW, fetcher=lists))
    vc = _issue(at_issue, issuer, validUntil="2026-12-01T00:00:00Z")
    later = TestClient(create_vcapi_app(issuers, clock=lambda: NOW + timedelta(days=60)))
    assert _verify(later, vc)[1]["errors"] == ["expired"]
    earlier = TestClient(create_vcapi_app(issuers, clock=lambda: NOW - timedelta(days=365)))
    assert _verify(earlier, vc)[1]["errors"] == ["not_yet_valid"]


def _status_entry(index: int) -> dict[str, Any]:
    return {"id": f"{LIST_URL}#{index}", "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation", "statusListIndex": str(index),
            "statusListCredential": LIST_URL}


def _publish_list(lists: _Lists, issuer: VcApiIssuer, revoked: list[int]) -> None:
    bits = BitstringStatusList()
    for i in revoked:
        bits.set(i, 1)
    unsigned = bitstring_status_list_credential(
        bits, credential_id=LIST_URL, issuer=issuer.did, status_purpose="revocation",
        valid_from=NOW - timedelta(days=1))
    signed = di.issue(unsigned, signer=issuer.signer, cryptosuite=issuer.cryptosuite,
                      verification_method=issuer.verification_method, created=NOW)
    lists.documents[LIST_URL] = json.dumps(signed).encode()


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "ecdsa-sd-2023"])
def test_bitstring_status_is_checked(client: TestClient, issuers: list[VcApiIssuer],
                                     lists: _Lists, suite: str) -> None:
    issuer = _suite(issuers, suite)
    list_signer = _suite(issuers, "eddsa-rdfc-2022" if suite == "eddsa-rdfc-2022"
                         else "ecdsa-rdfc-2019")
    _publish_list(lists, list_signer, revoked=[42])
    good = _issue(client, issuer, credentialStatus=_status_entry(7))
    status, result = _verify(client, good)
    assert status == 200 and result["checks"] == ["proof", "validity", "status"], result
    revoked = _issue(client, issuer, credentialStatus=_status_entry(42))
    status, result = _verify(client, revoked)
    assert status == 400 and result["errors"] == ["revoked"]
    assert lists.calls == 1  # the list is cached between credentials


def test_status_list_that_cannot_be_fetched_or_is_signed_by_another(
    client: TestClient, issuers: list[VcApiIssuer], lists: _Lists,
) -> None:
    issuer = _suite(issuers, "eddsa-rdfc-2022")
    vc = _issue(client, issuer, credentialStatus=_status_entry(7))
    assert _verify(client, vc)[1]["errors"] == ["status_unavailable"]
    _publish_list(lists, _suite(issuers, "ecdsa-rdfc-2019"), revoked=[])  # another DID
    assert _verify(client, vc)[1]["errors"] == ["status_unavailable"]


# -- presentations ---------------------------------------------------------------------------


def _vp(client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
        challenge: str, domain: str = DOMAIN, suite: str = "eddsa-rdfc-2022") -> dict[str, Any]:
    signer, did = holder
    vc = _issue(client, _suite(issuers, suite), subject=did)
    return di.present([vc], signer=signer, holder=did, challenge=challenge, domain=domain,
                      created=NOW)


def _verify_vp(client: TestClient, vp: Any, **options: Any) -> tuple[int, dict[str, Any]]:
    r = client.post("/presentations/verify",
                    json={"verifiablePresentation": vp, "options": options})
    return r.status_code, r.json()


@pytest.mark.parametrize("suite", SUITES)
def test_presentation_with_challenge_and_domain(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str], suite: str,
) -> None:
    vp = _vp(client, issuers, holder, "c-123456", suite=suite)
    status, result = _verify_vp(client, vp, challenge="c-123456", domain=DOMAIN)
    assert status == 200, result
    assert result["checks"] == ["challenge", "domain", "proof", "credentials"]
    assert result["warnings"] == []


def test_wrong_challenge_wrong_domain_and_tampering(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
) -> None:
    vp = _vp(client, issuers, holder, "c-123456")
    assert _verify_vp(client, vp, challenge="c-other", domain=DOMAIN)[1]["errors"] \
        == ["nonce_mismatch"]
    assert _verify_vp(client, vp, challenge="c-123456", domain="https://evil.test")[1][
        "errors"] == ["audience_mismatch"]
    tampered = copy.deepcopy(vp)
    tampered["verifiableCredential"][0]["credentialSubject"]["name"] = "Mallory"
    assert _verify_vp(client, tampered, challenge="c-123456", domain=DOMAIN)[1]["errors"] \
        == ["invalid_signature"]


def test_without_options_the_proof_is_checked_and_a_warning_says_what_was_not(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
) -> None:
    vp = _vp(client, issuers, holder, "c-123456")
    status, result = _verify_vp(client, vp)
    assert status == 200 and len(result["warnings"]) == 2
    assert "challenge" not in result["checks"]


def test_issued_challenge_is_single_use(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
) -> None:
    challenge = client.post("/challenges").json()["challenge"]
    vp = _vp(client, issuers, holder, challenge)
    assert _verify_vp(client, vp, challenge=challenge, domain=DOMAIN)[0] == 200
    status, result = _verify_vp(client, vp, challenge=challenge, domain=DOMAIN)
    assert status == 400 and result["errors"] == ["replayed"]
    # Still replayed the third time: the marker survives being looked at.
    assert _verify_vp(client, vp, challenge=challenge, domain=DOMAIN)[1]["errors"] \
        == ["replayed"]


def test_strict_mode_accepts_only_issued_challenges(
    issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str], lists: _Lists,
) -> None:
    strict = TestClient(create_vcapi_app(issuers, clock=lambda: NOW, fetcher=lists,
                                         require_issued_challenge=True))
    vp = _vp(strict, issuers, holder, "made-up-by-the-caller")
    assert _verify_vp(strict, vp, challenge="made-up-by-the-caller", domain=DOMAIN)[1][
        "errors"] == ["nonce_mismatch"]
    assert _verify_vp(strict, vp)[1]["errors"] == ["nonce_mismatch"]
    challenge = strict.post("/challenges").json()["challenge"]
    vp = _vp(strict, issuers, holder, challenge)
    assert _verify_vp(strict, vp, challenge=challenge, domain=DOMAIN)[0] == 200
    assert _verify_vp(strict, vp, challenge=challenge, domain=DOMAIN)[1]["errors"] \
        == ["replayed"]


def test_credential_of_someone_else_in_a_presentation(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
    lists: _Lists,
) -> None:
    # VCDM 2.0 §4.13 does not ask the subject to be the holder: verified, with a
    # warning; --require-holder-binding refuses it as Tessera's OpenID4VP flow does.
    signer, did = holder
    vc = _issue(client, _suite(issuers, "eddsa-rdfc-2022"), subject="did:example:bob")
    vp = di.present([vc], signer=signer, holder=did, challenge="c-1", domain=DOMAIN,
                    created=NOW)
    status, result = _verify_vp(client, vp, challenge="c-1", domain=DOMAIN)
    assert status == 200, result
    assert result["warnings"] == ["verifiableCredential[0]: its subject is not the holder"]
    strict = TestClient(create_vcapi_app(issuers, clock=lambda: NOW, fetcher=lists,
                                         require_holder_binding=True))
    assert _verify_vp(strict, vp, challenge="c-1", domain=DOMAIN)[1]["errors"] \
        == ["key_binding_invalid"]


def _bare_vp(signer: LocalSigner, **members: Any) -> dict[str, Any]:
    """A VP signed by ``signer`` with only the members given (no holder unless given)."""
    vp = {"@context": [V2], "type": ["VerifiablePresentation"], **members}
    proof = di._new_proof("eddsa-rdfc-2022", verification_method=str(signer.key_id),
                          created=NOW, purpose="authentication", challenge="c-1",
                          domain=DOMAIN)
    return {**vp, "proof": di._sign_proof(vp, proof, signer, "eddsa-rdfc-2022", None)}


def test_holder_and_credentials_are_optional_in_a_presentation(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
    lists: _Lists,
) -> None:
    signer, _ = holder
    vc = _issue(client, _suite(issuers, "eddsa-rdfc-2022"))
    for members in ({}, {"verifiableCredential": [vc]}, {"id": "urn:uuid:1"}):
        status, result = _verify_vp(client, _bare_vp(signer, **members), challenge="c-1",
                                    domain=DOMAIN)
        assert status == 200, (members, result)
        assert "the presentation names no holder" in result["warnings"]
    strict = TestClient(create_vcapi_app(issuers, clock=lambda: NOW, fetcher=lists,
                                         require_holder_binding=True))
    assert _verify_vp(strict, _bare_vp(signer, verifiableCredential=[vc]), challenge="c-1",
                      domain=DOMAIN)[1]["errors"] == ["key_binding_missing"]


@pytest.mark.parametrize(("members", "code"), [
    # a named holder must own the proof key, binding or not
    ({"holder": "did:example:someone-else"}, "key_binding_invalid"),
    # VCDM 2.0 §4.13: credentials are objects, not strings or URLs
    ({"verifiableCredential": ["https://example.test/vc/1"]}, "malformed"),
    ({"verifiableCredential": 5}, "malformed"),
])
def test_presentations_still_refused(
    client: TestClient, holder: tuple[LocalSigner, str], members: dict[str, Any], code: str,
) -> None:
    status, result = _verify_vp(client, _bare_vp(holder[0], **members), challenge="c-1",
                                domain=DOMAIN)
    assert status == 400 and result["errors"] == [code], result


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/credentials/verify", {}, "malformed"),
    ("/credentials/verify", {"verifiableCredential": {}, "options": []}, "malformed"),
    ("/credentials/verify", {"verifiableCredential": {}, "options": {"checks": "proof"}},
     "malformed"),
    ("/credentials/verify", {"verifiableCredential": {}, "more": 1}, "invalid_request"),
    ("/presentations/verify", {"verifiablePresentation": {}, "options": {"challenge": 5}},
     "malformed"),
    ("/presentations/verify", {"verifiablePresentation": {},
                               "options": {"domain": "x" * 500}}, "malformed"),
])
def test_malformed_requests_are_problem_documents(
    client: TestClient, path: str, body: Any, code: str,
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


@pytest.mark.parametrize("document", [[], "a string", {"type": "VerifiableCredential"},
                                      {"@context": [V2], "proof": [{}, {}]}])
def test_malformed_documents_are_results_not_crashes(client: TestClient, document: Any) -> None:
    status, result = _verify(client, document)
    assert status == 400 and result["verified"] is False
    assert result["errors"][0] in ("malformed", "unsupported_format")
    status, result = _verify_vp(client, document, challenge="c", domain=DOMAIN)
    assert status == 400 and result["verified"] is False


def test_did_web_issuer_is_resolved_through_the_fetcher(issuers: list[VcApiIssuer]) -> None:
    signer = generate_signer("EdDSA")
    did = "did:web:brand.test"
    vm = f"{did}#key-1"
    doc = {"@context": ["https://www.w3.org/ns/did/v1"], "id": did,
           "verificationMethod": [{"id": vm, "type": "JsonWebKey2020", "controller": did,
                                   "publicKeyJwk": signer.public_key.to_jwk()}],
           "assertionMethod": [vm]}
    fetched = _Lists()
    fetched.documents["https://brand.test/.well-known/did.json"] = json.dumps(doc).encode()
    app = create_vcapi_app(issuers, clock=lambda: NOW, resolver=Resolver(fetched))
    vc = di.issue({"@context": [V2], "type": ["VerifiableCredential"], "issuer": did,
                   "credentialSubject": {"id": "did:example:a", "name": "A"}},
                  signer=signer, cryptosuite="eddsa-rdfc-2022", verification_method=vm,
                  created=NOW)
    status, result = _verify(TestClient(app), vc)
    assert status == 200, result
    assert fetched.calls == 1


def test_holder_given_as_an_object_with_an_id(
    client: TestClient, issuers: list[VcApiIssuer], holder: tuple[LocalSigner, str],
) -> None:
    # VCDM 2.0 §4.13: "a URL or an object containing an id property" (issue 9 item 14).
    vp = _vp(client, issuers, holder, "c-123456")
    vp["holder"] = {"id": holder[1]}  # the same RDF statement: the proof still covers it
    status, result = _verify_vp(client, vp, challenge="c-123456", domain=DOMAIN)
    assert status == 200 and result["warnings"] == [], result
    vp["holder"] = {"id": "did:example:someone-else"}
    assert _verify_vp(client, vp, challenge="c-123456", domain=DOMAIN)[1]["errors"] \
        == ["key_binding_invalid"]
    vp["holder"] = {"name": "no id"}
    assert _verify_vp(client, vp, challenge="c-123456", domain=DOMAIN)[1]["errors"] \
        == ["malformed"]
