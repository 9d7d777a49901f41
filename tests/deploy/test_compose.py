"""deploy/compose: the Compose file is valid against the Compose Specification's schema,
every credential comes from .env, and the pieces agree with each other (the gateways'
config, the Keycloak realm, the setup service, which really runs here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wardgate.config import load_config
from wardgate.sshlib import asyncssh

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:[:?\-][^}]*)?\}")


def compose() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
    # The schema names draft 07 by a URL jsonschema does not know: say it outright.
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(compose())
    broken = compose()
    broken["services"]["store"]["healthcheck"]["intervl"] = "5s"
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a typo
        validator.validate(broken)


def test_every_variable_comes_from_the_env_template() -> None:
    template = (COMPOSE / ".env.example").read_text()
    defined = {m[1] for m in re.finditer(r"^#?\s*([A-Z0-9_]+)=", template, re.M)}
    empty = {m[1] for m in re.finditer(r"^([A-Z0-9_]+)=$", template, re.M)}
    used = set(VARIABLE.findall((COMPOSE / "compose.yaml").read_text()))
    assert used <= defined, used - defined
    # Each secret is empty in the template and required (:?) in the Compose file.
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", (COMPOSE / "compose.yaml").read_text()))
    assert empty == required, (empty, required)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()  # never committed


def test_two_replicas_on_one_postgresql_store_behind_one_identity_provider() -> None:
    services = compose()["services"]
    a, b = services["wardgate-a"], services["wardgate-b"]
    assert a["environment"] == b["environment"]  # one store, one master key
    assert a["environment"]["WARDGATE_STORE"].startswith("postgresql://wardgate:")
    assert a["environment"]["WARDGATE_STORE"].endswith("@store:5432/wardgate")
    assert services["store"]["image"].startswith("postgres:")
    assert services["keycloak"]["image"].startswith("quay.io/keycloak/keycloak:")
    for gw in (a, b):
        assert gw["read_only"] is True and gw["cap_drop"] == ["ALL"]
        assert gw["depends_on"]["store"]["condition"] == "service_healthy"
        assert gw["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    published = [p.split(":")[1] for gw in (a, b) for p in gw["ports"]]
    assert len(published) == len(set(published))
    assert all(p.startswith("127.0.0.1:") for gw in (a, b) for p in gw["ports"])
    assert {"target-db", "target-ssh"} <= services.keys()


def test_the_realm_matches_the_gateway_config(tmp_path: Path) -> None:
    realm = json.loads((COMPOSE / "keycloak" / "wardgate-realm.json").read_text())
    config = rendered_config(tmp_path)
    assert config.web.oidc is not None
    oidc = config.web.oidc
    assert (
        oidc.issuer
        == f"{compose()['services']['keycloak']['environment']['KC_HOSTNAME']}/realms/{realm['realm']}"
    )
    clients = {c["clientId"]: c for c in realm["clients"]}
    web, cli = clients[oidc.client_id], clients[oidc.cli_client_id or ""]
    assert web["publicClient"] is False and cli["publicClient"] is True
    assert cli["attributes"]["oauth2.device.authorization.grant.enabled"] == "true"
    for port in ("8080", "8081"):
        assert f"http://localhost:{port}/ui/oidc/callback" in web["redirectUris"]
    # Placeholders in the realm are set on the keycloak service; nothing secret is literal.
    placeholders = set(VARIABLE.findall(json.dumps(realm)))
    assert placeholders <= compose()["services"]["keycloak"]["environment"].keys()
    assert web["secret"] == "${WARDGATE_OIDC_CLIENT_SECRET}"
    realm_groups = {g["name"] for g in realm["groups"]}
    assert set(oidc.groups) <= realm_groups
    users = {u["username"] for u in realm["users"]}
    assert users <= {n for n, p in config.principals.items() if p.kind == "user"}


def rendered_config(tmp_path: Path) -> Any:
    """Run the setup service's script for real (as root, like the service), in tmp."""
    if os.geteuid() != 0:
        pytest.skip("the setup script chowns files to the image's user: run as root")
    keys, data_a, data_b = tmp_path / "keys", tmp_path / "a", tmp_path / "b"
    for d in (keys, data_a, data_b):
        d.mkdir()
    env = {
        **os.environ,
        "SETUP_KEYS": str(keys),
        "SETUP_CONFIG": str(tmp_path / "wardgate.yaml"),
        "SETUP_TEMPLATE": str(COMPOSE / "wardgate.yaml.tmpl"),
        "SETUP_DATA": f"{data_a}:{data_b}",
    }
    script = [sys.executable, str(COMPOSE / "setup.py")]
    out = subprocess.run(script, env=env, capture_output=True, text=True, check=True).stdout
    assert "BEGIN" not in out  # no key material printed
    again = subprocess.run(script, env=env, capture_output=True, text=True, check=True).stdout
    assert "generated" not in again  # the keys are kept
    return load_config(tmp_path / "wardgate.yaml")


def test_setup_pins_the_demo_host_key_and_shares_one_gateway_host_key(tmp_path: Path) -> None:
    config = rendered_config(tmp_path)
    keys = tmp_path / "keys"
    host = asyncssh.read_private_key(str(keys / "target" / "ssh_host_ed25519_key"))
    web1 = config.connections["web1"].ssh
    assert web1.host_key == " ".join(host.export_public_key("openssh").decode().split()[:2])
    assert web1.private_key == "file:/run/secrets/ssh/gateway_ed25519"
    gateway = asyncssh.read_private_key(str(keys / "gateway_ed25519"))
    authorized = (keys / "target" / "authorized_keys").read_bytes()
    assert authorized == gateway.export_public_key("openssh")
    a = (tmp_path / "a" / "ssh_host_ed25519_key").read_bytes()
    assert a == (tmp_path / "b" / "ssh_host_ed25519_key").read_bytes()
    for path in (keys / "gateway_ed25519", tmp_path / "a" / "ssh_host_ed25519_key"):
        assert path.stat().st_uid == 10001 and path.stat().st_mode & 0o077 == 0
    assert config.connections["shop"].pg.password == "env:SHOP_DB_PASSWORD"
    assert config.master_key == "env:WARDGATE_MASTER_KEY"
