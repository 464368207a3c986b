"""What the status page and doctor show about the uplink."""

from __future__ import annotations


class UplinkState:
    """What the status page and doctor show about the uplink."""

    def __init__(self) -> None:
        self.state = "disconnected"  # connecting | connected | disconnected
        self.broker = ""
        self.last_error: str | None = None
        self.last_error_ts: float | None = None
        self.connected_since: float | None = None
        self.published = 0
        self.acked = 0
        self.resent = 0
        self.connects = 0
