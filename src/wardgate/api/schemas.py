"""The API's response models and problem details: what each endpoint may return, field
by field (nothing that is not declared here can leak into a response)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

# The verdict and q filters of GET /sessions look at this many of the newest sessions
# that match the other filters (walked in started_at index order; each verdict probe is
# an indexed lookup of that session's events), whatever the size of the store.
SEARCH_SCAN_SESSIONS = 5000
MAX_SEARCH_TEXT = 100
MAX_CHECK_TEXT = 1_000_000

# Every text the API takes (path, query, body). PostgreSQL text cannot hold a NUL (a
# store on PostgreSQL would fail on it), and any constrained string also refuses a lone
# surrogate (JSON can spell one, UTF-8 cannot encode it): both are a 422 here.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]

# -- response models --------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class ValidationIssue(_Out):
    loc: list[str]
    msg: str


class Problem(_Out):
    """RFC 9457 problem details, as every error of this API is answered."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ValidationIssue] | None = Field(default=None, description="On 422")


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    schema = Problem.model_json_schema()
    return {c: {"content": {"application/problem+json": {"schema": schema}}} for c in codes}


class PostgresUpstream(_Out):
    type: Literal["postgres"] = "postgres"
    host: str
    port: int
    database: str
    user: str


class SshUpstream(_Out):
    type: Literal["ssh"] = "ssh"
    host: str
    port: int
    user: str
    host_key: str = Field(description="The target's pinned public host key (not a secret)")


class ReviewSettings(_Out):
    wait: float = Field(description="Seconds a held statement waits inline for approval")
    max_wait: float = Field(description="The longest wait a client may ask for, seconds")
    preview: Literal["none", "explain", "rollback"]


class KubernetesUpstream(_Out):
    type: Literal["kubernetes"] = "kubernetes"
    url: str = Field(description="The API server the gateway dials (its credential stays there)")


class Connection(_Out):
    name: str
    type: Literal["postgres", "ssh", "kubernetes"]
    description: str
    mode: Literal["enforce", "observe"]
    upstream: Annotated[
        PostgresUpstream | SshUpstream | KubernetesUpstream, Field(discriminator="type")
    ]
    roles: dict[str, str] = Field(description="group -> role on this connection")
    your_roles: list[str] = Field(description="The caller's roles here, grants included")
    granted_roles: list[str] = Field(description="Of those, the ones held through a grant")
    reviews: ReviewSettings
    grantable_roles: list[str]


class RolePolicy(_Out):
    name: str
    groups: list[str] = Field(description="Groups that hold this role on the connection")
    grantable: bool
    read: Literal["allow", "review", "block"]
    write: Literal["allow", "review", "block"]
    ddl: Literal["allow", "review", "block"]
    admin: Literal["allow", "review", "block"]
    shell: Literal["allow", "block"]
    sftp: Literal["allow", "block"]
    forwarding: Literal["allow", "block"]
    forwarding_ports: list[str] = Field(
        default=[], description="Kubernetes: the pod ports a port-forward may reach (empty: any)"
    )


class GuardrailMatchOut(_Out):
    sql: list[str] = []
    commands: list[str] = []
    programs: list[str] = []
    paths: list[str] = []
    tables: list[str] = []
    tables_written: list[str] = []
    columns: list[str] = []
    functions: list[str] = []
    kubernetes: list[str] = []
    resources: list[str] = []
    namespaces: list[str] = []
    verbs: list[str] = []
    ports: list[str] = []
    principals: list[str] = []
    groups: list[str] = []
    principal_kinds: list[Literal["user", "agent"]] = []
    connections: list[str] = []


class GuardrailConditionOut(_Out):
    without_where: bool | None = None
    without_limit: bool | None = None


class GuardrailOut(_Out):
    name: str
    match: GuardrailMatchOut
    condition: GuardrailConditionOut | None
    verdict: Literal["allow", "review", "block"]
    message: str


