"""The per-process cache of rows that never change (issuer._cache): per database, and only
what a committed transaction read."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlmodel import select

from issuer._admin import brand_by_slug, create_brand, tiers_of
from issuer._db import make_engine, session_scope
from issuer._keystore import SqlKeyStore
from issuer._models import BrandCreate, Program, Tier
from issuer.migrations import upgrade
from tessera.errors import ErrorCode, TesseraError


def _engine(path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine


def _brand(engine, slug: str = "air") -> str:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        brand, _ = create_brand(s, keystore=SqlKeyStore(secrets.token_bytes(32)),
                                data=BrandCreate(slug=slug, name="Air"),
                                did=f"did:web:issuer.example:brands:{slug}")
        return brand.id


def test_each_database_has_its_own_brands(tmp_path: Path) -> None:
    one, two = _engine(tmp_path / "a.db"), _engine(tmp_path / "b.db")
    ids = _brand(one), _brand(two)
    for engine, brand_id in zip((one, two), ids, strict=True):
        for _ in range(2):  # the second read is the cached one
            with session_scope(engine) as s:
                assert brand_by_slug(s, slug="air").id == brand_id


def test_a_row_read_in_a_rolled_back_transaction_is_not_kept(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "a.db")
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        brand, _ = create_brand(s, keystore=SqlKeyStore(secrets.token_bytes(32)),
                                data=BrandCreate(slug="air", name="Air"),
                                did="did:web:issuer.example:brands:air")
        assert brand_by_slug(s, slug="air").id == brand.id
        raise RuntimeError("roll back")
    with session_scope(engine) as s, pytest.raises(TesseraError) as refused:
        brand_by_slug(s, slug="air")
    assert refused.value.code is ErrorCode.NOT_FOUND  # a miss is not cached either
    brand_id = _brand(engine)
    with session_scope(engine) as s:
        assert brand_by_slug(s, slug="air").id == brand_id


def test_tiers_are_read_once_per_program(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "a.db")
    brand_id = _brand(engine)
    with session_scope(engine) as s:
        program = Program(brand_id=brand_id, name="Miles")
        s.add(program)
        s.flush()
        s.add(Tier(program_id=program.id, name="blue", rank=0, qualifying_points=0))
        s.add(Tier(program_id=program.id, name="gold", rank=1, qualifying_points=10))
        program_id = program.id
    with session_scope(engine) as s:
        assert [t.name for t in tiers_of(s, program_id=program_id)] == ["blue", "gold"]
    with session_scope(engine) as s:
        # Behind the application's back (never done: tiers do not change); the worker's
        # copy is what it read first.
        for tier in s.exec(select(Tier)):
            tier.name = tier.name + "x"
            s.add(tier)
    with session_scope(engine) as s:
        assert [t.name for t in tiers_of(s, program_id=program_id)] == ["blue", "gold"]
