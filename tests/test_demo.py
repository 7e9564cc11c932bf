"""The README's first command: the demo runs through the real services and every attack
is refused; its exit code says so."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from tessera import demo


def _run() -> tuple[int, str]:
    buffer = io.StringIO()
    code = demo.run(Console(file=buffer, width=200, emoji=False, highlight=False))
    return code, buffer.getvalue()


def test_demo_passes_and_shows_what_was_learned_and_hidden() -> None:
    # No timing assertion here: speed belongs to bench/, not to unit tests.
    code, text = _run()
    assert code == 0, text
    # Both credentials came from Acme's running issuer through OpenID4VCI offers.
    assert text.count("OpenID4VCI: wallet received") == 2
    assert "LoyaltyMembershipCredential" in text and "LoyaltyPointsCredential" in text
    # The checkout went through Beta's verifier service: a QR deep link by reference,
    # a signed request object, a consent screen, direct_post, the till's polled result.
    beta = re.search(r"Beta's verifier service runs at (http://127\.0\.0\.1:\d+)", text)
    assert beta, text
    # Short (issue 11 item 9): Beta's did:web (its port's %3A escaped once more in the
    # query) and a short request_uri, in a small symbol.
    link = re.search(r"openid4vp://\?client_id=decentralized_identifier:did:web:"
                     r"127\.0\.0\.1%253A(\d+)&request_uri=(\S+)", text)
    assert link, text
    assert beta.group(1) == f"http://127.0.0.1:{link.group(1)}"
    assert re.fullmatch(re.escape(beta.group(1)) + r"/r/[\w-]{16}", link.group(2))
    version = re.search(r"version\s+(\d+)-[LMQ]\)", text)
    assert version and int(version.group(1)) <= 7, text
    assert "Share with Beta Coffee?" in text and "Member answers: yes" in text
    assert f"direct_post to {beta.group(1)}/response" in text
    assert re.search(r"The till polled /requests/[\w-]+/result: done", text)
    verdict = text[text.index("Beta's verdict"):text.index("Acme revoked")]
    assert "ok=True errors=[]" in verdict
    assert "tier_at_least_silver = true" in verdict
    assert "points_at_least_1000 = true" in verdict
    for hidden in ("points_balance", "membership_number", "tier_at_least_gold"):
        assert hidden in verdict  # listed on the hidden side
        assert f"{hidden} =" not in verdict  # never as something Beta learned
    # Every attack refused with its code, by the service.
    attacks = text[text.index("Attacks"):]
    for refused in ("disclosure_mismatch", "replayed", "nonce_mismatch", "unauthorized",
                    "expired", "revoked"):
        assert f"refused ['{refused}']" in attacks, refused
    assert "NOT REFUSED" not in attacks
    assert "Acme revoked the membership credential" in text
    assert "demo passed" in text


def test_demo_fails_when_an_attack_gets_through(monkeypatch: pytest.MonkeyPatch) -> None:
    # The "tampered" answer goes out untouched, so Beta rightly accepts it: the demo
    # must notice that the attack was not refused and exit non-zero.
    monkeypatch.setattr(demo, "_tamper", lambda vp_token: vp_token)
    code, text = _run()
    assert code == 1, text
    assert "NOT REFUSED" in text and "demo FAILED" in text
