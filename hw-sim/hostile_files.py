"""Hostile configuration and profile files, seeded and deterministic, for the fault campaign.

A site meets fieldgate's loader through files people and tools write: an editor
that saves Latin-1 or UTF-16, a copy that stopped half way, tabs, a key pasted
twice, a number with too many digits, anchors someone found clever, or a file
built to hurt (a billion laughs). Each file here starts from one of the
shipped example configurations or profiles and is damaged in one or more
ways; some are not files at all (a folder, a FIFO, a symlink loop,
``/dev/zero``). The same ``(seed, index)`` always gives the same file, so a
failure found by the long campaign is replayed by its number.

Library use::

    from fieldgate_hwsim.hostile_files import generate
    for hf in generate(1000, seed=14):
        path = hf.write(folder)        # the file (or the FIFO, the folder, the link ...)
        hf.kind, hf.family, hf.driver  # "config" | "profile", what was done, the profile's driver

Command line (writes the files and a ``manifest.jsonl``, one line a file)::

    python -m fieldgate_hwsim.hostile_files OUTDIR --count 1000 [--seed 14]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

__all__ = ["FAMILIES", "HostileFile", "base_files", "generate", "main", "write_files"]

SPECIALS = ("folder", "fifo", "symlink-loop", "dev-zero", "dangling-link")


@dataclass(frozen=True, slots=True)
class HostileFile:
    """One hostile file.

    Attributes:
        index: its number in the generated series.
        kind: ``config`` (a gateway configuration) or ``profile`` (a device profile).
        family: what was done to it (``+``-joined when several mutations were applied).
        driver: for a profile, the driver it was written for (a config naming it is built by the caller).
        data: the bytes to write; empty for a special file.
        special: ``folder``, ``fifo``, ``symlink-loop``, ``dev-zero``, ``dangling-link`` or ``""``.
        base: the shipped file it was derived from.
    """

    index: int
    kind: str
    family: str
    driver: str
    data: bytes
    special: str = ""
    base: str = ""

    @property
    def name(self) -> str:
        """A file name that says what it is: ``0042-profile-tabs.yaml``."""
        family = re.sub(r"[^a-z0-9+-]", "-", self.family)[:60]
        return f"{self.index:04d}-{self.kind}-{family}.yaml"

    def write(self, folder: Path, name: str | None = None) -> Path:
        """Create the file (or the special object) in ``folder`` and return its path."""
        path = folder / (name or self.name)
        if path.is_symlink() or path.exists():
            if path.is_dir() and not path.is_symlink():
                os.rmdir(path)
            else:
                path.unlink()
        if self.special == "folder":
            path.mkdir()
        elif self.special == "fifo":
            os.mkfifo(path)
        elif self.special == "symlink-loop":
            path.symlink_to(path.name)  # points at itself: ELOOP
        elif self.special == "dev-zero":
            path.symlink_to("/dev/zero")
        elif self.special == "dangling-link":
            path.symlink_to(f"{path.name}.missing")
        else:
            path.write_bytes(self.data)
        return path


    def install(self, folder: Path, config_name: str = "fieldgate.yaml", gateway_id: str = "hostile") -> Path:
        """Lay out what a command is given, and return the configuration's path.

        A config is written as ``config_name``; a profile as ``profile.yaml`` beside a
        configuration with one device of its driver that names it by relative path
        (as a profile arrives next to a configuration on a boot partition).
        """
        if self.kind == "config":
            return self.write(folder, config_name)
        self.write(folder, PROFILE_NAME)
        config = folder / config_name
        config.write_text(wrapper_config(self.driver, f"./{PROFILE_NAME}", gateway_id), encoding="utf-8")
        return config


PROFILE_NAME = "profile.yaml"
# Connections that validate, so that a profile that survives its damage gives a valid configuration.
CONNECTIONS = {
    "sim": "{}",
    "modbus": "{transport: tcp, host: 127.0.0.1, port: 1502}",
    "serial": "{port: /dev/null}",
    "ble": '{address: "C7:3A:10:5E:22:01"}',
    "coap": '{mode: push, listen: "127.0.0.1:5683"}',
}


def wrapper_config(driver: str, profile_ref: str, gateway_id: str = "hostile") -> str:
    """A configuration with one device of ``driver`` that uses the profile ``profile_ref``."""
    connection = CONNECTIONS.get(driver, "{}")
    return (f"gateway: {{id: {gateway_id}, clock_check: off}}\n"
            f"devices:\n  - {{id: dev-1, driver: {driver}, profile: {profile_ref}, connection: {connection}}}\n")


def _package_root(package: str) -> Path:
    return Path(str(files(package)))


def base_files() -> list[tuple[str, str, str, str]]:
    """The shipped examples and profiles: ``(kind, driver, name, text)``.

    Relative profile paths in the examples are made absolute, so a mutated
    copy written anywhere still reaches the profiles and the later phases of
    validation.
    """
    out: list[tuple[str, str, str, str]] = []
    drivers = _package_root("fieldgate.drivers")
    for example in sorted(drivers.glob("*/example.yaml")):
        text = example.read_text(encoding="utf-8")
        text = re.sub(r"(profile:\s*)((?!/)[\w./-]+\.ya?ml)",
                      lambda m, d=example.parent: m.group(1) + str(d / m.group(2)), text)
        out.append(("config", example.parent.name, str(example), text))
    libraries = [_package_root("fieldgate.profiles"), *sorted(drivers.glob("*/profiles"))]
    for lib in libraries:
        for prof in sorted(lib.rglob("*.yaml")):
            text = prof.read_text(encoding="utf-8")
            m = re.search(r"^driver:\s*([\w-]+)", text, re.M)
            out.append(("profile", m.group(1) if m else "sim", str(prof), text))
    return out


# --- mutations: text in, text or bytes out --------------------------------------------------------

Mutation = Callable[[random.Random, str], "str | bytes"]

_VALUE_LINE = re.compile(r"^(\s*(?:- )?[\w.-]+:)[ \t]+(?!#)(\S.*?)\s*(#.*)?$", re.M)

_SWAPS = ["[1, 2, 3]", "{a: 1, b: [2]}", "- nested\n", "null", "~", "true", "off", "0", "-1", "3.5",
          "''", '""', "[]", "{}", "yes", "0x7fffffffffffffff", "-9223372036854775809", "2001-12-14",
          "!!binary aGVsbG8=", "!!set {a, b}", "[[[[[]]]]]", "{? [a]: b}", "'a\\nb'", "12:30:45"]
_NUMBERS = ["1e999", "-1e999", ".inf", "-.inf", ".nan", "1" + "0" * 5000, "9" * 4301, "0x" + "f" * 3000,
            "0b" + "1" * 5000, ":".join(["59"] * 3000), "1" + "_" * 200 + "0", "9" * 400 + "s",
            "9" * 400 + "GB", "1e308", "-0.0", "4.9e-324", "0o777777777777777777777777", "1.5e-999"]
_UNICODE = ["\u202etxt.exe", "\u200b\u200d\ufeff", "e\u0301\u0301\u0301", "\U0001f4a9", "\u0085",
            "\u2028\u2029", "\ufffe", "\x7f", "\x1b[2J\x1b[31m", "\u00e9\u00e8", "\udc80", "\ud800\udc00",
            "\ufeff", "\x00", "\\ud800", "\\0", "\\x1b[2J", "\\U0010ffff", "\\uFFFE"]
_TAGS = ["!!python/object/apply:os.system ['true']", "!!int abc", "!!bool maybe", "!!timestamp 2020-13-45",
         "!!float x", "!!int ''", "!foo bar", "!!str", "!!null x", "!!binary '%%%'", "!<tag:x> y", "!!omap [a]",
         "!!map [1]", "!!seq {a: 1}", "!!python/name:os.system", "!!merge x", "!!value x"]


def _value_lines(text: str) -> list[re.Match[str]]:
    return list(_VALUE_LINE.finditer(text))


def _replace_value(rng: random.Random, text: str, choices: list[str]) -> str:
    lines = _value_lines(text)
    if not lines:
        return text + f"\nextra: {rng.choice(choices)}\n"
    m = rng.choice(lines)
    new = rng.choice(choices)
    if "\n" in new:  # a block value: on its own lines, indented under the key
        indent = len(m.group(1)) - len(m.group(1).lstrip()) + 2
        new = "\n" + "".join(" " * indent + line + "\n" for line in new.strip("\n").split("\n"))
        return text[: m.start(2) - 1] + new + text[m.end():]
    return text[: m.start(2)] + new + text[m.end(2):]


def m_type_swap(rng: random.Random, text: str) -> str:
    """A value of the wrong type: a list where a map is expected, a map for a string, ..."""
    return _replace_value(rng, text, _SWAPS)


def m_top_level_swap(rng: random.Random, text: str) -> str:
    """The whole document as a list, a scalar, or its sections as lists."""
    choice = rng.randrange(4)
    if choice == 0:
        return "- " + text.replace("\n", "\n  ")
    if choice == 1:
        return rng.choice(["just a string\n", "42\n", "[]\n", "null\n", "---\n...\n", "? a\n"])
    key = rng.choice(["gateway", "devices", "points", "mqtt", "connection", "profile", "buffer", "web"])
    return re.sub(rf"^{key}:.*$", f"{key}: {rng.choice(_SWAPS[:4])}", text, count=1, flags=re.M) + \
        f"\n{key}x: 1\n"


def m_huge_number(rng: random.Random, text: str) -> str:
    """A number too large, too long or not finite."""
    return _replace_value(rng, text, _NUMBERS)


def m_unicode(rng: random.Random, text: str) -> str:
    """Unicode oddities inside a value, a key or the file's start."""
    odd = rng.choice(_UNICODE)
    where = rng.randrange(3)
    if where == 0:
        return odd + text
    lines = _value_lines(text)
    if not lines:
        return text + odd
    m = rng.choice(lines)
    if where == 1:  # inside a double-quoted value, where escapes are read
        return text[: m.start(2)] + '"' + m.group(2).replace('"', "") + odd + '"' + text[m.end(2):]
    return text[: m.start(1)] + m.group(1)[:-1] + odd + ":" + text[m.end(1):]


