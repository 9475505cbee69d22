"""`serve`: the entry point SageMaker runs. Reads settings once, checks the model, starts the server.

The server is nginx in front of gunicorn with one worker holding one copy of the weights, or one per GPU
(container/server.py, container/proxy.py, container/workers.py). Everything that must happen once per server rather than once
per worker (the port check, unpacking a model archive, nginx's configuration) happens here, before
gunicorn starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

from container import vertex
from container.proxy import Proxy, ProxyPaths, find_nginx
from container.workers import slots as worker_slots
from container.settings import (
    ENV_NGINX, ENV_PORT, STORAGE_COPY_PENDING, Settings, SettingsError, apply_library_environment, describe_environment,
)
from model_handlers import read_serving_config
from model_handlers.errors import ModelDirectoryError

logger = logging.getLogger("searchbox")

_HOST = "0.0.0.0"
#: model archives `serve` unpacks itself, as SageMaker unpacks model.tar.gz into /opt/ml/model
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_MODEL_MARKERS = ("searchbox.json", "config.json", "modules.json")

USAGE = """\
usage: serve [-h | --help]

Serves one embedding model, multi-vector (ColBERT) model or reranker over HTTP: GET /ping, POST /invocations
(alias /score), GET /execution-parameters, POST /v1/embeddings, POST /v1/multi-vector, POST /v1/rerank.
Every other argument is ignored (SageMaker starts the container as `IMAGE serve`). Configuration comes from
the environment only.

Environment (read once at start):
"""


def usage() -> str:
    return USAGE + describe_environment()


def main(argv: list[str] | None = None) -> int:
    """Run the server; `serve` ignores arguments other than -h/--help (SageMaker passes `serve` itself)."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(usage())
        return 0
    apply_library_environment()
    # INFO until the settings say otherwise: a bad setting must still be logged
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    # Until gunicorn installs its own handlers, SIGTERM (docker stop during a long unpack) unwinds
    # through the `finally` that removes an unpacked model instead of killing the process outright.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        logger.error("bad setting: %s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)
    problem = port_problem(settings.port)
    if problem:
        logger.error("%s", problem)
        return 1
    given = settings.storage_uri if settings.model_dir == STORAGE_COPY_PENDING else settings.model_dir
    logger.info("model: %s (%s)", given, settings.model_source)
    with contextlib.ExitStack() as cleanup:
        try:
            settings = cleanup.enter_context(served_model(settings))
            config = read_serving_config(settings.model_dir, allow_pickle=settings.allow_pickle,
                                         trust_remote_code=settings.trust_remote_code,
                                         fallback_name=settings.model_name)
        except ModelDirectoryError as exc:
            logger.error("cannot serve %s: %s", given, exc.detail)
            return 1
        nginx = find_nginx(settings.nginx)
        if nginx is None:
            logger.error("nginx is needed in front of gunicorn and was not found: install it (apt-get install "
                         "nginx-light) or set %s to its path", ENV_NGINX)
            return 1
        # the unix socket, nginx's files and the ready file: private to this server, removed at exit
        try:
            slots = worker_slots(settings)
        except SettingsError as exc:
            logger.error("bad setting: %s", exc)
            return 2
        paths = ProxyPaths(Path(cleanup.enter_context(_private_directory("searchbox-run-"))), len(slots))
        proxy = Proxy(nginx, settings, paths)
        problem = proxy.check()
        if problem:
            logger.error("nginx refuses its configuration: %s", problem)
            return 1
        logger.info("serving %s model %s on port %d with %d worker(s) on %s", config.kind.name,
                    config.served_model_name, settings.port, len(slots), ", ".join(slot.device for slot in slots))
        from container.server import SearchboxServer  # gunicorn's arbiter, only once everything checked out

        SearchboxServer(settings, proxy, paths, slots).run()
    return 0


@contextlib.contextmanager
def _private_directory(prefix: str) -> Iterator[str]:
    """A 0700 temporary directory, removed by the process that made it (not by a forked worker)."""
    owner = os.getpid()
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)


