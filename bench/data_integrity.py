"""Data Integrity verify: eddsa-rdfc-2022 and ecdsa-sd-2023 against didkit and the floor.

Cases, on the same loyalty membership credential (VCDM 2.0, loyalty context,
Bitstring status entry):

* ``tessera.verify.eddsa-rdfc-2022``: :func:`data_integrity.verify_credential`
  (term check, two RDFC-1.0 canonicalizations, SHA-256, Ed25519, validity,
  schema);
* ``tessera.verify.ecdsa-sd-2023``: the same on a holder-derived credential
  revealing two claims (one ECDSA verify for the base signature, one per
  revealed non-mandatory statement);
* ``*.stock-pyld``: the same calls with pyld's stock processor and context
  resolver, i.e. Tessera before the context caching in :mod:`tessera.jsonld`;
* ``didkit.verify.Ed25519Signature2020`` (reference): didkit 0.3.3 verifying
  a VCDM 1.1 Ed25519Signature2020 credential with the loyalty context inline
  (it knows no other), its futures awaited in one event loop kept for the
  whole run; ``tessera.verify.Ed25519Signature2020`` verifies that very
  credential, so the pair is like for like;
* ``floor.*``: the signature checks alone with ``cryptography``;
* ``c14n.*``: the canonicalization share: Tessera's ``canonicalize`` of the
  document and of the proof configuration, stock pyld's, and the RDFC-1.0
  step alone (pyld's URDNA2015 in Python against pyoxigraph's, on the same
  RDF dataset).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pyoxigraph as ox
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pyld import jsonld as pyld_jsonld
from pyld.context_resolver import ContextResolver

from bench._harness import Case
from tessera import credentials, jsonld
from tessera.did import Resolver, did_key
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, generate_signer

__all__ = ["cases", "stock_pyld"]

NOW: Final = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STATUS: Final = {"id": "https://brand.example/status/1#94567", "type": "BitstringStatusListEntry",
                 "statusPurpose": "revocation", "statusListIndex": "94567",
                 "statusListCredential": "https://brand.example/status/1"}
REVEAL: Final = ("/credentialSubject/tier_at_least_gold", "/credentialSubject/membership_number")


@contextmanager
def stock_pyld() -> Iterator[None]:
    """Run Tessera's JSON-LD calls with pyld's own processor and resolver (the "before")."""
    saved = jsonld._Processor, jsonld._Resolver
    jsonld._Processor, jsonld._Resolver = pyld_jsonld.JsonLdProcessor, ContextResolver
    try:
        yield
    finally:
        jsonld._Processor, jsonld._Resolver = saved


def _did_signer(alg: str) -> tuple[LocalSigner, str]:
    signer = generate_signer(alg)
    did = did_key(signer.public_key)
    return signer.with_key_id(f"{did}#{did[len('did:key:'):]}"), did


def _membership(issuer_did: str, holder_did: str) -> dict[str, Any]:
    claims = credentials.membership_claims(
        program={"id": "acme-rewards", "name": "Acme Rewards", "brand": issuer_did},
        membership_number="M-000123", tier="gold",
        tiers=[("silver", 1), ("gold", 2), ("platinum", 3)],
        member_since=NOW.date(), tier_valid_until=(NOW + timedelta(days=365)).date(),
        name="Alice Example",
    )
    return di.loyalty_credential(
        credentials.MEMBERSHIP, claims, issuer=issuer_did, subject=holder_did,
        valid_from=NOW - timedelta(days=1), valid_until=NOW + timedelta(days=30),
        status=dict(STATUS), credential_id="urn:uuid:3f1d7c2e-0c1a-4b8e-9d55-6a0f4e1b2c3d",
    )


def _lookup() -> Callable[[str, str], Any]:
    resolver = Resolver()
    return lambda vm, rel: resolver.key(vm, relationship=rel)


def _check_subject(out: Any) -> None:
    if not isinstance(out, dict) or "credentialSubject" not in out:
        raise AssertionError("verification did not return the credential")


class _World:
    """Keys and credentials, built once for every case."""

    def __init__(self) -> None:
        self.ed, self.ed_did = _did_signer("EdDSA")
        self.p256, self.p256_did = _did_signer("ES256")
        _, holder = _did_signer("EdDSA")
        ed_vc = _membership(self.ed_did, holder)
        self.eddsa = di.issue(ed_vc, signer=self.ed, cryptosuite="eddsa-rdfc-2022",
                              verification_method=self.ed.key_id or "", created=NOW)
        base = di.issue(_membership(self.p256_did, holder), signer=self.p256,
                        cryptosuite="ecdsa-sd-2023",
                        verification_method=self.p256.key_id or "", created=NOW)
        self.derived = di.derive(base, selective_pointers=list(REVEAL))
        self.unsecured = {k: v for k, v in self.eddsa.items() if k != "proof"}
        self.config = di._proof_config(self.unsecured, self.eddsa["proof"])
        self.lookup = _lookup()


_WORLD: _World | None = None


def _world() -> _World:
    global _WORLD
    if _WORLD is None:
        _WORLD = _World()
    return _WORLD


# -- didkit ----------------------------------------------------------------------------------


class _Didkit:
    """didkit's futures awaited in one event loop that lives as long as the run."""

    def __init__(self) -> None:
        import didkit

        self.didkit = didkit
        self.loop = asyncio.new_event_loop()
        self.jwk = didkit.generate_ed25519_key()
        did = didkit.key_to_did("key", self.jwk)
        self.vm = self.run(lambda: didkit.key_to_verification_method("key", self.jwk))
        inline = dict(jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"]["@context"])
        vc = _membership(did, did)
        subject = vc["credentialSubject"]
        vc11 = {"@context": [jsonld.CREDENTIALS_V1, inline], "id": vc["id"], "type": vc["type"],
                "issuer": did, "issuanceDate": vc["validFrom"],
                "expirationDate": vc["validUntil"], "credentialSubject": subject}
        opts = {"proofPurpose": "assertionMethod", "verificationMethod": self.vm,
                "type": "Ed25519Signature2020"}
        self.vc_text = self.run(lambda: didkit.issue_credential(
            json.dumps(vc11), json.dumps(opts), self.jwk))
        self.vc = json.loads(self.vc_text)

    def run(self, call: Callable[[], Any]) -> Any:
        # didkit's calls return futures bound to the running loop: call inside it.
        async def wait() -> Any:
            return await call()
        return self.loop.run_until_complete(wait())

    def verify(self) -> dict[str, Any]:
        async def call() -> str:
            out: str = await self.didkit.verify_credential(self.vc_text, "{}")
            return out
        result: dict[str, Any] = json.loads(self.loop.run_until_complete(call()))
        return result


_DIDKIT: _Didkit | None = None


def _didkit() -> _Didkit:
    global _DIDKIT
    if _DIDKIT is None:
        _DIDKIT = _Didkit()
    return _DIDKIT


def _didkit_ok(result: Any) -> None:
    if result.get("errors"):
        raise AssertionError(f"didkit refused: {result['errors']}")


# -- floors ----------------------------------------------------------------------------------


def _ed25519_floor(n: int) -> Any:
    key = ed25519.Ed25519PrivateKey.generate()
    msg = bytes(64)  # proofHash || docHash
    return key.public_key(), key.sign(msg), msg


def _p256_floor(n: int) -> Any:
    # One base signature plus one per revealed non-mandatory statement.
    w = _world()
    proof_value = w.derived["proof"]["proofValue"]
    decoded = di._decode_proof_value(proof_value, di._SD_DERIVED_HEADER)
    count = 1 + len(decoded[2])
    key = ec.generate_private_key(ec.SECP256R1())
    msg = bytes(100)
    return key.public_key(), key.sign(msg, ec.ECDSA(hashes.SHA256())), msg, count


def _p256_verify(state: Any) -> None:
    public, sig, msg, count = state
    for _ in range(count):
        public.verify(sig, msg, ec.ECDSA(hashes.SHA256()))


# -- canonicalization share ----------------------------------------------------------------


def _stock_c14n(doc: dict[str, Any]) -> str:
    out: str = pyld_jsonld.normalize(copy.deepcopy(doc), {
        "algorithm": "URDNA2015", "format": "application/n-quads",
        "documentLoader": jsonld.DocumentLoader(), "base": None,
        "processingMode": "json-ld-1.1"})
    return out


def _dataset_state(n: int) -> Any:
    w = _world()
    nquads = "".join(jsonld.to_nquads(w.unsecured))
    dataset = pyld_jsonld.to_rdf(copy.deepcopy(w.unsecured), {
        "documentLoader": jsonld.DocumentLoader(), "base": None,
        "processingMode": "json-ld-1.1", "produceGeneralizedRdf": False})
    return nquads, dataset


def _oxigraph_rdfc(state: Any) -> str:
    dataset = ox.Dataset(ox.parse(state[0], format=ox.RdfFormat.N_QUADS))
    dataset.canonicalize(ox.CanonicalizationAlgorithm.RDFC_1_0)
    return ox.serialize(dataset, format=ox.RdfFormat.N_QUADS).decode()


def _expect(expected: Callable[[], str]) -> Callable[[Any], None]:
    def check(out: Any) -> None:
        want = expected()
        if sorted(out.splitlines()) != sorted(want.splitlines()):
            raise AssertionError("canonical form differs")
    return check


def cases() -> list[Case]:
    w = _world()
    eddsa_verify = lambda _: di.verify_credential(w.eddsa, key_lookup=w.lookup, now=NOW)  # noqa: E731
    sd_verify = lambda _: di.verify_credential(w.derived, key_lookup=w.lookup, now=NOW)  # noqa: E731

    def stock(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def wrapped(state: Any) -> Any:
            with stock_pyld():
                return fn(state)
        return wrapped

    canonical = jsonld.canonicalize(w.unsecured)
    out: list[Case] = [
        Case("floor.verify.ed25519", _ed25519_floor,
             lambda s: s[0].verify(s[1], s[2]), group="verify",
             label="Ed25519 verify of proofHash||docHash"),
        Case("floor.verify.p256.sd", _p256_floor, _p256_verify, group="verify",
             label="P-256 verifies of a derived ecdsa-sd-2023 proof"),
        Case("tessera.verify.eddsa-rdfc-2022", lambda n: None, eddsa_verify,
             floor="floor.verify.ed25519", reference="didkit.verify.Ed25519Signature2020",
             group="verify", label="VCDM 2.0 loyalty credential", check=_check_subject),
        Case("tessera.verify.eddsa-rdfc-2022.stock-pyld", lambda n: None, stock(eddsa_verify),
             floor="floor.verify.ed25519", reference="tessera.verify.eddsa-rdfc-2022",
             group="verify", label="same, pyld stock context handling", check=_check_subject),
        Case("tessera.verify.ecdsa-sd-2023", lambda n: None, sd_verify,
             floor="floor.verify.p256.sd", reference="didkit.verify.Ed25519Signature2020",
             group="verify", label="derived, 2 claims revealed", check=_check_subject),
        Case("tessera.verify.ecdsa-sd-2023.stock-pyld", lambda n: None, stock(sd_verify),
             floor="floor.verify.p256.sd", reference="tessera.verify.ecdsa-sd-2023",
             group="verify", label="same, pyld stock context handling", check=_check_subject),
    ]
    try:
        dk = _didkit()
    except ImportError:
        dk = None
    if dk is not None:
        out += [
            Case("didkit.verify.Ed25519Signature2020", lambda n: None, lambda _: dk.verify(),
                 floor="floor.verify.ed25519", group="verify",
                 label="didkit 0.3.3, VCDM 1.1, inline context", check=_didkit_ok),
            Case("tessera.verify.Ed25519Signature2020", lambda n: None,
                 lambda _: di.verify_credential(dk.vc, key_lookup=w.lookup, now=NOW),
                 floor="floor.verify.ed25519", reference="didkit.verify.Ed25519Signature2020",
                 group="verify", label="the didkit-issued credential", check=_check_subject),
        ]
    out += [
        Case("c14n.tessera.document", lambda n: None,
             lambda _: jsonld.canonicalize(w.unsecured), reference="c14n.stock-pyld.document",
             group="c14n", label="JSON-LD -> RDFC-1.0 N-Quads",
             check=_expect(lambda: canonical)),
        Case("c14n.stock-pyld.document", lambda n: None, lambda _: _stock_c14n(w.unsecured),
             group="c14n", label="pyld.normalize, bundled loader",
             check=_expect(lambda: canonical)),
        Case("c14n.tessera.proof-config", lambda n: None,
             lambda _: jsonld.canonicalize(w.config), reference="c14n.stock-pyld.proof-config",
             group="c14n", label="proof configuration"),
        Case("c14n.stock-pyld.proof-config", lambda n: None, lambda _: _stock_c14n(w.config),
             group="c14n", label="proof configuration, stock"),
        Case("c14n.tessera.check-terms", lambda n: None,
             lambda _: jsonld.check_all_terms_defined(w.unsecured), group="c14n",
             label="undefined-term check (an expansion)"),
        Case("c14n.rdfc10.pyld", _dataset_state,
             lambda s: jsonld._canonicalize_dataset(copy.deepcopy(s[1]))[0],
             reference="c14n.rdfc10.pyoxigraph", group="c14n",
             label="RDFC-1.0 step only (URDNA2015, Python)", check=_expect(lambda: canonical)),
        Case("c14n.rdfc10.pyoxigraph", _dataset_state, _oxigraph_rdfc, group="c14n",
             label="RDFC-1.0 step only (pyoxigraph, incl. parse)",
             check=_expect(lambda: canonical)),
    ]
    return out


if __name__ == "__main__":  # pragma: no cover - ``python -m bench.data_integrity``
    from bench._harness import Settings, run_cases

    results = run_cases(cases(), Settings())
    by_name = {r.case.name: r for r in results}
    for r in results:
        ref = by_name.get(r.case.reference or "")
        floor = by_name.get(r.case.floor or "")
        extra = ""
        if ref is not None:
            extra += f"  x{ref.median_ns / r.median_ns:.2f} vs {ref.case.name}"
        if floor is not None:
            extra += f"  {r.median_ns / floor.median_ns:.1f}x floor"
        print(f"{r.case.name:45} {r.median_ns / 1e6:8.3f} ms{extra}")
