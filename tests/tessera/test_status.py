"""Status lists: the draft's and the W3C spec's examples, round trips, bombs, allocation."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, sign_compact
from tessera.keys import PublicKey, generate_signer, public_key_from_jwk
from tessera.status import (
    BITSTRING_MIN_ENTRIES,
    BitstringStatusList,
    IndexAllocator,
    StatusChecker,
    StatusList,
    TokenStatus,
    bitstring_status_list_credential,
    check_bitstring_status,
    check_token_status,
    parse_bitstring_status_entry,
    parse_status_claim,
    read_bitstring_status,
    sign_status_list_token,
    verify_status_list_token,
)
from tests.conftest import vectors_dir

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
URI = "https://brand.example/statuslists/1"

# --------------------------------------------------------------------------
# Token Status List: the draft's examples (shared/vectors/token-status-list).


def _example(name: str) -> str:
    return (vectors_dir("token-status-list") / "examples" / name).read_text()


def _json_example(name: str) -> dict[str, Any]:
    text = _example(name)
    # The long examples wrap `lst` across lines for the RFC's 72 columns.
    return dict(json.loads(re.sub(r"\s", "", text[text.index("{"):])))


def _byte_array(name: str) -> bytes:
    match = re.search(r"byte_array = \[([^\]]*)\]", _example(name))
    assert match is not None
    return bytes(int(b, 16) for b in match.group(1).split(","))


# draft-ietf-oauth-status-list, §4.1 (the 1-bit and 2-bit pictures) and
# Appendix "Test vectors for Status List encoding" (lists of 2^20 entries;
# every index not listed is 0).
SMALL_1BIT = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
SMALL_2BIT = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]
LONG_1BIT = {0: 1, 1993: 1, 25460: 1, 159495: 1, 495669: 1, 554353: 1, 645645: 1,
             723232: 1, 854545: 1, 934534: 1, 1000345: 1}
LONG_2BIT = {0: 1, 1993: 2, 25460: 1, 159495: 3, 495669: 1, 554353: 1, 645645: 2,
             723232: 1, 854545: 1, 934534: 2, 1000345: 3}
LONG_4BIT = {0: 1, 1993: 2, 35460: 3, 459495: 4, 595669: 5, 754353: 6, 845645: 7,
             923232: 8, 924445: 9, 934534: 10, 1004534: 11, 1000345: 12, 1030203: 13,
             1030204: 14, 1030205: 15}
# The 8-bit example sets one index to each value 0..255; these are its first
# and last lines (value 0 at 233478 is the default anyway).
LONG_8BIT_SAMPLE = {233478: 0, 52451: 1, 576778: 2, 513575: 3, 468106: 4, 292632: 5,
                    214947: 6, 182323: 7, 884834: 8, 66653: 9, 62489: 10, 196493: 11,
                    1046963: 78, 829700: 79, 6805: 112, 1199: 121, 4520: 213,
                    958869: 252, 663071: 253, 152133: 254, 19535: 255}


def _nonzero_entries(status_list: StatusList) -> dict[int, int]:
    per_byte = 8 // status_list.bits
    out = {}
    for byte_no, byte in enumerate(status_list.to_bytes()):
        if byte:
            for i in range(byte_no * per_byte, (byte_no + 1) * per_byte):
                if status_list.get(i):
                    out[i] = status_list.get(i)
    return out


@pytest.mark.parametrize(
    ("name", "bits", "expected"),
    [
        ("status_list_encoding_json.md", 1, SMALL_1BIT),
        ("status_list_encoding2_json.md", 2, SMALL_2BIT),
    ],
)
def test_small_examples(name: str, bits: int, expected: list[int]) -> None:
    doc = _json_example(name)
    status_list = StatusList.decode(doc)
    assert status_list.bits == bits
    assert status_list.to_bytes() == _byte_array(name)
    assert [status_list.get(i) for i in range(len(expected))] == expected
    rebuilt = StatusList(bits, len(expected))
    for i, value in enumerate(expected):
        rebuilt.set(i, value)
    assert rebuilt.to_bytes() == _byte_array(name)
    # Same zlib level 9 as the draft's generator: byte-identical `lst`.
    assert rebuilt.encode() == doc


@pytest.mark.parametrize(
    ("name", "bits", "expected"),
    [
        ("status_list_encoding1_long_json.md", 1, LONG_1BIT),
        ("status_list_encoding2_long_json.md", 2, LONG_2BIT),
        ("status_list_encoding4_json.md", 4, LONG_4BIT),
        ("status_list_encoding8_json.md", 8, LONG_8BIT_SAMPLE),
    ],
)
def test_long_examples(name: str, bits: int, expected: dict[int, int]) -> None:
    doc = _json_example(name)
    status_list = StatusList.decode(doc)
    assert status_list.bits == bits
    assert status_list.size == 2**20
    for idx, value in expected.items():
        assert status_list.get(idx) == value, idx
    nonzero = _nonzero_entries(status_list)
    if bits < 8:
        # Exactly the listed entries are set (8-bit: only a sample is listed).
        assert nonzero == {i: v for i, v in expected.items() if v}
    else:
        assert sorted(nonzero.values()) == list(range(1, 256))
    rebuilt = StatusList(bits, 2**20)
    for idx, value in expected.items():
        rebuilt.set(idx, value)
    if bits < 8:
        assert rebuilt.encode() == doc


def _cbor_item(data: bytes, pos: int) -> tuple[Any, int]:
    """Just enough CBOR (RFC 8949) for the draft's StatusList maps."""
    head = data[pos]
    major, info = head >> 5, head & 0x1F
    pos += 1
    if info < 24:
        arg = info
    else:
        width = {24: 1, 25: 2, 26: 4, 27: 8}[info]
        arg = int.from_bytes(data[pos:pos + width], "big")
        pos += width
    if major == 0:
        return arg, pos
    if major in (2, 3):
        raw = data[pos:pos + arg]
        return (raw if major == 2 else raw.decode()), pos + arg
    if major == 5:
        out = {}
        for _ in range(arg):
            key, pos = _cbor_item(data, pos)
            out[key], pos = _cbor_item(data, pos)
        return out, pos
    raise AssertionError(f"CBOR major type {major} not needed here")


