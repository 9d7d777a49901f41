"""An OpenID Connect relying party: issuer discovery, authorization code with PKCE,
ID token validation against the provider's published keys, refresh, userinfo and the
device authorization grant (RFC 8628).

The gateway uses it to sign humans in to the web UI and to check the ID tokens that
``wardgate login --sso`` exchanges for a session; the CLI uses it to sign in at the
provider. It fails closed: a discovery document naming another issuer, an unknown
signing key, an algorithm the provider does not announce (never ``none``, never a
shared-secret HMAC), a wrong audience, nonce or lifetime all end the sign-in.

Every `OidcError` message can be shown to the person signing in: it never contains a
token, code, verifier or secret, and says what to do next.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

HTTP_TIMEOUT = 10.0  # every request to the provider, start to last byte
METADATA_TTL = 3600.0
JWKS_TTL = 3600.0
# An ID token signed with a key we do not know makes us fetch the JWKS again (the
# provider rotated its keys), but not more often than this: garbage tokens with random
# key ids must not turn the gateway into a JWKS hammer.
JWKS_REFETCH_INTERVAL = 60.0
CLOCK_LEEWAY = 60  # seconds of clock skew tolerated on exp and iat
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_TOKEN_CHARS = 16 * 1024
MAX_USERNAME_CHARS = 200
# Asymmetric signatures only: HS* would make the client secret a signing key, "none" is
# no signature at all.
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519"}
)
_KEY_TYPE_OF_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_SLOW_DOWN = 5.0  # RFC 8628 section 3.5: add 5 s to the interval on slow_down
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


class OidcError(Exception):
    """Single sign-on failed; the message is safe to show and says what to do."""


@dataclass(frozen=True)
class StartedLogin:
    """Where to send the browser, and what must come back (kept by the caller)."""

    url: str
    state: str
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)


@dataclass(frozen=True)
class OidcIdentity:
    subject: str
    username: str
    groups: frozenset[str]  # wardgate groups, after web.oidc.groups mapping
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class DeviceLogin:
    """A started device authorization: show ``user_code`` and ``verification_uri``."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    device_code: str = field(repr=False)


# -- pure helpers ---------------------------------------------------------------------


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def said(text: object, limit: int = 200) -> str:
    """A provider's own words, printable and short, for an error message."""
    return _PRINTABLE.sub("?", str(text))[:limit]


def map_groups(value: object, mapping: Mapping[str, list[str]]) -> frozenset[str]:
    """wardgate groups for a groups claim (a list, or one space or comma separated
    string); provider groups the mapping does not name are ignored."""
    if isinstance(value, str):
        names = [n for n in re.split(r"[\s,]+", value) if n]
    elif isinstance(value, list):
        names = [n for n in value if isinstance(n, str)]
    else:
        names = []
    return frozenset(g for name in names for g in mapping.get(name, ()))


def check_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    now: float,
    nonce: str | None = None,
    check_exp: bool = True,
    max_age: float | None = None,
) -> None:
    """OpenID Connect Core 3.1.3.7 checks of a signature-verified ID token's claims."""
    if claims.get("iss") != issuer:
        raise OidcError(
            "the ID token was issued by someone else than web.oidc.issuer; check that "
            "the issuer is spelled exactly as the provider announces it"
        )
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise OidcError(
            "the ID token was issued for another client; check web.oidc.client_id "
            "(or cli_client_id for wardgate login)"
        )
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != audience:
        raise OidcError("the ID token was issued to another client (azp); sign in again")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise OidcError("the ID token names no subject (sub); the provider is misbehaving")
    exp: Any = claims.get("exp")
    iat: Any = claims.get("iat")
    if not _number(exp) or not _number(iat):
        raise OidcError("the ID token has no valid exp or iat time; sign in again")
    if check_exp and now > exp + CLOCK_LEEWAY:
        raise OidcError("the ID token has expired: sign in again (check the clocks if it persists)")
    if iat > now + CLOCK_LEEWAY:
        raise OidcError("the ID token was issued in the future: check the clocks and sign in again")
    if max_age is not None and now - iat > max_age + CLOCK_LEEWAY:
        raise OidcError("the ID token is too old to start a session with: sign in again")
    if nonce is not None:
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, nonce):
            raise OidcError("the sign-in answer does not match this sign-in (nonce); start again")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _segment(part: str) -> dict[str, Any]:
    data = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    if not isinstance(data, dict):
        raise ValueError("not an object")
    return data


