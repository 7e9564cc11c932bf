"""Keys: the only module of Tessera that touches ``cryptography.hazmat``.

Public keys are small objects whose :meth:`PublicKey.verify` raises on a bad
signature (there is no boolean to forget). Private keys live behind the
:class:`~tessera.typing.Signer` interface; :class:`LocalSigner` is the
in-process implementation, and a KMS- or HSM-backed signer only has to offer
``alg``, ``key_id``, ``public_key`` and ``sign``.

JWKs are imported straight into ``cryptography``: unpadded base64url members
of exactly the curve's size (RFC 7518 §6.2.1, RFC 8037 §2), an EC point checked
on its curve. The resulting key objects are kept so that the hot path does no
re-import. Signatures use the JOSE encoding (RFC 7518 §3.4: ECDSA as the
fixed-size ``r || s``), which Data Integrity ECDSA suites share.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tessera.encoding import b64url_decode, b64url_encode, canonical_json
from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "SUPPORTED_ALGS",
    "Alg",
    "LocalSigner",
    "PublicKey",
    "generate_signer",
    "hash_secret",
    "new_secret_token",
    "public_key_from_jwk",
    "seal",
    "seal_with_passphrase",
    "secret_token_row",
    "signer_from_jwk",
    "unseal",
    "unseal_with_passphrase",
]

Alg = Literal["EdDSA", "ES256", "ES384"]
SUPPORTED_ALGS: Final[frozenset[str]] = frozenset({"EdDSA", "ES256", "ES384"})

_CURVES: Final[dict[str, tuple[ec.EllipticCurve, str, int, hashes.HashAlgorithm]]] = {
    # crv -> (curve, JOSE alg, coordinate size in bytes, hash)
    "P-256": (ec.SECP256R1(), "ES256", 32, hashes.SHA256()),
    "P-384": (ec.SECP384R1(), "ES384", 48, hashes.SHA384()),
}
_ALG_TO_CRV: Final[dict[str, str]] = {"EdDSA": "Ed25519", "ES256": "P-256", "ES384": "P-384"}
# ECDSA(hash) objects are immutable; building one per signature showed up in
# the verify profile (bench/README.md).
_ECDSA: Final[dict[str, ec.ECDSA]] = {crv: ec.ECDSA(c[3]) for crv, c in _CURVES.items()}

_PublicObj = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
_PrivateObj = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _bad_key(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.MALFORMED, f"invalid key: {detail}")


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A verification key (Ed25519, P-256 or P-384)."""

    alg: Alg
    crv: str
    _key: _PublicObj = field(repr=False)

    # -- construction -------------------------------------------------------
    @classmethod
    def from_jwk(cls, jwk: dict[str, Any]) -> PublicKey:
        if not isinstance(jwk, dict):
            raise _bad_key("JWK is not an object")
        if "d" in jwk:
            # A private JWK where a public one is expected is a leak waiting
            # to happen (it would be echoed into cnf or a DID document).
            raise _bad_key("private key material where a public key is expected")
        kty, crv = jwk.get("kty"), jwk.get("crv")
        if kty == "OKP" and crv == "Ed25519":
            alg: Alg = "EdDSA"
        elif kty == "EC" and crv in _CURVES:
            alg = _CURVES[crv][1]  # type: ignore[assignment]
        else:
            raise TesseraError(
                ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported key type {kty}/{crv}"
            )
        if "alg" in jwk and jwk["alg"] != alg:
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "JWK alg does not fit its curve")
        # kty and crv are strings here (matched above); x and y when present.
        # Spelled out rather than a generator: a cnf key arrives with every
        # presentation, and this is the cache key of _public_from_members.
        members: tuple[tuple[str, str], ...] = (("kty", kty), ("crv", crv))
        for name in ("x", "y"):
            if name in jwk:
                value = jwk[name]
                if not isinstance(value, str):
                    raise _bad_key("JWK members must be strings")
                members += ((name, value),)
        return _public_from_members(members, alg)

    @classmethod
    def from_raw(cls, crv: str, data: bytes) -> PublicKey:
        """From raw Ed25519 bytes or a SEC1 (compressed or not) EC point."""
        try:
            if crv == "Ed25519":
                return cls("EdDSA", crv, ed25519.Ed25519PublicKey.from_public_bytes(data))
            if crv in _CURVES:
                curve, alg, _, _ = _CURVES[crv]
                key = ec.EllipticCurvePublicKey.from_encoded_point(curve, data)
                return cls(alg, crv, key)  # type: ignore[arg-type]
        except ValueError as exc:
            raise _bad_key(f"not a valid {crv} point") from exc
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported curve {crv}")

    # -- use ------------------------------------------------------------------
    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``invalid_signature`` unless ``signature`` is valid over ``data``."""
        try:
            # crv names the key object's type (every constructor pairs them);
            # isinstance against the Ed25519PublicKey ABC goes through
            # ABCMeta.__instancecheck__ in Python, twice per presentation.
            if self.crv == "Ed25519":
                cast(ed25519.Ed25519PublicKey, self._key).verify(signature, data)
                return
            size = _CURVES[self.crv][2]
            if len(signature) != 2 * size:
                raise InvalidSignature
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            cast(ec.EllipticCurvePublicKey, self._key).verify(
                encode_dss_signature(r, s), data, _ECDSA[self.crv])
        except InvalidSignature:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, "signature does not verify") from None

    def to_jwk(self) -> dict[str, str]:
        return dict(self._jwk_members)

    @functools.cached_property
    def _jwk_members(self) -> tuple[tuple[str, str], ...]:
        # Once per key: equality and hashing compare these, and a batch request
        # compares every proof's key with every attested key (public_numbers()
        # cost more than the rest of a comparison; bench/README.md, issue 10).
        if isinstance(self._key, ed25519.Ed25519PublicKey):
            raw = self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return (("kty", "OKP"), ("crv", "Ed25519"), ("x", b64url_encode(raw)))
        size = _CURVES[self.crv][2]
        nums = self._key.public_numbers()
        return (("kty", "EC"), ("crv", self.crv),
                ("x", b64url_encode(nums.x.to_bytes(size, "big"))),
                ("y", b64url_encode(nums.y.to_bytes(size, "big"))))

    def raw(self, *, compressed: bool = True) -> bytes:
        """Raw Ed25519 bytes, or the SEC1 point (compressed by default, as did:key wants)."""
        if compressed:
            return self._did_key_bytes
        return self._key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @functools.cached_property
    def _did_key_bytes(self) -> bytes:
        # The verifier names the holder by the did:key of the cnf key on every
        # presentation; the key object is shared (``from_jwk`` caches it), so the
        # encoding is done once per key (bench/README.md, issue 10).
        if isinstance(self._key, ed25519.Ed25519PublicKey):
            raw_fmt = serialization.PublicFormat.Raw
            return self._key.public_bytes(serialization.Encoding.Raw, raw_fmt)
        return self._key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
        jwk = self.to_jwk()
        required = {k: jwk[k] for k in (("crv", "kty", "x") if jwk["kty"] == "OKP" else
                                       ("crv", "kty", "x", "y"))}
        return b64url_encode(hashlib.sha256(canonical_json(required)).digest())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self._jwk_members == other._jwk_members

    def __hash__(self) -> int:
        return hash(self.thumbprint())


@functools.lru_cache(maxsize=4096)
def _public_from_members(members: tuple[tuple[str, str], ...], alg: Alg) -> PublicKey:
    # Holder keys arrive in every presentation's cnf, and a batch request brings ten fresh
    # ones: imported straight into cryptography, which checks the point is on the curve
    # (jwcrypto's import cost 6x as much: bench/README.md
    # "Issuance, third pass (session 5)").
    jwk = dict(members)
    crv = jwk["crv"]
    key: _PublicObj
    try:
        if crv == "Ed25519":
            if "y" in jwk:
                raise _bad_key("an OKP key has no y")
            key = ed25519.Ed25519PublicKey.from_public_bytes(_coordinate(jwk, "x", 32))
        else:
            curve, _, size, _ = _CURVES[crv]
            point = b"\x04" + _coordinate(jwk, "x", size) + _coordinate(jwk, "y", size)
            key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise _bad_key(str(exc) or type(exc).__name__) from exc
    return PublicKey(alg=alg, crv=crv, _key=key)


def _coordinate(jwk: dict[str, str], name: str, size: int) -> bytes:
    """A key member: unpadded base64url of exactly ``size`` bytes (RFC 7518 §6.2.1.2: "MUST
    be the full size of a coordinate"; RFC 8037 §2: the Ed25519 public key)."""
    if name not in jwk:
        raise _bad_key(f"JWK has no {name}")
    raw = b64url_decode(jwk[name], max_len=4 * size)
    if len(raw) != size:
        raise _bad_key(f"JWK {name} is not {size} bytes")
    return raw


class LocalSigner:
    """An in-process private key. Its repr and str never show key material."""

    __slots__ = ("_private", "alg", "key_id", "public_key")

    def __init__(self, private: _PrivateObj, alg: Alg, key_id: str | None = None) -> None:
        self._private = private
        self.alg: Alg = alg
        self.key_id = key_id
        crv = _ALG_TO_CRV[alg]
        self.public_key = PublicKey(alg, crv, private.public_key())

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            return self._private.sign(data)
        crv = _ALG_TO_CRV[self.alg]
        r, s = decode_dss_signature(self._private.sign(data, _ECDSA[crv]))
        size = _CURVES[crv][2]
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def with_key_id(self, key_id: str | None) -> LocalSigner:
        return LocalSigner(self._private, self.alg, key_id)

    def export_private_jwk(self) -> dict[str, str]:
        """The private JWK. Only for encrypted storage or an explicit CLI export."""
        jwk = self.public_key.to_jwk()
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            raw = self._private.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return {**jwk, "d": b64url_encode(raw)}
        size = _CURVES[self.public_key.crv][2]
        d = self._private.private_numbers().private_value.to_bytes(size, "big")
        return {**jwk, "d": b64url_encode(d)}

    def __repr__(self) -> str:
        return f"LocalSigner(alg={self.alg!r}, key_id={self.key_id!r})"


def generate_signer(alg: str = "EdDSA", *, key_id: str | None = None) -> LocalSigner:
    if alg == "EdDSA":
        return LocalSigner(ed25519.Ed25519PrivateKey.generate(), "EdDSA", key_id)
    if alg in ("ES256", "ES384"):
        curve = _CURVES[_ALG_TO_CRV[alg]][0]
        return LocalSigner(ec.generate_private_key(curve), alg, key_id)  # type: ignore[arg-type]
    raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"unsupported algorithm {alg!r}")


