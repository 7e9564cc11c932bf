"""verifier.testing works exactly as its docstring shows, with no network."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, datetime, timedelta

import verifier.testing as testing
from tessera.keys import signer_from_jwk
from verifier.testing import (
    FIXED_HOLDER_JWK,
    FIXED_ISSUER_JWK,
    FixedClock,
    InMemoryResolver,
    TestHolder,
    TestIssuer,
    offline_verifier,
)


def _docstring_example() -> str:
    doc = testing.__doc__ or ""
    match = re.search(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert match, "verifier.testing's docstring lost its example block"
    return textwrap.dedent(match.group(1))


def test_docstring_example_runs() -> None:
    code = _docstring_example()
    assert "offline_verifier(brand)" in code and "assert result.ok" in code
    namespace: dict[str, object] = {}
    exec(compile(code, "verifier.testing docstring", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.ok  # type: ignore[attr-defined]
    assert result.claims == {  # type: ignore[attr-defined]
        "program": TestIssuer().program, "tier_at_least_silver": True}


def test_fixed_keys_are_fixed_and_consistent() -> None:
    brand, member = TestIssuer(), TestHolder()
    assert brand.did == "did:web:brand.test"
    assert brand.signer.public_key == signer_from_jwk(FIXED_ISSUER_JWK).public_key
    assert member.signer.public_key == signer_from_jwk(FIXED_HOLDER_JWK).public_key
    assert TestHolder().did == member.did and member.did.startswith("did:key:z6Mk")
    assert TestIssuer().did_document == brand.did_document
    [(method, key)] = InMemoryResolver(brand.did_document).resolve(brand.did).keys_for()
    assert method == f"{brand.did}#key-1" and key == brand.signer.public_key


def test_fixed_clock_drives_expiry() -> None:
    clock = FixedClock(datetime(2030, 1, 1, tzinfo=UTC))
    brand, member = TestIssuer(clock=clock), TestHolder(clock=clock)
    v = offline_verifier(brand, clock=clock)
    cred = brand.issue_points(member, balance=600, valid_for=timedelta(hours=1))
    req = v.create_request(audience="https://shop.test")
    assert v.verify(member.present(cred, ["points_at_least_500"], req), request=req).ok
    clock.advance(hours=2)
    req = v.create_request(audience="https://shop.test")
    result = v.verify(member.present(cred, ["points_at_least_500"], req), request=req)
    assert result.errors == ("expired",)


def test_offline_verifier_trusts_only_its_issuers() -> None:
    clock = FixedClock()
    brand = TestIssuer(clock=clock)
    stranger = TestIssuer("did:web:stranger.test", clock=clock)
    member = TestHolder(clock=clock)
    v = offline_verifier(brand, clock=clock)
    req = v.create_request(audience="https://shop.test")
    pres = member.present(stranger.issue_membership(member), ["tier_at_least_gold"], req)
    # Not in the trust list, and not resolvable either: no network is tried.
    assert v.verify(pres, request=req).errors in (("did_resolution_failed",),
                                                  ("untrusted_issuer",))
    both = offline_verifier(brand, stranger, clock=clock)
    req = both.create_request(audience="https://shop.test")
    pres = member.present(stranger.issue_membership(member), ["tier_at_least_gold"], req)
    assert both.verify(pres, request=req).ok
