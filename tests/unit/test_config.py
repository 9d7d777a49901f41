"""Config errors name the file, the line, the key path and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.config import Config, ConfigError, load_config, parse_config, parse_duration

ROOT = Path(__file__).resolve().parents[2]


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("w.yaml"))
    return info.value.problems


def test_examples_load() -> None:
    config = load_config(ROOT / "examples" / "quickstart.yaml")
    assert set(config.principals) == {"agent", "dev", "reviewer"}
    agent = config.principal("agent")
    assert agent is not None and agent.is_agent and agent.sponsor == "dev"
    assert config.connections["demo"].pg.database == "test"
    assert config.listen_address("postgres") == ("127.0.0.1", 15432)


@pytest.mark.parametrize("name", ["readonly-agent.yaml", "ssh-hosts.yaml", "kubernetes.yaml"])
def test_other_examples_load(name: str) -> None:
    config = load_config(ROOT / "examples" / name)
    assert config.connections


def test_examples_have_their_own_data_dir_and_pidfile() -> None:
    """`policy reload -c quickstart.yaml` once signalled the SSH example's gateway: the
    pidfile (and master key) live in data_dir, which the examples shared."""
    from wardgate.serve import pidfile

    names = ["quickstart.yaml", "readonly-agent.yaml", "ssh-hosts.yaml"]
    configs = [load_config(ROOT / "examples" / name) for name in names]
    assert len({config.path(config.data_dir) for config in configs}) == len(names)
    assert len({pidfile(config) for config in configs}) == len(names)
    assert len({config.store_url for config in configs}) == len(names)


def test_ssh_connections_need_a_pinned_host_key_and_a_credential() -> None:
    text = (
        "connections:\n  web1:\n    type: ssh\n"
        "    upstream: {host: h, user: u, host_key: 'not a key', private_key: env:K}\n"
        "  web2:\n    type: ssh\n    upstream: {host: h, user: u, host_key: 'ssh-ed25519 AAAA'}\n"
        "  db:\n    type: postgres\n"
        "    upstream: {host: h, user: u, host_key: 'ssh-ed25519 AAAA', private_key: env:K}\n"
    )
    problems = "\n".join(errors(text))
    assert "host_key must be the target's public host key" in problems
    assert "needs private_key or password" in problems
    assert "a connection of type postgres needs an upstream with database and user" in problems


def test_literal_secret_is_refused_with_its_line() -> None:
    text = "connections:\n  db:\n    type: postgres\n    upstream: {database: d, user: u, password: hunter2}\n"
    (problem,) = errors(text)
    assert problem.startswith(
        "w.yaml:4: connections.db.upstream.password: secrets are never written"
    )
    assert "hunter2" not in problem


def test_unknown_key_is_named() -> None:
    (problem,) = errors("listen: {postgress: 127.0.0.1:1}\n")
    assert (
        problem
        == "w.yaml:1: listen.postgress: unknown key (check the spelling; see docs/configuration.md)"
    )


def test_cross_references_are_checked() -> None:
    text = (
        "groups: {agents: {}}\n"
        "principals:\n"
        "  bot: {kind: agent, groups: [agentz], sponsor: ghost}\n"
        "  ann: {kind: user, sponsor: bot}\n"
        "connections:\n"
        "  db: {type: postgres, upstream: {database: d, user: u}, roles: {agents: nope}}\n"
    )
    problems = errors(text)
    assert "w.yaml:3: principals.bot.groups[0]: unknown group 'agentz'" in problems
    assert "w.yaml:3: principals.bot.sponsor: unknown principal 'ghost'" in problems
    assert "w.yaml:4: principals.ann.sponsor: a sponsor must be a human user" in problems
    assert "w.yaml:6: connections.db.roles.agents: unknown role 'nope'" in problems


def test_bad_values() -> None:
    problems = errors(
        "roles: {r: {read: allowed}}\nlimits: {startup_timeout: soon}\nlisten: {postgres: nohost}\n"
    )
    assert any(p.startswith("w.yaml:1: roles.r.read:") for p in problems)
    assert any(
        p.startswith("w.yaml:2: limits.startup_timeout: expected a duration") for p in problems
    )
    assert any(p.startswith("w.yaml:3: listen.postgres: expected host:port") for p in problems)


def test_invalid_yaml_points_at_the_line() -> None:
    (problem,) = errors("groups:\n  a: {\n")
    assert problem.startswith("w.yaml:3: invalid YAML") or problem.startswith(
        "w.yaml:2: invalid YAML"
    )


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config("listen: {postgres: 127.0.0.1:15432}\n", Path("/tmp/w.yaml"))
    monkeypatch.setenv("WARDGATE_LISTEN_POSTGRES", "127.0.0.2:6000")
    monkeypatch.setenv("WARDGATE_STORE", "sqlite:///elsewhere.db")
    assert config.listen_address("postgres") == ("127.0.0.2", 6000)
    assert config.store_url == "sqlite:////tmp/elsewhere.db"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duplicate_keys_are_refused() -> None:
    (problem,) = errors("roles: {a: {read: allow}}\nroles: {b: {read: allow}}\n")
    assert problem == "w.yaml:2: roles: duplicate key (an earlier one would be ignored)"


def test_a_principal_is_the_same_object_each_time_it_is_asked_for() -> None:
    """The relay asks per statement; the audit journal writes a principal once per file
    by identity, so a fresh object each time wrote it again for every statement."""
    config = Config.model_validate(
        {"groups": {"g": {}}, "principals": {"a": {"kind": "user", "groups": ["g"]}}}
    )
    first = config.principal("a")
    assert first is not None and first is config.principal("a")
    assert first.groups == frozenset({"g"})
    assert config.principal("nobody") is None
    changed = config.model_copy(update={"principals": {}})
    assert changed.principal("a") is None  # an answer follows the entry, not the name
