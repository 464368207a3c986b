"""The one place that leans on paho-mqtt internals (STYLE.md: private internals behind one compat module).

The uplink drives paho from the event loop (see mqtt.py). To drop a connection
at once (a stalled broker, shutdown after the grace period) it calls paho's
private ``Client._sock_close``, which in paho 2.x:

* closes the client's socket and forgets it (``client._sock`` becomes None),
  so paho's own state says "not connected";
* calls ``on_socket_close`` (after ``on_socket_unregister_write`` when it had
  asked for write), which is how mqtt.py unregisters the socket from the loop.

``tests/core/test_paho_compat.py`` is the canary: it fails when this moves.
``TESTED`` is the version range it passed on (pyproject bounds paho-mqtt to it).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: paho-mqtt versions the canary passed on: [low, high).
TESTED = ((2, 0), (3, 0))


def version() -> tuple[int, ...]:
    """The installed paho-mqtt version as numbers, e.g. ``(2, 1, 0)``."""
    import paho.mqtt

    return tuple(int(p) for p in paho.mqtt.__version__.split(".")[:3] if p.isdigit())


def drop_socket(client: Any) -> None:
    """Close paho's socket now, without a DISCONNECT (its callbacks run, see above)."""
    client._sock_close()


__all__ = ["TESTED", "drop_socket", "version"]
