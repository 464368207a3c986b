"""The edge node's state: bdSeq, seq, the metric catalogue with its aliases, and who is born.

No network here: the output asks this object for the (topic, payload) pairs to publish and
publishes them. Two small files in ``gateway.data_dir`` keep what must survive a restart:

* ``sparkplug-bdseq``: the bdSeq of the last MQTT CONNECT, so the next one is one more
  ([tck-id-topics-nbirth-bdseq-increment]) also after a restart or ``kill -9``;
* ``sparkplug-metrics.json``: each device's metrics with alias, datatype and unit, so that
  after a restart every DBIRTH follows the NBIRTH at once, before any DDATA
  ([tck-id-payloads-dbirth-order]), instead of being learned again from the first readings.

A damaged or unreadable file is never fatal: the node starts that state afresh and the
output announces it (event ``sparkplug_state_reset``).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..provision import _atomic_write
from . import NAMESPACE
from .codec import (
    BOOLEAN,
    DOUBLE,
    INT64,
    STRING,
    UINT64,
    MetricDef,
    device_birth,
    device_data,
    device_death,
    merge_datatype,
    node_birth,
    node_death,
)

log = logging.getLogger(__name__)

BDSEQ_FILE = "sparkplug-bdseq"
CATALOGUE_FILE = "sparkplug-metrics.json"
_MAX_FILE = 4 * 1024 * 1024  # a catalogue is a few KiB; anything this large is not ours

Message = tuple[str, bytes]
_DATATYPES = frozenset((INT64, UINT64, DOUBLE, BOOLEAN, STRING))  # those merge_datatype gives


def _read_small(path: Path) -> bytes | None:
    """The file's bytes, None when it does not exist.

    Opened non-blocking and checked to be a regular file before any read: a FIFO put in its
    place would otherwise block the open for good, and a device would never end.

    Raises:
        OSError: unreadable, not a regular file, or too large to be ours.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(_MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise OSError(f"{path} is larger than {_MAX_FILE} bytes")
    return data


class BdSeqStore:
    """The bdSeq of the last CONNECT, on disk: each :meth:`next` is one more, wrapping 255 → 0."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / BDSEQ_FILE
        self._last: int | None = None
        self.problem: str | None = None  # why the stored value was not usable (announced once)

    def _load(self) -> int | None:
        try:
            data = _read_small(self.path)
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc}"
            return None
        if data is None:
            return None
        text = data.decode("ascii", "replace").strip()
        if not text.isdigit() or not 0 <= int(text) <= 255:
            self.problem = f"{self.path} holds {data[:20]!r}, not a bdSeq (0-255)"
            return None
        return int(text)

    def next(self) -> int:
        """The bdSeq of a new CONNECT, stored before it is used (a crash after this never reuses it)."""
        if self._last is None:
            last = self._load()
            if self.problem:
                log.warning("sparkplug: %s; starting bdSeq at 0 (a host sees a new session)", self.problem)
            self._last = -1 if last is None else last
        value = (self._last + 1) % 256
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, f"{value}\n".encode(), 0o644)
        except OSError as exc:
            # The connection goes ahead: a host still pairs NBIRTH and NDEATH of this session by
            # the will; only a restart could then repeat a bdSeq. Said, not fatal.
            log.warning("sparkplug: cannot store bdSeq %d in %s: %s", value, self.path, exc)
        self._last = value
        return value


class Catalogue:
    """Each device's metric definitions (alias, datatype, unit), kept in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CATALOGUE_FILE
        self.devices: dict[str, dict[str, MetricDef]] = {}
        self.next_alias = 1
        self.by_alias: dict[int, tuple[str, str]] = {}
        self.problem: str | None = None

    def load(self) -> None:
        """Read the file; a damaged one leaves the catalogue empty and says why in :attr:`problem`."""
        try:
            data = _read_small(self.path)
            if data is None:
                return
            obj = json.loads(data)
            devices: dict[str, dict[str, MetricDef]] = {}
            for dev, metrics in obj["devices"].items():
                defs: dict[str, MetricDef] = {}
                for name, (alias, dtype, unit) in metrics.items():
                    # Only what this module writes: aliases 1..2^63-1, our datatypes, a unit string or null.
                    if not (type(alias) is int and 1 <= alias < 2**63 and dtype in _DATATYPES
                            and (unit is None or isinstance(unit, str))):
                        raise ValueError(f"metric {name!r} of {dev!r}: {[alias, dtype, unit]!r}"[:120])
                    defs[str(name)] = MetricDef(str(name), alias, dtype, unit)
                devices[str(dev)] = defs
            aliases = [d.alias for m in devices.values() for d in m.values()]
            if len(aliases) != len(set(aliases)):
                raise ValueError("aliases are not unique")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            # RecursionError: a file of deeply nested brackets (json.loads recurses per level).
            self.problem = f"{self.path} is not a metric catalogue ({exc.__class__.__name__}: {str(exc)[:100]})"
            log.warning("sparkplug: %s; learning the metrics again from the readings", self.problem)
            return
        self.devices = devices
        self.next_alias = max(aliases, default=0) + 1
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the alias index after devices were dropped."""
        self.by_alias = {d.alias: (dev, d.name) for dev, m in self.devices.items() for d in m.values()}

    def save(self) -> None:
        obj = {"version": 1, "devices": {dev: {d.name: [d.alias, d.datatype, d.unit] for d in m.values()}
                                         for dev, m in self.devices.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, json.dumps(obj, separators=(",", ":")).encode(), 0o644)
        except OSError as exc:
            log.warning("sparkplug: cannot store the metric catalogue in %s: %s", self.path, exc)

    def learn(self, device: str, metrics: dict[str, Any]) -> bool:
        """Take the metrics of one reading in; True when a definition is new or changed (a rebirth is due)."""
        defs = self.devices.setdefault(device, {})
        changed = False
        for name, point in metrics.items():
            d = defs.get(name)
            value = point.get("value") if isinstance(point, dict) else None
            unit = point.get("unit") if isinstance(point, dict) else None
            if d is None:
                defs[name] = d = MetricDef(name, self.next_alias, merge_datatype(None, value), unit)
                self.by_alias[d.alias] = (device, name)
                self.next_alias += 1
                changed = True
                continue
            dtype = merge_datatype(d.datatype, value)
            if dtype != d.datatype or (unit is not None and unit != d.unit):
                d.datatype, d.unit = dtype, unit if unit is not None else d.unit
                changed = True
        return changed


class EdgeNode:
    """One Sparkplug edge node: its topics, counters and births, as (topic, payload) pairs."""

    def __init__(self, group_id: str, edge_node_id: str, catalogue: Catalogue) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.catalogue = catalogue
        self.bdseq = 0
        self._seq = 0
        self.born = False  # NBIRTH sent on this connection
        self.born_devices: set[str] = set()
        self.device_state: dict[str, str] = {}  # online | degraded | offline, as the supervisor says
        self.configured: set[str] | None = None  # device ids of the configuration (None: not told yet)
        # The last value published of each metric (value, ts_ms, quality, reason): a birth carries it.
        self.last: dict[str, dict[str, tuple[Any, int, str | None, str | None]]] = {}

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group_id}/{kind}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    def next_seq(self) -> int:
        """The seq of the next message after NBIRTH: one more, 255 wraps to 0."""
        self._seq = (self._seq + 1) % 256
        return self._seq

    def will(self, ts_ms: int) -> Message:
        """The NDEATH registered as this connection's will."""
        return self.topic("NDEATH"), node_death(ts_ms, self.bdseq)

    def birth(self, ts_ms: int) -> list[Message]:
        """NBIRTH (seq 0), the DBIRTH of every known device, then DDEATH for those that are offline.

        Every device is born right after the NBIRTH ([tck-id-payloads-dbirth-order]), also one that
        is offline now: its backlog may still be sent, and a DBIRTH later in the session is then
        what a host expects after a DDEATH (a device that came back).
        """
        self._seq = 0
        self.born = True
        self.born_devices.clear()
        out = [(self.topic("NBIRTH"), node_birth(ts_ms, self.bdseq))]
        # Also a device removed from the configuration whose readings are still being sent (re-learned
        # from them after keep_only): born here and declared dead below, never born later mid-session.
        out += [self._device_birth(dev, ts_ms) for dev in self.catalogue.devices]
        for dev in self.catalogue.devices:
            if self._away(dev):
                self.born_devices.discard(dev)
                out.append((self.topic("DDEATH", dev), device_death(ts_ms, self.next_seq())))
        return out

    def _device_birth(self, device: str, ts_ms: int) -> Message:
        defs = sorted(self.catalogue.devices.get(device, {}).values(), key=lambda d: d.alias)
        self.born_devices.add(device)
        return self.topic("DBIRTH", device), device_birth(ts_ms, self.next_seq(), defs, self.last.get(device, {}))

    def _away(self, device: str) -> bool:
        """Offline now, or no longer in the configuration (its backlog may still be sent)."""
        return self.device_state.get(device) == "offline" or (
            self.configured is not None and device not in self.configured)

    def keep_only(self, devices: set[str], ts_ms: int) -> list[Message]:
        """The configuration's devices are ``devices``: the others are declared dead and forgotten.

        Without this a device removed from the configuration would be born again from the
        catalogue after every restart and shown alive, with stale values, for good.
        """
        self.configured = set(devices)
        out: list[Message] = []
        gone = [d for d in self.catalogue.devices if d not in devices]
        for dev in gone:
            if self.born and dev in self.born_devices:
                out.append((self.topic("DDEATH", dev), device_death(ts_ms, self.next_seq())))
            self.born_devices.discard(dev)
            del self.catalogue.devices[dev]
            self.last.pop(dev, None)
            self.device_state.pop(dev, None)
        if gone:
            self.catalogue.reindex()
        return out

    def session_over(self) -> None:
        self.born = False
        self.born_devices.clear()

    def status(self, device: str, state: str, ts_ms: int) -> list[Message]:
        """A device's new state: DDEATH when it goes offline, DBIRTH when it comes back."""
        self.device_state[device] = state
        if not self.born:
            return []
        if state == "offline" and device in self.born_devices:
            self.born_devices.discard(device)
            return [(self.topic("DDEATH", device), device_death(ts_ms, self.next_seq()))]
        if state != "offline" and device not in self.born_devices and device in self.catalogue.devices:
            return [self._device_birth(device, ts_ms)]
        return []

    def learn(self, readings: Iterable[tuple[str, dict[str, Any]]]) -> bool:
        """Take readings' metrics into the catalogue; True if a definition changed (rebirth before DDATA)."""
        changed = False
        for device, metrics in readings:
            changed = self.catalogue.learn(device, metrics) or changed
        return changed

    def data(self, device: str, metrics: dict[str, Any], ts_ms: int, fg_seq: int, historical: bool,
             now_ms: int, clock_unsynced: bool = False) -> list[Message]:
        """DDATA of one reading, after a DBIRTH if the device is not born (:meth:`settle` ends a turn)."""
        out: list[Message] = []
        if device not in self.born_devices:
            out.append(self._device_birth(device, now_ms))
        defs = self.catalogue.devices[device]
        out.append((self.topic("DDATA", device), device_data(ts_ms, self.next_seq(), defs, metrics, fg_seq,
                                                              historical, clock_unsynced)))
        if not historical:
            last = self.last.setdefault(device, {})
            for name, point in metrics.items():
                last[name] = (point.get("value"), ts_ms, point.get("quality"), point.get("reason"))
        return out

    def settle(self, now_ms: int) -> list[Message]:
        """After a publishing turn: DDEATH for each device born to send its backlog that is still away.

        Once per turn, not per reading: a removed or offline device's backlog of thousands of readings
        is one DBIRTH and one DDEATH per turn, not a pair around every reading.
        """
        away = [d for d in self.born_devices if self._away(d)]
        for dev in away:
            self.born_devices.discard(dev)
        return [(self.topic("DDEATH", dev), device_death(now_ms, self.next_seq())) for dev in sorted(away)]
