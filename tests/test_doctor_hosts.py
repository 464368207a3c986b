"""``fieldgate doctor`` with a broker failover list (``mqtt.hosts``): every broker is checked.

Real peers: mosquitto on a free port, a port nobody listens on, a name that does not resolve.
The gateway fails over in list order, so doctor says which broker works and which do not; the
exit code follows the documented rules (0 while one broker works, 3 when none does).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fieldgate.doctor import exit_code

from tests.install.test_doctor import run, write
from tests.support.broker import Mosquitto, free_port


def _hosts(*hosts: str) -> str:
    return f"mqtt: {{hosts: [{', '.join(repr(h) for h in hosts)}], connect_timeout: 2}}\n"


def test_every_host_is_checked_and_the_working_one_is_named(tmp_path: Path, mosquitto: Mosquitto) -> None:
    dead = f"127.0.0.1:{free_port()}"
    cfg = write(tmp_path, "", mqtt=_hosts(dead, "nowhere.invalid:1883", f"127.0.0.1:{mosquitto.port}"))
    findings = run(cfg)
    broker = [f for f in findings if f.check == "broker" or f.check.startswith("broker.")]
    by_url = {f.details.get("url"): f for f in broker}
    assert set(by_url) == {f"mqtt://{dead}", "mqtt://nowhere.invalid:1883", f"mqtt://127.0.0.1:{mosquitto.port}"}, \
        broker
    ok = by_url[f"mqtt://127.0.0.1:{mosquitto.port}"]
    assert ok.check == "broker" and ok.status == "ok" and "3 of 3" in ok.summary, ok
    # the gateway still works (it fails over to the third), so the others warn: exit 0, 3 with --strict
    down = by_url[f"mqtt://{dead}"]
    assert down.check == "broker.network" and down.status == "warn" and "cannot be reached" in down.summary, down
    assert by_url["mqtt://nowhere.invalid:1883"].status == "warn"
    assert "DNS" in (by_url["mqtt://nowhere.invalid:1883"].fix or "")
    assert exit_code(findings) == 0 and exit_code(findings, strict=True) == 3


def test_no_working_host_fails_each_one(tmp_path: Path) -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    findings = run(write(tmp_path, "", mqtt=_hosts(a, b)))
    failed = {f.details.get("url"): f for f in findings if f.check.startswith("broker.")}
    assert set(failed) == {f"mqtt://{a}", f"mqtt://{b}"}, findings
    assert all(f.status == "fail" and f.fix for f in failed.values()), failed
    assert not [f for f in findings if f.check == "broker"]
    assert exit_code(findings) == 3


def test_a_login_refused_by_one_broker_of_the_list_is_named(
        tmp_path: Path, mosquitto: Mosquitto, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    strict = mosquitto_factory(users={"gw": "other"})
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = write(tmp_path, "", mqtt=f"mqtt: {{hosts: ['127.0.0.1:{strict.port}', '127.0.0.1:{mosquitto.port}'], "
                f"username: gw, password: {{file: {secret}}}, connect_timeout: 2}}\n")
    findings = run(cfg)
    login = next(f for f in findings if f.check == "broker.login")
    assert login.details["url"] == f"mqtt://127.0.0.1:{strict.port}" and login.status == "warn", login
    assert "s3cret" not in str(findings)
    assert next(f for f in findings if f.check == "broker").details["url"] == f"mqtt://127.0.0.1:{mosquitto.port}"
