"""The end-to-end demo: the README's first command.

Brand Acme issues Gold membership and 1,250 points to a member's wallet; the
member shows partner Beta only "Silver or better" and "at least 1000
points"; Beta verifies, and the output sets what Beta learned beside what
stayed in the wallet. Then a tampered, a replayed and an expired
presentation are each refused with their codes.

Everything runs in this process with real keys and real signatures. Acme's
did:web document is pinned in Beta's resolver (in production Beta resolves
it over HTTPS), so the demo needs no network.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tessera import credentials
from tessera.did import Resolver
from tessera.encoding import b64url_decode, b64url_encode
from tessera.keys import generate_signer

ACME_DID = "did:web:acme.example"
BETA_ID = "https://beta-coffee.example/checkout"


@dataclass
class Outcome:
    name: str
    expected: str
    got: list[str]

    @property
    def passed(self) -> bool:
        return self.expected in self.got


def _dcql() -> dict[str, Any]:
    return {"credentials": [
        credentials_query("membership", credentials.MEMBERSHIP.vct, "tier_at_least_silver"),
        credentials_query("points", credentials.POINTS.vct, "points_at_least_1000"),
    ]}


def credentials_query(cred_id: str, vct: str, claim: str) -> dict[str, Any]:
    from tessera.dcql import claims_query

    return claims_query(cred_id, vct, [claim], require_true=True)


def _tamper(vp_token: dict[str, list[str]]) -> dict[str, list[str]]:
    """Rewrite the disclosed points claim to claim 5000+; the digest no longer matches."""
    parts = vp_token["points"][0].split("~")
    for i, disclosure in enumerate(parts[1:-1], start=1):
        salt, name, _ = json.loads(b64url_decode(disclosure))
        if name == "points_at_least_1000":
            forged = [salt, "points_at_least_5000", True]
            parts[i] = b64url_encode(json.dumps(forged).encode())
    return {**vp_token, "points": ["~".join(parts)]}


def run(console: Console | None = None) -> int:
    from holder import ConsentRequest, Wallet
    from issuer import CredentialIssuer, Program, did_document
    from verifier import TrustList, Verifier

    out = console or Console(emoji=False, highlight=False)
    out.rule("[bold]Tessera demo: a coalition loyalty checkout")

    # -- Acme, the issuing brand ---------------------------------------------------
    acme_key = generate_signer("ES256", key_id=f"{ACME_DID}#key-2026")
    acme_doc = did_document(ACME_DID, [(acme_key.key_id or "", acme_key.public_key)])
    program = Program(id="https://acme.example/rewards", name="Acme Rewards", brand=ACME_DID)
    acme = CredentialIssuer(signer=acme_key, did=ACME_DID, program=program)
    resolver = Resolver(documents={ACME_DID: acme_doc})

    # -- the member's wallet -------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        wallet = Wallet.create(Path(tmp) / "alice.wallet", "demo passphrase", resolver=resolver)
        out.print(f"Member wallet created, DID [cyan]{wallet.did}[/]")
        membership = acme.issue_membership(
            holder_key=wallet.signer.public_key, membership_number="ACME-000042", tier="gold",
            member_since=date(2021, 3, 14), tier_valid_until=date(2027, 12, 31),
            name="Alice Example", email="alice@example.com",
        )
        points = acme.issue_points(
            holder_key=wallet.signer.public_key, membership_number="ACME-000042", balance=1250,
            checkpoint=(7, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
        )
        for credential in (membership, points):
            stored = wallet.receive(credential)
            out.print(f"Acme issued [green]{stored.credential_type}[/] "
                      f"({len(stored.claims)} claims), checked and stored in the wallet")

        # -- Beta, the partner at checkout ---------------------------------------------
        beta = Verifier(trust=TrustList.of([(ACME_DID, [t.name for t in
                                                        credentials.CREDENTIAL_TYPES])]),
                        resolver=resolver)
        request = beta.create_request(audience=BETA_ID, dcql=_dcql())
        out.print(f"\nBeta asks (DCQL): tier_at_least_silver = true, points_at_least_1000 = true;"
                  f" nonce [dim]{request.nonce[:12]}…[/]")

        def consent(screen: ConsentRequest) -> bool:
            table = Table(title=f"Share with {screen.verifier_name}?  ({screen.purpose})")
            table.add_column("credential")
            table.add_column("shared", style="green")
            table.add_column("withheld", style="red")
            for item in screen.items:
                table.add_row(item.credential_type, "\n".join(sorted(item.shared)),
                              "\n".join(item.withheld))
            out.print(table)
            out.print("Member answers: [bold green]yes[/]")
            return True

        vp_token = wallet.present(
            dcql=request.dcql or {}, audience=request.audience, nonce=request.nonce,
            consent=consent, verifier_name="Beta Coffee", purpose="Gold-or-better discount",
        )
        result = beta.verify(vp_token, request=request)
        learned = result.claims
        everything: dict[str, Any] = {}
        for stored in wallet.credentials():
            everything.update(stored.claims)
        hidden = sorted(set(everything) - set(learned))
        side = Table(title=f"Beta's verdict: ok={result.ok} errors={list(result.errors)}")
        side.add_column("What Beta learned", style="green")
        side.add_column("What stayed hidden in the wallet", style="red")
        learned_lines = [f"{k} = {json.dumps(v)}" for k, v in learned.items()]
        learned_lines += [f"issuer = {result.issuer}", f"holder = {result.holder}"]
        for i in range(max(len(learned_lines), len(hidden))):
            side.add_row(learned_lines[i] if i < len(learned_lines) else "",
                         hidden[i] if i < len(hidden) else "")
        out.print(side)

        # -- attacks ----------------------------------------------------------------------
        outcomes: list[Outcome] = []
        request2 = beta.create_request(audience=BETA_ID, dcql=_dcql())
        honest = wallet.present(dcql=request2.dcql or {}, audience=BETA_ID,
                                nonce=request2.nonce, consent=lambda _: True)
        outcomes.append(Outcome("tampered disclosure (claims 5000+ points)",
                                "disclosure_mismatch",
                                list(beta.verify(_tamper(honest), request=request2).errors)))
        outcomes.append(Outcome("replayed presentation (first one again)", "replayed",
                                list(beta.verify(vp_token, request=request).errors)))
        past = datetime.now(UTC) - timedelta(days=2)
        stale_acme = CredentialIssuer(signer=acme_key, did=ACME_DID, program=program,
                                      clock=lambda: past)
        stale = stale_acme.issue_points(
            holder_key=wallet.signer.public_key, membership_number="ACME-000042", balance=1250,
            checkpoint=(7, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
        )
        request3 = beta.create_request(audience=BETA_ID, dcql={"credentials": [
            credentials_query("points", credentials.POINTS.vct, "points_at_least_1000")]})
        from tessera.formats import sd_jwt

        expired_vp = {"points": [sd_jwt.present(
            stale, disclose=["points_at_least_1000"], holder=wallet.signer,
            audience=BETA_ID, nonce=request3.nonce)]}
        outcomes.append(Outcome("expired points credential (issued 2 days ago, 24 h TTL)",
                                "expired", list(beta.verify(expired_vp, request=request3).errors)))

        attacks = Table(title="Attacks")
        attacks.add_column("presentation")
        attacks.add_column("expected")
        attacks.add_column("Beta said")
        for o in outcomes:
            mark = "[green]refused[/]" if o.passed else "[red]NOT REFUSED[/]"
            attacks.add_row(o.name, o.expected, f"{mark} {o.got}")
        out.print(attacks)
        log = wallet.consent_log()
        out.print(Panel(f"{len(log)} entries in the member's consent log; latest: "
                        f"{log[-1].event} {log[-1].claims} to {log[-1].verifier_id}",
                        title="Consent log"))

    ok = result.ok and all(o.passed for o in outcomes)
    out.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
