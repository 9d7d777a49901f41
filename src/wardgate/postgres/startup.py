"""The startup phase of a PostgreSQL session: which startup parameters and options
pass on to the server, and authentication with wardgate tokens (SCRAM-SHA-256, or the
token as a password over TLS). PgListener (listener.py) runs it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wardgate.config import ConnectionConfig, parse_duration
from wardgate.identity.scram import ScramAuthError, ScramServer, ScramVerifierSet
from wardgate.identity.tokens import VERIFIER_CACHE_SECONDS
from wardgate.policy.sql import search_path_shadows_builtins, split_identifiers
from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.wire import ClientSide

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

PROTOCOL_3_0 = 196608

# Startup parameters a client may pass on to the server. Anything else could set a
# server setting the policy never saw (role, session_authorization, read-only...).
PASSED_PARAMS = frozenset(
    {
        "application_name",
        "client_encoding",
        "DateStyle",
        "IntervalStyle",
        "TimeZone",
        "extra_float_digits",
        "search_path",
        # Which notices the server sends: asyncpg's server_settings sets it this way.
        "client_min_messages",
    }
)
# Settings allowed in `options=-c name=value`.
PASSED_OPTIONS = frozenset(
    {
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "DateStyle",
        "TimeZone",
        "IntervalStyle",
        "extra_float_digits",
        "application_name",
        "client_encoding",
        "client_min_messages",
        "work_mem",
    }
)
SETTING_HINTS = {
    "client_encoding": "Connect with client_encoding=UTF8 (PGCLIENTENCODING=UTF8).",
    "standard_conforming_strings": "Turn standard_conforming_strings on for the gateway's "
    "database user (ALTER ROLE ... SET standard_conforming_strings = on).",
}
GENERIC_AUTH_FAILURE = (
    'wardgate: authentication failed for principal "{}": the token is wrong, revoked, '
    "or the principal does not exist"
)


class StartupRefused(Exception):
    def __init__(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


def parse_options(value: str) -> dict[str, str]:
    """libpq's `options`: `-c name=value` pairs (also `--name=value`), backslash escapes spaces."""
    words: list[str] = []
    current = ""
    escape = False
    for ch in value:
        if escape:
            current += ch
            escape = False
        elif ch == "\\":
            escape = True
        elif ch.isspace():
            if current:
                words.append(current)
            current = ""
        else:
            current += ch
    if current:
        words.append(current)
    settings: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair = words[i + 1]
            i += 2
        elif word.startswith("-c"):
            pair = word[2:]
            i += 1
        elif word.startswith("--"):
            pair = word[2:]
            i += 1
        else:
            raise StartupRefused("22023", f"wardgate: cannot understand startup option {word!r}")
        name, sep, val = pair.partition("=")
        if not sep:
            raise StartupRefused("22023", f"wardgate: startup option {pair!r} needs name=value")
        settings[name.replace("-", "_")] = val
    return settings


def _printable(text: str) -> bool:
    """Only printable ASCII and spaces (which ``_quote_option`` escapes)."""
    return all(" " <= ch <= "~" for ch in text)


