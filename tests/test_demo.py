"""The README's first command: the demo runs and every attack is refused."""

from __future__ import annotations

import io

from rich.console import Console

from tessera.demo import run


def test_demo_passes_and_shows_what_was_learned_and_hidden() -> None:
    buffer = io.StringIO()
    code = run(Console(file=buffer, width=200, emoji=False, highlight=False))
    text = buffer.getvalue()
    assert code == 0, text
    assert "tier_at_least_silver = true" in text and "points_at_least_1000 = true" in text
    for refused in ("disclosure_mismatch", "replayed", "expired", "revoked"):
        assert refused in text
    # Both credentials came from the running issuer through OpenID4VCI offers.
    assert text.count("OpenID4VCI: wallet received") == 2
    assert "LoyaltyMembershipCredential" in text and "LoyaltyPointsCredential" in text
    assert "Acme revoked the membership credential" in text
    assert "demo passed" in text