class EffectivePolicy(_Out):
    on_parse_error: Literal["block", "review"]
    roles: list[RolePolicy]
    guardrails: list[GuardrailOut] = Field(description="Guardrails that can match here")


class ConnectionDetail(Connection):
    policy: EffectivePolicy


class ConnectionList(_Out):
    connections: list[Connection]


class PrincipalOut(_Out):
    name: str
    kind: Literal["user", "agent"]
    groups: list[str]
    sponsor: str | None


class PrincipalList(_Out):
    principals: list[PrincipalOut]


class TokenOut(_Out):
    id: str
    name: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    active: bool
    current: bool = Field(description="The token this request was made with")


class TokenList(_Out):
    tokens: list[TokenOut]


class SessionSummary(_Out):
    id: str
    protocol: str
    principal: str
    principal_kind: str
    sponsor: str | None
    connection: str
    client_addr: str
    application_name: str
    tls: bool
    started_at: float
    ended_at: float | None
    status: str
    error: str | None
    action_count: int
    blocked_count: int


class SessionList(_Out):
    sessions: list[SessionSummary]
    complete: bool = Field(
        description="False when the verdict or q filter stopped at its scan bound (the newest "
        f"{SEARCH_SCAN_SESSIONS} sessions matching the other filters) before finding `limit` "
        "sessions: older sessions were not searched; narrow since/until/principal/connection"
    )


class StatementOut(_Out):
    klass: str = Field(validation_alias=AliasChoices("class", "klass"), serialization_alias="class")
    kinds: list[str] = []
    text: str = ""
    error: str | None = None
    tables_read: list[str] = []
    tables_written: list[str] = []
    functions: list[str] = []
    columns: list[str] = []


class VerdictOut(_Out):
    decision: Literal["allow", "review", "block"]
    rule: str
    rules: list[str] = []
    reason: str = ""
    enforced: bool = True


class ResultOut(_Out):
    """The response an action returned to the client, as recorded (masked), within the
    connection's budgets: for SQL the first rows and a SHA-256 of every DataRow/CopyData
    byte the client received; for SSH exec output and MCP tool results (``format``
    text/1) the first bytes as ``text`` and a SHA-256 of all of them (docs/audit.md)."""

    format: str = Field(default="pg-messages/1", description="pg-messages/1 or text/1")
    rows: list[list[str | None]] = []
    text: str | None = Field(default=None, description="text/1: the output as recorded")
    recorded_rows: int = 0
    recorded_bytes: int = 0
    complete: bool = Field(description="Every row the client received is in rows")
    stream_bytes: int = Field(description="Bytes of the whole result stream")
    sha256: str = Field(description="SHA-256 of the whole result stream, as sent")


class ActionOut(_Out):
    """One recorded action, as the recorder stored it (params and output as recorded,
    output already masked)."""

    id: int
    ts: float
    seq: int | None = None
    kind: str = ""
    text: str = ""
    params: list[str | None] = []
    resolved: str | None = None
    verdict: VerdictOut
    statements: list[StatementOut] = []
    status: str = ""
    rows: int | None = None
    command: str | None = None
    duration_ms: float | None = None
    error: str | None = None
    sqlstate: str | None = None
    trace_id: str | None = None
    output: str | None = None
    result: ResultOut | None = None


class SessionReviewEvent(_Out):
    id: int
    ts: float
    type: str = Field(description="review.requested, review.vote.approve, review.executed ...")
    by: str = Field(description="Who acted (the principal of the event)")
    review: str | None = None
    review_kind: str | None = None
    details: dict[str, Any] = {}


class SessionDetail(SessionSummary):
    actions: list[ActionOut]
    reviews: list[SessionReviewEvent]


class CheckBody(BaseModel):
    connection: Text
    principal: Text | None = Field(default=None, description="Default: the caller")
    text: Text = Field(max_length=MAX_CHECK_TEXT, description="SQL, or a shell command on ssh")


class CheckResult(VerdictOut):
    principal: str
    connection: str
    statements: list[StatementOut]


