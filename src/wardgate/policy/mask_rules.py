"""Which masking applies to a session: the configured rules resolved for one principal
on one connection. Pure; the engine that finds and replaces values is ``wardgate.masking``.

Every rule whose `who` matches applies: its content detectors run on text values, in
rule order, and its column globs name columns whose whole value is masked (the first
matching glob decides the strategy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Protocol

from wardgate.identity.principals import Principal, in_scope
from wardgate.masking import ENTITIES, Masker, Strategy
from wardgate.masking.detect import clean_bytes
from wardgate.masking.masker import ascii_compatible

_IP_ENTITIES = frozenset({"ipv4", "ipv6"})


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """One column glob of a masking rule, as the query rewriter applies it."""

    rule: str
    glob: str  # schema.table.column, lower case
    strategy: str  # redact | partial | hash | pseudonym
    predicates: str = "block"  # allow | block


class MaskingRule(Protocol):
    """One of ``masking.rules`` in the configuration (wardgate.config.MaskingRuleConfig;
    policy does not import the configuration)."""

    @property
    def connections(self) -> Sequence[str]: ...
    @property
    def principals(self) -> Sequence[str]: ...
    @property
    def groups(self) -> Sequence[str]: ...
    @property
    def principal_kinds(self) -> Sequence[str]: ...
    @property
    def except_groups(self) -> Sequence[str]: ...
    @property
    def except_principals(self) -> Sequence[str]: ...
    @property
    def entities(self) -> Sequence[str]: ...
    @property
    def columns(self) -> Sequence[str]: ...
    @property
    def strategy(self) -> str: ...
    @property
    def sensitive(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def predicates(self) -> str: ...


class _Masking(Protocol):
    @property
    def rules(self) -> Sequence[MaskingRule]: ...


class MaskingSettings(Protocol):
    """A configuration, as far as masking reads it (wardgate.config.Config)."""

    @property
    def masking(self) -> _Masking: ...


# Masking is a pure function of (rules, key, value), and the same rows are read again
# and again (an agent re-running its query): remember results for short values.
_MEMO_MAX_VALUE = 256
_MEMO_MAX_ENTRIES = 65536


@dataclass(frozen=True, slots=True)
class SessionMasking:
    content: tuple[Masker, ...]  # run on every text value, in order
    columns: tuple[tuple[str, Masker], ...]  # (schema.table.column glob, masker)
    masks_ips: bool  # content rules cover IP addresses (inet/cidr values are hidden)
    # The column rules again, as the rewriter reads them (postgres/mask_rewrite.py).
    column_rules: tuple[ColumnRule, ...] = ()
    memo: dict[tuple[bytes, str, bool], bytes | None] = field(default_factory=dict, compare=False)

    def signature(self) -> tuple[object, ...]:
        """What this masking does, by value (a reload makes new Masker objects): a
        session compares it to tell whether a reload changed its masking."""
        return (
            tuple((m.strategy, m.entities) for m in self.content),
            tuple((glob, m.strategy, m.entities) for glob, m in self.columns),
            self.masks_ips,
            self.column_rules,
        )

    def mask_text(self, text: str) -> str:
        for masker in self.content:
            text = masker.mask_text(text)
        return text

    def mask_bytes(self, data: bytes, encoding: str, hinted: bool = False) -> bytes | None:
        """The masked bytes, or None when nothing was found (the fast path). ``hinted``:
        the column's name says phone (or SSN, BSN): bare digits count."""
        if ascii_compatible(encoding) and clean_bytes(data, hinted):
            return None  # cheaper than the memo: fresh ids, amounts, plain words
        if len(data) <= _MEMO_MAX_VALUE:
            key = (data, encoding, hinted)
            try:
                return self.memo[key]
            except KeyError:
                pass
            result = self._mask_bytes(data, encoding, hinted)
            if len(self.memo) >= _MEMO_MAX_ENTRIES:
                self.memo.clear()
            self.memo[key] = result
            return result
        return self._mask_bytes(data, encoding, hinted)

    def _mask_bytes(self, data: bytes, encoding: str, hinted: bool = False) -> bytes | None:
        changed: bytes | None = None
        for masker in self.content:
            out = masker.mask_bytes(data if changed is None else changed, encoding, hinted)
            if out is not None:
                changed = out
        return changed

    def column_masker(self, qualified: str) -> Masker | None:
        """The masker of the first column rule matching ``schema.table.column``."""
        for pattern, masker in self.columns:
            if fnmatchcase(qualified, pattern):
                return masker
        return None


class MaskingPolicy:
    """The masking rules of one configuration, with a deployment key."""

    def __init__(self, config: MaskingSettings, key: bytes) -> None:
        self._rules = config.masking.rules
        self._key = key
        self._maskers: dict[tuple[Strategy, frozenset[str]], Masker] = {}
        self._sessions: dict[tuple[str, frozenset[str], str, str], SessionMasking | None] = {}

    def for_session(self, principal: Principal, connection: str) -> SessionMasking | None:
        """What to mask for this principal on this connection; None when nothing is."""
        cache_key = (principal.name, principal.groups, principal.kind.value, connection)
        if cache_key not in self._sessions:
            self._sessions[cache_key] = self._resolve(principal, connection)
        return self._sessions[cache_key]

    def _resolve(self, principal: Principal, connection: str) -> SessionMasking | None:
        # sensitive: false rules only mark columns as reviewed and harmless.
        rules = [r for r in self._rules if r.sensitive and _applies(r, principal, connection)]
        if not rules:
            return None
        content: list[Masker] = []
        columns: list[tuple[str, Masker]] = []
        column_rules: list[ColumnRule] = []
        ips = False
        for rule in rules:
            strategy = Strategy(rule.strategy)
            if rule.entities:
                entities = ENTITIES if "all" in rule.entities else frozenset(rule.entities)
                content.append(self._masker(strategy, entities))
                ips = ips or bool(entities & _IP_ENTITIES)
            for pattern in rule.columns:
                columns.append((_column_glob(pattern), self._masker(strategy, ENTITIES)))
                column_rules.append(
                    ColumnRule(rule.name, _column_glob(pattern), rule.strategy, rule.predicates)
                )
        return SessionMasking(tuple(content), tuple(columns), ips, column_rules=tuple(column_rules))

    def _masker(self, strategy: Strategy, entities: frozenset[str]) -> Masker:
        key = (strategy, entities)
        if key not in self._maskers:
            self._maskers[key] = Masker(self._key, strategy, entities)
        return self._maskers[key]


def masks_output(rules: Sequence[MaskingRule], principal: Principal, connection: str) -> bool:
    """Whether some rule masks values in this principal's output on this connection."""
    return any(rule.entities and _applies(rule, principal, connection) for rule in rules)


def _applies(rule: MaskingRule, principal: Principal, connection: str) -> bool:
    if principal.name in rule.except_principals or not principal.groups.isdisjoint(
        rule.except_groups
    ):
        return False
    return in_scope(
        principal,
        connection,
        principals=rule.principals,
        groups=rule.groups,
        kinds=rule.principal_kinds,
        connections=rule.connections,
    )


def _column_glob(pattern: str) -> str:
    """``password`` and ``users.password`` mean any schema (and table); lower-cased."""
    parts = pattern.lower().split(".")
    while len(parts) < 3:
        parts.insert(0, "*")
    return ".".join(parts)
