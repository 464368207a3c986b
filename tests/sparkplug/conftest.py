"""Fixtures of the Sparkplug tests: a gateway process in Sparkplug mode, a host application, the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import Proc, sim_device
from tests.support.broker import Mosquitto
from tests.support.sparkplug_host import SparkplugHost

GROUP, NODE, HOST_ID = "plant", "gw-1", "scada"


def spb_config(folder: Path, port: int, *, primary_host: str | None = HOST_ID, interval: str = "0.1s",
               protocol: str = "5", devices: int = 2) -> str:
    """A Sparkplug gateway: ``meter-1`` (breakable through ``meter-1.fault``) and more sim meters."""
    folder.mkdir(parents=True, exist_ok=True)
    control = folder / "meter-1.fault"
    if not control.exists():
        control.write_text("none")
    host = f", primary_host_id: {primary_host}" if primary_host else ""
    devs = sim_device("meter-1", poll_interval=interval, offline_after=1, backoff_max="0.2s",
                      connection=f"{{control_file: {control}}}")
    devs += "".join(sim_device(f"meter-{i}", poll_interval=interval) for i in range(2, devices + 1))
    return (f"gateway: {{id: {NODE}, data_dir: {folder / 'data'}, clock_check: off, shutdown_timeout: 5s}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {port}, protocol: '{protocol}', format: sparkplug, "
            "reconnect_min: 0.05s, reconnect_max: 0.3s}\n"
            f"sparkplug: {{group_id: {GROUP}{host}}}\n"
            "buffer: {flush_interval: 50ms}\n"
            "web: {enabled: false}\n"
            f"devices:\n{devs}")


@dataclass
class Rig:
    """A broker, a host application on it and the folder of a Sparkplug gateway."""

    broker: Mosquitto
    host: SparkplugHost
    folder: Path
    start: Callable[..., Proc]
    procs: list[Proc] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.folder / "fieldgate.yaml"

    def gateway(self, **kw: object) -> Proc:
        """Write the config (``spb_config`` options) and start ``fieldgate run`` on it."""
        self.config.write_text(spb_config(self.folder, self.broker.port, **kw))  # type: ignore[arg-type]
        # Warnings shown (Python hides ResourceWarning by default): check_logs reads them.
        proc = self.start("run", "-c", str(self.config), env={"PYTHONWARNINGS": "default"})
        self.procs.append(proc)
        return proc

    def check_logs(self) -> None:
        """A traceback or a warning of Python in a gateway's log is a finding, not noise."""
        for proc in self.procs:
            text = "".join(proc.stderr_lines)
            for needle in ("Traceback", "Warning:", "Task exception was never retrieved"):
                assert needle not in text, f"gateway logged {needle}:\n{text[-3000:]}"


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Proc]) -> Iterator[Rig]:
    host = SparkplugHost(mosquitto.host, mosquitto.port, host_id=HOST_ID, group=GROUP, node=NODE)
    with host:
        r = Rig(mosquitto, host, tmp_path / "gw", fieldgate_proc)
        yield r
    r.check_logs()
