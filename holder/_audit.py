"""The member audits a brand's points log: ``tessera wallet audit``.

1. Fetch the member's own leaves with inclusion proofs against a fresh signed
   tree head (``GET {brand}/log/entries``, signed by the wallet's key, typ
   ``tessera-log-access+jwt``).
2. Check the head's signature against the brand's did:web key and that it
   names the brand's log; check every leaf's inclusion proof.
3. Check that the last head this wallet accepted from the brand is a prefix
   of the new one (consistency proof): a rewritten history is caught here
   even when the rewrite re-hashed the whole tree.
4. Recompute the balance from the leaves and compare it with the ledger's
   own total; replay the leaves (:func:`tessera.pointslog.fold`) into every
   figure the brand shows or signs (available, pending, held, the next
   expiring lot) and compare it with the balance the brand's API states for
   each membership and with each points credential at its checkpoint (a head
   of the same log) and ``as_of``. Any difference is a problem: lots or holds
   were changed beside the log. A history whose leaves predate lots in the log
   (version 1) supports only its total; then a credential may state less than
   the log held (pending or held points), never more.

5. Hold the brand to its inclusion promises (``tessera-log-promise+jwt``, one
   per ledger write, kept in the wallet): each must verify with the brand's
   key for the brand's log, and once its maximum merge delay has passed (the
   head's timestamp, or this audit's clock with :data:`PROMISE_LEEWAY`,
   reaches ``timestamp + mmd``) every promised leaf hash must be one of the
   member's leaves in the signed tree. A promise left out is a problem with
   code ``log_promise_broken`` (the signed promise and the signed head are
   the evidence); a promise still within its delay is a note; a kept one is
   dropped from the wallet.

With witnesses (``witnesses`` and ``quorum``: the coalition's C2SP
cosigners, c2sp.org/tlog-cosignature), step 1 also fetches the head as a
C2SP checkpoint (``GET {brand}/log/checkpoints/{size}``) and requires its
note signature by the brand's Ed25519 key (its DID document's, under the
log's origin line) and ``quorum`` witness cosignatures of exactly that head.
A witness cosigns a tree only if it extends the last tree it cosigned, so a
brand that shows this member a different history of the same size than it
showed the witnesses (a split view) cannot gather the quorum: the audit
fails. Every points credential's checkpoint is then proven a prefix of that
witnessed head (step 4b), so it is covered by the same quorum.

Only when everything holds is the new head stored in the wallet.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx

from holder._wallet import Wallet
from tessera import credentials, merkle
from tessera.did import Resolver, did_web_url
from tessera.encoding import b64url_decode, b64url_encode, parse_datetime, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, sign_compact
from tessera.pointslog import Figures, LogLeaf, fold, log_origin, parse_leaf
from tessera.tlog import Verifier, open_checkpoint
from tessera.typing import DIDResolver

__all__ = ["LOG_ACCESS_TYP", "PROMISE_LEEWAY", "AuditReport", "audit", "brand_base_url",
           "log_access_token"]

LOG_ACCESS_TYP: Final = "tessera-log-access+jwt"
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024
PROMISE_LEEWAY: Final = timedelta(minutes=5)
"""Clock difference allowed before the wallet's own clock says a promise's delay passed."""


@dataclass
class AuditReport:
    brand: str
    tree_size: int = 0
    root_hash: str = ""
    entries: int = 0
    erased_entries: int = 0
    log_total: int = 0
    ledger_total: int = 0
    previous_size: int | None = None
    credentials_checked: int = 0
    balances_checked: int = 0
    cosigned_by: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    codes: list[ErrorCode] = field(default_factory=list)
    """The error code of each problem that has its own (``log_promise_broken``)."""
    promises_kept: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def brand_base_url(brand_did: str) -> str:
    """``https://host/brands/air`` for ``did:web:host:brands:air`` (its did.json's folder)."""
    return did_web_url(brand_did).removesuffix("/did.json")


