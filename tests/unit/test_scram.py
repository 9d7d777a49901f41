"""SCRAM-SHA-256: the RFC 7677 vector, client against server, and refusals."""

from __future__ import annotations

import base64

import pytest

from wardgate.identity.scram import (
    ScramAuthError,
    ScramClient,
    ScramKeys,
    ScramServer,
    ScramVerifierSet,
    derive_keys,
    saslprep,
)

# RFC 7677 section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = derive_keys("pencil", RFC_SALT, 4096, key_id="pencil")


def rfc_server(*keys: ScramKeys) -> ScramServer:
    return ScramServer(ScramVerifierSet(RFC_SALT, 4096, keys), nonce=RFC_SERVER_NONCE.encode())


def test_rfc7677_server_side() -> None:
    server = rfc_server(PENCIL)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == ("pencil", RFC_SERVER_FINAL)


def test_rfc7677_client_side() -> None:
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE.encode())
    assert client.client_first() == b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
    # The RFC names the user; PostgreSQL clients leave it empty. Put the name
    # back so the vector's AuthMessage, and so its proof, is reproduced.
    client._client_first_bare = RFC_CLIENT_FIRST[3:].decode()
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_rfc7677_wrong_password_and_key_among_many() -> None:
    wrong = derive_keys("pencil2", RFC_SALT, 4096, key_id="other")
    server = rfc_server(wrong)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthError):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server = rfc_server(wrong, PENCIL)
    server.handle_client_first(RFC_CLIENT_FIRST)
    assert server.handle_client_final(RFC_CLIENT_FINAL)[0] == "pencil"


SALT = b"0123456789abcdef"
TOKENS = {"t1": "wg_token_one", "t2": "wg_token_two", "t3": "wg_töken_three"}
VERIFIERS = ScramVerifierSet(
    SALT, 4096, tuple(derive_keys(secret, SALT, 4096, kid) for kid, secret in TOKENS.items())
)


def exchange(password: str, verifiers: ScramVerifierSet) -> tuple[str, ScramClient, bytes]:
    client = ScramClient(password)
    server = ScramServer(verifiers)
    server_first = server.handle_client_first(client.client_first())
    key_id, server_final = server.handle_client_final(client.handle_server_first(server_first))
    return key_id, client, server_final


@pytest.mark.parametrize("key_id", sorted(TOKENS))
def test_client_against_server_with_several_keys(key_id: str) -> None:
    matched, client, server_final = exchange(TOKENS[key_id], VERIFIERS)
    assert matched == key_id
    client.verify_server_final(server_final)


def test_wrong_token_and_unknown_principal_fail_at_the_end() -> None:
    with pytest.raises(ScramAuthError):
        exchange("wg_token_four", VERIFIERS)
    empty = ScramVerifierSet(SALT, 4096, ())
    client = ScramClient("anything")
    server = ScramServer(empty)
    server_first = server.handle_client_first(client.client_first())
    assert server_first.startswith(b"r=")  # indistinguishable until the proof
    with pytest.raises(ScramAuthError):
        server.handle_client_final(client.handle_server_first(server_first))


def test_client_rejects_forged_server_final() -> None:
    _, client, _ = exchange("wg_token_one", VERIFIERS)
    with pytest.raises(ScramAuthError):
        client.verify_server_final(b"v=" + base64.b64encode(b"\0" * 32))
    with pytest.raises(ScramAuthError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_y_flag_accepted_and_channel_binding_refused() -> None:
    server = rfc_server(PENCIL)
    server.handle_client_first(b"y,,n=,r=abc")
    # c= must repeat the gs2 header that was actually sent.
    with pytest.raises(ScramAuthError, match="channel binding"):
        server.handle_client_final(b"c=biws,r=abc" + RFC_SERVER_NONCE.encode() + b",p=AAAA")
    with pytest.raises(ScramAuthError, match="channel binding"):
        rfc_server(PENCIL).handle_client_first(b"p=tls-server-end-point,,n=,r=abc")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=a,b",
        b"n,,r=abc",
        b"n,,n=,r=ab\x7fc",
        b"n,,n=,r=abc,\xff",
        b"n,,n=,r=" + b"a" * 5000,
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    with pytest.raises(ScramAuthError):
        rfc_server(PENCIL).handle_client_first(message)


def test_client_first_extensions_and_username_ignored() -> None:
    server = rfc_server(PENCIL)
    assert server.handle_client_first(b"n,,n=*,r=abc,x=ext").startswith(b"r=abc%hvY")


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"p=AAAA",
        b"c=biws,p=" + base64.b64encode(b"\0" * 32),
        b"c=biws,r=wrongnonce,p=" + base64.b64encode(b"\0" * 32),
        b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!!",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHzc"),
    ],
)
def test_malformed_or_wrong_client_final(message: bytes) -> None:
    server = rfc_server(PENCIL)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthError):
        server.handle_client_final(message)


