"""The YAML configuration: schema, loading, and errors that point at file, line and key.

Secrets never appear as literals: any credential field takes a *reference*
(``env:NAME``, ``file:PATH`` or ``secret:NAME`` for the gateway's encrypted store),
resolved only when dialling upstream (see ``wardgate.vault``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from wardgate.identity.principals import Principal, PrincipalKind

DecisionName = Literal["allow", "review", "block"]
SQL_CLASSES = ("read", "write", "ddl", "admin")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _check_secret_ref(value: object) -> object:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^(env|file|secret):.+", value):
        raise ValueError(
            "secrets are never written in the config: use env:NAME, file:PATH "
            "or secret:NAME (stored with `wardgate secret set NAME`)"
        )
    return value


SecretRef = Annotated[str | None, BeforeValidator(_check_secret_ref)]


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _check_hostport(value: object) -> object:
    if isinstance(value, str):
        parse_hostport(value)
    return value


HostPort = Annotated[str, BeforeValidator(_check_hostport)]


def _check_ports(value: object) -> object:
    """A port (8080) or a range of ports ("8000-8099"), as the text "N" or "N-M"."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    found = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", text.strip()) if isinstance(text, str) else None
    if found:
        first, last = int(found[1]), int(found[2] or found[1])
        if 1 <= first <= last <= 65535:
            return f"{first}-{last}" if found[2] else str(first)
    raise ValueError(f"{value!r} is not a port (1-65535) or a range of them (8000-8099)")


PortRange = Annotated[str, BeforeValidator(_check_ports)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Model):
    api: HostPort | None = "127.0.0.1:8080"
    postgres: HostPort | None = "127.0.0.1:15432"
    ssh: HostPort | None = None  # e.g. 127.0.0.1:12222; off unless set
    # HTTPS for kubectl at /k8s/<connection> (the gateway's TLS pair); off unless set.
    kubernetes: HostPort | None = None  # e.g. 127.0.0.1:16443


class TLSConfig(_Model):
    """Server-side TLS offered to clients. Without cert/key a self-signed pair is
    generated into ``data_dir/tls`` on first start."""

    cert: str | None = None
    key: str | None = None


class LimitsConfig(_Model):
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    startup_timeout: Duration = 15.0
    # Bytes a client may send before its session exists (during authentication and the
    # upstream dial); more is a protocol violation that counts as a failed login.
    startup_buffer_bytes: int = Field(default=256 * 1024, ge=16 * 1024)
    # Audit records waiting for the store: past this the proxy slows clients down, and
    # while the store refuses writes, new actions and sessions are refused.
    audit_backlog: int = Field(default=10_000, ge=2)
    # Prepared statements, and portals, one PostgreSQL session may hold through the
    # gateway (each kind), and the bytes of SQL and parameters they may hold: the
    # gateway keeps a copy of each. More ends the session (SQLSTATE 54000).
    session_names: int = Field(default=100_000, ge=16)
    session_name_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    connect_timeout: Duration = 10.0
    # Failed logins per (principal, client address) in a window before that principal's
    # failures from that address are answered slowly (a correct token still works).
    login_failures: int = Field(default=5, ge=1)
    # Failed logins per client address (any principal) in a window before every login
    # from it is refused until the window ends. Default: 4 x login_failures.
    address_failures: int | None = Field(default=None, ge=1)
    login_window: Duration = 60.0
    # The longest a throttled failure is answered late (1 s, 2 s, 4 s ... up to this).
    login_max_delay: Duration = Field(default=30.0, ge=0)
    # SIGTERM: how long busy sessions may go on finishing before they are closed.
    drain_timeout: Duration = Field(default=30.0, ge=0)


class UpstreamConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    password: SecretRef = None
    tls: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    ca: str | None = None
    # The upstream role may be a superuser (or read/write server files, run programs):
    # say so here to silence `wardgate serve`'s warning. See docs/policy.md.
    privileged: bool = False
    # Dial servers outside the PostgreSQL versions the classifier is checked against.
    allow_unsupported_version: bool = False


class SshUpstreamConfig(_Model):
    """An SSH target. The gateway holds its credential and pins its host key: a target
    presenting any other key is refused, never accepted on first use."""

    host: str = "127.0.0.1"
    port: int = Field(default=22, ge=1, le=65535)
    user: str
    private_key: SecretRef = None  # the PEM/OpenSSH private key, e.g. file:/etc/wardgate/web1
    password: SecretRef = None
    host_key: str  # the target's public host key: "ssh-ed25519 AAAA..." (ssh-keyscan)

    @model_validator(mode="after")
    def _credential_and_key(self) -> SshUpstreamConfig:
        if self.private_key is None and self.password is None:
            raise ValueError("an ssh upstream needs private_key or password (a reference)")
        parts = self.host_key.split()
        if parts and parts[0] == "ssh-dss":
            raise ValueError(
                "host_key is a DSA key (ssh-dss), which wardgate never accepts; pin the "
                "target's ed25519 key instead (ssh-keyscan -t ed25519 HOST)"
            )
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise ValueError(
                "host_key must be the target's public host key in OpenSSH form, "
                "e.g. 'ssh-ed25519 AAAA...' (from ssh-keyscan -t ed25519 HOST)"
            )
        return self


class KubernetesUpstreamConfig(_Model):
    """A Kubernetes API server. The gateway holds its credential (a bearer token, or a
    client certificate and key) and pins its CA: clients never see either."""

    url: str  # https://10.0.0.1:6443 (http:// only for loopback test servers)
    ca: str | None = None  # PEM file of the CA the API server's certificate must chain to
    token: SecretRef = None
    client_cert: str | None = None  # PEM file
    client_key: SecretRef = None
    # Largest response body buffered to redact Secrets; larger ones are refused.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _url_and_credential(self) -> KubernetesUpstreamConfig:
        scheme, sep, rest = self.url.partition("://")
        if not sep or scheme not in ("https", "http") or not rest.strip("/"):
            raise ValueError("url must be https://HOST[:PORT] of the API server")
        if scheme == "https" and self.ca is None:
            raise ValueError(
                "an https upstream needs ca: the API server's CA file (pinned; the "
                "system trust store is never used for a cluster)"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        return self


def _upstream_kind(value: Any) -> str:
    if isinstance(value, dict):
        if "url" in value:
            return "kubernetes"
        return "ssh" if {"host_key", "private_key"} & value.keys() else "postgres"
    if isinstance(value, KubernetesUpstreamConfig):
        return "kubernetes"
    return "ssh" if isinstance(value, SshUpstreamConfig) else "postgres"


class ConnectionReviewConfig(_Model):
    """How a review verdict plays out on this connection."""

    # How long a client's statement waits inline for approval before the client gets
    # "approval pending"; 0 answers at once. Clients may ask for their own wait (the
    # startup option wardgate.review_wait), capped by max_wait.
    wait: Duration = Field(default=30.0, ge=0)
    max_wait: Duration = Field(default=300.0, ge=0)
    # What reviewers see of a write's effect: the planner's estimate (explain), or the
    # exact row count of running it in a transaction that is rolled back (rollback).
    preview: Literal["none", "explain", "rollback"] = "explain"
    preview_timeout: Duration = Field(default=5.0, gt=0)


class ConnectionGrantsConfig(_Model):
    """Time-boxed access grants (JIT elevation) on this connection."""

    roles: list[str] = Field(default_factory=list)  # roles that may be requested; none: no grants
    max_duration: Duration = Field(default=8 * 3600.0, gt=0)
    approvers: list[str] = Field(default_factory=list)  # default: reviews.approvers
    quorum: int | None = Field(default=None, ge=1)


class ResultsConfig(_Model):
    """What of each SQL action's result the recorder keeps (docs/audit.md): the rows the
    client received (masked), up to ``rows`` and ``bytes`` per action and
    ``session_bytes`` per session, plus always the full row count and a SHA-256 of the
    whole result stream. ``record: false`` keeps only the row count."""

    record: bool = True
    rows: int = Field(default=100, ge=0)
    bytes: int = Field(default=64 * 1024, ge=0)
    session_bytes: int = Field(default=1024 * 1024, ge=0)


class ConnectionConfig(_Model):
    type: Literal["postgres", "ssh", "kubernetes"]
    upstream: Annotated[
        Annotated[UpstreamConfig, Tag("postgres")]
        | Annotated[SshUpstreamConfig, Tag("ssh")]
        | Annotated[KubernetesUpstreamConfig, Tag("kubernetes")],
        Discriminator(_upstream_kind),
    ]
    roles: dict[str, str] = Field(default_factory=dict)
    reviews: ConnectionReviewConfig = ConnectionReviewConfig()
    grants: ConnectionGrantsConfig = ConnectionGrantsConfig()
    on_parse_error: Literal["block", "review"] = "block"
    # observe: verdicts are recorded but every action runs (try a policy on real traffic).
    mode: Literal["enforce", "observe"] = "enforce"
    description: str = ""
    results: ResultsConfig = ResultsConfig()
    # Records of this connection older than this many days leave the store (the sweep
    # says what it deleted in the chain: docs/audit.md "Retention"). None: kept forever.
    retention_days: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _upstream_matches_type(self) -> ConnectionConfig:
        if _upstream_kind(self.upstream) != self.type:
            wants = {
                "ssh": "host, user, host_key and private_key or password",
                "kubernetes": "url, ca and token or client_cert/client_key",
            }.get(self.type, "database and user")
            raise ValueError(f"a connection of type {self.type} needs an upstream with {wants}")
        return self

    @property
    def pg(self) -> UpstreamConfig:
        """The PostgreSQL upstream (callers have checked ``type``)."""
        if not isinstance(self.upstream, UpstreamConfig):
            raise TypeError(f"connection of type {self.type} has no PostgreSQL upstream")
        return self.upstream

    @property
    def ssh(self) -> SshUpstreamConfig:
        if not isinstance(self.upstream, SshUpstreamConfig):
            raise TypeError(f"connection of type {self.type} has no SSH upstream")
        return self.upstream

    @property
    def kube(self) -> KubernetesUpstreamConfig:
        if not isinstance(self.upstream, KubernetesUpstreamConfig):
            raise TypeError(f"connection of type {self.type} has no Kubernetes upstream")
        return self.upstream


class RoleConfig(_Model):
    read: DecisionName = "block"
    write: DecisionName = "block"
    ddl: DecisionName = "block"
    admin: DecisionName = "block"
    # SSH: interactive shells (recorded, not policed keystroke by keystroke), SFTP/SCP
    # file transfer, and port forwarding through the gateway.
    shell: Literal["allow", "block"] = "block"
    sftp: Literal["allow", "block"] = "block"
    forwarding: Literal["allow", "block"] = "block"
    # Kubernetes port-forward: the pod ports `forwarding: allow` reaches (empty: any).
    forwarding_ports: list[PortRange] = Field(default_factory=list)
    # Who approves this role's `review` verdicts; default: reviews.approvers / quorum.
    approvers: list[str] = Field(default_factory=list)
    quorum: int | None = Field(default=None, ge=1)

    def decision_for(self, klass: str) -> DecisionName:
        # shell / forwarding: Kubernetes exec -it, attach and port-forward are judged
        # as statements of these classes (policy/kubernetes/sessions.py).
        if klass in SQL_CLASSES or klass in ("shell", "forwarding"):
            value: DecisionName = getattr(self, klass)
            return value
        return "block"


class GuardrailMatch(_Model):
    """What a guardrail applies to. Every field given must match (AND); within a field,
    any listed value matches (OR). An empty match applies to every action."""

    sql: list[str] = Field(default_factory=list)  # classes or kinds: write, drop, do_block...
    commands: list[str] = Field(default_factory=list)  # shell classes or kinds: rm_rf_broad...
    programs: list[str] = Field(default_factory=list)  # globs on programs run: rm, mkfs*...
    paths: list[str] = Field(default_factory=list)  # globs on paths a command writes
    tables: list[str] = Field(default_factory=list)  # globs on schema.table, read or written
    tables_written: list[str] = Field(default_factory=list)  # globs, written only
    columns: list[str] = Field(default_factory=list)  # globs on column names
    functions: list[str] = Field(default_factory=list)  # globs on function names
    # Kubernetes: classes or kinds (write, exec, privileged, service_loadbalancer...),
    # globs on resource[.group][/subresource], on namespaces, and API verbs.
    kubernetes: list[str] = Field(default_factory=list)
    resources: list[str] = Field(default_factory=list)
    namespaces: list[str] = Field(default_factory=list)
    verbs: list[str] = Field(default_factory=list)
    ports: list[PortRange] = Field(default_factory=list)  # pod ports a port-forward opens
    principals: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    principal_kinds: list[Literal["user", "agent"]] = Field(default_factory=list)
    connections: list[str] = Field(default_factory=list)


class GuardrailCondition(_Model):
    """Extra tests on the statement, on top of `match`."""

    without_where: bool | None = None  # UPDATE/DELETE with (False) or without (True) WHERE
    without_limit: bool | None = None  # a SELECT reading a table with no LIMIT/FETCH FIRST


class GuardrailConfig(_Model):
    name: str
    match: GuardrailMatch = GuardrailMatch()
    condition: GuardrailCondition | None = None
    verdict: DecisionName
    message: str = ""
    # With verdict review: who approves; default reviews.approvers / reviews.quorum.
    approvers: list[str] = Field(default_factory=list)
    quorum: int | None = Field(default=None, ge=1)


class MaskingRuleConfig(_Model):
    """Who sees masked values, and which values. Every `who` field given must match."""

    name: str
    # who: empty lists match everyone; except_* take precedence
    connections: list[str] = Field(default_factory=list)
    principals: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    principal_kinds: list[Literal["user", "agent"]] = Field(default_factory=list)
    except_groups: list[str] = Field(default_factory=list)
    except_principals: list[str] = Field(default_factory=list)
    # what: values found by content detectors, and whole columns (schema.table.column globs)
    entities: list[str] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    strategy: Literal["redact", "partial", "hash", "pseudonym"] = "partial"
    # false: these columns are known not to be sensitive. Such a rule masks nothing;
    # `wardgate masking discover` stops proposing its columns (content rules still apply).
    sensitive: bool = True
    # Column rules: may a masked column be used in WHERE, JOIN, GROUP BY, ORDER BY...
    # (clear values compared: an oracle)? Equality joins of two pseudonymised columns
    # are allowed under "block" too (compared as pseudonyms). docs/masking.md.
    predicates: Literal["allow", "block"] = "block"


# Files no program may read over SSH for a principal whose output is masked: masking a
# stream cannot stop base64, od -c or rev of a key (docs/ssh.md, "Sensitive files").
DEFAULT_SENSITIVE_PATHS = (
    "~/.ssh/id_*", "~/.ssh/*_key", "/etc/ssh/ssh_host_*_key", "*.pem", "*.key", "*.p12",
    "*.pfx", "*.jks", "*.keystore", ".env", ".env.*", "*.env", "/etc/shadow",
    "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
    "~/.aws/credentials", "~/.aws/config", "~/.config/gcloud/*", "~/.azure/*",
    "~/.kube/config", "/etc/kubernetes/admin.conf", "~/.docker/config.json", "~/.netrc",
    "~/.pgpass", "~/.my.cnf", "~/.git-credentials", "~/.gnupg/*", "~/.vault-token",
    "/root/.bash_history", "~/.bash_history",
    # Copies keep the secret: editor and admin backups of the names above.
    "*.key.bak", "*.key.old", "*.key.orig", "*.key.save", "*.key~", "*.pem.bak",
    "*.pem.old", "*.pem.orig", "*.pem.save", "*.pem~", ".env~", "~/.ssh/*_key.*",
    "/etc/shadow.*", "/etc/gshadow.*",
)  # fmt: skip


def _key_ref(value: object) -> object:
    # A bare path is a key file: the checkpoint key is a file more often than not.
    if isinstance(value, str) and not re.match(r"^(env|file|secret):.+", value):
        return f"file:{value}"
    return _check_secret_ref(value)


class CheckpointConfig(_Model):
    """Signed checkpoints of the audit chain (docs/audit.md). ``key``: the Ed25519
    private key, never in the store: a file path, env:NAME, file:PATH or secret:NAME."""

    key: Annotated[str, BeforeValidator(_key_ref)]
    interval: Duration = Field(default=300.0, gt=0)  # and always at shutdown


class SinkConfig(_Model):
    """A copy of every audit event outside the store (docs/audit.md)."""

    file: str | None = None  # JSON lines, appended, one event a line
    # Syslog: a socket path (/dev/log) or udp://host:port or tcp://host:port.
    syslog: str | None = None
    syslog_facility: str = "local0"
    interval: Duration = Field(default=1.0, gt=0)  # how often new events are copied

    @field_validator("syslog")
    @classmethod
    def _syslog_address(cls, value: str | None) -> str | None:
        if value is None or value.startswith("/"):
            return value
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("udp", "tcp"):
            raise ValueError(
                "syslog is a socket path (/dev/log) or udp://host:port, tcp://host:port"
            )
        parse_hostport(rest)
        return value

    @field_validator("syslog_facility")
    @classmethod
    def _facility(cls, value: str) -> str:
        from logging.handlers import SysLogHandler

        if value not in SysLogHandler.facility_names:
            raise ValueError(
                f"unknown syslog facility {value!r}; e.g. local0..local7, auth, daemon"
            )
        return value


class AuditConfig(_Model):
    checkpoint: CheckpointConfig | None = None
    sink: SinkConfig | None = None
    # How often the journal is fdatasynced at most (group commit): after a power loss or
    # kernel crash, at most this much of the latest records is lost (docs/architecture.md).
    journal_sync_ms: float = Field(default=1.0, ge=0.1, le=1000.0)


class MaskingConfig(_Model):
    # HMAC key of the hash and pseudonym strategies; default: derived from the master key.
    key: SecretRef = None
    rules: list[MaskingRuleConfig] = Field(default_factory=list)
    # Globs of files whose reading is blocked, by any program, for principals a rule
    # masks on a connection (SSH commands). "~/" is any home; no "/": a name anywhere.
    paths: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_PATHS))


