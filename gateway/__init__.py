"""fieldgate: an edge gateway agent.

Polls field devices through pluggable drivers, normalizes every reading to the
wire contract (``fieldgate.reading/1``), buffers durably and forwards via MQTT.
"""

__version__ = "0.1.0"
