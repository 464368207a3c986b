"""One backoff, one token bucket, one listen-address type: table tests, and that core uses them."""

from __future__ import annotations

import random

import pytest
from fieldgate import app, config
from fieldgate.backoff import backoff_delay
from fieldgate.listen import ListenAddress, is_loopback
from fieldgate.ratelimit import TokenBucket
from fieldgate.uplink import buffered
from fieldgate.web import app as web_app
from fieldgate.web import auth


# failures, base, cap, floor -> (low, high) bounds of the delay
@pytest.mark.parametrize(("failures", "base", "cap", "floor", "low", "high"), [
    (1, 1.0, 30.0, None, 1.0, 1.0),         # the first retry waits one base step
    (2, 1.0, 30.0, None, 1.0, 2.0),         # full jitter: anywhere from the floor to the step
    (6, 1.0, 30.0, None, 1.0, 30.0),        # 32 s step capped at 30
    (5000, 1.0, 300.0, None, 1.0, 300.0),   # days of failures: capped, no float overflow
    (1, 0.5, 60.0, 0.5, 0.5, 0.5),          # the uplink's reconnect_min / reconnect_max
    (4, 0.5, 60.0, 0.5, 0.5, 4.0),
    (3, 10.0, 5.0, None, 10.0, 10.0),       # a cap below the floor never undercuts the floor
])
def test_backoff_table(failures: int, base: float, cap: float, floor: float | None, low: float, high: float) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(failures, base, cap, rng, floor) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    if high > low:
        assert min(delays) < low + (high - low) * 0.1 and max(delays) > high - (high - low) * 0.1  # full jitter


def test_one_backoff_for_devices_and_uplink() -> None:
    assert app.backoff_delay is backoff_delay
    assert buffered.backoff_delay is backoff_delay  # the uplink's connection loop


# (time, action, expected result) steps for a bucket of rate 2/s, burst 3, created at t=0
@pytest.mark.parametrize("steps", [
    [(0.0, "take", True), (0.0, "take", True), (0.0, "take", True), (0.0, "take", False), (0.5, "take", True)],
    [(0.0, "up_to:5", 3), (0.0, "up_to:5", 0), (0.0, "wait", 0.5), (1.0, "up_to:5", 2), (100.0, "up_to:9", 3)],
    [(0.0, "up_to:2", 2), (0.25, "wait", 0.0), (0.25, "take", True), (0.25, "take", False), (-5.0, "take", False)],
])
def test_token_bucket_table(steps: list[tuple[float, str, object]]) -> None:
    bucket = TokenBucket(2.0, 3, 0.0)
    for now, action, expected in steps:
        if action == "take":
            got: object = bucket.take(now)
        elif action == "wait":
            got = pytest.approx(bucket.wait(now))
            assert got == expected, (now, action)
            continue
        else:
            got = bucket.take_up_to(now, int(action.split(":")[1]))
        assert got == expected, (now, action)


@pytest.mark.parametrize(("rate", "burst"), [(0, 3), (-1, 3), (float("nan"), 3), (1, 0)])
def test_token_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst, 0.0)


def test_one_token_bucket() -> None:
    from fieldgate.drivers.coap import server

    assert server.TokenBucket is TokenBucket


@pytest.mark.parametrize(("text", "host", "port", "loopback"), [
    ("127.0.0.1:8080", "127.0.0.1", 8080, True),
    ("[::1]:0", "::1", 0, True),
    ("[::ffff:127.0.0.1]:8080", "::ffff:127.0.0.1", 8080, True),
    ("localhost:8080", "localhost", 8080, True),
    ("0.0.0.0:8080", "0.0.0.0", 8080, False),
    ("[::]:5683", "::", 5683, False),
    ("gw-12.plant.example:80", "gw-12.plant.example", 80, False),
    ("[fe80::1%eth0]:80", "fe80::1%eth0", 80, False),
])
def test_listen_address_table(text: str, host: str, port: int, loopback: bool) -> None:
    addr = ListenAddress.parse(text)
    assert (addr.host, addr.port, addr.is_loopback) == (host, port, loopback)
    assert ListenAddress.parse(str(addr)) == addr


@pytest.mark.parametrize("text", ["8080", ":8080", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:65536", "[]:80"])
def test_listen_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|65535"):
        ListenAddress.parse(text)


def test_listen_address_requires_ip_for_udp() -> None:
    with pytest.raises(ValueError, match="not a name"):
        ListenAddress.parse("localhost:5683", require_ip=True)


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("localhost", True),
    ("10.0.0.1", False), ("::", False), ("", False), (None, False), ("not an ip", False),
])
def test_one_loopback_check(address: str | None, expected: bool) -> None:
    assert is_loopback(address) is expected
    assert not hasattr(auth, "is_loopback")  # one check, in fieldgate.listen


def test_config_password_rule_agrees_on_mapped_loopback() -> None:
    # listening on an IPv4-mapped loopback is as private as 127.0.0.1: no password needed
    web = config.WebConfig.model_validate({"enabled": True, "listen": "[::ffff:127.0.0.1]:8080"})
    assert web.password is None


def test_web_listen_errors_stay_named() -> None:
    from fieldgate.errors import GatewayError

    assert web_app.parse_listen("[::1]:8080") == ("::1", 8080)
    with pytest.raises(GatewayError, match=r"web\.listen"):
        web_app.parse_listen("8080")


def test_device_backoff_survives_days_of_failures() -> None:
    # a device offline for days (poll 1 s, cap 300 s) passes 1024 consecutive failures;
    # the old formula raised OverflowError there and the device's poller died
    assert 1.0 <= app.backoff_delay(5000, 1.0, 300.0, random.Random(3)) <= 300.0
