"""The command line's side of the wardgate API: where the API is, which token to send,
and every failure said in one sentence.

The URL is ``--url``, else ``$WARDGATE_URL``, else the ``listen.api`` of the
configuration given with ``-c``, else the saved login's, else
http://127.0.0.1:8080. The token is ``$WARDGATE_TOKEN``, else the saved login's, and a
saved token is only ever sent to the URL it was saved for. The saved login lives in
``$WARDGATE_PROFILE``, else ``$XDG_CONFIG_HOME/wardgate/profile.json``, readable by its
owner only. No message, repr or error ever contains a token.

A login by single sign-on (``wardgate login --sso``) saves a sign-in session (``wgs_``)
and what renews it: the identity provider's refresh token, token endpoint and client
id. When the API refuses the session, the CLI renews it once, transparently: refresh at
the provider, trade the new ID token for a new session at the gateway, save, retry.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import httpx
import typer

from wardgate import __version__
from wardgate.visible import visible

DEFAULT_URL = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1"
TIMEOUT = 30.0
PROVIDER_TIMEOUT = 10.0
_MAX_BODY_IN_MESSAGE = 200

NOT_LOGGED_IN = "not logged in: set WARDGATE_TOKEN or run `wardgate login`"
SIGN_IN_EXPIRED = "your sign-in expired: run `wardgate login --sso`"
SESSION_PREFIX = "wgs_"

TokenSource = Literal["env", "profile", "given"]
_REFUSED = {
    "env": "the API refused the token in WARDGATE_TOKEN (wrong, revoked or expired)",
    "profile": (
        "the API refused the token (wrong, revoked or expired): run `wardgate login` "
        "with a new one from `wardgate token create`"
    ),
    "given": (
        "the API refused the token (wrong, revoked or expired): create one with "
        "`wardgate token create PRINCIPAL`"
    ),
}


def _fail(message: str) -> NoReturn:
    # Imported late: cli.main imports the commands built on this module while it loads.
    from wardgate.cli.main import _fail as fail

    fail(message)


# -- the saved login ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OidcLogin:
    """What renews a single sign-on session: the provider's side of the login."""

    issuer: str
    client_id: str
    token_endpoint: str
    refresh_token: str | None = field(default=None, repr=False)
    # The last ID token, sent again after a refresh that brought none.
    id_token: str | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "token_endpoint": self.token_endpoint,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
        }

    @classmethod
    def from_dict(cls, data: object) -> OidcLogin:
        if not isinstance(data, dict):
            raise TypeError("oidc is not an object")
        strings = ("issuer", "client_id", "token_endpoint")
        optional = ("refresh_token", "id_token")
        if not all(isinstance(data.get(k), str) for k in strings) or not all(
            isinstance(data.get(k), str | None) for k in optional
        ):
            raise TypeError("oidc is malformed")
        return cls(*(data[k] for k in strings), *(data.get(k) for k in optional))


@dataclass(frozen=True, slots=True)
class Profile:
    url: str
    token: str = field(repr=False)
    principal: str = ""
    oidc: OidcLogin | None = None


def profile_path() -> Path:
    explicit = os.environ.get("WARDGATE_PROFILE")
    if explicit:
        return Path(explicit).expanduser()
    return _default_dir() / "profile.json"


def _default_dir() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "wardgate"


