"""What every listener shares in one gateway process. No module globals: one of these per process."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from wardgate.audit.recorder import Recorder
from wardgate.config import Config
from wardgate.gate import Gate
from wardgate.identity.ratelimit import LoginLimiter
from wardgate.identity.tokens import TokenService
from wardgate.proxy.tasks import Tasks
from wardgate.store.cancel import CancelKeys
from wardgate.store.db import Store
from wardgate.vault.secrets import Vault


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
    tasks: Tasks = field(default_factory=Tasks)
    sessions: set[object] = field(default_factory=set)

    def reload(self, config: Config) -> None:
        """Swap the policy atomically; sessions pick it up at their next action."""
        self.config = config
        self.gate = Gate(config)
