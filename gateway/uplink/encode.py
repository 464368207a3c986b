"""JSON text of the messages the uplink stores and publishes.

Readings are encoded on the hot path (``submit``, once per reading), so they go
through orjson when it is installed: 1.9 us instead of 20.6 us for a 20-metric
reading on the bench machine (``bench/pipeline.py``; stdlib was 7.7 % of the
gateway's CPU in issue 16's profile). orjson is a runtime dependency with wheels
for aarch64 and armv7; where it is missing (a source install on an unusual
platform) the stdlib encoder is used, with the same output.

The two differ where orjson refuses what the stdlib accepts (integers beyond
64 bits, lone surrogates in a string): such a message is encoded by the stdlib
instead, so nothing is refused here that was accepted before. Non-finite floats
never reach here (the normalizer turns them into ``null`` with ``bad`` quality);
the stdlib encoder refuses them (``allow_nan=False``) rather than write
non-JSON. Events and statuses are rare and use the stdlib encoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

dumps: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this is the fallback for exotic platforms
    orjson = None  # type: ignore[assignment]


def _reading_orjson(message: dict[str, Any]) -> str:
    try:
        return orjson.dumps(message).decode()
    except TypeError:  # orjson.JSONEncodeError: what orjson refuses and the stdlib writes (see above)
        return dumps(message)


#: The JSON text of a reading message (compact, UTF-8, key order kept).
reading_json: Callable[[dict[str, Any]], str] = dumps if orjson is None else _reading_orjson
FAST = orjson is not None

__all__ = ["FAST", "dumps", "reading_json"]
