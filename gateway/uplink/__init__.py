"""Store and forward: readings go to the durable buffer first, then to MQTT.

Write to the buffer first, publish from the buffer, delete only after PUBACK:
a reading committed to the buffer reaches the broker at least once, with its
``seq``, through broker outages, restarts and ``kill -9``.

Policy (documented in the README):

* Group commit: a commit starts as soon as readings wait and no commit is in
  flight. At light load a reading waits for one commit (one fsync with
  ``durability: full``, 0.4 ms on the bench disk, 5 to 20 ms on SD cards); under
  load the readings that arrive during a commit form the next one (up to 2000
  readings per commit), so batches grow with the load and no timer sets the
  pace. A reading is "accepted" once committed; a ``kill -9`` can lose only
  readings not yet committed (those of the commit in flight and after it).
* A reading is published only after its commit. Publishing is strictly oldest
  first, so every device's readings arrive in order. At most ``mqtt.inflight``
  messages await their PUBACK at once.
* Single messages while live; with ``mqtt.batch`` on (``when: backlog``), batch
  messages on ``{prefix}/{gw}/readings`` whenever a backlog builds: an outage's
  replay, or more readings waiting than the in-flight window carries as single
  messages (an overload). ``when: always`` batches everything.
* After an outage the backlog drains at full speed (optionally capped by
  ``mqtt.replay_rate``); polling goes on meanwhile and new readings queue
  behind the backlog. The buffer's own I/O runs in one worker thread so it
  never stalls polling.
* On reconnect every message that was not acknowledged is sent again
  (at-least-once): consumers dedupe on (gateway, seq).

Modules by job: ``intake`` (readings waiting for their commit, overload
shedding), ``readahead`` (which committed rows go out next, PUBACK tracking),
``encode`` (message JSON), ``state`` (what the status page shows), ``buffered``
(the output that wires them to the buffer and the MQTT connection).
"""

from .buffered import BufferedUplink
from .state import UplinkState

__all__ = ["BufferedUplink", "UplinkState"]
