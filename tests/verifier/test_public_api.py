"""The public surface of the verifier SDK, and that it imports without the server stack."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

VERIFIER_ALL = {
    "AuthorizationRequest",
    "DirectPostResponse",
    "ErrorCode",
    "OpenID4VPVerifier",
    "PresentationRequest",
    "PresentedCredential",
    "StatusCheck",
    "TrustList",
    "TrustedIssuer",
    "VerificationResult",
    "Verifier",
    "decode_transaction_data",
    "default_status_check",
    "encode_transaction_data",
    "parse_direct_post",
    "split_client_id",
}
SD_JWT_FORMAT_ALL = {
    "DEFAULT_ALGS",
    "SdJwt",
    "VerifiedSdJwt",
    "check_times",
    "decode_disclosure",
    "disclosed_claim_names",
    "issue",
    "issue_credential",
    "parse",
    "present",
    "verify",
}


@pytest.mark.parametrize(("module", "expected"), [
    ("verifier", VERIFIER_ALL),
    ("tessera.formats.sd_jwt", SD_JWT_FORMAT_ALL),
    ("verifier.sd_jwt", {"verify"}),
])
def test_all_is_exactly_the_public_api(module: str, expected: set[str]) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) == expected, (
        "public API changed: update this test deliberately (partners depend on it)")
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        assert getattr(mod, name, None) is not None, name


def test_design_contract_names() -> None:
    from verifier import TrustList, Verifier

    assert callable(Verifier.create_request) and callable(Verifier.verify)
    assert callable(TrustList.from_file)


def test_verification_codes_are_documented() -> None:
    from tessera.errors import ErrorCode
    from verifier.errors import DESCRIPTIONS, VERIFICATION_CODES

    assert set(ErrorCode) >= VERIFICATION_CODES
    assert all(DESCRIPTIONS[c].strip() for c in VERIFICATION_CODES)
    for code in ("invalid_signature", "untrusted_issuer", "revoked", "suspended", "expired",
                 "not_yet_valid", "nonce_mismatch", "audience_mismatch", "replayed",
                 "key_binding_missing", "key_binding_invalid", "disclosure_mismatch",
                 "schema_invalid", "malformed", "unsupported_format", "status_unavailable"):
        assert ErrorCode(code) in VERIFICATION_CODES, code


BLOCKED = ("fastapi", "starlette", "uvicorn", "sqlmodel", "sqlalchemy", "alembic", "issuer",
           "holder", "prometheus_client")

_SCRIPT = textwrap.dedent("""
    import sys

    BLOCKED = {blocked!r}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {{name}}")
            return None

    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker does not work for {{name}}")

    import verifier
    import verifier.errors
    import verifier.sd_jwt
    import verifier.testing
    from verifier import TrustList, Verifier
    from verifier.testing import TestHolder, TestIssuer, offline_verifier

    brand, member = TestIssuer(), TestHolder()
    v = offline_verifier(brand)
    req = v.create_request(audience="https://shop.test")
    result = v.verify(member.present(brand.issue_membership(member),
                                     ["tier_at_least_gold"], req), request=req)
    assert result.ok, result.errors
    leaked = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
    assert not leaked, leaked
    print("ok")
""")


def test_verifier_imports_without_server_stack_or_other_roles() -> None:
    script = _SCRIPT.format(blocked=BLOCKED)
    proc = subprocess.run(  # noqa: S603 - our own script, run by this interpreter
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