@pytest.mark.parametrize(
    ("cbor_name", "json_name"),
    [
        ("status_list_encoding_cbor.md", "status_list_encoding_json.md"),
        ("status_list_encoding2_cbor.md", "status_list_encoding2_json.md"),
        ("status_list_encoding1_long_cbor.md", "status_list_encoding1_long_json.md"),
        ("status_list_encoding2_long_cbor.md", "status_list_encoding2_long_json.md"),
        ("status_list_encoding4_cbor.md", "status_list_encoding4_json.md"),
        ("status_list_encoding8_cbor.md", "status_list_encoding8_json.md"),
    ],
)
def test_cbor_examples_carry_the_same_list(cbor_name: str, json_name: str) -> None:
    # Tessera speaks only the JSON/JWT form; the CBOR StatusList examples
    # wrap the same ZLIB bytes, so they check our decoder a second time.
    text = _example(cbor_name)
    hex_text = text.split("encoded:")[-1] if "encoded:" in text else text
    cbor, end = _cbor_item(bytes.fromhex(re.sub(r"\s", "", hex_text)), 0)
    assert end == len(bytes.fromhex(re.sub(r"\s", "", hex_text)))
    as_json = {"bits": cbor["bits"], "lst": b64url_encode(cbor["lst"])}
    assert as_json == _json_example(json_name)
    assert StatusList.decode(as_json) == StatusList.decode(_json_example(json_name))


# status_list_cwt*.md and referenced_token_cwt*.md are COSE_Sign1 tokens:
# Tessera implements the JWT form only, so they are not exercised here.


# The draft's example key (oauth-wg/draft-ietf-oauth-status-list src/util.py,
# kid "12"): public part only.
DRAFT_KEY = {
    "kty": "EC", "crv": "P-256",
    "x": "I3HWm_0Ds1dPMI-IWmf4mBmH-YaeAVbPVu7vB27CxXo",
    "y": "6N_d5Elj9bs1htgV3okJKIdbHEpkgTmAluYKJemzn1M",
}


def _draft_jwt() -> str:
    return re.sub(r"\s", "", _example("status_list_jwt_raw.md"))


def test_draft_status_list_jwt_verifies() -> None:
    token = verify_status_list_token(
        _draft_jwt(), public_key_from_jwk(DRAFT_KEY),
        uri="https://example.com/statuslists/1", now=NOW,
    )
    assert token.issuer == "https://example.com"
    assert token.ttl == 43200
    assert token.expires_at == 2291720170
    assert [token.status_list.get(i) for i in range(16)] == SMALL_1BIT


def test_draft_status_list_jwt_decoded_form_matches() -> None:
    header_text, payload_text = _example("status_list_jwt.md").split("\n.\n")
    header, payload = json.loads(header_text), json.loads(payload_text)
    jws = decode_unverified(_draft_jwt())
    assert jws.header == header
    assert {k: v for k, v in jws.payload.items() if k != "iss"} == payload


def test_draft_jwt_refused_on_wrong_uri_key_or_expiry() -> None:
    key = public_key_from_jwk(DRAFT_KEY)
    with pytest.raises(TesseraError) as err:
        verify_status_list_token(_draft_jwt(), key, uri="https://example.com/statuslists/2",
                                 now=NOW)
    assert err.value.code is ErrorCode.MALFORMED
    with pytest.raises(TesseraError) as err:
        verify_status_list_token(_draft_jwt(), generate_signer("ES256").public_key,
                                 uri="https://example.com/statuslists/1", now=NOW)
    assert err.value.code is ErrorCode.INVALID_SIGNATURE
    with pytest.raises(TesseraError) as err:
        verify_status_list_token(_draft_jwt(), key, uri="https://example.com/statuslists/1",
                                 now=datetime(2042, 8, 16, tzinfo=UTC))
    assert err.value.code is ErrorCode.EXPIRED


# --------------------------------------------------------------------------
# Token Status List: round trips and refusals.


@st.composite
def _lists(draw: st.DrawFn) -> tuple[int, list[int]]:
    bits = draw(st.sampled_from([1, 2, 4, 8]))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=300))
    return bits, values


