"""``fieldgate doctor``: one finding per broken condition, with real peers where they can run here.

Real: a mosquitto broker (plain, TLS with the test PKI, with accounts), a port nobody listens on,
ptys as serial ports, a small tmpfs as a full disk (when this machine lets the test mount one),
a buffer database written by the real Buffer, sim devices, a private D-Bus with python-dbusmock's
BlueZ template. Injected: the clock (the kernel's sync state cannot be changed by a test), and
``statvfs`` where no tmpfs can be mounted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldgate.buffer import Buffer
from fieldgate.doctor import Doctor, Finding, exit_code, render_text

from tests.conftest import REPO, SIM_PROFILES
from tests.support.broker import Mosquitto, free_port
from tests.support.certs import TlsFiles

METER = SIM_PROFILES / "energy-meter.yaml"


def write(tmp_path: Path, body: str, *, data_dir: Path | None = None, mqtt: str | None = None) -> Path:
    cfg = tmp_path / "fieldgate.yaml"
    mqtt = mqtt if mqtt is not None else f"mqtt: {{host: 127.0.0.1, port: {free_port()}, connect_timeout: 2}}\n"
    cfg.write_text(f"gateway: {{id: gw-doc, data_dir: {data_dir or tmp_path / 'data'}}}\n"
                   f"web: {{enabled: false}}\n{mqtt}{body}")
    return cfg


def run(cfg: Path, **kw: Any) -> list[Finding]:
    import asyncio

    kw.setdefault("clock", lambda: True)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("root", cfg.parent)
    return asyncio.run(Doctor(cfg, **kw).run())


def find(findings: list[Finding], check: str) -> Finding:
    hits = [f for f in findings if f.check == check]
    assert hits, f"no {check!r} finding in {[f.check for f in findings]}"
    return hits[0]


def assert_failed(f: Finding, *words: str) -> None:
    assert f.status == "fail", f
    assert f.fix, f"no fix for {f}"
    for w in words:
        assert w in f.summary + " " + f.fix, (w, f)


# --- configuration ---------------------------------------------------------------------------


def test_invalid_config_is_reported_with_positions_and_exit_1(tmp_path: Path) -> None:
    cfg = write(tmp_path, "devices:\n  - {id: m1, driver: sim, profile: nope/none, poll_interval: fast}\n")
    findings = run(cfg)
    f = find(findings, "config")
    assert_failed(f, "fieldgate validate")
    assert any(e.startswith(f"{cfg}:5:") and "poll_interval" in e for e in f.details["errors"])
    assert any("profile 'nope/none' not found" in e for e in f.details["errors"])
    assert exit_code(findings) == 1


def test_missing_config(tmp_path: Path) -> None:
    findings = run(tmp_path / "absent.yaml")
    assert_failed(find(findings, "config"), "boot partition")
    assert exit_code(findings) == 1


def test_invalid_profile_in_a_profile_folder(tmp_path: Path) -> None:
    lib = tmp_path / "lib/acme"
    lib.mkdir(parents=True)
    (lib / "good.yaml").write_bytes(METER.read_bytes())
    (lib / "bad.yaml").write_text(METER.read_text().replace("decimals: 1", "decimals: -1"))
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(f"gateway: {{id: gw, data_dir: {tmp_path}/data, profile_dirs: [lib]}}\n"
                   "mqtt: {host: 127.0.0.1}\n")
    f = find(run(cfg, devices=False), "profiles")
    assert_failed(f)
    assert any(str(lib / "bad.yaml") in e and "decimals" in e for e in f.details["errors"])


def test_no_mqtt_section_means_the_service_will_not_start(tmp_path: Path) -> None:
    cfg = write(tmp_path, "", mqtt="")
    findings = run(cfg)
    assert_failed(find(findings, "config.mqtt"), "mqtt")
    assert exit_code(findings) == 1


def test_refused_provisioning_file_is_a_finding(tmp_path: Path) -> None:
    boot = tmp_path / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "fieldgate.yaml").write_text("gateway: {id: x}\nmqt: {}\n")
    subprocess.run([sys.executable, "-m", "fieldgate.cli", "provision", "--root", str(tmp_path)],
                   capture_output=True, timeout=60, cwd=REPO, check=False)
    f = find(run(write(tmp_path, "")), "provisioning")
    assert_failed(f, "refused", "mqt")


# --- system ------------------------------------------------------------------------------------


def test_clock_unsynced_synced_and_unknown(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    assert_failed(find(run(cfg, clock=lambda: False), "clock"), "NOT synchronized", "timedatectl")
    assert find(run(cfg, clock=lambda: True), "clock").status == "ok"
    assert find(run(cfg, clock=lambda: None), "clock").status == "n/a"


def _statvfs(free_blocks: int, blocks: int = 1_000_000) -> Callable[[str], os.statvfs_result]:
    def fake(_path: str) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, blocks, free_blocks, free_blocks, 1000, 10, 10, 0, 255))
    return fake


def test_disk_full_injected_statvfs(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    assert_failed(find(run(cfg, statvfs=_statvfs(1000)), "disk"), "full")  # 4 MB of 4 GB
    assert find(run(cfg, statvfs=_statvfs(60_000)), "disk").status == "warn"  # 6 %
    assert find(run(cfg, statvfs=_statvfs(600_000)), "disk").status == "ok"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_real_small_tmpfs(tmp_path: Path, small_tmpfs: Path) -> None:
    data = small_tmpfs / "fieldgate"
    data.mkdir()
    cfg = write(tmp_path, "", data_dir=data)
    with (small_tmpfs / "filler").open("wb") as fh:
        try:
            fh.write(b"\0" * (4 * 1024 * 1024))
        except OSError:
            pass  # ENOSPC: full, as intended
    f = find(run(cfg), "disk")
    assert_failed(f, "full")
    assert f.details["free_bytes"] < 64 * 1024


# --- buffer ------------------------------------------------------------------------------------


def _fill_buffer(data: Path, ages_s: list[float]) -> list[int]:
    now_ms = int(time.time() * 1000)
    with Buffer(data) as buf:
        return buf.append_many([("m1", now_ms - int(a * 1000), json.dumps({"a": a})) for a in ages_s])


def test_buffer_depth_and_age(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write(tmp_path, "buffer: {max_age: 1d}\n", data_dir=data)
    assert find(run(cfg), "buffer").status == "n/a"

    seqs = _fill_buffer(data, [5.0, 1.0])
    f = find(run(cfg), "buffer")
    assert f.status == "ok" and f.details["depth"] == 2 and f.details["last_seq"] == seqs[-1]

    _fill_buffer(data, [7200.0])  # two hours waiting: the broker does not take them
    before = (data / "buffer.db").read_bytes()
    f = find(run(cfg), "buffer")
    assert f.status == "warn" and f.details["depth"] == 3 and "2 hours" in f.summary, f
    assert (data / "buffer.db").read_bytes() == before  # opened read-only

    _fill_buffer(data, [80_000.0])  # 22 h of a 24 h max_age: about to be dropped
    f = find(run(cfg), "buffer")
    assert_failed(f, "dropped", "broker")
    assert f.details["depth"] == 4


def test_buffer_empty_after_delivery(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seqs = _fill_buffer(data, [1.0])
    with Buffer(data) as buf:
        buf.ack(seqs)
    f = find(run(write(tmp_path, "", data_dir=data)), "buffer")
    assert f.status == "ok" and "empty" in f.summary and f.details["last_seq"] == seqs[-1]


# --- serial --------------------------------------------------------------------------------------


def test_missing_and_present_serial_ports(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        present = os.ttyname(slave)
        missing = str(tmp_path / "ttyUSB9")
        cfg = write(tmp_path, f"""devices:
  - {{id: pm-1, driver: serial, profile: plantower/pms5003, connection: {{port: {missing}}}}}
  - {{id: pm-2, driver: serial, profile: plantower/pms5003, connection: {{port: {present}}}}}
