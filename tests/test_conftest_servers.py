"""The suite finds PostgreSQL and Redis at their documented default addresses (item 13 of
issue 11), and an explicit setting, even an empty one, always wins."""

from __future__ import annotations

from tests.conftest import DEFAULT_SERVERS, use_default_server

PG = "TESSERA_TEST_POSTGRES_URL"
DEFAULT = DEFAULT_SERVERS[PG]


def test_a_server_at_the_default_address_is_used_and_announced() -> None:
    env: dict[str, str] = {}
    asked: list[str] = []
    note = use_default_server(env, PG, DEFAULT, lambda url: asked.append(url) or True)
    assert env == {PG: DEFAULT} and asked == [DEFAULT]
    assert note == (f"PostgreSQL: {DEFAULT} (found at the default local address; "
                    f"{PG}= turns it off)")


def test_no_server_no_setting() -> None:
    env: dict[str, str] = {}
    note = use_default_server(env, PG, DEFAULT, lambda url: False)
    assert env == {} and "those tests skip" in note


def test_an_explicit_setting_wins_without_probing() -> None:
    def never(url: str) -> bool:
        raise AssertionError("probed despite an explicit setting")

    env = {PG: "postgresql://elsewhere/db"}
    assert "from TESSERA_TEST_POSTGRES_URL" in use_default_server(env, PG, DEFAULT, never)
    off = {PG: ""}
    assert "off" in use_default_server(off, PG, DEFAULT, never) and off == {PG: ""}


def test_the_defaults_are_the_ones_ci_uses() -> None:
    from pathlib import Path

    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    for name, url in DEFAULT_SERVERS.items():
        assert f'{name}="${{{name}:-{url}}}"' in ci
