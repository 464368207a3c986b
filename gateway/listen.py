"""The one listen-address type: ``host:port`` as configs write it, and loopback.

The status page (``web.listen``), the CoAP push endpoint (``listen``) and the
config's password rule all read addresses with it, so ``[::1]:8080``, a zone
index or an IPv4-mapped loopback mean the same thing everywhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: the zone names the link
    except ValueError:
        return None


def is_loopback(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` and IPv4-mapped loopback; False for anything unknown."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = _ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a server listens: a host (name or address, no brackets) and a port (0: any free one)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, require_ip: bool = False) -> ListenAddress:
        """``127.0.0.1:8080``, ``[::1]:8080``, ``localhost:0`` → a ``ListenAddress``.

        Args:
            text: the configured value.
            require_ip: refuse names (a UDP endpoint binds one address).

        Raises:
            ValueError: not host:port, a port above 65535, or a name where an address is required.
        """
        host, sep, port_text = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"{text!r} is not host:port: write e.g. 127.0.0.1:8080 or [::1]:8080")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"{text!r}: port above 65535")
        if require_ip and _ip(host) is None:
            raise ValueError(f"{text!r}: give an IP address, not a name")
        return cls(host, port)

    @property
    def is_loopback(self) -> bool:
        """Reachable from this machine only."""
        return is_loopback(self.host)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


__all__ = ["ListenAddress", "is_loopback"]
