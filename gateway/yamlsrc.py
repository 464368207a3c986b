"""YAML loading that remembers where every value came from, and survives hostile files.

Field technicians edit configs and profiles by hand; an error has to point at
the line. We compose PyYAML's parse events into nodes ourselves and build plain
Python data from them so that we can (1) record the line and column of every key
and value by key path, (2) reject duplicate keys, which PyYAML silently lets
the last one win, and (3) bound what one file may cost.

The same loader runs in ``fieldgate validate``, in boot provisioning and on a
SIGHUP reload of a running gateway, so a file from the boot partition or an
editor accident must never hang or crash it. Every limit (file size, values
written, nesting, aliases, values after expanding aliases, number length, the
time of a whole load) is checked while the events stream in, before anything
large is built, and is refused as ``file:line:col: message`` like any other
error. A billion-laughs file is refused at the alias that crosses the limit, a
self-referencing alias at its use, a FIFO or ``/dev/zero`` without opening it.
"""

from __future__ import annotations

import math
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:  # libyaml is several times faster; fall back to pure Python where absent
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

Path_ = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# Collections are built as dicts and lists whatever their tag; the standard ones are accepted.
_COLLECTION_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "seq", "set", "omap", "pairs")}
_NUMBER_TAGS = {"tag:yaml.org,2002:int": "an integer", "tag:yaml.org,2002:float": "a number"}
_LITERAL_NON_FINITE = re.compile(r"^[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)$")
# YAML's printable set (YAML 1.1 section 5.1, which libyaml applies): anything else is refused
# by the reader with a byte offset only; we find it first to name the line and column.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one file, and one whole load, may cost.

    The defaults are far above any real configuration (the largest shipped file
    is 4 KiB and 300 values) and far below what hurts a Raspberry Pi: at these
    limits a file is refused or loaded in well under a second (bench/hostile_files.py).

    Attributes:
        max_bytes: size of one file.
        max_nodes: values (scalars, lists, mappings) written in one file.
        max_depth: nesting of lists and mappings.
        max_aliases: uses of an alias (``*name``, also in ``<<: *name``) in one file.
        max_values: values of one file once its aliases are expanded (billion laughs).
        max_number_chars: characters of an integer or float written in the file.
        max_files: files one load may read (a configuration and its profiles).
        max_total_bytes: bytes of all the files of one load.
        max_total_nodes: values written in all the files of one load.
    """

    max_bytes: int = 1024 * 1024
    max_nodes: int = 25_000
    max_depth: int = 64
    max_aliases: int = 1_000
    max_values: int = 50_000
    max_number_chars: int = 100
    max_files: int = 500
    max_total_bytes: int = 8 * 1024 * 1024
    max_total_nodes: int = 100_000


DEFAULT_LIMITS = Limits()
DEFAULT_TIME_LIMIT = 5.0
"""CPU seconds one load (a configuration and every profile it names) may take, however it is built.

