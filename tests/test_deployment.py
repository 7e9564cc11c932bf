"""docker-compose.yml is valid: Docker does not run here, so the file is checked
against the Compose Specification's JSON Schema (vendored by check-jsonschema)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from jsonschema import validators

ROOT = Path(__file__).resolve().parent.parent


def _compose_schema() -> dict[str, object]:
    text = (resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
            / "compose-spec.json").read_text(encoding="utf-8")
    schema: dict[str, object] = json.loads(text)
    return schema


def _validator() -> validators.Draft202012Validator:
    schema = _compose_schema()
    cls = validators.validator_for(schema)  # the schema's own $schema draft
    return cls(schema)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_fits_the_compose_specification(compose: dict[str, object]) -> None:
    errors = sorted(_validator().iter_errors(compose), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_compose_schema_rejects_a_broken_file() -> None:
    # The check above must be able to fail: a misspelt key is refused.
    broken = {"services": {"issuer": {"imagee": "x"}}}
    assert list(_validator().iter_errors(broken))


def test_compose_services_and_dependencies(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    assert {"issuer", "verifier", "postgres", "redis"} <= set(services)
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    build = services["issuer"]["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (ROOT / context / "Dockerfile").is_file()


def test_compose_mounts_the_files_the_services_read(compose: dict[str, object]) -> None:
    services = compose["services"]
    assert isinstance(services, dict)
    trust = ROOT / "deploy" / "trust.json"
    assert trust.is_file(), "the verifier service reads deploy/trust.json"
    from verifier import TrustList

    TrustList.from_file(trust)  # the shipped example must be a valid trust list


def test_compose_wires_a_working_development_pair(compose: dict[str, object]) -> None:
    # The verifier's container cannot reach the issuer at localhost:8000 (that is
    # itself): development mode maps the DIDs' address to the issuer's service name.
    import re

    from issuer._settings import Settings
    from tessera.devmode import dev_origins
    from verifier import TrustList

    services = compose["services"]
    assert isinstance(services, dict)
    verifier_env = services["verifier"]["environment"]
    issuer_env = services["issuer"]["environment"]

    def default(value: str) -> str:  # ${NAME:-default} as compose resolves it when unset
        found = re.fullmatch(r"\$\{[A-Z_]+:-(.*)\}", value)
        return found.group(1) if found else value

    public_url = default(issuer_env["TESSERA_PUBLIC_URL"])
    origins = dev_origins([], {"TESSERA_DEV_ORIGINS": default(verifier_env["TESSERA_DEV_ORIGINS"])})
    issuer_port = services["issuer"]["command"][-1].split("--port ")[1].split()[0]
    assert [(o.authority, o.target) for o in origins] == [
        ("localhost:8000", f"http://issuer:{issuer_port}")]
    assert public_url == "http://localhost:8000"
    brand_did = Settings(master_key=bytes(32), public_url=public_url).brand_did("acme")
    trusted = TrustList.from_file(ROOT / "deploy" / "trust.json")
    assert brand_did in trusted.issuers
    assert "issuer" in services["verifier"]["depends_on"]


def test_compose_verifier_keeps_its_tills_on_a_volume(compose: dict[str, object]) -> None:
    """Two workers need one till key file (issue 9 item 8), where `till create` can write."""
    services = compose["services"]
    assert isinstance(services, dict)
    verifier = services["verifier"]
    command = verifier["command"]
    tills = command[command.index("--tills") + 1]
    assert int(command[command.index("--workers") + 1]) > 1
    mounts = [v.split(":") for v in verifier["volumes"]]
    assert any(tills.startswith(target + "/") and (len(rest) == 0 or rest[0] != "ro")
               for _source, target, *rest in mounts), mounts


def test_compose_hands_the_metrics_token_to_both_services(compose: dict[str, object]) -> None:
    """Prometheus in another container needs a token (loopback-only otherwise), and
    the token comes from the operator's .env: the file ships no secret of its own."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from tessera.observability import install_observability
    from tessera.web import install_problem_handlers

    services = compose["services"]
    assert isinstance(services, dict)
    for name in ("issuer", "verifier"):
        assert services[name]["environment"]["TESSERA_METRICS_TOKEN"] == \
            "${TESSERA_METRICS_TOKEN:-}", name
    # Unset in .env, compose passes "": /metrics stays loopback-only, not open.
    app = FastAPI()
    install_problem_handlers(app)
    install_observability(app, service="compose-test", environ={"TESSERA_METRICS_TOKEN": ""})
    assert TestClient(app, client=("172.18.0.5", 40000)).get("/metrics").status_code == 403
    app = FastAPI()
    install_problem_handlers(app)
    install_observability(app, service="compose-test",
                          environ={"TESSERA_METRICS_TOKEN": "from-dot-env"})
    scraper = TestClient(app, client=("172.18.0.5", 40000))
    assert scraper.get("/metrics").status_code == 401
    assert scraper.get("/metrics", headers={"Authorization": "Bearer from-dot-env"}
                       ).status_code == 200
