"""SD-JWT VC: issue, present and verify, against the raw-crypto floor and ``sd-jwt``.

Every case works on the same membership credential: the claims of
:func:`tessera.credentials.membership_claims` (``program`` in clear, the ten
other claims selectively disclosable), an ES256 issuer, and a presentation
that discloses two claims (``tier_at_least_gold`` and ``membership_number``)
with a KB-JWT. The ``sd-jwt`` reference package (0.10.4) gets the same claims,
the same disclosures and decoys. Its verifier hard-wires ES256 for the KB-JWT,
so the like-for-like comparison uses an ES256 holder; Tessera is also measured
with an EdDSA holder, its default.

Floors are the bare signature operations of each flow, with ``cryptography``
and nothing else, over messages of the real sizes:

* issue: one ES256 sign (issuer JWT);
* present: one sign (KB-JWT), ES256 or Ed25519;
* verify with key binding: two verifies, issuer (ES256) and KB (ES256 or Ed25519).

The reference verifier checks less than Tessera (no ``exp``/``nbf``/``iat``,
no KB-JWT freshness, no schema, see notes/dependencies.md §5), so "faster than
the reference" is measured with Tessera doing strictly more work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

# Benchmarks may import cryptography.hazmat directly: the "only tessera/keys.py"
# rule is for package code. The floor must be the bare library call, not
# Tessera's wrapper around it, or it would hide the wrapper's overhead.
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bench._harness import Case
from tessera import credentials
from tessera.dcql import Query
from tessera.formats import sd_jwt as fmt
from tessera.jose import decode_unverified
from tessera.keys import LocalSigner, generate_signer, signer_from_jwk
from verifier import VerificationResult
from verifier import sd_jwt as low_level
from verifier.testing import FIXED_HOLDER_JWK, TestHolder, TestIssuer, offline_verifier

__all__ = ["cases"]

AUDIENCE: Final = "https://partner.example/checkout"
NONCE: Final = "n-0S6_WzA2Mj-bench-nonce"
DISCLOSE: Final = ("tier_at_least_gold", "membership_number")
DCQL: Final = {"credentials": [{
    "id": "m",
    "format": "dc+sd-jwt",
    "meta": {"vct_values": [credentials.MEMBERSHIP.vct]},
    "claims": [{"path": ["tier_at_least_gold"], "values": [True]},
               {"path": ["membership_number"]}],
}]}
DECOYS: Final = 3  # the reference adds 2..5 at random; Tessera is told the middle


class _Fixture:
    """Keys, claims and tokens shared by every case of one run."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self.brand = TestIssuer()
        self.issuer_signer: LocalSigner = self.brand.signer  # ES256, P-256
        self.holder_es = generate_signer("ES256")
        self.holder_ed = signer_from_jwk(FIXED_HOLDER_JWK)
        self.claims = credentials.membership_claims(
            program=self.brand.program, membership_number="M-000123", tier="gold",
            tiers=(("bronze", 0), ("silver", 1), ("gold", 2), ("platinum", 3)),
            member_since=date(2020, 5, 1), tier_valid_until=date(2027, 5, 1),
            name="Alice Example", email="alice@example.com",
        )
        self.vct = credentials.MEMBERSHIP.vct
        self.cred_es = self.issue(self.holder_es)
        self.cred_ed = self.issue(self.holder_ed)
        self.pres_es = self.present(self.cred_es, self.holder_es)
        self.pres_ed = self.present(self.cred_ed, self.holder_ed)

    def issue(self, holder: LocalSigner) -> str:
        return fmt.issue(
            self.claims, signer=self.issuer_signer, issuer=self.brand.did, vct=self.vct,
            holder_key=holder.public_key, issued_at=self.now,
            expires_at=self.now + timedelta(days=30),
            always_visible=credentials.MEMBERSHIP.always_visible, decoys=DECOYS,
        )

    def issue_credential(self, holder: LocalSigner) -> str:
        return fmt.issue_credential(
            credentials.MEMBERSHIP, self.claims, signer=self.issuer_signer,
            issuer=self.brand.did, holder_key=holder.public_key, issued_at=self.now,
            expires_at=self.now + timedelta(days=30),
        )

    def present(self, cred: str, holder: LocalSigner) -> str:
        return fmt.present(cred, disclose=DISCLOSE, holder=holder, audience=AUDIENCE,
                           nonce=NONCE, issued_at=datetime.now(UTC))

    def format_verify(self, presentation: str) -> fmt.VerifiedSdJwt:
        return fmt.verify(presentation, issuer_key=self.issuer_signer.public_key,
                          now=self.now, audience=AUDIENCE, nonce=NONCE)

    def sdk_verify(self, presentation: str) -> VerificationResult:
        return low_level.verify(presentation, issuer_keys=self.issuer_signer.public_key,
                                audience=AUDIENCE, nonce=NONCE, now=self.now)


