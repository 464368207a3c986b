"""The local status page: pages, a versioned JSON API, live updates and Prometheus metrics.

Wiring (in the gateway's start-up)::

    from fieldgate.web import install_log_ring, start_web

    install_log_ring()                      # first thing, so early log lines show on the page
    web = await start_web(gateway, output, cfg.web)   # GatewayError if the port is taken
    print(web.url)
    ...
    await web.close()

The server needs the ``web`` extra (aiohttp); the log ring does not, so
``install_log_ring`` works on a gateway installed without it.
"""

from __future__ import annotations

from typing import Any

from .logring import LogRing, current_log_ring, install_log_ring


def __getattr__(name: str) -> Any:
    # aiohttp is imported only when the server is asked for (it is an optional extra)
    if name in ("WebServer", "create_app", "start_web"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["LogRing", "WebServer", "create_app", "current_log_ring", "install_log_ring", "start_web"]