def m_encoding(rng: random.Random, text: str) -> bytes:
    """The file saved in another encoding, or with bytes that are not UTF-8."""
    choice = rng.randrange(6)
    if choice == 0:
        return ("# caf\u00e9 r\u00e9glage\n" + text).encode("latin-1", errors="replace")
    if choice == 1:
        return text.encode("utf-16", errors="surrogatepass")  # with its BOM: readable
    if choice == 2:
        return text.encode("utf-16-le", errors="surrogatepass")  # without BOM: NULs everywhere
    if choice == 3:
        return b"\xef\xbb\xbf" + text.encode(errors="surrogatepass")  # UTF-8 BOM: readable
    if choice == 4:
        return text.encode("utf-32", errors="surrogatepass")
    raw = bytearray(text.encode(errors="surrogatepass"))
    for _ in range(rng.randint(1, 4)):
        raw.insert(rng.randrange(len(raw) + 1), rng.choice([0xFF, 0xFE, 0xC0, 0x80, 0xED]))
    return bytes(raw)


def m_binary(rng: random.Random, text: str) -> bytes:
    """Binary junk: random bytes inserted, overwriting a stretch, or instead of the file."""
    raw = bytearray(text.encode(errors="surrogatepass"))
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 4096))
    if choice == 1:
        pos = rng.randrange(len(raw) + 1)
        raw[pos:pos] = rng.randbytes(rng.randint(1, 64))
    elif choice == 2:
        pos = rng.randrange(len(raw) + 1)
        raw[pos:pos + 32] = rng.randbytes(32)
    else:
        return bytes(raw[: rng.randrange(len(raw) + 1)])  # a copy that stopped half way
    return bytes(raw)


