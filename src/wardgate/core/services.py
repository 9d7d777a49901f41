"""What every listener shares in one gateway process. No module globals: one of these per process."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from wardgate.audit.recorder import Recorder
from wardgate.config import Config
from wardgate.core.proposals import ProposalCheck
from wardgate.core.tasks import Tasks
from wardgate.core.web_sessions import WebSessions
from wardgate.gate import Gate
from wardgate.identity.passwords import UserPasswords
from wardgate.identity.principals import Principal
from wardgate.identity.ratelimit import LoginLimiter
from wardgate.identity.tokens import TokenInfo, TokenService
from wardgate.lifecycle import Lifecycle
from wardgate.policy.mask_rules import MaskingPolicy
from wardgate.reviews.waiting import ReviewRuntime
from wardgate.store.cancel import CancelKeys
from wardgate.store.db import Store
from wardgate.vault.secrets import Vault

T = TypeVar("T")


@dataclass
class Services:
    config: Config
    gate: Gate
    store: Store
    recorder: Recorder
    tokens: TokenService
    limiter: LoginLimiter
    cancel_keys: CancelKeys
    vault: Vault
    server_tls: ssl.SSLContext | None
    masking_key: bytes
    masking: MaskingPolicy
    tasks: Tasks = field(default_factory=Tasks)
    sessions: set[object] = field(default_factory=set)
    reviews: ReviewRuntime | None = None
    # Humans signing in to the web UI (and the CLI after OIDC login).
    passwords: UserPasswords | None = None
    web_sessions: WebSessions | None = None
    web_key: bytes = b""  # signs the short-lived OIDC sign-in cookie
    oidc: Any = None  # wardgate.identity.oidc.OidcClient when web.oidc is configured
    # How a proposal's statements are checked before it is filed, by their action kind
    # ("sql"): registered at startup by the protocol that runs them (core.proposals asks).
    proposal_checks: dict[str, ProposalCheck] = field(default_factory=dict)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # /readyz, draining
    # Per-process state of protocol packages, which core does not know (see state()).
    _state: dict[Callable[[], Any], Any] = field(default_factory=dict, repr=False, init=False)

    def state(self, make: Callable[[], T]) -> T:
        """The one ``make()`` of this process, made on first use: state a protocol
        package keeps per process (PostgreSQL's column-name cache: ColumnNames)."""
        found = self._state.get(make)
        if found is None:
            found = self._state[make] = make()
        return cast(T, found)

    def reload(self, config: Config) -> None:
        """Swap the policy atomically; sessions pick it up at their next action (masking
        at their next result; a PostgreSQL session whose masking changed is refused until
        it reconnects, relay_state.py). A changed masking key takes a restart.
        Catalogue facts are kept for connections that reach the same target, forgotten
        for those whose upstream changed (judged as unread until the watch reads them)."""
        for name, before in self.config.connections.items():
            after = config.connections.get(name)
            if after is None or after.upstream != before.upstream:
                self.gate.facts.forget(name)
        self.config = config
        self.gate = Gate(config, self.gate.facts)
        self.masking = MaskingPolicy(config, self.masking_key)

    async def check_bearer(
        self, token: str, addr: str, realm: str
    ) -> tuple[TokenInfo, Principal] | None:
        """A token presented without a principal name (HTTP bearer, SSH password): its
        token and principal, or None. Failures count per client address and ``realm``
        only, since the token names no principal (past the threshold, wrong tokens are
        answered slowly; right ones never are, even past the address's threshold: a
        wrong token costs one HMAC lookup, and refusing would let anyone on the address
        lock everyone else on it out)."""
        key = f"{realm}@{addr}"
        info = await asyncio.to_thread(self.tokens.check_bearer, token)
        principal = self.config.principal(info.principal) if info is not None else None
        if info is None or principal is None:
            delay = await asyncio.to_thread(self.limiter.record_failure, key, addr)
            await asyncio.sleep(delay)  # throttled: slow this address's wrong tokens
            return None
        return info, principal


class TooManyFailures(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:.0f} s")
        self.wait = wait
