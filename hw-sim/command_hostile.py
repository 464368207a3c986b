"""A commandable device and hostile command payloads: what the command tests and the fault campaign send.

``BOILER_PROFILE`` is a boiler controller with writable points of every kind (float32, scaled
int16, int32, coils) and read-only ones; served by ``fieldgate_hwsim.modbus_sim``, whose models
record every write applied (``DeviceModel.writes``), so a test counts at the device how often a
command really ran.

``hostile_commands`` builds the payloads a broken or hostile sender publishes on a ``.../cmd``
topic: not JSON, not UTF-8, nested past any parser, huge, wrong types, unknown keys, points and
devices, values out of range, expired. Each comes with the reason the gateway must name (a
regular expression over the result's ``reason``). None of them may reach the device.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

__all__ = ["BOILER_PROFILE", "HostileCommand", "hostile_commands"]

#: A boiler controller: a float32 setpoint, an int16 setpoint with scale, an int32, a relay coil,
#: and read-only points (an input register, a holding register not marked writable).
BOILER_PROFILE = """\
schema_version: 1
driver: modbus
vendor: test
model: boiler
points:
  - {name: setpoint, table: holding, address: 0, type: float32, unit: Cel, writable: true, write_range: [5, 80]}
  - {name: flow_setpoint, table: holding, address: 2, type: int16, scale: 0.1, unit: Cel, writable: true,
     range: [-20, 90]}
  - {name: counter_preset, table: holding, address: 3, type: int32, word_order: little, writable: true,
     write_range: [0, 1000000], write_function: 16}
  - {name: relay, table: coil, address: 0, writable: true}
  - {name: pump, table: coil, address: 1, writable: true, write_function: 15}
  - {name: temperature, table: input, address: 0, type: float32, unit: Cel}
  - {name: mode, table: holding, address: 5, type: uint16}