# -- the raw-crypto floor -------------------------------------------------------------


class _Floor:
    """Bare ``cryptography`` keys and messages the size of the real ones."""

    def __init__(self, fx: _Fixture) -> None:
        self.p256 = ec.generate_private_key(ec.SECP256R1())
        self.p256_holder = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.ecdsa = ec.ECDSA(hashes.SHA256())
        issuer_jwt = fmt.parse(fx.pres_es).jwt
        kb_es = fmt.parse(fx.pres_es).kb_jwt
        kb_ed = fmt.parse(fx.pres_ed).kb_jwt
        assert kb_es is not None and kb_ed is not None
        self.issuer_input = decode_unverified(issuer_jwt).signing_input
        self.kb_es_input = decode_unverified(kb_es).signing_input
        self.kb_ed_input = decode_unverified(kb_ed).signing_input
        self.issuer_sig = self.p256.sign(self.issuer_input, self.ecdsa)
        self.kb_es_sig = self.p256_holder.sign(self.kb_es_input, self.ecdsa)
        self.kb_ed_sig = self.ed.sign(self.kb_ed_input)
        self.p256_pub = self.p256.public_key()
        self.p256_holder_pub = self.p256_holder.public_key()
        self.ed_pub = self.ed.public_key()

    def sign_issuer(self) -> bytes:
        return self.p256.sign(self.issuer_input, self.ecdsa)

    def sign_kb_es(self) -> bytes:
        return self.p256_holder.sign(self.kb_es_input, self.ecdsa)

    def sign_kb_ed(self) -> bytes:
        return self.ed.sign(self.kb_ed_input)

    def verify_es_es(self) -> None:
        self.p256_pub.verify(self.issuer_sig, self.issuer_input, self.ecdsa)
        self.p256_holder_pub.verify(self.kb_es_sig, self.kb_es_input, self.ecdsa)

    def verify_es_ed(self) -> None:
        self.p256_pub.verify(self.issuer_sig, self.issuer_input, self.ecdsa)
        self.ed_pub.verify(self.kb_ed_sig, self.kb_ed_input)


# -- the sd-jwt reference package ------------------------------------------------------


class _Reference:
    """The same credential through ``sd_jwt`` (IETF reference implementation)."""

    def __init__(self, fx: _Fixture) -> None:
        from jwcrypto.jwk import JWK
        from sd_jwt.common import SDObj
        from sd_jwt.holder import SDJWTHolder
        from sd_jwt.issuer import SDJWTIssuer
        from sd_jwt.verifier import SDJWTVerifier

        self._issuer_cls, self._holder_cls, self._verifier_cls = (
            SDJWTIssuer, SDJWTHolder, SDJWTVerifier)
        kid = fx.issuer_signer.key_id
        self.issuer_key = JWK(**fx.issuer_signer.export_private_jwk(), kid=kid)
        self.issuer_pub = JWK(**fx.issuer_signer.public_key.to_jwk(), kid=kid)
        self.holder_key = JWK(**fx.holder_es.export_private_jwk())
        always = credentials.MEMBERSHIP.always_visible
        self.user_claims: dict[Any, Any] = {
            "iss": fx.brand.did, "vct": fx.vct, "iat": int(fx.now.timestamp()),
            "exp": int((fx.now + timedelta(days=30)).timestamp()),
        }
        for name, value in fx.claims.items():
            self.user_claims[name if name in always else SDObj(name)] = value
        self.header = {"typ": "dc+sd-jwt", "kid": kid}
        self.issuance = self.issue()
        self.presentation = self.present()

    def issue(self) -> str:
        issued = self._issuer_cls(
            self.user_claims, self.issuer_key, holder_key=self.holder_key, sign_alg="ES256",
            add_decoy_claims=True, extra_header_parameters=self.header,
        )
        out: str = issued.sd_jwt_issuance
        return out

    def present(self) -> str:
        holder = self._holder_cls(self.issuance)
        holder.create_presentation({name: True for name in DISCLOSE}, nonce=NONCE,
                                   aud=AUDIENCE, holder_key=self.holder_key, sign_alg="ES256")
        out: str = holder.sd_jwt_presentation
        return out

    def verify(self, presentation: str) -> dict[str, Any]:
        verifier = self._verifier_cls(presentation, lambda _iss, _hdr: self.issuer_pub,
                                      expected_aud=AUDIENCE, expected_nonce=NONCE)
        out: dict[str, Any] = verifier.get_verified_payload()
        return out


