"""Data Integrity proof sets and chains on credentials (Data Integrity §2.1.1, §2.1.2, §4.5)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tessera import jsonld
from tessera.did import Resolver, did_key
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, generate_signer
from tests.conftest import ROOT

NOW = datetime(2025, 6, 1, tzinfo=UTC)
EX = "https://example.org/vocab#"
RESOLVER = Resolver()


def _lookup(vm: str, relationship: str) -> Any:
    return RESOLVER.key(vm, relationship=relationship)


def _party(alg: str = "EdDSA") -> LocalSigner:
    signer = generate_signer(alg)
    did = did_key(signer.public_key)
    return signer.with_key_id(f"{did}#{did[len('did:key:'):]}")


ISSUER = _party()
NOTARY = _party()


def _did(signer: LocalSigner) -> str:
    return str(signer.key_id).split("#", 1)[0]


def _credential() -> dict[str, Any]:
    return {
        "@context": [jsonld.CREDENTIALS_V2, {"@vocab": EX}],
        "type": ["VerifiableCredential", "AlumniCredential"],
        "issuer": _did(ISSUER),
        "validFrom": "2025-01-01T00:00:00Z",
        "credentialSubject": {"id": "did:example:alice", "alumniOf": "Example University"},
    }


def _add_proof(doc: dict[str, Any], signer: LocalSigner, *, proof_id: str | None = None,
               previous: str | list[str] | None = None,
               created: datetime = NOW) -> dict[str, Any]:
    """Data Integrity §4.3 Add Proof Set/Chain, as the reference libraries do it."""
    existing = doc.get("proof", [])
    proofs = existing if isinstance(existing, list) else [existing]
    unsecured = {k: v for k, v in doc.items() if k != "proof"}
    wanted = [previous] if isinstance(previous, str) else (previous or [])
    matching = [p for p in proofs if p.get("id") in wanted]
    proof = di._new_proof("eddsa-rdfc-2022", verification_method=str(signer.key_id),
                          created=created, purpose="assertionMethod")
    if proof_id is not None:
        proof["id"] = proof_id
    if previous is not None:
        proof["previousProof"] = previous
    signed_over = {**unsecured, "proof": matching} if matching else unsecured
    proof = di._sign_proof(signed_over, proof, signer, "eddsa-rdfc-2022", None)
    return {**unsecured, "proof": [*proofs, proof]}


def _verify(vc: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return di.verify_credential(vc, key_lookup=_lookup, now=NOW, **kw)


def _chain(previous: str | list[str] = "urn:uuid:first") -> dict[str, Any]:
    # As in the reference fixtures: another party signs first, the issuer chains on.
    first = _add_proof(_credential(), NOTARY, proof_id="urn:uuid:first")
    return _add_proof(first, ISSUER, previous=previous)


def _code(vc: dict[str, Any], **kw: Any) -> ErrorCode:
    with pytest.raises(TesseraError) as err:
        _verify(vc, **kw)
    return err.value.code


def test_a_proof_set_verifies_when_every_proof_does() -> None:
    vc = _add_proof(_add_proof(_credential(), ISSUER), NOTARY)
    assert _verify(vc)["credentialSubject"]["alumniOf"] == "Example University"


def test_one_bad_proof_in_a_set_fails_the_credential() -> None:
    vc = _add_proof(_add_proof(_credential(), ISSUER), NOTARY)
    vc["proof"][1]["created"] = "2025-06-02T00:00:00Z"  # not what the notary signed
    assert _code(vc) == ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize("previous", ["urn:uuid:first", ["urn:uuid:first"]])
def test_a_proof_chain_verifies(previous: str | list[str]) -> None:
    assert _verify(_chain(previous))["issuer"] == _did(ISSUER)


def test_a_chained_proof_is_bound_to_the_proof_it_names() -> None:
    # Swap the first proof for another valid notary proof with the same id: each
    # proof alone still verifies, but the issuer signed over the original one.
    vc = _chain()
    other = _add_proof(_credential(), NOTARY, proof_id="urn:uuid:first",
                       created=datetime(2025, 5, 1, tzinfo=UTC))
    vc["proof"][0] = other["proof"][0]
    assert _code(vc) == ErrorCode.INVALID_SIGNATURE


def _drop_first(vc: dict[str, Any]) -> None:
    del vc["proof"][0]


def _renumber(vc: dict[str, Any]) -> None:
    vc["proof"][1]["previousProof"] = 456321


@pytest.mark.parametrize(("mutate", "code"), [
    (_drop_first, ErrorCode.MALFORMED),  # the chain's earlier proof is gone
    (_renumber, ErrorCode.MALFORMED),  # previousProof must be a string or strings
    (lambda vc: vc["proof"][1].update(previousProof="urn:uuid:missing"), ErrorCode.MALFORMED),
    (lambda vc: vc["proof"][1].update(previousProof=[]), ErrorCode.MALFORMED),
    (lambda vc: vc["proof"].append("not a proof"), ErrorCode.MALFORMED),
    (lambda vc: vc.update(proof=[]), ErrorCode.MALFORMED),
    (lambda vc: vc["proof"].extend([vc["proof"][0]] * 8), ErrorCode.TOO_LARGE),
])
def test_broken_chains_are_refused(mutate: Callable[[dict[str, Any]], None],
                                   code: ErrorCode) -> None:
    vc = _chain()
    mutate(vc)
    assert _code(vc) == code


def test_some_proof_in_a_set_must_be_the_issuers() -> None:
    stranger = _party()
    vc = _add_proof(_add_proof(_credential(), NOTARY), stranger)
    assert _code(vc) == ErrorCode.ISSUER_KEY_MISMATCH
    assert _verify(vc, issuer_must_control_key=False)["issuer"] == _did(ISSUER)


def test_ecdsa_sd_2023_proofs_do_not_join_a_set() -> None:
    p256 = _party("ES256")
    cred = {**_credential(), "issuer": _did(p256)}
    base = di.issue(cred, signer=p256, cryptosuite="ecdsa-sd-2023",
                    verification_method=str(p256.key_id), created=NOW)
    derived = di.derive(base, selective_pointers=["/credentialSubject/alumniOf"])
    assert _verify(derived)["credentialSubject"]["alumniOf"] == "Example University"
    with_notary = _add_proof(derived, NOTARY)
    assert _code(with_notary) == ErrorCode.UNSUPPORTED_FORMAT


def test_presentations_keep_one_holder_proof() -> None:
    vc = _add_proof(_add_proof(_credential(), ISSUER), NOTARY)
    vp = {"@context": [jsonld.CREDENTIALS_V2], "type": ["VerifiablePresentation"],
          "holder": _did(NOTARY), "verifiableCredential": [vc],
          "proof": [vc["proof"][0], vc["proof"][1]]}
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(vp, key_lookup=_lookup, challenge="c", domain="d", now=NOW)
    assert err.value.code == ErrorCode.UNSUPPORTED_FORMAT


# The W3C data-integrity-test-suite-assertion's static fixtures, made with Digital
# Bazaar's libraries (interop, not just self-consistency).
FIXTURES = ROOT.parent / "shared" / "w3c-suites" / "data-integrity-test-suite-assertion" / \
    "inputs" / "eddsa-rdfc-2022"


@pytest.mark.parametrize(("name", "code"), [
    ("previousProofStringOk", None),
    ("previousProofArrayOk", None),
    ("previousProofStringMissingFail", ErrorCode.MALFORMED),
    ("previousProofArrayMissingFail", ErrorCode.MALFORMED),
    ("previousProofNotStringFail", ErrorCode.MALFORMED),
])
@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_reference_implementation_chains(version: str, name: str,
                                         code: ErrorCode | None) -> None:
    path = FIXTURES / f"{version}-{name}-SimpleSigned2.json"
    if not path.is_file():
        pytest.skip(f"W3C suite fixtures not present at {FIXTURES}")
    vc = json.loads(path.read_text())
    if code is None:
        assert _verify(vc)["issuer"] == vc["issuer"]
    else:
        assert _code(vc) == code
