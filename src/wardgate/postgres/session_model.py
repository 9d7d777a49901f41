"""The gateway's model of one PostgreSQL session, changed only when the server confirms.

The relay judges every statement against this model: which SQL a prepared-statement
name or a portal holds, whether the client encoding may have changed, which search_path
the session has. A client may pipeline: it can send ``PREPARE s1 ...`` and, before any
answer, ``EXECUTE s1``. So a change the client asks for is only *proposed* when its
message is forwarded, and *confirmed* (ParseComplete, BindComplete, CloseComplete, the
statement's CommandComplete) or *refuted* (an error, or skipped after one) by the
server's reply. Until then, a name has several possible meanings and the relay judges
every one of them; the strictest verdict wins.

Within one batch (the messages up to a Sync, or one Query string) a later message only
runs if every earlier one succeeded, so there the batch's own latest proposal is the
only meaning. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from wardgate.postgres.mask_outputs import MaskedOutputs

V = TypeVar("V")


@dataclass(eq=False)
class Change(Generic[V]):
    """One proposed change to a name map: ``name`` None means every name (DEALLOCATE
    ALL, DISCARD ALL); ``value`` None means the name is dropped."""

    name: str | None
    value: V | None
    batch: int
    weight: int = 0  # the value's (`_weight`), counted in Names.bytes while pending


class NamesFull(Exception):
    """A name map of the session would pass its limit (``Names.most``, ``most_bytes``)."""


def _weight(value: object) -> int:
    return int(getattr(value, "weight", 0))


@dataclass
class Names(Generic[V]):
    """Prepared-statement or portal names, as the server holds them. PostgreSQL allows
    any number; the gateway keeps a copy of what each holds, so a session may hold at
    most ``most`` names here and ``most_bytes`` of their text (``weight``)."""

    confirmed: dict[str, V] = field(default_factory=dict)
    pending: list[Change[V]] = field(default_factory=list)
    most: int = 0  # 0: no limit
    most_bytes: int = 0
    bytes: int = 0  # the weight of what ``confirmed`` and ``pending`` hold
    # The weight of each confirmed name's value, as its change counted it.
    _weights: dict[str, int] = field(default_factory=dict, repr=False)

    def propose(self, name: str | None, value: V | None, batch: int) -> Change[V]:
        """Raises NamesFull when ``value`` under a new ``name`` would pass a limit
        (counting every change still pending as a new name). The unnamed statement and
        portal ("") are one name each, replaced by every new one: not limited here."""
        weight = _weight(value)
        if value is not None and self.most and name and name not in self.confirmed:
            if len(self.confirmed) + len(self.pending) >= self.most:
                raise NamesFull(f"more than {self.most} names")
            if self.bytes + weight > self.most_bytes:
                raise NamesFull(f"more than {self.most_bytes} bytes of text in its names")
        change = Change(name, value, batch, weight)
        self.pending.append(change)
        self.bytes += weight
        return change

    def confirm(self, change: Change[V]) -> None:
        if change not in self.pending:
            return
        self.pending.remove(change)
        if change.name is None:
            self.confirmed.clear()
            self._weights.clear()
            self.bytes = sum(c.weight for c in self.pending)
            return
        if self.confirmed.pop(change.name, None) is not None:
            self.bytes -= self._weights.pop(change.name)
        if change.value is None:
            self.bytes -= change.weight
        else:
            self.confirmed[change.name] = change.value  # its weight stays counted
            self._weights[change.name] = change.weight

    def refute(self, change: Change[V]) -> None:
        if change in self.pending:
            self.pending.remove(change)
            self.bytes -= change.weight

    def candidates(self, name: str, batch: int) -> list[V | None]:
        """Every value ``name`` may hold when a message of ``batch`` reaches the server
        (None: no such name), most likely first."""
        for c in reversed(self.pending):  # the batch's own changes are the latest
            if c.batch != batch:
                break
            if c.name == name:
                return [c.value]
            if c.name is None:
                return [None]
        out: list[V | None] = [self.confirmed.get(name)]
        for c in self.pending:
            if c.name in (name, None):
                value = c.value if c.name == name else None
                if value not in out:
                    out.append(value)
        return out

    def drop(self, keep: set[str]) -> None:
        """Forget confirmed names other than ``keep`` (portals at a transaction's end)."""
        if not keep:
            self.bytes -= sum(self._weights.values())
            self.confirmed.clear()
            self._weights.clear()
            return
        for name in [n for n in self.confirmed if n not in keep]:
            del self.confirmed[name]
            self.bytes -= self._weights.pop(name)


@dataclass(frozen=True)
class Prepared:
    """What a prepared-statement name holds: its SQL and declared parameter types; for a
    principal under column masking rules, ``masked``: the text the server prepared (the
    rewrite, or the SQL itself), None otherwise."""

    sql: str
    param_types: tuple[int, ...] = ()
    masked: str | None = None
    by_sql: bool = False  # made by SQL PREPARE (``sql`` is the PREPARE), not by a Parse

    @property
    def weight(self) -> int:
        """About what the gateway holds for it, in bytes (Names.most_bytes)."""
        return 100 + len(self.sql) + len(self.masked or "") + 4 * len(self.param_types)


@dataclass(frozen=True)
class Portal:
    """What a portal holds: the statement it was bound to (each possible SQL of it, when
    that was still unconfirmed), the rendered parameters and their exact digest."""

    sqls: tuple[str, ...]
    params: tuple[str | None, ...] = ()
    binding: str = ""
    holdable: bool = False  # a cursor DECLAREd WITH HOLD outlives its transaction
    # The result columns the database masks (mask_outputs.py), from the text the server
    # prepared for the statement bound; None: every column is scanned.
    outputs: MaskedOutputs | None = None

    @property
    def weight(self) -> int:
        """About what the gateway holds for it, in bytes (Names.most_bytes); its SQL is
        the prepared statement's own string, counted there too."""
        # map/filter, not generators: one Portal per Bind. filter(None) drops the NULLs
        # (and empty strings, which weigh nothing anyway).
        return (
            100
            + sum(map(len, self.sqls))
            + sum(map(len, filter(None, self.params)))
            + len(self.binding)
        )


@dataclass
class SessionModel:
    statements: Names[Prepared] = field(default_factory=Names)
    portals: Names[Portal] = field(default_factory=Names)
    # The batch being sent: one Query string, or the extended messages up to a Sync.
    batch: int = 0
    # The latest batch holding a statement that may change client_encoding, and the
    # batch whose reply last confirmed the encoding (ParameterStatus precedes
    # ReadyForQuery): between the two, later bytes may be decoded differently.
    encoding_batch: int = -1
    confirmed_batch: int = -1
    # Whether this session ever asked for another client_encoding: from then on, the end
    # of a transaction may undo such a change, so it too leaves the encoding unsure.
    encoding_touched: bool = False
    # The transaction status of the last ReadyForQuery: I idle, T in a block, E failed.
    transaction: str = "I"

    @property
    def encoding_uncertain(self) -> bool:
        return self.encoding_batch > self.confirmed_batch

    def next_batch(self) -> None:
        self.batch += 1
