"""Fleet bench: N real gateway processes against one broker or a broker cluster, one node killed mid-run.

Prints figures (it is not a timed test): readings produced (committed by the gateways' buffers),
delivered to the consumers (unique on (gateway, seq)), missing, duplicates, failover time p50/p99
(from the kill to each affected gateway's "connected to" on another node), and the CPU seconds of
the broker node(s) and of the gateways.

Brokers:

* ``mosquitto``: one node, the baseline. Consumers share the load with an MQTT 5 shared
  subscription (``$share/fleet/...``). Killing the only node is an outage, not a failover, so
  the baseline runs without a kill unless ``--kill-at`` is given (then it is restarted).
* ``rabbitmq``: Debian's ``rabbitmq-server`` with its MQTT plugin, three nodes on loopback under
  their own node names, ports and epmd port, clustered. Its MQTT plugin (3.10) speaks 3.1.1 and
  has no shared subscriptions, so the consumers share a replicated (quorum) AMQP queue bound to
  ``amq.topic`` (MQTT topics map to routing keys ``fieldgate.<gw>.<dev>.reading``). Every gateway
  lists all three nodes in ``mqtt.hosts`` (rotated, so the fleet spreads over them); one node is
  SIGKILLed mid-run.

Usage::

    python bench/fleet_scale.py --broker mosquitto --gateways 50
    python bench/fleet_scale.py --broker rabbitmq --gateways 50 --kill-at 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIM_PROFILE = REPO / "drivers" / "sim" / "profiles" / "energy-meter.yaml"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)  # polling a starting broker's port: nothing to wait on
    raise RuntimeError(f"nothing listens on {port}")


# --- brokers ---------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    mqtt_port: int
    proc: subprocess.Popen[bytes] | None = None
    amqp_port: int = 0
    cpu_at_start: float = 0.0
    cpu_total: float = 0.0  # kept when the node is killed


class Mosquitto:
    protocol = "5"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nodes = [Node("mosquitto", free_port())]

    def start(self) -> None:
        node = self.nodes[0]
        conf = self.base / "mosquitto.conf"
        conf.write_text(f"listener {node.mqtt_port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"
                        f"persistence false\nlog_dest file {self.base / 'mosquitto.log'}\n")
        node.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(node.mqtt_port, time.monotonic() + 20)
        node.cpu_at_start = cpu_seconds(node.proc.pid)

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.cpu_total += cpu_seconds(node.proc.pid) - node.cpu_at_start
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    def restart(self, node: Node) -> None:
        self.start()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.cpu_total += cpu_seconds(node.proc.pid) - node.cpu_at_start
                node.proc.terminate()
                node.proc.wait(20)
                node.proc = None

    def consumers(self, sink: Sink, n: int) -> list[threading.Thread]:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        threads = []
        for i in range(n):
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fleet-consumer-{i}",
                            protocol=MQTTProtocolVersion.MQTTv5)

            def on_connect(client: Any, _u: Any, _f: Any, _r: Any, _p: Any) -> None:
                client.subscribe("$share/fleet/fieldgate/+/+/reading", qos=1)

            c.on_connect = on_connect
            c.on_message = lambda _c, _u, msg: sink.add(msg.payload)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600  # the consumer's queue outlives a reconnect
            c.connect("127.0.0.1", self.nodes[0].mqtt_port, 30, clean_start=False, properties=props)
            c.loop_start()
            sink.closers.append(lambda c=c: (c.disconnect(), c.loop_stop()))
            threads.append(c)  # type: ignore[arg-type]
        return threads


class RabbitCluster:
    protocol = "3.1.1"
    queue = "fleet-readings"

    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.epmd_port = free_port()
        self.nodes = [Node(f"fleet{i + 1}@localhost", free_port(), amqp_port=free_port()) for i in range(size)]
        self.dist_ports = {n.name: free_port() for n in self.nodes}
        cookie = base / ".erlang.cookie"
        cookie.write_text("FIELDGATEFLEETBENCHCOOKIE")
        cookie.chmod(0o400)

    def env(self, node: Node) -> dict[str, str]:
        d = self.base / node.name.split("@")[0]
        return {
            **os.environ, "HOME": str(self.base), "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": node.name, "RABBITMQ_NODE_PORT": str(node.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_ports[node.name]),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"), "RABBITMQ_ALLOW_INPUT": "", "LANG": "C.UTF-8",
        }

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", node.name, *args], env=self.env(node),
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {done.stderr or done.stdout}")
        return done.stdout

    def _launch(self, node: Node) -> None:
        d = self.base / node.name.split("@")[0]
        d.mkdir(exist_ok=True)
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n"
            "cluster_partition_handling = pause_minority\n")
        with (d / "stdout.log").open("ab") as log:  # the child keeps its own descriptor
            node.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(node),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def start(self) -> None:
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            # await_startup gives up at once while the node is not yet registered with epmd: ask again.
            deadline = time.monotonic() + 240
            while True:
                try:
                    self.ctl(node, "await_startup", "--timeout", "120", timeout=150)
                    break
                except RuntimeError:
                    if time.monotonic() > deadline or node.proc is None or node.proc.poll() is not None:
                        raise
                    time.sleep(1.0)  # pacing between asks; the node boots meanwhile
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", seed.name)
            self.ctl(node, "start_app")
        for node in self.nodes:
            wait_port(node.mqtt_port, time.monotonic() + 60)
            node.cpu_at_start = cpu_seconds(self._beam(node))
        import pika

        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", seed.amqp_port))
        ch = conn.channel()
        ch.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(self.queue, "amq.topic", routing_key="fieldgate.*.*.reading")
        conn.close()

    def _beam(self, node: Node) -> int:
        try:
            return int((self.base / node.name.split("@")[0] / "pid").read_text().strip())
        except (OSError, ValueError):
            return node.proc.pid if node.proc else 0

    def kill(self, node: Node) -> None:
        assert node.proc is not None
        node.cpu_total += cpu_seconds(self._beam(node)) - node.cpu_at_start
        os.killpg(node.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._beam(node), signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None:
                node.cpu_total += cpu_seconds(self._beam(node)) - node.cpu_at_start
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.ctl(node, "stop", timeout=60)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
                node.proc = None
        # The epmd the nodes started listens on our own port: ask that one to exit. It refuses
        # while a stopped node is still registered (deregistering is asynchronous): ask again.
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        for _ in range(20):
            done = subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env(self.nodes[0]),
                                  capture_output=True, text=True, check=False, timeout=30)
            if done.returncode == 0 and "not allowed" not in done.stdout + done.stderr:
                break
            time.sleep(0.5)  # pacing: the nodes' registrations go away meanwhile

    def consumers(self, sink: Sink, n: int) -> list[threading.Thread]:
        import pika

        def consume(i: int) -> None:
            k = i + 1  # start on another node than the first
            while not sink.done.is_set():
                node = self.nodes[k % len(self.nodes)]
                k += 1
                if node.proc is None:
                    continue
                try:
                    conn = pika.BlockingConnection(pika.ConnectionParameters(
                        "127.0.0.1", node.amqp_port, heartbeat=10, blocked_connection_timeout=30))
                    ch = conn.channel()
                    ch.basic_qos(prefetch_count=500)
                    for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.5):
                        if sink.done.is_set():
                            break
                        if method is None:
                            continue
                        sink.add(body)
                        ch.basic_ack(method.delivery_tag)
                    with contextlib.suppress(Exception):
                        conn.close()
                except Exception:  # a killed node: the consumer moves to the next
                    sink.consumer_reconnects += 1
                    time.sleep(0.5)  # pacing between reconnect attempts

        threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        return threads


# --- consumers' shared view ----------------------------------------------------------------------


@dataclass
class Sink:
    received: int = 0
    unique: dict[str, set[int]] = field(default_factory=dict)
    last_arrival: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    closers: list[Any] = field(default_factory=list)
    consumer_reconnects: int = 0

    def add(self, payload: bytes) -> None:
        doc = json.loads(payload)
        with self.lock:
            self.received += 1
            self.unique.setdefault(doc["gateway"], set()).add(doc["seq"])
            self.last_arrival = time.monotonic()

    def unique_count(self) -> int:
        with self.lock:
            return sum(len(s) for s in self.unique.values())


# --- gateways ------------------------------------------------------------------------------------


@dataclass
class Gw:
    id: str
    proc: subprocess.Popen[str]
    data: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    cpu: float = 0.0  # over the measured window (not the interpreter's start)
    cpu_at_start: float = 0.0


def gateway_config(gw: str, data: Path, ports: list[int], protocol: str, devices: int, interval: float) -> str:
    hosts = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    devs = "".join(f"  - {{id: m{i}, driver: sim, profile: {SIM_PROFILE}, poll_interval: {interval}s}}\n"
                   for i in range(devices))
    return (f"gateway: {{id: {gw}, data_dir: {data}, clock_check: off}}\n"
            f"mqtt: {{hosts: [{hosts}], protocol: '{protocol}', reconnect_min: 0.5s, reconnect_max: 5s, "
            "keepalive: 10s, connect_timeout: 5s}\n"
            "web: {enabled: false}\n"
            f"devices:\n{devs}")


def started(g: Gw) -> bool:
    return g.proc.poll() is not None or any("connected to" in line for _, line in g.lines)


def start_gateways(base: Path, broker: Any, n: int, devices: int, interval: float, wave: int = 10) -> list[Gw]:
    """Spawn the gateways in waves of ``wave``, each wave once the last one connected.

    50 interpreters started at the same moment on 2 cores made some miss the configuration
    loader's wall-clock limit (5 s) and refuse to start; a fleet does not boot in one instant.
    """
    ports = [node.mqtt_port for node in broker.nodes]
    out: list[Gw] = []
    for i in range(n):
        if i and i % wave == 0:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(started(g) for g in out[-wave:]):
                time.sleep(0.2)  # the wave's first connects are its readiness
        gid = f"gw-{i:03d}"
        rotated = ports[i % len(ports):] + ports[:i % len(ports)]
        cfg = base / f"{gid}.yaml"
        cfg.write_text(gateway_config(gid, base / gid, rotated, broker.protocol, devices, interval))
        proc = subprocess.Popen([sys.executable, "-m", "fieldgate.cli", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        g = Gw(gid, proc, base / gid)

        def pump(g: Gw = g) -> None:
            assert g.proc.stderr is not None
            with g.proc.stderr:
                for line in g.proc.stderr:
                    g.lines.append((time.monotonic(), line))

        threading.Thread(target=pump, daemon=True).start()
        out.append(g)
    return out


def committed(data: Path) -> int:
    if not (data / "buffer.db").exists():
        return 0  # a gateway that never started
    with contextlib.closing(sqlite3.connect(data / "buffer.db")) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    return int(row[0]) if row else 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    broker: Any = Mosquitto(base) if args.broker == "mosquitto" else RabbitCluster(base)
    sink = Sink()
    gws: list[Gw] = []
    load_before = os.getloadavg()
    t0 = time.monotonic()
    try:
        broker.start()
        print(f"broker {args.broker} up in {time.monotonic() - t0:.1f} s "
              f"({', '.join(str(n.mqtt_port) for n in broker.nodes)})", flush=True)
        broker.consumers(sink, args.consumers)
        gws = start_gateways(base, broker, args.gateways, args.devices, args.interval)
        spawned = time.monotonic()
        ready_by = spawned + 300
        while time.monotonic() < ready_by and not all(any("connected to" in line for _, line in g.lines)
                                                       or g.proc.poll() is not None for g in gws):
            time.sleep(0.5)  # 50 interpreters start on 2 cores: their first connect is the readiness
        for g in gws:
            if g.proc.poll() is not None:
                print(f"{g.id} exited ({g.proc.returncode}):", "".join(line for _, line in g.lines[-5:]), flush=True)
        start = time.monotonic()
        for g in gws:
            g.cpu_at_start = cpu_seconds(g.proc.pid)
        print(f"{sum(1 for g in gws if any('connected to' in ln for _, ln in g.lines))} of {len(gws)} gateways "
              f"connected {start - spawned:.1f} s after the spawn", flush=True)
        kill_at = args.kill_at
        victim = broker.nodes[0]
        killed_at = None
        while time.monotonic() - start < args.duration:
            time.sleep(0.5)  # the bench's clock: it runs for a duration
            if kill_at is not None and killed_at is None and time.monotonic() - start >= kill_at:
                killed_at = time.monotonic()
                broker.kill(victim)
                print(f"killed {victim.name} at t={killed_at - start:.1f} s", flush=True)
                if isinstance(broker, Mosquitto):
                    broker.restart(victim)
        load_during = os.getloadavg()
        for g in gws:
            g.cpu = cpu_seconds(g.proc.pid) - g.cpu_at_start
            g.proc.send_signal(signal.SIGTERM)
        for g in gws:
            g.proc.wait(60)
        produced = {g.id: committed(g.data) for g in gws}
        total = sum(produced.values())
        deadline = time.monotonic() + 60
        while sink.unique_count() < total and time.monotonic() < deadline:
            time.sleep(0.2)  # the consumers drain the queue
        sink.done.set()
        failover: list[float] = []
        if killed_at is not None:
            victim_url = f":{victim.mqtt_port}"
            for g in gws:
                before = [line for t, line in g.lines if t < killed_at and "connected to" in line]
                if before and victim_url in before[-1]:
                    after = next((t for t, line in g.lines if t >= killed_at and "connected to mqtt" in line), None)
                    if after is not None:
                        failover.append(after - killed_at)
        missing = sum(len(set(range(1, produced[g] + 1)) - sink.unique.get(g, set())) for g in produced)
        unique = sink.unique_count()
        return {
            "broker": args.broker, "nodes": len(broker.nodes), "gateways": args.gateways,
            "devices_per_gateway": args.devices, "interval_s": args.interval, "duration_s": args.duration,
            "produced": total, "delivered_unique": unique, "received": sink.received, "missing": missing,
            "duplicates": sink.received - unique,
            "killed": victim.name if killed_at is not None else None,
            "failed_over": len(failover), "failover_p50_s": round(pct(failover, 0.5), 2),
            "failover_p99_s": round(pct(failover, 0.99), 2),
            "failover_max_s": round(max(failover), 2) if failover else None,
            "gateway_cpu_s_total": round(sum(g.cpu for g in gws), 1),
            "gateway_cpu_pct_each": round(100 * sum(g.cpu for g in gws) / len(gws) / args.duration, 1),
            "load_before": [round(x, 2) for x in load_before], "load_end_of_run": [round(x, 2) for x in load_during],
            "consumer_reconnects": sink.consumer_reconnects,
            "gateways_exited_early": [g.id for g in gws if g.proc.returncode not in (0, None) and not g.cpu],
            "_broker": broker,
        }
    finally:
        sink.done.set()
        for g in gws:
            if g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait()
        for close in sink.closers:
            with contextlib.suppress(Exception):
                close()
        broker.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", choices=["mosquitto", "rabbitmq"], default="mosquitto")
    p.add_argument("--gateways", type=int, default=50)
    p.add_argument("--devices", type=int, default=2, help="sim energy meters per gateway")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval of each device, seconds")
    p.add_argument("--duration", type=float, default=60.0, help="seconds the gateways run")
    p.add_argument("--kill-at", type=float, default=None, help="SIGKILL the first broker node at this second")
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, buffers)")
    args = p.parse_args()
    result = run(args)
    broker = result.pop("_broker")
    result["broker_cpu_s"] = {n.name: round(n.cpu_total, 1) for n in broker.nodes}
    for key, value in result.items():
        print(f"{key:24} {value}")
    return 0 if result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
