"""One way to start background tasks: named, referenced until done, failures logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("wardgate.tasks")


class Tasks:
    """Holds a strong reference to every task it starts (asyncio keeps only weak ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: set[asyncio.Task[Any]] = set()  # end only when cancelled

    def spawn(
        self, coro: Coroutine[Any, Any, Any], name: str, *, until_cancelled: bool = False
    ) -> asyncio.Task[Any]:
        """Start ``coro``. ``until_cancelled``: a loop that never ends on its own (a
        periodic sweep, a listener), which `cancel_all` cancels without waiting for it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if until_cancelled:
            self._loops.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._loops.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task %s failed: %s", task.get_name(), exc, exc_info=exc)

    async def cancel_all(self, grace: float = 0.0) -> None:
        """Give running tasks ``grace`` seconds to end on their own (not the loops that
        only end when cancelled: waiting for them made every shutdown take the whole
        grace), then cancel the rest and wait for them (bound it with asyncio.timeout)."""
        finite = [t for t in self._tasks if t not in self._loops]
        if grace > 0 and finite:
            await asyncio.wait(finite, timeout=grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def __len__(self) -> int:
        return len(self._tasks)