def log_access_token(wallet: Wallet, *, brand_did: str, path: str, now: datetime) -> str:
    return sign_compact({"typ": LOG_ACCESS_TYP}, {
        "iss": wallet.did, "aud": brand_did, "htm": "GET", "htu": path,
        "iat": int(now.timestamp())}, wallet.signer)


def _get(http: httpx.Client, url: str, params: dict[str, Any],
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        response = http.get(url, params=params, headers=headers, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"cannot reach the brand: {type(exc).__name__}") from exc
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, "log answer too large")
    body = parse_json_object(response.content, max_bytes=MAX_RESPONSE_BYTES) \
        if response.content else {}
    if response.status_code != 200:
        raise TesseraError.from_problem(
            body, fallback=f"brand answered {response.status_code}")
    return body


def _get_text(http: httpx.Client, url: str) -> str:
    try:
        response = http.get(url, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"cannot reach the brand: {type(exc).__name__}") from exc
    if response.status_code != 200 or len(response.content) > 64 * 1024:
        raise TesseraError(ErrorCode.NOT_FOUND, f"brand answered {response.status_code}")
    return response.text


def _witnessed(http: httpx.Client, base: str, brand_did: str, resolver: DIDResolver,
               head: merkle.SignedTreeHead, witnesses: Sequence[Verifier], quorum: int,
               now: datetime) -> list[str]:
    """The names of the witnesses whose cosignatures of exactly ``head`` verify (>= quorum)."""
    note = _get_text(http, f"{base}/log/checkpoints/{head.tree_size}")
    document = resolver.resolve(brand_did)
    keys = [document.key(str(m.get("id")))
            for m in document.methods()
            if document.has_relationship(str(m.get("id")), "assertionMethod")]
    origin = log_origin(brand_did)
    opened = open_checkpoint(note, [Verifier.for_key(origin, k) for k in keys
                                    if k.alg == "EdDSA"],
                             origin=origin, witnesses=witnesses, quorum=quorum,
                             # tlog-cosignature: verifiers MAY reject future timestamps.
                             not_after=int(now.timestamp()) + 300)
    if (opened.checkpoint.size, opened.checkpoint.root_hash) != (head.tree_size,
                                                                 head.root_hash):
        raise TesseraError(ErrorCode.INVALID_SIGNATURE, "the checkpoint is another tree")
    return sorted(opened.cosignatures)


def _hashes(value: Any) -> list[bytes]:
    if not isinstance(value, list) or len(value) > 128:
        raise TesseraError(ErrorCode.MALFORMED, "proof must be a list of hashes")
    return [b64url_decode(p, max_len=64) if isinstance(p, str) else b"" for p in value]


def _consistent(http: httpx.Client, base: str, first: int, first_root: bytes,
                head: merkle.SignedTreeHead) -> None:
    body = _get(http, f"{base}/log/proof/consistency",
                {"first": first, "second": head.tree_size})
    merkle.verify_consistency(first, head.tree_size, _hashes(body.get("proof")), first_root,
                              head.root_hash)


def _implied(report: AuditReport, leaves: list[tuple[int, LogLeaf]],
             at: datetime) -> Figures | None:
    """The figures the leaves imply, or ``None`` (with a note) when they cannot say."""
    if report.erased_entries:
        return None
    try:
        return fold((leaf for _, leaf in leaves), at=at)
    except TesseraError as exc:
        if exc.code is ErrorCode.UNSUPPORTED_FORMAT:
            note = "older leaves carry no lots: only totals are checked"
            if note not in report.notes:
                report.notes.append(note)
        else:
            report.problems.append(f"the log breaks the ledger's rules: {exc.detail}")
        return None


def _figure(figures: Figures, what: str) -> Any:
    if what == "expiring next":
        return figures.expiring_next
    return getattr(figures, what)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        points, when = value
        return f"{points} points on {when.isoformat() if isinstance(when, datetime) else when}"
    return "nothing" if value is None else str(value)