def token_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, unverified (to choose the key and check alg)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise OidcError("the ID token is too large")
    parts = token.split(".")
    if len(parts) == 5:
        raise OidcError("encrypted ID tokens are not supported: ask for signed ones")
    if len(parts) != 3:
        raise OidcError("that is not an ID token (a signed JWT)")
    try:
        return _segment(parts[0])
    except ValueError:
        raise OidcError("that is not an ID token (its header is not JSON)") from None


def pick_key(keys: KeySet, kid: str | None, alg: str) -> Key | None:
    """The published key that may have signed with ``alg`` under ``kid``."""
    kty = _KEY_TYPE_OF_ALG.get(alg[:2])
    usable = [
        k
        for k in keys
        if k.key_type == kty
        and k.get("use") in (None, "sig")
        and k.get("alg") in (None, alg)
        and (kid is None or k.kid == kid)
    ]
    # Without a kid the choice must be unambiguous; with one, it names exactly one key.
    return usable[0] if len(usable) == 1 else None


def _oauth_error(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    error, description = data.get("error"), data.get("error_description")
    return (
        said(error, 60) if isinstance(error, str) else "",
        said(description) if isinstance(description, str) else "",
    )


def parse_token_response(
    status: int, body: bytes, what: str, hide: Collection[str] = ()
) -> dict[str, Any]:
    """A token endpoint's answer (RFC 6749 section 5), or OidcError with its reason
    (in which none of ``hide``, the code or token sent, is repeated)."""
    if status != 200:
        error, description = _oauth_error(body)
        for value in hide:
            if value:
                description = description.replace(value, "[hidden]")
        reason = f"{error}: {description}" if error and description else error or f"HTTP {status}"
        hint = (
            "sign in again"
            if error in ("invalid_grant", "expired_token", "access_denied")
            else "check web.oidc (client id and secret, redirect URI) and the provider's logs"
        )
        raise OidcError(f"the identity provider refused the {what} ({reason}); {hint}")
    try:
        tokens = json.loads(body)
    except ValueError:
        tokens = None
    if not isinstance(tokens, dict):
        raise OidcError(f"the identity provider's answer to the {what} is not a JSON object")
    for name in ("access_token", "id_token", "refresh_token"):
        if name in tokens and not isinstance(tokens[name], str):
            raise OidcError(f"the identity provider's answer to the {what} is malformed")
    return tokens


def _https_like(url: object, issuer: str) -> bool:
    if not isinstance(url, str):
        return False
    scheme = urlsplit(url).scheme
    # An https issuer must not send us to plain http for its endpoints.
    return scheme == "https" or (scheme == "http" and issuer.startswith("http://"))


# -- the client -----------------------------------------------------------------------


class OidcSettings(Protocol):
    """What the client reads of its provider's settings: ``web.oidc`` in the
    configuration (wardgate.config.OidcConfig), which identity does not import."""

    @property
    def issuer(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def scopes(self) -> Sequence[str]: ...
    @property
    def username_claim(self) -> str: ...
    @property
    def groups_claim(self) -> str: ...
    @property
    def groups(self) -> Mapping[str, list[str]]: ...


class OidcClient:
    """One provider, one client id. Caches the discovery document and the JWKS."""

    def __init__(
        self,
        config: OidcSettings,
        client_secret: str | None,
        *,
        http: httpx.AsyncClient | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._secret = client_secret or None
        self._http = http
        self._own_http = http is None
        self._monotonic = monotonic
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.config.issuer!r}, client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        return self.config.client_id

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- HTTP --------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)
        return self._http

    async def _fetch(
        self, method: str, url: str, what: str, **kwargs: Any
    ) -> tuple[int, bytes, str]:
        """Status, body (at most MAX_DOCUMENT_BYTES) and content type, within HTTP_TIMEOUT."""
        http = self._client()
        try:
            async with asyncio.timeout(HTTP_TIMEOUT):
                request = http.build_request(method, url, **kwargs)
                response = await http.send(request, stream=True)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise OidcError(f"the identity provider's {what} answer is too large")
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise OidcError(
                f"the identity provider did not answer the {what} request within "
                f"{HTTP_TIMEOUT:g} s; try again later"
            ) from None
        except httpx.HTTPError as exc:
            raise OidcError(
                f"the identity provider could not be reached for the {what} "
                f"({type(exc).__name__}: {said(exc, 120)}); check web.oidc.issuer and the network"
            ) from None
        return response.status_code, bytes(body), response.headers.get("content-type", "")

    async def _get_json(self, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        status, body, _ = await self._fetch("GET", url, what, **kwargs)
        if status != 200:
            raise OidcError(f"the identity provider answered HTTP {status} for the {what}")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OidcError(f"the identity provider's {what} is not a JSON object")
        return data

    def _authenticate(self, form: dict[str, str], metadata: Mapping[str, Any]) -> dict[str, str]:
        """Client authentication at the token endpoint: client_secret_basic when there
        is a secret (client_secret_post if that is all the provider takes), else the
        client id alone (a public client, PKCE)."""
        if self._secret is None:
            form["client_id"] = self.client_id
            return {}
        methods = metadata.get("token_endpoint_auth_methods_supported") or []
        if "client_secret_basic" not in methods and "client_secret_post" in methods:
            form["client_id"] = self.client_id
            form["client_secret"] = self._secret
            return {}
        # RFC 6749 section 2.3.1: both parts form-urlencoded before base64.
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    async def _token_request(self, form: dict[str, str], what: str) -> dict[str, Any]:
        metadata = await self.metadata()
        headers = {"Accept": "application/json", **self._authenticate(form, metadata)}
        status, body, _ = await self._fetch(
            "POST", metadata["token_endpoint"], what, data=form, headers=headers
        )
        sent = [form.get(k, "") for k in ("code", "code_verifier", "refresh_token", "device_code")]
        return parse_token_response(status, body, what, hide=sent)

    # -- discovery and keys ------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, checked and cached for METADATA_TTL."""
        async with self._lock:
            now = self._monotonic()
            if self._metadata is None or now - self._metadata_at >= METADATA_TTL:
                self._metadata = await self._discover()
                self._metadata_at = self._monotonic()
            return self._metadata

    async def _discover(self) -> dict[str, Any]:
        issuer = self.config.issuer
        doc = await self._get_json(
            issuer + "/.well-known/openid-configuration", "discovery document"
        )
        announced = doc.get("issuer")
        if not isinstance(announced, str) or announced.rstrip("/") != issuer:
            raise OidcError(
                f"the discovery document at {issuer} names another issuer "
                f"({said(announced, 100)!r}); set web.oidc.issuer to exactly that value"
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not _https_like(doc.get(name), issuer):
                raise OidcError(
                    f"the provider's discovery document has no usable {name}; is "
                    f"{issuer} an OpenID Connect issuer?"
                )
        for name in ("userinfo_endpoint", "device_authorization_endpoint"):
            if name in doc and not _https_like(doc[name], issuer):
                del doc[name]
        return doc

    def _algorithms(self, metadata: Mapping[str, Any]) -> frozenset[str]:
        announced = metadata.get("id_token_signing_alg_values_supported")
        # Discovery 1.0: RS256 must be supported, so it is the default when not listed.
        names = announced if isinstance(announced, list) else ["RS256"]
        return frozenset(n for n in names if isinstance(n, str)) & SIGNING_ALGORITHMS

    async def _load_jwks(self, uri: str) -> None:
        data = await self._get_json(uri, "signing keys (JWKS)")
        if not isinstance(data.get("keys"), list):
            raise OidcError("the identity provider's JWKS has no keys")
        try:
            keys = KeySet.import_key_set({"keys": data["keys"]})
        except (JoseError, ValueError, TypeError, KeyError):
            raise OidcError("the identity provider's JWKS holds no usable key") from None
        self._jwks, self._jwks_at = keys, self._monotonic()

    async def _signing_key(self, uri: str, kid: str | None, alg: str) -> Key:
        async with self._lock:
            if self._jwks is None or self._monotonic() - self._jwks_at >= JWKS_TTL:
                await self._load_jwks(uri)
            assert self._jwks is not None
            key = pick_key(self._jwks, kid, alg)
            if key is None and self._monotonic() - self._jwks_at >= JWKS_REFETCH_INTERVAL:
                await self._load_jwks(uri)  # the provider may have rotated its keys
                key = pick_key(self._jwks, kid, alg)
        if key is None:
            raise OidcError(
                "the ID token is signed with a key the identity provider does not publish; "
                "sign in again in a minute"
            )
        return key

    # -- ID tokens ---------------------------------------------------------------------

    async def verify_id_token(
        self,
        token: str,
        *,
        nonce: str | None = None,
        audience: str | None = None,
        max_age: float | None = None,
        check_exp: bool = True,
    ) -> dict[str, Any]:
        """The claims of a valid ID token: signed by a published key with an announced
        asymmetric algorithm, from our issuer, for ``audience`` (default our client id),
        within its lifetime (and ``max_age`` seconds of its issue), with ``nonce``."""
        header = token_header(token)
        metadata = await self.metadata()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms(metadata):
            raise OidcError(
                f"the ID token is signed with {said(alg, 20)!r}, which the provider does not "
                "announce or wardgate does not accept; sign in again"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise OidcError("that is not an ID token (bad key id)")
        key = await self._signing_key(metadata["jwks_uri"], kid, alg)
        try:
            claims = dict(jwt.decode(token, key, algorithms=[alg]).claims)
        except (JoseError, ValueError):
            raise OidcError("the ID token's signature is not valid; sign in again") from None
        check_claims(
            claims,
            issuer=metadata["issuer"],
            audience=audience or self.client_id,
            now=time.time(),
            nonce=nonce,
            check_exp=check_exp,
            max_age=max_age,
        )
        return claims

    def identity(self, claims: Mapping[str, Any]) -> OidcIdentity:
        """Who the claims name: the user name claim and the mapped groups."""
        claim = self.config.username_claim
        name = claims.get(claim)
        if not isinstance(name, str) or not name:
            raise OidcError(
                f"the identity provider sent no {claim!r} claim: ask its administrator to "
                f"release it to this client, or set web.oidc.username_claim to a claim it sends"
            )
        if name != name.strip() or _PRINTABLE.search(name) or len(name) > MAX_USERNAME_CHARS:
            raise OidcError(f"the {claim!r} claim is not a usable user name")
        groups = map_groups(claims.get(self.config.groups_claim), self.config.groups)
        return OidcIdentity(
            str(claims.get("sub", "")), name, groups, MappingProxyType(dict(claims))
        )

    # -- flows -------------------------------------------------------------------------

    async def start(self, redirect_uri: str) -> StartedLogin:
        """An authorization code request with PKCE (S256), a fresh state and nonce."""
        metadata = await self.metadata()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        scopes = list(self.config.scopes)
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(metadata["authorization_endpoint"])
        url = endpoint + ("&" if "?" in endpoint else "?") + query
        return StartedLogin(url, state, nonce, verifier)

    async def redeem(self, redirect_uri: str, code: str, *, verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (with an ID token in it)."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        tokens = await self._token_request(form, "sign-in (code exchange)")
        if not isinstance(tokens.get("id_token"), str):
            raise OidcError(
                "the identity provider sent no ID token: add the openid scope to web.oidc.scopes"
            )
        return tokens

    async def finish(
        self, redirect_uri: str, code: str, *, verifier: str, nonce: str
    ) -> OidcIdentity:
        """Redeem the code and check the ID token that comes back."""
        tokens = await self.redeem(redirect_uri, code, verifier=verifier)
        claims = await self.verify_id_token(tokens["id_token"], nonce=nonce)
        return self.identity(claims)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """New tokens for a refresh token (an ID token among them if the provider
        sends one: OpenID Connect Core 12.2 lets it leave it out)."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(form, "renewal (refresh)")

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        metadata = await self.metadata()
        endpoint = metadata.get("userinfo_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError("the identity provider has no userinfo endpoint; sign in again")
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        status, body, ctype = await self._fetch("GET", endpoint, "userinfo", headers=headers)
        if status != 200:
            raise OidcError(f"the identity provider refused the userinfo request (HTTP {status})")
        if "json" not in ctype:
            raise OidcError("the identity provider's userinfo is not plain JSON (signed JWT?)")
        try:
            info = json.loads(body)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise OidcError("the identity provider's userinfo is not a JSON object")
        return info

    async def refreshed_claims(
        self, previous_id_token: str, access_token: str, *, audience: str, max_age: float
    ) -> dict[str, Any]:
        """Claims after a refresh that brought no new ID token: the previous ID token
        (signature, issuer, audience; issued within ``max_age`` but possibly expired)
        names the subject, and the userinfo the new access token opens must be that
        same subject (OpenID Connect Core 5.3.2). Userinfo claims win, so group changes
        at the provider apply."""
        claims = await self.verify_id_token(
            previous_id_token, audience=audience, max_age=max_age, check_exp=False
        )
        info = await self.userinfo(access_token)
        if info.get("sub") != claims["sub"]:
            raise OidcError("the renewed sign-in is for someone else; sign in again")
        fixed = {"iss", "aud", "azp", "exp", "iat", "nbf", "nonce", "sub", "auth_time"}
        return {**claims, **{k: v for k, v in info.items() if k not in fixed}}

    # -- device authorization grant (RFC 8628) -----------------------------------------

    async def start_device(self) -> DeviceLogin:
        metadata = await self.metadata()
        endpoint = metadata.get("device_authorization_endpoint")
        if not isinstance(endpoint, str):
            raise OidcError("the identity provider does not offer the device flow")
        scopes = list(self.config.scopes)
        if "openid" not in scopes:
            scopes.insert(0, "openid")
        form = {"scope": " ".join(scopes)}
        headers = {"Accept": "application/json", **self._authenticate(form, metadata)}
        status, body, _ = await self._fetch(
            "POST", endpoint, "device sign-in", data=form, headers=headers
        )
        data = parse_token_response(status, body, "device sign-in")
        uri = data.get("verification_uri") or data.get("verification_url")
        complete = data.get("verification_uri_complete")
        device_code, user_code = data.get("device_code"), data.get("user_code")
        expires_in: Any = data.get("expires_in")
        interval: Any = data.get("interval", 5)
        if (
            not isinstance(device_code, str)
            or not isinstance(user_code, str)
            or not _https_like(uri, self.config.issuer)
            or not _number(expires_in)
            or not _number(interval)
        ):
            raise OidcError("the identity provider's device sign-in answer is malformed")
        assert isinstance(uri, str)
        if not _https_like(complete, self.config.issuer):
            complete = None
        return DeviceLogin(
            said(user_code, 40),
            uri,
            complete,
            float(expires_in),
            max(float(interval), 0.0),
            device_code,
        )

    async def poll_device(
        self,
        device: DeviceLogin,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> dict[str, Any]:
        """Poll the token endpoint until the human approved (tokens), declined or the
        code expired (OidcError), at the interval the provider asks for."""
        deadline = self._monotonic() + device.expires_in
        interval = device.interval
        form = {"grant_type": DEVICE_GRANT, "device_code": device.device_code}
        while True:
            await sleep(interval)
            if self._monotonic() > deadline:
                raise OidcError("the sign-in code expired before it was used: run the login again")
            metadata = await self.metadata()
            request = dict(form)
            headers = {"Accept": "application/json", **self._authenticate(request, metadata)}
            status, body, _ = await self._fetch(
                "POST", metadata["token_endpoint"], "device sign-in", data=request, headers=headers
            )
            if status == 200:
                tokens = parse_token_response(status, body, "device sign-in")
                if not isinstance(tokens.get("id_token"), str):
                    raise OidcError("the identity provider sent no ID token: is openid a scope?")
                return tokens
            error, _ = _oauth_error(body)
            if error == "authorization_pending":
                continue
            if error == "slow_down":
                interval += DEVICE_SLOW_DOWN
                continue
            if error == "access_denied":
                raise OidcError("the sign-in was declined at the identity provider")
            if error == "expired_token":
                raise OidcError("the sign-in code expired before it was used: run the login again")
            # Raises, with the provider's reason.
            parse_token_response(status, body, "device sign-in", hide=[device.device_code])
            raise OidcError("the identity provider's device sign-in answer is malformed")
