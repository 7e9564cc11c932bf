"""tessera.redemption: the tessera_redeem transaction, its KB-JWT hash, receipts, statements."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import credentials
from tessera.did import did_key
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.jose import sign_compact
from tessera.keys import generate_signer
from tessera.redemption import (
    REDEEM_TYPE,
    build_redeem_transaction_data,
    parse_redeem_transaction_data,
    sign_receipt,
    sign_statement,
    statement_csv,
    transaction_data_hash,
    verify_receipt,
    verify_statement,
)

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
BRAND = "did:web:issuer.example:brands:air"


def _item(**overrides: object) -> str:
    args: dict = {"brand": BRAND, "points": 500, "partner": "p-1",  # type: ignore[type-arg]
                  "order_reference": "order-42", "credential_ids": ["points"]}
    args.update(overrides)
    return build_redeem_transaction_data(**args)


def test_round_trip_keeps_the_item_as_sent() -> None:
    item = _item()
    tx = parse_redeem_transaction_data(item)
    assert (tx.brand, tx.points, tx.partner, tx.order_reference) == (BRAND, 500, "p-1",
                                                                      "order-42")
    assert tx.credential_ids == ("points",) and tx.encoded == item
    assert tx.hash == transaction_data_hash(item)


def test_hash_is_over_the_string_not_the_json() -> None:
    # §8.4: two encodings of the same JSON are different transactions.
    body = {"type": REDEEM_TYPE, "credential_ids": ["points"], "brand": BRAND, "points": 5,
            "partner": "p", "order_reference": "o"}
    a = b64url_encode(json.dumps(body).encode())
    b = b64url_encode(json.dumps(body, separators=(",", ":")).encode())
    assert parse_redeem_transaction_data(a).points == parse_redeem_transaction_data(b).points
    assert transaction_data_hash(a) != transaction_data_hash(b)


@pytest.mark.parametrize("overrides", [
    {"points": 0}, {"points": -1}, {"points": 10**12}, {"points": True},
    {"brand": "https://not-a-did"}, {"partner": "has space"}, {"order_reference": ""},
    {"credential_ids": []},
])
def test_build_refuses_bad_terms(overrides: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(TesseraError) as info:
        _item(**overrides)
    assert info.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("body", [
    {"type": "other"},
    {"type": REDEEM_TYPE, "credential_ids": ["p"], "brand": BRAND, "points": 1, "partner": "p",
     "order_reference": "o", "extra": 1},
    {"type": REDEEM_TYPE, "credential_ids": "p", "brand": BRAND, "points": 1, "partner": "p",
     "order_reference": "o"},
    {"type": REDEEM_TYPE, "credential_ids": ["p"], "brand": BRAND, "points": "1",
     "partner": "p", "order_reference": "o"},
])
def test_parse_refuses_bad_bodies(body: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(TesseraError) as info:
        parse_redeem_transaction_data(b64url_encode(json.dumps(body).encode()))
    assert info.value.code is ErrorCode.INVALID_REQUEST


def test_parse_refuses_a_hash_alg_we_do_not_compute() -> None:
    body = {"type": REDEEM_TYPE, "credential_ids": ["p"], "brand": BRAND, "points": 1,
            "partner": "p", "order_reference": "o", "transaction_data_hashes_alg": ["sha-384"]}
    with pytest.raises(TesseraError) as info:
        parse_redeem_transaction_data(b64url_encode(json.dumps(body).encode()))
    assert info.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(b64url_encode),
                 st.integers(), st.none()))
def test_parse_never_crashes(value: object) -> None:
    try:
        parse_redeem_transaction_data(value)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.INVALID_REQUEST, ErrorCode.UNSUPPORTED_ALGORITHM)


def _points_credential(brand: object, holder: object) -> str:
    claims = credentials.points_claims(
        program={"id": "p", "name": "Miles", "brand": BRAND}, membership_number="0000000001",
        balance=900, as_of=NOW, checkpoint=(3, b64url_encode(b"\0" * 32)))
    return sd_jwt.issue_credential(credentials.POINTS, claims, signer=brand,  # type: ignore[arg-type]
                                   issuer=BRAND, holder_key=holder.public_key,  # type: ignore[attr-defined]
                                   issued_at=NOW, expires_at=NOW + timedelta(hours=1))


def test_kb_jwt_binds_exactly_this_transaction() -> None:
    brand = generate_signer("EdDSA", key_id=BRAND + "#key-1")
    holder = generate_signer("ES256")
    vc = _points_credential(brand, holder)
    item = _item()
    vp = sd_jwt.present(vc, disclose=["points_balance"], holder=holder, audience="partner",
                        nonce="n1", issued_at=NOW, transaction_data=[item])
    ok = sd_jwt.verify(vp, issuer_key=brand.public_key, now=NOW, audience="partner",
                       nonce="n1", transaction_data=[item])
    assert ok.key_binding is not None
    assert ok.key_binding["transaction_data_hashes"] == [transaction_data_hash(item)]
    for other in (_item(points=501), _item(order_reference="order-43")):
        with pytest.raises(TesseraError) as info:
            sd_jwt.verify(vp, issuer_key=brand.public_key, now=NOW, audience="partner",
                          nonce="n1", transaction_data=[other])
        assert info.value.code is ErrorCode.TRANSACTION_DATA_MISMATCH
    unbound = sd_jwt.present(vc, disclose=["points_balance"], holder=holder,
                             audience="partner", nonce="n1", issued_at=NOW)
    with pytest.raises(TesseraError) as info:
        sd_jwt.verify(unbound, issuer_key=brand.public_key, now=NOW, audience="partner",
                      nonce="n1", transaction_data=[item])
    assert info.value.code is ErrorCode.TRANSACTION_DATA_MISMATCH


def test_receipt_sign_verify_and_tamper() -> None:
    brand = generate_signer("EdDSA", key_id=BRAND + "#key-1")
    token = sign_receipt(brand, issuer=BRAND, redemption_id="r1", partner="p-1",
                         order_reference="o", points=5, status="held",
                         transaction_hash="h", issued_at=NOW, log_entries=[3])
    payload = verify_receipt(token, brand.public_key, issuer=BRAND)
    assert payload["status"] == "held" and payload["log_entries"] == [3]
    with pytest.raises(TesseraError) as info:
        verify_receipt(token, brand.public_key, issuer="did:web:other")
    assert info.value.code is ErrorCode.UNTRUSTED_ISSUER
    with pytest.raises(TesseraError):
        verify_receipt(token, generate_signer("EdDSA").public_key)
    head, body, sig = token.split(".")
    forged = json.loads(__import__("base64").urlsafe_b64decode(body + "=="))
    forged["points"] = 5000
    with pytest.raises(TesseraError):
        verify_receipt(f"{head}.{b64url_encode(json.dumps(forged).encode())}.{sig}",
                       brand.public_key)
    # A statement token is not a receipt, even with the same key.
    other = sign_compact({"typ": "tessera-settlement+jwt"}, {"sub": "r1"}, brand)
    with pytest.raises(TesseraError):
        verify_receipt(other, brand.public_key)
    with pytest.raises(TesseraError):
        sign_receipt(brand, issuer=BRAND, redemption_id="r", partner="p", order_reference="o",
                     points=1, status="bogus", transaction_hash="h", issued_at=NOW)


def test_statement_totals_and_csv() -> None:
    brand = generate_signer("ES256", key_id=BRAND + "#key-1")
    statement = {
        "issuer": BRAND, "partner": "p-1", "period": {"from": "a", "to": "b"},
        "lines": [{"kind": "redeem", "points": 500, "reference": "=cmd()", "at": "t"},
                  {"kind": "redeem", "points": 100, "reference": "o2", "at": "t"},
                  {"kind": "earn", "points": 40, "reference": "o3", "at": "t"}],
        "totals": {"redeem": 600, "earn": 40},
    }
    token = sign_statement(brand, statement)
    assert verify_statement(token, brand.public_key, issuer=BRAND)["totals"]["redeem"] == 600
    bad = dict(statement, totals={"redeem": 601, "earn": 40})
    with pytest.raises(TesseraError) as info:
        verify_statement(sign_statement(brand, bad), brand.public_key)
    assert info.value.code is ErrorCode.INVALID_SIGNATURE
    rows = list(csv.reader(io.StringIO(statement_csv(statement))))
    assert rows[0][:3] == ["line", "kind", "at"]
    assert rows[1][3] == "'=cmd()"  # no formula injection
    assert ["total", "redeem", "", "", "600", "", "", "", ""] in rows
    with pytest.raises(TesseraError):
        sign_statement(brand, {"issuer": BRAND})


def test_wallet_accepts_the_redeem_type() -> None:
    from holder._openid4vp import KNOWN_TRANSACTION_TYPES

    assert REDEEM_TYPE in KNOWN_TRANSACTION_TYPES
    assert did_key(generate_signer("ES256").public_key).startswith("did:key:")