@settings(max_examples=200, deadline=None)
@given(_lists())
def test_set_get_encode_decode_round_trip(case: tuple[int, list[int]]) -> None:
    bits, values = case
    status_list = StatusList(bits, len(values))
    for i, value in enumerate(values):
        status_list.set(i, value)
    assert [status_list.get(i) for i in range(len(values))] == values
    decoded = StatusList.decode(status_list.encode())
    assert decoded == status_list
    assert [decoded.get(i) for i in range(len(values))] == values
    # Padding entries past len(values) stay VALID.
    assert all(decoded.get(i) == 0 for i in range(len(values), decoded.size))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.data())
def test_set_touches_only_its_own_bits(bits: int, data: st.DataObject) -> None:
    size = 64
    status_list = StatusList(bits, size)
    before = [data.draw(st.integers(0, (1 << bits) - 1)) for _ in range(size)]
    for i, v in enumerate(before):
        status_list.set(i, v)
    idx = data.draw(st.integers(0, size - 1))
    new = data.draw(st.integers(0, (1 << bits) - 1))
    status_list.set(idx, new)
    after = [status_list.get(i) for i in range(size)]
    assert after == [new if i == idx else v for i, v in enumerate(before)]


def test_lsb_first_bit_order() -> None:
    status_list = StatusList(1, 16)
    status_list.set(0, 1)
    status_list.set(9, 1)
    assert status_list.to_bytes() == bytes([0x01, 0x02])
    status_list = StatusList(4, 2)
    status_list.set(1, 0xA)
    assert status_list.to_bytes() == bytes([0xA0])


@pytest.mark.parametrize(
    ("bits", "size", "idx", "value"),
    [(1, 8, 8, 0), (1, 8, -1, 0), (1, 8, 0, 2), (2, 4, 0, 4), (8, 1, 0, 256), (4, 2, 0, -1)],
)
def test_set_get_refuse_out_of_range(bits: int, size: int, idx: int, value: int) -> None:
    status_list = StatusList(bits, size)
    with pytest.raises(TesseraError) as err:
        status_list.set(idx, value)
    assert err.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("bits", [0, 3, 16, True, "1"])
def test_bad_bits_refused(bits: Any) -> None:
    with pytest.raises(TesseraError):
        StatusList(bits, 8)
    with pytest.raises(TesseraError) as err:
        StatusList.decode({"bits": bits, "lst": "eNrbuRgAAhcBXQ"})
    assert err.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    "doc",
    [
        None, [], {"bits": 1}, {"lst": "eNrbuRgAAhcBXQ"}, {"bits": 1, "lst": 5},
        {"bits": 1, "lst": "eNrbuRgAAhcBXQ=="},  # padded
        {"bits": 1, "lst": "eNrbuRgAAhcB"},  # truncated stream
        {"bits": 1, "lst": b64url_encode(b"not zlib at all")},
        {"bits": 1, "lst": b64url_encode(gzip.compress(b"\xb9\xa3"))},  # gzip, not zlib
        {"bits": 1, "lst": b64url_encode(zlib.compress(b"\xb9\xa3") + b"junk")},
        {"bits": 1, "lst": "eNrbuRgAAhcBXQ", "aggregation_uri": 7},
    ],
)
def test_malformed_lists_refused(doc: Any) -> None:
    with pytest.raises(TesseraError) as err:
        StatusList.decode(doc)
    assert err.value.code is ErrorCode.MALFORMED


def _bomb(wbits: int) -> bytes:
    """256 MiB of zeros compressed to about 256 KiB, built in chunks so the
    test itself never holds the 256 MiB either."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(16 * 1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(16)) + compressor.flush()


@pytest.fixture(scope="module")
def zlib_bomb() -> bytes:
    return _bomb(15)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return _bomb(31)


def test_compression_bomb_refused(zlib_bomb: bytes) -> None:
    assert len(zlib_bomb) < 512 * 1024
    with pytest.raises(TesseraError) as err:
        StatusList.decode({"bits": 1, "lst": b64url_encode(zlib_bomb)})
    assert err.value.code is ErrorCode.TOO_LARGE
    # The cap is exact: one byte over is refused, the cap itself accepted.
    small = {"bits": 8, "lst": b64url_encode(zlib.compress(bytes(1001), 9))}
    with pytest.raises(TesseraError) as err:
        StatusList.decode(small, max_bytes=1000)
    assert err.value.code is ErrorCode.TOO_LARGE
    assert StatusList.decode(small, max_bytes=1001).size == 1001


def test_bomb_memory_is_bounded(zlib_bomb: bytes, gzip_bomb: bytes) -> None:
    import tracemalloc

    docs = [
        lambda: StatusList.decode(
            {"bits": 1, "lst": b64url_encode(zlib_bomb)}, max_bytes=1024 * 1024
        ),
        lambda: BitstringStatusList.decode(
            "u" + b64url_encode(gzip_bomb), max_bytes=1024 * 1024
        ),
    ]
    for decode in docs:
        tracemalloc.start()
        try:
            with pytest.raises(TesseraError) as err:
                decode()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert err.value.code is ErrorCode.TOO_LARGE
        # 256 MiB of output sit in the stream; we never held more than a few MiB.
        assert peak < 6 * 1024 * 1024


# --------------------------------------------------------------------------
# Status List Tokens we sign.


def _signed(status_list: StatusList, **kw: Any) -> tuple[str, PublicKey]:
    signer = generate_signer(kw.pop("alg", "ES256"), key_id="did:web:brand.example#k1")
    args: dict[str, Any] = {
        "uri": URI, "issued_at": NOW, "expires_at": NOW + timedelta(days=1), "ttl": 3600,
    }
    args.update(kw)
    return sign_status_list_token(status_list, signer, **args), signer.public_key


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "ES384"])
def test_sign_and_verify_status_list_token(alg: str) -> None:
    status_list = StatusList(2, 1000)
    status_list.set(17, TokenStatus.SUSPENDED)
    token, key = _signed(status_list, alg=alg, issuer="did:web:brand.example")
    jws = decode_unverified(token)
    assert jws.header["typ"] == "statuslist+jwt"
    assert jws.header["kid"] == "did:web:brand.example#k1"
    assert set(jws.payload) == {"sub", "iat", "exp", "ttl", "status_list", "iss"}
    verified = verify_status_list_token(token, key, uri=URI, now=NOW)
    assert verified.status_list == status_list
    assert verified.ttl == 3600
    assert verified.issued_at == int(NOW.timestamp())


def test_token_refusals() -> None:
    status_list = StatusList(1, 64)
    token, key = _signed(status_list)
    head, payload, sig = token.split(".")
    cases: list[tuple[Callable[[], object], ErrorCode]] = [
        (lambda: verify_status_list_token(token, key, uri=URI + "x", now=NOW),
         ErrorCode.MALFORMED),
        (lambda: verify_status_list_token(token, key, uri=URI, now=NOW + timedelta(days=2)),
         ErrorCode.EXPIRED),
        (lambda: verify_status_list_token(token, key, uri=URI, now=NOW - timedelta(hours=1)),
         ErrorCode.NOT_YET_VALID),
        (lambda: verify_status_list_token(token, generate_signer("ES256").public_key,
                                          uri=URI, now=NOW),
         ErrorCode.INVALID_SIGNATURE),
        (lambda: verify_status_list_token(token, generate_signer("EdDSA").public_key,
                                          uri=URI, now=NOW),
         ErrorCode.UNSUPPORTED_ALGORITHM),
        (lambda: verify_status_list_token(f"{head}.{payload[:-2]}AA.{sig}", key, uri=URI,
                                          now=NOW),
         ErrorCode.MALFORMED),
    ]
    for call, code in cases:
        with pytest.raises(TesseraError) as err:
            call()
        assert err.value.code is code


def test_wrong_typ_refused() -> None:
    signer = generate_signer("ES256")
    payload = {"sub": URI, "iat": int(NOW.timestamp()), "status_list": StatusList(1, 8).encode()}
    for typ in ("JWT", "dc+sd-jwt", None):
        header = {} if typ is None else {"typ": typ}
        token = sign_compact(header, payload, signer)
        with pytest.raises(TesseraError) as err:
            verify_status_list_token(token, signer.public_key, uri=URI, now=NOW)
        assert err.value.code is ErrorCode.MALFORMED
    # RFC 7515 §4.1.9: the full media type is the same typ.
    token = sign_compact({"typ": "application/statuslist+jwt"}, payload, signer)
    verify_status_list_token(token, signer.public_key, uri=URI, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [{"iat": "yesterday"}, {"iat": None}, {"exp": "soon"}, {"ttl": 0}, {"ttl": -5},
     {"iss": 5}, {"nbf": "x"}, {"status_list": None}],
)
def test_bad_claims_refused(bad: dict[str, Any]) -> None:
    signer = generate_signer("ES256")
    payload: dict[str, Any] = {
        "sub": URI, "iat": int(NOW.timestamp()), "status_list": StatusList(1, 8).encode(),
    }
    payload.update(bad)
    payload = {k: v for k, v in payload.items() if v is not None}
    token = sign_compact({"typ": "statuslist+jwt"}, payload, signer)
    with pytest.raises(TesseraError) as err:
        verify_status_list_token(token, signer.public_key, uri=URI, now=NOW)
    assert err.value.code is ErrorCode.MALFORMED


# --------------------------------------------------------------------------
# Referenced tokens and the checker.


@pytest.mark.parametrize(
    "claim",
    [
        None, [], {}, {"status_list": []}, {"status_list": {"idx": 1}},
        {"status_list": {"uri": URI}}, {"status_list": {"idx": -1, "uri": URI}},
        {"status_list": {"idx": True, "uri": URI}}, {"status_list": {"idx": "1", "uri": URI}},
        {"status_list": {"idx": 1.0, "uri": URI}}, {"status_list": {"idx": 1, "uri": 5}},
        {"status_list": {"idx": 1, "uri": "not a uri"}},
        {"status_list": {"idx": 1, "uri": "https://"}},
        {"status_list": {"idx": 2**40, "uri": URI}},
    ],
)
def test_status_claim_shape(claim: Any) -> None:
    with pytest.raises(TesseraError) as err:
        parse_status_claim(claim)
    assert err.value.code is ErrorCode.MALFORMED


def test_status_claim_ok() -> None:
    ref = parse_status_claim({"status_list": {"idx": 0, "uri": URI}, "other_mechanism": {}})
    assert (ref.idx, ref.uri) == (0, URI)


class _Fetcher:
    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents
        self.calls: list[str] = []

    def fetch(self, url: str, *, accept: str) -> bytes:
        assert accept == "application/statuslist+jwt"
        self.calls.append(url)
        if url not in self.documents:
            raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "404")
        return self.documents[url]


def _checker_setup(**kw: Any) -> tuple[StatusChecker, _Fetcher, StatusList, Any]:
    signer = generate_signer("EdDSA", key_id="did:web:brand.example#k1")
    status_list = StatusList(2, 131_072)
    status_list.set(5, TokenStatus.INVALID)
    status_list.set(6, TokenStatus.SUSPENDED)
    status_list.set(7, 3)
    ttl = kw.pop("ttl", 600)
    expires_at = kw.pop("expires_at", NOW + timedelta(days=1))
    token = sign_status_list_token(status_list, signer, uri=URI, issued_at=NOW,
                                   expires_at=expires_at, ttl=ttl)
    fetcher = _Fetcher({URI: token.encode()})
    keys = {"did:web:brand.example#k1": signer.public_key}

    def lookup(header: dict[str, Any], payload: dict[str, Any]) -> PublicKey:
        return keys[header["kid"]]

    return StatusChecker(fetcher, lookup, clock=lambda: NOW, **kw), fetcher, status_list, signer


def test_checker_statuses_and_errors() -> None:
    checker, fetcher, _, _ = _checker_setup()
    claim = lambda idx: {"status_list": {"idx": idx, "uri": URI}}  # noqa: E731
    assert check_token_status(claim(4), checker) == TokenStatus.VALID
    with pytest.raises(TesseraError) as err:
        check_token_status(claim(5), checker)
    assert err.value.code is ErrorCode.REVOKED
    with pytest.raises(TesseraError) as err:
        check_token_status(claim(6), checker)
    assert err.value.code is ErrorCode.SUSPENDED
    with pytest.raises(TesseraError) as err:
        check_token_status(claim(7), checker)
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE
    assert check_token_status(claim(7), checker, accept={0, 3}) == 3
    with pytest.raises(TesseraError) as err:
        check_token_status(claim(131_072), checker)
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE
    with pytest.raises(TesseraError) as err:
        check_token_status({"status_list": {"idx": 0, "uri": URI + "/missing"}}, checker)
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE
    with pytest.raises(TesseraError) as err:
        check_token_status({"status_list": {"idx": "0", "uri": URI}}, checker)
    assert err.value.code is ErrorCode.MALFORMED
    # One fetch served all the lookups on the same list.
    assert fetcher.calls.count(URI) == 1


def test_checker_cache_respects_ttl_max_age_and_exp() -> None:
    checker, fetcher, _, _ = _checker_setup(ttl=600, max_age=timedelta(minutes=30))
    checker.status(URI, 0, now=NOW)
    checker.status(URI, 0, now=NOW + timedelta(seconds=599))
    assert len(fetcher.calls) == 1
    checker.status(URI, 0, now=NOW + timedelta(seconds=600))  # ttl elapsed
    assert len(fetcher.calls) == 2

    checker, fetcher, _, _ = _checker_setup(ttl=None, max_age=timedelta(seconds=60))
    checker.status(URI, 0, now=NOW)
    checker.status(URI, 0, now=NOW + timedelta(seconds=59))
    checker.status(URI, 0, now=NOW + timedelta(seconds=61))  # caller max_age elapsed
    assert len(fetcher.calls) == 2

    checker, fetcher, _, _ = _checker_setup(
        ttl=None, expires_at=NOW + timedelta(seconds=100), max_age=timedelta(hours=1)
    )
    checker.status(URI, 0, now=NOW)
    checker.status(URI, 0, now=NOW + timedelta(seconds=99))
    assert len(fetcher.calls) == 1
    with pytest.raises(TesseraError) as err:  # refetched, and the token has expired
        checker.status(URI, 0, now=NOW + timedelta(seconds=200))
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE
    assert len(fetcher.calls) == 2


def test_checker_sees_a_revocation_after_the_cache_expires() -> None:
    checker, fetcher, status_list, signer = _checker_setup(ttl=60)
    assert checker.status(URI, 4) == 0
    status_list.set(4, TokenStatus.INVALID)
    fetcher.documents[URI] = sign_status_list_token(
        status_list, signer, uri=URI, issued_at=NOW, expires_at=NOW + timedelta(days=1), ttl=60
    ).encode()
    assert checker.status(URI, 4, now=NOW + timedelta(seconds=30)) == 0  # still cached
    assert checker.status(URI, 4, now=NOW + timedelta(seconds=61)) == TokenStatus.INVALID


def test_checker_wraps_every_failure() -> None:
    signer = generate_signer("ES256")
    other = generate_signer("ES256")
    good = sign_status_list_token(StatusList(1, 64), signer, uri=URI, issued_at=NOW,
                                  expires_at=None)
    bomb = zlib.compress(bytes(8 * 1024 * 1024), 9)
    bomb_token = sign_compact(
        {"typ": "statuslist+jwt"},
        {"sub": URI, "iat": int(NOW.timestamp()),
         "status_list": {"bits": 1, "lst": b64url_encode(bomb)}},
        signer,
    )

    class Broken:
        def fetch(self, url: str, *, accept: str) -> bytes:
            raise ConnectionError("boom")

    cases: list[tuple[Any, Any]] = [
        (Broken(), lambda h, p: signer.public_key),
        (_Fetcher({URI: b"\xff\xfe"}), lambda h, p: signer.public_key),
        (_Fetcher({URI: b"not a jwt"}), lambda h, p: signer.public_key),
        (_Fetcher({URI: good.encode()}), lambda h, p: other.public_key),
        (_Fetcher({URI: good.encode()}), lambda h, p: {}["missing"]),
        (_Fetcher({URI: bomb_token.encode()}), lambda h, p: signer.public_key),
    ]
    for fetcher, lookup in cases:
        checker = StatusChecker(fetcher, lookup, clock=lambda: NOW, max_list_bytes=1024 * 1024)
        with pytest.raises(TesseraError) as err:
            checker.status(URI, 0)
        assert err.value.code is ErrorCode.STATUS_UNAVAILABLE


def test_checker_cache_is_bounded() -> None:
    signer = generate_signer("EdDSA")
    docs = {
        f"{URI}/{i}": sign_status_list_token(
            StatusList(1, 8), signer, uri=f"{URI}/{i}", issued_at=NOW, expires_at=None
        ).encode()
        for i in range(10)
    }
    fetcher = _Fetcher(docs)
    checker = StatusChecker(fetcher, lambda h, p: signer.public_key, clock=lambda: NOW,
                            max_entries=3)
    for uri in docs:
        checker.status(uri, 0)
    assert len(checker._cache) == 3  # the bound is the point of the test


# --------------------------------------------------------------------------
# W3C Bitstring Status List.

# From the W3C Bitstring Status List v1.0 spec (w3c/vc-bitstring-status-list
# index.html, §2.2 "Example BitstringStatusListCredential" and Appendix A).
W3C_LIST_CREDENTIAL = {
    "@context": ["https://www.w3.org/ns/credentials/v2"],
    "id": "https://example.com/credentials/status/3",
    "type": ["VerifiableCredential", "BitstringStatusListCredential"],
    "issuer": "did:example:12345",
    "validFrom": "2021-04-05T14:27:40Z",
    "credentialSubject": {
        "id": "https://example.com/status/3#list",
        "type": "BitstringStatusList",
        "statusPurpose": "revocation",
        "encodedList": "uH4sIAAAAAAAAA-3BMQEAAADCoPVPbQwfoAAAAAAAAAAAAAAAAAAAAIC3AYbSVKsAQAAA",
    },
}
W3C_ENTRY = {
    "id": "https://example.com/credentials/status/3#94567",
    "type": "BitstringStatusListEntry",
    "statusPurpose": "revocation",
    "statusListIndex": "94567",
    "statusListCredential": "https://example.com/credentials/status/3",
}


def test_w3c_example_list_and_entry() -> None:
    bits = BitstringStatusList.decode(W3C_LIST_CREDENTIAL["credentialSubject"]["encodedList"])
    assert bits.size == 131_072
    assert not any(bits.to_bytes())
    entry = parse_bitstring_status_entry(W3C_ENTRY)
    assert (entry.status_list_index, entry.status_purpose) == (94567, "revocation")
    assert check_bitstring_status(entry, W3C_LIST_CREDENTIAL) == 0


def test_w3c_example_revoked_after_setting_its_bit() -> None:
    bits = BitstringStatusList.decode(W3C_LIST_CREDENTIAL["credentialSubject"]["encodedList"])
    bits.set(94567, 1)
    # MSB first: index 94567 is bit 7 - (94567 % 8) of byte 94567 // 8.
    assert bits.to_bytes()[94567 // 8] == 1 << (7 - 94567 % 8)
    credential = json.loads(json.dumps(W3C_LIST_CREDENTIAL))
    credential["credentialSubject"]["encodedList"] = bits.encode()
    entry = parse_bitstring_status_entry(W3C_ENTRY)
    with pytest.raises(TesseraError) as err:
        check_bitstring_status(entry, credential)
    assert err.value.code is ErrorCode.REVOKED
    assert read_bitstring_status(entry, credential) == 1
    suspension = parse_bitstring_status_entry({**W3C_ENTRY, "statusPurpose": "suspension"})
    credential["credentialSubject"]["statusPurpose"] = ["revocation", "suspension"]
    with pytest.raises(TesseraError) as err:
        check_bitstring_status(suspension, credential)
    assert err.value.code is ErrorCode.SUSPENDED


def test_bitstring_msb_first() -> None:
    bits = BitstringStatusList(BITSTRING_MIN_ENTRIES)
    bits.set(0, 1)
    bits.set(9, 1)
    bits.set(BITSTRING_MIN_ENTRIES - 1, 1)
    data = bits.to_bytes()
    assert data[:2] == bytes([0x80, 0x40])
    assert data[-1] == 0x01
    wide = BitstringStatusList(BITSTRING_MIN_ENTRIES, status_size=2)
    wide.set(1, 0b10)
    assert wide.to_bytes()[0] == 0b0010_0000


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.dictionaries(st.integers(0, 131_071), st.integers(0, 15), max_size=40))
def test_bitstring_round_trip(status_size: int, entries: dict[int, int]) -> None:
    bits = BitstringStatusList(status_size=status_size)
    expected = {i: v % (1 << status_size) for i, v in entries.items()}
    for idx, value in expected.items():
        bits.set(idx, value)
    encoded = bits.encode()
    assert encoded.startswith("u")
    decoded = BitstringStatusList.decode(encoded, status_size=status_size)
    assert decoded == bits
    for idx, value in expected.items():
        assert decoded.get(idx) == value
    gz = base64.urlsafe_b64decode(encoded[1:] + "=" * (-len(encoded[1:]) % 4))
    assert gzip.decompress(gz) == bits.to_bytes()


def test_bitstring_minimum_size() -> None:
    with pytest.raises(TesseraError) as err:
        BitstringStatusList(1000)
    assert err.value.code is ErrorCode.INVALID_REQUEST
    short = "u" + b64url_encode(gzip.compress(bytes(1024)))
    with pytest.raises(TesseraError) as err:
        BitstringStatusList.decode(short)
    assert err.value.code is ErrorCode.MALFORMED
    assert BitstringStatusList.decode(short, min_entries=8192).size == 8192
    # statusSize 2 halves the entries: 16 KiB is then too short (§3.2 step 9).
    full = BitstringStatusList().encode()
    with pytest.raises(TesseraError):
        BitstringStatusList.decode(full, status_size=2)


@pytest.mark.parametrize(
    "encoded",
    [
        None, 5, "", "z" + b64url_encode(gzip.compress(bytes(16384))),  # base58 multibase
        "u" + b64url_encode(zlib.compress(bytes(16384))),  # zlib, not gzip
        "u" + b64url_encode(gzip.compress(bytes(16384)))[:-4],  # truncated
        "u" + b64url_encode(gzip.compress(bytes(16384)) + gzip.compress(b"x")),  # 2 members
        "u" + b64url_encode(gzip.compress(bytes(16384))) + "=",  # padded
    ],
)
def test_bitstring_malformed(encoded: Any) -> None:
    with pytest.raises(TesseraError) as err:
        BitstringStatusList.decode(encoded)
    assert err.value.code is ErrorCode.MALFORMED


def test_bitstring_bomb_refused(gzip_bomb: bytes) -> None:
    with pytest.raises(TesseraError) as err:
        BitstringStatusList.decode("u" + b64url_encode(gzip_bomb))
    assert err.value.code is ErrorCode.TOO_LARGE


def test_build_status_list_credential() -> None:
    bits = BitstringStatusList()
    bits.set(94567, 1)
    credential = bitstring_status_list_credential(
        bits, credential_id="https://brand.example/status/3", issuer="did:web:brand.example",
        status_purpose="revocation", valid_from=NOW, valid_until=NOW + timedelta(days=1),
    )
    assert credential["@context"] == ["https://www.w3.org/ns/credentials/v2"]
    assert credential["type"] == ["VerifiableCredential", "BitstringStatusListCredential"]
    assert credential["validFrom"] == "2026-05-01T12:00:00Z"
    subject = credential["credentialSubject"]
    assert subject["type"] == "BitstringStatusList"
    assert subject["statusPurpose"] == "revocation"
    assert "statusSize" not in subject
    entry = parse_bitstring_status_entry({
        "type": "BitstringStatusListEntry", "statusPurpose": "revocation",
        "statusListIndex": "94567", "statusListCredential": "https://brand.example/status/3",
    })
    with pytest.raises(TesseraError) as err:
        check_bitstring_status(entry, credential)
    assert err.value.code is ErrorCode.REVOKED
    with pytest.raises(TesseraError) as err:
        bitstring_status_list_credential(bits, credential_id="https://x.example/s",
                                         issuer="did:web:x", status_purpose="message")
    assert err.value.code is ErrorCode.INVALID_REQUEST


def test_message_purpose_with_status_size_two() -> None:
    bits = BitstringStatusList(2**19, status_size=2)
    bits.set(492847, 2)
    messages = [{"status": f"0x{i:x}", "message": m}
                for i, m in enumerate(["pending_review", "accepted", "rejected", "undefined"])]
    credential = bitstring_status_list_credential(
        bits, credential_id="https://example.com/credentials/status/8", issuer="did:example:1",
        status_purpose="message", status_messages=messages,
    )
    assert credential["credentialSubject"]["statusSize"] == 2
    entry = parse_bitstring_status_entry({
        "id": "https://example.com/credentials/status/8#492847",
        "type": "BitstringStatusListEntry", "statusPurpose": "message",
        "statusListIndex": "492847", "statusSize": 2,
        "statusListCredential": "https://example.com/credentials/status/8",
        "statusMessage": messages,
    })
    value = check_bitstring_status(entry, credential)
    assert value == 2
    assert entry.status_messages is not None
    assert entry.status_messages[value]["message"] == "rejected"


@pytest.mark.parametrize(
    "change",
    [
        {"type": "StatusList2021Entry"}, {"statusPurpose": ""}, {"statusPurpose": None},
        {"statusListIndex": 94567}, {"statusListIndex": "-1"}, {"statusListIndex": "0x10"},
        {"statusListIndex": "007"}, {"statusListIndex": " 1"}, {"statusListIndex": "1e3"},
        {"statusListIndex": "99999999999999"}, {"statusListCredential": "relative/path"},
        {"statusListCredential": None}, {"statusSize": 0}, {"statusSize": 2},
        {"statusSize": True}, {"statusMessage": [{"status": "0x0", "message": "a"}]},
        {"id": "https://example.com/credentials/status/3"},
    ],
)
def test_bad_bitstring_entries(change: dict[str, Any]) -> None:
    entry = {k: v for k, v in {**W3C_ENTRY, **change}.items() if v is not None}
    with pytest.raises(TesseraError) as err:
        parse_bitstring_status_entry(entry)
    assert err.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize(
    "change",
    [
        {"type": ["VerifiableCredential"]},
        {"id": "https://example.com/credentials/status/4"},
        {"credentialSubject": {**W3C_LIST_CREDENTIAL["credentialSubject"],
                               "statusPurpose": "suspension"}},
        {"credentialSubject": {**W3C_LIST_CREDENTIAL["credentialSubject"],
                               "type": "StatusList2021"}},
        {"credentialSubject": {**W3C_LIST_CREDENTIAL["credentialSubject"], "statusSize": 2}},
        {"credentialSubject": {**W3C_LIST_CREDENTIAL["credentialSubject"],
                               "encodedList": "u" + b64url_encode(gzip.compress(bytes(100)))}},
        {"credentialSubject": "nope"},
    ],
)
def test_list_credential_that_does_not_answer(change: dict[str, Any]) -> None:
    entry = parse_bitstring_status_entry(W3C_ENTRY)
    with pytest.raises(TesseraError) as err:
        read_bitstring_status(entry, {**W3C_LIST_CREDENTIAL, **change})
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE


def test_index_beyond_list_is_unavailable() -> None:
    entry = parse_bitstring_status_entry({**W3C_ENTRY, "statusListIndex": "131072"})
    with pytest.raises(TesseraError) as err:
        read_bitstring_status(entry, W3C_LIST_CREDENTIAL)
    assert err.value.code is ErrorCode.STATUS_UNAVAILABLE


# --------------------------------------------------------------------------
# Random index allocation.


def test_allocator_unique_until_full_then_conflict() -> None:
    allocator = IndexAllocator(300)
    got = [allocator.allocate() for _ in range(300)]
    assert sorted(got) == list(range(300))
    with pytest.raises(TesseraError) as err:
        allocator.allocate()
    assert err.value.code is ErrorCode.CONFLICT


def test_allocator_fills_a_default_list_exactly_once() -> None:
    # Past ~95 % occupancy the allocator switches to its free-slot list; the
    # whole 131,072-entry list still comes out once each, then conflict.
    allocator = IndexAllocator()
    got = [allocator.allocate() for _ in range(131_072)]
    assert len(set(got)) == 131_072
    with pytest.raises(TesseraError) as err:
        allocator.allocate()
    assert err.value.code is ErrorCode.CONFLICT
    # The tail (free-list path) is still in random order.
    tail = got[-1000:]
    assert tail != sorted(tail) and tail != sorted(tail, reverse=True)


def test_allocator_respects_used_and_callback() -> None:
    used = set(range(0, 1000, 2))
    allocator = IndexAllocator(1000, used=used)
    got = {allocator.allocate() for _ in range(500)}
    assert all(i % 2 for i in got) and len(got) == 500
    assert used == set(range(0, 1000, 2))  # the caller's set is not mutated

    taken: set[int] = set()
    allocator = IndexAllocator(64, is_used=taken.__contains__)
    for _ in range(64):
        idx = allocator.allocate()
        assert idx not in taken
        taken.add(idx)
    with pytest.raises(TesseraError) as err:
        allocator.allocate()
    assert err.value.code is ErrorCode.CONFLICT


def test_allocator_last_free_slot_found_by_scan() -> None:
    allocator = IndexAllocator(131_072, used=set(range(131_072)) - {77_777}, attempts=4)
    assert allocator.allocate() == 77_777


def test_allocator_is_random_not_sequential() -> None:
    allocator = IndexAllocator()
    got = [allocator.allocate() for _ in range(2000)]
    assert len(set(got)) == 2000
    # Sequential or sorted allocation would make these trivially true.
    assert got != sorted(got)
    ascending = sum(b > a for a, b in itertools.pairwise(got))
    assert 800 < ascending < 1200  # about half of the steps go up
    # Spread over the whole range: each eighth of the list gets a share
    # (expected 250 each; 150 is > 6 standard deviations below).
    buckets = [0] * 8
    for idx in got:
        buckets[idx * 8 // 131_072] += 1
    assert min(buckets) > 150
    # Two allocators do not produce the same sequence.
    assert [IndexAllocator().allocate() for _ in range(5)] != got[:5]


def test_allocator_uniform_over_free_slots() -> None:
    # 4 free slots in a 16-slot list, 4000 draws: each about 1000.
    counts = dict.fromkeys((1, 6, 11, 15), 0)
    for _ in range(4000):
        allocator = IndexAllocator(16, used=set(range(16)) - set(counts))
        counts[allocator.allocate()] += 1
    assert all(800 < c < 1200 for c in counts.values()), counts