def test_out_of_order_and_replayed_messages() -> None:
    server = rfc_server(PENCIL)
    with pytest.raises(ScramAuthError):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(ScramAuthError):
        server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(ScramAuthError):
        server.handle_client_final(RFC_CLIENT_FINAL)
    client = ScramClient("pencil")
    with pytest.raises(ScramAuthError):
        client.verify_server_final(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"r=other,s=AAAA,i=4096",
        b"r=abc,s=AAAA,i=4096",  # does not extend the client nonce
        b"r=abcdef,s=!!,i=4096",
        b"r=abcdef,s=,i=4096",
        b"r=abcdef,s=AAAA,i=0",
        b"r=abcdef,s=AAAA,i=-1",
        b"r=abcdef,s=AAAA,i=99999999999",
        b"r=abcdef,s=AAAA",
        b"m=x,r=abcdef,s=AAAA,i=1",
    ],
)
def test_client_rejects_bad_server_first(server_first: bytes) -> None:
    with pytest.raises(ScramAuthError):
        ScramClient("pw", nonce=b"abc").handle_server_first(server_first)


def test_saslprep() -> None:
    assert saslprep("I\u00adX") == "IX"  # soft hyphen is mapped to nothing
    assert saslprep("user") == "user"
    assert saslprep("\u2168") == "IX"  # NFKC
    assert saslprep("a\u00a0b") == "a b"  # non-ASCII space becomes a space
    assert saslprep("a\u0007b") == "a\u0007b"  # ASCII is left alone, as PostgreSQL does
    assert saslprep("\u0627\u0031") == "\u0627\u0031"  # bidi violation: used raw
    assert saslprep("\ufffe") == "\ufffe"  # prohibited: used raw


def test_derive_keys_validates_iterations() -> None:
    with pytest.raises(ValueError):
        derive_keys("x", SALT, 0)


def test_nonce_must_be_printable() -> None:
    with pytest.raises(ValueError):
        ScramServer(VERIFIERS, nonce=b"a,b")
    with pytest.raises(ValueError):
        ScramClient("x", nonce=b"\xff")


def test_recheck_needs_a_failed_proof_and_the_announced_salt() -> None:
    salt = b"s" * 16
    keys = derive_keys("right", salt, 256, "k1")
    server = ScramServer(ScramVerifierSet(salt, 256, ()))
    client = ScramClient("right")
    with pytest.raises(ScramAuthError):
        server.recheck(ScramVerifierSet(salt, 256, (keys,)))  # nothing failed yet
    final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramAuthError):
        server.handle_client_final(final)
    # Other salt or count than announced: the client's proof cannot be for these keys.
    with pytest.raises(ScramAuthError):
        server.recheck(ScramVerifierSet(b"t" * 16, 256, (keys,)))
    server = ScramServer(ScramVerifierSet(salt, 256, ()))
    c = ScramClient("right")
    final_msg = c.handle_server_first(server.handle_client_first(c.client_first()))
    with pytest.raises(ScramAuthError):
        server.handle_client_final(final_msg)
    key_id, server_final = server.recheck(ScramVerifierSet(salt, 256, (keys,)))
    c.verify_server_final(server_final)
    assert key_id == "k1"
