"""Check the floors job's environment: run with the floors venv's python from the repository root.

1. constraints/floors.txt pins every direct dependency of pyproject.toml ([project] dependencies and the dev
   extra) to exactly the floor that pyproject.toml declares with `>=`, and pins nothing else;
2. the installed version of each is exactly that pin (a resolution that picked another version fails here).

Exit status 0 when both hold, 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """3.9 and 3.9.0 are the same floor."""
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def declared_floors(pyproject: Path) -> tuple[dict[str, str], list[str]]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    floors, problems = {}, []
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        floor = re.search(r">=\s*([0-9][0-9.]*)", match.group(2)) if match else None
        if not floor:
            problems.append(f"pyproject.toml: {requirement!r} declares no `>=` floor")
            continue
        floors[canonical(match.group(1))] = floor.group(1)
    return floors, problems


def pinned(constraints: Path) -> tuple[dict[str, str], list[str]]:
    pins, problems = {}, []
    for number, line in enumerate(constraints.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            problems.append(f"{constraints}:{number}: {line!r} is not NAME==VERSION")
            continue
        pins[canonical(name.strip())] = version.strip()
    return pins, problems


def main() -> int:
    floors, problems = declared_floors(Path("pyproject.toml"))
    pins, more = pinned(Path("constraints/floors.txt"))
    problems += more
    for name, floor in sorted(floors.items()):
        if name not in pins:
            problems.append(f"{name}: floor {floor} in pyproject.toml, not pinned in constraints/floors.txt")
        elif release(pins[name]) != release(floor):
            problems.append(f"{name}: pyproject.toml says >={floor}, constraints/floors.txt pins {pins[name]}")
    for name in sorted(set(pins) - set(floors)):
        problems.append(f"{name}: pinned in constraints/floors.txt but not a direct dependency in pyproject.toml")
    for name, version in sorted(pins.items()):
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name}: not installed (floor {version})")
            continue
        if release(installed) != release(version):
            problems.append(f"{name}: {installed} installed, floor is {version}")
        else:
            print(f"{name}=={installed}")
    for problem in problems:
        print(f"FLOORS: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
