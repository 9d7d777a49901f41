"""What became of an approved statement's transaction, as the server confirms it.

An approved UPDATE that completes inside a transaction is not done yet: the client may
roll it back (ROLLBACK, ROLLBACK TO SAVEPOINT, a COMMIT of a failed transaction, which
the server answers ROLLBACK), a later statement of the same implicit transaction may
fail, or the session may end before COMMIT. The review's outcome waits here until the
server says: a COMMIT tag, or ReadyForQuery with status ``I`` after no error, settles it
as committed; a ROLLBACK tag (of the whole transaction, or of a savepoint set before it
ran), or ``I`` after an error, as rolled back. Pure: the relay feeds it the server's
messages and records what it returns (relay_state.py, replies.py).
"""

from __future__ import annotations

from typing import Any

from wardgate.policy.sql import transaction_statement
from wardgate.reviews.model import ReviewInfo

# CommandComplete tags that move a transaction or its savepoints.
TRANSACTION_TAGS = frozenset({"COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PREPARE TRANSACTION"})


ROLLED_BACK = "rolled_back"

Settled = tuple[ReviewInfo, dict[str, Any]]


def savepoint_name(text: str) -> str | None:
    """The savepoint a SAVEPOINT, RELEASE or ROLLBACK TO statement names, as the server
    reads it (not the text's last word: a comment or an escape would mislead)."""
    found = transaction_statement(text)
    return found[1] if found is not None else None


def _rolls_back_to(text: str) -> bool:
    found = transaction_statement(text)
    return found is not None and found[0] == "TRANS_STMT_ROLLBACK_TO"


class TransactionOutcome:
    """Approved statements that ran and whose transaction has not ended yet."""

    __slots__ = ("open", "savepoints", "aborted")

    def __init__(self) -> None:
        # (review, its result so far, how many savepoints were open when it ran)
        self.open: list[tuple[ReviewInfo, dict[str, Any], int]] = []
        self.savepoints: list[str] = []  # confirmed by their SAVEPOINT tags
        self.aborted = False  # an error since the transaction (or savepoint) began

    def ran(self, review: ReviewInfo, result: dict[str, Any]) -> None:
        self.open.append((review, result, len(self.savepoints)))

    def error(self) -> None:
        """The server sent an ErrorResponse: the transaction cannot commit any more
        (until a ROLLBACK TO SAVEPOINT recovers it)."""
        self.aborted = True

    def command(self, tag: str, text: str) -> list[Settled]:
        """A CommandComplete ``tag`` (in TRANSACTION_TAGS) of the statement ``text``."""
        if tag == "SAVEPOINT":
            if (name := savepoint_name(text)) is not None:
                self.savepoints.append(name)
            return []
        if tag == "RELEASE":
            at = self._find(savepoint_name(text))
            if at is not None:  # what ran after it now belongs to the enclosing level
                del self.savepoints[at:]
                self.open = [(r, res, min(depth, at)) for r, res, depth in self.open]
            return []
        if tag == "ROLLBACK" and _rolls_back_to(text):
            # Undoes what ran after the savepoint, which stays; the transaction recovers.
            at = self._find(savepoint_name(text))
            keep = at + 1 if at is not None else 1  # unsure which: after the first one
            del self.savepoints[keep:]
            self.aborted = False
            undone = [(r, res) for r, res, depth in self.open if depth >= keep]
            self.open = [(r, res, depth) for r, res, depth in self.open if depth < keep]
            return self._settle(
                undone,
                ROLLED_BACK,
                "a ROLLBACK TO SAVEPOINT undid it (the savepoint was set before it ran)",
            )
        if tag == "COMMIT":
            return self._end(committed=True)
        if tag == "ROLLBACK":
            return self._end(
                committed=False,
                why="its transaction ended in ROLLBACK (a ROLLBACK, or a COMMIT of a transaction "
                "that had failed)",
            )
        if tag == "PREPARE TRANSACTION":
            settled = self._settle(
                [(r, res) for r, res, _ in self.open],
                "failed",
                "its transaction was prepared for two-phase commit (PREPARE TRANSACTION); "
                "whether COMMIT PREPARED follows is not seen here: check the target",
            )
            self._reset()
            return settled
        return []

    def ready(self, status: bytes) -> list[Settled]:
        """ReadyForQuery with this transaction status (``I`` idle, ``T`` in a
        transaction, ``E`` in a failed one)."""
        if status != b"I":
            return []
        if self.aborted:
            return self._end(
                committed=False,
                why="a later statement of its transaction failed; nothing of it was kept",
            )
        return self._end(committed=True)

    def ended(self, in_flight: bool) -> list[Settled]:
        """The session ended with these still open. PostgreSQL rolls back an open
        transaction when its connection closes, unless the end (a COMMIT) was on its way
        and unanswered: then nobody here knows."""
        if in_flight:
            settled = self._settle(
                [(r, res) for r, res, _ in self.open],
                "failed",
                "the session ended before the server confirmed the end of its transaction; "
                "whether it committed is unknown: check the target",
            )
            self._reset()
            return settled
        return self._end(
            committed=False,
            why="the session ended before COMMIT, and the server rolls back an open transaction",
        )

    # -- internals ----------------------------------------------------------------------

    def _find(self, name: str | None) -> int | None:
        if name is None or name not in self.savepoints:
            return None
        return len(self.savepoints) - 1 - self.savepoints[::-1].index(name)

    def _end(self, *, committed: bool, why: str = "") -> list[Settled]:
        ran = [(r, res) for r, res, _ in self.open]
        self._reset()
        if committed:
            return [(r, {**res, "transaction": "committed"}) for r, res in ran]
        return self._settle(ran, ROLLED_BACK, why)

    def _reset(self) -> None:
        self.open = []
        self.savepoints = []
        self.aborted = False

    @staticmethod
    def _settle(
        ran: list[tuple[ReviewInfo, dict[str, Any]]], status: str, why: str
    ) -> list[Settled]:
        return [
            (
                r,
                {
                    **res,
                    "status": status,
                    "transaction": ROLLED_BACK if status == ROLLED_BACK else "unknown",
                    "error": f"rolled back: {why}" if status == ROLLED_BACK else why,
                },
            )
            for r, res in ran
        ]