Counted in the loading thread's CPU time, not on the wall clock: a hostile file costs CPU, while
a busy machine (fifty gateways started at once on two cores, a Pi booting) only stretches the
wall time, and a wall-clock limit refused valid configurations there (fleet bench: 4 of 50)."""


class Budget:
    """The limits and the deadline of one load, shared by every file it reads.

    Args:
        limits: per-file and per-load limits.
        time_limit: CPU seconds the whole load may take (None: no deadline).
        clock: the CPU time of the loading thread (tests may pass another). A load runs in one
            thread: the budget is made and used there.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, time_limit: float | None = DEFAULT_TIME_LIMIT,
                 clock: Callable[[], float] = time.thread_time) -> None:
        self.limits = limits
        self.time_limit = time_limit
        self.clock = clock
        self.deadline = None if time_limit is None else clock() + time_limit
        self.files = 0
        self.bytes = 0
        self.nodes = 0

    def over_time(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and self.clock() > self.deadline

    def timeout_message(self) -> str:
        """The error text once the deadline has passed."""
        return (f"gave up here: loading the configuration and its profiles took more than {self.time_limit:g} s "
                "of CPU (the limit for one load); nothing was applied")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding in a source file, printed as ``file:line:col: path: message``."""

    file: str
    line: int
    col: int
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}"
        what = f"{self.path}: " if self.path else ""
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}: {what}{tag}{self.message}"


@dataclass(slots=True)
class SourceMap:
    """Where each key path of a loaded document stands in its file.

    ``values`` maps a key path to the position of its value, ``keys`` to the
    position of the key itself (better for "unknown key" errors).
    """

    file: str
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path_, *, prefer_key: bool = False) -> tuple[int, int]:
        """Position of ``path`` or of its closest known ancestor."""
        p = tuple(path)
        while True:
            if prefer_key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if p in self.keys:
                return self.keys[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def sub(self, prefix: Path_, file: str | None = None) -> SourceMap:
        """A view re-rooted at ``prefix`` (for documents nested in others)."""
        n = len(prefix)
        out = SourceMap(file or self.file)
        out.values = {k[n:]: v for k, v in self.values.items() if k[:n] == prefix}
        out.keys = {k[n:]: v for k, v in self.keys.items() if k[:n] == prefix}
        return out


def format_path(path: Path_) -> str:
    """``("points", 6, "type")`` → ``points[6].type``; odd keys are quoted (no escape codes reach a terminal)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isprintable() or not part or any(c in part for c in ".[]'\" "):
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out


class _Refused(Exception):
    """A limit was crossed: the one diagnostic that says where and which."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line, self.col, self.message = line, col, message


def _at(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _compose(loader: Any, budget: Budget) -> Node | None:
    """Compose the single document of ``loader`` into nodes, checking every limit on the way.

    PyYAML's own composer recurses (a RecursionError on deep files), lets an
    alias name the collection it stands in (a cyclic graph), and cannot stop a
    billion laughs: it does not count what aliases expand to. This one keeps an
    explicit stack and, for each anchor, the number of values it expands to.

    ``loader`` is a PyYAML loader (C or Python: their marks and events differ in type only).
    """
    lim = budget.limits
    loader.get_event()  # StreamStart
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    loader.get_event()  # DocumentStart
    anchors: dict[str, tuple[Node, int]] = {}
    open_anchors: set[str] = set()
    # One entry per open collection: [node, its anchor, values it expands to, pending mapping key]
    stack: list[list[Any]] = []
    nodes = aliases = 0
    expanded = 0
    root: Node | None = None

    def attach(node: Node, size: int) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        top = stack[-1]
        top[2] += size
        parent = top[0]
        if isinstance(parent, SequenceNode):
            parent.value.append(node)
        elif top[3] is None:
            top[3] = node
        else:
            parent.value.append((top[3], node))
            top[3] = None

    while not loader.check_event(yaml.DocumentEndEvent):
        event: Any = loader.get_event()  # C and Python events carry marks of different types
        if isinstance(event, AliasEvent):
            aliases += 1
            line, col = _at(event.start_mark)
            if event.anchor in open_anchors:
                raise _Refused(line, col, f"alias *{event.anchor} stands inside the collection &{event.anchor} "
                               "it names: that value would be infinitely deep")
            if event.anchor not in anchors:
                raise _Refused(line, col, f"alias *{event.anchor} names no anchor defined before it "
                               f"(write &{event.anchor} on a value above)")
            if aliases > lim.max_aliases:
                raise _Refused(line, col, f"more than {lim.max_aliases} aliases (*name) in one file")
            node, size = anchors[event.anchor]
            expanded += size
            if expanded > lim.max_values:
                raise _Refused(line, col, f"aliases expand this file to more than {lim.max_values} values "
                               "(nested anchors, a 'billion laughs'?): write the values out, or use fewer aliases")
            attach(node, size)
            continue
        nodes += 1
        expanded += 1
        if nodes > lim.max_nodes or budget.nodes + nodes > lim.max_total_nodes:
            line, col = _at(event.start_mark)
            limit = lim.max_nodes if nodes > lim.max_nodes else lim.max_total_nodes
            raise _Refused(line, col, f"more than {limit} values in "
                           + ("one file" if limit == lim.max_nodes else "the configuration and its profiles"))
        if nodes & 1023 == 0 and budget.over_time():
            raise _Refused(*_at(event.start_mark), budget.timeout_message())
        anchor = getattr(event, "anchor", None)
        start: Any = event.start_mark  # a C or a Python mark: nodes take either
        if isinstance(event, ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(ScalarNode, event.value, event.implicit)
            end: Any = event.end_mark
            node = ScalarNode(tag, event.value, start, end, style=event.style)
            if anchor is not None:
                anchors[anchor] = (node, 1)
            attach(node, 1)
        elif isinstance(event, SequenceStartEvent | MappingStartEvent):
            if len(stack) >= lim.max_depth:
                raise _Refused(*_at(event.start_mark), f"nested more than {lim.max_depth} levels deep")
            kind = SequenceNode if isinstance(event, SequenceStartEvent) else MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(kind, None, event.implicit)
            node = kind(tag, [], start, None, flow_style=event.flow_style)
            if anchor is not None:
                open_anchors.add(anchor)
            stack.append([node, anchor, 1, None])
        elif isinstance(event, SequenceEndEvent | MappingEndEvent):
            node, anchor, size, _ = stack.pop()
            node.end_mark = event.end_mark
            if anchor is not None:
                open_anchors.discard(anchor)
                anchors[anchor] = (node, size)  # YAML 1.2: a later anchor of the same name replaces it
            attach(node, size)
    loader.get_event()  # DocumentEnd
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise _Refused(*_at(event.start_mark), "a second document ('---'): a file holds one document")
    budget.nodes += nodes
    return root


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, smap: SourceMap, budget: Budget) -> None:
        self.loader = loader
        self.smap = smap
        self.budget = budget
        self.diagnostics: list[Diagnostic] = []
        self.built = 0

    def _pos(self, node: Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _error(self, node: Node, path: Path_, message: str) -> None:
        line, col = self._pos(node)
        self.diagnostics.append(Diagnostic(self.smap.file, line, col, format_path(path), message))

    def build(self, node: Node, path: Path_) -> Any:
        self.built += 1
        if self.built & 1023 == 0 and self.budget.over_time():
            raise _Refused(*self._pos(node), self.budget.timeout_message())
        self.smap.values[path] = self._pos(node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if node.tag not in _COLLECTION_TAGS:  # e.g. !!python/object/apply: never constructed, named
            self._error(node, path, f"tag {node.tag!r} is not allowed here (a list or a mapping is read as it is)")
            return None
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]

    def _scalar(self, node: Node, path: Path_) -> Any:
        kind = _NUMBER_TAGS.get(node.tag)
        text = node.value
        if kind is not None and len(text) > self.budget.limits.max_number_chars:
            self._error(node, path, f"a number of {len(text)} characters is too long "
                        f"(at most {self.budget.limits.max_number_chars})")
            return None
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._error(node, path, str(exc.problem or exc.context or "invalid value"))
            return None
        except Exception as exc:  # PyYAML's constructors raise ValueError, KeyError, IndexError... on a value
            # that does not fit its explicit tag (`!!int abc`, `!!bool x`, `!!int ""`)
            self._error(node, path, f"{text[:40]!r} cannot be read as {node.tag.rsplit(':', 1)[-1]} "
                        f"({type(exc).__name__})")
            return None
        if isinstance(value, float) and not math.isfinite(value) and not _LITERAL_NON_FINITE.match(text):
            self._error(node, path, f"{text[:40]!r} is too large for a number")
            return None
        if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
            self._error(node, path, "contains a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
            return None
        if isinstance(value, str) and "\x00" in value:
            self._error(node, path, "contains a NUL character (\\0)")
            return None
        return value

    def _mapping(self, node: MappingNode, path: Path_) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        pairs: list[tuple[Node, Node]] = []
        sources: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG and isinstance(key_node, ScalarNode):
                sources.extend(value_node.value if isinstance(value_node, SequenceNode) else [value_node])
            else:
                pairs.append((key_node, value_node))
        # `<<: *base` or `<<: [*a, *b]`: the mapping's own keys win, then the first source; so the
        # sources go in last to first, and the own keys after them.
        for source in reversed(sources):
            if isinstance(source, MappingNode):
                out.update(self._mapping(source, path))
            else:
                self._error(source, path, "'<<' merges a mapping or a list of mappings into this one")
        own: set[str] = set()
        for key_node, value_node in pairs:
            if not isinstance(key_node, ScalarNode):
                self._error(key_node, path, "keys must be plain scalars")
                continue
            key = self._scalar(key_node, path)
            if key is None and key_node.tag != "tag:yaml.org,2002:null":
                continue  # refused in _scalar
            key = key if isinstance(key, str) else str(key)
            if key in own:
                line, col = self._pos(key_node)
                first = self.smap.keys[(*path, key)]
                self.diagnostics.append(
                    Diagnostic(
                        self.smap.file, line, col, format_path((*path, key)),
                        f"duplicate key (first defined on line {first[0]}); remove one of them",
                    )
                )
                continue
            own.add(key)
            self.smap.keys[(*path, key)] = self._pos(key_node)
            out[key] = self.build(value_node, (*path, key))
        return out


def _position_of(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _syntax_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    problem = exc.problem or exc.context or "invalid YAML"
    mark = exc.problem_mark
    if mark is not None:
        line = text.split("\n", mark.line + 1)[mark.line] if mark.line < text.count("\n") + 1 else ""
        if "\t" in line[: mark.column + 1]:
            return f"YAML syntax error: {problem} (a tab: YAML is indented with spaces only)"
    return f"YAML syntax error: {problem}"


def load_yaml(text: str, file: str, budget: Budget | None = None) -> tuple[Any, SourceMap, list[Diagnostic]]:
    """Parse one YAML document, keeping positions and reporting duplicate keys.

    Args:
        text: the document.
        file: its name in diagnostics.
        budget: limits and deadline (a fresh default one if omitted).

    Returns:
        ``(data, source_map, diagnostics)``; on a syntax error or a crossed
        limit ``data`` is ``None`` and the diagnostic points at the offending
        character.
    """
    budget = budget or Budget()
    smap = SourceMap(file)
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line, col = _position_of(text, bad.start())
        char = bad.group()
        what = "a NUL byte: is this a binary file?" if char == "\x00" else "a control character"
        return None, smap, [Diagnostic(file, line, col, "", f"character U+{ord(char):04X} is not allowed in "
                                       f"YAML ({what})")]
    loader = _Loader(text)
    try:
        node = _compose(loader, budget)
        if node is None:
            return None, smap, []
        builder = _Builder(loader, smap, budget)
        data = builder.build(node, ())
        # A mapping merged in several places reports its own problems once.
        return data, smap, list(dict.fromkeys(builder.diagnostics))
    except _Refused as exc:
        return None, smap, [Diagnostic(file, exc.line, exc.col, "", exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, smap, [Diagnostic(file, line, col, "", _syntax_message(exc, text))]
    except yaml.YAMLError as exc:
        return None, smap, [Diagnostic(file, 1, 1, "", f"YAML error: {exc}")]
    finally:
        loader.dispose()


# O_NONBLOCK: opening a FIFO that replaced the file after our stat() must not wait for a writer.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


class UnreadableFile(OSError):
    """A file that is not read: not a regular file, too large, missing, or not allowed."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes.

    Nothing but a regular file is opened (a FIFO would block, ``/dev/zero``
    never ends, a device may act on being opened); the size is checked before
    reading and again while reading (a file that grows).

    Raises:
        UnreadableFile: with a reason a person can act on.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"it is {_KINDS.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a file")
        if st.st_size > limit:
            raise UnreadableFile(f"it is {st.st_size} bytes, more than the {limit} it may have")
        fd = os.open(path, _OPEN_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
                raise UnreadableFile("it is not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except UnreadableFile:
        raise
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise UnreadableFile(f"it is a symbolic link to {os.readlink(path)!r}, which does not exist") from exc
        raise UnreadableFile("file not found") from exc
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from exc
    except ValueError as exc:  # a NUL in the name
        raise UnreadableFile("its name contains a NUL character") from exc
    if size > limit:
        raise UnreadableFile(f"it is more than the {limit} bytes it may have")
    return b"".join(chunks)


def read_source(path: Path, budget: Budget | None = None, what: str = "file") -> tuple[str | None, Diagnostic | None]:
    """Read a YAML source file as text, refusing what is not a small regular text file.

    See :func:`read_regular_file`. UTF-8 (with or without a BOM) and UTF-16
    with a BOM are read; anything else is named at its first bad byte.

    Args:
        path: the file.
        budget: the load it is part of (counts files; limits the size).
        what: how messages name it: ``cannot read {what}: ...``.

    Returns:
        ``(text, None)`` or ``(None, diagnostic)``.
    """
    budget = budget or Budget()
    budget.files += 1
    try:
        if budget.files > budget.limits.max_files:
            raise UnreadableFile(f"more than {budget.limits.max_files} files in one configuration")
        data = read_regular_file(path, budget.limits.max_bytes)
        budget.bytes += len(data)
        if budget.bytes > budget.limits.max_total_bytes:
            raise UnreadableFile(f"the configuration and its profiles are more than "
                                 f"{budget.limits.max_total_bytes} bytes together")
    except UnreadableFile as exc:
        return None, Diagnostic(str(path), 1, 1, "", f"cannot read {what}: {exc}")
    return decode_source(data, str(path))


def decode_source(data: bytes, name: str) -> tuple[str | None, Diagnostic | None]:
    """Bytes of a YAML file as text (see :func:`read_source`)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) and not data.startswith(b"\xff\xfe\x00\x00"):
        try:
            return data.decode("utf-16"), None  # Windows editors' "Unicode"; the BOM says which order
        except UnicodeDecodeError:
            return None, Diagnostic(name, 1, 1, "", "not valid UTF-16 text after its byte order mark; "
                                    "save the file as UTF-8")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        start = exc.start
        prefix = data[:start].decode("utf-8-sig", errors="replace")
        line, col = _position_of(prefix, len(prefix))
        what = ("binary data, not a text file" if b"\x00" in data[:8192]
                else f"byte 0x{data[start]:02x} is not UTF-8 (the file was saved in another encoding?)")
        return None, Diagnostic(name, line, col, "", f"{what}; save it as UTF-8 text")


def read_head(path: Path, size: int) -> str:
    """Up to ``size`` bytes of a regular file as text, or '' (never blocks on a FIFO or a device)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
        fd = os.open(path, _OPEN_FLAGS)
    except (OSError, ValueError):
        return ""
    try:
        return os.read(fd, size).decode("utf-8", errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def load_yaml_file(path: Path, budget: Budget | None = None) -> tuple[Any, SourceMap, list[Diagnostic]]:
    """Read and parse ``path``; an unreadable or hostile file is a diagnostic, not a traceback."""
    budget = budget or Budget()
    text, problem = read_source(path, budget)
    if text is None:
        assert problem is not None
        return None, SourceMap(str(path)), [problem]
    return load_yaml(text, str(path), budget)
