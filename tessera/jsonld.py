"""JSON-LD for Data Integrity: an offline document loader, expansion, RDFC-1.0.

Every context Tessera needs ships as a file under ``schemas/contexts/``; the
:class:`DocumentLoader` serves those plus whatever documents an operator
configured explicitly, and refuses every other URL. Nothing here opens a
socket.

Canonicalization is RDFC-1.0 (W3C Recommendation, 2024), which pyld still
calls ``URDNA2015``: the two produce the same output with SHA-256. Every
operation runs under a work budget (see "Work budget" below): pyld's
expansion, node map and RDFC-1.0's N-degree hashing are superlinear in some
inputs, so each step is charged what it is about to cost *before* it runs,
and a document that would need more is refused as ``too_large`` within a
bounded amount of CPU.

pyld silently drops JSON keys that the active context does not define, so a
signer that trusts it would sign *less* than the caller thinks it signed.
:func:`check_all_terms_defined` closes that hole: issuance calls it before
signing, verification before trusting any claim.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Final, ParamSpec, TypeVar

import pyoxigraph as _ox
from c14n.Canonicalize import canonicalize as _jcs  # type: ignore[import-untyped]
from frozendict import frozendict
from pyld import jsonld as _pyld
from pyld.canon import URDNA2015 as _URDNA2015
from pyld.context_resolver import ContextResolver as _ContextResolver
from pyld.resolved_context import ResolvedContext as _ResolvedContext

import schemas
from tessera.encoding import MAX_DEPTH
from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "BUNDLED_CONTEXTS",
    "CREDENTIALS_V1",
    "CREDENTIALS_V2",
    "DATA_INTEGRITY_V2",
    "LOYALTY_V1",
    "MAX_NODES",
    "MAX_QUADS",
    "MAX_RELATED_BLANK_NODES",
    "MAX_VALUES_PER_TERM",
    "MAX_WORK",
    "TESSERA_VOCAB",
    "DocumentLoader",
    "WorkBudget",
    "canonicalize",
    "canonicalize_nquads",
    "check_all_terms_defined",
    "compact",
    "default_loader",
    "expand",
    "metered",
    "to_nquads",
    "work_budget",
]

CREDENTIALS_V1: Final = "https://www.w3.org/2018/credentials/v1"
CREDENTIALS_V2: Final = "https://www.w3.org/ns/credentials/v2"
DATA_INTEGRITY_V2: Final = "https://w3id.org/security/data-integrity/v2"
MULTIKEY_V1: Final = "https://w3id.org/security/multikey/v1"
ED25519_2020_V1: Final = "https://w3id.org/security/suites/ed25519-2020/v1"
JWS_2020_V1: Final = "https://w3id.org/security/suites/jws-2020/v1"
LOYALTY_V1: Final = "https://w3id.org/tessera/contexts/loyalty/v1"
TESSERA_VOCAB: Final = "https://w3id.org/tessera/vocab#"

BUNDLED_CONTEXTS: Final[Mapping[str, str]] = {
    CREDENTIALS_V1: "credentials-v1.jsonld",
    CREDENTIALS_V2: "credentials-v2.jsonld",
    DATA_INTEGRITY_V2: "data-integrity-v2.jsonld",
    MULTIKEY_V1: "multikey-v1.jsonld",
    ED25519_2020_V1: "security-ed25519-2020-v1.jsonld",
    JWS_2020_V1: "security-jws-2020-v1.jsonld",
    "https://www.w3.org/ns/did/v1": "did-v1.jsonld",
    "https://w3id.org/security/v1": "security-v1.jsonld",
    "https://w3id.org/security/v2": "security-v2.jsonld",
    LOYALTY_V1: "loyalty-v1.jsonld",
}

# Limits on what one JSON-LD operation (or one request, see work_budget) may
# ask of pyld; see "Work budget" below and docs/data-integrity.md.
MAX_WORK: Final = 600_000
MAX_VALUES_PER_TERM: Final = 1_000
MAX_NODES: Final = 10_000
MAX_QUADS: Final = 20_000
MAX_RELATED_BLANK_NODES: Final = 8
# Nesting a document may have; twice the parser's, because compaction is
# given expanded documents, where every level of the JSON is two.
MAX_JSONLD_DEPTH: Final = 2 * MAX_DEPTH + 2

# Derived booleans whose names depend on the programme (tier slugs, points
# ladder). The loyalty context maps them through a type-scoped @vocab; only
# these shapes, and only directly in credentialSubject, may use it.
_DERIVED_BOOLEAN = re.compile(r"^(tier_at_least_[a-z0-9_]{1,32}|points_at_least_[0-9]{1,12})$")
_CREDENTIAL_SUBJECT: Final = "https://www.w3.org/2018/credentials#credentialSubject"
# An IRI prefix no real vocabulary uses: prepended as a @vocab, it catches
# every key pyld would otherwise drop.
_UNDEFINED: Final = "urn:tessera:undefined-term:"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ABSOLUTE_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


# Digests of the *published* bytes of bundled contexts whose file here is a
# reformatted copy, so that a relatedResource naming the published digest
# (VCDM 2.0 §5.3) is recognised: for https://www.w3.org/ns/credentials/v2, the
# SHA-256 and SHA-384 of the published file as the W3C vc-data-model-2.0 test
# suite states them (tests/fixtures.js, relatedResource).
_PUBLISHED_DIGESTS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    CREDENTIALS_V2: (
        ("sha256", "24a18c90e9856d526111f29376e302d970b2bd10182e33959995b0207d7043b9"),
        ("sha384", "35239c36999d2155312091af194a1edb61634d6ad789a5e5b19f2aebdd762dd9"
                   "d1dcaada40eda7ef921c6b8c0ae107a0"),
    ),
}
_DIGEST_ALGS: Final = ("sha256", "sha384", "sha512")
_SRI_PIN = re.compile(r"^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$")
MAX_CONTEXT_BYTES: Final = 1024 * 1024


def _digests_of(raw: bytes) -> dict[str, set[bytes]]:
    return {alg: {hashlib.new(alg, raw).digest()} for alg in _DIGEST_ALGS}


@cache
def _bundled_digests(url: str) -> Mapping[str, frozenset[bytes]]:
    raw = resources.files(schemas).joinpath("contexts/" + BUNDLED_CONTEXTS[url]).read_bytes()
    out = _digests_of(raw)
    for alg, hex_digest in _PUBLISHED_DIGESTS.get(url, ()):
        out[alg].add(bytes.fromhex(hex_digest))
    return {alg: frozenset(v) for alg, v in out.items()}


def _check_pin(url: str, raw: bytes, pin: str) -> None:
    match = _SRI_PIN.match(pin.strip())
    if match is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"pin for {url[:200]} must be an SRI digest like sha256-<base64>")
    try:
        want = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"pin for {url[:200]} is not base64") from None
    if hashlib.new(match.group(1), raw).digest() != want:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"context file for {url[:200]} does not match its pinned digest")


@cache
def _bundled(url: str) -> dict[str, Any]:
    loaded: dict[str, Any] = schemas.load("contexts/" + BUNDLED_CONTEXTS[url])
    return loaded


def _deep_freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return frozendict({k: _deep_freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_deep_freeze(v) for v in value]
    return value


@cache
def _frozen_bundled(url: str) -> Any:
    # Immutable, so it is shared rather than copied, and the context
    # resolver may key its cache on the object's identity (see _Resolver).
    return _deep_freeze(_bundled(url))


class DocumentLoader:
    """A pyld document loader over bundled contexts and operator-configured ones.

    ``extra`` maps further URLs to already-parsed documents (an operator's
    partner contexts). It cannot replace a bundled context: a context that
    maps a term elsewhere under a known URL would change what signatures
    mean. Bundled contexts are tagged static so pyld's process-wide cache keeps
    them processed; extra documents are cached per operation only, because
    that cache is keyed by URL alone and two loaders may disagree on a URL.
    """

    def __init__(self, extra: Mapping[str, dict[str, Any]] | None = None) -> None:
        extra = dict(extra or {})
        for url, doc in extra.items():
            if url in BUNDLED_CONTEXTS:
                raise TesseraError(
                    ErrorCode.MALFORMED, f"{url} is bundled and cannot be replaced"
                )
            if not isinstance(doc, dict):
                raise TesseraError(ErrorCode.MALFORMED, f"context for {url} is not an object")
        self._extra = {url: json.loads(json.dumps(doc)) for url, doc in extra.items()}
        self._extra_digests: dict[str, Mapping[str, frozenset[bytes]]] = {}

    @classmethod
    def from_files(cls, files: Mapping[str, tuple[str | os.PathLike[str], str]]
                   ) -> DocumentLoader:
        """Bundled contexts plus ``{url: (file, pin)}``, each file pinned by its digest.

        ``pin`` is an SRI hash expression of the file's bytes
        (``sha256-<base64>``, as ``openssl dgst -sha256 -binary FILE | base64``
        prints it; sha384 and sha512 also work). A file that does not match its
        pin, cannot be read, or is not a JSON object is ``invalid_request``:
        nothing is fetched, ever, so a context the operator did not pin stays
        unknown (``unsupported_format`` when a document uses it).
        """
        from tessera.encoding import parse_json_object

        docs: dict[str, dict[str, Any]] = {}
        raws: dict[str, bytes] = {}
        for url, (file, pin) in files.items():
            try:
                raw = Path(file).read_bytes()
            except OSError as exc:
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   f"cannot read the context file for {url[:200]}: "
                                   f"{exc.strerror}") from exc
            _check_pin(url, raw, pin)
            try:
                docs[url] = parse_json_object(raw, max_bytes=MAX_CONTEXT_BYTES)
            except TesseraError as exc:
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   f"context file for {url[:200]}: {exc.detail}") from exc
            raws[url] = raw
        loader = cls(docs)
        loader._extra_digests = {
            url: {alg: frozenset(v) for alg, v in _digests_of(raw).items()}
            for url, raw in raws.items()
        }
        return loader

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str]) -> DocumentLoader:
        """:meth:`from_files` from a JSON manifest ``{url: {"file": ..., "digestSRI": ...}}``.

        Relative ``file`` paths are read from the manifest's directory.
        """
        from tessera.encoding import parse_json_object

        manifest_path = Path(path)
        try:
            manifest = parse_json_object(manifest_path.read_bytes(), max_bytes=MAX_CONTEXT_BYTES)
        except OSError as exc:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"cannot read the context manifest: {exc.strerror}") from exc
        files: dict[str, tuple[str | os.PathLike[str], str]] = {}
        for url, entry in manifest.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and isinstance(entry.get("digestSRI"), str)):
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   f"manifest entry for {url[:200]} needs file and digestSRI")
            files[url] = (manifest_path.parent / entry["file"], entry["digestSRI"])
        return cls.from_files(files)

    def known(self, url: str) -> bool:
        return url in BUNDLED_CONTEXTS or url in self._extra

    def digests(self, url: str) -> Mapping[str, frozenset[bytes]]:
        """``{"sha256": {digest, ...}, ...}`` of a resource held here; empty if none.

        Bundled contexts: their file, plus the published bytes' digests where
        the file is a reformatted copy. Pinned files: their bytes. Documents
        given as objects have no bytes, so nothing.
        """
        if url in BUNDLED_CONTEXTS:
            return _bundled_digests(url)
        return self._extra_digests.get(url, {})

    def __call__(self, url: str, options: Any = None) -> dict[str, Any]:
        if url in BUNDLED_CONTEXTS:
            document, tag = copy.deepcopy(_bundled(url)), "static"
        elif url in self._extra:
            # pyld resolves relative @context URLs in place; hand it a copy.
            document, tag = copy.deepcopy(self._extra[url]), None
        else:
            raise TesseraError(
                ErrorCode.UNSUPPORTED_FORMAT, f"JSON-LD context {url[:200]!r} is not configured"
            )
        remote: dict[str, Any] = {
            "contentType": "application/ld+json",
            "contextUrl": None,
            "documentUrl": url,
            "document": document,
        }
        if tag:
            remote["tag"] = tag
        return remote

    def for_pyld(self, url: str, options: Any = None) -> dict[str, Any]:
        """What pyld is given: bundled contexts deeply frozen and shared, not copied."""
        if url in BUNDLED_CONTEXTS:
            return {"contentType": "application/ld+json", "contextUrl": None,
                    "documentUrl": url, "document": _frozen_bundled(url), "tag": "static"}
        return self(url, options)


@cache
def default_loader() -> DocumentLoader:
    return DocumentLoader()


# -- work budget -------------------------------------------------------------------
#
# pyld is not linear in its input. Adding a value to a node's property in the
# node map (toRdf, flattening) first compares it with every value already
# there, so one term with n values costs n²/2 comparisons (6,000 names: 12 s).
# A property- or type-scoped context is processed again under every new
# active context, so nesting multiplies the terms of a big scoped context by
# the nodes using it. RDFC-1.0's Hash N-Degree Quads (§4.8) tries every
# permutation of the blank nodes that share a hash, and recurses from each
# (a 40-node blank clique: 13 s). Counting calls does not bound that work.
#
# So every step that can repeat is charged, before it runs, the units of work
# it is about to do, counted from its actual inputs: the values a new value
# is compared with, the terms a context defines, the k! permutations of a
# blank node group and the identifier issuer each one copies. The weights
# below were measured on the reference machine (2 vCPU), where a unit costs
# 0.3-0.7 µs depending on the step, so MAX_WORK is at most about 0.4 s of CPU.
# A step that would exceed the budget is refused (too_large) instead of run,
# so a refusal costs at most the budget.
#
# The budget covers one operation, or every operation inside one
# ``work_budget()`` block: a verification (a presentation, its credentials,
# their status lists) is one block, so its total, not each part, is bounded.

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Weights (units per step), measured with time.process_time on pyld 3.3.
_W_OPERATION: Final = 200     # setting up one pyld operation
_W_EXPAND: Final = 14         # one element through _expand
_W_KEY: Final = 6             # one entry (key, or item of a key's array) of an object
_W_TERM: Final = 30           # one term definition (context processing)
_W_CLONE_SHIFT: Final = 4     # cloning an active context: mappings / 16
_W_NODE: Final = 2            # one element through the node map
_W_NODE_OBJECT: Final = 10    # one node object through the node map (its keys, its id)
_W_COMPARE: Final = 1         # one value compared with a new one (node map)
_W_RDF: Final = 4             # one RDF term built from a node map value
_W_COMPACT: Final = 6         # one element through _compact
_W_IRI_SHIFT: Final = 1       # compacting an IRI scans the mappings: / 2
_W_QUAD: Final = 6            # one quad through RDFC-1.0 (serialize, hash, sort)
_W_FIRST_DEGREE: Final = 12   # one quad of a first-degree hash (copy, serialize)
_W_PERMUTATION: Final = 12    # one permutation: next permutation and issuer copy
_W_JCS_SHIFT: Final = 2       # JCS of an inline context: its size (see _json_size) / 4
_W_TEXT_SHIFT: Final = 3      # text in a JSON value: characters / 8


class WorkBudget:
    """Units of JSON-LD work left; :meth:`charge` refuses the step that would overrun.

    ``scratch`` holds what this block's operations processed from a caller's
    contexts (see :class:`_SharedContext`): it dies with the block.
    """

    __slots__ = ("limit", "scratch", "used")

    def __init__(self, limit: int = MAX_WORK) -> None:
        self.limit = limit
        self.used = 0
        self.scratch: dict[tuple[int, str], Any] = {}

    def charge(self, units: int) -> None:
        self.used += units
        if self.used > self.limit:
            raise TesseraError(
                ErrorCode.TOO_LARGE,
                f"JSON-LD document needs more than {self.limit:,} units of work",
            )


_BUDGET: ContextVar[WorkBudget | None] = ContextVar("tessera_jsonld_budget", default=None)


@contextmanager
def work_budget(units: int = MAX_WORK) -> Iterator[WorkBudget]:
    """One budget for every JSON-LD operation in the block (nested blocks share the outer)."""
    outer = _BUDGET.get()
    if outer is not None:
        yield outer
        return
    budget = WorkBudget(units)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def metered(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` inside :func:`work_budget`, so all of its JSON-LD work shares one budget."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with work_budget():
            return fn(*args, **kwargs)

    return wrapper


def _current_budget() -> WorkBudget:
    # The processor and resolver classes keep pyld's constructor signatures
    # (bench swaps in the stock ones); the public functions open the budget.
    budget = _BUDGET.get()
    return budget if budget is not None else WorkBudget()


def _too_large(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.TOO_LARGE, detail)


def _prescan(doc: Any, budget: WorkBudget) -> None:
    """Refuse, before pyld sees it, a document nested or wide beyond the limits.

    Every array is the values of one term and every object's members are
    terms or map entries (language, index, id and type maps become values of
    one term), so neither may exceed MAX_VALUES_PER_TERM. pyld's first step
    deep-copies the input: each JSON value is charged for that.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items: Any = value.values()
        elif isinstance(value, list):
            items = value
        else:
            count += 1
            continue
        count += 1 + len(value)
        if depth > MAX_JSONLD_DEPTH:
            raise _too_large(f"JSON-LD document nested deeper than {MAX_JSONLD_DEPTH}")
        if len(value) > MAX_VALUES_PER_TERM:
            raise _too_large(f"more than {MAX_VALUES_PER_TERM} values for one term")
        stack.extend((item, depth + 1) for item in items
                     if isinstance(item, (dict, list)))
    budget.charge(count)


