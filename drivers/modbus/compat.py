"""The one place that leans on pymodbus internals (STYLE.md: private internals behind one compat module).

The bus checks every answer itself (``frames.check``) through pymodbus's
public ``trace_packet`` hook, and that relies on how pymodbus 3.16 uses it,
which its documentation does not promise:

* the receive hook gets the whole receive buffer since the request was sent
  (the buffer is emptied when a request is written), not just the new bytes;
* what the hook returns is all the framer parses: returning ``b""`` hides
  bytes from it, returning one frame makes it parse exactly that frame;
* the per-request answer timeout is ``client.ctx.comm_params.timeout_connect``;
* the receive buffer is thrown away, unseen by the hook, once it holds more
  than ``client.ctx.max_buffer_size`` bytes (264: one largest frame), so a
  late answer followed by ours would be lost; it is widened here;
* its decoder formats every decoded answer with ``str(pdu)`` for a debug
  line whether or not that line is logged (35 us for 100 registers, a third
  of pymodbus's own CPU per request); ``lazy_pdu_text`` makes that text
  short unless pymodbus's logger is enabled for DEBUG.

``tests/modbus/test_compat.py`` is the canary: it fails when any of this
moves. ``TESTED`` is the version range it passed on; outside it the driver
still starts, with one warning that names the canary.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: pymodbus versions the canary passed on: [low, high).
TESTED = ((3, 16), (3, 17))


def version() -> tuple[int, ...]:
    """The installed pymodbus version as numbers, e.g. ``(3, 16, 1)``."""
    import pymodbus

    return tuple(int(p) for p in pymodbus.__version__.split(".")[:3] if p.isdigit())


def check_version() -> None:
    """Warn once if pymodbus is outside the tested range (the answer checks may then be blind)."""
    v = version()
    if not TESTED[0] <= v[:2] < TESTED[1]:
        log.warning("pymodbus %s is outside the range the Modbus driver was tested with (%s to below %s); "
                    "run tests/modbus/test_compat.py", ".".join(map(str, v)),
                    ".".join(map(str, TESTED[0])), ".".join(map(str, TESTED[1])))


#: Receive buffer the bus lets pymodbus keep: a few largest frames (late answers, stray bytes, ours).
RECEIVE_BUFFER = 4 * 264


def widen_receive_buffer(client: Any) -> None:
    """Let the receive buffer hold late answers and stray bytes besides the answer (see above)."""
    client.ctx.max_buffer_size = RECEIVE_BUFFER


def set_answer_timeout(client: Any, seconds: float) -> None:
    """pymodbus's own wait for one answer (its client keeps one setting for all units; we set it per request)."""
    client.ctx.comm_params.timeout_connect = seconds


_full_text: Any = None


def lazy_pdu_text() -> None:
    """Make ``str()`` of a pymodbus PDU cheap unless pymodbus logs at DEBUG (see above); idempotent."""
    global _full_text  # noqa: PLW0603  # the original method, kept once for the debug case
    from pymodbus.pdu.pdu import ModbusPDU

    if _full_text is not None:
        return
    _full_text = ModbusPDU.__str__
    pm = logging.getLogger("pymodbus.logging")

    def text(self: Any) -> str:
        if pm.isEnabledFor(logging.DEBUG):
            return str(_full_text(self))
        return f"{type(self).__name__}(dev_id={self.dev_id}, transaction_id={self.transaction_id})"

    ModbusPDU.__str__ = text  # type: ignore[method-assign]
