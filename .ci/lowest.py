"""Print a pip constraints file that pins each runtime dependency of a pyproject.toml at
the lowest version it allows (its ``>=`` bound); a dependency without one is an error."""

from __future__ import annotations

import re
import sys
import tomllib

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def lowest(requirement: str) -> str:
    match = _REQUIREMENT.match(requirement)
    floor = re.search(r">=\s*([0-9][^,\s]*)", match.group(3)) if match else None
    if match is None or floor is None:
        raise SystemExit(f"{requirement!r} has no lower bound: give it one (>=)")
    marker = match.group(4) or ""
    return f"{match.group(1)}=={floor.group(1)}{marker}"


def main(path: str) -> None:
    with open(path, "rb") as file:
        project = tomllib.load(file)["project"]
    for requirement in project["dependencies"]:
        print(lowest(requirement))


if __name__ == "__main__":
    main(sys.argv[1])
