"""Cross-brand redemption: the ``tessera_redeem`` transaction, receipts and settlement statements.

A partner's OpenID4VP request carries one ``transaction_data`` item
(OpenID4VP 1.0 §5.1, §8.4): base64url of a JSON object with ``type``
``tessera_redeem``, the ``credential_ids`` of the DCQL queries it binds to,
and the terms: the issuing ``brand`` (DID), ``points``, the ``partner`` id and
its ``order_reference``. The wallet shows the terms and the member's KB-JWT
carries ``transaction_data_hashes``: SHA-256 of the item *exactly as sent*
(§8.4: the hash is over the base64url string, not over re-encoded JSON), so
the brand can check that the member agreed to this amount, for this order,
at this partner, and nothing else.

The brand answers with a **receipt** (a JWS, ``typ`` ``tessera-receipt+jwt``)
at each step of the hold -> capture / release -> refund life cycle, and
periodically with a **settlement statement** per partner (``typ``
``tessera-settlement+jwt``), exportable as CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from tessera.encoding import b64url_decode, b64url_encode, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact, verify_compact
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Signer

__all__ = [
    "EARN_TYPE",
    "RECEIPT_TYP",
    "REDEEM_TYPE",
    "STATEMENT_TYP",
    "RedeemTransaction",
    "build_redeem_transaction_data",
    "parse_redeem_transaction_data",
    "sign_receipt",
    "sign_statement",
    "statement_csv",
    "transaction_data_hash",
    "verify_receipt",
    "verify_statement",
]

REDEEM_TYPE: Final = "tessera_redeem"
EARN_TYPE: Final = "tessera_earn"  # a settlement line kind; earning needs no member signature
RECEIPT_TYP: Final = "tessera-receipt+jwt"
STATEMENT_TYP: Final = "tessera-settlement+jwt"
MAX_POINTS: Final = 1_000_000_000
MAX_ITEM_BYTES: Final = 4096
_REF_RE: Final = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces
_DID_RE: Final = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]{1,2000}$")
_ALLOWED_KEYS: Final = frozenset({"type", "credential_ids", "transaction_data_hashes_alg",
                                  "brand", "points", "partner", "order_reference"})
RECEIPT_STATUSES: Final = frozenset({"held", "captured", "released", "expired", "refunded"})


def _invalid(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.INVALID_REQUEST, detail)


def _ref(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _REF_RE.match(value):
        raise _invalid(f"{what} must be 1-200 printable ASCII characters without spaces")
    return value


def _points(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_POINTS:
        raise _invalid(f"points must be an integer in 1..{MAX_POINTS}")
    return value


def _did(value: Any) -> str:
    if not isinstance(value, str) or not _DID_RE.match(value):
        raise _invalid("brand must be a DID")
    return value


@dataclass(frozen=True)
class RedeemTransaction:
    """The terms the member signs: burn ``points`` at ``brand`` for ``partner``'s order."""

    brand: str
    points: int
    partner: str
    order_reference: str
    credential_ids: tuple[str, ...]
    encoded: str
    """The base64url item as sent; its hash is what the KB-JWT covers."""

    @property
    def hash(self) -> str:
        return transaction_data_hash(self.encoded)


def transaction_data_hash(item: str) -> str:
    """OpenID4VP 1.0 §8.4 / B.3.3: base64url(SHA-256(ASCII of the item as received))."""
    return b64url_encode(hashlib.sha256(item.encode("ascii")).digest())


def build_redeem_transaction_data(*, brand: str, points: int, partner: str,
                                  order_reference: str,
                                  credential_ids: Sequence[str]) -> str:
    """One ``transaction_data`` item for a partner's request."""
    ids = list(credential_ids)
    if not ids or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
        raise _invalid("credential_ids must name 1+ DCQL credential queries")
    body = {
        "type": REDEEM_TYPE, "credential_ids": ids, "transaction_data_hashes_alg": ["sha-256"],
        "brand": _did(brand), "points": _points(points), "partner": _ref(partner, "partner"),
        "order_reference": _ref(order_reference, "order_reference"),
    }
    return b64url_encode(json.dumps(body, separators=(",", ":")).encode())


def parse_redeem_transaction_data(item: Any) -> RedeemTransaction:
    """Decode and strictly check one item; anything odd is ``invalid_request``."""
    if not isinstance(item, str) or not 0 < len(item) <= MAX_ITEM_BYTES:
        raise _invalid("transaction_data item must be a base64url string")
    try:
        body = parse_json_object(b64url_decode(item, max_len=MAX_ITEM_BYTES))
    except TesseraError as exc:
        raise _invalid(f"transaction_data is not base64url JSON: {exc.detail}") from exc
    if body.get("type") != REDEEM_TYPE:
        raise _invalid(f"transaction_data type must be {REDEEM_TYPE!r}")
    unknown = set(body) - _ALLOWED_KEYS
    if unknown:
        raise _invalid(f"unknown transaction_data members {sorted(unknown)[:5]}")
    ids = body.get("credential_ids")
    if (not isinstance(ids, list) or not 0 < len(ids) <= 8
            or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids)):
        raise _invalid("credential_ids must be 1-8 DCQL credential query ids")
    algs = body.get("transaction_data_hashes_alg")
    if algs is not None and (not isinstance(algs, list) or "sha-256" not in algs):
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "transaction data hash must allow "
                           "sha-256")
    return RedeemTransaction(
        brand=_did(body.get("brand")), points=_points(body.get("points")),
        partner=_ref(body.get("partner"), "partner"),
        order_reference=_ref(body.get("order_reference"), "order_reference"),
        credential_ids=tuple(ids), encoded=item,
    )


