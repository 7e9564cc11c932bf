"""W3C Data Integrity proofs on JSON-LD credentials and presentations.

Cryptosuites (each one issue / verify; ``derive`` for selective disclosure):

* ``eddsa-rdfc-2022`` (W3C vc-di-eddsa §3.3) and ``ecdsa-rdfc-2019`` with
  P-256 (W3C vc-di-ecdsa §3.2): RDFC-1.0 of the proof configuration and of
  the document, SHA-256 each, ``proofHash || docHash`` signed, multibase
  base58btc ``proofValue``.
* ``ecdsa-sd-2023`` (vc-di-ecdsa §3.3-3.5, with the selective disclosure
  functions of vc-di-data-integrity §3.4): the issuer signs every
  non-mandatory N-Quad with a one-time P-256 key and the mandatory ones
  through a base signature; blank nodes are relabelled by HMAC so a verifier
  learns nothing from their numbering; the holder derives a proof revealing
  the mandatory claims plus the ones it chooses.
* ``Ed25519Signature2020`` and ``JsonWebSignature2020`` on VCDM 1.1, the
  suites didkit speaks, for interop.

Every document is checked with :func:`tessera.jsonld.check_all_terms_defined`
before it is signed and before a verified claim is returned, because pyld
drops undefined terms without a word and a signature over less than the JSON
shows would be worse than none.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from tessera import jsonld
from tessera.credentials import CredentialType, by_name
from tessera.did import base58btc_decode, base58btc_encode, multikey_decode, multikey_encode
from tessera.encoding import b64url_decode, b64url_encode, parse_datetime, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey, generate_signer
from tessera.typing import Signer

__all__ = [
    "DEFAULT_MANDATORY_POINTERS",
    "KeyLookup",
    "check_data_model",
    "derive",
    "holder_of",
    "issue",
    "loyalty_credential",
    "present",
    "verify_credential",
    "verify_presentation",
]

KeyLookup = Callable[[str, str], PublicKey]
"""``(verification_method_id, relationship) -> PublicKey``, called positionally.