def _first_is_plain_object(local_ctx: Any) -> bool:
    if isinstance(local_ctx, Mapping) and isinstance(local_ctx.get("@context"), list):
        local_ctx = local_ctx["@context"]
    first = local_ctx[0] if isinstance(local_ctx, list) and local_ctx else local_ctx
    return isinstance(first, Mapping) and "@context" not in first and "@propagate" not in first


# -- what outlives an operation: only what the bundled contexts make -------------------
#
# pyld keeps a process-wide LRU of resolved contexts (100 entries, keyed by URL
# or by the JCS of an inline context) and, inside each resolved context, its
# processed form per active context. Stock, a caller's inline and scoped
# contexts land there too: they outlive the request (a few MB each at the size
# caps), and a stream of them evicts the bundled ones. Here only bundled
# contexts reach the shared cache (:meth:`_Resolver._cache_resolved_context`),
# and a bundled context processed on top of an active context that a caller's
# context shaped is kept in the operation's scratch, not in the shared entry
# (:class:`_SharedContext`). Trusted active contexts are pyld's initial ones
# and those made by processing a bundled context on a trusted one.

_TRUSTED_MAX: Final = 4096
_trusted_uuids: dict[str, None] = {}
_trusted_lock = threading.Lock()


def _trusted(active_ctx: Any) -> bool:
    uuid = active_ctx.get("_uuid")
    if not isinstance(uuid, str):
        return False
    if uuid in _trusted_uuids:
        return True
    initial = _pyld.INITIAL_CONTEXTS.get(active_ctx.get("processingMode"))
    return initial is not None and initial.get("_uuid") == uuid


