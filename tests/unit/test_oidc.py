"""The OpenID Connect relying party against a provider played by an httpx.MockTransport:
ID tokens signed here with joserfc keys, a JWKS that rotates, token endpoints that
answer what each test needs. The real provider (oidc-provider-mock) is driven end to
end in tests/integration/test_oidc.py; the device flow is only tested here, since no
provider that runs locally offers it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from wardgate.cli.sso import CALLBACK_PATH, CallbackReceiver
from wardgate.config import OidcConfig
from wardgate.identity.oidc import (
    DEVICE_GRANT,
    JWKS_REFETCH_INTERVAL,
    METADATA_TTL,
    OidcClient,
    OidcError,
    map_groups,
    pkce_challenge,
)

ISSUER = "https://idp.example"
CLIENT = "wardgate"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """An identity provider as a MockTransport: discovery, JWKS, token, userinfo and
    device endpoints, counting requests per path."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.published: list[Any] = [self.key]
        self.metadata: dict[str, Any] = {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/authorize",
            "token_endpoint": ISSUER + "/token",
            "jwks_uri": ISSUER + "/jwks",
            "userinfo_endpoint": ISSUER + "/userinfo",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }
        self.hits: dict[str, int] = {}
        self.token_requests: list[httpx.Request] = []
        self.token_answers: list[tuple[int, dict[str, Any]]] = []
        self.userinfo: dict[str, Any] = {}
        self.device_answer: dict[str, Any] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.metadata)
        if path == "/jwks":
            keys = [k if isinstance(k, dict) else k.as_dict() for k in self.published]
            return httpx.Response(200, json={"keys": keys})
        if path == "/token":
            self.token_requests.append(request)
            status, body = self.token_answers.pop(0)
            return httpx.Response(status, json=body)
        if path == "/userinfo":
            return httpx.Response(200, json=self.userinfo)
        if path == "/device":
            return httpx.Response(200, json=self.device_answer)
        return httpx.Response(404)

    def sign(self, claims: dict[str, Any], key: Any = None, alg: str = "RS256", **hdr: Any) -> str:
        key = key or self.key
        header = {"alg": alg, **({"kid": key.kid} if key.kid else {}), **hdr}
        return jwt.encode(header, claims, key, algorithms=[alg])

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": ISSUER,
            "aud": CLIENT,
            "sub": "u-1",
            "iat": now,
            "exp": now + 300,
            "nonce": "n-1",
            "preferred_username": "dev",
            "groups": ["idp-eng", "idp-other"],
        }
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_for(
    provider: FakeProvider,
    clock: Clock | None = None,
    secret: str | None = None,
    **config: Any,
) -> OidcClient:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "client_id": CLIENT,
        "groups": {"idp-eng": ["engineers"], "idp-admins": ["approvers", "engineers"]},
        **config,
    }
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider.handler))
    return OidcClient(OidcConfig(**settings), secret, http=http, monotonic=clock or Clock())


