"""The member's wallet: sealed storage, checked receipt, consent, presentations."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from holder import ConsentRequest, Wallet
from issuer import CredentialIssuer, Program, did_document
from tessera.credentials import MEMBERSHIP, POINTS
from tessera.dcql import claims_query
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from verifier import TrustList, Verifier

BRAND = "did:web:brand.test"
PARTNER = "https://partner.test/checkout"


@pytest.fixture
def brand() -> CredentialIssuer:
    signer = generate_signer("ES256", key_id=f"{BRAND}#k1")
    program = Program(id="https://brand.test/rewards", name="Brand Rewards", brand=BRAND)
    return CredentialIssuer(signer=signer, did=BRAND, program=program)


@pytest.fixture
def resolver(brand: CredentialIssuer) -> Resolver:
    doc = did_document(BRAND, [(brand.signer.key_id or "", brand.signer.public_key)])
    return Resolver(documents={BRAND: doc})


@pytest.fixture
def wallet(tmp_path: Path, resolver: Resolver) -> Wallet:
    return Wallet.create(tmp_path / "w.wallet", "passphrase-1", resolver=resolver)


def _membership(brand: CredentialIssuer, wallet: Wallet, tier: str = "gold") -> str:
    return brand.issue_membership(
        holder_key=wallet.signer.public_key, membership_number="M-1", tier=tier,
        member_since=date(2020, 1, 1), tier_valid_until=date(2030, 1, 1),
        name="Alice", email="alice@example.com",
    )


def test_wallet_file_is_sealed_and_reopens(
    tmp_path: Path, brand: CredentialIssuer, wallet: Wallet, resolver: Resolver
) -> None:
    wallet.receive(_membership(brand, wallet))
    raw = (tmp_path / "w.wallet").read_text()
    # Neither the private key nor personal claims are readable on disk.
    assert '"d"' not in raw and "Alice" not in raw and "alice@example.com" not in raw
    assert json.loads(raw)["did"] == wallet.did
    again = Wallet.open(tmp_path / "w.wallet", "passphrase-1", resolver=resolver)
    assert again.did == wallet.did
    assert [c.claims["name"] for c in again.credentials()] == ["Alice"]
    with pytest.raises(TesseraError) as err:
        Wallet.open(tmp_path / "w.wallet", "wrong-passphrase")
    assert err.value.code is ErrorCode.WRONG_PASSPHRASE


def test_create_refuses_to_overwrite_and_short_passphrases(tmp_path: Path, wallet: Wallet) -> None:
    with pytest.raises(TesseraError) as err:
        Wallet.create(wallet.path, "passphrase-1")
    assert err.value.code is ErrorCode.CONFLICT
    with pytest.raises(TesseraError) as err:
        Wallet.create(tmp_path / "other", "short")
    assert err.value.code is ErrorCode.INVALID_REQUEST


def test_receive_refuses_a_credential_bound_to_another_key(
    tmp_path: Path, brand: CredentialIssuer, wallet: Wallet, resolver: Resolver
) -> None:
    other = Wallet.create(tmp_path / "other.wallet", "passphrase-2", resolver=resolver)
    with pytest.raises(TesseraError) as err:
        wallet.receive(_membership(brand, other))
    assert err.value.code is ErrorCode.KEY_BINDING_INVALID
    assert wallet.credentials() == []


def test_receive_refuses_a_forged_issuer_signature(
    brand: CredentialIssuer, wallet: Wallet
) -> None:
    impostor = CredentialIssuer(
        signer=generate_signer("ES256", key_id=f"{BRAND}#k1"), did=BRAND, program=brand.program,
    )
    with pytest.raises(TesseraError) as err:
        wallet.receive(_membership(impostor, wallet))
    assert err.value.code is ErrorCode.INVALID_SIGNATURE


def test_consent_screen_lists_shared_and_withheld_and_presentation_verifies(
    brand: CredentialIssuer, wallet: Wallet, resolver: Resolver
) -> None:
    wallet.receive(_membership(brand, wallet))
    wallet.receive(brand.issue_points(
        holder_key=wallet.signer.public_key, membership_number="M-1", balance=1200,
        checkpoint=(3, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
    ))
    v = Verifier(trust=TrustList.of([(BRAND, [MEMBERSHIP.name, POINTS.name])]), resolver=resolver)
    dcql = {"credentials": [
        claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"], require_true=True),
        claims_query("p", POINTS.vct, ["points_at_least_1000"], require_true=True),
    ]}
    req = v.create_request(audience=PARTNER, dcql=dcql)
    seen: list[ConsentRequest] = []

    def consent(screen: ConsentRequest) -> bool:
        seen.append(screen)
        return True

    token = wallet.present(dcql=dcql, audience=PARTNER, nonce=req.nonce, consent=consent,
                           verifier_name="Partner", purpose="discount")
    screen = seen[0]
    assert screen.verifier_id == PARTNER and screen.verifier_name == "Partner"
    by_type = {i.credential_type: i for i in screen.items}
    assert set(by_type[MEMBERSHIP.name].shared) == {"program", "tier_at_least_gold"}
    assert {"name", "email", "tier", "membership_number"} <= set(by_type[MEMBERSHIP.name].withheld)
    assert "points_balance" in by_type[POINTS.name].withheld
    result = v.verify(token, request=req)
    assert result.ok, result.errors
    assert "name" not in result.claims and "points_balance" not in result.claims
    assert result.holder == wallet.did
    assert wallet.consent_log()[-1].event == "shared"


def test_declined_consent_shares_nothing_and_is_logged(
    brand: CredentialIssuer, wallet: Wallet
) -> None:
    wallet.receive(_membership(brand, wallet))
    dcql = {"credentials": [claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"])]}
    with pytest.raises(TesseraError) as err:
        wallet.present(dcql=dcql, audience=PARTNER, nonce="n" * 22, consent=lambda _: False)
    assert err.value.code is ErrorCode.CONSENT_DENIED
    assert wallet.consent_log()[-1].event == "declined"


def test_withdrawal_blocks_that_verifier_until_granted_again(
    brand: CredentialIssuer, wallet: Wallet
) -> None:
    wallet.receive(_membership(brand, wallet))
    dcql = {"credentials": [claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"])]}
    wallet.withdraw(PARTNER)
    asked: list[ConsentRequest] = []
    with pytest.raises(TesseraError) as err:
        wallet.present(dcql=dcql, audience=PARTNER, nonce="n" * 22,
                       consent=lambda s: asked.append(s) or True)
    assert err.value.code is ErrorCode.CONSENT_DENIED and asked == []
    # Another verifier is unaffected; the withdrawn one works after a new grant.
    wallet.present(dcql=dcql, audience="https://other.test", nonce="n" * 22,
                   consent=lambda _: True)
    wallet.grant(PARTNER)
    wallet.present(dcql=dcql, audience=PARTNER, nonce="n" * 22, consent=lambda _: True)
    events = [r.event for r in wallet.consent_log()]
    assert events == ["withdrawn", "shared", "regranted", "shared"]
    assert json.loads(wallet.export_consents())[0]["event"] == "withdrawn"


def test_wallet_cannot_answer_a_query_it_has_no_credential_for(
    brand: CredentialIssuer, wallet: Wallet
) -> None:
    wallet.receive(_membership(brand, wallet, tier="bronze"))
    dcql = {"credentials": [
        claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"], require_true=True)]}
    with pytest.raises(TesseraError) as err:
        wallet.present(dcql=dcql, audience=PARTNER, nonce="n" * 22, consent=lambda _: True)
    assert err.value.code is ErrorCode.DISCLOSURE_MISMATCH


def test_expired_credentials_are_not_offered(
    tmp_path: Path, brand: CredentialIssuer, resolver: Resolver
) -> None:
    clock_now = [datetime.now(UTC)]
    wallet = Wallet.create(tmp_path / "c.wallet", "passphrase-1", resolver=resolver,
                           clock=lambda: clock_now[0])
    wallet.receive(_membership(brand, wallet))
    clock_now[0] += timedelta(days=60)  # membership credentials last 30 days
    dcql = {"credentials": [claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"])]}
    with pytest.raises(TesseraError) as err:
        wallet.present(dcql=dcql, audience=PARTNER, nonce="n" * 22, consent=lambda _: True)
    assert err.value.code is ErrorCode.DISCLOSURE_MISMATCH
