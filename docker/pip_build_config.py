"""The host's pip settings, made to work inside `podman build`.

pip inside the build must reach packages exactly as the host's pip does: its index and extra indexes,
find-links directories, constraint files, CA bundle. `pip config list` says what the host uses; this
turns it into a pip.conf for the build (passed as a build secret) and the local paths that conf names
(bind-mounted read-only for the build only, under `BUILD_ROOT`, and the conf rewritten to match). Neither
lands in a layer of the image or in the repository. Mounting under a prefix, not at the host's own
paths, keeps the build's own files whole: a CA bundle mounted over /etc/ssl/certs/ca-certificates.crt
would break the base image's `apt-get install ca-certificates`.

    python docker/pip_build_config.py CONF_OUT VOLUMES_OUT

writes the pip.conf to CONF_OUT and one `HOST_PATH:BUILD_PATH` per line to VOLUMES_OUT (for `-v ...:ro`).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

# Where the host's pip writes, not what it reads: meaningless (or harmful, when mounted read-only) in a build.
HOST_ONLY_OPTIONS = frozenset({"cache-dir", "log", "log-file", "local-log", "report", "target", "prefix",
                               "root", "src", "user"})
# Options whose values are package indexes: a file:// simple index links its files relative to itself
# (../../files/...), so the folder above `simple/` must be there too.
INDEX_OPTIONS = frozenset({"index-url", "extra-index-url"})
# `pip config list` names environment variables (PIP_FIND_LINKS ...) as this section; they apply to
# every command and win over every file.
ENV_SECTION = ":env:"
# Where the host's paths appear inside the build; nothing of the image lives there.
BUILD_ROOT = "/run/host-pip"


@dataclass(frozen=True)
class BuildPipConfig:
    conf: str
    volumes: tuple[str, ...]  # host paths to mount, each at in_build(path)
    missing: tuple[str, ...]  # local paths the settings name that do not exist here (pip will complain too)


def in_build(path: str) -> str:
    """Where a host path is mounted inside the build."""
    return BUILD_ROOT + os.path.normpath(path)


def parse_listing(listing: str) -> dict[str, dict[str, str]]:
    """`pip config list` output -> {section: {option: value}}, environment variables applied last."""
    from_files: dict[str, dict[str, str]] = {}
    from_env: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, raw = line.partition("=")
        section, _, option = key.rpartition(".")
        if not sep or not option:
            continue
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw
        if section == ENV_SECTION:
            from_env[option] = str(value)
        else:
            from_files.setdefault(section or "global", {})[option] = str(value)
    if from_env:
        from_files.setdefault("global", {}).update(from_env)
    return from_files


def local_path(token: str) -> str | None:
    """The absolute local path a setting's value names (a path or a file:// URL), else None."""
    if token.startswith("file:"):
        return unquote(urlparse(token).path) or None
    return token if token.startswith("/") else None


def build_config(sections: dict[str, dict[str, str]]) -> BuildPipConfig:
    """The pip.conf for the build and the paths to mount so that every local path in it resolves."""
    volumes: set[str] = set()
    missing: set[str] = set()
    lines: list[str] = []
    for section, options in sections.items():
        kept = {name: value for name, value in options.items() if name not in HOST_ONLY_OPTIONS}
        if not kept:
            continue
        lines.append(f"[{section}]")
        for name, value in kept.items():
            tokens = []
            for token in value.split():
                path = local_path(token)
                if path is not None:
                    mount = path
                    if name in INDEX_OPTIONS and os.path.basename(path.rstrip("/")) == "simple":
                        mount = os.path.dirname(path.rstrip("/"))
                    mount = os.path.normpath(mount)
                    (volumes if os.path.exists(mount) else missing).add(mount)
                    token = ("file://" if token.startswith("file:") else "") + in_build(path)
                tokens.append(token)
            # multi-valued options span lines in a pip.conf: continuation lines are indented
            lines.append(f"{name} = " + "\n    ".join(tokens) if tokens else f"{name} =")
    return BuildPipConfig("\n".join(lines) + "\n" if lines else "", _outermost(volumes), tuple(sorted(missing)))


def host_listing(python: str = sys.executable) -> str:
    return subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True,
                          check=True).stdout


def _outermost(paths: set[str]) -> tuple[str, ...]:
    """Drop paths inside another mounted path: one mount covers them."""
    kept = []
    for path in sorted(paths):
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in kept):
            kept.append(path)
    return tuple(kept)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    config = build_config(parse_listing(host_listing()))
    for path in config.missing:
        print(f"pip_build_config: the host's pip settings name {path}, which does not exist", file=sys.stderr)
    with open(argv[0], "w") as conf:
        conf.write(config.conf)
    with open(argv[1], "w") as volumes:
        volumes.write("".join(f"{path}:{in_build(path)}\n" for path in config.volumes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