""")
        findings = run(cfg, devices=False)
    finally:
        os.close(master)
        os.close(slave)
    assert_failed(find(findings, f"serial:{missing}"), "does not exist", "/dev/serial/by-id")
    assert find(findings, f"serial:{present}").status == "ok"
    assert exit_code(findings) == 3


# --- broker ----------------------------------------------------------------------------------------


def test_unreachable_broker(tmp_path: Path) -> None:
    f = find(run(write(tmp_path, "")), "broker.network")
    assert_failed(f, "cannot be reached", "mqtt.port")


def test_broker_reached_plain(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write(tmp_path, "", mqtt=f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n")
    f = find(run(cfg), "broker")
    assert f.status == "ok" and "reached" in f.summary


def _tls_mqtt(tmp_path: Path, broker: Mosquitto, ca: Path, user: str | None = None, password: str | None = None) -> str:
    lines = f"mqtt:\n  host: localhost\n  port: {broker.port}\n  tls: {{ca_file: {ca}}}\n"
    if user is not None:
        (tmp_path / "mqtt-password").write_text(f"{password}\n")
        lines += f"  username: {user}\n  password: {{file: {tmp_path / 'mqtt-password'}}}\n"
    return lines


def test_bad_tls_certificate(tmp_path: Path, test_pki: TlsFiles, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(tls=test_pki)
    cfg = write(tmp_path, "", mqtt=_tls_mqtt(tmp_path, broker, test_pki.rogue_ca_cert))
    findings = run(cfg)
    assert_failed(find(findings, "broker.tls"), "not trusted", "ca_file")
    assert not [f for f in findings if f.check.startswith("broker.") and f.check != "broker.tls"]

    ok = find(run(write(tmp_path, "", mqtt=_tls_mqtt(tmp_path, broker, test_pki.ca_cert))), "broker")
    assert ok.status == "ok" and "certificate verified" in ok.summary


def test_wrong_and_right_credentials(tmp_path: Path, test_pki: TlsFiles,
                                     mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(tls=test_pki, users={"cabinet-7": "right-one"})
    wrong = write(tmp_path, "", mqtt=_tls_mqtt(tmp_path, broker, test_pki.ca_cert, "cabinet-7", "wrong-one"))
    assert_failed(find(run(wrong), "broker.login"), "refused the login", "mqtt.username")
    right = write(tmp_path, "", mqtt=_tls_mqtt(tmp_path, broker, test_pki.ca_cert, "cabinet-7", "right-one"))
    ok = find(run(right), "broker")
    assert ok.status == "ok" and "'cabinet-7' accepted" in ok.summary


# --- devices and BLE --------------------------------------------------------------------------------


def test_each_device_answering_or_not(tmp_path: Path) -> None:
    cfg = write(tmp_path, f"""devices:
  - {{id: ok-1, driver: sim, profile: {METER}}}
  - {{id: gone-1, driver: sim, profile: {METER}, connection: {{fail: unreachable}}}}
  - {{id: hung-1, driver: sim, profile: {METER}, timeout: 0.3, connection: {{fail: hang}}}}
  - {{id: half-1, driver: sim, profile: {METER}, connection: {{bad_points: [voltage]}}}}
  - {{id: off-1, driver: sim, profile: {METER}, enabled: false}}