def audit(wallet: Wallet, *, brand_did: str, http: httpx.Client,
          resolver: DIDResolver | None = None, base_url: str | None = None,
          now: datetime | None = None, witnesses: Sequence[Verifier] = (),
          quorum: int = 0) -> AuditReport:
    """Audit the member's history at ``brand_did``; see the module docstring.

    ``witnesses`` are cosignature/v1 verifier keys; ``quorum`` of them must
    have cosigned the head (0: no witness is required).
    """
    if not 0 <= quorum <= len({w.name for w in witnesses}):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "the quorum is 0 to the number of witnesses")
    when = now or datetime.now(UTC)
    resolver = resolver or Resolver()
    base = (base_url or brand_base_url(brand_did)).rstrip("/")
    report = AuditReport(brand=brand_did)
    path = urllib.parse.urlsplit(f"{base}/log/entries").path

    def page(**params: Any) -> dict[str, Any]:
        token = log_access_token(wallet, brand_did=brand_did, path=path, now=when)
        return _get(http, f"{base}/log/entries", {"member": wallet.did, **params},
                    {"Authorization": f"Bearer {token}"})

    body = page()

    # 1. The head: signed by the brand's key, for the brand's log.
    raw_head = body.get("head")
    if not isinstance(raw_head, dict) or not isinstance(raw_head.get("sth"), str):
        raise TesseraError(ErrorCode.MALFORMED, "answer has no signed tree head")
    kid = decode_unverified(raw_head["sth"]).header.get("kid")
    if not isinstance(kid, str) or not kid.startswith(brand_did + "#"):
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "tree head not signed by a brand key")
    head = merkle.SignedTreeHead.verify(raw_head["sth"], resolver.resolve(brand_did).key(kid),
                                        log_id=brand_did)
    report.tree_size = head.tree_size
    report.root_hash = b64url_encode(head.root_hash)
    if quorum:
        try:
            report.cosigned_by = _witnessed(http, base, brand_did, resolver, head, witnesses,
                                            quorum, when)
        except TesseraError as exc:
            report.problems.append(
                f"the signed head (size {head.tree_size}) is not cosigned by {quorum} "
                f"witness(es): {exc.detail}. The brand may be showing you a different "
                f"history than it showed the witnesses")

    # 2. Each leaf is in that tree and is ours.
    names = body.get("pseudonyms")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TesseraError(ErrorCode.MALFORMED, "answer has no pseudonyms")
    # Further pages, against the same head, until one brings nothing new.
    items = list(body.get("entries") or [])
    while items:
        last = items[-1].get("index") if isinstance(items[-1], dict) else None
        if not isinstance(last, int):
            break  # refused below
        more = page(after=last, size=head.tree_size)
        more_head = more.get("head")
        if not isinstance(more_head, dict) or more_head.get("sth") != raw_head["sth"]:
            raise TesseraError(ErrorCode.MALFORMED, "a later page names another head")
        fresh = [i for i in more.get("entries") or []
                 if isinstance(i, dict) and isinstance(i.get("index"), int) and i["index"] > last]
        if not fresh:
            break
        items.extend(fresh)
    leaves: list[tuple[int, LogLeaf]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("index"), int):
            raise TesseraError(ErrorCode.MALFORMED, "malformed entry")
        index = int(item["index"])
        if item.get("leaf") is None:
            report.erased_entries += 1
            continue
        leaf = parse_leaf(item["leaf"])
        if leaf.member not in names:
            report.problems.append(f"entry {index} is not this member's")
            continue
        try:
            head.verify_inclusion(leaf.hash, index, _hashes(item.get("proof")))
        except TesseraError:
            report.problems.append(f"entry {index} (ledger entry {leaf.entry}) is not in the "
                                   f"signed tree: its content or its proof was altered")
            continue
        leaves.append((index, leaf))
    report.entries = len(leaves)
    report.log_total = sum(leaf.delta for _, leaf in leaves)
    settled = _check_promises(wallet, report, brand_did, resolver, head,
                           {leaf.hash for _, leaf in leaves}, when)
    ledger_total = body.get("ledger_total")
    if not isinstance(ledger_total, int) or isinstance(ledger_total, bool):
        raise TesseraError(ErrorCode.MALFORMED, "answer has no ledger_total")
    report.ledger_total = ledger_total
    if ledger_total != report.log_total and not report.erased_entries:
        report.problems.append(f"the ledger says {ledger_total} points but the log adds up to "
                               f"{report.log_total}: the ledger was changed outside the log")

    # 3. The log only grew since we last looked.
    last = wallet.log_heads.get(brand_did)
    if last is not None:
        report.previous_size = int(last["tree_size"])
        old_root = b64url_decode(str(last["root_hash"]))
        if report.previous_size > head.tree_size:
            report.problems.append(f"the log shrank from {report.previous_size} to "
                                   f"{head.tree_size} entries")
        else:
            try:
                _consistent(http, base, report.previous_size, old_root, head)
            except TesseraError:
                report.problems.append(
                    f"the log is not an extension of the head seen before (size "
                    f"{report.previous_size}): history was rewritten")

    # 4a. The balance the brand's API states, against what the leaves imply.
    by_name: dict[str, list[tuple[int, LogLeaf]]] = {}
    for index, leaf in leaves:
        by_name.setdefault(leaf.member, []).append((index, leaf))
    programs: dict[str, str] = {}
    accounts = body.get("accounts")
    if not isinstance(accounts, list):
        report.notes.append("the brand states no balances: only totals and credentials checked")
        accounts = []
    for account in accounts:
        if not isinstance(account, dict) or account.get("pseudonym") not in names \
                or not isinstance(account.get("program_id"), str) \
                or not isinstance(account.get("balance"), dict):
            raise TesseraError(ErrorCode.MALFORMED, "malformed account in the answer")
        name = str(account["pseudonym"])
        programs[str(account["program_id"])] = name
        shown = account["balance"]
        at = parse_datetime(shown.get("as_of"), "balance as_of")
        implied = _implied(report, by_name.get(name, []), at)
        if implied is None:
            continue
        report.balances_checked += 1
        nxt = shown.get("expiring_next")
        stated = {"available": shown.get("available"), "pending": shown.get("pending"),
                  "held": shown.get("held"),
                  "expiring next": (nxt.get("points"), parse_datetime(nxt.get("at"),
                                                                      "expiring_next at"))
                  if isinstance(nxt, dict) else None}
        for what, value in stated.items():
            expected = _figure(implied, what)
            if value != expected:
                report.problems.append(
                    f"the brand's balance API says {what} {_show(value)}; the log implies "
                    f"{_show(expected)}: its lots or holds were changed outside the log")

    # 4b. Points credentials: their checkpoint is a head of this log, their figures hold.
    for cred in wallet.credentials():
        if cred.issuer != brand_did or cred.vct != credentials.POINTS.vct:
            continue
        cp = cred.claims.get("checkpoint") or {}
        size, root = cp.get("tree_size"), cp.get("root_hash")
        if not isinstance(size, int) or not isinstance(root, str):
            continue
        report.credentials_checked += 1
        if size > head.tree_size:
            report.problems.append(f"credential {cred.id[:8]} names a checkpoint ({size}) "
                                   f"beyond the signed head ({head.tree_size})")
            continue
        try:
            _consistent(http, base, size, b64url_decode(root), head)
        except TesseraError:
            report.problems.append(f"credential {cred.id[:8]}'s checkpoint is not a head of "
                                   f"this log")
            continue
        at_checkpoint = sum(leaf.delta for index, leaf in leaves if index < size)
        claimed = cred.claims.get("points_balance")
        program = cred.claims.get("program")
        program_id = program.get("id") if isinstance(program, dict) else None
        account = next((n for p, n in programs.items()
                        if isinstance(program_id, str) and program_id.endswith(f"/programs/{p}")),
                       None)
        # Its membership's leaves; without the brand naming it, any of this DID's.
        mismatches: list[str] | None = None
        nxt = cred.claims.get("points_expiring_next")
        stated = {"available": claimed,
                  "expiring next": (nxt.get("points"), nxt.get("on"))
                  if isinstance(nxt, dict) else None}
        for name in [account] if account is not None else names:
            implied = _implied(report, [(i, leaf) for i, leaf in by_name.get(name, [])
                                        if i < size],
                               parse_datetime(cred.claims.get("as_of"), "credential as_of"))
            if implied is None:
                continue
            upcoming = implied.expiring_next
            expected = {"available": implied.available,
                        "expiring next": (upcoming[0], upcoming[1].date().isoformat())
                        if upcoming else None}
            found = [f"credential {cred.id[:8]} states {what} {_show(value)}; the log "
                     f"implied {_show(expected[what])} at its checkpoint"
                     for what, value in stated.items() if value != expected[what]]
            if mismatches is None or len(found) < len(mismatches):
                mismatches = found
        if mismatches is not None:
            report.problems.extend(mismatches)
        elif isinstance(claimed, int) and claimed > at_checkpoint:
            report.problems.append(f"credential {cred.id[:8]} states {claimed} points; the "
                                   f"log held {at_checkpoint} at its checkpoint")
        elif isinstance(claimed, int) and claimed < at_checkpoint:
            report.notes.append(f"credential {cred.id[:8]}: {at_checkpoint - claimed} points "
                                f"pending or held at its checkpoint")
    if report.erased_entries:
        report.notes.append(f"{report.erased_entries} entries were erased; their hashes remain")
    if report.ok:
        wallet.log_heads[brand_did] = {"tree_size": head.tree_size,
                                       "root_hash": report.root_hash,
                                       "sth": head.signature}
        left = [t for t in wallet.log_promises.get(brand_did, []) if t not in settled]
        if left:
            wallet.log_promises[brand_did] = left
        else:
            wallet.log_promises.pop(brand_did, None)
        wallet.save()
    return report


