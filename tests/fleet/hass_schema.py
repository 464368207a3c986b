"""Home Assistant's MQTT discovery message for a sensor, as a JSON Schema (test-side decoding).

Written from HA's documentation: "MQTT Discovery" (topic ``<discovery_prefix>/<component>/
[<node_id>/]<object_id>/config``, the ``device`` and ``origin`` maps, ``availability`` list and
``availability_mode``) and "MQTT Sensor" (its configuration variables), with the sensor device
classes and their units from the developer docs ("Sensor entity"). ``additionalProperties`` is
false so that a misspelt key (which HA would ignore with a log line) fails here.
"""

from __future__ import annotations

import re
from typing import Any

# Sensor device classes -> the units HA accepts for them (None: unitless). Only those
# the mapping can produce are listed; any other class fails the enum below.
DEVICE_CLASS_UNITS: dict[str, set[str | None]] = {
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "current": {"A", "mA"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "apparent_power": {"mVA", "VA", "kVA"},
    "reactive_power": {"mvar", "var", "kvar"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "pressure": {"Pa", "kPa", "hPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "pm1": {"µg/m³"}, "pm25": {"µg/m³"}, "pm10": {"µg/m³"},
    "carbon_dioxide": {"ppm"},
    "illuminance": {"lx"},
    "signal_strength": {"dB", "dBm"},
    "speed": {"m/s", "km/h", "mph", "ft/s", "in/d", "in/h", "in/s", "kn", "mm/d", "mm/s"},
    "distance": {"km", "m", "cm", "mm", "mi", "yd", "in", "ft"},
    "duration": {"d", "h", "min", "s", "ms"},
    "volume": {"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"},
    "volume_flow_rate": {"m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s"},
    "precipitation_intensity": {"in/d", "in/h", "mm/d", "mm/h"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s", "KiB/s", "MiB/s"},
    "battery": {"%"},
    "power_factor": {"%", None},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"},
    "weight": {"kg", "g", "mg", "µg", "oz", "lb", "st"},
    "ph": {None},
}

_AVAILABILITY = {
    "type": "object", "required": ["topic"], "additionalProperties": False,
    "properties": {"topic": {"type": "string", "minLength": 1}, "payload_available": {"type": "string"},
                   "payload_not_available": {"type": "string"}, "value_template": {"type": "string"}},
}

SENSOR_DISCOVERY: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Home Assistant MQTT discovery: sensor",
    "type": "object",
    "required": ["state_topic", "unique_id", "device"],  # unique_id and device: needed for a device page
    "additionalProperties": False,
    "properties": {
        "name": {"type": ["string", "null"]},
        "unique_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        "default_entity_id": {"type": "string"},
        "object_id": {"type": "string"},
        "state_topic": {"type": "string", "minLength": 1, "not": {"pattern": "[+#]"}},
        "value_template": {"type": "string"},
        "unit_of_measurement": {"type": ["string", "null"]},
        "device_class": {"enum": sorted(DEVICE_CLASS_UNITS)},
        "state_class": {"enum": ["measurement", "measurement_angle", "total", "total_increasing"]},
        "suggested_display_precision": {"type": "integer", "minimum": 0},
        "availability": {"type": "array", "items": _AVAILABILITY, "minItems": 1},
        "availability_topic": {"type": "string"},
        "availability_mode": {"enum": ["all", "any", "latest"]},
        "expire_after": {"type": "integer", "minimum": 0},
        "force_update": {"type": "boolean"},
        "enabled_by_default": {"type": "boolean"},
        "entity_category": {"enum": ["config", "diagnostic"]},
        "icon": {"type": "string"},
        "json_attributes_topic": {"type": "string"},
        "json_attributes_template": {"type": "string"},
        "qos": {"enum": [0, 1, 2]},
        "encoding": {"type": "string"},
        "device": {
            "type": "object", "additionalProperties": False,
            "anyOf": [{"required": ["identifiers"]}, {"required": ["connections"]}],
            "properties": {
                "identifiers": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"},
                                                                 "minItems": 1}]},
                "connections": {"type": "array"},
                "name": {"type": "string"}, "manufacturer": {"type": "string"}, "model": {"type": "string"},
                "model_id": {"type": "string"}, "sw_version": {"type": "string"}, "hw_version": {"type": "string"},
                "serial_number": {"type": "string"}, "suggested_area": {"type": "string"},
                "via_device": {"type": "string"}, "configuration_url": {"type": "string"},
            },
        },
        "origin": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "sw_version": {"type": "string"},
                           "support_url": {"type": "string"}},
        },
    },
    "not": {"required": ["availability", "availability_topic"]},  # "must not be used together"
}

DISCOVERY_TOPIC = re.compile(r"^(?P<prefix>[^/+#]+)/(?P<component>sensor)/(?:(?P<node>[A-Za-z0-9_-]+)/)?"
                             r"(?P<object>[A-Za-z0-9_-]+)/config$")


def semantic_problems(doc: dict[str, Any]) -> list[str]:
    """What the JSON Schema cannot say: the unit belongs to the device class; a state class needs a number."""
    out = []
    cls, unit = doc.get("device_class"), doc.get("unit_of_measurement")
    if cls is not None and unit not in DEVICE_CLASS_UNITS[cls]:
        out.append(f"unit {unit!r} is not one HA accepts for device_class {cls!r}")
    if cls == "energy" and doc.get("state_class") not in ("total", "total_increasing"):
        out.append("an energy sensor's state_class is total or total_increasing")
    return out
