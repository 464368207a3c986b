"""Stopping a child task without losing the cancellation of the task that stops it.

``task.cancel(); with suppress(CancelledError): await task`` is the usual idiom, and it
has a hole: if the *awaiting* task is cancelled while it waits (a shutdown, a poll
deadline), its own CancelledError is indistinguishable from the child's and is
swallowed too. The awaiting task then carries on as if nothing happened: a device
poller went on polling through a shutdown (CI, test_hostile_endpoints_leave_healthy_ones_on_schedule).
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it is done; a cancellation of the caller still propagates.

    The child's own outcome (its CancelledError or any exception) is consumed: the caller
    is stopping it and does not want its result.
    """
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller is being cancelled (or its deadline expired): not ours to swallow
    except Exception:
        pass