def _trust(uuid: Any) -> None:
    if not isinstance(uuid, str):
        return
    with _trusted_lock:
        if len(_trusted_uuids) >= _TRUSTED_MAX:
            # Forgetting only costs re-processing: a forgotten context's
            # results go to scratch until a bundled chain is processed afresh.
            _trusted_uuids.clear()
        _trusted_uuids[uuid] = None


class _SharedContext(_ResolvedContext):  # type: ignore[misc]
    """A bundled context in pyld's shared cache; see the section comment above."""

    def get_processed(self, active_ctx: Any) -> Any:
        found = super().get_processed(active_ctx)
        if found is None:
            budget = _BUDGET.get()
            if budget is not None:
                found = budget.scratch.get((id(self), active_ctx["_uuid"]))
        return found

    def set_processed(self, active_ctx: Any, processed_ctx: Any) -> None:
        if _trusted(active_ctx):
            if isinstance(processed_ctx, Mapping):
                _trust(processed_ctx.get("_uuid"))
            super().set_processed(active_ctx, processed_ctx)
            return
        budget = _BUDGET.get()
        if budget is not None:
            budget.scratch[(id(self), active_ctx["_uuid"])] = processed_ctx


class _Resolver(_ContextResolver):  # type: ignore[misc]
    """pyld's context resolver, minus a JCS serialisation per scoped context.

    For every inline (scoped) context it meets, pyld computes its cache key
    as the JSON canonicalization (RFC 8785) of the context object: a fifth of
    a credential's expansion time. Contexts from bundled files are deeply
    frozen, so for those the key is remembered by object identity (the
    object is kept alive by the memo, so its id cannot be reused). Inline
    contexts from a caller's document are mutable and always re-serialised.
    """

    # Shared by every operation (each gets its own resolver), hence class-level.
    _memo: ClassVar[dict[int, tuple[Any, str]]] = {}
    _memo_lock: ClassVar[threading.Lock] = threading.Lock()
    _MEMO_MAX: ClassVar[int] = 4096

    def __init__(self, shared_cache: Any, document_loader: Any) -> None:
        super().__init__(shared_cache, document_loader)
        self._budget = _current_budget()
        self._sizes: dict[int, tuple[Any, int]] = {}

    def _charge_inline(self, ctx: Any) -> None:
        # pyld serializes an inline context (JCS) every time a scope applies
        # it; the size is walked once per operation and charged every time.
        hit = self._sizes.get(id(ctx))
        if hit is None or hit[0] is not ctx:
            size = _json_size(ctx)
            self._budget.charge(size)
            hit = self._sizes[id(ctx)] = (ctx, size)
        self._budget.charge(1 + (hit[1] >> _W_JCS_SHIFT))

    def resolve(self, active_ctx: Any, context: Any, base: Any, cycles: Any = None) -> Any:
        if isinstance(context, Mapping) and "@context" in context:
            context = context["@context"]
        items = context if isinstance(context, list) else [context]
        for ctx in items:
            if isinstance(ctx, dict) and not isinstance(ctx, frozendict):
                self._charge_inline(ctx)
        if not any(isinstance(c, frozendict) for c in items):
            return super().resolve(active_ctx, context, base, cycles)
        out: list[Any] = []
        for ctx in items:
            if not isinstance(ctx, frozendict):
                out.extend(super().resolve(active_ctx, [ctx], base, cycles))
                continue
            hit = self._memo.get(id(ctx))
            if hit is not None and hit[0] is ctx:
                key = hit[1]
            else:
                key = _jcs(dict(ctx)).decode("utf-8")
                with self._memo_lock:
                    if len(self._memo) >= self._MEMO_MAX:
                        self._memo.clear()
                    self._memo[id(ctx)] = (ctx, key)
            resolved = self._get(key)
            if not resolved:
                resolved = _SharedContext(ctx)
                _ContextResolver._cache_resolved_context(self, key, resolved, "static")
            out.append(resolved)
        return out

    def _cache_resolved_context(self, key: Any, resolved: Any, tag: Any) -> Any:
        # pyld's own calls: a caller's inline context (keyed by its JCS) or a
        # context fetched by URL. Only the bundled URLs are shared; everything
        # else lives in this operation's cache and goes with it.
        if key not in BUNDLED_CONTEXTS:
            tag = None
        return super()._cache_resolved_context(key, resolved, tag)


