"""The ``fieldgate`` command.

Exit codes (documented in the README):
  0  success
  1  the configuration or a profile is invalid (every error is printed)
  2  usage error (unknown command or option)
  3  the gateway could not start or stopped on a fatal error
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from . import __version__
from .config import (
    DEFAULT_CONFIG,
    LoadedConfig,
    config_json_schema,
    load_config,
    load_profile_file,
    profile_json_schema,
)
from .errors import ConfigError, GatewayError
from .web.logring import install_log_ring
from .yamlsrc import Diagnostic, read_head

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3

log = logging.getLogger("fieldgate")


def _print_diagnostics(diags: Sequence[Diagnostic], out: Any = None) -> tuple[int, int]:
    out = out or sys.stderr
    errors = sorted((d for d in diags if d.severity == "error"), key=lambda d: (d.file, d.line, d.col))
    warnings = sorted((d for d in diags if d.severity != "error"), key=lambda d: (d.file, d.line, d.col))
    for d in [*errors, *warnings]:
        print(d, file=out)
    return len(errors), len(warnings)


def cmd_validate(args: argparse.Namespace) -> int:
    diags: list[Diagnostic] = []
    ok_devices = 0
    if args.config:
        try:
            loaded = load_config(Path(args.config))
            diags.extend(loaded.warnings)
            ok_devices = len(loaded.devices)
            if args.for_service:
                from .service_check import service_diagnostics

                diags.extend(service_diagnostics(loaded, root=Path(args.root), user=args.service_user))
        except ConfigError as exc:
            diags.extend(d for d in exc.diagnostics if isinstance(d, Diagnostic))
    for p in args.profiles:
        _, more = load_profile_file(Path(p))
        diags.extend(more)
    errors, warnings = _print_diagnostics(diags)
    files = ([args.config] if args.config else []) + list(args.profiles)
    if errors:
        print(f"{errors} error(s), {warnings} warning(s) in {', '.join(files)}", file=sys.stderr)
        return EXIT_INVALID
    what = f"{ok_devices} device(s)" if args.config else f"{len(args.profiles)} profile(s)"
    ready = "; ready for fieldgate.service" if args.for_service else ""
    print(f"valid: {', '.join(files)} ({what}, {warnings} warning(s)){ready}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    schema = config_json_schema() if args.what == "config" else profile_json_schema()
    print(json.dumps(schema, indent=2))
    return EXIT_OK


async def _run_gateway(config_path: Path, use_stdout: bool, ready_file: str | None = None) -> int:
    from .runtime import NoUplink, build
    from .signals import loop_signals

    loaded = load_config(config_path)
    for w in loaded.warnings:
        log.warning("%s", w)
    try:
        rt = await build(loaded, stdout=use_stdout, loader=lambda: load_config(config_path))
    except NoUplink as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    gw = rt.gateway
    handlers = {signal.SIGTERM: gw.request_stop, signal.SIGINT: gw.request_stop, signal.SIGHUP: gw.request_reload}
    with loop_signals(asyncio.get_running_loop(), handlers):  # handed over before the loop closes
        if ready_file:
            async def _mark_ready() -> None:
                await gw.ready.wait()
                await asyncio.to_thread(Path(ready_file).write_text, "ready\n")
            _ready_task = asyncio.create_task(_mark_ready())  # noqa: RUF006 - lives as long as run()
        await rt.run()
    log.info("stopped")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .logs import setup_logging

    setup_logging(args.log_level)
    install_log_ring()
    try:
        return asyncio.run(_run_gateway(Path(args.config), args.stdout, args.ready_file))
    except ConfigError as exc:
        errors, _ = _print_diagnostics([d for d in exc.diagnostics if isinstance(d, Diagnostic)])
        print(f"{errors} error(s) in {args.config}; not starting", file=sys.stderr)
        return EXIT_INVALID
    except GatewayError as exc:
        log.critical("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .probe import probe

    setup_logging("WARNING")
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    return asyncio.run(probe(loaded, args.device, sys.stdout, wait=args.wait))


def _load_or_report(path: str) -> LoadedConfig | None:
    """The configuration, or None after printing every error in it (exit 1 for the caller)."""
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        errors, _ = _print_diagnostics([d for d in exc.diagnostics if isinstance(d, Diagnostic)])
        print(f"{errors} error(s) in {path}", file=sys.stderr)
        return None


def cmd_write(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .write_cmd import run_write

    setup_logging("WARNING")
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_INVALID
    return run_write(loaded, args.device, args.assignments, wait=args.wait)


#: Entry point group of bus scanners: ``name = "pkg.module:main"``, ``main(argv) -> exit code``.
SCANNERS_GROUP = "fieldgate.scanners"


def _scanners() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=SCANNERS_GROUP)}


def cmd_scan(args: argparse.Namespace) -> int:
    if args.protocol in (None, "-h", "--help"):
        args.parser.print_help()
        return EXIT_OK if args.protocol else EXIT_USAGE

    scanners = _scanners()
    ep = scanners.get(args.protocol)
    if ep is None:
        print(f"no scanner for {args.protocol!r} (scanners: {', '.join(sorted(scanners)) or 'none'})",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        scanner = ep.load()
    except ImportError as exc:
        print(f"scan {args.protocol} needs {exc.name!r}: pip install 'fieldgate[{args.protocol}]'", file=sys.stderr)
        return EXIT_FAILED
    return int(scanner(list(args.args)))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description="Edge gateway: polls devices, normalizes readings, buffers durably, forwards via MQTT.",
        epilog="exit codes: 0 ok, 1 invalid config/profile, 2 usage error, 3 failed to run",
    )
    parser.add_argument("--version", action="version", version=f"fieldgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the gateway", description="Run the gateway until SIGTERM; SIGHUP reloads.")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="configuration file (default: %(default)s)")
    p.add_argument("--stdout", action="store_true", help="write readings as JSON lines to stdout instead of MQTT")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--ready-file", help=argparse.SUPPRESS)  # tests: written once all devices started
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a configuration and/or profiles",
                       description="Validate a configuration (with the profiles it uses) and/or profile files. "
                       "Prints every error as file:line:col: key.path: message.",
                       epilog="exit codes: 0 valid (and, with --for-service, ready for the service), 1 an error "
                       "was found (every one is printed), 2 usage error")
    p.add_argument("config", nargs="?", help="configuration file (omit with --profile)")
    p.add_argument("profiles", nargs="*", help="profile files to check on their own")
    p.add_argument("--profile", dest="only_profiles", action="append", default=[], help="profile to check (repeatable)")
    p.add_argument("--for-service", action="store_true",
                   help="also check what fieldgate.service needs: the files named exist, are regular files the "
                        "service user may read, secrets are not readable by every user, the mqtt section is "
                        "there, data_dir is writable, the status page's port can be bound (docs/validate.md)")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="with --for-service: check the system whose / is DIR (an image); default: this one")
    p.add_argument("--service-user", default="fieldgate", metavar="USER",
                   help="with --for-service: the user the service runs as (default: %(default)s)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of the configuration or of profiles",
                       description="Print JSON Schema for editors "
                       "(e.g. VS Code YAML: # yaml-language-server: $schema=...).")
    p.add_argument("what", choices=["config", "profile"])
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("probe", help="read one device once and print raw and normalized values",
                       description="Poll one configured device once, with its profile, and print a table.")
    p.add_argument("device", help="device id from the configuration")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="configuration file (default: %(default)s)")
    p.add_argument("--wait", type=float, default=None, metavar="S",
                   help="how long to wait for an answer or, for a device that reports on its own, its first "
                        "report (default: twice the poll timeout; 30 s for BLE and CoAP observe; 300 s for "
                        "sleeping push devices)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("write", help="set points of a device (POINT=VALUE ...) and print the read-back",
                       description="Write writable points of one configured device and read them back: through "
                       "the running service's status page on this machine when it answers, else by opening the "
                       "device directly.",
                       epilog="exit codes: 0 ok, 1 invalid config, 2 usage (no such device/point), 3 failed, "
                       "4 refused before any device I/O, 5 read back different (mismatch)")
    p.add_argument("device", help="device id from the configuration")
    p.add_argument("assignments", nargs="+", metavar="POINT=VALUE", help="e.g. setpoint=21.5 relay=on")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="configuration file (default: %(default)s)")
    p.add_argument("--wait", type=float, default=None, metavar="S",
                   help="through the service: how long to wait for its answer (default: 60 s); opened directly, "
                        "the device's poll timeout bounds the write and the read-back")
    p.set_defaults(func=cmd_write)

    p = sub.add_parser("scan", help="find devices on a bus (e.g. scan modbus --port /dev/ttyUSB0)",
                       description="Find responding devices; see `fieldgate scan PROTOCOL --help`.",
                       add_help=False)
    p.add_argument("protocol", nargs="?", help="modbus")
    p.add_argument("args", nargs=argparse.REMAINDER)
    scan_parser = p
    p.set_defaults(func=cmd_scan, parser=scan_parser)

    p = sub.add_parser("demo", help="run a demo gateway with simulated devices",
                       description="Start simulated devices, a local broker if available, and the gateway. "
                       "The console prints one line per state change; Enter or SIGUSR1 prints a summary.")
    p.add_argument("--dir", default=None,
                   help="folder for the demo's configuration, buffer and fault files; kept after the demo "
                        "(default: ./demo-run in the current folder)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-broker", action="store_true", help="print readings on stdout instead of MQTT")
    p.set_defaults(func=cmd_demo)

    # The installer's path: each module registers its own subcommand(s) and handler.
    from . import doctor, install, profiles_cmd, provision

    install.add_parser(sub)
    provision.add_parser(sub)
    doctor.add_parser(sub)
    profiles_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"] and (len(argv) == 1 or argv[1] in ("-h", "--help")):
        names = sorted(_scanners())
        example = f" (fieldgate scan {names[0]} --help)" if names else ""
        print("usage: fieldgate scan PROTOCOL [options]\n\nFind responding devices on a bus.\n"
              f"protocols: {', '.join(names) or 'none installed'}{example}")
        return EXIT_OK if len(argv) > 1 else EXIT_USAGE
    args = parser.parse_args(argv)
    if args.command == "validate":
        args.profiles = list(args.profiles) + list(args.only_profiles)
        if args.config and args.config.endswith((".yaml", ".yml")) and _looks_like_profile(args.config):
            args.profiles.insert(0, args.config)
            args.config = None
        if not args.config and not args.profiles:
            parser.error("validate needs a configuration file or profile files")
        if args.for_service and not args.config:
            parser.error("--for-service checks a configuration: name the configuration file")
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return EXIT_OK


def _looks_like_profile(path: str) -> bool:
    head = read_head(Path(path), 4000)  # never blocks: the path may be a FIFO or /dev/zero
    return "\nschema_version:" in f"\n{head}" and "\ngateway:" not in f"\n{head}"


if __name__ == "__main__":
    sys.exit(main())