NotifyEvent = Literal[
    "requested",
    "vote",
    "approved",
    "denied",
    "expired",
    "cancelled",
    "executed",
    "failed",
    "rolled_back",
    "revoked",
]

_DEFAULT_NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "requested",
    "approved",
    "denied",
    "executed",
    "failed",
    "rolled_back",
)


class NotifyConfig(_Model):
    """Where review events are announced. `url` is a plain http(s) URL or, for URLs that
    carry a secret (Slack incoming webhooks do), a reference: env:NAME, file:PATH, secret:NAME."""

    type: Literal["webhook", "slack"]
    url: str
    events: list[NotifyEvent] = Field(default_factory=lambda: list(_DEFAULT_NOTIFY_EVENTS))
    timeout: Duration = Field(default=5.0, gt=0)
    retries: int = Field(default=5, ge=0, le=20)


class ReviewsConfig(_Model):
    """Defaults for every review; roles, guardrails and grants may name their own approvers."""

    approvers: list[str] = Field(default_factory=list)  # groups whose humans may approve
    quorum: int = Field(default=1, ge=1)  # distinct humans needed
    expires: Duration = Field(default=3600.0, gt=0)  # a pending review expires
    approval_valid: Duration = Field(default=3600.0, gt=0)  # an approved, unused one expires
    # False: the human sponsor of an agent may not approve that agent's reviews.
    sponsor_may_approve: bool = False
    # Base URL of the API as approvers reach it, for links; default http://<listen.api>.
    url: str | None = None
    notify: list[NotifyConfig] = Field(default_factory=list)


