"""Local passwords, web sessions and who may sign in to the web UI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.config import parse_config
from wardgate.core.web_sessions import WebSessions, human_principal
from wardgate.identity.passwords import PasswordPolicyError, UserPasswords
from wardgate.store.db import Store
from wardgate.web.auth import _safe_next, _sign, _unsign


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")
    yield s
    s.dispose()


CONFIG = """
groups: {agents: {}, approvers: {}, dba: {}}
principals:
  agent: {kind: agent, groups: [agents]}
  alice: {kind: user, groups: [approvers]}
web:
  oidc:
    issuer: https://idp.example/
    client_id: wardgate
    groups: {idp-dba: [dba], idp-approvers: [approvers]}
"""


def config(text: str = CONFIG) -> object:
    return parse_config(text, Path("wardgate.yaml"))


def test_passwords_hash_with_argon2id_and_verify(store: Store) -> None:
    pw = UserPasswords(store)
    pw.set("alice", "correct horse battery")
    assert pw.verify("alice", "correct horse battery")
    assert not pw.verify("alice", "correct horse batterY")
    assert not pw.verify("bob", "correct horse battery")  # no such user: same cost, false
    assert not pw.verify("alice", "x" * 5000)
    with store.session(write=False) as session:
        from wardgate.store.models import UserPassword

        stored = session.get(UserPassword, "alice")
        assert stored is not None and stored.hash.startswith("$argon2id$")
        assert "correct horse" not in stored.hash
    assert [name for name, _ in pw.users()] == ["alice"]
    assert pw.remove("alice") and not pw.verify("alice", "correct horse battery")


def test_password_policy(store: Store) -> None:
    with pytest.raises(PasswordPolicyError, match="at least 12"):
        UserPasswords(store).set("alice", "short")


def test_sessions_keep_only_a_hash_and_end(store: Store) -> None:
    sessions = WebSessions(store, idle=600, absolute=3600)
    secret, info = sessions.create("alice", frozenset({"dba"}), "oidc", "127.0.0.1")
    assert secret.startswith("wgs_") and info.csrf
    found = sessions.lookup(secret)
    assert found is not None and found.id == info.id and found.groups == {"dba"}
    with store.session(write=False) as session:
        from wardgate.store.models import WebSession

        row = session.get(WebSession, info.id)
        assert row is not None and secret not in (row.secret_hash, row.csrf)
    assert sessions.lookup(secret + "x") is None
    assert sessions.lookup("wg_" + secret[4:]) is None
    sessions.end(info.id)
    assert sessions.lookup(secret) is None


def test_sessions_idle_and_absolute_limits(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = WebSessions(store, idle=60, absolute=200)
    secret, _ = sessions.create("alice", frozenset(), "password", "::1")
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 50)
    assert sessions.lookup(secret) is not None  # touched at +50
    monkeypatch.setattr(time, "time", lambda: now + 100)
    assert sessions.lookup(secret) is not None  # idle 50 s since the touch
    monkeypatch.setattr(time, "time", lambda: now + 170)
    assert sessions.lookup(secret) is None  # 70 s idle: signed out, for good
    monkeypatch.setattr(time, "time", lambda: now)
    assert sessions.lookup(secret) is None

    other, _ = sessions.create("alice", frozenset(), "password", "::1")
    for step in range(1, 5):  # active every 50 s, but the absolute limit still ends it
        monkeypatch.setattr(time, "time", lambda step=step: now + 50 * step)
        alive = sessions.lookup(other)
        assert (alive is not None) == (50 * step < 200)
    assert sessions.end_all("alice") == 0


def test_end_all_signs_a_user_out_everywhere(store: Store) -> None:
    sessions = WebSessions(store, idle=600, absolute=3600)
    a, _ = sessions.create("alice", frozenset(), "password", "::1")
    b, _ = sessions.create("alice", frozenset(), "oidc", "::1")
    c, _ = sessions.create("bob", frozenset(), "oidc", "::1")
    assert sessions.end_all("alice") == 2
    assert sessions.lookup(a) is None and sessions.lookup(b) is None
    assert sessions.lookup(c) is not None


def test_only_humans_sign_in() -> None:
    cfg = config()
    assert human_principal(cfg, "agent", frozenset(), "password") is None  # type: ignore[arg-type]
    assert human_principal(cfg, "agent", frozenset(), "oidc") is None  # type: ignore[arg-type]
    alice = human_principal(cfg, "alice", frozenset({"dba"}), "oidc")  # type: ignore[arg-type]
    assert alice is not None and alice.groups == {"approvers", "dba"} and not alice.is_agent
    # Unlisted: refused unless the configuration allows them, then mapped groups only.
    assert human_principal(cfg, "carol", frozenset({"dba"}), "oidc") is None  # type: ignore[arg-type]
    open_cfg = config(CONFIG + "    allow_unlisted_users: true\n")
    carol = human_principal(open_cfg, "carol", frozenset({"dba", "nope"}), "oidc")  # type: ignore[arg-type]
    assert carol is not None and carol.groups == {"dba"}
    # ... and never with a password: local users are the listed ones.
    assert human_principal(open_cfg, "carol", frozenset(), "password") is None  # type: ignore[arg-type]


def test_oidc_group_mapping_must_name_known_groups() -> None:
    from wardgate.config import ConfigError

    with pytest.raises(ConfigError, match="unknown group 'ghosts'"):
        config(CONFIG.replace("idp-dba: [dba]", "idp-dba: [ghosts]"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/ui/sessions?x=1", "/ui/sessions?x=1"),
        ("https://evil.example/ui", "/ui/reviews"),
        ("//evil.example/ui", "/ui/reviews"),
        ("/ui\\@evil", "/ui/reviews"),
        ("/api/v1/tokens", "/ui/reviews"),
        ("/ui/x\r\nSet-Cookie: a=b", "/ui/reviews"),
        ("/ui/\x00", "/ui/reviews"),
        (None, "/ui/reviews"),
    ],
)
def test_next_stays_on_our_pages(value: str | None, expected: str) -> None:
    assert _safe_next(value) == expected


def test_signed_cookie_rejects_tampering_and_age() -> None:
    key = b"k" * 32
    value = _sign(key, {"state": "s", "exp": time.time() + 60})
    assert _unsign(key, value) == {"state": "s", "exp": pytest.approx(time.time() + 60, abs=5)}
    assert _unsign(b"j" * 32, value) is None
    body, _, mac = value.rpartition(".")
    assert _unsign(key, body + "x." + mac) is None
    assert _unsign(key, _sign(key, {"state": "s", "exp": time.time() - 1})) is None
    assert _unsign(key, "garbage") is None


def test_sign_in_and_out_are_in_the_audit_chain(store: Store) -> None:
    from wardgate.audit.chain import verify_chain
    from wardgate.store.models import AuditEvent

    sessions = WebSessions(store, idle=600, absolute=3600)
    secret, info = sessions.create("alice", frozenset({"dba"}), "oidc", "10.1.2.3")
    sessions.end(info.id)
    sessions.end(info.id)  # already ended: no second event
    with store.session(write=False) as session:
        events = [
            (e.type, e.session_id, e.principal, e.payload)
            for e in session.query(AuditEvent).order_by(AuditEvent.id)
        ]
    assert [e[:3] for e in events] == [
        ("web.signin", info.id, "alice"),
        ("web.signout", info.id, "alice"),
    ]
    assert '"method":"oidc"' in events[0][3] and secret not in events[0][3]
    assert '"reason":"signed out"' in events[1][3]
    assert verify_chain(store).ok


def test_polling_is_not_activity(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = WebSessions(store, idle=60, absolute=3600)
    secret, _ = sessions.create("alice", frozenset(), "password", "::1")
    now = time.time()
    for step in (40, 50):  # a page left open polls; the human does nothing
        monkeypatch.setattr(time, "time", lambda step=step: now + step)
        assert sessions.lookup(secret, activity=False) is not None
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert sessions.lookup(secret, activity=False) is None  # idle since sign-in