def verify(client: OidcClient, token: str, **kwargs: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return await client.verify_id_token(token, **kwargs)
        finally:
            await client._client().aclose()

    return run(go())


def refused(client: OidcClient, token: str, **kwargs: Any) -> str:
    with pytest.raises(OidcError) as info:
        verify(client, token, **kwargs)
    return str(info.value)


# -- ID token validation -------------------------------------------------------------


def test_a_valid_id_token(provider: FakeProvider) -> None:
    claims = verify(client_for(provider), provider.sign(provider.claims()), nonce="n-1")
    assert claims["sub"] == "u-1" and claims["preferred_username"] == "dev"


@dataclass(frozen=True)
class FromNow:
    """A time relative to when the test runs (not to collection, which can be minutes
    earlier in a full run)."""

    seconds: int


@pytest.mark.parametrize(
    ("changes", "kwargs", "said"),
    [
        ({"iss": "https://evil.example"}, {}, "issued by someone else"),
        ({"aud": "another-client"}, {}, "issued for another client"),
        ({"aud": [CLIENT, "other"]}, {}, "another client (azp)"),
        ({"azp": "other"}, {}, "another client (azp)"),
        ({"nonce": "n-2"}, {"nonce": "n-1"}, "nonce"),
        ({"nonce": None}, {"nonce": "n-1"}, "nonce"),
        ({"exp": FromNow(-120)}, {}, "has expired"),
        ({"iat": FromNow(600)}, {}, "in the future"),
        ({"iat": FromNow(-900)}, {"max_age": 600}, "too old"),
        ({"sub": None}, {}, "no subject"),
        ({"exp": "tomorrow"}, {}, "no valid exp"),
    ],
)
def test_id_token_claims_that_fail(
    provider: FakeProvider, changes: dict[str, Any], kwargs: dict[str, Any], said: str
) -> None:
    now = int(time.time())
    changes = {k: now + v.seconds if isinstance(v, FromNow) else v for k, v in changes.items()}
    token = provider.sign(provider.claims(**changes))
    assert said in refused(client_for(provider), token, **kwargs)


def test_a_second_audience_is_fine_with_azp(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims(aud=[CLIENT, "api"], azp=CLIENT))
    assert verify(client_for(provider), token)["azp"] == CLIENT


def test_the_clock_leeway(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims(exp=int(time.time()) - 30))
    assert verify(client_for(provider), token)["sub"] == "u-1"


def test_an_expired_token_may_name_the_subject_only_when_asked(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims(exp=int(time.time()) - 3600))
    assert verify(client_for(provider), token, check_exp=False)["sub"] == "u-1"


def test_another_audience_when_asked(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims(aud="wardgate-cli"))
    assert verify(client_for(provider), token, audience="wardgate-cli")["aud"] == "wardgate-cli"
    assert "another client" in refused(client_for(provider), token)


def _unsigned(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


def test_alg_none_is_refused_even_when_announced(provider: FakeProvider) -> None:
    provider.metadata["id_token_signing_alg_values_supported"] = ["none", "RS256"]
    message = refused(client_for(provider), _unsigned(provider.claims()))
    assert "'none'" in message
    assert provider.hits.get("/jwks") is None  # refused before any key is fetched


def test_hmac_with_the_client_secret_is_refused(provider: FakeProvider) -> None:
    provider.metadata["id_token_signing_alg_values_supported"] = ["HS256", "RS256"]
    key = OctKey.import_key("the-client-secret-the-client-secret")
    token = jwt.encode({"alg": "HS256"}, provider.claims(), key, algorithms=["HS256"])
    assert "'HS256'" in refused(client_for(provider, secret="the-client-secret"), token)


def test_an_algorithm_the_provider_does_not_announce(provider: FakeProvider) -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec1"})
    provider.published.append(ec)
    token = provider.sign(provider.claims(), key=ec, alg="ES256")
    assert verify(client_for(provider), token)["sub"] == "u-1"
    provider.metadata["id_token_signing_alg_values_supported"] = ["RS256"]
    assert "'ES256'" in refused(client_for(provider), token)


def test_a_forged_signature(provider: FakeProvider) -> None:
    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, other key
    assert "signature is not valid" in refused(
        client_for(provider), provider.sign(provider.claims(), key=forger)
    )


def test_a_key_of_the_wrong_type_for_the_alg(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims())
    parts = token.split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": "k1"}).encode())
    forged = ".".join([header.rstrip(b"=").decode(), *parts[1:]])
    assert "does not publish" in refused(client_for(provider), forged)


@pytest.mark.parametrize(
    ("token", "said"),
    [
        ("not-a-jwt", "not an ID token"),
        ("a.b.c.d.e", "encrypted ID tokens"),
        ("!!!.b.c", "not an ID token"),
        ("x" * 20000, "too large"),
    ],
)
def test_garbage(provider: FakeProvider, token: str, said: str) -> None:
    assert said in refused(client_for(provider), token)


def test_messages_never_carry_the_token(provider: FakeProvider) -> None:
    token = provider.sign(provider.claims(aud="other"))
    message = refused(client_for(provider), token)
    assert token not in message and token.split(".")[1] not in message


# -- keys: cache, rotation, hammering ------------------------------------------------


def test_key_rotation_refetches_the_jwks_once(provider: FakeProvider, clock: Clock) -> None:
    client = client_for(provider, clock)
    first = provider.sign(provider.claims())
    new_key = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    rotated = provider.sign(provider.claims(), key=new_key)
    stray = provider.sign(
        provider.claims(), key=RSAKey.generate_key(2048, parameters={"kid": "k3"})
    )

    async def go() -> None:
        try:
            await client.verify_id_token(first)
            assert provider.hits["/jwks"] == 1
            await client.verify_id_token(first)  # cached
            assert provider.hits["/jwks"] == 1

            provider.published = [provider.key, new_key]  # the provider rotates
            clock.now += JWKS_REFETCH_INTERVAL + 1
            assert (await client.verify_id_token(rotated))["sub"] == "u-1"
            assert provider.hits["/jwks"] == 2

            # An unknown kid right after a fetch: no refetch, refused.
            for _ in range(5):
                with pytest.raises(OidcError, match="does not publish"):
                    await client.verify_id_token(stray)
            assert provider.hits["/jwks"] == 2

            clock.now += JWKS_REFETCH_INTERVAL + 1
            with pytest.raises(OidcError, match="does not publish"):
                await client.verify_id_token(stray)
            assert provider.hits["/jwks"] == 3  # one more look, then still closed
            assert provider.hits["/.well-known/openid-configuration"] == 1
        finally:
            await client._client().aclose()

    run(go())


def test_a_kid_less_token_needs_exactly_one_key(provider: FakeProvider) -> None:
    provider.key = RSAKey.generate_key(2048)
    provider.published = [provider.key]
    token = jwt.encode({"alg": "RS256"}, provider.claims(), provider.key, algorithms=["RS256"])
    assert verify(client_for(provider), token)["sub"] == "u-1"
    provider.published = [provider.key, RSAKey.generate_key(2048)]
    assert "does not publish" in refused(client_for(provider), token)


def test_encryption_keys_do_not_verify(provider: FakeProvider) -> None:
    provider.published = [{**provider.key.as_dict(), "use": "enc"}]
    assert "does not publish" in refused(client_for(provider), provider.sign(provider.claims()))


# -- discovery -----------------------------------------------------------------------


def test_discovery_must_name_the_configured_issuer(provider: FakeProvider) -> None:
    provider.metadata["issuer"] = "https://other.example"
    message = refused(client_for(provider), provider.sign(provider.claims()))
    assert "names another issuer" in message and "https://other.example" in message


def test_an_https_issuer_may_not_point_at_plain_http(provider: FakeProvider) -> None:
    provider.metadata["token_endpoint"] = "http://idp.example/token"
    assert "no usable token_endpoint" in refused(
        client_for(provider), provider.sign(provider.claims())
    )


def test_discovery_is_cached_for_an_hour(provider: FakeProvider, clock: Clock) -> None:
    client = client_for(provider, clock)

    async def go() -> None:
        try:
            await client.metadata()
            await client.metadata()
            assert provider.hits["/.well-known/openid-configuration"] == 1
            clock.now += METADATA_TTL + 1
            await client.metadata()
            assert provider.hits["/.well-known/openid-configuration"] == 2
        finally:
            await client._client().aclose()

    run(go())


def test_an_unreachable_provider() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(down))
    client = OidcClient(OidcConfig(issuer=ISSUER, client_id=CLIENT), None, http=http)

    async def go() -> None:
        try:
            with pytest.raises(OidcError, match="did not answer the discovery document"):
                await client.metadata()
        finally:
            await http.aclose()

    run(go())


# -- identity and groups -------------------------------------------------------------


def test_identity_maps_groups(provider: FakeProvider) -> None:
    client = client_for(provider)
    me = client.identity(provider.claims(groups=["idp-eng", "idp-admins", "unmapped"]))
    assert (me.subject, me.username) == ("u-1", "dev")
    assert me.groups == frozenset({"engineers", "approvers"})
    assert me.claims["preferred_username"] == "dev"


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        (["idp-eng"], {"engineers"}),
        ("idp-eng idp-admins", {"engineers", "approvers"}),
        ("idp-admins,idp-eng", {"engineers", "approvers"}),
        (["unmapped", 7, None], set()),
        ({"idp-eng": True}, set()),
        (None, set()),
    ],
)
def test_groups_claim_shapes(value: object, groups: set[str]) -> None:
    mapping = {"idp-eng": ["engineers"], "idp-admins": ["approvers", "engineers"]}
    assert map_groups(value, mapping) == groups


