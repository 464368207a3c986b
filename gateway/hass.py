"""Home Assistant MQTT discovery: one HA device per fieldgate device, one sensor per profile point.

Off by default (``homeassistant.enabled``). On every connect the uplink publishes, retained, a
discovery config per point under ``{discovery_prefix}/sensor/fieldgate_{gw}/{device}_{point}/config``
(HA's documented topic layout ``<prefix>/<component>/<node_id>/<object_id>/config``). Nothing
else is published: the entity reads its state from the existing reading topic through a
``value_template``, and its availability from the device's retained status topic together
with the gateway's (its last will says offline). Unit, ``device_class`` and ``state_class``
follow from the point's SenML unit (and, where the unit alone is ambiguous, its name: a
``ug/m3`` point named ``pm2_5`` is ``pm25``).

Devices removed by a reload, and configs retained from devices that were removed while the
gateway was down (seen on the subscription to our own discovery topics), are cleared with an
empty retained message, which is how HA is told an entity is gone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .app import Gateway
    from .config import DeviceSpec
    from .mqtt import Inbound
    from .profile import BasePoint
    from .uplink import BufferedUplink

log = logging.getLogger(__name__)

# SenML symbol -> (HA unit_of_measurement, device_class, state_class). Units and device classes as
# HA's sensor documentation lists them (developers.home-assistant.io, "Sensor entity": each device
# class with its allowed units). A unit HA has no class for keeps its unit and no class.
_MEASUREMENT, _TOTAL_INCREASING = "measurement", "total_increasing"
SENML_TO_HA: dict[str, tuple[str | None, str | None, str]] = {
    "V": ("V", "voltage", _MEASUREMENT), "mV": ("mV", "voltage", _MEASUREMENT),
    "A": ("A", "current", _MEASUREMENT), "mA": ("mA", "current", _MEASUREMENT),
    "W": ("W", "power", _MEASUREMENT), "kW": ("kW", "power", _MEASUREMENT),
    "VA": ("VA", "apparent_power", _MEASUREMENT), "kVA": ("kVA", "apparent_power", _MEASUREMENT),
    "var": ("var", "reactive_power", _MEASUREMENT), "kvar": ("kvar", "reactive_power", _MEASUREMENT),
    "Wh": ("Wh", "energy", _TOTAL_INCREASING), "kWh": ("kWh", "energy", _TOTAL_INCREASING),
    "varh": ("varh", None, _TOTAL_INCREASING), "kvarh": ("kvarh", None, _TOTAL_INCREASING),
    "kVAh": ("kVAh", None, _TOTAL_INCREASING), "Ah": ("Ah", None, _TOTAL_INCREASING),
    "Hz": ("Hz", "frequency", _MEASUREMENT), "MHz": ("MHz", "frequency", _MEASUREMENT),
    "Cel": ("°C", "temperature", _MEASUREMENT), "K": ("K", "temperature", _MEASUREMENT),
    "%RH": ("%", "humidity", _MEASUREMENT),
    "hPa": ("hPa", "pressure", _MEASUREMENT), "Pa": ("Pa", "pressure", _MEASUREMENT),
    "ug/m3": ("µg/m³", None, _MEASUREMENT),  # pm1/pm25/pm10 by name (below)
    "ppm": ("ppm", None, _MEASUREMENT),  # carbon_dioxide by name (below)
    "lx": ("lx", "illuminance", _MEASUREMENT),
    "dBm": ("dBm", "signal_strength", _MEASUREMENT), "dB": ("dB", None, _MEASUREMENT),
    "m/s": ("m/s", "speed", _MEASUREMENT), "km/h": ("km/h", "speed", _MEASUREMENT),
    "m": ("m", "distance", _MEASUREMENT), "cm": ("cm", "distance", _MEASUREMENT),
    "mm": ("mm", "distance", _MEASUREMENT), "km": ("km", "distance", _MEASUREMENT),
    "s": ("s", "duration", _MEASUREMENT), "ms": ("ms", "duration", _MEASUREMENT),
    "min": ("min", "duration", _MEASUREMENT), "h": ("h", "duration", _MEASUREMENT),
    "m3": ("m³", "volume", _MEASUREMENT), "l": ("L", "volume", _MEASUREMENT),
    "m3/s": ("m³/s", "volume_flow_rate", _MEASUREMENT),
    "mm/h": ("mm/h", "precipitation_intensity", _MEASUREMENT),
    "B": ("B", "data_size", _MEASUREMENT), "KiB": ("KiB", "data_size", _MEASUREMENT),
    "GB": ("GB", "data_size", _MEASUREMENT),
    "bit/s": ("bit/s", "data_rate", _MEASUREMENT), "Mbit/s": ("Mbit/s", "data_rate", _MEASUREMENT),
    "B/s": ("B/s", "data_rate", _MEASUREMENT), "MB/s": ("MB/s", "data_rate", _MEASUREMENT),
    "%": ("%", None, _MEASUREMENT),  # battery / power_factor by name (below)
    "deg": ("°", None, _MEASUREMENT), "m/s2": ("m/s²", None, _MEASUREMENT),
    "W/m2": ("W/m²", "irradiance", _MEASUREMENT), "kg": ("kg", "weight", _MEASUREMENT),
    "g": ("g", "weight", _MEASUREMENT), "count": (None, None, _MEASUREMENT),
    "1/min": ("rpm", None, _MEASUREMENT), "pH": (None, "ph", _MEASUREMENT),
}

# Where the unit alone does not say what is measured: (unit, pattern on the point's name) -> class.
_BY_NAME: list[tuple[str | None, re.Pattern[str], str]] = [
    ("ug/m3", re.compile(r"pm_?2[._]?5"), "pm25"),
    ("ug/m3", re.compile(r"pm_?10"), "pm10"),
    ("ug/m3", re.compile(r"pm_?1(?:[._]0)?(?![0-9])"), "pm1"),
    ("ppm", re.compile(r"co2"), "carbon_dioxide"),
    ("%", re.compile(r"batt"), "battery"),
    ("%", re.compile(r"power_?factor"), "power_factor"),
    (None, re.compile(r"power_?factor"), "power_factor"),
]
_COUNTER_NAME = re.compile(r"counter|_count$|total_count")
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def ha_fields(point: BasePoint) -> dict[str, Any]:
    """``unit_of_measurement``, ``device_class``, ``state_class`` and precision of one point (those that apply)."""
    out: dict[str, Any] = {}
    unit = point.unit
    if unit is not None and unit in SENML_TO_HA:
        ha_unit, device_class, state_class = SENML_TO_HA[unit]
    elif unit is not None:
        ha_unit, device_class, state_class = unit, None, _MEASUREMENT
    else:
        # No unit: a ratio, a code, a text or a flag; a state class would make HA expect a number.
        ha_unit, device_class, state_class = None, None, None
    for on_unit, pattern, cls in _BY_NAME:
        if on_unit == unit and pattern.search(point.name.lower()):
            device_class = cls
            if unit is None:
                state_class = _MEASUREMENT
            break
    if unit == "count" and _COUNTER_NAME.search(point.name.lower()):
        state_class = _TOTAL_INCREASING
    if ha_unit is not None:
        out["unit_of_measurement"] = ha_unit
    if device_class is not None:
        out["device_class"] = device_class
    if state_class is not None:
        out["state_class"] = state_class
    if point.decimals is not None and state_class is not None:
        out["suggested_display_precision"] = point.decimals
    return out


def value_template(metric: str) -> str:
    """The template reading one metric from a reading message; the last state when it is absent.

    A reading carries only the metrics of that poll (``every``, deadbands): without the test a
    missing metric would set the entity unknown. ``None`` (a bad-quality value) is HA's word
    for "no value". HA's MQTT value templates get ``this``, the entity's own state
    (``homeassistant/components/mqtt/models.py``, ``MqttValueTemplate``).
    """
    key = json.dumps(metric)
    return (f"{{% if {key} in value_json.metrics %}}{{{{ value_json.metrics[{key}].value }}}}"
            "{% else %}{{ this.state }}{% endif %}")


def _safe(text: str) -> str:
    return _SAFE.sub("_", text)


class HassDiscovery:
    """Publishes and clears the discovery configs of a running gateway (see the module docstring)."""

    def __init__(self, gateway: Gateway, uplink: BufferedUplink) -> None:
        self.gateway = gateway
        self.uplink = uplink
        self.prefix = gateway.loaded.config.homeassistant.discovery_prefix
        self.node = _safe(f"fieldgate_{gateway.gateway_id}")
        self._published: set[str] = set()
        self._stops: list[Callable[[], None]] = []

    def start(self) -> None:
        self._stops.append(self.uplink.on_connected.add(lambda _kind, **_f: self.publish_all()))
        self._stops.append(self.uplink.follow(self._on_event))
        # Retained configs of ours come back on subscribe: the ones of devices removed meanwhile are cleared.
        self._stops.append(self.uplink.listen(f"{self.prefix}/sensor/{self.node}/+/config", self._on_retained,
                                              under_prefix=False))

    async def close(self) -> None:
        for stop in self._stops:
            stop()

    def topic(self, device: str, metric: str) -> str:
        return f"{self.prefix}/sensor/{self.node}/{_safe(f'{device}_{metric}')}/config"

    def configs(self) -> dict[str, dict[str, Any]]:
        """Every discovery config of the running configuration, by topic."""
        out: dict[str, dict[str, Any]] = {}
        for spec in self.gateway.loaded.devices:
            if spec.config.enabled:
                for point in spec.profile.points:
                    out[self.topic(spec.config.id, point.name)] = self._config(spec, point)
        return out

    def _config(self, spec: DeviceSpec, point: BasePoint) -> dict[str, Any]:
        gw, dev = self.gateway.gateway_id, spec.config.id
        base = self.uplink.prefix  # {topic_prefix}/{gw}, as the reading topics
        profile = spec.profile
        return {
            "name": point.name.replace("_", " "),
            "unique_id": _safe(f"fieldgate_{gw}_{dev}_{point.name}"),
            "state_topic": f"{base}/{dev}/reading",
            "value_template": value_template(point.name),
            **ha_fields(point),
            "availability": [
                {"topic": f"{base}/status", "value_template": "{{ value_json.state }}",
                 "payload_available": "online", "payload_not_available": "offline"},
                # degraded still delivers values: available
                {"topic": f"{base}/{dev}/status",
                 "value_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}",
                 "payload_available": "online", "payload_not_available": "offline"},
            ],
            "availability_mode": "all",
            "device": {
                "identifiers": [_safe(f"fieldgate_{gw}_{dev}")],
                "name": dev,
                "manufacturer": profile.vendor,
                "model": profile.model,
                "sw_version": f"fieldgate {__version__}",
            },
            "origin": {"name": "fieldgate", "sw_version": __version__},
            "qos": 1,
        }

    def publish_all(self) -> None:
        """(Re)publish every config, and clear those of devices or points no longer configured."""
        configs = self.configs()
        for topic in sorted(self._published - configs.keys()):
            self.uplink.send(topic, b"", retain=True, under_prefix=False)
        for topic, doc in configs.items():
            self.uplink.send(topic, json.dumps(doc, ensure_ascii=False, separators=(",", ":")), retain=True,
                             under_prefix=False)
        self._published = set(configs)
        log.info("home assistant discovery: %d entities of %d device(s) under %s/sensor/%s", len(configs),
                 sum(1 for s in self.gateway.loaded.devices if s.config.enabled), self.prefix, self.node)

    def _on_event(self, kind: str, **_fields: Any) -> None:
        if kind == "config_reloaded":
            self.publish_all()

    def _on_retained(self, msg: Inbound) -> None:
        if msg.payload and msg.topic not in self._published and msg.topic not in self.configs():
            log.info("home assistant discovery: clearing %s (no such device or point any more)", msg.topic)
            self.uplink.send(msg.topic, b"", retain=True, under_prefix=False)