class OidcConfig(_Model):
    """Single sign-on for humans (web UI and ``wardgate login``) against any OpenID
    Connect provider found by issuer discovery. Without ``client_secret`` the client is
    public (PKCE only)."""

    issuer: str
    client_id: str
    client_secret: SecretRef = None
    # The client `wardgate login --sso` uses: a public one (PKCE, loopback redirect or
    # device flow), since most providers refuse public requests for a client with a
    # secret. Default: client_id.
    cli_client_id: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    # The claim naming the human; it must equal a principal's name unless
    # allow_unlisted_users is set.
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    # The provider's group names -> wardgate groups; unmapped provider groups are ignored.
    groups: dict[str, list[str]] = Field(default_factory=dict)
    # Sign in humans the configuration does not list, with their mapped groups only.
    allow_unlisted_users: bool = False
    label: str = "Sign in with single sign-on"

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        return value.rstrip("/")


class WebConfig(_Model):
    """The web UI at /ui on the API listener, for humans only."""

    enabled: bool = True
    # Local users sign in with a password set by `wardgate user add`.
    local_users: bool = True
    session_idle: Duration = Field(default=1800.0, gt=0)  # signed out after this idle time
    session_max: Duration = Field(default=43200.0, gt=0)  # and after this long in any case
    # auto: Secure cookies unless the UI is served over plain HTTP on a loopback address.
    cookie_secure: Literal["auto"] | bool = "auto"
    oidc: OidcConfig | None = None