# -- checks: a refused or half-done result must never produce a figure --------------------


def _is_token(out: Any) -> None:
    if not isinstance(out, str) or out.count(".") < 2 or "~" not in out:
        raise AssertionError(f"not an SD-JWT: {out!r:.80}")


def _is_presentation(out: Any) -> None:
    _is_token(out)
    if out.endswith("~"):
        raise AssertionError("presentation has no KB-JWT")


def _disclosed(claims: dict[str, Any]) -> None:
    if claims.get("tier_at_least_gold") is not True or claims.get("membership_number") != \
            "M-000123" or "name" in claims:
        raise AssertionError(f"wrong disclosed claims: {sorted(claims)}")


def _format_ok(out: Any) -> None:
    assert isinstance(out, fmt.VerifiedSdJwt) and out.key_binding is not None
    _disclosed(out.claims)


def _result_ok(out: Any) -> None:
    assert isinstance(out, VerificationResult)
    if not out.ok:
        raise AssertionError(f"verification failed: {out.errors}")
    _disclosed(out.claims)


def _reference_ok(out: Any) -> None:
    assert isinstance(out, dict)
    _disclosed(out)


# -- cases --------------------------------------------------------------------------------


def _const(value: Any) -> Callable[[int], Any]:
    return lambda _n: value


def _full_sdk_setup(fx: _Fixture, holder: LocalSigner) -> Callable[[int], Any]:
    """``n`` fresh requests and their presentations, made before the clock starts.

    Each :meth:`Verifier.verify` consumes its request's nonce, so every call
    needs its own; the verifier is shared so its resolver and caches are warm,
    as they would be at a till.
    """
    verifier = offline_verifier(fx.brand)
    member = TestHolder(holder)
    cred = fx.issue(holder)
    Query.parse(DCQL)

    def setup(n: int) -> Iterator[tuple[Any, Any, str]]:
        pairs = []
        for _ in range(n):
            req = verifier.create_request(audience=AUDIENCE, dcql=DCQL)
            pairs.append((req, member.present(cred, list(DISCLOSE), req)))
        return iter([(verifier, req, token) for req, token in pairs])

    return setup


def _full_sdk_verify(state: Iterator[tuple[Any, Any, str]]) -> VerificationResult:
    verifier, req, token = next(state)
    result: VerificationResult = verifier.verify(token, request=req)
    return result