def test_another_username_and_groups_claim(provider: FakeProvider) -> None:
    client = client_for(provider, username_claim="email", groups_claim="roles")
    me = client.identity(provider.claims(email="dev@example.com", roles="idp-eng"))
    assert me.username == "dev@example.com" and me.groups == {"engineers"}


@pytest.mark.parametrize("name", [None, "", " dev", "dev\x1b[2J", "x" * 201, 42])
def test_a_missing_or_odd_username_is_refused(provider: FakeProvider, name: object) -> None:
    claims = provider.claims()
    claims["preferred_username"] = name
    if name is None:
        del claims["preferred_username"]
    with pytest.raises(OidcError, match="preferred_username"):
        client_for(provider).identity(claims)


# -- the code flow -------------------------------------------------------------------


def test_pkce_challenge_rfc7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_start_asks_for_a_code_with_pkce(provider: FakeProvider) -> None:
    client = client_for(provider, scopes=["profile", "groups"])

    async def go() -> tuple[Any, Any]:
        try:
            return await client.start("https://gw/ui/oidc/callback"), await client.start("x")
        finally:
            await client._client().aclose()

    started, other = run(go())
    url = urlsplit(started.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == ISSUER + "/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query == {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": "https://gw/ui/oidc/callback",
        "scope": "openid profile groups",
        "state": started.state,
        "nonce": started.nonce,
        "code_challenge": pkce_challenge(started.verifier),
        "code_challenge_method": "S256",
    }
    assert 43 <= len(started.verifier) <= 128
    assert len({started.state, started.nonce, other.state, other.nonce}) == 4
    assert started.verifier not in repr(started)


