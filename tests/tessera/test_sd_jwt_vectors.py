"""The SD-JWT and SD-JWT VC specification examples, data-driven.

Each ``specification.yml`` (copied unchanged from the spec repositories) gives
user claims with ``!sd`` tags, the claims a holder discloses, and whether key
binding is used; ``settings.yml`` next to them gives the keys, times, nonce and
audience. For every example the reference package (``sd-jwt``, which ships the
YAML loader for ``!sd``) issues and presents exactly as the spec's own
generator does, then Tessera must verify the presentation and arrive at the
same processed payload as the reference verifier.

Two adjustments, because Tessera verifies SD-JWT *VCs*: the header ``typ`` is
``dc+sd-jwt`` unless the example sets an accepted one, and a clear-text
``vct`` (and ``iss``, when an example omits the default claims) is added
where the RFC 9901 examples, which are plain SD-JWTs, have none (SD-JWT VC
§3.2.2.2 requires both). The disclosure structure under test is unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sd_jwt.holder as ref_holder_module
import yaml
from jwcrypto.jwk import JWK
from sd_jwt.common import SDObj
from sd_jwt.holder import SDJWTHolder
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.utils.yaml_specification import load_yaml_specification, remove_sdobj_wrappers
from sd_jwt.verifier import SDJWTVerifier

from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import PublicKey
from tests.conftest import VECTORS, vectors_dir

SETS = ("sd-jwt", "sd-jwt-vc")
STRUCTURAL = {"iss", "iat", "nbf", "exp", "cnf", "vct", "vct#integrity", "status", "sub",
              "jti"}


def _examples() -> list[Any]:
    cases = []
    for name in SETS:
        folder = VECTORS / name / "examples"
        if not folder.is_dir():
            cases.append(pytest.param(name, None, id=f"{name}-absent"))
            continue
        for spec in sorted(folder.glob("*/specification.yml")):
            cases.append(pytest.param(name, spec, id=f"{name}:{spec.parent.name}"))
    return cases


def _settings(spec: Path) -> dict[str, Any]:
    settings: dict[str, Any] = yaml.safe_load((spec.parent.parent / "settings.yml").read_text())
    return settings


def _issuer_jwk(settings: dict[str, Any]) -> dict[str, Any]:
    keys = settings["key_settings"]
    # The SD-JWT repository lists issuer_keys; the SD-JWT VC one has issuer_key.
    jwk: dict[str, Any] = keys["issuer_key"] if "issuer_key" in keys else keys["issuer_keys"][0]
    return jwk


def _has_claim(claims: dict[Any, Any], name: str) -> bool:
    return any((k.value if isinstance(k, SDObj) else k) == name for k in claims)


@pytest.mark.parametrize(("set_name", "spec"), _examples())
def test_specification_example(set_name: str, spec: Path | None,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    if spec is None:
        vectors_dir(set_name)  # skips with the reason
        return
    example = load_yaml_specification(spec)
    if example.get("serialization_format", "compact") != "compact":
        pytest.skip("JSON serialization (RFC 9901 §8) is outside Tessera's scope: "
                    "OpenID4VP carries SD-JWT VCs in compact form")
    cnf = example["user_claims"].get("cnf")
    if isinstance(cnf, dict) and cnf.get("jwk", {}).get("kty") not in ("OKP", "EC"):
        pytest.skip("holder key is RSA (a truncated, illustrative modulus in this example); "
                    "Tessera binds Ed25519 and NIST-curve keys only")
    settings = _settings(spec)
    key_binding = bool(example.get("key_binding", False))
    issuer_jwk = JWK(**_issuer_jwk(settings))
    holder_jwk = JWK(**settings["key_settings"]["holder_key"])
    nonce = settings["key_binding_nonce"]
    aud = settings["identifiers"]["verifier"]
    at = settings["iat"] + 60
    monkeypatch.setattr(ref_holder_module, "time", lambda: at)

    claims: dict[Any, Any] = {}
    if example.get("include_default_claims", True):
        claims = {"iss": settings["identifiers"]["issuer"], "iat": settings["iat"],
                  "exp": settings["exp"]}
    claims.update(example["user_claims"])
    if not _has_claim(claims, "iss"):
        claims["iss"] = settings["identifiers"]["issuer"]
    if not _has_claim(claims, "vct"):
        claims["vct"] = f"https://vct.example/{spec.parent.name}"
    header = dict(example.get("extra_header_parameters", {}))
    if header.get("typ") not in ("dc+sd-jwt", "vc+sd-jwt"):
        header["typ"] = "dc+sd-jwt"

    issued = SDJWTIssuer(claims, issuer_jwk, holder_jwk if key_binding else None,
                         add_decoy_claims=example.get("add_decoy_claims", False),
                         extra_header_parameters=header)
    holder = SDJWTHolder(issued.sd_jwt_issuance)
    holder.create_presentation(example["holder_disclosed_claims"],
                               nonce if key_binding else None, aud if key_binding else None,
                               holder_jwk if key_binding else None)
    presentation = holder.sd_jwt_presentation

    public = JWK.from_json(issuer_jwk.export_public())
    expected = SDJWTVerifier(presentation, lambda iss, hdr: public,
                             aud if key_binding else None,
                             nonce if key_binding else None).get_verified_payload()

    issuer_public = PublicKey.from_jwk(
        {k: v for k, v in _issuer_jwk(settings).items() if k != "d"})
    vc = sd_jwt.verify(
        presentation,
        issuer_key=issuer_public,
        now=datetime.fromtimestamp(at, UTC),
        audience=aud if key_binding else None,
        nonce=nonce if key_binding else None,
        require_key_binding=key_binding,
    )
    assert vc.payload == expected
    assert vc.claims == {k: v for k, v in expected.items() if k not in STRUCTURAL}
    assert (vc.key_binding is not None) is key_binding
    # Something was actually selected: what the holder disclosed is a subset of
    # what the issuer put in, and nothing undisclosed came through.
    everything = remove_sdobj_wrappers(claims)
    assert set(vc.payload) - {"cnf"} <= set(everything)
    if not key_binding:
        # An SD-JWT without key binding is refused when binding is required.
        with pytest.raises(TesseraError) as exc:
            sd_jwt.verify(presentation, issuer_key=issuer_public,
                          now=datetime.fromtimestamp(at, UTC), audience=aud, nonce=nonce)
        assert exc.value.code is ErrorCode.KEY_BINDING_MISSING


def test_every_example_folder_is_collected() -> None:
    found = sorted(p.parent.name for p in (vectors_dir("sd-jwt") / "examples").glob(
        "*/specification.yml"))
    assert len(found) >= 10 and "simple" in found and "arf-pid" in found