:meth:`tessera.did.Resolver.key` takes ``relationship`` by keyword only, so wrap
it: ``lambda vm, rel: resolver.key(vm, relationship=rel)``.
"""

EDDSA_RDFC_2022: Final = "eddsa-rdfc-2022"
ECDSA_RDFC_2019: Final = "ecdsa-rdfc-2019"
ECDSA_SD_2023: Final = "ecdsa-sd-2023"
ED25519_2020: Final = "Ed25519Signature2020"
JWS_2020: Final = "JsonWebSignature2020"
_SUITES: Final = frozenset(
    {EDDSA_RDFC_2022, ECDSA_RDFC_2019, ECDSA_SD_2023, ED25519_2020, JWS_2020})

# Claims every derived proof must reveal: who issued it, what it is, when it
# is valid, where its status lives, and whom it is about (holder binding).
DEFAULT_MANDATORY_POINTERS: Final[tuple[str, ...]] = (
    "/issuer", "/type", "/validFrom", "/validUntil", "/credentialStatus",
    "/credentialSchema", "/credentialSubject/id",
)

_SD_BASE_HEADER: Final = bytes([0xD9, 0x5D, 0x00])  # CBOR tag 23808 (vc-di-ecdsa §3.5.2)
_SD_DERIVED_HEADER: Final = bytes([0xD9, 0x5D, 0x01])  # CBOR tag 23809 (§3.5.6)
_MAX_POINTERS: Final = 256
_MAX_SIGNATURES: Final = 4096
_MAX_PROOFS: Final = 8  # a proof set or chain; each proof costs two canonicalizations


def _err(code: ErrorCode, detail: str) -> TesseraError:
    return TesseraError(code, detail)


def _sha256(data: str | bytes) -> bytes:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).digest()


def _xsd_datetime(when: datetime) -> str:
    if when.tzinfo is None:
        raise _err(ErrorCode.MALFORMED, "datetimes must be timezone-aware")
    return when.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _contexts(doc: dict[str, Any]) -> list[Any]:
    ctx = doc.get("@context")
    if isinstance(ctx, list):
        return ctx
    if ctx is None:
        raise _err(ErrorCode.MALFORMED, "document has no @context")
    return [ctx]


# -- minimal strict CBOR (RFC 8949) for the ecdsa-sd-2023 proof values -------------


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([(major << 5) | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([(major << 5) | info]) + n.to_bytes(size, "big")
    raise _err(ErrorCode.MALFORMED, "CBOR integer too large")


def _cbor_encode(value: Any) -> bytes:
    if isinstance(value, bool) or value is None:
        raise _err(ErrorCode.MALFORMED, "unsupported CBOR value")
    if isinstance(value, int) and value >= 0:
        return _cbor_head(0, value)
    if isinstance(value, bytes):
        return _cbor_head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _cbor_head(3, len(raw)) + raw
    if isinstance(value, list):
        return _cbor_head(4, len(value)) + b"".join(_cbor_encode(v) for v in value)
    if isinstance(value, dict):
        # Deterministic encoding (RFC 8949 §4.2.1): keys in bytewise order.
        items = sorted((_cbor_encode(k), _cbor_encode(v)) for k, v in value.items())
        return _cbor_head(5, len(value)) + b"".join(k + v for k, v in items)
    raise _err(ErrorCode.MALFORMED, "unsupported CBOR value")


def _cbor_decode(data: bytes) -> Any:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise _err(ErrorCode.MALFORMED, "truncated CBOR")
        out = data[pos:pos + n]
        pos += n
        return out

    def item(depth: int) -> Any:
        if depth > 4:
            raise _err(ErrorCode.MALFORMED, "CBOR nested too deeply")
        first = take(1)[0]
        major, info = first >> 5, first & 0x1F
        if info < 24:
            n = info
        elif info in (24, 25, 26, 27):
            n = int.from_bytes(take(1 << (info - 24)), "big")
        else:
            raise _err(ErrorCode.MALFORMED, "indefinite or reserved CBOR length")
        if major == 0:
            return n
        if major == 2:
            return take(n)
        if major == 3:
            try:
                return take(n).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _err(ErrorCode.MALFORMED, "bad UTF-8 in CBOR") from exc
        if major == 4:
            if n > _MAX_SIGNATURES:
                raise _err(ErrorCode.TOO_LARGE, "CBOR array too long")
            return [item(depth + 1) for _ in range(n)]
        if major == 5:
            if n > _MAX_SIGNATURES:
                raise _err(ErrorCode.TOO_LARGE, "CBOR map too long")
            out: dict[Any, Any] = {}
            for _ in range(n):
                key = item(depth + 1)
                if not isinstance(key, int | str) or key in out:
                    raise _err(ErrorCode.MALFORMED, "bad or duplicate CBOR map key")
                out[key] = item(depth + 1)
            return out
        raise _err(ErrorCode.MALFORMED, "unsupported CBOR type")

    value = item(0)
    if pos != len(data):
        raise _err(ErrorCode.MALFORMED, "trailing bytes after CBOR")
    return value


# -- proof plumbing ----------------------------------------------------------------


def _proof_config(doc: dict[str, Any], proof: dict[str, Any]) -> dict[str, Any]:
    config = {k: v for k, v in proof.items() if k not in ("proofValue", "jws")}
    if "@context" in proof:
        # vc-di-eddsa §3.3.x: a proof-level @context must be a prefix of the
        # document's; legacy suites (didkit) put the suite context only there.
        if proof.get("type") == "DataIntegrityProof":
            pc = proof["@context"] if isinstance(proof["@context"], list) else [proof["@context"]]
            if _contexts(doc)[: len(pc)] != pc:
                raise _err(ErrorCode.MALFORMED, "proof @context does not match the document")
            config["@context"] = _contexts(doc)
        else:
            # didkit (ssi) appends the suite context after the document's.
            pc = proof["@context"] if isinstance(proof["@context"], list) else [proof["@context"]]
            doc_ctx = _contexts(doc)
            config["@context"] = doc_ctx + [c for c in pc if c not in doc_ctx]
    else:
        config["@context"] = _contexts(doc)
    return config


def _with_suite_context(doc: dict[str, Any], suite: str) -> dict[str, Any]:
    """Data Integrity 1.0 "Context Injection" (#context-injection), DataIntegrityProof suites.

    "if an @context property is not provided in the document or the Data
    Integrity terms used in the document are not mapped by existing values in
    the @context property, implementations SHOULD inject or append" the
    data-integrity v2 context. A VCDM 1.1 credential (credentials/v1 only)
    is such a document; without the context its proof configuration would
    canonicalize to nothing and ``created``, ``verificationMethod`` and
    ``proofPurpose`` would go unsigned. Digital Bazaar's libraries append it too.
    """
    if suite not in (EDDSA_RDFC_2022, ECDSA_RDFC_2019, ECDSA_SD_2023):
        return doc
    if "@context" not in doc:
        return {"@context": [jsonld.DATA_INTEGRITY_V2], **doc}
    contexts = _contexts(doc)
    if jsonld.CREDENTIALS_V2 in contexts or jsonld.DATA_INTEGRITY_V2 in contexts:
        return doc
    return {**doc, "@context": [*contexts, jsonld.DATA_INTEGRITY_V2]}


def _check_proof_terms(unsecured: dict[str, Any], proof: dict[str, Any],
                       loader: jsonld.DocumentLoader | None) -> None:
    """Refuse a proof whose configuration the document's contexts do not fully define.

    Data Integrity 1.0 "Securing Data Losslessly" (#securing-data-losslessly):
    implementations "MUST throw an error ... when data is dropped by a JSON-LD
    processor, such as when an undefined term is detected". What pyld drops
    is not signed, so a proof with an undefined term (``created`` under
    credentials/v1 alone) protects less than it shows. Checked at issue and at
    verify, for credentials and presentations alike.
    """
    jsonld.check_all_terms_defined(_proof_config(unsecured, proof), loader=loader)


def _hash_data(unsecured: dict[str, Any], proof: dict[str, Any],
               loader: jsonld.DocumentLoader | None) -> bytes:
    config_c14n = jsonld.canonicalize(_proof_config(unsecured, proof), loader=loader)
    doc_c14n = jsonld.canonicalize(unsecured, loader=loader)
    return _sha256(config_c14n) + _sha256(doc_c14n)


def _suite_of(proof: dict[str, Any]) -> str:
    ptype = proof.get("type")
    if ptype == "DataIntegrityProof":
        suite = proof.get("cryptosuite")
        if suite in (EDDSA_RDFC_2022, ECDSA_RDFC_2019, ECDSA_SD_2023):
            return str(suite)
        raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported cryptosuite {str(suite)[:40]!r}")
    if ptype in (ED25519_2020, JWS_2020):
        return str(ptype)
    raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported proof type {str(ptype)[:40]!r}")


def _check_key_for_suite(key: PublicKey, suite: str) -> None:
    want = {EDDSA_RDFC_2022: "Ed25519", ED25519_2020: "Ed25519",
            ECDSA_RDFC_2019: "P-256", ECDSA_SD_2023: "P-256"}.get(suite)
    if want is not None and key.crv != want:
        raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, f"{suite} needs a {want} key, not {key.crv}")


def _new_proof(suite: str, *, verification_method: str, created: datetime, purpose: str,
               challenge: str | None = None, domain: str | None = None) -> dict[str, Any]:
    if suite in (ED25519_2020, JWS_2020):
        proof: dict[str, Any] = {"type": suite}
    else:
        proof = {"type": "DataIntegrityProof", "cryptosuite": suite}
    proof.update({"created": _xsd_datetime(created), "verificationMethod": verification_method,
                  "proofPurpose": purpose})
    if challenge is not None:
        proof["challenge"] = challenge
    if domain is not None:
        proof["domain"] = domain
    return proof


def _jws_signing_input(header: dict[str, Any], hash_data: bytes) -> bytes:
    from tessera.encoding import canonical_json

    return b64url_encode(canonical_json(header)).encode("ascii") + b"." + hash_data


def _sign_proof(unsecured: dict[str, Any], proof: dict[str, Any], signer: Signer,
                suite: str, loader: jsonld.DocumentLoader | None) -> dict[str, Any]:
    _check_key_for_suite(signer.public_key, suite)
    hash_data = _hash_data(unsecured, proof, loader)
    if suite == JWS_2020:
        # Detached JWS with unencoded payload (RFC 7797), as the 2020 suite defines.
        header = {"alg": signer.alg, "b64": False, "crit": ["b64"]}
        sig = signer.sign(_jws_signing_input(header, hash_data))
        from tessera.encoding import canonical_json

        proof["jws"] = f"{b64url_encode(canonical_json(header))}..{b64url_encode(sig)}"
    else:
        proof["proofValue"] = "z" + base58btc_encode(signer.sign(hash_data))
    return proof


def _verify_proof_signature(unsecured: dict[str, Any], proof: dict[str, Any], key: PublicKey,
                            suite: str, loader: jsonld.DocumentLoader | None) -> None:
    _check_key_for_suite(key, suite)
    hash_data = _hash_data(unsecured, proof, loader)
    if suite == JWS_2020:
        jws = proof.get("jws")
        if not isinstance(jws, str) or jws.count(".") != 2:
            raise _err(ErrorCode.MALFORMED, "JsonWebSignature2020 proof has no detached jws")
        head_b64, payload, sig_b64 = jws.split(".")
        if payload:
            raise _err(ErrorCode.MALFORMED, "jws payload must be detached")
        header = parse_json_object(b64url_decode(head_b64, max_len=2048))
        if header.get("b64") is not False or header.get("crit") != ["b64"]:
            raise _err(ErrorCode.MALFORMED, "jws must use b64=false with crit")
        if header.get("alg") != key.alg:
            raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, "jws alg does not match the key")
        key.verify(b64url_decode(sig_b64, max_len=512),
                   head_b64.encode("ascii") + b"." + hash_data)
        return
    value = proof.get("proofValue")
    if not isinstance(value, str) or not value.startswith("z"):
        raise _err(ErrorCode.MALFORMED, "proofValue must be multibase base58btc")
    key.verify(base58btc_decode(value[1:]), hash_data)


# -- issue ---------------------------------------------------------------------------


@jsonld.metered
def issue(
    credential: dict[str, Any],
    *,
    signer: Signer,
    cryptosuite: str,
    verification_method: str,
    created: datetime,
    mandatory_pointers: Sequence[str] | None = None,
    proof_purpose: str = "assertionMethod",
    loader: jsonld.DocumentLoader | None = None,
) -> dict[str, Any]:
    """Sign ``credential`` (no ``proof`` yet) with one cryptosuite.

    For ``ecdsa-sd-2023`` the result carries the issuer's *base* proof,
    which is for the holder only; ``mandatory_pointers`` default to those of
    :data:`DEFAULT_MANDATORY_POINTERS` present in the credential.

    For the ``DataIntegrityProof`` suites a document whose contexts lack
    both credentials/v2 and data-integrity/v2 gets the latter appended (Data
    Integrity "Context Injection"), so the returned credential's ``@context``
    can differ from the input's. Any proof term still undefined is
    ``schema_invalid``.
    """
    if cryptosuite not in _SUITES:
        raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported cryptosuite {cryptosuite!r}")
    if "proof" in credential:
        raise _err(ErrorCode.MALFORMED, "credential already has a proof")
    unsecured = _with_suite_context(copy.deepcopy(credential), cryptosuite)
    jsonld.check_all_terms_defined(unsecured, loader=loader)
    check_data_model(unsecured, loader=loader)
    proof = _new_proof(cryptosuite, verification_method=verification_method,
                       created=created, purpose=proof_purpose)
    _check_proof_terms(unsecured, proof, loader)
    if cryptosuite == ECDSA_SD_2023:
        if mandatory_pointers is None:
            mandatory_pointers = [p for p in DEFAULT_MANDATORY_POINTERS
                                  if _pointer_exists(unsecured, p)]
        proof["proofValue"] = _sd_base_proof_value(
            unsecured, proof, signer, list(mandatory_pointers), loader,
            hmac_key=os.urandom(32), ephemeral=None,
        )
    else:
        proof = _sign_proof(unsecured, proof, signer, cryptosuite, loader)
    return {**unsecured, "proof": proof}


# -- JSON pointers and selection (vc-di-data-integrity §3.4.11-3.4.13) --------------


def _parse_pointer(pointer: str) -> list[str | int]:
    if not isinstance(pointer, str) or not pointer.startswith("/") or len(pointer) > 512:
        raise _err(ErrorCode.MALFORMED, f"not a JSON pointer: {str(pointer)[:60]!r}")
    out: list[str | int] = []
    for raw in pointer[1:].split("/"):
        seg = raw.replace("~1", "/").replace("~0", "~")
        out.append(int(seg) if re.fullmatch(r"0|[1-9][0-9]{0,5}", seg) else seg)
    return out


def _step(value: Any, seg: str | int) -> Any:
    if isinstance(value, list) and isinstance(seg, int) and seg < len(value):
        return value[seg]
    if isinstance(value, dict) and str(seg) in value:
        return value[str(seg)]
    raise KeyError(seg)


def _pointer_exists(doc: dict[str, Any], pointer: str) -> bool:
    value: Any = doc
    try:
        for seg in _parse_pointer(pointer):
            value = _step(value, seg)
    except KeyError:
        return False
    return True


def _init_selection(source: Any) -> dict[str, Any]:
    selection: dict[str, Any] = {}
    if isinstance(source, dict):
        if isinstance(source.get("id"), str) and not source["id"].startswith("_:"):
            selection["id"] = source["id"]
        if "type" in source:
            selection["type"] = copy.deepcopy(source["type"])
    return selection


def _select(document: dict[str, Any], pointers: Iterable[str]) -> dict[str, Any] | None:
    """selectJsonLd: the sub-document holding exactly what ``pointers`` name."""
    pointers = list(pointers)
    if not pointers:
        return None
    selection = _init_selection(document)
    selection["@context"] = copy.deepcopy(document["@context"])
    arrays: list[list[Any]] = []
    for pointer in pointers:
        paths = _parse_pointer(pointer)
        value: Any = document
        sel_parent: Any = selection
        sel_value: Any = selection
        held_by: tuple[Any, Any] | None = None
        for n, seg in enumerate(paths):
            if (isinstance(value, str) and seg == "id" and n == len(paths) - 1
                    and held_by is not None):
                # Compaction writes a node that has nothing but an id (a subject
                # with only "id") as that IRI string; its "id" is the string,
                # and selecting the string selects the very same quad.
                held_by[0][held_by[1]] = value
                break
            sel_parent = sel_value
            try:
                value = _step(value, seg)
            except KeyError:
                raise _err(ErrorCode.MALFORMED,
                           f"JSON pointer {pointer!r} does not match") from None
            key: Any = seg if isinstance(sel_parent, list) else str(seg)
            present = isinstance(sel_parent, list) or key in sel_parent
            current = sel_parent[key] if present else None
            if current is None:
                if isinstance(value, list):
                    current = [None] * len(value)
                    arrays.append(current)
                else:
                    current = _init_selection(value)
                sel_parent[key] = current
            held_by = (sel_parent, key)
            sel_value = current
        else:
            last = paths[-1] if isinstance(sel_parent, list) else str(paths[-1])
            if isinstance(value, dict):
                sel_parent[last] = {**sel_value, **copy.deepcopy(value)}
            else:
                sel_parent[last] = copy.deepcopy(value)
    for array in arrays:
        array[:] = [v for v in array if v is not None]
    return selection


# -- skolemization and canonicalize-and-group (§3.4.1-3.4.8) ------------------------


def _skolemize_expanded(expanded: Any, prefix: str, counter: list[int]) -> Any:
    if isinstance(expanded, list):
        return [_skolemize_expanded(v, prefix, counter) for v in expanded]
    if not isinstance(expanded, dict) or "@value" in expanded:
        return expanded
    node = {k: _skolemize_expanded(v, prefix, counter) for k, v in expanded.items()}
    if "@list" in node or "@set" in node:
        return node
    node_id = node.get("@id")
    if node_id is None:
        node["@id"] = f"{prefix}{counter[0]}"
        counter[0] += 1
    elif isinstance(node_id, str) and node_id.startswith("_:"):
        node["@id"] = "urn:custom:" + node_id[2:]
    return node


def _skolemize(document: dict[str, Any], loader: jsonld.DocumentLoader | None
               ) -> tuple[list[Any], dict[str, Any]]:
    expanded = jsonld.expand(document, loader=loader)
    skolemized = _skolemize_expanded(expanded, f"urn:custom:{os.urandom(16).hex()}_", [0])
    compact = jsonld.compact(skolemized, {"@context": document["@context"]}, loader=loader)
    return skolemized, compact


_SKOLEM = re.compile(r"<urn:custom:([^>]+)>")


def _deskolemized_nquads(doc: Any, loader: jsonld.DocumentLoader | None) -> list[str]:
    if doc is None:
        return []
    lines = jsonld.to_nquads(doc, loader=loader)
    return [_SKOLEM.sub(r"_:\1", line) for line in lines]


_BLANK = re.compile(r"_:([A-Za-z0-9_.-]+)")


def _relabel(lines: Iterable[str], label_map: dict[str, str]) -> list[str]:
    def sub(m: re.Match[str]) -> str:
        return "_:" + label_map.get(m.group(1), m.group(1))

    return [_BLANK.sub(sub, line) for line in lines]


def _hmac_label_map(hmac_key: bytes) -> Callable[[dict[str, str]], dict[str, str]]:
    def factory(canonical_id_map: dict[str, str]) -> dict[str, str]:
        return {
            inp: "u" + b64url_encode(hmac.new(hmac_key, c14n.encode(), hashlib.sha256).digest())
            for inp, c14n in canonical_id_map.items()
        }
    return factory


def _canonicalize_and_group(
    document: dict[str, Any],
    label_map_factory: Callable[[dict[str, str]], dict[str, str]],
    groups: dict[str, list[str]],
    loader: jsonld.DocumentLoader | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[str]]:
    skolemized, compact = _skolemize(document, loader)
    deskolemized = _deskolemized_nquads(skolemized, loader)
    c14n, canonical_id_map = jsonld.canonicalize_nquads("".join(deskolemized))
    label_map = label_map_factory(canonical_id_map)
    # label_map: input label -> final label; apply to the c14n output via the issued map
    c14n_to_final = {canonical_id_map[k]: v for k, v in label_map.items()}
    nquads = sorted(_relabel(c14n.splitlines(keepends=True), c14n_to_final))
    index_of = {q: i for i, q in enumerate(nquads)}
    out: dict[str, dict[str, Any]] = {}
    for name, pointers in groups.items():
        selection = _select(compact, pointers)
        sel_lines = _deskolemized_nquads(selection, loader)
        matching: dict[int, str] = {}
        for line in _relabel(sel_lines, label_map):
            if line not in index_of:
                raise _err(ErrorCode.MALFORMED, "selection is not part of the document")
            matching[index_of[line]] = line
        non_matching = {i: q for i, q in enumerate(nquads) if i not in matching}
        out[name] = {"matching": dict(sorted(matching.items())),
                     "nonMatching": non_matching, "deskolemized": sel_lines}
    return out, label_map, nquads


# -- ecdsa-sd-2023 ----------------------------------------------------------------


def _sd_base_proof_value(
    unsecured: dict[str, Any], proof: dict[str, Any], signer: Signer,
    mandatory_pointers: list[str], loader: jsonld.DocumentLoader | None,
    *, hmac_key: bytes, ephemeral: Signer | None,
) -> str:
    _check_key_for_suite(signer.public_key, ECDSA_SD_2023)
    if len(mandatory_pointers) > _MAX_POINTERS:
        raise _err(ErrorCode.TOO_LARGE, "too many mandatory pointers")
    # §3.3.17 baseProofTransformation
    groups, _, _ = _canonicalize_and_group(
        unsecured, _hmac_label_map(hmac_key), {"mandatory": mandatory_pointers}, loader)
    mandatory = groups["mandatory"]["matching"]
    non_mandatory = groups["mandatory"]["nonMatching"]
    # §3.3.18 baseProofHashing
    config = _proof_config(unsecured, proof)
    proof_hash = _sha256(jsonld.canonicalize(config, loader=loader))
    mandatory_hash = _sha256("".join(mandatory.values()))
    # §3.3.19 baseProofSerialization: one-time key signs each non-mandatory quad.
    one_time = ephemeral or generate_signer("ES256")
    public = bytes([0x80, 0x24]) + one_time.public_key.raw(compressed=True)
    signatures = [one_time.sign(q.encode("utf-8")) for q in non_mandatory.values()]
    base_signature = signer.sign(proof_hash + public + mandatory_hash)
    payload = _cbor_encode([base_signature, public, hmac_key, signatures, mandatory_pointers])
    return "u" + b64url_encode(_SD_BASE_HEADER + payload)


def _decode_proof_value(value: Any, header: bytes) -> list[Any]:
    if not isinstance(value, str) or not value.startswith("u"):
        raise _err(ErrorCode.MALFORMED, "ecdsa-sd-2023 proofValue must be multibase base64url")
    raw = b64url_decode(value[1:], max_len=512 * 1024)
    if raw[:3] != header:
        kind = "base" if header == _SD_BASE_HEADER else "derived"
        raise _err(ErrorCode.MALFORMED, f"not an ecdsa-sd-2023 {kind} proof")
    decoded = _cbor_decode(raw[3:])
    if not isinstance(decoded, list) or len(decoded) != 5:
        raise _err(ErrorCode.MALFORMED, "ecdsa-sd-2023 proof has the wrong shape")
    return decoded


@jsonld.metered
def derive(
    signed: dict[str, Any],
    *,
    selective_pointers: Sequence[str],
    loader: jsonld.DocumentLoader | None = None,
) -> dict[str, Any]:
    """The holder's derived ecdsa-sd-2023 credential revealing only what it chose.

    The issuer's mandatory pointers are always revealed; ``selective_pointers``
    add to them (vc-di-ecdsa §3.3.2 createDisclosureData).
    """
    proof = signed.get("proof")
    if not isinstance(proof, dict) or proof.get("cryptosuite") != ECDSA_SD_2023:
        raise _err(ErrorCode.UNSUPPORTED_FORMAT, "not an ecdsa-sd-2023 base credential")
    base_sig, public, hmac_key, signatures, mandatory_pointers = _decode_proof_value(
        proof.get("proofValue"), _SD_BASE_HEADER)
    if not (isinstance(hmac_key, bytes) and isinstance(signatures, list)
            and isinstance(mandatory_pointers, list)):
        raise _err(ErrorCode.MALFORMED, "ecdsa-sd-2023 base proof has the wrong shape")
    selective = list(selective_pointers)
    if len(selective) > _MAX_POINTERS:
        raise _err(ErrorCode.TOO_LARGE, "too many selective pointers")
    document = {k: v for k, v in signed.items() if k != "proof"}
    combined = mandatory_pointers + selective
    groups, label_map, _ = _canonicalize_and_group(
        document, _hmac_label_map(hmac_key),
        {"mandatory": mandatory_pointers, "selective": selective, "combined": combined}, loader)
    combined_idx = list(groups["combined"]["matching"])
    mandatory_set = set(groups["mandatory"]["matching"])
    selective_set = set(groups["selective"]["matching"])
    mandatory_indexes = [rel for rel, i in enumerate(combined_idx) if i in mandatory_set]
    non_mandatory = list(groups["mandatory"]["nonMatching"])
    if len(non_mandatory) != len(signatures):
        raise _err(ErrorCode.INVALID_SIGNATURE, "base proof does not fit the credential")
    filtered = [signatures[n] for n, i in enumerate(non_mandatory) if i in selective_set]
    reveal = _select(document, combined)
    if reveal is None:
        raise _err(ErrorCode.MALFORMED, "nothing to reveal")
    # Map the verifier's future c14n labels to the HMAC labels (§3.3.2 step 12-13).
    _, canonical_id_map = jsonld.canonicalize_nquads("".join(groups["combined"]["deskolemized"]))
    verifier_label_map = {c14n: label_map[inp] for inp, c14n in canonical_id_map.items()}
    compressed = {int(k[4:]): b64url_decode(v[1:]) for k, v in verifier_label_map.items()}
    payload = _cbor_encode([base_sig, public, filtered, compressed, mandatory_indexes])
    new_proof = {**proof, "proofValue": "u" + b64url_encode(_SD_DERIVED_HEADER + payload)}
    return {**reveal, "proof": new_proof}


def _verify_sd_derived(unsecured: dict[str, Any], proof: dict[str, Any], key: PublicKey,
                       loader: jsonld.DocumentLoader | None) -> None:
    _check_key_for_suite(key, ECDSA_SD_2023)
    value = proof.get("proofValue")
    if isinstance(value, str) and value.startswith("u2V0A"):
        raise _err(ErrorCode.MALFORMED, "a base proof is for the holder; present a derived one")
    base_sig, public, signatures, compressed, mandatory_indexes = _decode_proof_value(
        value, _SD_DERIVED_HEADER)
    if not (isinstance(base_sig, bytes) and isinstance(public, bytes)
            and isinstance(signatures, list) and isinstance(compressed, dict)
            and isinstance(mandatory_indexes, list)
            and all(isinstance(s, bytes) for s in signatures)
            and all(isinstance(i, int) for i in mandatory_indexes)
            and all(isinstance(k, int) and isinstance(v, bytes) for k, v in compressed.items())):
        raise _err(ErrorCode.MALFORMED, "ecdsa-sd-2023 derived proof has the wrong shape")
    label_map = {f"c14n{k}": "u" + b64url_encode(v) for k, v in compressed.items()}
    # §3.3.? createVerifyData
    config = _proof_config(unsecured, proof)
    proof_hash = _sha256(jsonld.canonicalize(config, loader=loader))
    c14n, _ = jsonld.canonicalize_nquads("".join(jsonld.to_nquads(unsecured, loader=loader)))
    lines = c14n.splitlines(keepends=True)
    labels_used = {m.group(1) for line in lines for m in _BLANK.finditer(line)}
    if labels_used - set(label_map):
        raise _err(ErrorCode.INVALID_SIGNATURE, "derived proof does not label every blank node")
    nquads = sorted(_relabel(lines, label_map))
    mset = set(mandatory_indexes)
    if len(mset) != len(mandatory_indexes):
        raise _err(ErrorCode.MALFORMED, "duplicate mandatory indexes")
    if any(i >= len(nquads) for i in mset):
        # Statements the issuer made mandatory are missing from the document.
        raise _err(ErrorCode.INVALID_SIGNATURE, "mandatory statements missing")
    mandatory = [q for i, q in enumerate(nquads) if i in mset]
    non_mandatory = [q for i, q in enumerate(nquads) if i not in mset]
    if len(signatures) != len(non_mandatory):
        raise _err(ErrorCode.INVALID_SIGNATURE,
                   "revealed statements do not match the holder's signatures")
    if len(public) != 35 or public[:2] != bytes([0x80, 0x24]):
        raise _err(ErrorCode.MALFORMED, "proof key is not a P-256 multikey")
    one_time = PublicKey.from_raw("P-256", public[2:])
    key.verify(base_sig, proof_hash + public + _sha256("".join(mandatory)))
    for sig, quad in zip(signatures, non_mandatory, strict=True):
        one_time.verify(sig, quad.encode("utf-8"))


# -- verify ----------------------------------------------------------------------


def _check_validity(vc: dict[str, Any], now: datetime) -> None:
    if now.tzinfo is None:
        raise _err(ErrorCode.MALFORMED, "now must be timezone-aware")
    start = vc.get("validFrom", vc.get("issuanceDate"))
    end = vc.get("validUntil", vc.get("expirationDate"))
    if start is not None and now < parse_datetime(start, "validFrom"):
        raise _err(ErrorCode.NOT_YET_VALID, "credential is not valid yet")
    if end is not None and now > parse_datetime(end, "validUntil"):
        raise _err(ErrorCode.EXPIRED, "credential has expired")


def _loyalty_type(vc: dict[str, Any]) -> CredentialType | None:
    types = vc.get("type")
    names = types if isinstance(types, list) else [types]
    for name in names:
        if name in ("LoyaltyMembershipCredential", "LoyaltyPointsCredential"):
            return by_name(str(name))
    return None


def _single_proof(doc: dict[str, Any]) -> dict[str, Any]:
    proof = doc.get("proof")
    if isinstance(proof, list):
        # Presentations: a holder proof set would leave open which proof the
        # challenge binds; credentials accept sets and chains (_all_proofs).
        raise _err(ErrorCode.UNSUPPORTED_FORMAT, "proof sets are not supported here")
    if not isinstance(proof, dict):
        raise _err(ErrorCode.MALFORMED, "document has no proof")
    return proof


def _all_proofs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``proof``: one object or an unordered set of them (Data Integrity §2.1, §2.1.1)."""
    proof = doc.get("proof")
    items: list[Any] = proof if isinstance(proof, list) else [proof]
    proofs = [p for p in items if isinstance(p, dict)]
    if not proofs or len(proofs) != len(items):
        raise _err(ErrorCode.MALFORMED, "proof must be an object or a non-empty list of objects")
    if len(proofs) > _MAX_PROOFS:
        raise _err(ErrorCode.TOO_LARGE, f"more than {_MAX_PROOFS} proofs")
    return proofs


def _previous_proofs(all_proofs: list[dict[str, Any]], proof: dict[str, Any]
                     ) -> list[dict[str, Any]]:
    """The proofs ``proof.previousProof`` names (Data Integrity §4.5, Verify Proof Sets
    and Chains): each must be in the set, or "an error MUST be raised"."""
    if "previousProof" not in proof:
        return []
    ref = proof["previousProof"]
    ids = [ref] if isinstance(ref, str) else ref
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise _err(ErrorCode.MALFORMED, "previousProof must be a string or a list of strings")
    matching: list[dict[str, Any]] = []
    for proof_id in ids:
        found = [p for p in all_proofs if p.get("id") == proof_id]
        if not found:
            raise _err(ErrorCode.MALFORMED,
                       f"previousProof {proof_id[:100]!r} is not a proof of this document")
        matching.extend(p for p in found if p not in matching)
    return matching


def holder_of(vp: dict[str, Any]) -> str | None:
    """A presentation's holder: a URL, or an object with an ``id`` (VCDM 2.0 §4.13)."""
    holder = vp.get("holder")
    if isinstance(holder, dict):
        holder = holder.get("id")
    return holder if isinstance(holder, str) else None


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and bool(_URL.match(value))


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_related_resource(value: Any, loader: jsonld.DocumentLoader | None) -> None:
    """VCDM 2.0 §5.3 Integrity of Related Resources.

    One or more objects, each with an ``id`` unique among them and at least a
    ``digestSRI`` or a ``digestMultibase``. For a resource held here (a
    bundled context, or one the operator pinned) every digest whose
    algorithm Tessera knows must match ("If the digest provided by the issuer
    does not match the digest computed for the retrieved resource, the
    conforming verifier implementation MUST produce an error"); nothing is
    fetched for the others.
    """
    items = _items(value)
    if not items or not all(isinstance(i, dict) for i in items):
        raise _err(ErrorCode.MALFORMED, "relatedResource must be one or more objects")
    seen: set[str] = set()
    for item in items:
        rid = item.get("id")
        if not _is_url(rid):
            raise _err(ErrorCode.MALFORMED, "each relatedResource needs an id that is a URL")
        if rid in seen:
            raise _err(ErrorCode.MALFORMED, "relatedResource ids must be unique")
        seen.add(rid)
        if "digestSRI" not in item and "digestMultibase" not in item:
            raise _err(ErrorCode.MALFORMED,
                       "each relatedResource needs a digestSRI or a digestMultibase")
        if "mediaType" in item and not isinstance(item["mediaType"], str):
            raise _err(ErrorCode.MALFORMED, "relatedResource mediaType must be a string")
        claimed = [*_sri_digests(item.get("digestSRI")),
                   *_multibase_digests(item.get("digestMultibase"))]
        held = (loader or jsonld.default_loader()).digests(rid)
        if not held:
            continue
        checkable = [(alg, d) for alg, d in claimed if alg in held]
        if not checkable:
            raise _err(ErrorCode.MALFORMED,
                       f"relatedResource {rid[:100]!r} has no digest algorithm Tessera checks")
        if any(d not in held[alg] for alg, d in checkable):
            raise _err(ErrorCode.MALFORMED,
                       f"relatedResource {rid[:100]!r}: digest does not match the resource")


_SRI_ALGS: Final = {"sha256": 32, "sha384": 48, "sha512": 64}
_SRI = re.compile(r"^([A-Za-z0-9]{1,16})-([A-Za-z0-9+/]+={0,2})(\?\S*)?$")
# Multihash codes (multicodec table) of the SHA-2 digests.
_MULTIHASH: Final = {0x12: "sha256", 0x20: "sha384", 0x13: "sha512"}


def _sri_digests(value: Any) -> list[tuple[str, bytes]]:
    """Subresource Integrity §3.5 hash-expressions (whitespace-separated, or a list).

    Expressions with an algorithm other than SHA-2 are well-formed but not
    returned (SRI §3.3.3 ignores what it cannot check).
    """
    if value is None:
        return []
    out: list[tuple[str, bytes]] = []
    for entry in _items(value):
        if not isinstance(entry, str) or not entry.strip() or len(entry) > 4096:
            raise _err(ErrorCode.MALFORMED, "digestSRI must be SRI hash expressions")
        for expr in entry.split():
            m = _SRI.match(expr)
            if m is None:
                raise _err(ErrorCode.MALFORMED, f"not an SRI hash expression: {expr[:60]!r}")
            try:
                digest = base64.b64decode(m.group(2), validate=True)
            except (binascii.Error, ValueError):
                raise _err(ErrorCode.MALFORMED, "digestSRI is not base64") from None
            alg = m.group(1).lower()
            if alg not in _SRI_ALGS:
                continue
            if len(digest) != _SRI_ALGS[alg]:
                raise _err(ErrorCode.MALFORMED, "digestSRI has the wrong length")
            out.append((alg, digest))
    return out


def _multibase_digests(value: Any) -> list[tuple[str, bytes]]:
    """Data Integrity §2.6 ``digestMultibase``: multibase (``u`` or ``z``) over a digest.

    Both a multihash and a bare SHA-2 digest (what the VCDM 2.0 examples and
    test suite use) are read; the two cannot be confused, their lengths differ.
    Other digests are well-formed but not returned.
    """
    if value is None:
        return []
    out: list[tuple[str, bytes]] = []
    for entry in _items(value):
        if not isinstance(entry, str) or len(entry) > 200 or entry[:1] not in ("u", "z"):
            raise _err(ErrorCode.MALFORMED, "digestMultibase must be multibase (u or z)")
        raw = b64url_decode(entry[1:], max_len=200) if entry[0] == "u" else base58btc_decode(
            entry[1:])
        by_len = {n: alg for alg, n in _SRI_ALGS.items()}
        if len(raw) in by_len:
            out.append((by_len[len(raw)], raw))
        elif len(raw) > 2 and _MULTIHASH.get(raw[0]) and raw[1] == len(raw) - 2 \
                and _SRI_ALGS[_MULTIHASH[raw[0]]] == raw[1]:
            out.append((_MULTIHASH[raw[0]], raw[2:]))
    return out


def check_data_model(vc: dict[str, Any], *, loader: jsonld.DocumentLoader | None = None) -> None:
    """Data model rules a JSON-LD expansion does not catch, at issue and at verify.

    ``credentialSchema``: each one an object with a ``type`` and an ``id``
    that is a URL (VCDM 2.0 §4.11, VCDM 1.1 §5.4). ``relatedResource``: see
    VCDM 2.0 §5.3; digests of resources the loader holds are checked.
    Failures are ``malformed``.
    """
    if "credentialSchema" in vc:
        schemas_ = _items(vc["credentialSchema"])
        if not schemas_ or not all(isinstance(i, dict) for i in schemas_):
            raise _err(ErrorCode.MALFORMED, "credentialSchema must be one or more objects")
        for item in schemas_:
            if "type" not in item:
                raise _err(ErrorCode.MALFORMED, "each credentialSchema needs a type")
            if not _is_url(item.get("id")):
                raise _err(ErrorCode.MALFORMED,
                           "each credentialSchema needs an id that is a URL")
    if "relatedResource" in vc:
        _check_related_resource(vc["relatedResource"], loader)


def _issuer_id(vc: dict[str, Any]) -> str:
    issuer = vc.get("issuer")
    issuer_id = issuer.get("id") if isinstance(issuer, dict) else issuer
    if not isinstance(issuer_id, str):
        raise _err(ErrorCode.MALFORMED, "credential has no issuer id")
    return issuer_id


def _verify_document(doc: dict[str, Any], *, key_lookup: KeyLookup, relationship: str,
                     loader: jsonld.DocumentLoader | None, proof: dict[str, Any] | None = None,
                     previous: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Verify one proof of ``doc`` (its only one unless ``proof`` is given).

    ``previous`` are the proofs a chained proof names: it was made over the
    document with exactly those as its ``proof`` (Data Integrity §4.3 Add Proof
    Set/Chain, step 4), so that is what its signature is checked against.
    """
    proof = _single_proof(doc) if proof is None else proof
    suite = _suite_of(proof)
    expected = "assertionMethod" if relationship == "assertionMethod" else "authentication"
    if proof.get("proofPurpose") != expected:
        raise _err(ErrorCode.INVALID_SIGNATURE, f"proof purpose is not {expected}")
    vm = proof.get("verificationMethod")
    if not isinstance(vm, str):
        raise _err(ErrorCode.MALFORMED, "proof has no verificationMethod")
    unsecured = {k: v for k, v in doc.items() if k != "proof"}
    parse_datetime(proof.get("created"), "proof created")
    jsonld.check_all_terms_defined(unsecured, loader=loader)
    _check_proof_terms(unsecured, proof, loader)
    key = key_lookup(vm, relationship)
    if suite == ECDSA_SD_2023:
        _verify_sd_derived(unsecured, proof, key, loader)
    else:
        signed = {**unsecured, "proof": list(previous)} if previous else unsecured
        _verify_proof_signature(signed, proof, key, suite, loader)
    return proof


@jsonld.metered
def verify_credential(
    vc: dict[str, Any],
    *,
    key_lookup: KeyLookup,
    now: datetime,
    loader: jsonld.DocumentLoader | None = None,
    issuer_must_control_key: bool = True,
) -> dict[str, Any]:
    """Verify a credential's proof, validity period, terms and schema; return it without proof.

    The key must be listed for assertionMethod and, unless
    ``issuer_must_control_key`` is off (spec test vectors name an https
    issuer but sign with a did:key), belong to the issuer's DID; a key of
    another DID is ``issuer_key_mismatch`` (a policy refusal: the signature
    was not judged). ``loader`` serves the JSON-LD contexts (bundled ones
    when ``None``). ``credentialSchema`` and ``relatedResource`` are checked
    as :func:`check_data_model` does.

    A proof set or chain (``proof`` a list, ``previousProof`` naming earlier
    proofs) verifies only if every proof in it does (Data Integrity §4.5);
    then at least one of them must be the issuer's key: each proof covers the
    whole document, so that one is the issuer's word for all of it.
    ``ecdsa-sd-2023`` proofs stand alone.
    """
    if not isinstance(vc, dict):
        raise _err(ErrorCode.MALFORMED, "credential is not an object")
    proofs = _all_proofs(vc)
    vms = [p.get("verificationMethod") for p in proofs]
    issuer = _issuer_id(vc)
    if not all(isinstance(vm, str) for vm in vms):
        raise _err(ErrorCode.MALFORMED, "proof has no verificationMethod")
    if issuer_must_control_key and not any(
            str(vm).split("#", 1)[0] == issuer for vm in vms):
        raise _err(ErrorCode.ISSUER_KEY_MISMATCH, "proof key does not belong to the issuer")
    if len(proofs) > 1 and any(p.get("cryptosuite") == ECDSA_SD_2023 for p in proofs):
        raise _err(ErrorCode.UNSUPPORTED_FORMAT, "an ecdsa-sd-2023 proof cannot be in a set")
    # Every previousProof reference is judged before any proof is canonicalized:
    # a malformed chain is `malformed` (§4.5), whatever its terms would do later.
    chains = [_previous_proofs(proofs, proof) for proof in proofs]
    for proof, previous in zip(proofs, chains, strict=True):
        _verify_document(vc, key_lookup=key_lookup, relationship="assertionMethod",
                         loader=loader, proof=proof, previous=previous)
    proof = proofs[0]
    _check_validity(vc, now)
    unsecured = {k: v for k, v in vc.items() if k != "proof"}
    check_data_model(unsecured, loader=loader)
    ctype = _loyalty_type(unsecured)
    if ctype is not None:
        subject = unsecured.get("credentialSubject")
        if not isinstance(subject, dict):
            raise _err(ErrorCode.SCHEMA_INVALID, "credentialSubject must be one object")
        claims = {k: v for k, v in subject.items() if k != "id"}
        ctype.validate(claims, partial=proof.get("cryptosuite") == ECDSA_SD_2023)
    return unsecured


# -- presentations -----------------------------------------------------------------


@jsonld.metered
def present(
    credentials: Sequence[dict[str, Any]],
    *,
    signer: Signer,
    holder: str,
    challenge: str,
    domain: str,
    created: datetime,
    verification_method: str | None = None,
    loader: jsonld.DocumentLoader | None = None,
) -> dict[str, Any]:
    """A VP over ``credentials`` with the holder's authentication proof.

    The suite follows the holder key: Ed25519 -> eddsa-rdfc-2022, P-256 ->
    ecdsa-rdfc-2019. VCDM 1.1 credentials get a VCDM 1.1 presentation with
    Ed25519Signature2020 (Ed25519 keys), which is what didkit verifies.
    """
    vm = verification_method or signer.key_id
    if not vm:
        raise _err(ErrorCode.MALFORMED, "holder verification method unknown")
    if not credentials:
        raise _err(ErrorCode.MALFORMED, "a presentation needs at least one credential")
    v1 = all(_contexts(c)[0] == jsonld.CREDENTIALS_V1 for c in credentials)
    if v1:
        context: list[Any] = [jsonld.CREDENTIALS_V1, jsonld.ED25519_2020_V1]
        suite = ED25519_2020
    else:
        context = [jsonld.CREDENTIALS_V2]
        suite = EDDSA_RDFC_2022 if signer.public_key.crv == "Ed25519" else ECDSA_RDFC_2019
    vp = {"@context": context, "type": ["VerifiablePresentation"], "holder": holder,
          "verifiableCredential": [copy.deepcopy(c) for c in credentials]}
    jsonld.check_all_terms_defined(vp, loader=loader)
    proof = _new_proof(suite, verification_method=vm, created=created,
                       purpose="authentication", challenge=challenge, domain=domain)
    return {**vp, "proof": _sign_proof(vp, proof, signer, suite, loader)}


@jsonld.metered
def verify_presentation(
    vp: dict[str, Any],
    *,
    key_lookup: KeyLookup,
    challenge: str,
    domain: str,
    now: datetime,
    loader: jsonld.DocumentLoader | None = None,
    holder_binding: bool = True,
    issuer_must_control_key: bool = True,
) -> list[dict[str, Any]]:
    """Verify a VP's holder proof and every credential in it; return the credentials.

    ``holder`` may be a URL or an object with an ``id`` (VCDM 2.0 §4.13);
    ``loader`` and ``issuer_must_control_key`` are as in :func:`verify_credential`.

    A wrong challenge is ``nonce_mismatch`` and a wrong domain
    ``audience_mismatch`` (single use of the challenge is the caller's nonce
    store). Each credential's subject must be the holder (``key_binding_invalid``).

    ``holder_binding=False`` is plain VCDM 2.0 §4.13 verification (the VC API
    does it): ``holder`` and ``verifiableCredential`` are optional and a
    credential's subject need not be the holder. A holder that is named must
    still own the proof key, and every credential present is verified.
    """
    if not isinstance(vp, dict):
        raise _err(ErrorCode.MALFORMED, "presentation is not an object")
    types = vp.get("type")
    if "VerifiablePresentation" not in (types if isinstance(types, list) else [types]):
        raise _err(ErrorCode.MALFORMED, "not a VerifiablePresentation")
    proof = _single_proof(vp)
    holder = holder_of(vp)
    if holder is None and "holder" in vp:
        # VCDM 2.0 §4.13: a URL, or an object with an id; anything else is not a holder.
        raise _err(ErrorCode.MALFORMED, "holder must be a URL or an object with an id")
    vm = proof.get("verificationMethod")
    if holder is None and not holder_binding:
        if not isinstance(vm, str):
            raise _err(ErrorCode.MALFORMED, "proof has no verificationMethod")
    elif not isinstance(holder, str):
        raise _err(ErrorCode.KEY_BINDING_MISSING, "presentation names no holder")
    elif not isinstance(vm, str) or vm.split("#", 1)[0] != holder:
        raise _err(ErrorCode.KEY_BINDING_INVALID, "presentation key is not the holder's")
    # Binding checks first: they are cheap and their codes are more useful.
    if proof.get("challenge") != challenge:
        raise _err(ErrorCode.NONCE_MISMATCH, "presentation challenge does not match")
    if proof.get("domain") != domain:
        raise _err(ErrorCode.AUDIENCE_MISMATCH, "presentation domain does not match")
    _verify_document(vp, key_lookup=key_lookup, relationship="authentication", loader=loader)
    creds = vp.get("verifiableCredential", None if holder_binding else [])
    creds = creds if isinstance(creds, list) else [creds]
    if (holder_binding and not creds) or not all(isinstance(c, dict) for c in creds):
        # VCDM 2.0 §4.13: credentials are objects, never strings or URLs.
        raise _err(ErrorCode.MALFORMED, "presentation holds no credential")
    verified = []
    for cred in creds:
        result = verify_credential(cred, key_lookup=key_lookup, now=now, loader=loader,
                                   issuer_must_control_key=issuer_must_control_key)
        subject = result.get("credentialSubject")
        subject_id = subject.get("id") if isinstance(subject, dict) else None
        if holder_binding and subject_id != holder:
            raise _err(ErrorCode.KEY_BINDING_INVALID, "credential subject is not the holder")
        verified.append(result)
    return verified


# -- loyalty credentials --------------------------------------------------------------


def loyalty_credential(
    ctype: CredentialType | str,
    claims: dict[str, Any],
    *,
    issuer: str,
    subject: str,
    valid_from: datetime,
    valid_until: datetime | None = None,
    status: dict[str, Any] | None = None,
    credential_id: str | None = None,
    loader: jsonld.DocumentLoader | None = None,
) -> dict[str, Any]:
    """An unsigned VCDM 2.0 loyalty credential, validated against schema and context."""
    ctype = by_name(ctype) if isinstance(ctype, str) else ctype
    ctype.validate(claims)
    vc: dict[str, Any] = {"@context": [jsonld.CREDENTIALS_V2, jsonld.LOYALTY_V1]}
    if credential_id is not None:
        vc["id"] = credential_id
    vc.update({
        "type": ["VerifiableCredential", ctype.name],
        "issuer": issuer,
        "validFrom": _xsd_datetime(valid_from),
    })
    if valid_until is not None:
        vc["validUntil"] = _xsd_datetime(valid_until)
    vc["credentialSchema"] = {"id": ctype.schema["$id"], "type": "JsonSchema"}
    if status is not None:
        vc["credentialStatus"] = copy.deepcopy(status)
    vc["credentialSubject"] = {"id": subject, **copy.deepcopy(claims)}
    jsonld.check_all_terms_defined(vc, loader=loader)
    return vc


def multikey_of(key: PublicKey) -> str:
    return multikey_encode(key)


def key_from_multikey(value: str) -> PublicKey:
    return multikey_decode(value)