class GroupConfig(_Model):
    description: str = ""


class PrincipalConfig(_Model):
    kind: Literal["user", "agent"]
    groups: list[str] = Field(default_factory=list)
    sponsor: str | None = None


class LogConfig(_Model):
    """The gateway's own log (stderr): text lines, or one JSON object a line."""

    format: Literal["text", "json"] = "text"


_PRINCIPAL_MEMO = 4096


class Config(_Model):
    _principal_memo: dict[str, tuple[PrincipalConfig, Principal]] = PrivateAttr(
        default_factory=dict
    )
    store: str = "sqlite:///.wardgate/wardgate.db"
    data_dir: str = ".wardgate"
    master_key: SecretRef = None
    workers: int = Field(default=1, ge=1, le=64)
    # How PostgreSQL clients prove their token: SCRAM-SHA-256 (the token never crosses
    # the wire), or "password" (cleartext token, accepted only over TLS; non-TLS
    # connections still get SCRAM).
    client_auth: Literal["scram-sha-256", "password"] = "scram-sha-256"
    listen: ListenConfig = ListenConfig()
    tls: TLSConfig = TLSConfig()
    limits: LimitsConfig = LimitsConfig()
    groups: dict[str, GroupConfig] = Field(default_factory=dict)
    principals: dict[str, PrincipalConfig] = Field(default_factory=dict)
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    guardrails: list[GuardrailConfig] = Field(default_factory=list)
    # Functions (name or schema.name) that only read, beyond PostgreSQL's built-ins:
    # any other function is judged a write.
    safe_functions: list[str] = Field(default_factory=list)
    # Settings that are not PostgreSQL's own (an extension's, or custom variables such as
    # app.tenant) that any role may change with SET or set_config: docs/policy.md.
    safe_settings: list[str] = Field(default_factory=list)
    masking: MaskingConfig = MaskingConfig()
    reviews: ReviewsConfig = ReviewsConfig()
    web: WebConfig = WebConfig()
    audit: AuditConfig = AuditConfig()
    log: LogConfig = LogConfig()

    # Where the file was loaded from; relative paths resolve against its folder.
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _none_maps(cls, data: Any) -> Any:
        # `groups:` with nothing under it is YAML null: treat as empty.
        if isinstance(data, dict):
            for key in ("groups", "principals", "connections", "roles"):
                if key in data and data[key] is None:
                    data[key] = {}
            if isinstance(data.get("groups"), dict):
                data["groups"] = {k: (v or {}) for k, v in data["groups"].items()}
        return data

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for name, p in self.principals.items():
            for i, g in enumerate(p.groups):
                if g not in self.groups:
                    problems.append((("principals", name, "groups", i), f"unknown group {g!r}"))
            if p.sponsor is not None:
                sponsor = self.principals.get(p.sponsor)
                if sponsor is None:
                    problems.append(
                        (("principals", name, "sponsor"), f"unknown principal {p.sponsor!r}")
                    )
                elif sponsor.kind != "user":
                    problems.append(
                        (("principals", name, "sponsor"), "a sponsor must be a human user")
                    )
            if p.kind == "user" and p.sponsor is not None:
                problems.append((("principals", name, "sponsor"), "only agents have a sponsor"))
        for cname, c in self.connections.items():
            for group, role in c.roles.items():
                if group not in self.groups:
                    problems.append(
                        (("connections", cname, "roles", group), f"unknown group {group!r}")
                    )
                if role not in self.roles:
                    problems.append(
                        (("connections", cname, "roles", group), f"unknown role {role!r}")
                    )
        problems.extend(self._guardrail_problems())
        problems.extend(self._masking_problems())
        problems.extend(self._review_problems())
        if self.web.oidc is not None:
            for idp_group, mapped in self.web.oidc.groups.items():
                for i, g in enumerate(mapped):
                    if g not in self.groups:
                        problems.append(
                            (("web", "oidc", "groups", idp_group, i), f"unknown group {g!r}")
                        )
        if problems:
            raise _CrossReferenceErrors(problems)
        return self

    def _review_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []

        def groups_known(where: tuple[str | int, ...], groups: list[str]) -> None:
            for j, g in enumerate(groups):
                if g not in self.groups:
                    problems.append(((*where, j), f"unknown group {g!r}"))

        def approvable(where: tuple[str | int, ...], groups: list[str], what: str) -> None:
            if not (groups or self.reviews.approvers):
                problems.append(
                    (
                        where,
                        f"{what} asks for reviews but names no approvers, and reviews.approvers "
                        "is empty: nobody could ever approve them",
                    )
                )

        groups_known(("reviews", "approvers"), self.reviews.approvers)
        for name, role in self.roles.items():
            groups_known(("roles", name, "approvers"), role.approvers)
            if any(role.decision_for(k) == "review" for k in SQL_CLASSES):
                approvable(("roles", name), role.approvers, f"role {name!r}")
        for i, rail in enumerate(self.guardrails):
            groups_known(("guardrails", i, "approvers"), rail.approvers)
            if rail.verdict == "review":
                approvable(("guardrails", i), rail.approvers, f"guardrail {rail.name!r}")
        for cname, c in self.connections.items():
            groups_known(("connections", cname, "grants", "approvers"), c.grants.approvers)
            for j, granted in enumerate(c.grants.roles):
                if granted not in self.roles:
                    problems.append(
                        (("connections", cname, "grants", "roles", j), f"unknown role {granted!r}")
                    )
            if c.grants.roles:
                approvable(("connections", cname, "grants"), c.grants.approvers, "grants")
            if c.on_parse_error == "review":
                approvable(("connections", cname, "on_parse_error"), [], f"connection {cname!r}")
            if c.reviews.wait > c.reviews.max_wait:
                problems.append(
                    (("connections", cname, "reviews", "wait"), "wait is longer than max_wait")
                )
        return problems

    def _masking_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if not self.masking.rules:
            return problems
        from wardgate.masking import ENTITIES

        for i, rule in enumerate(self.masking.rules):
            where: tuple[str | int, ...] = ("masking", "rules", i)
            if not rule.entities and not rule.columns:
                problems.append((where, "a masking rule needs entities, columns or both"))
            if not rule.sensitive and (rule.entities or not rule.columns):
                problems.append(
                    (where, "a rule with sensitive: false names columns only (no entities)")
                )
            for j, entity in enumerate(rule.entities):
                if entity != "all" and entity not in ENTITIES:
                    problems.append(
                        (
                            (*where, "entities", j),
                            f"unknown entity {entity!r}; known: all, {', '.join(sorted(ENTITIES))}",
                        )
                    )
            problems.extend(
                self._unknown_names(
                    where,
                    rule,
                    ("groups", "except_groups", "principals", "except_principals", "connections"),
                )
            )
        return problems

    def _unknown_names(
        self, where: tuple[str | int, ...], scope: Any, fields: tuple[str, ...]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """Names in a rule's scope lists (groups, principals, connections, their
        except_ forms) that the configuration does not define."""
        known: dict[str, Mapping[str, object]] = {
            "groups": self.groups,
            "principals": self.principals,
            "connections": self.connections,
        }
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for field in fields:
            kind = field.removeprefix("except_")
            for j, value in enumerate(getattr(scope, field)):
                if value not in known[kind]:
                    problems.append(((*where, field, j), f"unknown {kind[:-1]} {value!r}"))
        return problems

    def _guardrail_problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        from wardgate.policy.kubernetes import KUBERNETES_CLASSES, KUBERNETES_KINDS
        from wardgate.policy.shell import SHELL_CLASSES, SHELL_KINDS
        from wardgate.policy.sql import KNOWN_KINDS

        problems: list[tuple[tuple[str | int, ...], str]] = []
        names: set[str] = set()
        for i, rail in enumerate(self.guardrails):
            where: tuple[str | int, ...] = ("guardrails", i)
            if rail.name in names:
                problems.append(((*where, "name"), f"guardrail name {rail.name!r} is used twice"))
            names.add(rail.name)
            m = rail.match
            for j, kind in enumerate(m.sql):
                if (
                    kind not in SQL_CLASSES
                    and kind not in KNOWN_KINDS
                    and not kind.startswith("function:")
                ):
                    problems.append(
                        (
                            (*where, "match", "sql", j),
                            f"unknown statement class or kind {kind!r}; classes are "
                            f"{', '.join(SQL_CLASSES)}, kinds are listed in docs/policy.md",
                        )
                    )
            for j, kind in enumerate(m.kubernetes):
                if kind not in KUBERNETES_CLASSES and kind not in KUBERNETES_KINDS:
                    problems.append(
                        (
                            (*where, "match", "kubernetes", j),
                            f"unknown Kubernetes class or kind {kind!r}; classes are "
                            f"{', '.join(KUBERNETES_CLASSES)}, kinds are listed in docs/kubernetes.md",
                        )
                    )
            for j, kind in enumerate(m.commands):
                if kind not in SHELL_CLASSES and kind not in SHELL_KINDS:
                    problems.append(
                        (
                            (*where, "match", "commands", j),
                            f"unknown command class or kind {kind!r}; classes are "
                            f"{', '.join(SHELL_CLASSES)}, kinds are listed in docs/ssh.md",
                        )
                    )
            problems.extend(
                self._unknown_names((*where, "match"), m, ("groups", "principals", "connections"))
            )
        return problems

    # -- helpers used at run time -------------------------------------------------

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def data_path(self) -> Path:
        return self.path(self.data_dir)

    @property
    def review_url(self) -> str:
        """Base URL approvers use to reach this gateway's API (for links in messages)."""
        if self.reviews.url:
            return self.reviews.url.rstrip("/")
        addr = self.listen_address("api")
        if addr is None:
            return ""
        host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
        return f"http://{host}:{addr[1]}"

    @property
    def store_url(self) -> str:
        url = os.environ.get("WARDGATE_STORE") or self.store
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
            url = prefix + str(self.path(url[len(prefix) :]).resolve())
        return url

    def listen_address(
        self, protocol: Literal["api", "postgres", "ssh", "kubernetes"]
    ) -> tuple[str, int] | None:
        env = os.environ.get(f"WARDGATE_LISTEN_{protocol.upper()}")
        value = env if env else getattr(self.listen, protocol)
        return parse_hostport(value) if value else None

    def principal(self, name: str) -> Principal | None:
        """The principal ``name`` as this configuration has it; the same object every
        time (a relay asks per statement, and the audit journal writes a principal once
        per file by identity)."""
        p = self.principals.get(name)
        if p is None:
            return None
        memo = self._principal_memo
        known = memo.get(name)
        if known is not None and known[0] is p:  # the same (frozen) entry: the same answer
            return known[1]
        found = Principal(name, PrincipalKind(p.kind), frozenset(p.groups), p.sponsor)
        if len(memo) >= _PRINCIPAL_MEMO:
            memo.clear()
        memo[name] = (p, found)
        return found


class _CrossReferenceErrors(ValueError):
    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(msg for _, msg in problems))
        self.problems = problems


