"""Who is calling: a human user or a non-human agent (with an optional human sponsor)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from wardgate.pickling import positional_pickle


class PrincipalKind(StrEnum):
    USER = "user"
    AGENT = "agent"


@positional_pickle
@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: PrincipalKind
    groups: frozenset[str]
    sponsor: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind is PrincipalKind.AGENT
