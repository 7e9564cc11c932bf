from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from tessera import credentials
from tessera.dcql import CredentialQuery, Query
from tessera.did import Resolver, did_key, issuer_key_lookup
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.files import write_private
from tessera.formats import sd_jwt
from tessera.keys import LocalSigner, generate_signer, seal_with_passphrase, signer_from_jwk
from tessera.keys import unseal_with_passphrase as _unseal
from tessera.typing import Clock, DIDResolver

WALLET_VERSION: Final = 1
ENROLMENT_TYP: Final = "tessera-enrolment+jwt"
MAX_WALLET_BYTES: Final = 16 * 1024 * 1024


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredCredential:
    id: str
    format: str
    credential: str
    issuer: str
    vct: str
    credential_type: str
    claims: dict[str, Any]
    received_at: str
    expires_at: int | None = None


@dataclass(frozen=True)
class ConsentItem:
    """One credential the wallet proposes to share, claim by claim."""

    credential_id: str
    credential_type: str
    issuer: str
    shared: dict[str, Any]
    withheld: list[str]


@dataclass(frozen=True)
class ConsentRequest:
    """Everything the member must see before anything leaves the wallet.

    Separate, informed consent per recipient (GDPR art. 7, PIPL art. 23):
    who asks (name and identifier), why, and each claim shared or withheld.
    """

    verifier_id: str
    verifier_name: str
    purpose: str
    items: list[ConsentItem]
    transaction_data: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ConsentRecord:
    at: str
    verifier_id: str
    verifier_name: str
    purpose: str
    event: str  # "shared" | "declined" | "withdrawn"
    claims: dict[str, list[str]] = field(default_factory=dict)


ConsentCallback = Callable[[ConsentRequest], bool]


