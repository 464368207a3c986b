"""A TCP proxy that can turn into a black hole: the network fault a pulled cable or a dead router makes.

A broker that crashes closes its sockets (the client sees a reset at once). A network that stops
carrying packets closes nothing: the connection stays open on both ends, writes go into the
kernel's buffer, and no answer ever comes. Only the client's own keepalive can tell. While
:meth:`Proxy.freeze` holds, the proxy forwards nothing in either direction and answers nothing
(new connections are accepted by the kernel, as a SYN to a host behind a dead link may be, and then
hang); :meth:`Proxy.thaw` lets traffic through again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from .broker import HOST


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``, one thread per direction and connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._spawn(self._accept_loop)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                self._sockets.append(client)
            self._spawn(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        self._wait_flowing()
        if self._closed.is_set():
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
        self._spawn(self._pump, client, upstream)
        self._spawn(self._pump, upstream, client)

    def _wait_flowing(self) -> None:
        while not self._flowing.wait(0.1):
            if self._closed.is_set():
                return

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            self._wait_flowing()  # a frozen link delivers nothing; the bytes wait here as in a dead router
            if not data or self._closed.is_set():
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        # One side closed while the link carries traffic: pass the close on (a black hole passes nothing).
        self._wait_flowing()
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> None:
        """Stop carrying anything, in both directions, on every connection and on new ones."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Carry traffic again."""
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in threads:
            t.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
