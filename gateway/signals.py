"""The process's signals (SIGTERM, SIGINT, SIGHUP) from the first line of ``run`` to the exit.

The event loop handles them while it runs (``loop.add_signal_handler``: the C handler writes to
the loop's self-pipe, the loop calls the handler). At its close asyncio removes them again, but in
the wrong order for a process that is still being signalled: it closes the self-pipe first (a
signal in between writes to a closed descriptor: "Exception ignored when trying to write to the
signal wakeup fd: Bad file descriptor"), and removing a handler restores the default action, so a
SIGHUP (logrotate, a reload script) or a second SIGTERM (systemd, an operator) arriving while the
process finishes killed it by that signal: a clean stop recorded as a failure.

:func:`loop_signals` hands the signals over while the loop still runs: with them blocked, the
loop's handlers are removed (which also clears the wakeup fd) and the signals are ignored from then
on (``SIG_IGN``, not a Python handler: the interpreter's finalization resets Python handlers to the
default action, and a signal in that last window killed the process all the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence


def hand_over(loop: asyncio.AbstractEventLoop, signals: Sequence[int]) -> None:
    """Take ``signals`` away from ``loop`` (while it still runs) and ignore them from now on.

    The process is stopping: a stop or a reload asked for now has nothing left to act on.
    """
    wanted = set(signals)
    # Blocked while they change hands: one arriving in between waits and is then ignored, never
    # meets the default action that removing the loop's handler restores. (The mask is the main
    # thread's: a worker thread could still take one in the microseconds between the two calls.)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        for sig in wanted:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def loop_signals(loop: asyncio.AbstractEventLoop,
                 handlers: Mapping[signal.Signals, Callable[[], None]]) -> Iterator[None]:
    """``handlers`` on ``loop`` for the block; handed over (see the module) when it ends."""
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        hand_over(loop, list(handlers))


__all__ = ["hand_over", "loop_signals"]
