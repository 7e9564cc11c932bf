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


def normalise_database_url(url: str) -> str:
    """Point bare PostgreSQL URLs at psycopg 3 (SQLAlchemy would pick psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "database_url", normalise_database_url(self.database_url))
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        if len(self.master_key) != 32:
            raise TesseraError(ErrorCode.MALFORMED, "master key must be 32 bytes")
        parsed = urllib.parse.urlsplit(self.public_url)
        if parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise TesseraError(ErrorCode.MALFORMED, "TESSERA_PUBLIC_URL must be an http(s) URL")
        if parsed.query or parsed.fragment:
            raise TesseraError(ErrorCode.MALFORMED, "TESSERA_PUBLIC_URL takes no query/fragment")

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
        )

    def brand_did(self, slug: str) -> str:
        """The ``did:web`` of a brand, served at ``{public_url}/brands/{slug}/did.json``."""
        return did_web(self.public_url, "brands", slug)


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
