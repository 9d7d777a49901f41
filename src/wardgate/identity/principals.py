"""Who is calling: a human user or a non-human agent (with an optional human sponsor)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PrincipalKind(StrEnum):
    USER = "user"
    AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: PrincipalKind
    groups: frozenset[str]
    sponsor: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind is PrincipalKind.AGENT

    def __reduce__(self) -> tuple[type[Principal], tuple[object, ...]]:
        # Pickled with each batch sent to the recorder process (see audit.writer).
        return (Principal, (self.name, self.kind, self.groups, self.sponsor))
