"""``mqtt.tls.server_name`` against a real TLS mosquitto, through the real gateway process.

The broker's certificate names only ``broker.site.example`` (no IP address). The gateway dials
127.0.0.1: with ``server_name`` set to that name the certificate is verified and the connection
made; with another name, or with none (the address is then the name checked), it is refused with
an error that names the mismatch. Verification is never turned off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Proc, sim_device
from .support.broker import Mosquitto
from .support.certs import TlsFiles, issue_server_cert

NAME = "broker.site.example"


@pytest.fixture
def named_broker(tmp_path: Path, test_pki: TlsFiles, mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    pki = issue_server_cert(test_pki, tmp_path / "named-pki", NAME, dns_names=[NAME])
    return mosquitto_factory(tls=pki)


def config(tmp_path: Path, broker: Mosquitto, tls_extra: str) -> Path:
    assert broker.tls is not None
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-tls, data_dir: {tmp_path / 'data'}, clock_check: off}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_min: 0.2s, reconnect_max: 1s, "
        f"tls: {{ca_file: {broker.tls.ca_cert}{tls_extra}}}}}\n"
        "web: {enabled: false}\n"
        "devices:\n" + sim_device("d0", poll_interval="0.2s")
    )
    return cfg


def test_server_name_is_the_name_verified(tmp_path: Path, named_broker: Mosquitto,
                                          fieldgate_proc: Callable[..., Proc]) -> None:
    proc = fieldgate_proc("run", "-c", str(config(tmp_path, named_broker, f", server_name: {NAME}")))
    line = proc.wait_stderr(f"connected to mqtts://127.0.0.1:{named_broker.port}", timeout=20)
    assert " uplink: " not in "".join(proc.stderr_lines), "".join(proc.stderr_lines)
    assert line


@pytest.mark.parametrize(("extra", "name"), [(", server_name: other.site.example", "other.site.example"),
                                             ("", "127.0.0.1")])
def test_a_certificate_for_another_name_is_refused(tmp_path: Path, named_broker: Mosquitto,
                                                   fieldgate_proc: Callable[..., Proc], extra: str,
                                                   name: str) -> None:
    proc = fieldgate_proc("run", "-c", str(config(tmp_path, named_broker, extra)))
    line = proc.wait_stderr(" uplink: ", timeout=20)
    assert f"not valid for {name!r}" in line, line
    assert "connected to" not in "".join(proc.stderr_lines)
    assert "Traceback" not in "".join(proc.stderr_lines)


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_a_named_pipe_as_a_tls_file_is_an_error_not_a_hang(tmp_path: Path, named_broker: Mosquitto,
                                                            fieldgate_proc: Callable[..., Proc], key: str) -> None:
    """OpenSSL opening a FIFO waits for a writer forever: the uplink hung in its connect and said nothing."""
    import os
    import signal

    fifo = tmp_path / "cert.pem"
    os.mkfifo(fifo)
    assert named_broker.tls is not None
    extra = (f", server_name: {NAME}" if key == "ca_file" else
             f", server_name: {NAME}, cert_file: {fifo}, key_file: {named_broker.tls.ca_key}")
    cfg = config(tmp_path, named_broker, extra)
    if key == "ca_file":
        cfg.write_text(cfg.read_text().replace(f"ca_file: {named_broker.tls.ca_cert}", f"ca_file: {fifo}"))
    proc = fieldgate_proc("run", "-c", str(cfg))
    line = proc.wait_stderr(" uplink: ", timeout=20)
    assert f"mqtt.tls.{key} {fifo}: it is a named pipe (FIFO), not a file" in line, line
    proc.popen.send_signal(signal.SIGTERM)  # and it still stops cleanly
    assert proc.popen.wait(20) == 0
    assert "Traceback" not in "".join(proc.stderr_lines)
