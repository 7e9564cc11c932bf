"""The context caches in tessera.jsonld change how fast, never what, JSON-LD yields."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.data_integrity import stock_pyld
from tessera import credentials, jsonld
from tessera.formats import data_integrity as di

NOW = datetime(2026, 11, 23, tzinfo=UTC)
STATUS = {"id": "https://b.example/s/1#5", "type": "BitstringStatusListEntry",
          "statusPurpose": "revocation", "statusListIndex": "5",
          "statusListCredential": "https://b.example/s/1"}


def _loyalty() -> dict[str, Any]:
    claims = credentials.membership_claims(
        program={"id": "acme", "name": "Acme", "brand": "did:example:brand"},
        membership_number="M-1", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=NOW.date(), tier_valid_until=NOW.date(), name="Alice")
    return di.loyalty_credential(credentials.MEMBERSHIP, claims, issuer="did:example:brand",
                                 subject="did:example:alice", valid_from=NOW,
                                 valid_until=NOW + timedelta(days=1), status=STATUS)


def _documents() -> list[dict[str, Any]]:
    vc = _loyalty()
    proof = {"type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
             "created": "2026-11-23T00:00:00Z", "verificationMethod": "did:example:brand#k",
             "proofPurpose": "assertionMethod", "@context": vc["@context"]}
    vp = {"@context": [jsonld.CREDENTIALS_V2], "type": ["VerifiablePresentation"],
          "holder": "did:example:alice", "verifiableCredential": [vc]}
    v1 = {"@context": [jsonld.CREDENTIALS_V1, jsonld.ED25519_2020_V1],
          "type": ["VerifiableCredential"], "issuer": "did:example:i",
          "issuanceDate": "2026-01-01T00:00:00Z", "credentialSubject": {"id": "did:example:a"},
          "proof": {"type": "Ed25519Signature2020", "created": "2026-01-01T00:00:00Z",
                    "verificationMethod": "did:example:i#k", "proofPurpose": "assertionMethod",
                    "proofValue": "z3FXQ"}}
    return [vc, proof, vp, v1, {**vc, "proof": {k: v for k, v in proof.items()
                                               if k != "@context"}}]


def test_canonical_forms_and_expansions_equal_stock_pyld() -> None:
    for doc in _documents():
        for _ in range(2):  # the second round runs on warm caches
            fast = jsonld.canonicalize(copy.deepcopy(doc)), jsonld.expand(copy.deepcopy(doc))
            with stock_pyld():
                stock = jsonld.canonicalize(copy.deepcopy(doc)), jsonld.expand(copy.deepcopy(doc))
            assert fast == stock


def test_an_inline_context_changed_in_place_is_processed_again() -> None:
    # Identity-keyed memos would serve the old mapping here; only frozen
    # bundled contexts may be remembered by identity.
    ctx = dict(jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"]["@context"])
    vc = _loyalty()
    vc["@context"] = [jsonld.CREDENTIALS_V2, ctx]
    before = jsonld.canonicalize(vc)
    ctx["membership_number"] = "https://evil.example/accountNumber"
    after = jsonld.canonicalize(vc)
    assert "https://evil.example/accountNumber" in after
    assert "https://evil.example/accountNumber" not in before


def test_the_public_loader_still_hands_out_mutable_copies() -> None:
    doc = jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"]
    doc["@context"]["x"] = "https://example.com/x"  # must not raise, must not leak
    again = jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"]
    assert "x" not in again["@context"]