class Wallet:
    """A member's wallet: one key and DID, credentials, and a consent log.

    The file is JSON whose ``sealed`` member is AES-256-GCM under a key
    derived from the passphrase (scrypt): the private key, the credentials
    and the consent log are all inside. Only the DID is in clear, so a
    member can tell wallets apart.
    """

    def __init__(
        self, path: Path, passphrase: str, signer: LocalSigner, *,
        creds: list[StoredCredential] | None = None,
        consents: list[ConsentRecord] | None = None,
        resolver: DIDResolver | None = None,
        clock: Clock = _utcnow,
        log_heads: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.path = path
        self._passphrase = passphrase
        self._signer = signer
        self.did = did_key(signer.public_key)
        self._creds = creds or []
        self._consents = consents or []
        # The last transparency-log head each brand showed (holder._audit).
        self.log_heads: dict[str, dict[str, Any]] = log_heads or {}
        self._resolver = resolver or Resolver()
        self._clock = clock

    # -- lifecycle --------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, passphrase: str, *, alg: str = "ES256",
        resolver: DIDResolver | None = None, clock: Clock = _utcnow,
        signer: LocalSigner | None = None,
    ) -> Wallet:
        """A new wallet with a fresh key, or with ``signer`` (a key the member already
        has). ES256 by default: every peer wallet and verifier we tested speaks it;
        EdDSA works with Tessera verifiers too."""
        target = Path(path)
        if target.exists():
            raise TesseraError(ErrorCode.CONFLICT, f"{target} already exists")
        if len(passphrase) < 8:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "passphrase needs 8 characters or more")
        signer = signer or generate_signer(alg)
        wallet = cls(target, passphrase, signer, resolver=resolver, clock=clock)
        wallet._signer = signer.with_key_id(f"{wallet.did}#{wallet.did.split(':')[-1]}")
        wallet.save()
        return wallet

    @classmethod
    def open(
        cls, path: str | Path, passphrase: str, *, resolver: DIDResolver | None = None,
        clock: Clock = _utcnow,
    ) -> Wallet:
        source = Path(path)
        if not source.is_file():
            raise TesseraError(ErrorCode.NOT_FOUND, f"no wallet at {source}")
        outer = parse_json_object(source.read_bytes(), max_bytes=MAX_WALLET_BYTES)
        if outer.get("version") != WALLET_VERSION or not isinstance(outer.get("sealed"), dict):
            raise TesseraError(ErrorCode.MALFORMED, "not a Tessera wallet file")
        inner = parse_json_object(_unseal(outer["sealed"], passphrase), max_bytes=MAX_WALLET_BYTES)
        try:
            signer = signer_from_jwk(inner["key"])
            creds = [StoredCredential(**c) for c in inner.get("credentials", [])]
            consents = [ConsentRecord(**c) for c in inner.get("consents", [])]
            log_heads = dict(inner.get("log_heads", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise TesseraError(ErrorCode.MALFORMED, "wallet contents are damaged") from exc
        wallet = cls(source, passphrase, signer, creds=creds, consents=consents,
                     resolver=resolver, clock=clock, log_heads=log_heads)
        if outer.get("did") != wallet.did:
            raise TesseraError(ErrorCode.MALFORMED, "wallet DID does not match its key")
        wallet._signer = signer.with_key_id(f"{wallet.did}#{wallet.did.split(':')[-1]}")
        return wallet

    def save(self) -> None:
        inner = {
            "key": self._signer.export_private_jwk(),
            "credentials": [asdict(c) for c in self._creds],
            "consents": [asdict(c) for c in self._consents],
            "log_heads": self.log_heads,
        }
        sealed = seal_with_passphrase(json.dumps(inner).encode(), self._passphrase)
        outer = {"version": WALLET_VERSION, "did": self.did, "sealed": sealed}
        # Write-then-rename so a crash never leaves half a wallet behind.
        write_private(self.path, json.dumps(outer).encode())

    # -- enrolment ----------------------------------------------------------------
    def enrolment_proof(self, challenge: Mapping[str, Any]) -> str:
        """Sign a brand's enrolment challenge (docs/issuer-service.md, "Enrolment proof").

        ``challenge`` is what ``POST /admin/v1/enrolment-challenges`` (or
        ``tessera issuer member challenge``) returns: ``nonce``, ``audience`` (the
        brand's DID), ``typ`` and ``expires_at``. The proof is a compact JWS with
        header ``typ: tessera-enrolment+jwt`` and ``kid`` (this wallet's key), over
        ``{iss: our DID, aud: the brand DID, nonce, iat}``.
        """
        nonce, audience = challenge.get("nonce"), challenge.get("audience")
        if not isinstance(nonce, str) or not nonce or not isinstance(audience, str) \
                or not audience.startswith("did:"):
            raise TesseraError(ErrorCode.MALFORMED,
                               "an enrolment challenge has a nonce and an audience (a DID)")
        typ = challenge.get("typ", ENROLMENT_TYP)
        if typ != ENROLMENT_TYP:
            raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                               f"challenge typ is {typ!r}, not {ENROLMENT_TYP}")
        now = self._clock()
        expires = challenge.get("expires_at")
        if isinstance(expires, str):
            from tessera.encoding import parse_datetime

            if parse_datetime(expires, "challenge expires_at") <= now:
                raise TesseraError(ErrorCode.EXPIRED,
                                   "the challenge has expired: ask the brand for a new one")
        from tessera.jose import sign_compact

        return sign_compact({"typ": ENROLMENT_TYP}, {
            "iss": self.did, "aud": audience, "nonce": nonce, "iat": int(now.timestamp()),
        }, self._signer)

    # -- credentials ------------------------------------------------------------
    @property
    def signer(self) -> LocalSigner:
        return self._signer

    @property
    def resolver(self) -> DIDResolver:
        return self._resolver

    def credentials(self) -> list[StoredCredential]:
        return list(self._creds)

    def get(self, credential_id: str) -> StoredCredential:
        for cred in self._creds:
            if cred.id == credential_id or cred.id.startswith(credential_id):
                return cred
        raise TesseraError(ErrorCode.NOT_FOUND, f"no credential {credential_id}")

    def receive(self, credential: str) -> StoredCredential:
        """Check and store an issued SD-JWT VC.

        The wallet verifies the issuer's signature and that the credential is
        bound to *this* wallet's key before keeping it (the reference holder
        skips this).
        """
        vc = sd_jwt.verify(
            credential, issuer_key=issuer_key_lookup(self._resolver), now=self._clock(),
            audience=None, nonce=None, require_key_binding=False,
        )
        if vc.holder_key is None or vc.holder_key != self._signer.public_key:
            raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "credential is bound to another key")
        ctype = credentials.by_vct(vc.vct)
        ctype.validate(vc.claims)
        exp = vc.payload.get("exp")
        stored = StoredCredential(
            id=str(uuid.uuid4()), format="dc+sd-jwt", credential=credential, issuer=vc.issuer,
            vct=vc.vct, credential_type=ctype.name, claims=vc.claims,
            received_at=self._clock().isoformat(), expires_at=exp if isinstance(exp, int) else None,
        )
        self._creds.append(stored)
        self.save()
        return stored

    def remove(self, credential_id: str) -> None:
        target = self.get(credential_id)
        self._creds = [c for c in self._creds if c.id != target.id]
        self.save()

    # -- presentation -------------------------------------------------------------
    def _match(self, cq: CredentialQuery) -> tuple[StoredCredential, list[str]] | None:
        now = self._clock().timestamp()
        for cred in reversed(self._creds):  # newest first: balances go stale
            if cred.expires_at is not None and cred.expires_at <= now:
                continue
            if not cq.matches_type(fmt=cred.format, vct=cred.vct):
                continue
            option = cq.satisfied_option(cred.claims)
            if option is not None:
                return cred, cq.top_level_names(option)
        return None

    def plan(
        self, *, dcql: Mapping[str, Any], verifier_id: str, verifier_name: str = "",
        purpose: str = "", transaction_data: Sequence[str] = (),
    ) -> tuple[ConsentRequest, dict[str, tuple[StoredCredential, list[str]]]]:
        """Pick credentials and claims for a DCQL query, and the consent to show."""
        if self.has_withdrawn(verifier_id):
            raise TesseraError(
                ErrorCode.CONSENT_DENIED, f"consent for {verifier_id} was withdrawn"
            )
        query = Query.parse(dcql)
        chosen: dict[str, tuple[StoredCredential, list[str]]] = {}
        for cq in query.credentials:
            match = self._match(cq)
            if match is not None:
                chosen[cq.id] = match
        query.check_answered(set(chosen))  # raises when the wallet cannot answer
        items = []
        for cred, names in chosen.values():
            visible = credentials.by_name(cred.credential_type).always_visible
            shared = {n: cred.claims[n] for n in [*visible, *names] if n in cred.claims}
            withheld = sorted(set(cred.claims) - set(shared))
            items.append(ConsentItem(cred.id, cred.credential_type, cred.issuer, shared, withheld))
        consent = ConsentRequest(verifier_id, verifier_name or verifier_id, purpose, items,
                                 list(transaction_data))
        return consent, chosen

    def present(
        self, *, dcql: Mapping[str, Any], audience: str, nonce: str, consent: ConsentCallback,
        verifier_name: str = "", purpose: str = "", transaction_data: Sequence[str] = (),
    ) -> dict[str, list[str]]:
        """Answer a request with an OpenID4VP ``vp_token`` after the member consents.

        ``consent`` is shown exactly which claims go to ``audience``; if it
        returns False nothing is presented, the refusal is logged, and
        ``consent_denied`` is raised.
        """
        request, chosen = self.plan(
            dcql=dcql, verifier_id=audience, verifier_name=verifier_name, purpose=purpose,
            transaction_data=transaction_data,
        )
        shared = {i.credential_type: sorted(i.shared) for i in request.items}
        if not consent(request):
            self._log(request, "declined", shared)
            raise TesseraError(ErrorCode.CONSENT_DENIED, "the member declined")
        token: dict[str, list[str]] = {}
        for query_id, (cred, names) in chosen.items():
            token[query_id] = [sd_jwt.present(
                cred.credential, disclose=names, holder=self._signer, audience=audience,
                nonce=nonce, issued_at=self._clock(),
                transaction_data=list(transaction_data) or None,
            )]
        self._log(request, "shared", shared)
        return token

    # -- consent log ----------------------------------------------------------------
    def _log(self, request: ConsentRequest, event: str, claims: dict[str, list[str]]) -> None:
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=request.verifier_id,
            verifier_name=request.verifier_name, purpose=request.purpose, event=event,
            claims=claims,
        ))
        self.save()

    def consent_log(self) -> list[ConsentRecord]:
        return list(self._consents)

    def export_consents(self) -> str:
        return json.dumps([asdict(c) for c in self._consents], indent=2)

    def withdraw(self, verifier_id: str) -> None:
        """Stop future sharing with ``verifier_id``; recorded in the log."""
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=verifier_id, verifier_name=verifier_id,
            purpose="", event="withdrawn",
        ))
        self.save()

    def grant(self, verifier_id: str) -> None:
        """Allow a verifier again after a withdrawal (asked anew each time)."""
        self._consents.append(ConsentRecord(
            at=self._clock().isoformat(), verifier_id=verifier_id, verifier_name=verifier_id,
            purpose="", event="regranted",
        ))
        self.save()

    def has_withdrawn(self, verifier_id: str) -> bool:
        for record in reversed(self._consents):
            if record.verifier_id == verifier_id and record.event in ("withdrawn", "regranted"):
                return record.event == "withdrawn"
        return False