def cases() -> list[Case]:
    fx = _Fixture()
    floor = _Floor(fx)
    ref = _Reference(fx)
    fx_verify, fx_sdk, ref_verify = fx.format_verify, fx.sdk_verify, ref.verify
    targets: dict[str, Any] = {"max_floor_ratio": 1.5, "min_speedup": 2.0}
    # Issue 10's acceptance for the SDK levels (they add schema, trust, DID, DCQL, nonce).
    sdk_targets: dict[str, Any] = {"max_floor_ratio": 1.8, "min_speedup": 2.0}
    return [
        # issue ------------------------------------------------------------------
        Case("floor.issue.es256", _const(floor), lambda f: f.sign_issuer(), group="issue",
             label="raw ES256 sign (cryptography)"),
        Case("tessera.issue.es256", _const(fx), lambda f: f.issue(f.holder_es),
             floor="floor.issue.es256", reference="sd-jwt.issue.es256", group="issue",
             label="tessera.formats.sd_jwt.issue", check=_is_token),
        Case("tessera.issue_credential.es256", _const(fx),
             lambda f: f.issue_credential(f.holder_es), floor="floor.issue.es256",
             reference="sd-jwt.issue.es256", group="issue",
             label="sd_jwt.issue_credential (+schema)", check=_is_token),
        Case("sd-jwt.issue.es256", _const(ref), lambda r: r.issue(), floor="floor.issue.es256",
             group="issue", label="sd-jwt SDJWTIssuer", check=_is_token),
        # present ----------------------------------------------------------------
        Case("floor.present.es256", _const(floor), lambda f: f.sign_kb_es(), group="present",
             label="raw ES256 sign (cryptography)"),
        Case("floor.present.ed25519", _const(floor), lambda f: f.sign_kb_ed(),
             group="present", label="raw Ed25519 sign (cryptography)"),
        Case("tessera.present.es256", _const(fx),
             lambda f: f.present(f.cred_es, f.holder_es),
             floor="floor.present.es256", reference="sd-jwt.present.es256", group="present",
             label="tessera present + KB-JWT", check=_is_presentation),
        Case("tessera.present.eddsa", _const(fx),
             lambda f: f.present(f.cred_ed, f.holder_ed),
             floor="floor.present.ed25519", reference="sd-jwt.present.es256",
             group="present", label="tessera present + KB-JWT (EdDSA)",
             check=_is_presentation),
        Case("sd-jwt.present.es256", _const(ref), lambda r: r.present(),
             floor="floor.present.es256", group="present", label="sd-jwt SDJWTHolder",
             check=_is_presentation),
        # verify -----------------------------------------------------------------
        Case("floor.verify.es256+es256", _const(floor), lambda f: f.verify_es_es(),
             group="verify", label="raw 2 verifies ES256+ES256"),
        Case("floor.verify.es256+ed25519", _const(floor), lambda f: f.verify_es_ed(),
             group="verify", label="raw 2 verifies ES256+Ed25519"),
        Case("tessera.format.verify.es256", _const(fx.pres_es), fx_verify,
             floor="floor.verify.es256+es256", reference="sd-jwt.verify.es256",
             group="verify", label="tessera.formats.sd_jwt.verify", check=_format_ok,
             **targets),
        Case("tessera.format.verify.eddsa", _const(fx.pres_ed), fx_verify,
             floor="floor.verify.es256+ed25519", reference="sd-jwt.verify.es256",
             group="verify", label="tessera.formats.sd_jwt.verify (EdDSA)",
             check=_format_ok, **targets),
        Case("verifier.sd_jwt.verify.es256", _const(fx.pres_es), fx_sdk,
             floor="floor.verify.es256+es256", reference="sd-jwt.verify.es256",
             group="verify", label="verifier.sd_jwt.verify (+schema)", check=_result_ok,
             **sdk_targets),
        Case("verifier.sd_jwt.verify.eddsa", _const(fx.pres_ed), fx_sdk,
             floor="floor.verify.es256+ed25519", reference="sd-jwt.verify.es256",
             group="verify", label="verifier.sd_jwt.verify (EdDSA)", check=_result_ok,
             **sdk_targets),
        Case("verifier.Verifier.verify.es256", _full_sdk_setup(fx, fx.holder_es),
             _full_sdk_verify, floor="floor.verify.es256+es256",
             reference="sd-jwt.verify.es256", group="verify",
             label="Verifier.verify (trust, DID, DCQL, nonce)", check=_result_ok,
             **sdk_targets),
        Case("verifier.Verifier.verify.eddsa", _full_sdk_setup(fx, fx.holder_ed),
             _full_sdk_verify, floor="floor.verify.es256+ed25519",
             reference="sd-jwt.verify.es256", group="verify",
             label="Verifier.verify (EdDSA)", check=_result_ok, **sdk_targets),
        Case("sd-jwt.verify.es256", _const(ref.presentation), ref_verify,
             floor="floor.verify.es256+es256", group="verify",
             label="sd-jwt SDJWTVerifier", check=_reference_ok),
    ]
