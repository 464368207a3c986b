"""Outputs that need no broker: JSON lines on stdout (``fieldgate run --stdout``)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any, TextIO

log = logging.getLogger(__name__)


class StdoutOutput:
    """Writes each reading message as one JSON line, numbered in process.

    Without the buffer there is no durable ``seq``; these numbers restart at 1
    with the process and are meant for looking, not for consumers.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.seq = 0

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

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass
