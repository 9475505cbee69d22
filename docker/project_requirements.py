"""Print the requirements an image installs: pyproject.toml's dependencies plus the named extras.

    python3 project_requirements.py [EXTRA ...] [--without NAME ...] < pyproject.toml

Run inside the image build (stdlib only, Python 3.11+), so the image's dependency list is pyproject.toml's and
nowhere else; the versions come from requirements.lock, passed to pip as constraints. An extra's reference to the
project itself (searchbox[torch]) is expanded, not printed.
"""

import re
import sys
import tomllib


def requirements(project: dict, extras: list[str], without: set[str]) -> list[str]:
    lines, pending, seen = list(project["dependencies"]), list(extras), set()
    optional = project.get("optional-dependencies", {})
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in optional[extra]:
            itself = re.fullmatch(rf"{re.escape(project['name'])}\[([\w,\s]+)\]", line.strip())
            if itself:
                pending += [name.strip() for name in itself.group(1).split(",")]
            else:
                lines.append(line)
    names = {re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower() for line in without}
    return [line for line in dict.fromkeys(lines) if re.split(r"[<>=!~\[;\s]", line, maxsplit=1)[0].lower() not in names]


def main(argv: list[str]) -> int:
    extras, without = [], set()
    args = iter(argv)
    for arg in args:
        if arg == "--without":
            without.add(next(args))
        else:
            extras.append(arg)
    project = tomllib.loads(sys.stdin.read())["project"]
    print("\n".join(requirements(project, extras, without)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
