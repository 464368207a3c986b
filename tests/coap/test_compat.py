"""Canary for drivers/coap/compat.py: fails when the aiocoap internals the push server relies on move."""

from __future__ import annotations

import inspect

import aiocoap
import aiocoap.resource
import pytest
from fieldgate.drivers.coap import compat


def test_installed_aiocoap_is_in_the_tested_range() -> None:
    assert compat.TESTED[0] <= compat.version()[:2] < compat.TESTED[1], (
        "aiocoap moved: re-check drivers/coap/compat.py's assumptions, then widen TESTED and pyproject's bound")


async def test_udp_hook_sees_every_datagram_and_reports_the_port() -> None:
    ctx = await aiocoap.Context.create_server_context(aiocoap.resource.Site(), bind=("::1", 0), transports=["udp6"])
    seen: list[bytes] = []
    try:
        port = compat.hook_udp(ctx, lambda data, *_rest: seen.append(data))
        assert 0 < port < 65536
        mi = compat.message_interface(ctx)
        mi.datagram_msg_received(b"\x40\x01\x00\x01", [], 0, None)  # what the transport calls per datagram
        assert seen == [b"\x40\x01\x00\x01"]
    finally:
        await ctx.shutdown()


def test_dtls_internals_are_where_compat_reaches() -> None:
    tinydtls_server = pytest.importorskip("aiocoap.transports.tinydtls_server")
    pool = tinydtls_server._DatagramServerSocketSimpleDTLS
    assert callable(getattr(pool, "datagram_received", None))
    assert "self._connections" in inspect.getsource(pool.__init__)
    assert callable(getattr(tinydtls_server.GoingThroughMessageDecryption, "_received_plaintext", None))
    assert "self._pool" in inspect.getsource(tinydtls_server.MessageInterfaceTinyDTLSServer)
    address_init = inspect.getsource(tinydtls_server._AddressDTLS.__init__)
    assert "self._underlying_address" in address_init and "self._psk_store" in address_init
    assert "self._claims" in inspect.getsource(tinydtls_server.SecurityStore.__init__)


def test_sockaddr_helpers_degrade_to_unknown() -> None:
    assert compat.dtls_sockaddr(object()) == compat.UNKNOWN_SOCKADDR
    assert compat.dtls_claim(object()) is None


async def test_a_failed_server_bind_still_leaves_its_socket_to_us() -> None:
    """Canary for ``compat.close_sockets_of``: when aiocoap closes the socket itself, this fails
    and the helper (and its call in ``PushServer._bind``) can go."""
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        with pytest.raises(OSError, match="in use") as info:
            await aiocoap.Context.create_server_context(aiocoap.resource.Site(), bind=("::", taken.getsockname()[1]),
                                                        transports=["udp6"])
        assert compat.close_sockets_of(info.value) == 1
        del info
