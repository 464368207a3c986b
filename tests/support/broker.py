"""A real mosquitto broker for tests: own temp dir, generated config, free loopback port.

The broker runs in the foreground as a child of the test process (never ``-d``), logs to a file
in its directory, and is always stopped, also when a test fails. Readiness is the broker's own
``running`` log line plus an accepted TCP connection, waited for with a deadline; a lost race for
the free port (another process bound it first) is detected from the log and retried elsewhere.

Fixtures (load with ``pytest_plugins = ["tests.support.broker", "tests.support.certs"]``):
    mosquitto: a started plain-TCP, anonymous broker for one test.
    mosquitto_factory: ``make(**Mosquitto options)`` for TLS, password or tuned brokers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import pytest

if TYPE_CHECKING:
    # Only for annotations: importing certs here would import it before pytest registers it as a
    # plugin (conftest lists both), and pytest would warn that it cannot rewrite its asserts.
    from .certs import TlsFiles

__all__ = ["BrokerError", "Mosquitto", "free_port", "mosquitto", "mosquitto_factory"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"

_START_DEADLINE = 10.0
_STOP_DEADLINE = 10.0
_PORT_ATTEMPTS = 5
_POLL = 0.02  # the readiness poll interval: a wait on the process, so an early exit is seen at once

# Brokers still running when the interpreter exits (a test run interrupted hard) are killed.
_live: set[Mosquitto] = set()


@atexit.register
def _kill_leftovers() -> None:
    for broker in list(_live):
        broker.kill()


class BrokerError(RuntimeError):
    """The broker did not start (or stop) as asked; the message carries the tail of its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0 and ask the kernel).

    Another process may take it before the caller binds it; callers must handle that race.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_accepts(host: str, port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Whether a connection (and, with ``tls``, a TLS handshake) to ``host:port`` succeeds.

    With a TLS listener a bare TCP connect would leave an SSL error in the broker's log, which a
    test reading that log would take for a finding; so the probe completes a handshake.
    """
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            if tls is not None:
                with tls.wrap_socket(sock, server_hostname=host):
                    pass
            return True
    except OSError:
        return False


class Mosquitto:
    """A mosquitto broker on ``127.0.0.1`` in its own directory.

    Args:
        tmp_dir: the broker's directory (config, log, password file, persistence); created if missing.
        tls: server certificate, key and CA; the listener then speaks TLS only.
        require_client_cert: with ``tls``, refuse clients without a certificate signed by the CA (mTLS).
        users: username → password; written with ``mosquitto_passwd`` and anonymous access is refused.
        persistence: keep sessions and queued QoS 1 messages in ``tmp_dir`` across :meth:`stop`/:meth:`start`.
        max_inflight: ``max_inflight_messages`` (QoS 1/2 messages in flight to each client).
        max_queued: ``max_queued_messages`` per client. The default is far above mosquitto's 1000 so that
            a disconnected persistent subscriber never silently loses messages during an outage test.
        max_packet_size: ``max_packet_size`` in bytes, if set.
        extra_config: more ``mosquitto.conf`` lines, appended verbatim.
        port: a fixed port to use (normally a free one is picked).
    """

    def __init__(
        self,
        tmp_dir: Path,
        *,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        users: dict[str, str] | None = None,
        persistence: bool = True,
        max_inflight: int | None = None,
        max_queued: int = 100_000,
        max_packet_size: int | None = None,
        extra_config: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        if require_client_cert and tls is None:
            raise ValueError("require_client_cert needs tls")
        self.tmp_dir = Path(tmp_dir)
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.users = dict(users) if users is not None else None
        self.persistence = persistence
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.max_packet_size = max_packet_size
        self.extra_config = list(extra_config or [])
        self._port = port
        self._fixed_port = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self.config_path = self.tmp_dir / "mosquitto.conf"
        self.password_path = self.tmp_dir / "passwd"
        self._log_path = self.tmp_dir / "mosquitto.log"

    # -- properties ------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the broker listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The broker's port (fixed by the first :meth:`start`, kept by :meth:`restart`)."""
        if self._port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return self._port

    @property
    def log_path(self) -> Path:
        """The broker's log file (every start appends to it)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def url(self) -> str:
        """``mqtt://`` or ``mqtts://`` URL of the broker (for messages)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def log_text(self) -> str:
        """The whole log (all starts so far)."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- configuration ---------------------------------------------------------------------------

    def _write_passwords(self) -> None:
        assert self.users is not None
        self.password_path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            # -c creates the file for the first user; later users are added to it.
            args = [MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(self.password_path), user, password]
            done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for user {user!r}: {done.stderr or done.stdout}")
        if not self.users:
            self.password_path.touch()
        self.password_path.chmod(0o600)

    def _config(self, port: int) -> str:
        # Run as ourselves: as root, mosquitto would otherwise drop to user `mosquitto`, which cannot
        # read a pytest tmp dir (mode 0700). As non-root the option has no effect.
        lines = [
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "per_listener_settings false",
            f"listener {port} {HOST}",
            f"max_queued_messages {self.max_queued}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.users is not None:
            lines += [f"password_file {self.password_path}", "allow_anonymous false"]
        else:
            lines += ["allow_anonymous true"]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.tmp_dir}/",
                "persistence_file mosquitto.db",
            ]
        else:
            lines += ["persistence false"]
        if self.max_inflight is not None:
            lines.append(f"max_inflight_messages {self.max_inflight}")
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    # -- lifecycle -------------------------------------------------------------------------------

    def _launch(self, port: int) -> str:
        """Launch on ``port`` and wait until ready.

        Returns:
            ``"ok"``, ``"port-busy"`` (mosquitto exited: address in use), or raises.
        """
        self.config_path.write_text(self._config(port))
        log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_dir,
                start_new_session=True,  # a Ctrl-C of pytest reaches pytest, which then stops us in order
            )
        _live.add(self)
        proc = self._proc
        deadline = time.monotonic() + _START_DEADLINE
        while True:
            try:
                rc = proc.wait(timeout=_POLL)
            except subprocess.TimeoutExpired:
                rc = None
            new_log = self._new_log(log_offset)
            if rc is not None:
                _live.discard(self)
                self._proc = None
                if "Address already in use" in new_log:
                    return "port-busy"
                raise BrokerError(f"mosquitto exited with status {rc} during start:\n{self.log_tail()}")
            # "running" is logged after every listener is bound, so the port we probe is ours.
            if " running" in new_log and _port_accepts(HOST, port, self._probe_tls()):
                return "ok"
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto not ready on {HOST}:{port} within {_START_DEADLINE:g}s:\n"
                                  f"{self.log_tail()}")

    def _probe_tls(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        # Readiness only: the chain is still verified, but the name is not, so a broker whose
        # certificate names another host (the server_name tests) can be seen to be up.
        ctx.check_hostname = False
        if self.require_client_cert:
            ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def _new_log(self, offset: int) -> str:
        try:
            with self._log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        """Start the broker and wait until it accepts connections.

        The first start picks a free port (unless one was given); later starts reuse it.

        Returns:
            self, for chaining.

        Raises:
            BrokerError: mosquitto failed to start; the message has the tail of its log.
        """
        if self.running:
            raise BrokerError("the broker is already running")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if self.users is not None and not self.password_path.exists():
            self._write_passwords()
        if self._port is not None:
            return self._start_on_same_port()
        for _ in range(_PORT_ATTEMPTS):
            port = free_port()
            if self._launch(port) == "ok":
                self._port = port
                return self
        raise BrokerError(f"no free port after {_PORT_ATTEMPTS} attempts:\n{self.log_tail()}")

    def _start_on_same_port(self) -> Self:
        # After a stop the old listener is closed (mosquitto sets SO_REUSEADDR), but a process that
        # grabbed the port meanwhile, or a slow close, can make the bind fail briefly: retry a few times.
        port = self.port
        delay = 0.05
        for _ in range(_PORT_ATTEMPTS):
            if self._launch(port) == "ok":
                return self
            time.sleep(delay)  # back-off between bind attempts, not synchronization
            delay *= 2
        raise BrokerError(f"port {port} stayed busy; could not restart:\n{self.log_tail()}")

    def stop(self, timeout: float = _STOP_DEADLINE) -> int | None:
        """Stop with SIGTERM (mosquitto saves its persistence file) and wait for the exit.

        Args:
            timeout: seconds to wait before falling back to SIGKILL.

        Returns:
            The exit status, or None if the broker was not running.
        """
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    return proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    raise BrokerError(f"mosquitto ignored SIGTERM for {timeout:g}s; killed:\n"
                                      f"{self.log_tail()}") from None
            return proc.returncode
        finally:
            _live.discard(self)
            self._proc = None

    def kill(self) -> int | None:
        """Kill with SIGKILL: no persistence save, as in a power cut of the broker host.

        Returns:
            The exit status, or None if the broker was not running.
        """
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.kill()
            return proc.wait()
        finally:
            _live.discard(self)
            self._proc = None

    def restart(self) -> Self:
        """Stop (SIGTERM, persistence saved) and start again on the same port.

        Returns:
            self.
        """
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On the way out after a failure, a hung broker must not hide the original error.
        with contextlib.suppress(BrokerError):
            self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"<Mosquitto {HOST}:{port} {'running' if self.running else 'stopped'} in {self.tmp_dir}>"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A started plain-TCP broker allowing anonymous clients, with persistence; stopped after the test."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """``make(**options)`` → a started :class:`Mosquitto` (options as its constructor, minus ``tmp_dir``).

    Every broker made is stopped after the test.
    """
    brokers: list[Mosquitto] = []

    def make(**options: object) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(brokers)}", **options)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        with contextlib.suppress(BrokerError):
            broker.stop()