"""

SCHEMA = "fieldgate.command/1"


@dataclass(frozen=True)
class HostileCommand:
    """One hostile command.

    Attributes:
        kind: what it is (a name for the table).
        device: the device part of the topic it goes to.
        payload: the raw bytes published.
        reason: a regular expression the result's reason must match.
        cid: the id the result must carry (``""`` when the message has no usable id).
        retain: publish it retained.
    """

    kind: str
    device: str
    payload: bytes
    reason: str
    cid: str
    retain: bool = False


def _cmd(cid: str, **fields: object) -> bytes:
    return json.dumps({"schema": SCHEMA, "id": cid, **fields}).encode()


def hostile_commands(rng: random.Random, device: str, tag: str, *, other_device: str = "no-such-device",
                     denied_device: str | None = None) -> list[HostileCommand]:
    """Every kind of hostile command once, with ids that start with ``tag`` (unique per round).

    Args:
        rng: the random source (random JSON and bytes are drawn from it).
        device: a device that takes commands (on the boiler profile).
        tag: a prefix making this round's ids unique.
        other_device: an id no device has.
        denied_device: a running device not in ``commands.allow`` (skipped when None).
    """
    w = "write"
    out = [
        HostileCommand("not JSON", device, b"{\"schema\": " + rng.randbytes(8).hex().encode(), r"bad_message", ""),
        HostileCommand("random bytes", device, b"\x80" + rng.randbytes(200), r"bad_message", ""),
        HostileCommand("non-UTF-8 in a string", device,
                       b'{"schema": "fieldgate.command/1", "id": "' + tag.encode() + b'-utf8", "op": "write", '
                       b'"metrics": {"setpoint\xff\xfe": 20}}', r"bad_message", ""),
        # Valid JSON escapes of lone UTF-16 surrogates: the text they decode to has no UTF-8 form.
        HostileCommand("lone surrogate in a point name", device,
                       _cmd(f"{tag}-surr", op=w).replace(b"}", b', "metrics": {"setp\\udcdf": 20}}'),
                       r"bad_message|unknown_point", f"{tag}-surr"),
        HostileCommand("lone surrogate in a value", device,
                       _cmd(f"{tag}-surrv", op=w).replace(b"}", b', "metrics": {"setpoint": "\\ud800"}}'),
                       r"bad_message|bad_value", f"{tag}-surrv"),
        HostileCommand("UTF-16", device, _cmd(f"{tag}-utf16", op=w, metrics={"setpoint": 21}).decode().encode("utf-16"),
                       r"bad_message", ""),
        HostileCommand("deep nesting (array)", device, b"[" * 100_000 + b"]" * 100_000, r"bad_message", ""),
        HostileCommand("deep nesting (in metrics)", device,
                       b'{"schema": "fieldgate.command/1", "id": "' + tag.encode() + b'-deep", "op": "write", '
                       b'"metrics": {"setpoint": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}", r"bad_message", ""),
        HostileCommand("huge (64 kB)", device, _cmd(f"{tag}-huge", op=w, metrics={"setpoint": 22, "x": "a" * 65536}),
                       r"bad_message", ""),
        HostileCommand("JSON null", device, b"null", r"bad_message", ""),
        HostileCommand("JSON array", device, json.dumps([_cmd(f"{tag}-arr", op=w).decode()]).encode(),
                       r"bad_message", ""),
        HostileCommand("random JSON object", device,
                       json.dumps({rng.randbytes(4).hex(): rng.random() for _ in range(5)}).encode(),
                       r"bad_message", ""),
        HostileCommand("wrong schema", device,
                       json.dumps({"schema": "fieldgate.command/9", "id": f"{tag}-schema", "op": w,
                                   "metrics": {"setpoint": 23}}).encode(), r"bad_message", f"{tag}-schema"),
        HostileCommand("id a number", device, json.dumps({"schema": SCHEMA, "id": 12345, "op": w,
                                                          "metrics": {"setpoint": 24}}).encode(), r"bad_message", ""),
        HostileCommand("id too long", device, _cmd("x" * 65, op=w, metrics={"setpoint": 25}), r"bad_message", ""),
        HostileCommand("id with a slash", device, _cmd(f"{tag}/slash", op=w, metrics={"setpoint": 26}),
                       r"bad_message", ""),
        HostileCommand("op unknown", device, _cmd(f"{tag}-op", op="erase", metrics={"setpoint": 27}),
                       r"bad_message", f"{tag}-op"),
        HostileCommand("op a number", device, _cmd(f"{tag}-opn", op=1), r"bad_message", f"{tag}-opn"),
        HostileCommand("unknown key", device, _cmd(f"{tag}-key", op=w, metrics={"setpoint": 28}, expire="soon"),
                       r"bad_message.*expire", f"{tag}-key"),
        HostileCommand("metrics a list on a write", device, _cmd(f"{tag}-mlist", op=w, metrics=["setpoint"]),
                       r"bad_message", f"{tag}-mlist"),
        HostileCommand("metrics empty", device, _cmd(f"{tag}-mempty", op=w, metrics={}), r"bad_message",
                       f"{tag}-mempty"),
        HostileCommand("value an object", device, _cmd(f"{tag}-vobj", op=w, metrics={"setpoint": {"v": 29}}),
                       r"bad_message", f"{tag}-vobj"),
        HostileCommand("value NaN", device,
                       f'{{"schema": "{SCHEMA}", "id": "{tag}-nan", "op": "write", "metrics": {{"setpoint": NaN}}}}'
                       .encode(), r"bad_message|bad_value", f"{tag}-nan"),
        HostileCommand("value 1e400", device,
                       f'{{"schema": "{SCHEMA}", "id": "{tag}-inf", "op": "write", "metrics": {{"setpoint": 1e400}}}}'
                       .encode(), r"bad_message|bad_value|out_of_range", f"{tag}-inf"),
        HostileCommand("value 5000 digits", device,
                       f'{{"schema": "{SCHEMA}", "id": "{tag}-digits", "op": "write", '
                       f'"metrics": {{"setpoint": {"9" * 5000}}}}}'.encode(), r"bad_message|out_of_range", ""),
        HostileCommand("value a string", device, _cmd(f"{tag}-vstr", op=w, metrics={"setpoint": "hot"}),
                       r"bad_value", f"{tag}-vstr"),
        HostileCommand("value a boolean for a float", device, _cmd(f"{tag}-vbool", op=w, metrics={"setpoint": True}),
                       r"bad_value", f"{tag}-vbool"),
        HostileCommand("value out of range", device, _cmd(f"{tag}-range", op=w, metrics={"setpoint": 500}),
                       r"out_of_range", f"{tag}-range"),
        HostileCommand("value below range", device, _cmd(f"{tag}-below", op=w, metrics={"counter_preset": -1}),
                       r"out_of_range", f"{tag}-below"),
        HostileCommand("int16 overflow", device, _cmd(f"{tag}-i16", op=w, metrics={"flow_setpoint": 4000}),
                       r"out_of_range|bad_value", f"{tag}-i16"),
        HostileCommand("read-only point", device, _cmd(f"{tag}-ro", op=w, metrics={"temperature": 30}),
                       r"read_only", f"{tag}-ro"),
        HostileCommand("unknown point", device, _cmd(f"{tag}-point", op=w, metrics={"setpiont": 30}),
                       r"unknown_point", f"{tag}-point"),
        HostileCommand("65 points", device, _cmd(f"{tag}-many", op=w, metrics={f"p{i}": 1 for i in range(65)}),
                       r"bad_message", f"{tag}-many"),
        HostileCommand("expired", device, _cmd(f"{tag}-exp", op=w, metrics={"setpoint": 31},
                                               expires="2001-01-01T00:00:00.000Z"), r"expired", f"{tag}-exp"),
        HostileCommand("expires not a time", device, _cmd(f"{tag}-expbad", op=w, metrics={"setpoint": 32},
                                                          expires="tomorrow"), r"bad_message", f"{tag}-expbad"),
        HostileCommand("expires without a zone", device, _cmd(f"{tag}-expzone", op=w, metrics={"setpoint": 33},
                                                              expires="2099-01-01T00:00:00"), r"bad_message",
                       f"{tag}-expzone"),
        HostileCommand("expires year 1", device, _cmd(f"{tag}-exp1", op=w, metrics={"setpoint": 34},
                                                      expires="0001-01-01T00:00:00-23:59"),
                       r"bad_message|expired", f"{tag}-exp1"),
        HostileCommand("retained", device, _cmd(f"{tag}-ret", op=w, metrics={"setpoint": 35}), r"retained",
                       f"{tag}-ret", retain=True),
        HostileCommand("unknown device", other_device, _cmd(f"{tag}-dev", op=w, metrics={"setpoint": 36}),
                       r"not_allowed|unknown_device", f"{tag}-dev"),
    ]
    if denied_device is not None:
        out.append(HostileCommand("device not allowed", denied_device,
                                  _cmd(f"{tag}-deny", op=w, metrics={"setpoint": 37}), r"not_allowed", f"{tag}-deny"))
    return out