def load_profile(path: Path | None = None) -> Profile | None:
    """The saved login, or None when there is none."""
    path = path or profile_path()
    try:
        raw = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        _fail(f"cannot read the saved login {path}: {exc.strerror or exc}")
    try:
        data = json.loads(raw)
        url = _clean_url(str(data["url"]))
        token, principal = str(data["token"]), str(data.get("principal") or "")
        oidc = OidcLogin.from_dict(data["oidc"]) if data.get("oidc") is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        url = None
    if url is None:
        _fail(f"the saved login {path} is damaged: run `wardgate login` again")
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"warning: {path} holds a token and others can read it: chmod 600 it", err=True)
    return Profile(url, token, principal, oidc)


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    """Write the login atomically, 0600, in a 0700 directory when the directory is ours."""
    default = path is None and not os.environ.get("WARDGATE_PROFILE")
    path = path or profile_path()
    directory = path.parent
    created = not directory.exists()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created or default:
        # mkdir's mode passes through the umask, and an existing default directory may
        # predate us; a directory holding tokens is its owner's alone.
        os.chmod(directory, 0o700)
    body: dict[str, Any] = {
        "url": profile.url,
        "token": profile.token,
        "principal": profile.principal,
    }
    if profile.oidc is not None:
        body["oidc"] = profile.oidc.as_dict()
    fd, tmp = tempfile.mkstemp(prefix=".profile-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_profile(path: Path | None = None) -> bool:
    path = path or profile_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# -- where and who ------------------------------------------------------------------


def normal_url(url: str) -> str:
    """``url`` without trailing slashes or a pasted ``/api/v1``; http(s) only."""
    cleaned = _clean_url(url)
    if cleaned is None:
        _fail(f"the API URL must look like http://HOST:PORT, got {visible(url.strip())!r}")
    return cleaned


def _clean_url(url: str) -> str | None:
    url = url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return url


def check_token(token: str) -> str:
    token = token.strip()
    if not token:
        _fail(NOT_LOGGED_IN)
    if any(not ("!" <= c <= "~") for c in token):
        _fail("that is not a wardgate token (they look like wg_..., one line, no spaces)")
    return token


@dataclass(frozen=True, slots=True)
class Credentials:
    url: str
    token: str = field(repr=False)
    source: TokenSource
    profile: Profile | None = field(default=None, repr=False)


class _GivenConfig:
    """The ``-c`` given to the API command being run (set by the option's callback,
    which runs for every command, given or not: one command per process)."""

    path: str | None = None


def remember_config(path: str | None) -> None:
    _GivenConfig.path = path


def config_url() -> str | None:
    """The API URL of the configuration named by ``-c``: what `wardgate serve -c`
    listens on. None without one or without ``listen.api``."""
    path = _GivenConfig.path
    if not path:
        return None
    from wardgate.config import ConfigError, load_config

    try:
        address = load_config(path).listen_address("api")
    except (ConfigError, OSError) as exc:
        _fail(f"cannot read the API address from {path}: {exc}")
    if address is None:
        return None
    host, port = address
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def resolve(url_option: str | None) -> Credentials:
    """The URL and token a command uses; fails with what to do when there is no token."""
    env_url = os.environ.get("WARDGATE_URL", "").strip()
    if not url_option and not env_url:
        env_url = config_url() or ""
    env_token = os.environ.get("WARDGATE_TOKEN", "").strip()
    # With both from the environment the saved login is not needed, nor read: a damaged
    # file must not stand in the way.
    profile = load_profile() if not (env_token and (url_option or env_url)) else None
    url = normal_url(url_option or env_url or (profile.url if profile else DEFAULT_URL))
    if env_token:
        return Credentials(url, check_token(env_token), "env")
    if profile is None:
        _fail(NOT_LOGGED_IN)
    if profile.url != url:
        # A token saved for one gateway is never sent to another one.
        _fail(
            f"not logged in to {url} (the saved login is for {profile.url}): "
            f"run `wardgate login --url {url}` or set WARDGATE_TOKEN"
        )
    return Credentials(url, check_token(profile.token), "profile", profile)


def path_part(value: str) -> str:
    """An id as one path segment, whatever the user typed."""
    return quote(value.strip(), safe="")


# -- the client ---------------------------------------------------------------------


class ApiClient:
    """JSON over HTTP to ``/api/v1``; every failure is a `CliError` worded for the user."""

    def __init__(
        self,
        url: str,
        token: str,
        source: TokenSource = "given",
        *,
        timeout: float = TIMEOUT,
        renew: Callable[[], str] | None = None,
    ) -> None:
        self.url = url
        self._source = source
        self._timeout = timeout
        # Called once on a 401 to get a fresh bearer (a renewed sign-in session).
        self._renew = renew
        self._signed_in = renew is not None or token.startswith(SESSION_PREFIX)
        self._http = httpx.Client(
            base_url=url + API_PREFIX,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json, application/problem+json",
                "User-Agent": f"wardgate-cli/{__version__}",
            },
            timeout=timeout,
        )

    @classmethod
    def connect(cls, url_option: str | None) -> ApiClient:
        creds = resolve(url_option)
        profile = creds.profile
        if profile is not None and profile.oidc is not None:
            return cls(creds.url, creds.token, creds.source, renew=lambda: renew_session(profile))
        return cls(creds.url, creds.token, creds.source)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return self._call("GET", path, params=clean)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._call("POST", path, json=body if body is not None else {})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self._renew is not None:
            renew, self._renew = self._renew, None
            self._http.headers["Authorization"] = f"Bearer {renew()}"
            response = self._send(method, path, **kwargs)
        return self._answer(response)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            _fail(
                f"cannot reach the wardgate API at {self.url}: {_why(exc)}; "
                "is `wardgate serve` running?"
            )
        except httpx.TimeoutException:
            _fail(f"the wardgate API at {self.url} did not answer within {self._timeout:g}s")
        except httpx.HTTPError as exc:
            _fail(f"talking to the wardgate API at {self.url} failed: {_why(exc)}")

    def _answer(self, response: httpx.Response) -> Any:
        status = response.status_code
        if status == 401:
            _fail(SIGN_IN_EXPIRED if self._signed_in else _REFUSED[self._source])
        if status >= 400:
            _fail(self._problem(response))
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            _fail(f"the answer from {self.url} is not JSON: is that the wardgate API?")

    def _problem(self, response: httpx.Response) -> str:
        return problem_text(self.url, response)