def m_byte_flip(rng: random.Random, text: str) -> bytes:
    """A few bytes changed at random (a bad SD card)."""
    raw = bytearray(text.encode(errors="surrogatepass"))
    for _ in range(rng.randint(1, 8)):
        if raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def m_tabs(rng: random.Random, text: str) -> str:
    """Indentation with tabs (an editor's setting)."""
    lines = text.split("\n")
    indented = [i for i, line in enumerate(lines) if line.startswith(" ")]
    for i in rng.sample(indented, k=min(len(indented), rng.randint(1, 3))) if indented else []:
        stripped = lines[i].lstrip(" ")
        lines[i] = "\t" * max(1, (len(lines[i]) - len(stripped)) // 2) + stripped
    if not indented:
        lines.insert(1, "\tkey: value")
    return "\n".join(lines)


def m_duplicate_key(rng: random.Random, text: str) -> str:
    """A key written twice in the same mapping (a paste)."""
    lines = _value_lines(text)
    if not lines:
        return text + "\nschema_version: 1\nschema_version: 2\n"
    m = rng.choice(lines)
    line = text[m.start():m.end()]
    return text[: m.end()] + "\n" + line + text[m.end():]


def _laughs(rng: random.Random, depth: int, width: int) -> str:
    out = [f'l0: &l0 ["{"lol" * rng.randint(1, 3)}"' + ', "lol"' * (width - 1) + "]"]
    for i in range(1, depth):
        out.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(out) + "\n"


def m_anchors(rng: random.Random, text: str) -> str:
    """Anchors and aliases: billion laughs, self reference, merges of the wrong thing, undefined aliases."""
    choice = rng.randrange(9)
    if choice == 0:
        return _laughs(rng, rng.randint(6, 12), rng.randint(6, 10)) + text
    if choice == 1:
        return text + "\nloop: &a [*a]\n"
    if choice == 2:
        return text + "\nloop: &m {x: 1, <<: *m}\n"
    if choice == 3:
        return text + "\nbad: *nowhere\n"
    if choice == 4:
        return text + "\nbase: &s 5\nuse: {<<: *s}\n"
    if choice == 5:  # a merge chain that expands: each level merges the previous twice under other keys
        lines = ["m0: &m0 {a: [1, 2, 3, 4, 5, 6, 7, 8]}"]
        for i in range(1, rng.randint(8, 20)):
            lines.append(f"m{i}: &m{i} {{x: *m{i - 1}, y: *m{i - 1}, <<: *m{i - 1}}}")
        return "\n".join(lines) + "\n" + text
    if choice == 6:  # a value aliased where it is used
        lines = _value_lines(text)
        if lines:
            m = rng.choice(lines)
            return text[: m.start(2)] + "&v " + m.group(2) + text[m.end(2):] + "\nagain: *v\n"
        return text
    if choice == 7:  # many aliases, each harmless
        return "x: &x 1\nmany: [" + ", ".join(["*x"] * rng.randint(900, 1500)) + "]\n" + text
    return text + "\ndup: &d 1\nre: &d 2\nuse: *d\n"  # the same anchor twice (YAML 1.2: the later one)


def m_tags(rng: random.Random, text: str) -> str:
    """Explicit tags: Python object constructors, values that do not fit their tag, unknown tags."""
    return _replace_value(rng, text, _TAGS)


def m_structure(rng: random.Random, text: str) -> str:
    """Lines deleted, duplicated, moved or re-indented; documents split; nesting too deep."""
    lines = text.split("\n")
    choice = rng.randrange(8)
    if choice == 0 and lines:
        del lines[rng.randrange(len(lines))]
    elif choice == 1 and lines:
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif choice == 2:
        rng.shuffle(lines)
    elif choice == 3 and lines:
        i = rng.randrange(len(lines))
        lines[i] = " " * rng.randint(1, 5) + lines[i]
    elif choice == 4:
        return text + "\n---\nsecond: document\n"
    elif choice == 5:
        depth = rng.choice([70, 1000, 5000])
        return text + "\ndeep: " + "[" * depth + "]" * depth + "\n"
    elif choice == 6:
        depth = rng.choice([70, 300])
        return text + "\ndeep:\n" + "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x\n"
    else:
        return text + "\n? [complex, key]\n: value\n? {a: b}\n: c\n~: null key\n1.5: float key\n"
    return "\n".join(lines)


def m_size(rng: random.Random, text: str) -> str:
    """Too big: many values, a huge scalar, or more bytes than a file may have."""
    choice = rng.randrange(4)
    if choice == 0:
        return text + "\nmany: [" + ",".join(["1"] * rng.randint(50_001, 80_000)) + "]\n"
    if choice == 1:
        return text + "\nbig: '" + "x" * rng.randint(100_000, 900_000) + "'\n"
    if choice == 2:
        return text + "\n# " + "padding " * 140_000 + "\n"  # over 1 MiB
    return text + "\nkeys:\n" + "".join(f"  k{i}: {i}\n" for i in range(rng.randint(20_000, 30_000)))


def m_empty(rng: random.Random, text: str) -> str:
    """Nothing, or nothing but comments, white space or document markers."""
    return rng.choice(["", "\n", "# only a comment\n", "   \n\t\n", "---\n", "...\n", "---\n...\n", "\ufeff"])


FAMILIES: dict[str, Mutation] = {
    "type-swap": m_type_swap, "top-level-swap": m_top_level_swap, "huge-number": m_huge_number,
    "unicode": m_unicode, "encoding": m_encoding, "binary": m_binary, "byte-flip": m_byte_flip,
    "tabs": m_tabs, "duplicate-key": m_duplicate_key, "anchors": m_anchors, "tags": m_tags,
    "structure": m_structure, "size": m_size, "empty": m_empty,
}
# How often each family is drawn: the cheap, likely accidents often, the big files rarely (disk, time).
_WEIGHTS = {"type-swap": 12, "top-level-swap": 4, "huge-number": 8, "unicode": 8, "encoding": 6, "binary": 6,
            "byte-flip": 6, "tabs": 6, "duplicate-key": 6, "anchors": 10, "tags": 6, "structure": 8, "size": 2,
            "empty": 2}


def _one(index: int, seed: int, bases: list[tuple[str, str, str, str]]) -> HostileFile:
    rng = random.Random(f"{seed}:{index}")
    kind, driver, base, text = rng.choice(bases)
    if rng.random() < 0.02:
        return HostileFile(index, kind, rng.choice(SPECIALS), driver, b"", rng.choice(SPECIALS), base)
    names = list(_WEIGHTS)
    chosen = rng.choices(names, weights=[_WEIGHTS[n] for n in names], k=1 + (rng.random() < 0.3))
    data: str | bytes = text
    applied: list[str] = []
    for name in chosen:
        if isinstance(data, bytes):  # a byte-level mutation ends the chain: the text is gone
            break
        data = FAMILIES[name](rng, data)
        applied.append(name)
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else data
    return HostileFile(index, kind, "+".join(applied), driver, raw, "", base)


def generate(count: int, seed: int = 14, start: int = 0) -> Iterator[HostileFile]:
    """``count`` hostile files, numbered from ``start``; the same arguments give the same files."""
    bases = base_files()
    for index in range(start, start + count):
        yield _one(index, seed, bases)


def write_files(folder: Path, count: int, seed: int = 14, start: int = 0) -> list[tuple[HostileFile, Path]]:
    """Write ``count`` files into ``folder`` and a ``manifest.jsonl`` describing them."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[HostileFile, Path]] = []
    with (folder / "manifest.jsonl").open("w", encoding="utf-8") as manifest:
        for hf in generate(count, seed, start):
            path = hf.write(folder)
            out.append((hf, path))
            manifest.write(json.dumps({"index": hf.index, "file": path.name, "kind": hf.kind, "family": hf.family,
                                       "driver": hf.driver, "special": hf.special, "base": hf.base}) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m fieldgate_hwsim.hostile_files OUTDIR --count N --seed S``."""
    ap = argparse.ArgumentParser(prog="python -m fieldgate_hwsim.hostile_files",
                                 description="Write hostile fieldgate config and profile files (seeded).")
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--start", type=int, default=0, help="number of the first file (to replay one)")
    args = ap.parse_args(argv)
    written = write_files(args.outdir, args.count, args.seed, args.start)
    kinds: dict[str, int] = {}
    for hf, _ in written:
        for fam in hf.family.split("+"):
            kinds[fam] = kinds.get(fam, 0) + 1
    print(f"wrote {len(written)} files to {args.outdir} (seed {args.seed}): "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
