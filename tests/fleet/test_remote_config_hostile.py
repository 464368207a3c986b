"""Hostile remote configuration: payloads and files a broken or hostile operator tool sends on ``config/set``.

The real gateway process and a real mosquitto (the Rig of test_remote_config.py). Each message is
refused with a named reason on ``config/result``, no traceback reaches the log, the file on disk
stays the running one, and readings go on. The files are the loader's own hostile generator
(``fieldgate_hwsim.hostile_files``), the same the fault campaign sends.
"""

from __future__ import annotations

import json

from fieldgate_hwsim.hostile_files import generate

from .test_remote_config import Rig, config_text, rig

__all__ = ["rig"]  # the fixture, imported to be used here


def _refusal(r: Rig, after: int) -> dict:
    def found() -> dict | None:
        got = [x for x in r.results()[after:] if x["status"] in ("refused", "failed")]
        return got[0] if got else None
    res = r.col.wait_for(found, timeout=30, what="a refusal")
    assert res is not None
    return res


def test_deeply_nested_messages_are_refused_by_name(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    proc = rig.run()
    # Nesting deeper than Python's JSON parser goes: the whole message, and the config object in it.
    for payload in (b"[" * 100_000 + b"]" * 100_000,
                    b'{"id": "deep", "config": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"):
        n = len(rig.results())
        rig.send(payload)
        refused = _refusal(rig, n)
        assert refused["status"] == "refused", refused
        assert "nest" in " ".join(refused["errors"]).lower() or "JSON" in " ".join(refused["errors"]), refused
    assert rig.path.read_text() == old
    assert not any("Traceback" in line for line in proc.stderr_lines), "".join(proc.stderr_lines[-40:])
    n = len(rig.col.readings())
    rig.col.wait_for(lambda: len(rig.col.readings()) > n + 5, what="readings go on")


def test_hostile_files_as_remote_config_are_refused(rig: Rig) -> None:
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    proc = rig.run()
    files = [hf for hf in generate(60, seed=7) if hf.kind == "config" and not hf.special][:12]
    assert len(files) >= 8
    for i, hf in enumerate(files):
        n = len(rig.results())
        text = hf.data.decode("utf-8", errors="surrogateescape")
        try:
            payload = json.dumps({"id": f"hostile-{i}", "config": text}).encode()
        except UnicodeEncodeError:
            payload = b'{"id": "hostile-%d", "config": "' % i + hf.data.replace(b'"', b"'") + b'"}'
        rig.send(payload)
        res = rig.col.wait_for(lambda: rig.results()[n:], timeout=30, what=f"the answer to {hf.family}")  # noqa: B023
        assert res[0]["status"] in ("refused", "unchanged", "probation"), (hf.family, res[0])
        if res[0]["status"] == "probation":  # a mutation that is still a valid file: let it finish
            cid = f"hostile-{i}"
            rig.col.wait_for(lambda c=cid: any(r["status"] in ("applied", "rolled_back")
                                               for r in rig.results(c)), timeout=60, what="its end")
    assert not any("Traceback" in line for line in proc.stderr_lines), "".join(proc.stderr_lines[-40:])
    assert proc.popen.poll() is None


def test_a_refused_message_with_a_readable_id_is_answered_under_that_id(rig: Rig) -> None:
    # An operator tool waits for the answer to its change id: a refusal under "id": null never reaches it.
    old = config_text(rig.tmp, rig.broker.port)
    rig.path.write_text(old)
    rig.run()
    rig.send(b'{"id": "surr-1", "config": "gateway: {id: \\udcdf}"}')
    got = rig.wait_result("surr-1", "refused")
    assert "not UTF-8" in got["errors"][0], got
    rig.send(b'{"id": "noconf-1"}')
    assert "'config' is required" in rig.wait_result("noconf-1", "refused")["errors"][0]
    assert rig.path.read_text() == old