def problem_text(url: str, response: httpx.Response) -> str:
    """The RFC 9457 ``detail`` (else ``title``), or what the status says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = body.get("detail") or body.get("title")
        if isinstance(text, str) and text.strip():
            return visible(text.strip())
    snippet = " ".join(response.text.split())[:_MAX_BODY_IN_MESSAGE]
    said = f": {visible(snippet)}" if snippet else ""
    hint = " (is that the wardgate API?)" if response.status_code == 404 else ""
    return f"the API at {url} answered {response.status_code} {response.reason_phrase}{said}{hint}"


class ApiRefusal(Exception):
    """The API answered an error; the message is its problem detail."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _why(exc: Exception) -> str:
    return visible(str(exc) or type(exc).__name__)


# -- single sign-on sessions --------------------------------------------------------


def anonymous(url: str, method: str, path: str, body: dict[str, str] | None = None) -> Any:
    """An unauthenticated call to ``/api/v1`` (the sign-in endpoints): the JSON answer;
    `ApiRefusal` with the API's own words when it answers an error."""
    return anonymous_with(url, None, method, path, body)


def anonymous_with(
    url: str, token: str | None, method: str, path: str, body: dict[str, str] | None = None
) -> Any:
    """One call to ``/api/v1`` without renewal or the saved login's rules: for signing in
    and out. Raises `ApiRefusal` on an error answer."""
    headers = {
        "Accept": "application/json, application/problem+json",
        "User-Agent": f"wardgate-cli/{__version__}",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(
            method, url + API_PREFIX + "/" + path, json=body, headers=headers, timeout=TIMEOUT
        )
    except httpx.TimeoutException:
        _fail(f"the wardgate API at {url} did not answer within {TIMEOUT:g}s")
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the wardgate API at {url}: {_why(exc)}; is `wardgate serve` running?")
    if response.status_code >= 400:
        raise ApiRefusal(response.status_code, problem_text(url, response))
    try:
        return response.json()
    except ValueError:
        _fail(f"the answer from {url} is not JSON: is that the wardgate API?")


def open_session(url: str, body: dict[str, str]) -> dict[str, Any]:
    """Trade an ID token for a wardgate sign-in session (``POST /auth/oidc/session``):
    the answer holds the session secret, its principal and when it ends."""
    try:
        session = anonymous(url, "POST", "auth/oidc/session", body)
    except ApiRefusal as exc:
        _fail(f"the gateway refused the sign-in: {exc}")
    if (
        not isinstance(session, dict)
        or not isinstance(session.get("token"), str)
        or not session["token"].startswith(SESSION_PREFIX)
        or not isinstance(session.get("principal"), str)
    ):
        _fail(f"the answer from {url} is not a sign-in session: is that the wardgate API?")
    return session


def _refresh_at_provider(login: OidcLogin) -> dict[str, Any]:
    """New tokens from the provider's token endpoint (as the public CLI client)."""
    from wardgate.identity.oidc import OidcError, parse_token_response

    if not login.refresh_token:
        _fail(SIGN_IN_EXPIRED + " (the identity provider gave no refresh token)")
    form = {
        "grant_type": "refresh_token",
        "refresh_token": login.refresh_token,
        "client_id": login.client_id,
    }
    try:
        response = httpx.post(
            login.token_endpoint,
            data=form,
            headers={"Accept": "application/json"},
            timeout=PROVIDER_TIMEOUT,
        )
        return parse_token_response(
            response.status_code,
            response.content[:1_000_000],
            "renewal (refresh)",
            hide=[login.refresh_token],
        )
    except httpx.HTTPError as exc:
        _fail(f"{SIGN_IN_EXPIRED} (the identity provider could not be reached: {_why(exc)})")
    except OidcError as exc:
        _fail(f"{SIGN_IN_EXPIRED} ({visible(exc)})")


def renew_session(profile: Profile) -> str:
    """Renew an expired sign-in session with the saved refresh token, save the new
    one and return its secret; fails with SIGN_IN_EXPIRED when that is not possible."""
    saved = load_profile()
    if saved is not None and saved.url == profile.url and saved.token != profile.token:
        # Another command renewed it meanwhile: a second refresh could trip the
        # provider's refresh token reuse detection.
        return saved.token
    login = profile.oidc
    assert login is not None
    tokens = _refresh_at_provider(login)
    id_token = tokens.get("id_token")
    if isinstance(id_token, str):
        body = {"id_token": id_token}
    elif login.id_token and isinstance(tokens.get("access_token"), str):
        # No new ID token (OpenID Connect Core 12.2 allows that): the previous one names
        # the human, the new access token shows the provider still vouches for them.
        body = {"id_token": login.id_token, "access_token": tokens["access_token"]}
    else:
        _fail(SIGN_IN_EXPIRED + " (the identity provider sent no ID token)")
    from wardgate.cli.main import CliError

    try:
        session = open_session(profile.url, body)
    except CliError as exc:
        _fail(f"{SIGN_IN_EXPIRED} ({exc})")
    renewed = replace(
        login,
        refresh_token=tokens.get("refresh_token") or login.refresh_token,
        id_token=body["id_token"],
    )
    save_profile(Profile(profile.url, session["token"], session["principal"], renewed))
    return str(session["token"])