def _finish(provider: FakeProvider, secret: str | None, **config: Any) -> Any:
    provider.token_answers.append(
        (
            200,
            {
                "access_token": "at-1",
                "token_type": "Bearer",
                "id_token": provider.sign(provider.claims()),
                "refresh_token": "rt-1",
            },
        )
    )
    client = client_for(provider, secret=secret, **config)

    async def go() -> Any:
        try:
            return await client.finish("https://gw/cb", "the-code", verifier="v" * 50, nonce="n-1")
        finally:
            await client._client().aclose()

    return run(go())


def test_finish_as_a_confidential_client(provider: FakeProvider) -> None:
    me = _finish(provider, "s3cret/+")
    assert me.username == "dev" and me.groups == {"engineers"}
    request = provider.token_requests[-1]
    form = parse_qs(request.content.decode())
    assert form == {
        "grant_type": ["authorization_code"],
        "code": ["the-code"],
        "redirect_uri": ["https://gw/cb"],
        "code_verifier": ["v" * 50],
    }
    # client_secret_basic, both parts form-urlencoded (RFC 6749 2.3.1).
    expected = base64.b64encode(b"wardgate:s3cret%2F%2B").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


def test_finish_with_client_secret_post_when_that_is_all_there_is(
    provider: FakeProvider,
) -> None:
    provider.metadata["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
    _finish(provider, "s3cret")
    request = provider.token_requests[-1]
    form = parse_qs(request.content.decode())
    assert form["client_id"] == [CLIENT] and form["client_secret"] == ["s3cret"]
    assert "authorization" not in request.headers


def test_finish_as_a_public_client(provider: FakeProvider) -> None:
    _finish(provider, None)
    request = provider.token_requests[-1]
    assert parse_qs(request.content.decode())["client_id"] == [CLIENT]
    assert "authorization" not in request.headers


def test_a_refused_code_says_why_without_the_code(provider: FakeProvider) -> None:
    provider.token_answers.append(
        (400, {"error": "invalid_grant", "error_description": "code abc123 expired"})
    )
    client = client_for(provider)

    async def go() -> None:
        try:
            await client.finish("https://gw/cb", "abc123", verifier="v" * 50, nonce="n-1")
        finally:
            await client._client().aclose()

    with pytest.raises(OidcError) as info:
        run(go())
    assert "invalid_grant" in str(info.value) and "sign in again" in str(info.value)
    assert "abc123" not in str(info.value)


def test_no_id_token_in_the_answer(provider: FakeProvider) -> None:
    provider.token_answers.append((200, {"access_token": "at", "token_type": "Bearer"}))
    client = client_for(provider)

    async def go() -> None:
        try:
            await client.finish("https://gw/cb", "c", verifier="v" * 50, nonce="n-1")
        finally:
            await client._client().aclose()

    with pytest.raises(OidcError, match="no ID token"):
        run(go())


# -- refresh -------------------------------------------------------------------------


def test_refresh_and_renewal_through_userinfo(provider: FakeProvider) -> None:
    old = provider.sign(provider.claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))
    provider.token_answers.append((200, {"access_token": "at-2", "token_type": "Bearer"}))
    provider.userinfo = {"sub": "u-1", "groups": ["idp-admins"], "iss": "https://evil"}
    client = client_for(provider)

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            tokens = await client.refresh("rt-1")
            claims = await client.refreshed_claims(
                old, tokens["access_token"], audience=CLIENT, max_age=86400
            )
            return tokens, claims
        finally:
            await client._client().aclose()

    tokens, claims = run(go())
    assert tokens["access_token"] == "at-2"
    form = parse_qs(provider.token_requests[-1].content.decode())
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["rt-1"]
    assert claims["iss"] == ISSUER  # userinfo cannot change who issued
    assert client.identity(claims).groups == {"approvers", "engineers"}  # fresh groups


