"""Data Integrity: W3C vectors (eddsa-rdfc-2022, ecdsa-rdfc-2019, ecdsa-sd-2023), loyalty flows."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tessera import jsonld
from tessera.credentials import MEMBERSHIP, membership_claims
from tessera.did import Resolver, base58btc_decode, did_key, multikey_decode
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, PublicKey, generate_signer, signer_from_jwk
from tests.conftest import vectors_dir

XSD = "http://www.w3.org/2001/XMLSchema#"
CIT = "https://w3id.org/citizenship#"
SDO = "https://schema.org/"
EXAMPLES_V2 = {"@context": {"@vocab": "https://www.w3.org/ns/credentials/examples#"}}
# The citizenship context is not bundled; this reconstruction is checked
# against the vector's canonical N-Quads below, so it maps every term alike.
CITIZENSHIP_V4RC1 = {"@context": {
    "@protected": True, "id": "@id", "type": "@type",
    "PermanentResidentCardCredential": CIT + "PermanentResidentCardCredential",
    "PermanentResident": CIT + "PermanentResident", "Person": SDO + "Person",
    "PermanentResidentCard": CIT + "PermanentResidentCard",
    "image": {"@id": SDO + "image", "@type": "@id"},
    "givenName": SDO + "givenName", "familyName": SDO + "familyName",
    "gender": SDO + "gender", "identifier": SDO + "identifier",
    "birthDate": {"@id": SDO + "birthDate", "@type": XSD + "dateTime"},
    "residentSince": {"@id": CIT + "residentSince", "@type": XSD + "dateTime"},
    "birthCountry": CIT + "birthCountry",
    "commuterClassification": CIT + "commuterClassification",
    "permanentResidentCard": {"@id": CIT + "permanentResidentCard", "@type": "@id"},
    "lprCategory": CIT + "lprCategory", "lprNumber": CIT + "lprNumber"}}
LOADER = jsonld.DocumentLoader({
    "https://www.w3.org/ns/credentials/examples/v2": EXAMPLES_V2,
    "https://w3id.org/citizenship/v4rc1": CITIZENSHIP_V4RC1,
})
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _json(folder: str, name: str) -> Any:
    return json.loads((vectors_dir(folder) / name).read_text())


def _text(folder: str, name: str) -> str:
    return (vectors_dir(folder) / name).read_text()


def _did_key_lookup(vm: str, relationship: str) -> PublicKey:
    return multikey_decode(vm.split("#", 1)[1])


def _signer(public_mb: str, secret_mb: str, vm: str) -> LocalSigner:
    public = multikey_decode(public_mb)
    secret = base58btc_decode(secret_mb[1:])[2:]  # drop the multicodec prefix
    return signer_from_jwk({**public.to_jwk(), "d": b64url_encode(secret)}, key_id=vm)


def _verify_vector(vc: dict[str, Any]) -> dict[str, Any]:
    return di.verify_credential(vc, key_lookup=_did_key_lookup, now=NOW, loader=LOADER,
                                issuer_must_control_key=False)


# -- eddsa-rdfc-2022 / Ed25519Signature2020 / ecdsa-rdfc-2019 vectors --------------


def test_eddsa_rdfc_2022_vector_canonical_forms_and_signature() -> None:
    d = "vc-di-eddsa"
    signed = _json(d, "eddsa-rdfc-2022/signedDataInt.json")
    unsigned = _json(d, "unsigned.json")
    canon = jsonld.canonicalize(unsigned, loader=LOADER)
    assert canon == _text(d, "eddsa-rdfc-2022/canonDocDataInt.txt")
    config = _json(d, "eddsa-rdfc-2022/proofConfigDataInt.json")
    canon_config = jsonld.canonicalize(config, loader=LOADER)
    assert canon_config == _text(d, "eddsa-rdfc-2022/proofCanonDataInt.txt")
    assert hashlib.sha256(canon_config.encode()).hexdigest() == _text(
        d, "eddsa-rdfc-2022/proofHashDataInt.txt").strip()
    key_pair = _json(d, "keyPair.json")
    signer = _signer(key_pair["publicKeyMultibase"], key_pair["privateKeyMultibase"],
                     signed["proof"]["verificationMethod"])
    mine = di.issue(unsigned, signer=signer, cryptosuite="eddsa-rdfc-2022",
                    verification_method=str(signer.key_id),
                    created=datetime(2023, 2, 24, 23, 36, 38, tzinfo=UTC), loader=LOADER)
    assert mine == signed  # Ed25519 is deterministic: byte-identical proofValue
    assert _verify_vector(signed)["id"] == unsigned["id"]


def test_ed25519signature2020_vector_verifies() -> None:
    assert _verify_vector(_json("vc-di-eddsa", "Ed25519Signature2020/signedEdSig.json"))


def test_ecdsa_rdfc_2019_vector_and_roundtrip() -> None:
    d = "vc-di-ecdsa"
    signed = _json(d, "ecdsa-rdfc-2019-p256/signedECDSAP256.json")
    assert _verify_vector(signed)
    assert jsonld.canonicalize(_json(d, "unsigned.json"), loader=LOADER) == _text(
        d, "ecdsa-rdfc-2019-p256/canonDocECDSAP256.txt")
    key_pair = _json(d, "p256KeyPair.json")
    signer = _signer(key_pair["publicKeyMultibase"], key_pair["secretKeyMultibase"],
                     signed["proof"]["verificationMethod"])
    mine = di.issue(_json(d, "unsigned.json"), signer=signer, cryptosuite="ecdsa-rdfc-2019",
                    verification_method=str(signer.key_id), created=NOW, loader=LOADER)
    assert _verify_vector(mine)
    tampered = copy.deepcopy(signed)
    tampered["credentialSubject"]["alumniOf"] = "Another School"
    with pytest.raises(TesseraError) as err:
        _verify_vector(tampered)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


# -- ecdsa-sd-2023 vectors ------------------------------------------------------------

SD = "vc-di-ecdsa"


def test_ecdsa_sd_2023_base_transform_and_hashes_match_vectors() -> None:
    base = _json(SD, "ecdsa-sd-2023/prc/addSignedSDBase.json")
    material = _json(SD, "ecdsa-sd-2023/SDKeyMaterial.json")
    hmac_key = bytes.fromhex(material["hmacKeyString"])
    document = {k: v for k, v in base.items() if k != "proof"}
    groups, _, _ = di._canonicalize_and_group(
        document, di._hmac_label_map(hmac_key), {"mandatory": ["/issuer"]}, LOADER)
    transform = _json(SD, "ecdsa-sd-2023/prc/addBaseTransform.json")
    mandatory = [list(x) for x in groups["mandatory"]["matching"].items()]
    assert mandatory == transform["mandatory"]["value"]
    non_mandatory = [list(x) for x in groups["mandatory"]["nonMatching"].items()]
    assert non_mandatory == transform["nonMandatory"]["value"]
    hashes = _json(SD, "ecdsa-sd-2023/prc/addHashData.json")
    config = di._proof_config(document, {k: v for k, v in base["proof"].items()})
    canon_config = jsonld.canonicalize(config, loader=LOADER)
    assert canon_config == _text(SD, "ecdsa-sd-2023/prc/addProofConfigCanon.txt")
    proof_hash = hashlib.sha256(canon_config.encode()).digest()
    mandatory_text = "".join(groups["mandatory"]["matching"].values())
    mandatory_hash = hashlib.sha256(mandatory_text.encode()).digest()
    assert proof_hash.hex() == hashes["proofHash"]
    assert mandatory_hash.hex() == hashes["mandatoryHash"]
    # The vector's signatures verify over what we computed.
    raw = _json(SD, "ecdsa-sd-2023/prc/addRawBaseSignatureInfo.json")
    issuer = multikey_decode(material["baseKeyPair"]["publicKeyMultibase"])
    one_time_mb = raw["publicKey"]
    public = base58btc_decode(one_time_mb[1:])
    issuer.verify(bytes.fromhex(raw["baseSignature"]), proof_hash + public + mandatory_hash)
    one_time = multikey_decode(one_time_mb)
    quads = list(groups["mandatory"]["nonMatching"].values())
    assert len(quads) == len(raw["signatures"])
    for sig, quad in zip(raw["signatures"], quads, strict=True):
        one_time.verify(bytes.fromhex(sig), quad.encode())


def test_ecdsa_sd_2023_our_base_proof_equals_vector_structure() -> None:
    # Signing with the vector's keys and HMAC key gives a base proof that
    # carries the same key, HMAC key and pointers (ECDSA itself is randomized).
    material = _json(SD, "ecdsa-sd-2023/SDKeyMaterial.json")
    base = _json(SD, "ecdsa-sd-2023/prc/addSignedSDBase.json")
    vm = base["proof"]["verificationMethod"]
    issuer = _signer(material["baseKeyPair"]["publicKeyMultibase"],
                     material["baseKeyPair"]["secretKeyMultibase"], vm)
    one_time = _signer(material["proofKeyPair"]["publicKeyMultibase"],
                       material["proofKeyPair"]["secretKeyMultibase"], None)  # type: ignore[arg-type]
    document = {k: v for k, v in base.items() if k != "proof"}
    proof = {k: v for k, v in base["proof"].items() if k != "proofValue"}
    value = di._sd_base_proof_value(document, proof, issuer, ["/issuer"], LOADER,
                                    hmac_key=bytes.fromhex(material["hmacKeyString"]),
                                    ephemeral=one_time)
    ours = di._decode_proof_value(value, di._SD_BASE_HEADER)
    theirs = di._decode_proof_value(base["proof"]["proofValue"], di._SD_BASE_HEADER)
    assert ours[1:3] == theirs[1:3] and ours[4] == theirs[4] and len(ours[3]) == len(theirs[3])
    derived = di.derive({**document, "proof": {**proof, "proofValue": value}},
                        selective_pointers=_json(SD, "prCredSelective.json"), loader=LOADER)
    assert _verify_vector(derived)


def test_ecdsa_sd_2023_derive_reproduces_vector_and_verifies() -> None:
    base = _json(SD, "ecdsa-sd-2023/prc/addSignedSDBase.json")
    derived = di.derive(base, selective_pointers=_json(SD, "prCredSelective.json"), loader=LOADER)
    expected = _json(SD, "ecdsa-sd-2023/prc/derivedRevealDocument.json")
    assert derived == expected  # deterministic given the base proof
    assert _verify_vector(expected)["credentialSubject"] == {
        "type": ["PermanentResident", "Person"], "birthCountry": "Arcadia"}


def test_ecdsa_sd_2023_base_proof_is_not_presentable() -> None:
    with pytest.raises(TesseraError) as err:
        _verify_vector(_json(SD, "ecdsa-sd-2023/prc/addSignedSDBase.json"))
    assert err.value.code == ErrorCode.MALFORMED


def test_ecdsa_sd_2023_reveal_of_unchosen_claim_fails() -> None:
    base = _json(SD, "ecdsa-sd-2023/prc/addSignedSDBase.json")
    derived = di.derive(base, selective_pointers=_json(SD, "prCredSelective.json"), loader=LOADER)
    derived["credentialSubject"]["givenName"] = "JANE"  # true, signed by the issuer, not chosen
    with pytest.raises(TesseraError) as err:
        _verify_vector(derived)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


# -- loyalty credentials end to end -------------------------------------------------

PROGRAM = {"id": "acme-rewards", "name": "Acme Rewards", "brand": "did:web:acme.example"}


@pytest.fixture(scope="module")
def parties() -> dict[str, Any]:
    issuer = generate_signer("EdDSA")
    issuer_p256 = generate_signer("ES256")
    holder = generate_signer("EdDSA")
    out = {}
    for name, signer in (("issuer", issuer), ("issuer_p256", issuer_p256), ("holder", holder)):
        did = did_key(signer.public_key)
        out[name] = signer.with_key_id(f"{did}#{did[len('did:key:'):]}")
        out[name + "_did"] = did
    out["resolver"] = Resolver()
    return out


def _lookup(parties: dict[str, Any]) -> di.KeyLookup:
    resolver: Resolver = parties["resolver"]
    return lambda vm, rel: resolver.key(vm, relationship=rel)


def _membership(parties: dict[str, Any], issuer_key: str = "issuer", **kw: Any) -> dict[str, Any]:
    claims = membership_claims(
        program=PROGRAM, membership_number="M-0001", tier="gold",
        tiers=[("silver", 1), ("gold", 2), ("platinum", 3)], member_since=date(2020, 5, 1),
        tier_valid_until=date(2026, 12, 31), name="Alice Example", email="alice@example.com")
    return di.loyalty_credential(
        MEMBERSHIP, claims, issuer=parties[issuer_key + "_did"], subject=parties["holder_did"],
        valid_from=kw.get("valid_from", datetime(2025, 1, 1, tzinfo=UTC)),
        valid_until=kw.get("valid_until", datetime(2026, 1, 1, tzinfo=UTC)),
        status={"id": "https://acme.example/status/1#9001", "type": "BitstringStatusListEntry",
                "statusPurpose": "revocation", "statusListIndex": "9001",
                "statusListCredential": "https://acme.example/status/1"})


def _issue(parties: dict[str, Any], suite: str = "eddsa-rdfc-2022", **kw: Any) -> dict[str, Any]:
    key = "issuer_p256" if suite.startswith("ecdsa") else "issuer"
    signer = parties[key]
    return di.issue(_membership(parties, key, **kw), signer=signer, cryptosuite=suite,
                    verification_method=signer.key_id, created=NOW)


@pytest.mark.parametrize("suite", ["eddsa-rdfc-2022", "ecdsa-rdfc-2019"])
def test_loyalty_credential_roundtrip(parties: dict[str, Any], suite: str) -> None:
    vc = _issue(parties, suite)
    out = di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)
    assert out["credentialSubject"]["tier_at_least_gold"] is True
    assert out["credentialSchema"]["type"] == "JsonSchema"


def _swapped_context() -> dict[str, Any]:
    """The loyalty context inline, with membership_number mapped elsewhere."""
    ctx = copy.deepcopy(jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"])
    ctx["@context"]["membership_number"] = "https://evil.example/accountNumber"
    return dict(ctx["@context"])


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda vc: vc["credentialSubject"].update(tier_at_least_platinum=True),
         ErrorCode.INVALID_SIGNATURE),
        (lambda vc: vc["credentialSubject"].update(membership_number="M-9999"),
         ErrorCode.INVALID_SIGNATURE),
        # a context that maps a term elsewhere: the signed statements change
        (lambda vc: vc.update({"@context": [jsonld.CREDENTIALS_V2, _swapped_context()]}),
         ErrorCode.INVALID_SIGNATURE),
        (lambda vc: vc.update({"@context": [jsonld.CREDENTIALS_V2, "https://evil.example/v1"]}),
         ErrorCode.UNSUPPORTED_FORMAT),
        (lambda vc: vc["credentialSubject"].update(shoe_size=42), ErrorCode.SCHEMA_INVALID),
        (lambda vc: vc["proof"].update(cryptosuite="eddsa-2099"), ErrorCode.UNSUPPORTED_ALGORITHM),
        (lambda vc: vc["proof"].update(proofValue="not-multibase"), ErrorCode.MALFORMED),
        (lambda vc: vc["proof"].update(proofPurpose="authentication"), ErrorCode.INVALID_SIGNATURE),
        (lambda vc: vc.update(issuer="did:web:other.example"), ErrorCode.ISSUER_KEY_MISMATCH),
        (lambda vc: vc.pop("proof"), ErrorCode.MALFORMED),
    ],
)
def test_verify_failures_have_codes(parties: dict[str, Any], mutate: Any, code: ErrorCode) -> None:
    vc = _issue(parties)
    mutate(vc)
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == code, err.value.detail


def test_validity_window(parties: dict[str, Any]) -> None:
    vc = _issue(parties)
    lookup = _lookup(parties)
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=lookup, now=datetime(2026, 1, 2, tzinfo=UTC))
    assert err.value.code == ErrorCode.EXPIRED
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=lookup, now=datetime(2024, 12, 31, tzinfo=UTC))
    assert err.value.code == ErrorCode.NOT_YET_VALID


def test_issue_refuses_claims_the_context_would_drop(parties: dict[str, Any]) -> None:
    vc = _membership(parties)
    vc["credentialSubject"]["favourite_colour"] = "teal"
    with pytest.raises(TesseraError) as err:
        di.issue(vc, signer=parties["issuer"], cryptosuite="eddsa-rdfc-2022",
                 verification_method=parties["issuer"].key_id, created=NOW)
    assert err.value.code == ErrorCode.SCHEMA_INVALID
    assert "favourite_colour" in err.value.detail
    with pytest.raises(TesseraError) as err:
        di.issue(_membership(parties), signer=parties["issuer"], cryptosuite="bbs-2023",
                 verification_method=parties["issuer"].key_id, created=NOW)
    assert err.value.code == ErrorCode.UNSUPPORTED_ALGORITHM


def test_sd_loyalty_reveals_only_chosen_claims(parties: dict[str, Any]) -> None:
    base = _issue(parties, "ecdsa-sd-2023")
    derived = di.derive(base, selective_pointers=["/credentialSubject/tier_at_least_gold"])
    subject = derived["credentialSubject"]
    assert subject == {"id": parties["holder_did"], "tier_at_least_gold": True}
    assert {"issuer", "type", "validFrom", "validUntil", "credentialStatus"} <= derived.keys()
    out = di.verify_credential(derived, key_lookup=_lookup(parties), now=NOW)
    assert "membership_number" not in out["credentialSubject"]
    # adding a claim the holder did not choose breaks the proof
    forged = copy.deepcopy(derived)
    forged["credentialSubject"]["tier_at_least_platinum"] = False
    with pytest.raises(TesseraError) as err:
        di.verify_credential(forged, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE
    # and so does changing a revealed value
    forged = copy.deepcopy(derived)
    forged["credentialSubject"]["tier_at_least_gold"] = False
    with pytest.raises(TesseraError) as err:
        di.verify_credential(forged, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


def test_sd_mandatory_claims_cannot_be_withheld(parties: dict[str, Any]) -> None:
    derived = di.derive(_issue(parties, "ecdsa-sd-2023"), selective_pointers=[])
    withheld = copy.deepcopy(derived)
    del withheld["validUntil"]
    with pytest.raises(TesseraError) as err:
        di.verify_credential(withheld, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


# -- presentations ----------------------------------------------------------------


def _vp(parties: dict[str, Any], creds: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return di.present(creds, signer=parties["holder"], holder=parties["holder_did"],
                      challenge=kw.get("challenge", "n-123"),
                      domain=kw.get("domain", "partner.example"), created=NOW)


def test_presentation_roundtrip_with_sd_and_full_credentials(parties: dict[str, Any]) -> None:
    derived = di.derive(_issue(parties, "ecdsa-sd-2023"),
                        selective_pointers=["/credentialSubject/tier_at_least_silver"])
    vp = _vp(parties, [derived, _issue(parties)])
    out = di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                                 domain="partner.example", now=NOW)
    assert out[0]["credentialSubject"]["tier_at_least_silver"] is True
    assert len(out) == 2


@pytest.mark.parametrize(
    ("kw", "mutate", "code"),
    [
        ({"challenge": "other"}, None, ErrorCode.NONCE_MISMATCH),
        ({"domain": "evil.example"}, None, ErrorCode.AUDIENCE_MISMATCH),
        ({}, lambda vp: vp["proof"].update(challenge="n-999"), ErrorCode.NONCE_MISMATCH),
        ({}, lambda vp: vp["verifiableCredential"][0]["credentialSubject"].update(
            tier_at_least_platinum=True), ErrorCode.INVALID_SIGNATURE),
        ({}, lambda vp: vp.update(holder="did:key:z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"),  # noqa: E501
         ErrorCode.KEY_BINDING_INVALID),
        ({}, lambda vp: vp["proof"].update(proofPurpose="assertionMethod"),
         ErrorCode.INVALID_SIGNATURE),
    ],
)
def test_presentation_failures(parties: dict[str, Any], kw: dict[str, str], mutate: Any,
                               code: ErrorCode) -> None:
    vp = _vp(parties, [_issue(parties)])
    if mutate:
        mutate(vp)
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(vp, key_lookup=_lookup(parties),
                               challenge=kw.get("challenge", "n-123"),
                               domain=kw.get("domain", "partner.example"), now=NOW)
    assert err.value.code == code, err.value.detail


def test_presentation_of_someone_elses_credential_is_refused(parties: dict[str, Any]) -> None:
    other = generate_signer("EdDSA")
    other_did = did_key(other.public_key)
    other = other.with_key_id(f"{other_did}#{other_did[8:]}")
    vp = di.present([_issue(parties)], signer=other, holder=other_did, challenge="c",
                    domain="d", created=NOW)
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="c", domain="d", now=NOW)
    assert err.value.code == ErrorCode.KEY_BINDING_INVALID


def test_presentation_checks_expiry_of_embedded_credentials(parties: dict[str, Any]) -> None:
    vc = _issue(parties, valid_until=NOW - timedelta(days=1), valid_from=NOW - timedelta(days=30))
    vp = _vp(parties, [vc])
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                               domain="partner.example", now=NOW)
    assert err.value.code == ErrorCode.EXPIRED


# -- issue 9: field hardening ------------------------------------------------------

V1_ONLY = "https://www.w3.org/2018/credentials/v1"


def _v1_credential(parties: dict[str, Any]) -> dict[str, Any]:
    return {"@context": [V1_ONLY], "type": ["VerifiableCredential"],
            "issuer": parties["issuer_did"], "issuanceDate": "2025-01-01T00:00:00Z",
            "credentialSubject": {"id": parties["holder_did"]}}


def test_vcdm_1_1_credential_gets_the_data_integrity_context_and_a_covered_proof(
    parties: dict[str, Any],
) -> None:
    # Before: credentials/v1 alone left every proof term undefined, the proof
    # configuration canonicalized to "", and a changed `created` still verified.
    signer = parties["issuer"]
    vc = di.issue(_v1_credential(parties), signer=signer, cryptosuite="eddsa-rdfc-2022",
                  verification_method=signer.key_id, created=NOW)
    assert vc["@context"] == [V1_ONLY, jsonld.DATA_INTEGRITY_V2]
    assert jsonld.canonicalize(di._proof_config(
        {k: v for k, v in vc.items() if k != "proof"}, vc["proof"])) != ""
    di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)
    for field, value in (("created", "2020-01-01T00:00:00Z"),
                         ("verificationMethod", signer.key_id + "x")):
        tampered = copy.deepcopy(vc)
        tampered["proof"][field] = value
        with pytest.raises(TesseraError) as err:
            di.verify_credential(tampered, key_lookup=lambda vm, rel: signer.public_key, now=NOW)
        assert err.value.code == ErrorCode.INVALID_SIGNATURE, field
    # A document already carrying credentials/v2 or data-integrity/v2 is left alone.
    v2 = di.issue(_membership(parties), signer=signer, cryptosuite="eddsa-rdfc-2022",
                  verification_method=signer.key_id, created=NOW)
    assert jsonld.DATA_INTEGRITY_V2 not in v2["@context"]


def _unprotected_proof(parties: dict[str, Any]) -> dict[str, Any]:
    """What Tessera issued before: a DataIntegrityProof under credentials/v1 only."""
    signer = parties["issuer"]
    unsecured = _v1_credential(parties)
    proof = di._new_proof("eddsa-rdfc-2022", verification_method=signer.key_id,
                          created=NOW, purpose="assertionMethod")
    proof = di._sign_proof(unsecured, proof, signer, "eddsa-rdfc-2022", None)
    return {**unsecured, "proof": proof}


def test_a_proof_whose_terms_the_context_drops_is_refused_at_verify(
    parties: dict[str, Any],
) -> None:
    vc = _unprotected_proof(parties)
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.SCHEMA_INVALID
    # The presentation verifier says the same of it.
    with pytest.raises(TesseraError) as vp_err:
        di.verify_presentation(_vp(parties, [vc]), key_lookup=_lookup(parties),
                               challenge="n-123", domain="partner.example", now=NOW)
    assert vp_err.value.code == ErrorCode.SCHEMA_INVALID


def test_a_legacy_suite_without_its_context_is_refused_at_issue(parties: dict[str, Any]) -> None:
    signer = parties["issuer"]
    with pytest.raises(TesseraError) as err:
        di.issue(_v1_credential(parties), signer=signer, cryptosuite="Ed25519Signature2020",
                 verification_method=signer.key_id, created=NOW)
    assert err.value.code == ErrorCode.SCHEMA_INVALID


def test_ecdsa_sd_default_pointers_work_for_a_subject_with_only_an_id(
    parties: dict[str, Any],
) -> None:
    signer = parties["issuer_p256"]
    vc = {"@context": [jsonld.CREDENTIALS_V2], "type": ["VerifiableCredential"],
          "issuer": parties["issuer_p256_did"], "validFrom": "2025-01-01T00:00:00Z",
          "credentialSubject": {"id": parties["holder_did"]}}
    base = di.issue(vc, signer=signer, cryptosuite="ecdsa-sd-2023",
                    verification_method=signer.key_id, created=NOW)
    derived = di.derive(base, selective_pointers=[])
    out = di.verify_credential(derived, key_lookup=_lookup(parties), now=NOW)
    assert out["credentialSubject"] == {"id": parties["holder_did"]}
    # The subject id is mandatory: a derived proof without it does not verify.
    stripped = copy.deepcopy(derived)
    stripped["credentialSubject"] = {"id": "did:example:mallory"}
    with pytest.raises(TesseraError):
        di.verify_credential(stripped, key_lookup=_lookup(parties), now=NOW)


def test_presentation_holder_may_be_an_object_with_an_id(parties: dict[str, Any]) -> None:
    vp = _vp(parties, [_issue(parties)])
    # {"id": X} and X are the same RDF statement, so the holder proof still covers it.
    vp["holder"] = {"id": parties["holder_did"]}
    out = di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                                 domain="partner.example", now=NOW)
    assert len(out) == 1
    for bad in ({"name": "no id"}, 42):
        vp["holder"] = bad
        with pytest.raises(TesseraError) as err:
            di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                                   domain="partner.example", now=NOW)
        assert err.value.code == ErrorCode.MALFORMED
    del vp["holder"]
    with pytest.raises(TesseraError) as missing:
        di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                               domain="partner.example", now=NOW)
    assert missing.value.code == ErrorCode.KEY_BINDING_MISSING


def _plain_v2(parties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"@context": [jsonld.CREDENTIALS_V2], "type": ["VerifiableCredential"],
            "issuer": parties["issuer_did"], "validFrom": "2025-01-01T00:00:00Z",
            "credentialSubject": {"id": parties["holder_did"]}, **extra}


def _sign(parties: dict[str, Any], vc: dict[str, Any]) -> dict[str, Any]:
    signer = parties["issuer"]
    return di.issue(vc, signer=signer, cryptosuite="eddsa-rdfc-2022",
                    verification_method=signer.key_id, created=NOW)


def test_credential_schema_needs_an_id(parties: dict[str, Any]) -> None:
    with pytest.raises(TesseraError) as err:
        _sign(parties, _plain_v2(parties, credentialSchema={"type": "JsonSchema"}))
    assert err.value.code == ErrorCode.MALFORMED and "credentialSchema" in err.value.detail
    with pytest.raises(TesseraError):
        _sign(parties, _plain_v2(parties, credentialSchema=[
            {"id": "https://example.org/s.json", "type": "JsonSchema"}, {"type": "JsonSchema"}]))
    # At verify too: a signed credential whose schema has no id is refused.
    good = _plain_v2(parties, credentialSchema={"id": "https://example.org/s.json",
                                                "type": "JsonSchema"})
    unsecured = _plain_v2(parties, credentialSchema={"type": "JsonSchema"})
    proof = di._new_proof("eddsa-rdfc-2022", verification_method=parties["issuer"].key_id,
                          created=NOW, purpose="assertionMethod")
    bad = {**unsecured, "proof": di._sign_proof(unsecured, proof, parties["issuer"],
                                                "eddsa-rdfc-2022", None)}
    di.verify_credential(_sign(parties, good), key_lookup=_lookup(parties), now=NOW)
    with pytest.raises(TesseraError) as verr:
        di.verify_credential(bad, key_lookup=_lookup(parties), now=NOW)
    assert verr.value.code == ErrorCode.MALFORMED


# The W3C vc-data-model-2.0 suite's values for the published credentials/v2 file.
V2_SRI = "sha384-NSOcNpmdIVUxIJGvGUoe22FjTWrXiaXlsZ8q6912LdnR3KraQO2n75Ica4wK4Qeg"
V2_MULTIBASE = "uJKGMkOmFbVJhEfKTduMC2XCyvRAYLjOVmZWwIH1wQ7k"
V2 = jsonld.CREDENTIALS_V2


def _loyalty_sri(alg: str = "sha256") -> str:
    import base64
    from pathlib import Path

    from schemas import path

    raw = Path(path("contexts/loyalty-v1.jsonld")).read_bytes()
    return f"{alg}-" + base64.b64encode(hashlib.new(alg, raw).digest()).decode()


@pytest.mark.parametrize("related", [
    {"id": V2, "digestSRI": V2_SRI},
    {"id": V2, "digestMultibase": V2_MULTIBASE},
    [{"id": V2, "mediaType": "application/ld+json", "digestSRI": V2_SRI}],
    {"id": jsonld.LOYALTY_V1, "digestSRI": _loyalty_sri()},
    {"id": jsonld.LOYALTY_V1, "digestSRI": _loyalty_sri("sha512") + " " + _loyalty_sri()},
    # not held here: shape only, nothing fetched
    {"id": "https://example.org/logo.png", "digestMultibase": "u" + "AQ" * 21 + "A"},
    {"id": "https://example.org/logo.png", "digestSRI": "sha3-AAAA"},
    [{"id": "https://example.org/a", "digestSRI": V2_SRI},
     {"id": "https://example.org/b", "digestSRI": V2_SRI}],
])
def test_related_resource_accepted(parties: dict[str, Any], related: Any) -> None:
    vc = _sign(parties, _plain_v2(parties, relatedResource=related))
    di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)


@pytest.mark.parametrize("related", [
    [V2],  # an array of strings
    [{"digestMultibase": V2_MULTIBASE}],  # no id
    [{"id": V2, "digestSRI": V2_SRI}, {"id": V2, "digestMultibase": V2_MULTIBASE}],  # duplicate
    [{"id": V2}],  # no digest
    [{"id": V2, "digestMultibase": "uM4RgWQc3RUDtjJCSgTJtTfvpZ7SPEg_LNO0ESlovQC0"}],  # wrong
    [{"id": V2, "digestSRI": "sha384-_rCVIV7fSXXTNIvpiq26jRDyj8JG8TDjij-tD0ewLk4J"
                             "pnXEz6a5AeeY_1qQ0d0P"}],  # not even base64
    [{"id": V2, "digestSRI": "sha384-" + "A" * 64}],  # well-formed, wrong
    [{"id": jsonld.LOYALTY_V1, "digestSRI": _loyalty_sri()[:-4] + "AAA="}],
    [{"id": V2, "digestSRI": "md5-AAAAAAAAAAAAAAAAAAAAAA=="}],
    [],
])
def test_related_resource_refused_at_issue_and_verify(parties: dict[str, Any],
                                                      related: Any) -> None:
    with pytest.raises(TesseraError) as err:
        _sign(parties, _plain_v2(parties, relatedResource=related))
    assert err.value.code == ErrorCode.MALFORMED
    unsecured = _plain_v2(parties, relatedResource=related)
    proof = di._new_proof("eddsa-rdfc-2022", verification_method=parties["issuer"].key_id,
                          created=NOW, purpose="assertionMethod")
    signed = {**unsecured, "proof": di._sign_proof(unsecured, proof, parties["issuer"],
                                                   "eddsa-rdfc-2022", None)}
    with pytest.raises(TesseraError) as verr:
        di.verify_credential(signed, key_lookup=_lookup(parties), now=NOW)
    assert verr.value.code == ErrorCode.MALFORMED


def test_pinned_context_files(tmp_path: Any, parties: dict[str, Any]) -> None:
    import base64

    url = "https://partner.example/ctx/v1"
    ctx = {"@context": {"@protected": True, "shoeSize": "https://partner.example/vocab#shoeSize"}}
    raw = json.dumps(ctx).encode()
    (tmp_path / "ctx.jsonld").write_bytes(raw)
    pin = "sha256-" + base64.b64encode(hashlib.sha256(raw).digest()).decode()
    loader = jsonld.DocumentLoader.from_files({url: (tmp_path / "ctx.jsonld", pin)})
    vc = {"@context": [V2, url], "type": ["VerifiableCredential"], "issuer": parties["issuer_did"],
          "credentialSubject": {"id": parties["holder_did"], "shoeSize": 42},
          "relatedResource": {"id": url, "digestSRI": pin}}
    signer = parties["issuer"]
    signed = di.issue(vc, signer=signer, cryptosuite="eddsa-rdfc-2022",
                      verification_method=signer.key_id, created=NOW, loader=loader)
    assert di.verify_credential(signed, key_lookup=_lookup(parties), now=NOW,
                                loader=loader)["credentialSubject"]["shoeSize"] == 42
    with pytest.raises(TesseraError) as err:
        di.verify_credential(signed, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.UNSUPPORTED_FORMAT
    # The manifest form, relative to its own directory.
    (tmp_path / "contexts.json").write_text(json.dumps({url: {"file": "ctx.jsonld",
                                                              "digestSRI": pin}}))
    by_manifest = jsonld.DocumentLoader.from_manifest(tmp_path / "contexts.json")
    di.verify_credential(signed, key_lookup=_lookup(parties), now=NOW, loader=by_manifest)
    # A file that is not what was pinned is refused when the loader is made.
    (tmp_path / "ctx.jsonld").write_bytes(raw.replace(b"42", b"43") + b" ")
    with pytest.raises(TesseraError) as pin_err:
        jsonld.DocumentLoader.from_manifest(tmp_path / "contexts.json")
    assert pin_err.value.code == ErrorCode.INVALID_REQUEST
    for bad_pin in ("sha1-abc", "sha256-not base64", ""):
        with pytest.raises(TesseraError):
            jsonld.DocumentLoader.from_files({url: (tmp_path / "ctx.jsonld", bad_pin)})
    with pytest.raises(TesseraError):
        jsonld.DocumentLoader.from_files({V2: (tmp_path / "ctx.jsonld", pin)})


def test_issuer_key_policy_has_its_own_code_and_a_switch(parties: dict[str, Any]) -> None:
    vc = _issue(parties)
    vc["issuer"] = "https://acme.example"  # signed before, so the signature breaks too
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW)
    assert err.value.code == ErrorCode.ISSUER_KEY_MISMATCH
    # Policy off: the foreign key is looked at, and here the signature is what fails.
    with pytest.raises(TesseraError) as off:
        di.verify_credential(vc, key_lookup=_lookup(parties), now=NOW,
                             issuer_must_control_key=False)
    assert off.value.code == ErrorCode.INVALID_SIGNATURE
    # A credential signed as an https issuer with a did:key verifies with the policy off.
    unsigned = _membership(parties)
    unsigned["issuer"] = "https://acme.example"
    signer = parties["issuer"]
    signed = di.issue(unsigned, signer=signer, cryptosuite="eddsa-rdfc-2022",
                      verification_method=signer.key_id, created=NOW)
    di.verify_credential(signed, key_lookup=_lookup(parties), now=NOW,
                         issuer_must_control_key=False)
    vp = _vp(parties, [signed])
    with pytest.raises(TesseraError) as vp_err:
        di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                               domain="partner.example", now=NOW)
    assert vp_err.value.code == ErrorCode.ISSUER_KEY_MISMATCH
    di.verify_presentation(vp, key_lookup=_lookup(parties), challenge="n-123",
                           domain="partner.example", now=NOW, issuer_must_control_key=False)


def test_key_lookup_docstring_matches_resolver_key() -> None:
    import inspect

    # Resolver.key takes relationship by keyword only: the docstring must not say it fits.
    assert inspect.signature(Resolver.key).parameters["relationship"].kind is \
        inspect.Parameter.KEYWORD_ONLY
    assert "relationship=rel" in (di.__doc__ or "") + str(
        inspect.getsource(di).split("KeyLookup = ", 1)[1][:400])
