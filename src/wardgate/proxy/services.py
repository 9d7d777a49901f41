"""What every listener shares in one gateway process. No module globals: one of these per process."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from wardgate.audit.recorder import Recorder
from wardgate.config import Config
from wardgate.gate import Gate
from wardgate.identity.passwords import UserPasswords
from wardgate.identity.principals import Principal
from wardgate.identity.ratelimit import LoginLimiter
from wardgate.identity.tokens import TokenInfo, TokenService
from wardgate.lifecycle import Lifecycle
from wardgate.policy.mask_rules import MaskingPolicy
from wardgate.proxy.pg_catalog import ColumnNames
from wardgate.proxy.tasks import Tasks
from wardgate.reviews.waiting import ReviewRuntime
from wardgate.store.cancel import CancelKeys
from wardgate.store.db import Store
from wardgate.vault.secrets import Vault
from wardgate.web.sessions import WebSessions


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
    column_names: ColumnNames = field(default_factory=ColumnNames)
    reviews: ReviewRuntime | None = None
    # Humans signing in to the web UI (and the CLI after OIDC login).
    passwords: UserPasswords | None = None
    web_sessions: WebSessions | None = None
    web_key: bytes = b""  # signs the short-lived OIDC sign-in cookie
    oidc: Any = None  # wardgate.identity.oidc.OidcClient when web.oidc is configured
    lifecycle: Lifecycle = field(default_factory=Lifecycle)  # /readyz, draining

    def reload(self, config: Config) -> None:
        """Swap the policy atomically; sessions pick it up at their next action (masking
        at their next result). A changed masking key takes a restart."""
        self.config = config
        self.gate = Gate(config)
        self.masking = MaskingPolicy(config, self.masking_key)

    async def check_bearer(
        self, token: str, addr: str, realm: str
    ) -> tuple[TokenInfo, Principal] | None:
        """A token presented without a principal name (HTTP bearer, SSH password): its
        token and principal, or None. Failures count per client address and ``realm``
        only, since the token names no principal; raises TooManyFailures while this
        address must wait."""
        key = f"{realm}@{addr}"
        wait = await asyncio.to_thread(self.limiter.retry_after, key, addr)
        if wait is not None:
            raise TooManyFailures(wait)
        info = await asyncio.to_thread(self.tokens.check_bearer, token)
        principal = self.config.principal(info.principal) if info is not None else None
        if info is None or principal is None:
            await asyncio.to_thread(self.limiter.record_failure, key, addr)
            return None
        return info, principal


class TooManyFailures(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:.0f} s")
        self.wait = wait