@pytest.mark.parametrize(
    ("userinfo", "max_age", "said"),
    [
        ({"sub": "someone-else"}, 86400, "someone else"),
        ({"sub": "u-1"}, 60, "too old"),
    ],
)
def test_renewal_refused(
    provider: FakeProvider, userinfo: dict[str, Any], max_age: float, said: str
) -> None:
    old = provider.sign(provider.claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))
    provider.userinfo = userinfo
    client = client_for(provider)

    async def go() -> None:
        try:
            await client.refreshed_claims(old, "at", audience=CLIENT, max_age=max_age)
        finally:
            await client._client().aclose()

    with pytest.raises(OidcError, match=said):
        run(go())


# -- the device flow (RFC 8628) ------------------------------------------------------
# Tested against the MockTransport only: oidc-provider-mock has no device endpoint and
# no other provider runs locally in the tests.


def _device_client(provider: FakeProvider) -> OidcClient:
    provider.metadata["device_authorization_endpoint"] = ISSUER + "/device"
    provider.device_answer = {
        "device_code": "dc-secret",
        "user_code": "WDJB-MJHT",
        "verification_uri": ISSUER + "/activate",
        "verification_uri_complete": ISSUER + "/activate?user_code=WDJB-MJHT",
        "expires_in": 600,
        "interval": 2,
    }
    return client_for(provider)


def _poll(client: OidcClient, sleeps: list[float]) -> Callable[[], Any]:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go() -> Any:
        try:
            device = await client.start_device()
            return device, await client.poll_device(device, sleep=sleep)
        finally:
            await client._client().aclose()

    return lambda: run(go())


