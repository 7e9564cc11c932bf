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


def _shared_entries() -> list[tuple[str, Any]]:
    """(key, resolved context) for everything in pyld's process-wide context cache."""
    from pyld import jsonld as pyld_jsonld

    out: list[tuple[str, Any]] = []
    for key, tags in list(pyld_jsonld._resolved_context_cache.items()):
        for resolved in tags.values():
            for one in resolved if isinstance(resolved, list) else [resolved]:
                out.append((key, one))
    return out


def test_a_callers_contexts_do_not_outlive_the_call_nor_evict_the_bundled_ones() -> None:
    # Stock pyld keeps every inline (and scoped) context it resolves in a
    # process-wide LRU of 100, with the contexts processed from it: an
    # unauthenticated client's contexts stayed in memory after the request
    # (about 80 MB in a synthetic run) and pushed the bundled contexts out.
    vc = _loyalty()
    jsonld.canonicalize(copy.deepcopy(vc))  # the bundled contexts, warm
    for n in range(130):  # more than pyld's 100 entries
        hostile = {f"t{n}_{i}": {"@id": f"https://evil.example/{n}/{i}",
                                 "@context": {"x": f"https://evil.example/{n}/{i}/x"}}
                   for i in range(200)}
        doc = copy.deepcopy(vc)
        doc["@context"] = [hostile, *vc["@context"]]  # the bundled ones on top of it
        doc["credentialSubject"][f"t{n}_0"] = {"x": "y"}
        assert f"https://evil.example/{n}/0" in jsonld.canonicalize(doc)
    entries = _shared_entries()
    assert not [key for key, _ in entries if "evil.example" in key]
    for _, resolved in entries:  # nor what pyld processed on top of them
        for processed in resolved.cache.values():
            assert not [t for t in processed["mappings"] if t.startswith("t")
                        and "evil.example" in str(processed["mappings"][t])]
    keys = {key for key, _ in entries}
    assert {jsonld.CREDENTIALS_V2, jsonld.LOYALTY_V1} <= keys


def test_a_bundled_context_on_top_of_a_callers_context_is_processed_right() -> None:
    vc = _loyalty()
    vc["@context"] = [{"ex": "https://example.com/"}, *vc["@context"]]
    vc["credentialSubject"]["ex:x"] = "1"
    for _ in range(2):  # the second round reads what the first kept
        fast = jsonld.canonicalize(copy.deepcopy(vc)), jsonld.expand(copy.deepcopy(vc))
        with stock_pyld():
            stock = jsonld.canonicalize(copy.deepcopy(vc)), jsonld.expand(copy.deepcopy(vc))
        assert fast == stock
