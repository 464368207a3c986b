"""Sparkplug B 3.0 edge node: the output chosen by ``mqtt.format: sparkplug``.

``fieldgate_sparkplug_b.proto`` is the payload schema (written from the specification's field
numbers; ``fieldgate_sparkplug_b_pb2`` is generated from it, see the file for how), ``codec``
turns readings into Sparkplug payloads and reads commands and STATE (pure functions), ``node``
is the edge node's state (bdSeq, seq, aliases, births; no I/O but its two small files), and
``output`` is the uplink that publishes them from the durable buffer. See docs/sparkplug.md.
"""

from __future__ import annotations

NAMESPACE = "spBv1.0"

__all__ = ["NAMESPACE"]