def port_problem(port: int) -> str | None:
    """Why the server could not listen on `port`, found by binding it as gunicorn will; None if it can.

    gunicorn itself retries a taken port for five seconds and ends with "Can't connect", which names
    neither the cause nor the setting to change.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # as gunicorn binds: connections of a previous run still in TIME_WAIT do not make the port busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((_HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is in use; set {ENV_PORT} to another port"
            if exc.errno == errno.EACCES:
                return f"port {port} needs privileges this process lacks; set {ENV_PORT} to a port above 1023"
            return f"cannot listen on port {port} ({exc.strerror}); set {ENV_PORT} to another port"
    return None


@contextlib.contextmanager
def served_model(settings: Settings) -> Iterator[Settings]:
    """`settings` with a model archive unpacked into a private directory that lives as long as the server.

    Anything but a .tar.gz/.tgz/.tar file is served as it is (read_serving_config says what is wrong
    with it). The archive is unpacked the way SageMaker unpacks model.tar.gz into /opt/ml/model: its
    root becomes a directory named `model`, so a model without searchbox.json answers to the same name. Vertex AI's
    AIP_STORAGE_URI is copied into one the same way (container/vertex.py).
    """
    if settings.model_dir == STORAGE_COPY_PENDING:
        # Vertex AI mounts nothing: the Model's artifactUri is copied before any check or worker
        with _private_directory("searchbox-model-") as scratch:
            target = Path(scratch) / vertex.directory_name(settings.storage_uri)
            vertex.copy_model(settings.storage_uri, target)
            yield dataclasses.replace(settings, model_dir=target,
                                      model_source=f"{settings.model_source}, copied from {settings.storage_uri}")
        return
    archive = settings.model_dir
    if not (archive.is_file() and archive.name.endswith(ARCHIVE_SUFFIXES)):
        yield settings
        return
    # mode 0700: only this user reads the weights; a respawned worker still needs them, so only the master
    # that unpacked them removes them
    with _private_directory("searchbox-model-") as scratch:
        target = Path(scratch) / "model"
        started = time.monotonic()
        files = _unpack(archive, target)
        _refuse_nested_model(target)
        logger.info("unpacked %s (%d files, %.0f MB) into %s in %.1f s; it is removed at exit", archive, files,
                    sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 1e6, target,
                    time.monotonic() - started)
        yield dataclasses.replace(settings, model_dir=target,
                                  model_source=f"{settings.model_source}, unpacked from {archive}")


def _unpack(archive: Path, target: Path) -> int:
    """Extract `archive` into the new directory `target`; returns how many files it held.

    Raises:
        ModelDirectoryError: the archive is unreadable, or a member would land outside `target`
            (absolute path, `..`, a link pointing out) or is not a plain file, directory or link.
    """
    if not hasattr(tarfile, "data_filter"):
        raise ModelDirectoryError(
            "unpacking an archive safely needs tarfile's data filter (Python 3.10.12+, 3.11.4+); "
            "unpack it yourself and serve the directory")
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.ReadError:
        # tarfile's own message lists every compression it tried, over several lines
        raise ModelDirectoryError("cannot unpack the archive: it is not a tar archive (plain, or gzip, bzip2 or xz "
                                  "compressed); build one with `tar czf model.tar.gz -C <model dir> .`") from None
    target.mkdir(mode=0o700)
    try:
        with tar:
            tar.extractall(target, filter=_model_member)
            return sum(1 for member in tar.getmembers() if member.isfile())
    except tarfile.FilterError as exc:
        raise ModelDirectoryError(
            f"refused to unpack the archive: {exc}. A model archive holds only files, directories and links "
            "that stay below its root (packaging/build_artifact.py builds one)") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelDirectoryError(f"cannot unpack the archive: {exc}") from None


def _model_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    # tarfile's "data" filter refuses `..`, links pointing outside and devices, but quietly strips
    # a leading "/"; an archive built for /opt/ml/model has relative names, so that one is refused too
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest)


def _refuse_nested_model(unpacked: Path) -> None:
    """Refuse an archive whose model sits one directory down, as `tar czf model.tar.gz dir/` makes it.

    SageMaker would serve /opt/ml/model/dir/ and fail there, in the worker; say so before starting.
    """
    if any((unpacked / marker).is_file() for marker in _MODEL_MARKERS):
        return
    children = [child for child in unpacked.iterdir() if not child.name.startswith(".")]
    if len(children) == 1 and any((children[0] / marker).is_file() for marker in _MODEL_MARKERS):
        name = children[0].name
        raise ModelDirectoryError(
            f"the archive holds the model under {name}/, but SageMaker unpacks model.tar.gz into /opt/ml/model "
            f"as it is and finds no model there: put the model's files at the archive's root "
            f"(tar czf model.tar.gz -C {name} .)")


if __name__ == "__main__":
    sys.exit(main())