def test_device_flow(provider: FakeProvider) -> None:
    client = _device_client(provider)
    id_token = provider.sign(provider.claims(nonce=None))
    provider.token_answers += [
        (400, {"error": "authorization_pending"}),
        (400, {"error": "slow_down"}),
        (400, {"error": "authorization_pending"}),
        (200, {"access_token": "at", "token_type": "Bearer", "id_token": id_token}),
    ]
    sleeps: list[float] = []
    device, tokens = _poll(client, sleeps)()
    assert device.user_code == "WDJB-MJHT" and device.verification_uri == ISSUER + "/activate"
    assert "dc-secret" not in repr(device)
    assert tokens["id_token"] == id_token
    assert sleeps == [2, 2, 7, 7]  # slow_down adds 5 s from then on
    form = parse_qs(provider.token_requests[-1].content.decode())
    assert form == {
        "grant_type": [DEVICE_GRANT],
        "device_code": ["dc-secret"],
        "client_id": [CLIENT],
    }


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("access_denied", "declined"),
        ("expired_token", "expired"),
        ("invalid_client", "invalid_client"),
    ],
)
def test_device_flow_ends(provider: FakeProvider, error: str, said: str) -> None:
    client = _device_client(provider)
    provider.token_answers += [(400, {"error": "authorization_pending"}), (400, {"error": error})]
    with pytest.raises(OidcError, match=said):
        _poll(client, [])()


def test_device_flow_gives_up_when_the_code_expires(provider: FakeProvider) -> None:
    client = _device_client(provider)
    provider.device_answer["expires_in"] = 5
    clock = client._monotonic
    assert isinstance(clock, Clock)
    provider.token_answers += [(400, {"error": "authorization_pending"})] * 3

    async def sleep(seconds: float) -> None:
        clock.now += seconds

    async def go() -> None:
        try:
            await client.poll_device(await client.start_device(), sleep=sleep)
        finally:
            await client._client().aclose()

    with pytest.raises(OidcError, match="expired before it was used"):
        run(go())
    assert len(provider.token_requests) == 2


def test_no_device_endpoint(provider: FakeProvider) -> None:
    client = client_for(provider)

    async def go() -> None:
        try:
            await client.start_device()
        finally:
            await client._client().aclose()

    with pytest.raises(OidcError, match="does not offer the device flow"):
        run(go())


# -- the CLI's loopback listener -----------------------------------------------------


def test_the_loopback_receiver_takes_only_its_own_answer() -> None:
    async def go() -> None:
        receiver = CallbackReceiver()
        receiver.state = "s-1"
        path = CALLBACK_PATH.encode()
        assert receiver.respond(b"GET", b"/favicon.ico")[0] == 404
        assert receiver.respond(b"POST", path + b"?state=s-1&code=c")[0] == 405
        assert receiver.respond(b"GET", path + b"?state=s-2&code=c")[0] == 400
        assert receiver.respond(b"GET", path + b"?code=c")[0] == 400
        assert not receiver.answer.done()
        assert receiver.respond(b"GET", path + b"?state=s-1&code=c-1")[0] == 200
        assert receiver.answer.result().code == "c-1"
        assert receiver.respond(b"GET", path + b"?state=s-1&code=c-2")[0] == 409
        assert receiver.answer.result().code == "c-1"

        denied = CallbackReceiver()
        denied.state = "s-1"
        status, text = denied.respond(
            b"GET", path + b"?state=s-1&error=access_denied&error_description=no%1b"
        )
        assert status == 401 and "access_denied" in text and "\x1b" not in text
        assert denied.answer.result().error.startswith("access_denied: no")

        # An error without a state ends the wait (some providers drop it); with another
        # state it is ignored.
        stray = CallbackReceiver()
        stray.state = "s-1"
        assert stray.respond(b"GET", path + b"?state=s-2&error=access_denied")[0] == 400
        assert not stray.answer.done()
        assert stray.respond(b"GET", path + b"?error=access_denied")[0] == 401
        assert stray.answer.result().error == "access_denied"

    run(go())