# -- receipts ----------------------------------------------------------------------------------


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        raise _invalid("time must be timezone-aware")
    return int(value.timestamp())


def sign_receipt(signer: Signer, *, issuer: str, redemption_id: str, partner: str,
                 order_reference: str, points: int, status: str, transaction_hash: str,
                 issued_at: datetime, captured_points: int = 0, refunded_points: int = 0,
                 log_entries: Sequence[int] = (), hold_expires_at: datetime | None = None
                 ) -> str:
    """The brand's signed word on where a redemption stands."""
    if status not in RECEIPT_STATUSES:
        raise _invalid(f"unknown receipt status {status!r}")
    payload: dict[str, Any] = {
        "iss": issuer, "sub": redemption_id, "iat": _epoch(issued_at),
        "partner": partner, "order_reference": order_reference, "points": points,
        "status": status, "captured_points": captured_points,
        "refunded_points": refunded_points, "transaction_data_hash": transaction_hash,
        "log_entries": list(log_entries),
    }
    if hold_expires_at is not None:
        payload["hold_expires_at"] = _epoch(hold_expires_at)
    return sign_compact({"typ": RECEIPT_TYP}, payload, signer)


def verify_receipt(token: str, key: PublicKey, *, issuer: str | None = None,
                   allowed_algs: Collection[str] = SUPPORTED_ALGS) -> dict[str, Any]:
    """The receipt's payload if the brand's key signed it (and it names ``issuer``)."""
    payload = verify_compact(token, key, allowed_algs=allowed_algs, typ=RECEIPT_TYP).payload
    if issuer is not None and payload.get("iss") != issuer:
        raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "receipt from another issuer")
    if payload.get("status") not in RECEIPT_STATUSES or not isinstance(payload.get("sub"), str):
        raise TesseraError(ErrorCode.MALFORMED, "receipt payload is incomplete")
    return payload


# -- settlement statements ------------------------------------------------------------------------

STATEMENT_COLUMNS: Final = ("line", "kind", "at", "reference", "points", "ledger_entry",
                            "log_index", "leaf_hash", "redemption_id")


def sign_statement(signer: Signer, statement: Mapping[str, Any]) -> str:
    """Sign a statement (``issuer``, ``partner``, ``period``, ``lines``, ``totals``, ``log``)."""
    for name in ("issuer", "partner", "period", "lines", "totals"):
        if name not in statement:
            raise _invalid(f"statement needs {name}")
    return sign_compact({"typ": STATEMENT_TYP}, dict(statement), signer)


def verify_statement(token: str, key: PublicKey, *, issuer: str | None = None,
                     allowed_algs: Collection[str] = SUPPORTED_ALGS) -> dict[str, Any]:
    payload = verify_compact(token, key, allowed_algs=allowed_algs, typ=STATEMENT_TYP).payload
    if issuer is not None and payload.get("issuer") != issuer:
        raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "statement from another issuer")
    lines, totals = payload.get("lines"), payload.get("totals")
    if not isinstance(lines, list) or not isinstance(totals, dict):
        raise TesseraError(ErrorCode.MALFORMED, "statement without lines or totals")
    by_kind: dict[str, int] = {}
    for line in lines:
        if not isinstance(line, dict) or not isinstance(line.get("points"), int):
            raise TesseraError(ErrorCode.MALFORMED, "statement line is malformed")
        by_kind[str(line.get("kind"))] = by_kind.get(str(line.get("kind")), 0) + line["points"]
    # The totals are signed too, but a statement whose sums do not add up is
    # refused rather than trusted: a signing bug must not become a payment.
    for kind, amount in by_kind.items():
        if totals.get(kind) != amount:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, f"statement total for {kind} is off")
    return payload


def statement_csv(statement: Mapping[str, Any]) -> str:
    """The statement's lines as CSV (RFC 4180, CRLF), with a totals row per kind."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(STATEMENT_COLUMNS)
    for number, line in enumerate(statement.get("lines", []), start=1):
        writer.writerow([number, *(_cell(line.get(c)) for c in STATEMENT_COLUMNS[1:])])
    for kind, amount in sorted(dict(statement.get("totals", {})).items()):
        writer.writerow(["total", kind, "", "", amount, "", "", "", ""])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # CSV injection: a spreadsheet runs cells starting with these as formulas.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_int(text) \
        else text


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
