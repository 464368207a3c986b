"""What the status page's HTTP server logs about requests it could not even parse.

aiohttp logs every malformed request (a huge header, binary garbage, a missing Host) as
``ERROR Error handling request`` with a full traceback. On a gateway that listens on a plant
LAN, any scanner then fills the journal with stack traces that hide the lines a technician
needs and wear the SD card. The client already got its 400; what the log needs is one short
line saying so, once per kind of problem per minute. A real bug in a handler (any other
exception) keeps its traceback.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

# aiohttp's server logs through this logger when it is handed one (AppRunner(logger=...))
LOGGER_NAME = "fieldgate.web.http"
_REPEAT_S = 60.0
_MAX_KINDS = 64


def _kind(exc: HttpProcessingError) -> str:
    """The problem in aiohttp's words without the client's bytes ("Got more than 8190 bytes...").

    The message quotes what the client sent after a colon; that part may be anything,
    a password in an oversized header included, so it is never logged.
    """
    text = str(getattr(exc, "message", "") or type(exc).__name__)
    first = text.splitlines()[0] if text.strip() else type(exc).__name__
    first = first.split(":", 1)[0].strip().rstrip(".")
    return "".join(c if c.isprintable() else "?" for c in first)[:80] or type(exc).__name__


class BadRequestFilter(logging.Filter):
    """Turns aiohttp's traceback for an unparsable request into one rate-limited WARNING line.

    Args:
        clock: monotonic seconds (tests may inject their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True  # a bug in a handler: keep the traceback
        kind = _kind(exc)
        now = self._clock()
        last = self._seen.get(kind)
        if last is not None and now - last < _REPEAT_S:
            return False
        self._seen[kind] = now
        self._seen.move_to_end(kind)
        while len(self._seen) > _MAX_KINDS:
            self._seen.popitem(last=False)
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        status = getattr(exc, "code", 400)
        record.msg = "status page: bad HTTP request from %s, answered %s: %s (repeats within %d s not logged)"
        record.args = (remote, status, kind, int(_REPEAT_S))
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def server_logger() -> logging.Logger:
    """The logger to hand to aiohttp's server, with the filter attached (once)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(f, BadRequestFilter) for f in logger.filters):
        logger.addFilter(BadRequestFilter())
    return logger


__all__ = ["LOGGER_NAME", "BadRequestFilter", "server_logger"]
