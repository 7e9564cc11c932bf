"""The one exception root: codes survive pickling and problem documents."""

from __future__ import annotations

import pickle

from tessera.errors import ErrorCode, TesseraError


def test_problem_documents_map_back_to_their_code() -> None:
    err = TesseraError.from_problem({"code": "revoked", "detail": "gone"}, fallback="x")
    assert err.code is ErrorCode.REVOKED and err.detail == "gone"


def test_unknown_or_missing_codes_do_not_invent_meaning() -> None:
    for body in ({"code": "made_up"}, {}, ["not", "an", "object"], None):
        err = TesseraError.from_problem(body, fallback="verifier answered 502")
        assert err.code is ErrorCode.INVALID_REQUEST
        assert err.detail == "verifier answered 502"


def test_errors_pickle_with_their_code() -> None:
    # Errors cross process boundaries (uvicorn workers, multiprocessing pools).
    err = pickle.loads(pickle.dumps(TesseraError(ErrorCode.EXPIRED, "late")))  # noqa: S301
    assert err.code is ErrorCode.EXPIRED and err.detail == "late"
