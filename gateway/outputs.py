"""Outputs that need no broker: JSON lines on stdout (``fieldgate run --stdout``)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

log = logging.getLogger(__name__)


class Followers:
    """Who follows an output's events (the gateway, for the status page): every event the output gets
    or makes itself (the uplink's buffer drops) is told to them; a follower's failure is logged."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[..., None]] = []

    def add(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Follow from now on; returns the function that stops it."""
        self._callbacks.append(callback)

        def stop() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return stop

    def tell(self, kind: str, fields: dict[str, Any]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(kind, **fields)
            except Exception:  # a follower's bug must not reach the output's caller
                log.exception("an event follower failed on %s", kind)


class StdoutOutput:
    """Writes each reading message as one JSON line, numbered in process.

    Without the buffer there is no durable ``seq``; these numbers restart at 1
    with the process and are meant for looking, not for consumers.
    """

    kind: ClassVar[str] = "stdout"  # what the status page calls this output

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.seq = 0
        self.followers = Followers()

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Be told every event (``callback(kind, **fields)``)."""
        return self.followers.add(callback)

    def submit(self, device: str, message: dict[str, Any]) -> None:
        self.seq += 1
        line = json.dumps({"seq": self.seq, **message}, separators=(",", ":"))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except BrokenPipeError:  # `fieldgate run --stdout | head` closed the pipe
            pass

    def device_status(self, device: str, state: str, error: str | None) -> None:
        log.info("device %s is %s%s", device, state, f": {error}" if error else "")

    def event(self, kind: str, **fields: Any) -> None:
        log.info("event %s %s", kind, json.dumps(fields, default=str))
        self.followers.tell(kind, fields)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


class MemoryOutput:
    """Keeps everything in lists, numbered in process: for tests and ``fieldgate probe``.

    ``wait_for`` lets a test wait on a condition instead of sleeping.
    """

    kind: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.readings: list[dict[str, Any]] = []
        self.statuses: list[tuple[str, str, str | None]] = []
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self.seq = 0
        self.followers = Followers()

    def follow(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Be told every event (``callback(kind, **fields)``)."""
        return self.followers.add(callback)

    def _notify(self) -> None:
        async def _wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            asyncio.get_running_loop().create_task(_wake())
        except RuntimeError:
            pass

    def submit(self, device: str, message: dict[str, Any]) -> None:
        self.seq += 1
        self.readings.append({"seq": self.seq, **message})
        self._notify()

    def device_status(self, device: str, state: str, error: str | None) -> None:
        self.statuses.append((device, state, error))
        self._notify()

    def event(self, kind: str, **fields: Any) -> None:
        self.events.append({"kind": kind, **fields})
        self._notify()
        self.followers.tell(kind, fields)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` is true; raises TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def by_device(self, device: str) -> list[dict[str, Any]]:
        """Readings of one device, in arrival order."""
        return [r for r in self.readings if r["device"] == device]

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None