class ConfigError(Exception):
    """A configuration problem, already phrased for a human: file, line, key, what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- loading --------------------------------------------------------------------------


def _positions(
    node: yaml.Node,
    path: tuple[str | int, ...],
    out: dict[tuple[str | int, ...], int],
    duplicates: list[tuple[tuple[str | int, ...], int]],
) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                # YAML silently keeps the last one; in a policy file that hides a rule.
                duplicates.append(((*path, key), key_node.start_mark.line + 1))
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _positions(value_node, (*path, key), out, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _positions(item, (*path, i), out, duplicates)


def _line_for(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the config file: {exc.strerror}"]) from None
    return parse_config(text, file)


def parse_config(text: str, file: Path) -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{file}:1: the config must be a mapping of keys (store, connections, ...)"]
        )
    lines: dict[tuple[str | int, ...], int] = {}
    duplicates: list[tuple[tuple[str | int, ...], int]] = []
    if node is not None:
        _positions(node, (), lines, duplicates)
    if duplicates:
        raise ConfigError(
            [
                f"{file}:{line}: {_dotted(loc)}: duplicate key (an earlier one would be ignored)"
                for loc, line in duplicates
            ]
        )
    data["base_dir"] = str(file.resolve().parent)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            ctx_error = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_error, _CrossReferenceErrors):
                for loc, msg in ctx_error.problems:
                    problems.append(_format(file, loc, msg, lines))
                continue
            loc = _without_union_tags(tuple(err["loc"]))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see docs/configuration.md)"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            problems.append(_format(file, loc, msg, lines))
        raise ConfigError(problems) from None


def _without_union_tags(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Error locations as the file spells them: pydantic names the branch of a tagged
    union (``upstream.ssh.host_key``); the YAML has ``upstream.host_key``."""
    return tuple(
        part
        for i, part in enumerate(loc)
        if not (i and loc[i - 1] == "upstream" and part in ("postgres", "ssh", "kubernetes"))
    )


def _format(
    file: Path, loc: tuple[str | int, ...], msg: str, lines: dict[tuple[str | int, ...], int]
) -> str:
    line = _line_for(loc, lines)
    where = f"{file}:{line}" if line else str(file)
    return f"{where}: {_dotted(loc)}: {msg}"