def signer_from_jwk(jwk: dict[str, Any], *, key_id: str | None = None) -> LocalSigner:
    """Load a private JWK (OKP Ed25519 or EC P-256/P-384)."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("d"), str):
        raise _bad_key("not a private JWK")
    public = PublicKey.from_jwk({k: v for k, v in jwk.items() if k != "d"})
    d = b64url_decode(jwk["d"], max_len=128)
    try:
        if public.alg == "EdDSA":
            private: _PrivateObj = ed25519.Ed25519PrivateKey.from_private_bytes(d)
        else:
            curve = _CURVES[public.crv][0]
            private = ec.derive_private_key(int.from_bytes(d, "big"), curve)
    except ValueError as exc:
        raise _bad_key("bad private scalar") from exc
    signer = LocalSigner(private, public.alg, key_id or jwk.get("kid"))
    if signer.public_key != public:
        raise _bad_key("private and public parts do not match")
    return signer


def public_key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    return PublicKey.from_jwk(jwk)


# -- encryption at rest ---------------------------------------------------------
# Wallet files (under a passphrase) and the issuer's key store (under a master
# key) seal private JWKs with AES-256-GCM. scrypt parameters follow RFC 7914
# §2's interactive-login guidance scaled to a 2-core machine.

_SCRYPT_N: Final = 2**15
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def seal(data: bytes, key: bytes, *, aad: bytes = b"") -> dict[str, str]:
    """Encrypt under a 32-byte key; the result is JSON-ready."""
    import os

    if len(key) != 32:
        raise TesseraError(ErrorCode.MALFORMED, "master key must be 32 bytes")
    nonce = os.urandom(12)
    return {
        "alg": "A256GCM",
        "nonce": b64url_encode(nonce),
        "ciphertext": b64url_encode(_aesgcm(key).encrypt(nonce, data, aad)),
    }


def unseal(box: dict[str, Any], key: bytes, *, aad: bytes = b"") -> bytes:
    from cryptography.exceptions import InvalidTag

    try:
        nonce = b64url_decode(box["nonce"])
        ciphertext = b64url_decode(box["ciphertext"], max_len=10_000_000)
        return bytes(_aesgcm(key).decrypt(nonce, ciphertext, aad))
    except (KeyError, TypeError, ValueError) as exc:
        # ValueError: a nonce or key of the wrong length (AESGCM's own checks).
        raise TesseraError(ErrorCode.MALFORMED, "not a sealed box") from exc
    except InvalidTag:
        raise TesseraError(ErrorCode.WRONG_PASSPHRASE, "cannot decrypt: wrong key") from None


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal_with_passphrase(data: bytes, passphrase: str) -> dict[str, Any]:
    import os

    salt = os.urandom(16)
    key = _scrypt(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    box: dict[str, Any] = seal(data, key)
    box["kdf"] = {"name": "scrypt", "salt": b64url_encode(salt),
                  "n": _SCRYPT_N, "r": _SCRYPT_R, "p": _SCRYPT_P}
    return box


def unseal_with_passphrase(box: dict[str, Any], passphrase: str) -> bytes:
    try:
        kdf = box["kdf"]
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        salt = b64url_decode(kdf["salt"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "not a passphrase-sealed box") from exc
    if (kdf.get("name") != "scrypt" or not (2**10 <= n <= 2**20) or n & (n - 1)
            or not 1 <= r <= 16 or not 1 <= p <= 4):
        # Bounded so a hostile wallet file cannot make us burn minutes or GiB.
        raise TesseraError(ErrorCode.MALFORMED, "unsupported key-derivation parameters")
    return unseal(box, _scrypt(passphrase, salt, n, r, p))


# -- bearer secrets: API keys, partner keys, till keys -------------------------------------

_T = TypeVar("_T")


def hash_secret(secret: str) -> str:
    """What a service stores for a bearer secret: its SHA-256, hex.

    The secret is 256 random bits, so a plain SHA-256 is enough: there is
    nothing to brute-force that a slow KDF would protect.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret_token(prefix: str) -> tuple[str, str, str]:
    """A fresh ``<prefix><id>_<secret>`` token: (id, token, hash of the secret).

    The id is the public half (it names the row); only the hash of the secret
    is kept, and the token is shown once.
    """
    import secrets

    key_id = secrets.token_hex(8)
    secret = b64url_encode(secrets.token_bytes(32))
    return key_id, f"{prefix}{key_id}_{secret}", hash_secret(secret)


def secret_token_row(token: str, *, prefix: str, lookup: Callable[[str], _T | None],
                     stored_hash: Callable[[_T], str], refused: TesseraError) -> _T:
    """The row a ``<prefix><id>_<secret>`` token names if its secret matches, or raise ``refused``.

    ``lookup`` returns the live (unrevoked) row of an id, or None. The check
    never says which part was wrong, and hashes and compares in constant time
    even when the row is missing, so timing does not tell a missing key from a
    wrong secret.
    """
    import hmac

    if not token.startswith(prefix) or len(token) > 200:
        raise refused
    key_id, _, secret = token[len(prefix):].partition("_")
    row = lookup(key_id) if key_id and secret and len(key_id) <= 32 else None
    expected = stored_hash(row) if row is not None else "0" * 64
    if not hmac.compare_digest(hash_secret(secret or "x"), expected) or row is None:
        raise refused
    return row
