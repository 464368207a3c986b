"""Canary for gateway/paho_compat.py: fails when the paho internals the uplink relies on move."""

from __future__ import annotations

import socket

import paho.mqtt.client as paho
from fieldgate import paho_compat
from paho.mqtt.enums import CallbackAPIVersion


def test_installed_paho_is_in_the_tested_range() -> None:
    assert paho_compat.TESTED[0] <= paho_compat.version()[:2] < paho_compat.TESTED[1], (
        "paho-mqtt moved: re-check paho_compat.py's assumptions, then widen TESTED and pyproject's bound")


def test_drop_socket_closes_it_and_runs_the_close_callbacks() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    ours, theirs = socket.socketpair()
    seen: list[str] = []
    client.on_socket_unregister_write = lambda _c, _u, s: seen.append("unregister" if s is ours else "?")
    client.on_socket_close = lambda _c, _u, s: seen.append("close" if s is ours else "?")
    try:
        client._sock = ours  # what paho holds once connected (the canary may touch internals)
        paho_compat.drop_socket(client)
        assert seen[-1:] == ["close"] and "?" not in seen  # unregister_write only runs if write was asked
        assert ours.fileno() == -1, "paho no longer closes the socket itself"
        assert client._sock is None
        paho_compat.drop_socket(client)  # a second drop is harmless (abort() may race the broker's close)
    finally:
        ours.close()
        theirs.close()
