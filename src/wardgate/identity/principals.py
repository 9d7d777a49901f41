"""Who is calling: a human user or a non-human agent (with an optional human sponsor)."""

from __future__ import annotations

from collections.abc import Collection
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


def in_scope(
    principal: Principal,
    connection: str,
    *,
    principals: Collection[str] = (),
    groups: Collection[str] = (),
    kinds: Collection[str] = (),
    connections: Collection[str] = (),
) -> bool:
    """Whether a rule scoped by these lists covers ``principal`` on ``connection``.

    Every list given must match (AND); within a list any value matches (OR); an empty
    list matches everyone. Guardrails and masking rules scope themselves this way.
    """
    return (
        (not connections or connection in connections)
        and (not principals or principal.name in principals)
        and (not groups or not principal.groups.isdisjoint(groups))
        and (not kinds or principal.kind.value in kinds)
    )
