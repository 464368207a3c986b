"""Shipped profiles: their datasheet test vectors through the decoder to schema-valid messages; the example loads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fieldgate.codecs.frames import parse_hex
from fieldgate.config import load_config, load_profile_file
from fieldgate.drivers.coap.driver import CoapDriver
from fieldgate.drivers.coap.payload import PayloadDecoder
from fieldgate.drivers.coap.profile import CoapProfile
from fieldgate.normalize import Normalizer
from fieldgate_hwsim.coap_sim import Model, encode

from tests.conftest import REPO

PROFILES = ["dragino/ndds75", "dragino/cpn01", "generic/senml"]


def load(name: str) -> CoapProfile:
    prof, diags = load_profile_file(REPO / "profiles" / f"{name}.yaml", CoapDriver)
    assert prof is not None and not [d for d in diags if d.severity == "error"], diags
    assert not diags, diags  # no warnings either (units are SenML symbols)
    return prof  # type: ignore[return-value]


@pytest.mark.parametrize("name", PROFILES)
def test_profile_vectors_and_simulated_payloads(name: str, validate_reading: Callable[[dict[str, Any]], None]) -> None:
    prof = load(name)
    norm = Normalizer("gw", "dev", prof, {"driver": "coap"})
    for vector in prof.test_vectors or []:
        [raw] = PayloadDecoder(prof).decode(parse_hex(vector["raw"]["hex"]), None, now=1.7e9)
        msg = norm.normalize(raw)
        assert msg is not None
        validate_reading(msg)
        assert {k: v["value"] for k, v in msg["metrics"].items()} == vector["expect"]
        assert all(m["quality"] == "good" for m in msg["metrics"].values())
    model = Model(prof, seed=1)
    payload, cf = encode(prof, model)
    [raw] = PayloadDecoder(prof).decode(payload, cf)
    msg = norm.normalize(raw)
    assert msg is not None
    validate_reading(msg)
    for p in prof.points:
        want = model.values[p.name]
        got = msg["metrics"][p.name]["value"]
        assert got == pytest.approx(want, abs=max(p.scale, 1e-3)) if not isinstance(want, bool) else got == want


def test_example_configuration_loads() -> None:
    loaded = load_config(REPO / "drivers" / "coap" / "example.yaml")
    modes = {d.config.id: d.connection.mode for d in loaded.devices}  # type: ignore[attr-defined]
    assert modes == {"bin-17": "push", "manhole-3": "push", "climate-7": "observe", "climate-8": "poll"}
    assert not [w for w in loaded.warnings if w.severity == "error"]


@pytest.mark.parametrize(("conn", "message"), [
    ({"mode": "poll"}, "needs 'host'"),
    ({"mode": "push", "host": "1.2.3.4"}, "takes no host"),
    ({"mode": "push", "listen": "localhost:5683"}, "IP address"),
    ({"mode": "push", "path": "/t/a b"}, "segments"),
    ({"mode": "push", "sources": ["nonsense"]}, "not an address"),
    ({"mode": "push", "dtls": {"identity": "x", "psk": "inline-secret"}}, "not written inline"),
])
def test_bad_connections_are_refused_with_a_reason(conn: dict[str, Any], message: str) -> None:
    from fieldgate.drivers.coap.profile import CoapConnection
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        CoapConnection(**conn)


def test_profile_keys_must_fit_the_format() -> None:
    from pydantic import ValidationError

    base = {"schema_version": 1, "driver": "coap", "vendor": "x", "model": "y"}
    with pytest.raises(ValidationError, match="give a byte offset 'at'"):
        CoapProfile.model_validate({**base, "payload": {"format": "binary"}, "points": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="dotted 'path'"):
        CoapProfile.model_validate({**base, "payload": {"format": "json"}, "points": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="apply to binary"):
        CoapProfile.model_validate({**base, "payload": {"format": "senml"}, "points": [{"name": "a", "at": 1}]})
    with pytest.raises(ValidationError, match="bits"):
        CoapProfile.model_validate({**base, "payload": {"format": "binary"},
                                    "points": [{"name": "a", "at": 0, "type": "u8", "bits": [4, 8]}]})
