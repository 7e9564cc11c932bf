"""Service configuration, read from the environment.

``TESSERA_DATABASE_URL`` (or ``DATABASE_URL``)
    SQLAlchemy URL; ``sqlite:///./tessera.db`` by default. ``postgresql://``
    and ``postgres://`` are normalised to the psycopg 3 driver.
``TESSERA_MASTER_KEY`` (or ``TESSERA_MASTER_KEY_FILE``, a file holding it)
    unpadded base64url of 32 random bytes; seals every brand's private keys.
    Required, except in explicit dev mode (``TESSERA_DEV=1``), where a
    throw-away key is generated and a warning says so: keys sealed under it
    are lost when the process ends.
``TESSERA_PUBLIC_URL``
    the https origin (and optional path) the service is reachable at; brand
    DIDs are ``did:web`` names derived from it.
``TESSERA_RATE_LIMITS``, ``TESSERA_RATE_LIMIT_STORE``
    per-client limits on the public OpenID4VCI token and nonce endpoints
    (:mod:`tessera.ratelimit`, docs/configuration.md).
``TESSERA_BATCH_SIZE``, ``TESSERA_BATCH_SIZES``
    OpenID4VCI batch issuance: the most credentials one Credential Request
    gets, for every SD-JWT VC configuration (default 10), and per
    configuration overrides, ``ID=N,ID=N`` (docs/issuer-service.md). Data
    Integrity (``ldp_vc``) configurations name the member's DID as subject,
    so a batch of them would be copies of one linkable credential: their
    size is 1 and cannot be raised.
``TESSERA_WITNESSES``
    the C2SP witnesses each brand's checkpoints are submitted to: a JSON list
    of ``{"url": <submission prefix>, "vkey": <cosigner vkey>}``
    (docs/status-and-log.md, "Witnesses").
``TESSERA_LOG_PUBLIC_ENTRIES``
    ``1`` serves the log's entry bundles (every leaf text, pseudonymous) to
    anyone; by default only hash tiles are public and members read their own
    leaves.
"""

from __future__ import annotations

import logging
import os
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tessera.did import did_web
from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.ratelimit import RateLimitConfig

__all__ = ["Settings", "generate_master_key", "normalise_database_url"]

_log = logging.getLogger("tessera.issuer")

DEFAULT_DATABASE_URL = "sqlite:///./tessera.db"
DEFAULT_PUBLIC_URL = "http://localhost:8000"
MASTER_KEY_FILE_ENV = "TESSERA_MASTER_KEY_FILE"
DEFAULT_BATCH_SIZE = 10
MAX_BATCH_SIZE = 100


