"""The commit barrier's questions between workers (ddl_board.py), as three workers
sharing one board would see them: the board is copied by fork, so each worker is the
same object with its own ``index`` here."""

from __future__ import annotations

import copy

from wardgate.ddl_board import DdlBoard


def _workers(n: int) -> list[DdlBoard]:
    board = DdlBoard(n)
    workers = []
    for index in range(n):
        view = copy.copy(board)  # shares the mapping and the pipes, as after a fork
        view.index = index
        workers.append(view)
    return workers


def test_a_request_is_answered_once_every_other_worker_answers() -> None:
    w0, w1, w2 = _workers(3)
    number = w0.ask(database=7, since=1)
    assert w0.answered(number) is None
    assert w1.questions() == [(0, number, 7, 1)]
    w1.answer(0, number, ok=True)
    assert w0.answered(number) is None  # worker 2 has not answered
    assert w2.questions() == [(0, number, 7, 1)]
    w2.answer(0, number, ok=True)
    assert w0.answered(number) is True
    assert w1.questions() == [] and w2.questions() == []


def test_a_worker_that_could_not_drain_fails_the_request() -> None:
    w0, w1 = _workers(2)
    number = w0.ask(database=7, since=1)
    w1.answer(0, number, ok=False)
    assert w0.answered(number) is False


def test_a_later_success_answers_an_earlier_request_too() -> None:
    """A worker answers the last request it read: statements still unanswered at the
    first are still in flight at the second, so its success covers both."""
    w0, w1 = _workers(2)
    first = w0.ask(database=7, since=1)
    second = w0.ask(database=7, since=1)
    assert w1.questions() == [(0, second, 7, 1)]
    w1.answer(0, second, ok=True)
    assert w0.answered(first) is True and w0.answered(second) is True


def test_a_request_for_another_database_before_the_first_is_answered_widens() -> None:
    """Only the last request of each asker is read: one for another database while the
    first is unanswered asks for every database (0)."""
    w0, w1 = _workers(2)
    w0.ask(database=7, since=1)
    number = w0.ask(database=9, since=1)
    assert w1.questions() == [(0, number, 0, 1)]
    w1.answer(0, number, ok=True)
    assert w0.ask(database=9, since=1) == number + 1
    assert w1.questions() == [(0, number + 1, 9, 1)]  # the last was answered: not widened


def test_a_dead_worker_answers_everything_once_settled() -> None:
    w0, w1, w2 = _workers(3)
    w2.publish(1, 0)  # a DDL batch in flight when it dies
    number = w0.ask(database=7, since=1)
    w1.answer(0, number, ok=True)
    w0.worker_gone(2)  # the supervisor, through its own view of the board
    # Its backends may still run what it sent: nothing is answered for it yet.
    assert w0.answered(number) is None
    assert w1.gone() == [2] and w0.others() == (1, 0)
    w1.settle(2)  # a surviving worker saw its backends end (postgres/backends.py)
    assert w0.answered(number) is True
    assert w1.gone() == [] and w0.others() == (0, 1)
    later = w0.ask(database=7, since=1)
    assert w0.answered(later) is None  # worker 1 still has to answer, not worker 2
    w1.answer(0, later, ok=True)
    assert w0.answered(later) is True