class _Processor(_pyld.JsonLdProcessor):  # type: ignore[misc]
    """pyld's processor with type-scoped contexts reaching its processed-context cache.

    pyld caches a processed context under the ``_uuid`` of the active context
    it was applied to. A type-scoped context does not propagate, so pyld first
    clones the active context and gives the clone a *fresh* random ``_uuid``:
    the cache never hits, and every ``VerifiableCredential``,
    ``DataIntegrityProof`` or ``BitstringStatusListEntry`` node re-processes
    its scoped context (about two thirds of a credential's expansion time).
    The clone is a pure function of the active context (its mappings, plus
    ``previousContext`` pointing back to it), so it is given an identifier
    derived from the active context's own: the same cache key pyld would use
    for the active context itself, no weaker. Only taken when the first
    scoped context is an inline object without ``@propagate`` (which would
    change whether pyld clones at all); anything else goes the stock way.
    """

    def __init__(self) -> None:
        super().__init__()
        self._budget = budget = _current_budget()
        self._node_objects = 0
        self._rdf_terms = 0
        budget.charge(_W_OPERATION)

    def _process_context(self, active_ctx: Any, local_ctx: Any, options: Any,
                         override_protected: bool = False, propagate: bool = True,
                         validate_scoped: bool = True, cycles: Any = None) -> Any:
        self._budget.charge(_W_EXPAND)
        uuid = active_ctx.get("_uuid")
        if (not propagate and not active_ctx.get("previousContext") and isinstance(uuid, str)
                and _first_is_plain_object(local_ctx)):
            child = self._clone_active_context(active_ctx)
            child["previousContext"] = active_ctx
            child["_uuid"] = uuid + "~nonpropagating"
            if _trusted(active_ctx):
                _trust(child["_uuid"])
            active_ctx = child
        return super()._process_context(
            active_ctx, local_ctx, options, override_protected=override_protected,
            propagate=propagate, validate_scoped=validate_scoped, cycles=cycles)

    # -- metering: each hook charges its step before pyld runs it --------------

    def _create_term_definition(self, active_ctx: Any, local_ctx: Any, term: Any,
                                *args: Any, **kwargs: Any) -> Any:
        definition = local_ctx.get(term) if isinstance(local_ctx, Mapping) else None
        self._budget.charge(_W_TERM + _json_size(definition) + (len(term) >> _W_TEXT_SHIFT))
        return super()._create_term_definition(active_ctx, local_ctx, term, *args, **kwargs)

    def _clone_active_context(self, active_ctx: Any) -> Any:
        self._budget.charge(1 + (len(active_ctx["mappings"]) >> _W_CLONE_SHIFT))
        return super()._clone_active_context(active_ctx)

    def _expand(self, active_ctx: Any, active_property: Any, element: Any, options: Any,
                *args: Any, **kwargs: Any) -> Any:
        units = _W_EXPAND
        if isinstance(element, dict):
            # Keys, and arrays pyld walks in place (@type, maps): one level down.
            units += _W_KEY * sum(len(v) if isinstance(v, list | dict) else 1
                                  for v in element.values())
        self._budget.charge(units)
        return super()._expand(active_ctx, active_property, element, options, *args, **kwargs)

    def _compact(self, active_ctx: Any, active_property: Any, element: Any,
                 options: Any) -> Any:
        units = _W_COMPACT
        if isinstance(element, dict):
            units += _W_KEY * sum(len(v) if isinstance(v, list | dict) else 1
                                  for v in element.values())
        self._budget.charge(units)
        return super()._compact(active_ctx, active_property, element, options)

    def _compact_iri(self, active_ctx: Any, iri: Any, *args: Any, **kwargs: Any) -> Any:
        # With no term for it, pyld scans every mapping for a CURIE prefix.
        self._budget.charge(_W_COMPACT + (len(active_ctx["mappings"]) >> _W_IRI_SHIFT))
        return super()._compact_iri(active_ctx, iri, *args, **kwargs)

    def _get_inverse_context(self, active_ctx: Any) -> Any:
        if _pyld._inverse_context_cache.get(active_ctx["_uuid"]) is None:
            self._budget.charge(_W_TERM * len(active_ctx["mappings"]))
        return super()._get_inverse_context(active_ctx)

    def _object_to_rdf(self, item: Any, issuer: Any, triples: Any, options: Any) -> Any:
        self._rdf_terms += 1
        if self._rdf_terms > MAX_QUADS:
            raise _too_large(f"RDF dataset has more than {MAX_QUADS} quads")
        self._budget.charge(_W_RDF)
        return super()._object_to_rdf(item, issuer, triples, options)

    def _create_node_map(self, input_: Any, graph_map: Any, active_graph: Any, issuer: Any,
                         active_subject: Any = None, active_property: Any = None,
                         list_: Any = None) -> Any:
        units = _W_NODE
        if isinstance(input_, dict):
            units += self._node_map_compares(input_, graph_map.get(active_graph), issuer,
                                             active_subject, active_property, list_)
        self._budget.charge(units)
        return super()._create_node_map(input_, graph_map, active_graph, issuer,
                                        active_subject, active_property, list_)

    def _node_map_compares(self, input_: dict[str, Any], graph: dict[str, Any] | None,
                           issuer: Any, active_subject: Any, active_property: Any,
                           list_: Any) -> int:
        """The comparisons pyld's add_value is about to make for ``input_`` (it dedups by scan)."""
        is_value = "@value" in input_
        units = 0
        if not is_value and "@list" not in input_:
            self._node_objects += 1
            if self._node_objects > MAX_NODES:
                raise _too_large(f"JSON-LD document has more than {MAX_NODES} nodes")
            units += _W_NODE_OBJECT + _W_KEY * len(input_)
        if graph is None:
            return units
        if (isinstance(active_subject, str) and not list_ and "@list" not in input_
                and active_property is not None):
            subject = graph.get(active_subject)
            if subject is not None:
                units += _compares(subject.get(active_property), input_)
        if is_value or "@list" in input_:
            return units
        node_id = input_.get("@id")
        if isinstance(node_id, str) and node_id.startswith("_:"):
            node_id = issuer.existing.get(node_id)
        node = graph.get(node_id) if isinstance(node_id, str) else None
        if isinstance(active_subject, dict) and node is not None:
            # A reverse property: the referencing node is added to this one.
            units += _compares(node.get(active_property), active_subject)
        types = input_.get("@type")
        if isinstance(types, list) and types:
            have = len(node.get("@type", ())) if node is not None else 0
            if have + len(types) > MAX_VALUES_PER_TERM:
                raise _too_large(f"more than {MAX_VALUES_PER_TERM} values for one term")
            units += _W_COMPARE * len(types) * (have + len(types) // 2)
        return units


def _json_size(value: Any) -> int:
    """Units to walk a JSON value: one per value, plus one per 8 characters of text.

    Iterative, as the input may be deep. Text counts because the steps that
    repeat (serializing and processing a scoped context, comparing JSON
    literals) are linear in it: a 40 KB IRI in a scoped context would
    otherwise cost as little as a short one, once per node using it.
    """
    size, stack = 0, [value]
    while stack:
        item = stack.pop()
        size += 1
        if isinstance(item, str):
            size += len(item) >> _W_TEXT_SHIFT
        elif isinstance(item, Mapping):
            size += sum(len(k) for k in item) >> _W_TEXT_SHIFT
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return size


def _compares(existing: Any, value: dict[str, Any]) -> int:
    if existing is None:
        return 0
    n = len(existing) if isinstance(existing, list) else 1
    if n >= MAX_VALUES_PER_TERM:
        raise _too_large(f"more than {MAX_VALUES_PER_TERM} values for one term")
    # Two JSON literals compare by deep equality, which costs their size.
    per = _json_size(value["@value"]) if value.get("@type") == "@json" else 1
    return _W_COMPARE * n * per


def _options(loader: DocumentLoader | None) -> dict[str, Any]:
    load = (loader or default_loader()).for_pyld
    return {
        "documentLoader": load,
        "contextResolver": _Resolver(_pyld._resolved_context_cache, load),
        "base": None,
        "processingMode": "json-ld-1.1",
    }


def _cause(exc: BaseException) -> TesseraError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TesseraError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _jsonld_error(exc: Exception, what: str) -> TesseraError:
    inner = _cause(exc)
    if inner is not None:
        return TesseraError(inner.code, inner.detail)
    detail = getattr(exc, "code", None) or type(exc).__name__
    return TesseraError(ErrorCode.MALFORMED, f"JSON-LD {what} failed: {detail}")


def expand(doc: dict[str, Any], *, loader: DocumentLoader | None = None) -> list[Any]:
    """JSON-LD 1.1 expansion with the offline loader."""
    with work_budget() as budget:
        _prescan(doc, budget)
        try:
            result: list[Any] = _Processor().expand(doc, _options(loader))
        except TesseraError:
            raise
        except Exception as exc:  # pyld raises JsonLdError and, on bad input, anything
            raise _jsonld_error(exc, "expansion") from exc
    return result


def compact(doc: Any, context: Any, *, loader: DocumentLoader | None = None) -> dict[str, Any]:
    """JSON-LD 1.1 compaction with the offline loader."""
    with work_budget() as budget:
        _prescan(doc, budget)
        _prescan(context, budget)
        try:
            result: dict[str, Any] = _Processor().compact(
                doc, context, _options(loader))
        except TesseraError:
            raise
        except Exception as exc:
            raise _jsonld_error(exc, "compaction") from exc
    return result


def _to_rdf(doc: Any, loader: DocumentLoader | None, budget: WorkBudget) -> dict[str, Any]:
    _prescan(doc, budget)
    try:
        dataset: dict[str, Any] = _Processor().to_rdf(
            doc, {**_options(loader), "produceGeneralizedRdf": False})
    except TesseraError:
        raise
    except Exception as exc:
        raise _jsonld_error(exc, "toRdf") from exc
    return dataset


def to_nquads(doc: dict[str, Any], *, loader: DocumentLoader | None = None) -> list[str]:
    """The document's RDF dataset as N-Quads lines (not canonical), each ending in newline."""
    with work_budget() as budget:
        dataset = _to_rdf(doc, loader, budget)
        budget.charge(_W_QUAD * sum(len(quads) for quads in dataset.values()))
        text: str = _pyld.JsonLdProcessor.to_nquads(dataset)
    return text.splitlines(keepends=True)


class _MeteredURDNA2015(_URDNA2015):  # type: ignore[misc]
    """pyld's RDFC-1.0 with every step charged to a work budget before it runs.

    Hash N-Degree Quads (RDFC-1.0 §4.8) is the expensive part: for each group
    of related blank nodes that share a hash it walks all k! permutations,
    each copying the path identifier issuer (pyld deep-copies it), and
    recurses from every permutation that survives. pyld builds those groups
    in ``create_hash_to_related`` and permutes them right after it returns,
    so that is where the permutations of the call are charged, all of them,
    before the first is generated: a group the budget cannot pay for is
    refused without trying a single permutation. Recursive calls charge
    their own. A group larger than MAX_RELATED_BLANK_NODES is refused
    outright (9! permutations exceed any budget worth having). This is the
    bound RDFC-1.0 §6 asks implementations to have against "poison graphs".
    """

    def __init__(self, budget: WorkBudget) -> None:
        super().__init__()
        self._budget = budget

    def main(self, dataset: Any, options: Any) -> Any:
        quads = sum(len(v) for v in dataset.values())
        if quads > MAX_QUADS:
            raise _too_large(f"RDF dataset has more than {MAX_QUADS} quads")
        self._budget.charge(_W_QUAD * quads)
        return super().main(dataset, options)

    def hash_first_degree_quads(self, id_: str) -> Any:
        info = self.blank_node_info[id_]
        if "hash" not in info:
            self._budget.charge(_W_FIRST_DEGREE * len(info["quads"]))
        return super().hash_first_degree_quads(id_)

    def create_hash_to_related(self, id_: str, issuer: Any) -> Any:
        self._budget.charge(_W_QUAD * len(self.blank_node_info[id_]["quads"]))
        groups: dict[str, list[str]] = super().create_hash_to_related(id_, issuer)
        issued = len(issuer.existing)
        for group in groups.values():
            k = len(group)
            if k > MAX_RELATED_BLANK_NODES:
                raise _too_large(
                    f"more than {MAX_RELATED_BLANK_NODES} blank nodes related to one blank "
                    "node by the same hash (RDFC-1.0 §4.8 would try every permutation)")
            # Each permutation: the next one (k steps), a deep copy of the
            # issuer (its identifiers, up to k more by then), the path (k).
            self._budget.charge(math.factorial(k) * (_W_PERMUTATION + 3 * (issued + k) + k))
        return groups


def _check_literals(dataset: dict[str, Any]) -> None:
    if sum(len(v) for v in dataset.values()) > MAX_QUADS:
        raise TesseraError(ErrorCode.TOO_LARGE, "RDF dataset has too many quads")
    for quads in dataset.values():
        for quad in quads:
            obj = quad["object"]
            if obj["type"] == "literal" and _CONTROL.search(obj["value"]):
                # pyld escapes only \t \n \r \" \\ in literals, while RDFC-1.0
                # canonical N-Quads also escape \b \f and other controls; rather
                # than sign a form other implementations disagree with, refuse.
                raise TesseraError(
                    ErrorCode.MALFORMED, "control characters in a literal are not supported"
                )


def _canonicalize_dataset(dataset: dict[str, Any]) -> tuple[str, dict[str, str]]:
    _check_literals(dataset)
    with work_budget() as budget:
        algo = _MeteredURDNA2015(budget)
        try:
            out: str = algo.main(dataset, {"format": "application/n-quads"})
        except TesseraError:
            raise
        except Exception as exc:
            raise _jsonld_error(exc, "canonicalization") from exc
    issued = {old[2:]: new[2:] for old, new in algo.canonical_issuer.existing.items()}
    return out, issued


def _term(term: Any) -> dict[str, str]:
    if isinstance(term, _ox.NamedNode):
        return {"type": "IRI", "value": term.value}
    if isinstance(term, _ox.BlankNode):
        return {"type": "blank node", "value": "_:" + term.value}
    if isinstance(term, _ox.Literal):
        out = {"type": "literal", "value": term.value, "datatype": term.datatype.value}
        if term.language:
            out["language"] = term.language
        return out
    raise TesseraError(ErrorCode.MALFORMED, "RDF-star terms are not supported")


def _parse_nquads(nquads: str) -> dict[str, list[dict[str, Any]]]:
    # pyld's own N-Quads reader leaves UCHAR and some ECHAR escapes undecoded
    # (rdf-canon test060); oxigraph's reader is conformant.
    dataset: dict[str, list[dict[str, Any]]] = {}
    try:
        # An RDF dataset is a set: duplicate lines are one quad (test076).
        for quad in _ox.Dataset(_ox.parse(nquads, format=_ox.RdfFormat.N_QUADS)):
            graph = quad.graph_name
            name = "@default" if isinstance(graph, _ox.DefaultGraph) else _term(graph)["value"]
            dataset.setdefault(name, []).append({
                "subject": _term(quad.subject),
                "predicate": _term(quad.predicate),
                "object": _term(quad.object),
            })
    except (SyntaxError, ValueError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "invalid N-Quads") from exc
    return dataset


def canonicalize_nquads(nquads: str) -> tuple[str, dict[str, str]]:
    """RDFC-1.0 over N-Quads text; returns the canonical N-Quads and the issued map.

    The map (input blank node label -> ``c14nN``, without ``_:``) is what
    RDFC-1.0 §4.4.3 calls the issued identifiers map; the selective
    disclosure suites need it to relabel blank nodes (vc-di-data-integrity
    §3.4.5 labelReplacementCanonicalizeNQuads).
    """
    with work_budget() as budget:
        lines = nquads.count("\n") + 1
        if lines > MAX_QUADS:
            raise _too_large(f"RDF dataset has more than {MAX_QUADS} quads")
        budget.charge(_W_QUAD * lines)
        return _canonicalize_dataset(_parse_nquads(nquads))


def canonicalize(doc: dict[str, Any], *, loader: DocumentLoader | None = None) -> str:
    """RDFC-1.0 canonical N-Quads of a JSON-LD document."""
    with work_budget() as budget:
        return _canonicalize_dataset(_to_rdf(doc, loader, budget))[0]


# -- term checking ---------------------------------------------------------------


@cache
def _loyalty_iris() -> frozenset[str]:
    """Every IRI the loyalty context names (so @vocab hits on them are definitions)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, str) and value.startswith(TESSERA_VOCAB):
            found.add(value)

    walk(_bundled(LOYALTY_V1))
    return frozenset(found)


def _with_catch_all(doc: dict[str, Any]) -> dict[str, Any]:
    ctx = doc.get("@context")
    if ctx is None:
        contexts: list[Any] = []
    elif isinstance(ctx, list):
        contexts = list(ctx)
    else:
        contexts = [ctx]
    # First, so a context that sets its own @vocab (a deliberate catch-all,
    # like the VC examples context) still wins over ours.
    return {**doc, "@context": [_CATCH_ALL, *contexts]}


# Frozen, so pyld's shared cache keeps it and what it derives (see _SharedContext).
_CATCH_ALL: Final = frozendict({"@vocab": _UNDEFINED})


def _nodes(value: Any, parent: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    if isinstance(value, list):
        for item in value:
            yield from _nodes(item, parent)
    elif isinstance(value, dict):
        if "@value" in value:
            return
        yield value, parent
        for key, inner in value.items():
            if key in ("@list", "@set", "@graph"):
                yield from _nodes(inner, parent)
            elif not key.startswith("@") or key == "@included":
                yield from _nodes(inner, key)


def _short(iri: str) -> str:
    for prefix in (_UNDEFINED, TESSERA_VOCAB):
        if iri.startswith(prefix):
            return iri[len(prefix):]
    return iri


def _check_iri(iri: str, *, kind: str, property_of: str | None, is_key: bool) -> None:
    if iri.startswith(_UNDEFINED):
        raise TesseraError(
            ErrorCode.SCHEMA_INVALID, f"{kind} {_short(iri)!r} is not defined by the @context"
        )
    if iri.startswith(TESSERA_VOCAB) and iri not in _loyalty_iris():
        local = iri[len(TESSERA_VOCAB):]
        if not (is_key and property_of == _CREDENTIAL_SUBJECT and _DERIVED_BOOLEAN.match(local)):
            raise TesseraError(
                ErrorCode.SCHEMA_INVALID, f"{kind} {local!r} is not defined by the @context"
            )
    if not iri.startswith("_:") and not _ABSOLUTE_IRI.match(iri):
        # pyld keeps relative IRIs in expansion and drops them from RDF.
        raise TesseraError(ErrorCode.SCHEMA_INVALID, f"{kind} {iri[:100]!r} is not an absolute IRI")


def check_all_terms_defined(
    doc: dict[str, Any], *, loader: DocumentLoader | None = None
) -> list[Any]:
    """Raise ``schema_invalid`` naming the first key or type the context leaves undefined.

    Also refused: relative IRIs (which RDF conversion drops as well) and
    names that reach the Tessera vocabulary only through the loyalty
    types' scoped ``@vocab`` unless they are a derived boolean
    (``tier_at_least_<slug>``, ``points_at_least_<N>``) directly in
    ``credentialSubject``. Returns the expanded document.
    """
    expanded = expand(_with_catch_all(doc), loader=loader)
    for node, parent in _nodes(expanded, None):
        for key in node:
            if key.startswith("@"):
                continue
            _check_iri(key, kind="term", property_of=parent, is_key=True)
        types = node.get("@type", [])
        for t in types if isinstance(types, list) else [types]:
            if isinstance(t, str):
                _check_iri(t, kind="type", property_of=parent, is_key=False)
        node_id = node.get("@id")
        if isinstance(node_id, str):
            _check_iri(node_id, kind="id", property_of=parent, is_key=False)
    return expanded
