"""Downlink commands (contract ``fieldgate.command/1``): writes and read-now, at most once.

``message`` parses and checks a command and builds its result, ``store`` is
the persistent record that makes "at most once per (device, id)" survive
``kill -9``, ``executor`` runs the safety checks and the device I/O, ``mqtt``
connects it to ``{prefix}/{gw}/+/cmd``. docs/commands.md is the user's side.
"""

from .executor import CommandExecutor, CommandTarget
from .message import COMMAND_SCHEMA, RESULT_SCHEMA, BadCommand, Command, parse
from .store import CommandStore, StoreUnavailable

__all__ = ["COMMAND_SCHEMA", "RESULT_SCHEMA", "BadCommand", "Command", "CommandExecutor", "CommandStore",
           "CommandTarget", "StoreUnavailable", "parse"]