class AuditVerification(_Out):
    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    warning: str | None = Field(
        default=None,
        description="ok, but deletions named by retention sweeps that no signed checkpoint "
        "covers are unverified (docs/audit.md)",
    )


class CheckpointOut(_Out):
    """A signed chain head, as `wardgate audit checkpoint` exports it (docs/audit.md)."""

    seq: int
    head_hash: str
    ts: float
    time: str
    key_id: str
    signature: str
    format: str


class CheckpointIn(BaseModel):
    seq: int = Field(ge=0)
    head_hash: str = Field(max_length=64)
    ts: float
    key_id: str = Field(max_length=64)
    signature: str = Field(max_length=256)


class CheckpointVerifyBody(BaseModel):
    checkpoint: CheckpointIn
    public_key: str = Field(
        max_length=1024, description="The signing key's public half: PEM, or 32 bytes in base64"
    )


# -- reviews, grants, proposals ---------------------------------------------------------

ReviewKind = Literal["action", "grant", "proposal", "code"]
ReviewStatus = Literal[
    "pending",
    "approved",
    "denied",
    "expired",
    "cancelled",
    "executing",
    "executed",
    "failed",
    "rolled_back",
    "revoked",
]


class WhoAmI(_Out):
    principal: str
    kind: Literal["user", "agent"]
    groups: list[str]
    sponsor: str | None = Field(description="The human an agent acts for; null for a human")
    token_id: str = Field(
        description="The id of the token this request was made with, or web:<session id> "
        "for a human signed in with `wardgate login --sso`"
    )


class RequirementOut(_Out):
    groups: list[str] = Field(description="Approver groups, any of which counts")
    quorum: int = Field(description="Distinct humans from those groups who must approve")


class VoteOut(_Out):
    voter: str
    decision: Literal["approve", "deny"]
    reason: str
    at: float


class ReviewOut(_Out):
    """A review (of an action, a grant, a proposal or agent-side code) with what the
    caller may do with it. ``ReviewInfo.to_dict()`` plus ``url``, ``can_vote``,
    ``still_needed``, ``can_cancel`` and ``can_revoke``; webhook notifications carry the
    same fields but those five."""

    id: str
    kind: ReviewKind
    status: ReviewStatus = Field(description="As of now: a lapsed pending review is expired")
    connection: str = Field(description="Empty for a code review")
    principal: str = Field(description="Who asked")
    principal_kind: Literal["user", "agent"]
    sponsor: str | None
    protocol: str = Field(description="Where it was asked: postgres, ssh, mcp, api ...")
    session_id: str = Field(description="The recorded session it came from; empty if none")
    client_addr: str
    text: str = Field(description="What is to run (or the grant asked for), as written")
    detail: dict[str, Any] = Field(
        description="By kind: action {params, resolved?}; grant {role, duration}; "
        "proposal {statements}; code {context}"
    )
    rule: str = Field(description="The rule that asked for the review")
    rules: list[str]
    reason: str
    justification: str | None
    requirements: list[RequirementOut] = Field(description="Every one must be met")
    sponsor_may_approve: bool
    created_at: float
    expires_at: float = Field(description="When a pending review lapses")
    decided_at: float | None
    approved_until: float | None = Field(
        description="Until when an approval can be used (a grant: when it ends)"
    )
    executed_at: float | None
    preview: dict[str, Any] | None = Field(
        description="The impact preview a reviewer sees (PostgreSQL writes), when one ran"
    )
    result: dict[str, Any] | None = Field(description="What running it did, once it ran")
    votes: list[VoteOut]
    url: str = Field(description="Where a human approves it (the web UI page)")
    can_vote: bool = Field(description="Whether the caller may approve it now")
    still_needed: list[str] = Field(description="Unmet requirements while pending")
    can_cancel: bool = Field(description="Whether the caller may cancel it now")
    can_revoke: bool = Field(description="Whether the caller may revoke it now (grants)")


class ReviewList(_Out):
    reviews: list[ReviewOut]


class GrantList(_Out):
    grants: list[ReviewOut] = Field(description="Reviews of kind grant")