def _quote_option(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def params_for_upstream(params: dict[str, str]) -> dict[str, str]:
    passed: dict[str, str] = {}
    for name, value in params.items():
        if name in ("user", "database"):
            continue
        if name == "options":
            settings = parse_options(value)
            for key, option_value in settings.items():
                if not _printable(key + option_value):
                    # The server splits `options` at any blank (its isspace(), which a
                    # locale may widen): an escaped tab or newline inside a value would,
                    # passed on, start a setting of its own (`-c a=x\<TAB>-c role=y`).
                    raise StartupRefused(
                        "42501",
                        f"wardgate: startup option {key!r} contains a control or non-ASCII "
                        "character, which the server could read as the start of another "
                        "option",
                        hint="Set it with SQL after connecting, where the policy can see it.",
                    )
                if key.startswith("wardgate."):
                    continue  # gateway options, consumed here
                if key == "search_path":
                    _check_search_path(option_value)
                if key not in PASSED_OPTIONS:
                    raise StartupRefused(
                        "42501",
                        f"wardgate: startup option {key!r} is not allowed through the gateway",
                        hint="Set it with SQL after connecting, where the policy can see it.",
                    )
            passed_options = " ".join(
                f"-c {_quote_option(k)}={_quote_option(v)}"
                for k, v in settings.items()
                if not k.startswith("wardgate.")
            )
            if passed_options:
                passed["options"] = passed_options
        elif name == "replication":
            raise StartupRefused("42501", "wardgate: replication connections are not supported")
        elif name.startswith("_pq_."):
            continue  # protocol extensions were declined in NegotiateProtocolVersion
        elif name in PASSED_PARAMS:
            if name == "search_path":
                _check_search_path(value)
            passed[name] = value
        else:
            raise StartupRefused(
                "42501",
                f"wardgate: startup parameter {name!r} is not allowed through the gateway",
                hint="Set it with SQL after connecting, where the policy can see it.",
            )
    return passed


async def authenticate(
    services: Services,
    client: ClientSide,
    principal: str,
    addr: str,
    tls: bool,
    on_unthrottled: Callable[[], None] | None = None,
) -> bytes:
    """Authenticate ``principal`` with a wardgate token; raises StartupRefused.
    Returns what to send the client ahead of AuthenticationOk (SCRAM's server-final
    message): sent with it, the client wakes up once, not twice.

    The store is read once, in a thread, while the client answers the first message
    (the throttle, the principal's salt and its non-revoked keys), unless this process
    read the same a moment ago: a revocation made elsewhere takes effect here within
    tokens.VERIFIER_CACHE_SECONDS (at once when made through this process), a new
    token at once. ``on_unthrottled`` runs once the throttle let the login
    go on, before the proof is checked (the listener starts dialling upstream then).
    """
    limiter = services.limiter
    password = services.config.client_auth == "password" and tls
    tokens = services.tokens

    def lookup() -> tuple[float | None, bool, ScramVerifierSet | None]:
        retry, counted = limiter.check(principal, addr)
        if password:
            return retry, counted, None
        return retry, counted, tokens.verifiers(principal)

    # Asked before anything is read from the client; the store answers meanwhile.
    client.write(
        build.auth_cleartext_password() if password else build.auth_sasl(["SCRAM-SHA-256"])
    )
    # What this process read from the store a moment ago, when it said nothing was
    # counted (ratelimit.CHECK_CACHE_SECONDS, tokens.VERIFIER_CACHE_SECONDS): no store
    # read and no thread for a principal that keeps connecting. A proof the cached
    # keys do not match is checked again against the store below.
    kept = None if password else tokens.kept_verifiers(principal)
    cached = None if kept is None else kept[1]
    verifiers: ScramVerifierSet | None
    # When the keys the proof is checked against were read (monotonic): the start of
    # the read, so that their age is never underestimated.
    keys_read_at = time.monotonic()
    if kept is not None and cached is not None and limiter.cached_check(principal, addr):
        keys_read_at = kept[0]
        first = await client.read()
        retry, counted, verifiers = None, False, cached
    else:
        cached = None
        looked_up = asyncio.ensure_future(asyncio.to_thread(lookup))
        try:
            first = await client.read()
            retry, counted, verifiers = await looked_up
        finally:
            if not looked_up.done():
                looked_up.cancel()
    # Past the address's threshold, only the costly cleartext check (PBKDF2) is refused
    # outright: a SCRAM proof is cheap to check, and a right token from an address an
    # agent flooded with failures (loopback: everyone's) must still log in.
    if retry is not None and password:
        log.info(
            "login of %r from %s refused: too many failed logins from this address",
            principal,
            addr,
            extra={"fields": {"event": "login.refused", "principal": principal, "client": addr}},
        )
        raise StartupRefused(
            "28P01",
            f"wardgate: too many failed logins from this address; try again in {int(retry) + 1} s",
        )
    if on_unthrottled is not None and retry is None:  # no upstream dial for a flood
        on_unthrottled()
    ok = False
    token_id: str | None = None
    ahead = b""
    if password:
        if not isinstance(first, m.PasswordData):
            raise ProtocolError("expected a password message")
        token = first.payload.rstrip(b"\x00").decode("utf-8", "replace")
        # Checked whether or not the principal is configured: the same PBKDF2 work
        # either way, so timing does not tell which principal names exist.
        token_id = await asyncio.to_thread(tokens.check_password, principal, token)
        ok = token_id is not None and services.config.principal(principal) is not None
    else:
        assert verifiers is not None
        if services.config.principal(principal) is None:
            verifiers = type(verifiers)(verifiers.salt, verifiers.iterations, ())
        scram = ScramServer(verifiers)
        if not isinstance(first, m.PasswordData):
            raise ProtocolError("expected a SASLInitialResponse")
        try:
            mechanism, data = _parse_sasl_initial(first.payload)
            if mechanism != "SCRAM-SHA-256":
                raise ScramAuthError("unsupported mechanism")
            client.write(build.auth_sasl_continue(scram.handle_client_first(data)))
            final = await client.read()
            if not isinstance(final, m.PasswordData):
                raise ProtocolError("expected a SASLResponse")
            try:
                token_id, server_final = scram.handle_client_final(final.payload)
            except ScramAuthError:
                if cached is None or services.config.principal(principal) is None:
                    raise
                # The keys came from the cache: a token created since is not among them.
                keys_read_at = time.monotonic()
                fresh = await asyncio.to_thread(tokens.verifiers, principal)
                token_id, server_final = scram.recheck(fresh)
            if time.monotonic() - keys_read_at >= VERIFIER_CACHE_SECONDS:
                # The client held its handshake (startup_timeout allows it) past the
                # bound on how old the keys a login is decided on may be: the token
                # must still be live now, not only when the handshake began (attack20).
                fresh = await asyncio.to_thread(tokens.verifiers, principal)
                if token_id not in {k.key_id for k in fresh.keys}:
                    raise ScramAuthError("the token was revoked during the handshake")
            if services.config.principal(principal) is None:  # removed by a reload since
                raise ScramAuthError("the principal was removed during the handshake")
            ahead = build.auth_sasl_final(server_final)
            ok = True
        except ScramAuthError:
            ok = False
    if not ok:
        if retry is None:
            delay = await asyncio.to_thread(limiter.record_failure, principal, addr, tls=tls)
        else:  # already past the address's threshold: no store write per flooded login
            delay = limiter.max_delay
        log.info(
            "failed login for principal %r from %s",
            principal,
            addr,
            extra={"fields": {"event": "login.failed", "principal": principal, "client": addr}},
        )
        # Throttled: the guesser waits for its answer; a correct token is never slowed.
        await asyncio.sleep(delay)
        raise StartupRefused("28P01", GENERIC_AUTH_FAILURE.format(principal))
    if counted:  # nothing to clear otherwise: no store write on an ordinary login
        await asyncio.to_thread(limiter.record_success, principal, addr)
    if token_id and tokens.touch_due(token_id):
        services.tasks.spawn(asyncio.to_thread(tokens.touch, token_id), name="token-touch")
    return ahead


GATEWAY_OPTIONS = frozenset({"wardgate.review_wait"})


def review_wait_of(params: dict[str, str], conn: ConnectionConfig) -> float:
    """How long this session's statements wait inline for approval: the client's
    ``wardgate.review_wait`` option, capped by the connection's ``max_wait``."""
    settings = parse_options(params["options"]) if "options" in params else {}
    for key in settings:
        if key.startswith("wardgate.") and key not in GATEWAY_OPTIONS:
            raise StartupRefused(
                "42704",
                f"wardgate: unknown gateway option {key!r}",
                hint=f"Gateway options are: {', '.join(sorted(GATEWAY_OPTIONS))}.",
            )
    value = settings.get("wardgate.review_wait")
    if value is None:
        return conn.reviews.wait
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise StartupRefused(
            "22023",
            f"wardgate: wardgate.review_wait must be a duration such as 0, 10s or 2m, got {value!r}",
        ) from None
    return min(max(0.0, seconds), conn.reviews.max_wait)


def _check_search_path(value: str) -> None:
    # The server splits a startup value into schema names itself (`appfuncs, pg_catalog`
    # is two): read it the same way.
    if search_path_shadows_builtins(split_identifiers(value)):
        raise StartupRefused(
            "42501",
            "wardgate: a search_path that lists pg_catalog after another schema is not "
            "allowed: its functions would replace the built-ins the policy trusts",
            hint="Leave pg_catalog out of search_path (it is then searched first) or put it first.",
        )


def _parse_sasl_initial(payload: bytes) -> tuple[str, bytes]:
    nul = payload.find(b"\x00")
    if nul < 0 or len(payload) < nul + 5:
        raise ScramAuthError("malformed SASLInitialResponse")
    mechanism = payload[:nul].decode("ascii", "replace")
    length = int.from_bytes(payload[nul + 1 : nul + 5], "big", signed=True)
    data = payload[nul + 5 :]
    if length != len(data):
        raise ScramAuthError("malformed SASLInitialResponse")
    return mechanism, data


def negotiate_protocol(params: dict[str, str]) -> bytes:
    unknown = [k for k in params if k.startswith("_pq_.")]
    # The first field is the full version the server speaks (major << 16 | minor), as
    # PostgreSQL sends it; a bare 0 reads as "2.0" and libpq 18 gives up on the connection.
    body = (
        PROTOCOL_3_0.to_bytes(4, "big")
        + len(unknown).to_bytes(4, "big")
        + b"".join(k.encode() + b"\x00" for k in unknown)
    )
    return b"v" + (len(body) + 4).to_bytes(4, "big") + body
