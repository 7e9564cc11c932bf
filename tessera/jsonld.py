"""JSON-LD for Data Integrity: an offline document loader, expansion, RDFC-1.0.

Every context Tessera needs ships as a file under ``schemas/contexts/``; the
:class:`DocumentLoader` serves those plus whatever documents an operator
configured explicitly, and refuses every other URL. Nothing here opens a
socket.

Canonicalization is RDFC-1.0 (W3C Recommendation, 2024), which pyld still
calls ``URDNA2015``: the two produce the same output with SHA-256. The
algorithm is run with a budget on the number of N-degree hash calls
(RDFC-1.0 §4.4, "poison graphs" and §6 security considerations) so a hostile
dataset cannot pin a CPU.

pyld silently drops JSON keys that the active context does not define, so a
signer that trusts it would sign *less* than the caller thinks it signed.
:func:`check_all_terms_defined` closes that hole: issuance calls it before
signing, verification before trusting any claim.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any, ClassVar, Final

import pyoxigraph as _ox
from c14n.Canonicalize import canonicalize as _jcs  # type: ignore[import-untyped]
from frozendict import frozendict
from pyld import jsonld as _pyld
from pyld.canon import URDNA2015 as _URDNA2015
from pyld.context_resolver import ContextResolver as _ContextResolver
from pyld.resolved_context import ResolvedContext as _ResolvedContext

import schemas
from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "BUNDLED_CONTEXTS",
    "CREDENTIALS_V1",
    "CREDENTIALS_V2",
    "DATA_INTEGRITY_V2",
    "LOYALTY_V1",
    "TESSERA_VOCAB",
    "DocumentLoader",
    "canonicalize",
    "canonicalize_nquads",
    "check_all_terms_defined",
    "compact",
    "default_loader",
    "expand",
    "to_nquads",
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

# Per RDFC-1.0 §6 an implementation should bound its work; a 10-node blank
# clique (the suite's poison test) needs millions of calls, real credentials
# need a few dozen.
MAX_NDEGREE_CALLS: Final = 4096
MAX_QUADS: Final = 20_000

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

    def known(self, url: str) -> bool:
        return url in BUNDLED_CONTEXTS or url in self._extra

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


def _first_is_plain_object(local_ctx: Any) -> bool:
    if isinstance(local_ctx, Mapping) and isinstance(local_ctx.get("@context"), list):
        local_ctx = local_ctx["@context"]
    first = local_ctx[0] if isinstance(local_ctx, list) and local_ctx else local_ctx
    return isinstance(first, Mapping) and "@context" not in first and "@propagate" not in first


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

    def resolve(self, active_ctx: Any, context: Any, base: Any, cycles: Any = None) -> Any:
        if isinstance(context, Mapping) and "@context" in context:
            context = context["@context"]
        items = context if isinstance(context, list) else [context]
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
                resolved = _ResolvedContext(ctx)
                self._cache_resolved_context(key, resolved, "static")
            out.append(resolved)
        return out


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

    def _process_context(self, active_ctx: Any, local_ctx: Any, options: Any,
                         override_protected: bool = False, propagate: bool = True,
                         validate_scoped: bool = True, cycles: Any = None) -> Any:
        uuid = active_ctx.get("_uuid")
        if (not propagate and not active_ctx.get("previousContext") and isinstance(uuid, str)
                and _first_is_plain_object(local_ctx)):
            child = self._clone_active_context(active_ctx)
            child["previousContext"] = active_ctx
            child["_uuid"] = uuid + "~nonpropagating"
            active_ctx = child
        return super()._process_context(
            active_ctx, local_ctx, options, override_protected=override_protected,
            propagate=propagate, validate_scoped=validate_scoped, cycles=cycles)


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
    try:
        result: list[Any] = _Processor().expand(doc, _options(loader))
    except TesseraError:
        raise
    except Exception as exc:  # pyld raises JsonLdError and, on bad input, anything
        raise _jsonld_error(exc, "expansion") from exc
    return result


def compact(doc: Any, context: Any, *, loader: DocumentLoader | None = None) -> dict[str, Any]:
    """JSON-LD 1.1 compaction with the offline loader."""
    try:
        result: dict[str, Any] = _Processor().compact(doc, context, _options(loader))
    except TesseraError:
        raise
    except Exception as exc:
        raise _jsonld_error(exc, "compaction") from exc
    return result


def to_nquads(doc: dict[str, Any], *, loader: DocumentLoader | None = None) -> list[str]:
    """The document's RDF dataset as N-Quads lines (not canonical), each ending in newline."""
    try:
        dataset = _Processor().to_rdf(doc, {**_options(loader), "produceGeneralizedRdf": False})
        text: str = _pyld.JsonLdProcessor.to_nquads(dataset)
    except TesseraError:
        raise
    except Exception as exc:
        raise _jsonld_error(exc, "toRdf") from exc
    return text.splitlines(keepends=True)


class _BoundedURDNA2015(_URDNA2015):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._ndegree_calls = 0

    def hash_n_degree_quads(self, id_: str, issuer: Any) -> Any:
        self._ndegree_calls += 1
        if self._ndegree_calls > MAX_NDEGREE_CALLS:
            raise TesseraError(ErrorCode.TOO_LARGE, "RDF dataset too complex to canonicalize")
        return super().hash_n_degree_quads(id_, issuer)


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
    algo = _BoundedURDNA2015()
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
    return _canonicalize_dataset(_parse_nquads(nquads))


def canonicalize(doc: dict[str, Any], *, loader: DocumentLoader | None = None) -> str:
    """RDFC-1.0 canonical N-Quads of a JSON-LD document."""
    try:
        dataset = _Processor().to_rdf(doc, {**_options(loader), "produceGeneralizedRdf": False})
    except TesseraError:
        raise
    except Exception as exc:
        raise _jsonld_error(exc, "toRdf") from exc
    return _canonicalize_dataset(dataset)[0]


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
    return {**doc, "@context": [{"@vocab": _UNDEFINED}, *contexts]}


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