""")
    started = time.monotonic()
    findings = run(cfg, timeout=0.3)
    assert time.monotonic() - started < 5
    ok = find(findings, "device:ok-1")
    assert ok.status == "ok" and ok.details["points"] == 6
    assert_failed(find(findings, "device:gone-1"), "does not answer")
    assert_failed(find(findings, "device:hung-1"), "did not answer within 0.3 s", "fieldgate probe hung-1")
    half = find(findings, "device:half-1")
    assert half.status == "warn" and "voltage" in half.summary
    assert not [f for f in findings if f.check == "device:off-1"]


def test_a_sleeping_push_device_is_checked_by_listening_not_by_waiting(tmp_path: Path) -> None:
    """An NB-IoT device may report once an hour: doctor proves the endpoint, and sees it taken by another."""
    pytest.importorskip("aiocoap")
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body = (f"devices:\n  - {{id: bin-1, driver: coap, profile: dragino/ndds75, "
            f"connection: {{mode: push, listen: '127.0.0.1:{port}'}}}}\n")
    started = time.monotonic()
    f = find(run(write(tmp_path, body), timeout=5.0), "device:bin-1")
    assert time.monotonic() - started < 5  # no waiting for a report that may come in an hour
    assert f.status == "ok" and f"coap://127.0.0.1:{port}/t/bin-1" in f.summary
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as service:  # as the running service holds it
        service.bind(("127.0.0.1", port))
        assert_failed(find(run(write(tmp_path, body)), "device:bin-1"), "in use", "systemctl stop fieldgate")


def test_ble_not_applicable_without_ble_devices(tmp_path: Path) -> None:
    f = find(run(write(tmp_path, f"devices:\n  - {{id: m, driver: sim, profile: {METER}}}\n"), devices=False), "ble")
    assert f.status == "n/a" and "not needed" in f.summary
    pytest.importorskip("bleak")
    replayed = BLE_DEVICE.replace("connection: {", "connection: {backend: replay, ")
    f = find(run(write(tmp_path, replayed), devices=False), "ble")
    assert f.status == "n/a" and "tag-1" in f.summary and "simulated" in f.summary


BLE_DEVICE = ('devices:\n  - {id: tag-1, driver: ble, profile: ruuvi/ruuvitag, '
              'connection: {address: "C7:3A:10:5E:22:01"}}\n')


@pytest.fixture
def system_bus() -> Iterator[Any]:
    """A private system bus (DBUS_SYSTEM_BUS_ADDRESS points at it) with nothing on it yet."""
    pytest.importorskip("dbus_fast")
    dbusmock = pytest.importorskip("dbusmock")
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon missing: apt-get install dbus")
    from dbusmock.testcase import BusType, PrivateDBus

    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    bus = PrivateDBus(BusType.SYSTEM)
    bus.start()
    try:
        yield dbusmock
    finally:
        bus.stop()
        if saved is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved


def test_ble_bluez_missing_adapter_missing_and_ok(tmp_path: Path, system_bus: Any) -> None:
    import dbus
    from dbusmock.testcase import BusType, SpawnedMock

    cfg = write(tmp_path, BLE_DEVICE)
    assert_failed(find(run(cfg, devices=False), "ble"), "BlueZ", "systemctl enable --now bluetooth")

    mock = SpawnedMock.spawn_with_template("bluez5", {}, bustype=BusType.SYSTEM)
    try:
        assert_failed(find(run(cfg, devices=False), "ble:hci0"), "not known to BlueZ", "bluetoothctl list")
        conn = dbus.bus.BusConnection(os.environ["DBUS_SYSTEM_BUS_ADDRESS"])
        dbus.Interface(conn.get_object("org.bluez", "/"), "org.bluez.Mock").AddAdapter("hci0", "fieldgate-test")
        f = find(run(cfg, devices=False), "ble:hci0")
        assert f.status == "ok" and "on and BlueZ runs" in f.summary
    finally:
        mock.terminate()


def test_ble_without_system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dbus_fast")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")
    assert_failed(find(run(write(tmp_path, BLE_DEVICE), devices=False), "ble"), "D-Bus", "systemctl status dbus")


# --- command line ------------------------------------------------------------------------------------


def test_cli_json_and_exit_codes(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write(tmp_path, f"devices:\n  - {{id: gone-1, driver: sim, profile: {METER}, "
                          "connection: {fail: unreachable}}\n")
    res = subprocess.run([sys.executable, "-m", "fieldgate.cli", "doctor", "-c", str(cfg), "--json",
                          "--timeout", "2"], capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert res.returncode == 3, res.stderr
    report = json.loads(res.stdout)
    assert report["worst"] == "fail" and report["exit_code"] == 3
    by_check = {f["check"]: f for f in report["findings"]}
    assert by_check["device:gone-1"]["status"] == "fail" and by_check["device:gone-1"]["fix"]
    assert by_check["broker.network"]["details"]["stage"] == "network"

    text = subprocess.run([sys.executable, "-m", "fieldgate.cli", "doctor", "-c", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
    assert text.returncode == 1
    assert "FAIL  config" in text.stdout and "fix:" in text.stdout


def test_text_report_has_a_fix_under_every_problem(tmp_path: Path) -> None:
    findings = run(write(tmp_path, ""), clock=lambda: False)
    report = render_text(findings, tmp_path / "fieldgate.yaml").splitlines()
    for i, line in enumerate(report):
        if line.startswith(("FAIL", "WARN")):
            rest = report[i + 1:]
            tail = [*rest, "END"]
            nxt = next(j for j, ln in enumerate(tail) if not ln.startswith(" ") or "fix:" in ln)
            assert "fix:" in tail[nxt], line


def _json_doctor(cfg: Path, root: Path) -> tuple[int, dict[str, Finding]]:
    res = subprocess.run([sys.executable, "-m", "fieldgate.cli", "doctor", "-c", str(cfg), "--json", "--timeout", "3",
                          "--root", str(root)], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert res.stdout, res.stderr
    report = json.loads(res.stdout)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, {f["check"]: Finding(**f) for f in report["findings"]}


@pytest.mark.parametrize("password", [False, True], ids=["loopback", "password"])
def test_beside_the_running_service_devices_are_read_from_it(
    tmp_path: Path, mosquitto: Mosquitto, fieldgate_proc: Callable[..., Any], password: bool
) -> None:
    """The service holds the push port: doctor asks the service instead of failing on the busy port."""
    pytest.importorskip("aiocoap")
    import socket
    import urllib.request

    from fieldgate.clock import clock_synced

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        coap_port = probe.getsockname()[1]
    control = tmp_path / "fault"
    control.write_text("none")
    web_port = free_port()
    secret = tmp_path / "web.password"
    secret.write_text("doctor-test-pw\n")
    headers = {"Authorization": "Bearer doctor-test-pw"} if password else {}
    cfg = tmp_path / "fieldgate.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-doc, data_dir: {tmp_path / 'data'}, clock_check: off}}\n"
        f"web: {{listen: '127.0.0.1:{web_port}'{f', password: {{file: {secret}}}' if password else ''}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, connect_timeout: 2}}\n"
        "devices:\n"
        f"  - {{id: meter-1, driver: sim, profile: {METER}, poll_interval: 0.2s, offline_after: 2, backoff_max: 0.3s,"
        f" connection: {{control_file: {control}}}}}\n"
        f"  - {{id: bin-1, driver: coap, profile: dragino/ndds75, "
        f"connection: {{mode: push, listen: '127.0.0.1:{coap_port}'}}}}\n"
    )
    service = fieldgate_proc("run", "-c", str(cfg))
    service.wait_stderr("status page on", timeout=30)
    service.wait_stderr("connected to", timeout=30)

    def state_of(dev: str) -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/v1/devices/{dev}", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return str(json.load(resp)["state"])

    deadline = time.monotonic() + 30
    while state_of("meter-1") != "online":  # the status page is the service's own word: poll it
        assert time.monotonic() < deadline, "meter-1 never online"
        time.sleep(0.1)
    expected_fail = set() if clock_synced() else {"clock"}  # this machine's real clock is not faked here

    code, found = _json_doctor(cfg, tmp_path)
    fails = {c for c, f in found.items() if f.status == "fail"}
    assert fails == expected_fail, {c: found[c].summary for c in fails}
    assert code == (0 if not expected_fail else 3)
    for dev in ("meter-1", "bin-1"):
        f = found[f"device:{dev}"]
        assert "held by the running service" in f.summary, f
    assert "reports it online" in found["device:meter-1"].summary
    assert found["service.running"].status == "ok"
    # in-process, with the clock said synchronized, nothing fails: exit 0
    assert exit_code(run(cfg, root=tmp_path, timeout=3.0)) == 0

    control.write_text("unreachable")  # the meter stops answering the service
    deadline = time.monotonic() + 30
    while state_of("meter-1") != "offline":
        assert time.monotonic() < deadline, "meter-1 never offline"
        time.sleep(0.1)
    code, found = _json_doctor(cfg, tmp_path)
    assert code == 3
    meter = found["device:meter-1"]
    assert meter.status == "fail" and "reports it offline" in meter.summary and meter.fix, meter
    assert "simulated" in meter.summary  # the service's last error, so the technician sees the cause
    assert found["device:bin-1"].status != "fail"
    assert {c for c, f in found.items() if f.status == "fail"} == expected_fail | {"device:meter-1"}
