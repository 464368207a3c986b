"""Which ``Host`` and ``Origin`` values the status page answers: the defence against DNS rebinding.

A page on ``evil.example`` can make its own name resolve to 127.0.0.1 (or to
the gateway's LAN address) a moment after the browser loaded it. From then on
the browser sends that page's requests to the gateway, same-origin as far as
the browser knows, and the page reads the answers. The one thing the attacker
cannot change is the name in the request: the browser still says
``Host: evil.example``. So the server answers only requests whose ``Host``
names this gateway:

* a loopback name or address (``localhost``, ``127.0.0.1``, ``::1``);
* the address of the socket the request came in on (someone typed the
  gateway's IP address; an IP literal cannot be rebound);
* the host of ``web.listen`` when it is a name; when it is every address
  (``0.0.0.0``, ``::``), this machine's host name and its mDNS form
  (``name.local``), which is how a technician on the LAN often types it;
* every name in ``web.allowed_hosts`` (the gateway's DNS name, a reverse
  proxy's name). ``*.plant.example`` allows that domain's subdomains.

An ``Origin`` (sent by browsers on cross-origin and state-changing requests)
must name an allowed host and the same port as ``Host``: another program on
this machine, on another port, is another origin.

Pure logic, no aiohttp here, so every rule has a table test.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` header value → ``(lower-case name or address without brackets, port or None)``.

    Returns None for a value that is not ``host[:port]`` (empty, bad port, junk).
    """
    value = value.strip()
    if not value or any(c in value for c in "/@?# \t\\"):
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        if not port_text:
            return None
    elif ":" in value:  # a bare IPv6 address is not a valid Host header
        return None
    else:
        host, port_text = value, ""
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            return None
        port = int(port_text)
    host = host.rstrip(".").lower()  # "gw.example." is the same name as "gw.example"
    return (host, port) if host else None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The names this status page answers to.

    Args:
        listen_host: the host part of ``web.listen`` (a name, an address, ``0.0.0.0`` or ``::``).
        allowed: ``web.allowed_hosts``: more names (``*.example`` for a domain's subdomains).
    """

    listen_host: str = "127.0.0.1"
    allowed: tuple[str, ...] = ()
    hostname: str = ""
    _names: frozenset[str] = field(init=False, repr=False)
    _suffixes: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = set(_LOOPBACK_NAMES)
        suffixes: list[str] = []
        listen = self.listen_host.strip("[]").rstrip(".").lower()
        if listen and _ip(listen) is None:
            names.add(listen)
        ip = _ip(listen) if listen else None
        own = self.hostname.rstrip(".").lower()
        if own and ip is not None and ip.is_unspecified:
            names.update({own, own.split(".", 1)[0] + ".local"})
        for raw in self.allowed:
            name = raw.strip().strip("[]").rstrip(".").lower()
            if name.startswith("*."):
                suffixes.append(name[1:])  # ".plant.example"
            elif name:
                names.add(name)
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_suffixes", tuple(suffixes))

    @classmethod
    def build(cls, listen_host: str, allowed: Iterable[str] = (), hostname: str | None = None) -> HostPolicy:
        """A policy for ``web.listen``'s host and ``web.allowed_hosts`` (``hostname``: default this machine's)."""
        return cls(listen_host, tuple(allowed), socket.gethostname() if hostname is None else hostname)

    def host_allowed(self, host: str, local_address: str | None = None) -> bool:
        """Whether ``host`` (already split, lower case) names this gateway.

        Args:
            host: the name or address from ``Host`` or ``Origin``.
            local_address: the address of the socket the request arrived on.
        """
        ip = _ip(host)
        if ip is not None:
            if ip.is_loopback:
                return True
            local = _ip(local_address) if local_address else None
            listen = _ip(self.listen_host.strip("[]"))
            return ip == local or (listen is not None and not listen.is_unspecified and ip == listen)
        return host in self._names or any(host.endswith(s) for s in self._suffixes)

    def check_host(self, header: str | None, local_address: str | None = None) -> str | None:
        """None when the ``Host`` header is acceptable, else the reason to refuse it."""
        if header is None:
            return "the request has no Host header"
        parts = split_host(header)
        if parts is None:
            return f"Host {header!r} is not host[:port]"
        if not self.host_allowed(parts[0], local_address):
            return (f"Host {header!r} does not name this gateway: open it by its address, or add the "
                    "name to web.allowed_hosts")
        return None

    def check_origin(self, origin: str, host_header: str | None, local_address: str | None = None,
                     scheme: str = "http") -> str | None:
        """None when ``Origin`` is this page's own origin, else the reason to refuse the request.

        ``scheme`` is how the request reached us (a ``Host`` without a port means that scheme's port).
        """
        if origin == "null":
            return "requests from an opaque origin (a sandboxed frame, a file: page) are refused"
        try:
            url = urlsplit(origin)
            port = url.port
        except ValueError:
            return f"Origin {origin!r} is not scheme://host[:port]"
        if url.scheme not in _DEFAULT_PORTS or not url.hostname or url.path or url.query:
            return f"Origin {origin!r} is not an http(s) origin"
        if not self.host_allowed(url.hostname.rstrip(".").lower(), local_address):
            return f"cross-origin request from {origin} refused"
        host = split_host(host_header or "")
        origin_port = port if port is not None else _DEFAULT_PORTS[url.scheme]
        host_port = (host[1] if host[1] is not None else _DEFAULT_PORTS.get(scheme, 80)) if host else None
        if host_port != origin_port:
            return f"cross-origin request from {origin} refused (another port)"
        return None


__all__ = ["HostPolicy", "split_host"]