def normalise_database_url(url: str) -> str:
    """Point bare PostgreSQL URLs at psycopg 3 (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _seconds(value: str | None, default: float) -> float:
    if value is None or not value.strip():
        return default
    try:
        return float(value)
    except ValueError:
        raise TesseraError(ErrorCode.MALFORMED, f"not a number of seconds: {value!r}") from None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    master_key: bytes = field(default=b"", repr=False)
    public_url: str = DEFAULT_PUBLIC_URL
    dev_mode: bool = False
    max_body_bytes: int = 64 * 1024
    enrolment_challenge_ttl_seconds: int = 300
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    # Seconds between the background sequencer's ticks (issuer._translog.Sequencer);
    # 0 runs none: leaves then reach the tree only when a reader asks, and the
    # 1 s maximum merge delay promised to members is not kept.
    log_sequencer_interval: float = 0.1
    witnesses: tuple[tuple[str, str], ...] = ()
    """(submission prefix URL, cosigner vkey) of each witness."""
    log_public_entries: bool = False

    def __post_init__(self) -> None:
        _check_batch_sizes(self.batch_size, self.batch_sizes)
        object.__setattr__(self, "database_url", normalise_database_url(self.database_url))
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        if len(self.master_key) != 32:
            raise TesseraError(ErrorCode.MALFORMED, "master key must be 32 bytes")
        parsed = urllib.parse.urlsplit(self.public_url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise TesseraError(ErrorCode.MALFORMED, "TESSERA_PUBLIC_URL must be an http(s) URL")
        if parsed.query or parsed.fragment:
            raise TesseraError(ErrorCode.MALFORMED, "TESSERA_PUBLIC_URL takes no query/fragment")
        if not 0 <= self.log_sequencer_interval <= 0.2:
            raise TesseraError(ErrorCode.MALFORMED, "TESSERA_LOG_SEQUENCER_INTERVAL must be 0 "
                               "(off) to 0.2 seconds: the log promises a 1 s merge delay")
        from tessera.tlog import SIG_COSIGNATURE_V1, Verifier

        for url, vkey in self.witnesses:
            if urllib.parse.urlsplit(url).scheme not in ("https", "http") or \
                    Verifier.parse(vkey).sig_type != SIG_COSIGNATURE_V1:
                raise TesseraError(ErrorCode.MALFORMED, "a witness is an http(s) URL and a "
                                   "cosignature/v1 vkey")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        dev = _truthy(env.get("TESSERA_DEV"))
        raw_key = env.get("TESSERA_MASTER_KEY", "").strip() or _key_file(env)
        if raw_key:
            master_key = b64url_decode(raw_key, max_len=64)
        elif dev:
            from tessera.devmode import refuse_in_production

            refuse_in_production("TESSERA_DEV", env, [env.get("TESSERA_PUBLIC_URL", "")])
            master_key = secrets.token_bytes(32)
            _log.warning(
                "TESSERA_DEV is set and TESSERA_MASTER_KEY is not: using a throw-away master "
                "key; brand keys created now cannot be unsealed after a restart"
            )
        else:
            raise TesseraError(
                ErrorCode.MALFORMED,
                "TESSERA_MASTER_KEY is not set (base64url of 32 random bytes; "
                "`tessera issuer master-key` prints one; `tessera issuer init` writes one to a "
                "file for TESSERA_MASTER_KEY_FILE), or set TESSERA_DEV=1 for a throw-away key",
            )
        return cls(
            database_url=env.get("TESSERA_DATABASE_URL")
            or env.get("DATABASE_URL")
            or DEFAULT_DATABASE_URL,
            master_key=master_key,
            public_url=env.get("TESSERA_PUBLIC_URL") or DEFAULT_PUBLIC_URL,
            dev_mode=dev,
            rate_limits=RateLimitConfig.from_env(env),
            batch_size=_int_env(env, "TESSERA_BATCH_SIZE", DEFAULT_BATCH_SIZE),
            batch_sizes=parse_batch_sizes(env.get("TESSERA_BATCH_SIZES", "")),
            log_sequencer_interval=_seconds(env.get("TESSERA_LOG_SEQUENCER_INTERVAL"), 0.1),
            witnesses=_witnesses(env.get("TESSERA_WITNESSES", "")),
            log_public_entries=_truthy(env.get("TESSERA_LOG_PUBLIC_ENTRIES")),
        )

    def batch_size_for(self, configuration_id: str) -> int:
        """Most credentials one request gets for a configuration (OpenID4VCI 1.0 §8.2)."""
        if not configuration_id.endswith("_sd_jwt"):
            return 1
        return self.batch_sizes.get(configuration_id, self.batch_size)

    def brand_did(self, slug: str) -> str:
        """The ``did:web`` of a brand, served at ``{public_url}/brands/{slug}/did.json``."""
        return did_web(self.public_url, "brands", slug)


def _configuration_ids() -> set[str]:
    from tessera.credentials import CREDENTIAL_TYPES

    return {f"{t.name}_{suffix}" for t in CREDENTIAL_TYPES for suffix in ("sd_jwt", "ldp_vc")}


def _check_batch_sizes(default: int, sizes: Mapping[str, int]) -> None:
    for name, size in {"TESSERA_BATCH_SIZE": default, **sizes}.items():
        if isinstance(size, bool) or not isinstance(size, int) \
                or not 1 <= size <= MAX_BATCH_SIZE:
            raise TesseraError(ErrorCode.MALFORMED,
                               f"batch size of {name} must be 1 to {MAX_BATCH_SIZE}")
    unknown = set(sizes) - _configuration_ids()
    if unknown:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"TESSERA_BATCH_SIZES names unknown configurations {sorted(unknown)}")
    linkable = [c for c, n in sizes.items() if not c.endswith("_sd_jwt") and n != 1]
    if linkable:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{linkable}: a Data Integrity credential names the member's DID, "
                           "so its batch size is 1")


def parse_batch_sizes(text: str) -> dict[str, int]:
    """``ID=N,ID=N`` (``TESSERA_BATCH_SIZES``) into a mapping."""
    sizes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise TesseraError(ErrorCode.MALFORMED,
                               f"TESSERA_BATCH_SIZES: {item!r} is not CONFIGURATION_ID=N")
        sizes[name.strip()] = int(value)
    return sizes


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise TesseraError(ErrorCode.MALFORMED, f"{name} must be a whole number")
    return int(raw)


def _witnesses(raw: str) -> tuple[tuple[str, str], ...]:
    if not raw.strip():
        return ()
    from tessera.encoding import parse_json

    items = parse_json(raw.encode())
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("url"), str) and isinstance(i.get("vkey"), str)
            for i in items):
        raise TesseraError(ErrorCode.MALFORMED,
                           'TESSERA_WITNESSES is a JSON list of {"url": ..., "vkey": ...}')
    return tuple((str(i["url"]), str(i["vkey"])) for i in items)


def _key_file(env: Mapping[str, str]) -> str:
    name = env.get(MASTER_KEY_FILE_ENV, "").strip()
    if not name:
        return ""
    try:
        return Path(name).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{MASTER_KEY_FILE_ENV}={name}: cannot read it ({exc})") from None


def generate_master_key() -> str:
    return b64url_encode(secrets.token_bytes(32))
