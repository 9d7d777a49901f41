from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from wardgate.identity.scram import ScramAuthError, ScramClient, ScramServer, derive_keys
from wardgate.identity.tokens import ITERATIONS, TokenService
from wardgate.store.db import Store
from wardgate.store.models import PrincipalSalt, TokenRow

PEPPER = b"p" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")
    yield s
    s.dispose()


@pytest.fixture
def tokens(store: Store) -> TokenService:
    return TokenService(store, PEPPER)


def _scram_login(tokens: TokenService, principal: str, password: str) -> str:
    """A full SCRAM-SHA-256 exchange against the principal's verifiers; returns the key id."""
    client = ScramClient(password)
    server = ScramServer(tokens.verifiers(principal))
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    key_id, server_final = server.handle_client_final(client_final)
    client.verify_server_final(server_final)
    return key_id


def test_create_returns_a_url_safe_token_and_stores_only_scram_keys(
    tokens: TokenService, store: Store
) -> None:
    issued = tokens.create("bot", name="ci")
    assert re.fullmatch(r"tok_[a-z2-7]{8}", issued.id)
    assert re.fullmatch(r"wg_[A-Za-z0-9_-]{40,}", issued.token)
    with store.session(write=False) as s:
        row = s.get(TokenRow, issued.id)
        salt = s.get(PrincipalSalt, "bot")
        assert row is not None and salt is not None
    assert salt.iterations == ITERATIONS == 256 and len(salt.salt) == 16
    keys = derive_keys(issued.token, salt.salt, ITERATIONS)
    assert (row.stored_key, row.server_key) == (keys.stored_key, keys.server_key)
    # The token itself is nowhere in the database files.
    files = [p for p in Path(str(store.url.database)).parent.iterdir() if p.is_file()]
    assert files and not any(issued.token.encode() in p.read_bytes() for p in files)
    assert (row.principal, row.name, row.revoked_at) == ("bot", "ci", None)


def test_tokens_of_a_principal_share_its_salt(tokens: TokenService) -> None:
    a = tokens.create("bot")
    b = tokens.create("bot")
    c = tokens.create("alice")
    v = tokens.verifiers("bot")
    assert {k.key_id for k in v.keys} == {a.id, b.id}
    assert v.salt != tokens.verifiers("alice").salt
    assert [k.key_id for k in tokens.verifiers("alice").keys] == [c.id]


def test_check_password_and_scram_accept_the_token(tokens: TokenService) -> None:
    issued = tokens.create("bot")
    other = tokens.create("alice")
    assert tokens.check_password("bot", issued.token) == issued.id
    assert tokens.check_password("bot", issued.token + "x") is None
    assert tokens.check_password("bot", other.token) is None
    assert tokens.check_password("nobody", issued.token) is None
    assert _scram_login(tokens, "bot", issued.token) == issued.id
    with pytest.raises(ScramAuthError):
        _scram_login(tokens, "bot", other.token)


def test_revoke_removes_the_token_from_verification(tokens: TokenService) -> None:
    keep = tokens.create("bot")
    gone = tokens.create("bot")
    assert tokens.revoke(gone.id) is True
    assert tokens.revoke(gone.id) is False
    assert tokens.revoke("tok_unknown") is False
    assert [k.key_id for k in tokens.verifiers("bot").keys] == [keep.id]
    assert tokens.check_password("bot", gone.token) is None
    with pytest.raises(ScramAuthError):
        _scram_login(tokens, "bot", gone.token)
    assert _scram_login(tokens, "bot", keep.token) == keep.id
    info = {t.id: t for t in tokens.list("bot")}
    assert info[gone.id].revoked_at is not None and not info[gone.id].active
    assert info[keep.id].active


def test_unknown_principal_gets_a_stable_fake_salt_and_no_keys(store: Store) -> None:
    one = TokenService(store, PEPPER).verifiers("ghost")
    again = TokenService(store, PEPPER).verifiers("ghost")
    assert one == again
    assert one.keys == () and one.iterations == ITERATIONS and len(one.salt) == 16
    assert TokenService(store, PEPPER).verifiers("ghost2").salt != one.salt
    assert TokenService(store, b"q" * 32).verifiers("ghost").salt != one.salt
    # Same shape as a real principal's answer.
    real = TokenService(store, PEPPER)
    real.create("bot")
    assert len(real.verifiers("bot").salt) == len(one.salt)
    with pytest.raises(ScramAuthError):
        _scram_login(real, "ghost", "wg_anything")


