"""The durable store-and-forward buffer between the pollers and the uplink.

``queue`` is the buffer itself (seqs, acks, limits, disk full, damage; its
docstring holds the design); ``pages`` reads rows straight from the pages of
a damaged database file, for the salvage.
"""

from .queue import (
    DB_NAME,
    EVENTS_KEEP,
    HWM_NAME,
    RESERVE_NAME,
    SEQ_RESERVE,
    Buffer,
    BufferStats,
    BufferUnavailable,
    Row,
)

__all__ = [
    "DB_NAME", "EVENTS_KEEP", "HWM_NAME", "RESERVE_NAME", "SEQ_RESERVE", "Buffer", "BufferStats",
    "BufferUnavailable", "Row",
]
