"""Test infrastructure with real peers: a mosquitto broker, a test PKI, an MQTT collector, contract checks.

Modules:
    broker: :class:`~tests.support.broker.Mosquitto` and the ``mosquitto`` / ``mosquitto_factory`` fixtures.
    certs: :func:`~tests.support.certs.generate_pki`, :class:`~tests.support.certs.TlsFiles` and ``test_pki``.
    collector: :class:`~tests.support.collector.Collector`, a paho subscriber that records what it sees.
    contract: validators for every message of the wire contract (``CONTRACT.md``).

The recording sink and the in-loop gateway are public, for third-party drivers too:
``fieldgate.testing`` (``RecordingSink``, ``running_gateway``, ``until``).
"""
