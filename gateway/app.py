"""The gateway's names in one place, for the modules and tests that import them from here.

The supervisor was one 760-line module with three jobs; each has its module now:

* :mod:`fieldgate.fanout`: the :class:`Output` protocol, what an output may offer, the fan-out to listeners;
* :mod:`fieldgate.runner`: one device's poll loop, state and backoff (:class:`DeviceRunner`);
* :mod:`fieldgate.supervisor`: the task group, reloads and shutdown (:class:`Gateway`).

The composition root that builds a running gateway from a configuration is :mod:`fieldgate.runtime`.
"""

from __future__ import annotations

from .backoff import backoff_delay
from .fanout import Announces, DescribedOutput, Fanout, GatewayListener, NamedOutput, Output, Reconfigurable
from .runner import (
    DEGRADED,
    OFFLINE,
    ONLINE,
    STALL_S,
    DeviceLog,
    DeviceRunner,
    DeviceStats,
    poll_deadline,
)
from .supervisor import DeviceSnapshot, Gateway

__all__ = [
    "DEGRADED", "OFFLINE", "ONLINE", "STALL_S", "Announces", "DescribedOutput", "DeviceLog", "DeviceRunner",
    "DeviceSnapshot", "DeviceStats", "Fanout", "Gateway", "GatewayListener", "NamedOutput", "Output",
    "Reconfigurable", "backoff_delay", "poll_deadline",
]
