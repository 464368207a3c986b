"""The one place that leans on aiocoap internals (STYLE.md: private internals behind one compat module).

The push server filters datagrams before aiocoap sees them (rate limit,
source allow-list, wire checks) and reports DTLS sessions that never carried
a request (tinydtls drops a wrong key silently). aiocoap offers no public
hook for either, so this module reaches into how aiocoap 0.4.x builds its
server transports:

* ``ctx.request_interfaces[0].token_interface.message_interface`` is the
  transport's message interface; for ``udp6`` its ``datagram_msg_received``
  takes every datagram and ``transport`` is the asyncio transport;
* for ``tinydtls_server`` it holds ``_pool`` (a datagram protocol) whose
  ``datagram_received(data, sockaddr)`` takes every encrypted datagram,
  whose ``_connections`` maps sockaddr → a DTLS session address, and whose
  ``_message_interface._received_plaintext(address, data)`` takes each
  decrypted datagram;
* a DTLS session address keeps the UDP peer in ``_underlying_address.address``
  and the PSK identity it claimed in ``_psk_store._claims`` (None until the
  handshake found a key).

* a failed ``bind()`` in ``udp6``'s ``create_server_transport_endpoint`` leaves
  its new socket open in the failing frame (aiocoap closes nothing there):
  :func:`close_sockets_of` closes it.

``tests/coap/test_compat.py`` is the canary: it fails when any of this moves.
``TESTED`` is the version range it passed on (pyproject bounds aiocoap to it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: aiocoap versions the canary passed on: [low, high).
TESTED = ((0, 4), (0, 5))

UNKNOWN_SOCKADDR: tuple[str] = ("?",)


def version() -> tuple[int, ...]:
    """The installed aiocoap version as numbers, e.g. ``(0, 4, 17)``."""
    import aiocoap.meta

    return tuple(int(p) for p in aiocoap.meta.version.split(".")[:3] if p.isdigit())


def message_interface(ctx: Any) -> Any:
    """The server context's (only) transport message interface."""
    return ctx.request_interfaces[0].token_interface.message_interface


def hook_udp(ctx: Any, hook: Callable[[bytes, Any, Any, Any, Callable[..., None], Any], None]) -> int:
    """Route every plain-UDP datagram through ``hook(data, ancdata, flags, address, inner, transport)``.

    Returns:
        The bound port (the server may have asked for port 0).
    """
    mi = message_interface(ctx)
    inner = mi.datagram_msg_received
    transport = mi.transport

    def received(data: bytes, ancdata: Any, flags: Any, address: Any) -> None:
        hook(data, ancdata, flags, address, inner, transport)

    mi.datagram_msg_received = received
    return int(transport.get_extra_info("socket").getsockname()[1])


def dtls_pool(ctx: Any) -> Any:
    """The DTLS server's datagram protocol (holds its sessions)."""
    return message_interface(ctx)._pool


def hook_dtls(pool: Any, allow: Callable[[Any], bool],
              plaintext: Callable[[Callable[[Any, bytes], None], Any, bytes], None]) -> None:
    """Drop encrypted datagrams ``allow(sockaddr)`` refuses; pass decrypted ones to ``plaintext(inner, addr, data)``."""
    inner = pool.datagram_received

    def received(data: bytes, sockaddr: Any) -> None:
        if allow(sockaddr):
            inner(data, sockaddr)

    pool.datagram_received = received
    decrypting = pool._message_interface
    inner_plain = decrypting._received_plaintext

    def decrypted(address: Any, data: bytes) -> None:
        plaintext(inner_plain, address, data)

    decrypting._received_plaintext = decrypted


def dtls_sessions(pool: Any) -> list[Any]:
    """The DTLS session addresses the server holds now."""
    return list(pool._connections.values())


def dtls_sockaddr(address: Any) -> Any:
    """The UDP peer of a DTLS session address (``("?",)`` if it cannot be told)."""
    return getattr(getattr(address, "_underlying_address", None), "address", None) or UNKNOWN_SOCKADDR


def dtls_claim(address: Any) -> Any:
    """What the session's handshake claimed (the matched PSK identity's claim), None until a key matched."""
    return getattr(getattr(address, "_psk_store", None), "_claims", None)


__all__ = ["TESTED", "dtls_claim", "dtls_pool", "dtls_sessions", "dtls_sockaddr", "hook_dtls",
           "hook_udp", "message_interface", "version"]


def close_sockets_of(exc: BaseException) -> int:
    """Close the sockets aiocoap's own frames of ``exc``'s traceback still hold; returns how many.

    A server context that fails to bind raises with the new socket a local of the failing frame;
    the exception we chain from it (``raise DeviceBusy(...) from exc``) kept the socket alive until
    some later garbage collection, which warned "unclosed socket" far from the cause. Only frames
    of aiocoap's transports are looked at: a socket there is one the failed call created.
    """
    import socket

    closed = 0
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__", "").startswith("aiocoap.transports."):
            for value in list(frame.f_locals.values()):
                if isinstance(value, socket.socket) and value.fileno() != -1:
                    value.close()
                    closed += 1
        tb = tb.tb_next
    return closed
