"""The durable store-and-forward buffer between the pollers and the uplink.

``queue`` is the buffer itself (append, read, ack, stats; its docstring holds
the design) and combines the jobs, each a module of its own: ``seqguard``
(seqs never handed out twice), ``events`` (the events topic's store),
``limits`` (age and size), ``diskfull`` (the reserve and the in-memory spill),
``salvage`` (a corrupt file), ``vacuum`` (upkeep), ``kept`` (acknowledged rows
kept for the broker's unsaved window); ``base`` holds their shared
state and helpers, ``txn`` the one transaction block and error tests, and
``pages`` reads rows straight from the pages of a damaged file, for the salvage.
"""

from .base import DB_NAME, EVENTS_KEEP, HWM_NAME, RESERVE_NAME, SEQ_RESERVE, BufferStats, BufferUnavailable, Row
from .queue import Buffer

__all__ = [
    "DB_NAME", "EVENTS_KEEP", "HWM_NAME", "RESERVE_NAME", "SEQ_RESERVE", "Buffer", "BufferStats",
    "BufferUnavailable", "Row",
]
