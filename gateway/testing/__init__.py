"""Test helpers for fieldgate and for third-party drivers (Telegraf exports its testutil the same way).

* ``RecordingSink``: a ``ReadingSink`` that keeps what a driver hands over;
* ``running_gateway`` / ``until``: a gateway running in the test's event loop;
* ``conformance.suite("mydriver")``: the checks every driver passes, as a
  pytest class: ``TestConformance = conformance.suite("mydriver")``.

Importing this package needs no pytest; ``conformance.suite`` does.
"""

from __future__ import annotations

from . import conformance
from .gateway import running_gateway, until
from .sink import RecordingSink

__all__ = ["RecordingSink", "conformance", "running_gateway", "until"]
