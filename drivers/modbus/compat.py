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
  late answer followed by ours would be lost; it is widened here.

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