def test_list_has_no_secrets_and_filters(tokens: TokenService) -> None:
    a = tokens.create("bot", "first")
    tokens.create("alice")
    listed = tokens.list()
    assert {t.principal for t in listed} == {"bot", "alice"}
    only = tokens.list("bot")
    assert [(t.id, t.name) for t in only] == [(a.id, "first")]
    assert not any(isinstance(v, bytes) for v in vars_of(only[0]))
    assert a.token not in repr(listed)


def vars_of(obj: object) -> list[object]:
    return [getattr(obj, name) for name in obj.__slots__]  # type: ignore[attr-defined]


def test_touch_updates_last_used(tokens: TokenService) -> None:
    issued = tokens.create("bot")
    assert tokens.list("bot")[0].last_used_at is None
    tokens.touch(issued.id)
    used = tokens.list("bot")[0].last_used_at
    assert used is not None and used >= tokens.list("bot")[0].created_at


def test_a_principal_from_before_the_iteration_change_is_renewed_once_it_has_no_token(
    tokens: TokenService, store: Store
) -> None:
    """Principals whose salt row has 4096 iterations (an earlier release) keep it while
    a token of theirs lives (its keys depend on it); their next token after the last is
    revoked gets a fresh salt and today's count, like every other principal."""
    old = tokens.create("veteran")
    with store.session() as s:
        row = s.get(PrincipalSalt, "veteran")
        assert row is not None
        row.iterations = 4096
        key = s.get(TokenRow, old.id)
        assert key is not None
        keys = derive_keys(old.token, row.salt, 4096, old.id)
        key.stored_key, key.server_key = keys.stored_key, keys.server_key
    second = tokens.create("veteran")  # a live token: the count stays
    assert tokens.verifiers("veteran").iterations == 4096
    assert _scram_login(tokens, "veteran", second.token) == second.id
    tokens.revoke(old.id)
    tokens.revoke(second.id)
    third = tokens.create("veteran")
    assert tokens.verifiers("veteran").iterations == ITERATIONS
    assert _scram_login(tokens, "veteran", third.token) == third.id


def test_verifiers_are_cached_briefly_and_dropped_by_revoke_and_create(
    tokens: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wardgate.identity.tokens as module

    first = tokens.create("dev")
    assert tokens.cached_verifiers("dev") is None  # nothing read yet
    read = tokens.verifiers("dev")
    assert [k.key_id for k in read.keys] == [first.id]
    assert tokens.cached_verifiers("dev") == read
    # A token created through this process: the next login reads the store.
    second = tokens.create("dev")
    assert tokens.cached_verifiers("dev") is None
    assert [k.key_id for k in tokens.verifiers("dev").keys] == [first.id, second.id]
    # Revoked through this process: no login on the cached keys afterwards.
    assert tokens.revoke(first.id)
    assert tokens.cached_verifiers("dev") is None
    assert [k.key_id for k in tokens.verifiers("dev").keys] == [second.id]
    # Revoked elsewhere (another process): the cache holds it for the bound, not longer.
    TokenService(tokens._store, PEPPER).revoke(second.id)
    assert tokens.cached_verifiers("dev") is not None
    monkeypatch.setattr(module, "VERIFIER_CACHE_SECONDS", 0.0)
    assert tokens.cached_verifiers("dev") is None
    assert tokens.verifiers("dev").keys == ()


def test_verifiers_of_a_principal_without_tokens_and_of_an_unknown_one(
    tokens: TokenService,
) -> None:
    issued = tokens.create("dev")
    tokens.revoke(issued.id)
    none_left = tokens.verifiers("dev")
    assert none_left.keys == () and none_left.iterations == ITERATIONS
    unknown = tokens.verifiers("nobody")
    assert unknown.keys == () and unknown.salt == tokens.fake_salt("nobody")
    assert none_left.salt != unknown.salt


def test_a_proof_for_a_token_newer_than_the_cached_keys_is_rechecked(
    tokens: TokenService,
) -> None:
    tokens.create("dev")
    cached = tokens.verifiers("dev")
    other = TokenService(tokens._store, PEPPER).create("dev")  # another process
    client = ScramClient(other.token)
    server = ScramServer(cached)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramAuthError):
        server.handle_client_final(client_final)
    key_id, server_final = server.recheck(tokens.verifiers("dev"))
    client.verify_server_final(server_final)
    assert key_id == other.id
    with pytest.raises(ScramAuthError):  # one recheck per exchange
        server.recheck(tokens.verifiers("dev"))
