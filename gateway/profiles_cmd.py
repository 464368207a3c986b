"""``fieldgate profiles``: the device library as a list, and how well each profile is covered.

Without options it lists every profile the gateway can use (shipped, from
installed packs, from ``--dir`` folders) with vendor, model, driver and the
document it cites. ``--coverage`` prints one line per profile: the registers
its datasheet documents against the points it publishes, how many points
have test vectors and how many a registered simulator models, read from:

* ``<model>.datasheet.toml`` beside the profile: every register the document
  lists, each either published (``point``) or left out with a reason
  (``left_out``);
* the profile's ``test_vectors``;
* the ``fieldgate.device_simulators`` entry points: each is a callable
  ``(profile name) -> set of point names`` it models (hw-sim registers one).

The exit code is 1 when a datasheet facts file and its profile disagree (a
register naming a point the profile lacks or reads elsewhere, a point no
register documents, a register with neither ``point`` nor ``left_out``) or a
profile does not load: the library's own consistency check, fit for CI.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .config import library_profiles, load_profile_file
from .profile import BaseProfile

EXIT_OK, EXIT_INCONSISTENT = 0, 1
#: Entry point group of simulators that model library profiles point by point.
SIMULATORS_GROUP = "fieldgate.device_simulators"
#: The suffix of a profile's datasheet facts file (``b23.yaml`` -> ``b23.datasheet.toml``).
FACTS_SUFFIX = ".datasheet.toml"


@dataclass
class Coverage:
    """What is known about one profile."""

    name: str
    path: Path
    profile: BaseProfile | None
    documented: int | None = None   # registers in the facts file (None: no facts file)
    published: int = 0              # of those, published as a point
    left_out: int = 0               # of those, left out with a reason
    verified: int = 0               # published ones checked against a source (``verified = true``)
    vectors: int = 0                # points with at least one test vector
    simulated: int | None = None    # points a registered simulator models (None: none registered)
    problems: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return len(self.profile.points) if self.profile is not None else 0

    def line(self) -> str:
        if self.profile is None:
            return f"{self.name}: does not load ({self.problems[0] if self.problems else 'invalid'})"
        p = self.profile
        doc = (f"documented {self.documented}: published {self.published} ({self.verified} verified), "
               f"left out {self.left_out}"
               if self.documented is not None else "documented ? (no datasheet facts)")
        sim = f"{self.simulated}/{self.points}" if self.simulated is not None else "-"
        cited = "yes" if p.datasheet else "NO"
        return (f"{self.name} [{p.driver}]: {doc}; points {self.points}; vectors {self.vectors}/{self.points}; "
                f"simulated {sim}; datasheet cited: {cited}")


def _simulators() -> list[Callable[[str], set[str]]]:
    out = []
    for ep in entry_points(group=SIMULATORS_GROUP):
        try:
            out.append(ep.load())
        except ImportError:
            continue  # a simulator whose protocol library is not installed models nothing here
    return out


def _vectored(vectors: list[dict[str, Any]]) -> set[str]:
    """Point names the vectors check: a register vector names its ``point``, a frame vector its ``expect`` keys."""
    out: set[str] = set()
    for v in vectors:
        if isinstance(v.get("point"), str):
            out.add(v["point"])
        if isinstance(v.get("expect"), dict):
            out.update(k for k in v["expect"] if isinstance(k, str))
    return out


def _check_facts(cov: Coverage, facts_path: Path) -> None:
    """Hold a profile to its datasheet facts: every register accounted for, every point documented."""
    assert cov.profile is not None
    try:
        doc = tomllib.loads(facts_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        cov.problems.append(f"{facts_path}: unreadable datasheet facts: {exc}")
        return
    registers = doc.get("register", [])
    if not isinstance(registers, list) or not doc.get("document"):
        cov.problems.append(f"{facts_path}: needs 'document' and a list of [[register]] tables")
        return
    points = {pt.name: pt.model_dump() for pt in cov.profile.points}
    documented: set[str] = set()
    cov.documented = len(registers)
    for i, reg in enumerate(registers):
        where = f"{facts_path}: register[{i}]"
        if not isinstance(reg, dict):
            cov.problems.append(f"{where}: not a table")
            continue
        at = reg.get("address")
        where += f" ({reg.get('table', '?')} {at:#06x})" if isinstance(at, int) else ""
        name, reason = reg.get("point"), reg.get("left_out")
        if (name is None) == (reason is None):
            cov.problems.append(f"{where}: give either point (published as) or left_out (why not)")
            continue
        if reason is not None:
            cov.left_out += 1
            continue
        if not isinstance(name, str):
            cov.problems.append(f"{where}: point must be a point name")
            continue
        dumped = points.get(name)
        if dumped is None:
            cov.problems.append(f"{where}: point {name!r} is not in the profile")
            continue
        for key in ("table", "address", "type"):
            # compared where the point declares the key (an undeclared type is the driver's default)
            if key in reg and dumped.get(key) is not None and dumped[key] != reg[key]:
                cov.problems.append(f"{where}: point {name!r} has {key} {dumped[key]!r}, the datasheet {reg[key]!r}")
        documented.add(name)
        cov.published += 1
        cov.verified += reg.get("verified") is True
    for name in sorted(set(points) - documented):
        cov.problems.append(f"{facts_path}: point {name!r} of the profile is documented by no register")


def coverage(extra_dirs: Iterable[Path] = ()) -> list[Coverage]:
    """The coverage of every profile of the library (shipped, packs, ``extra_dirs``)."""
    sims = _simulators()
    out = []
    for name, path in sorted(library_profiles(list(extra_dirs)).items()):
        profile, diags = load_profile_file(path)
        errors = [str(d) for d in diags if d.severity == "error"]
        cov = Coverage(name, path, profile if not errors else None, problems=errors[:1])
        if cov.profile is None:
            out.append(cov)
            continue
        names = {pt.name for pt in cov.profile.points}
        cov.vectors = len(names & _vectored(cov.profile.test_vectors or []))
        modelled = set().union(*(sim(name) for sim in sims)) if sims else set()
        cov.simulated = len(modelled & names) if modelled else None
        facts = path.with_name(path.stem + FACTS_SUFFIX)
        if facts.is_file():
            _check_facts(cov, facts)
        out.append(cov)
    return out


def cmd_profiles(args: argparse.Namespace) -> int:
    dirs = [Path(d) for d in args.dir]
    if not args.coverage:
        for name, path in sorted(library_profiles(dirs).items()):
            profile, _ = load_profile_file(path)
            if profile is None:
                print(f"{name}: does not load (fieldgate validate {path})")
                continue
            cited = " ".join((profile.datasheet or "no datasheet cited").split())
            print(f"{name} [{profile.driver}] {profile.vendor} {profile.model}: {cited[:100]}")
        return EXIT_OK
    problems = 0
    for cov in coverage(dirs):
        print(cov.line())
        for text in cov.problems:
            print(f"  {text}", file=sys.stderr)
        problems += len(cov.problems)
    if problems:
        print(f"{problems} disagreement(s) between profiles and their datasheet facts", file=sys.stderr)
        return EXIT_INCONSISTENT
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``profiles``."""
    p = sub.add_parser(
        "profiles", help="list the device library (with --coverage: datasheet, vectors and simulators per profile)",
        description="List every profile the gateway can use: shipped, from installed packs and --dir folders.",
        epilog="exit codes: 0 ok, 1 (--coverage) a profile disagrees with its datasheet facts or does not load")
    p.add_argument("--coverage", action="store_true",
                   help="per profile: documented registers vs published points, vectors, simulated points")
    p.add_argument("--dir", action="append", default=[], metavar="FOLDER",
                   help="an extra profile folder, as a configuration's profile_dirs (repeatable)")
    p.set_defaults(func=cmd_profiles)