def _check_promises(wallet: Wallet, report: AuditReport, brand_did: str,
                    resolver: DIDResolver, head: merkle.SignedTreeHead,
                    logged: set[bytes], when: datetime) -> set[str]:
    """Step 5: the brand's promises against its head; returns those settled (kept, or
    not the brand's word at all), which the wallet need not hold any longer."""
    settled: set[str] = set()
    now_ms = int((when - PROMISE_LEEWAY).timestamp() * 1000)
    for token in wallet.log_promises.get(brand_did, []):
        try:
            kid = decode_unverified(token).header.get("kid")
            if not isinstance(kid, str) or not kid.startswith(brand_did + "#"):
                raise TesseraError(ErrorCode.KEY_NOT_FOUND, "not signed by a brand key")
            promise = merkle.InclusionPromise.verify(token, resolver.resolve(brand_did).key(kid),
                                                     log_id=brand_did)
        except TesseraError as exc:
            # Not the brand's word: it proves nothing either way, and is not kept.
            report.notes.append(f"a stored log promise does not verify ({exc.code.value}); "
                                f"it is ignored")
            settled.add(token)
            continue
        missing = [h for h in promise.leaf_hashes if h not in logged]
        if not missing:
            settled.add(token)
            report.promises_kept += 1
        elif head.timestamp >= promise.deadline or now_ms >= promise.deadline:
            report.problems.append(
                f"the brand promised at {_ms(promise.timestamp)} to log "
                f"{len(missing)} leaf(s) of yours within {promise.mmd} ms; the signed head "
                f"of {_ms(head.timestamp)} (size {head.tree_size}) leaves "
                f"{b64url_encode(missing[0])[:16]}... out: an entry was dropped from the log")
            report.codes.append(ErrorCode.LOG_PROMISE_BROKEN)
        else:
            report.notes.append(f"a log promise of {_ms(promise.timestamp)} is still within "
                                f"its {promise.mmd} ms merge delay; checked next time")
    return settled


def _ms(value: int) -> str:
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="milliseconds")
