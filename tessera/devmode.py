"""Development mode: fetch DID documents and status lists over plain http from named
local origins, so a verifier (or a wallet) can work with an issuer on a laptop or in
docker compose.

Off by default. It is on only when origins are *named*, with ``--dev-origin ORIGIN``
(repeatable) or ``TESSERA_DEV_ORIGINS`` (comma-separated), and every process that
turns it on says so loudly. ``ORIGIN`` is ``http://host:port``; ``ORIGIN=TARGET``
fetches what ``ORIGIN`` names from ``TARGET`` instead (``http://localhost:8000=
http://issuer:8000`` in compose: DIDs keep the address members use, the verifier's
container reaches the issuer by its service name).

Only local names qualify: ``localhost`` (and ``*.localhost``), a single-label name
(a compose service), or a loopback/private IP literal. Any production marker
refuses the whole configuration rather than quietly weakening it: ``TESSERA_ENV``
set to ``production``, or a service's own public URL being https on a public name.

did:web always maps to https (did:web §3.2.1), so a did:web of a named origin is
fetched from that origin's http address; everything else goes through the strict
:class:`tessera.did.HttpFetcher` unchanged.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from tessera.did import HttpFetcher
from tessera.errors import ErrorCode, TesseraError
from tessera.typing import Fetcher

__all__ = [
    "ENV_ORIGINS",
    "ENV_STAGE",
    "DevFetcher",
    "DevOrigin",
    "dev_fetcher",
    "dev_origins",
    "is_local_host",
    "refuse_in_production",
]

ENV_ORIGINS: Final = "TESSERA_DEV_ORIGINS"
ENV_STAGE: Final = "TESSERA_ENV"
_PRODUCTION: Final = frozenset({"production", "prod", "live"})

_log = logging.getLogger("tessera.devmode")


@dataclass(frozen=True)
class DevOrigin:
    """``host:port`` as URLs name it, and the http base it is fetched from."""

    authority: str
    target: str


def is_local_host(host: str) -> bool:
    """localhost, a single-label (compose service) name, or a non-global IP literal."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return bool(host) and "." not in host


def _origin(text: str, what: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(text.strip())
    host = parsed.hostname or ""
    if parsed.scheme not in ("http", "https") or not host or parsed.path not in ("", "/") \
            or parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{what} {text!r} is not an origin like http://localhost:8000")
    if not is_local_host(host):
        raise TesseraError(ErrorCode.FORBIDDEN,
                           f"{what} {text!r} is not a local name: development mode only "
                           "reaches localhost, compose service names and private addresses")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{host}:{port}", f"{parsed.scheme}://{parsed.netloc}"


def _production_marker(environ: Mapping[str, str], public_urls: Iterable[str]) -> str | None:
    stage = environ.get(ENV_STAGE, "").strip().lower()
    if stage in _PRODUCTION:
        return f"{ENV_STAGE}={stage}"
    for url in public_urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme == "https" and parsed.hostname and not is_local_host(parsed.hostname):
            return f"the public URL {url}"
    return None


def refuse_in_production(what: str, environ: Mapping[str, str],
                         public_urls: Iterable[str] = ()) -> None:
    """Raise ``forbidden`` when a production marker is set beside development mode ``what``."""
    marker = _production_marker(environ, public_urls)
    if marker is not None:
        raise TesseraError(ErrorCode.FORBIDDEN,
                           f"{what} is development mode, refused beside the production "
                           f"marker {marker}")


def dev_origins(named: Iterable[str] = (), environ: Mapping[str, str] | None = None, *,
                public_urls: Iterable[str] = ()) -> tuple[DevOrigin, ...]:
    """The origins named on the command line plus ``TESSERA_DEV_ORIGINS``, checked.

    Empty (development mode off) unless some are named. Logs a warning for each.
    """
    env = os.environ if environ is None else environ
    specs = [s for s in named if s.strip()]
    specs += [s for s in env.get(ENV_ORIGINS, "").split(",") if s.strip()]
    if not specs:
        return ()
    refuse_in_production(f"{ENV_ORIGINS} / --dev-origin", env, public_urls)
    found: dict[str, DevOrigin] = {}
    for spec in specs:
        left, sep, right = spec.partition("=")
        authority, base = _origin(left, "dev origin")
        target = _origin(right, "dev origin target")[1] if sep else base
        found[authority] = DevOrigin(authority, target)
    for origin in found.values():
        _log.warning("DEVELOPMENT MODE: DID documents and status lists of %s are fetched over "
                     "plain http from %s; never use this in production", origin.authority,
                     origin.target)
    return tuple(found.values())


class DevFetcher:
    """``inner`` for every URL, except those of a named origin: fetched from its target.

    The local fetcher follows no redirects, so a named origin cannot point the
    verifier at any other private address.
    """

    def __init__(self, inner: Fetcher, origins: Iterable[DevOrigin],
                 local: Fetcher | None = None) -> None:
        self._inner = inner
        self._origins = {o.authority: o for o in origins}
        self._local = local or HttpFetcher(allow_http=True, allow_private=True, max_redirects=0)

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        origin = self._origins.get(f"{(parsed.hostname or '').lower()}:{port}")
        if origin is None:
            return self._inner.fetch(url, accept=accept)
        rest = urllib.parse.urlunsplit(("", "", parsed.path, parsed.query, ""))
        return self._local.fetch(origin.target + rest, accept=accept)


def dev_fetcher(origins: Iterable[DevOrigin], inner: Fetcher | None = None, *,
                deadline: float = 10.0) -> Fetcher:
    """The strict fetcher, or a :class:`DevFetcher` around it when origins are named.

    ``deadline`` bounds each fetch of the fetchers made here (``inner`` keeps its own).
    """
    strict = inner or HttpFetcher(deadline=deadline)
    listed = tuple(origins)
    if not listed:
        return strict
    local = HttpFetcher(allow_http=True, allow_private=True, max_redirects=0, deadline=deadline)
    return DevFetcher(strict, listed, local)
