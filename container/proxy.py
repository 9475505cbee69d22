"""nginx in front of gunicorn: the part of the server that talks to the network.

Why: a gunicorn thread reads its request itself, so 64 clients that send one byte and stall hold all 64
threads, and the model's endpoint goes dark (SageMaker replaces an instance whose `/ping` misses 2 s).
nginx reads every request whole — with header and body timeouts, the body limit enforced however the body
is framed (Content-Length or chunked) — before it hands it to gunicorn over a private unix socket, and
buffers the answer, so a slow reader never holds a thread either. This is the topology of AWS's own
bring-your-own-container examples.

What nginx answers itself, never waiting on Python:
- `GET /ping`: 200 while every worker's ready file exists (written after its warm-up, removed when it drains or
  dies), 503 otherwise;
- the errors it makes (a body over the limit, a malformed request, too long a URL or headers, the server at
  its concurrency limit or restarting): the contract's JSON `{"detail", "code", "request_id"}`, each logged on
  stderr as the app logs the requests it answers (container/telemetry.py): the same JSON line, so that shedding
  and refusals are seen where every other answer is. Each is also a line of the answer log in the run directory,
  which the workers read into `searchbox_requests_total` when scraped, each line by one of them (`AnswerLog`); the
  master starts the log over past `ANSWER_LOG_CAP` bytes.

Every request gets `X-Request-Id` from nginx's `$request_id`; the app answers with the same id.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from container import routes
from container.settings import Settings
from container.telemetry import REQUEST_LOG_KEYS, request_logger

# The unix socket gunicorn listens on, the ready file and nginx's own files, inside the private run directory.
SOCKET_NAME = "gunicorn.sock"
READY_NAME = "ready"
CONF_NAME = "nginx.conf"
ANSWERS_NAME = "answers.log"
# Past this size the answer log starts over (about 200,000 answers of ~20 bytes): the run directory may be in memory.
ANSWER_LOG_CAP = 4 * 1024 * 1024
_PR_SET_PDEATHSIG = 1
# nginx's idle connections to gunicorn close after this; gunicorn's own keep-alive (server.py) is longer.
UPSTREAM_KEEPALIVE_S = 20
# Worker threads kept free of inference for the routes that must answer at any load.
RESERVED_THREADS = 4

# where nginx's own error answers live (internal locations: a client cannot ask for them)
_ERROR_PREFIX = "/_searchbox/error/"
# status -> (code, detail) of the errors nginx makes; `$request_id` is filled by nginx.
_ERRORS = {
    400: ("BAD_REQUEST", "the request is malformed (request line, headers or chunked framing); send valid HTTP/1.1"),
    404: ("NOT_FOUND", "no such route; use {routes}"),
    405: ("METHOD_NOT_ALLOWED", "this method is not allowed here"),
    408: ("REQUEST_TIMEOUT", "the request was not received in time; send the whole request without pausing"),
    411: ("LENGTH_REQUIRED", "send Content-Length or a chunked body"),
    413: ("PAYLOAD_TOO_LARGE", "the body is larger than the {limit} limit; send fewer or shorter inputs per request"),
    414: ("URI_TOO_LONG", "the URL is too long; put inputs in the body"),
    417: ("EXPECTATION_FAILED", "only `Expect: 100-continue` is supported"),
    431: ("HEADERS_TOO_LARGE", "the request headers are too large"),
    500: ("INTERNAL_ERROR", "internal error in the HTTP front; quote the request_id when reporting it"),
    501: ("NOT_IMPLEMENTED", "this transfer encoding or method is not supported; send the body plainly or chunked"),
    503: ("OVERLOADED", "the server is at its concurrency limit or restarting; retry shortly"),
}


# What nginx knows of a request it answers itself, as the request log's values (the model saw nothing: the rest are 0).
_LOG_VALUES = {"request_id": '"$request_id"', "route": '"$searchbox_route"', "status": "$status",
               "total_ms": "$searchbox_total_ms"}
# The app's own log lines start "<time> [<pid>] [INFO] searchbox.requests: " (container/serve.py's format).
_LOG_FORMAT = ("'$time_iso8601 [$pid] [INFO] " + request_logger.name + ": {"
               + ",".join(f'"{key}":{_LOG_VALUES.get(key, "0")}' for key in REQUEST_LOG_KEYS) + "}'")
# nginx's stderr, reopened by path: see _append_when_a_file
_ANSWER_LOG = "/dev/stderr"


@dataclass(frozen=True)
class ProxyPaths:
    run_dir: Path
    workers: int = 1  # one ready file each (container/workers.py): /ping is 200 only while all exist

    @property
    def socket(self) -> Path:
        return self.run_dir / SOCKET_NAME

    def ready_file(self, slot: int = 0) -> Path:
        """The file the worker in `slot` writes once warm (and removes when it drains)."""
        return self.run_dir / (READY_NAME if slot == 0 else f"{READY_NAME}-{slot}")

    @property
    def ready_files(self) -> list[Path]:
        return [self.ready_file(slot) for slot in range(self.workers)]

    @property
    def conf(self) -> Path:
        return self.run_dir / CONF_NAME

    @property
    def answers(self) -> Path:
        """nginx's log of the answers it makes itself: "<status> <route>" a line (AnswerLog reads it)."""
        return self.run_dir / ANSWERS_NAME

    @property
    def metrics(self) -> Path:
        """The workers' metric values, a file each (container/telemetry.py `share`)."""
        return self.run_dir / "metrics"


def find_nginx(configured: str | None) -> str | None:
    """The nginx binary: the configured path, else nginx on PATH, else Debian's /usr/sbin/nginx."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def inference_connections(settings: Settings, workers: int = 1) -> int:
    """Requests let into gunicorn at once: each worker's threads, less those kept for the control routes."""
    return workers * max(1, settings.threads - RESERVED_THREADS)


def render_conf(settings: Settings, paths: ProxyPaths) -> str:
    """The whole nginx.conf for this server's settings."""
    run = paths.run_dir
    hard_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    files = 65536 if hard_files == resource.RLIM_INFINITY else min(hard_files, 65536)
    connections = max(512, min(16384, files // 2 - 64))
    limit_mb = settings.max_payload_bytes / (1024 * 1024)
    # nginx waits for gunicorn's answer as long as the longest request may take, and a little more:
    # the app answers its own deadlines with a 503 itself. The same bound between two writes of a body to gunicorn:
    # an asynchronous endpoint's body of up to 1 GB is read by a worker that may be busy with the one before.
    read_timeout = int(max(settings.request_timeout_s, settings.batch_timeout_s)) + 30
    send_timeout = read_timeout if settings.async_mode else 60
    user = "user root root;" if os.geteuid() == 0 else ""
    logs = settings.request_log and settings.log_level in ("DEBUG", "INFO")
    answer_log = f"access_log {paths.answers} searchbox_count;" + (
        f"\n            access_log {_ANSWER_LOG} searchbox_answer;" if logs else "")
    error_locations = "\n".join(_error_location(status, code, detail.format(limit=f"{limit_mb:g} MiB",
                                                                           routes=routes.listed()), answer_log)
                                for status, (code, detail) in _ERRORS.items())
    # URI error pages, not named locations: nginx cannot redirect a request whose request line it could
    # not parse (400, 414) to a named location
    error_pages = "\n".join(f"        error_page {status} {_ERROR_PREFIX}{status};" for status in _ERRORS if status != 503)
    not_ready = "\n".join(_not_ready(ready) for ready in paths.ready_files)
    # Vertex AI's health route (AIP_HEALTH_ROUTE) is answered as /ping is, from the ready files
    readiness = "\n".join(_readiness(path, not_ready) for path in dict.fromkeys(
        ["/ping"] + ([settings.vertex_health_route] if settings.vertex_health_route else [])))
    return f"""\
# written by container/proxy.py at start; edit that, not this
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile {files};
{user}

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    # the answers nginx makes itself, logged in the request log's shape (only its error locations log)
    log_format searchbox_answer escape=json {_LOG_FORMAT};
    log_format searchbox_count '$status $searchbox_route';
    map $request_uri $searchbox_route {{
        default "unmatched";
{_route_map()}
    }}
    # $request_time is seconds with milliseconds ("0.012"): the log says milliseconds
    map $request_time $searchbox_total_ms {{
        "~^0\\.0*(?<searchbox_ms>\\d+)$" $searchbox_ms;
        "~^(?<searchbox_s>[1-9]\\d*)\\.(?<searchbox_s_ms>\\d+)$" $searchbox_s$searchbox_s_ms;
        default 0;
    }}
    server_tokens off;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    # a client must send its headers within 10 s and keep its body moving (each read within 20 s);
    # a request waits in nginx, never in a gunicorn thread, until it is whole
    client_header_timeout 10s;
    client_body_timeout 20s;
    send_timeout 60s;
    keepalive_timeout 75s;
    reset_timedout_connection on;
    client_max_body_size {settings.max_payload_bytes};
    client_body_buffer_size 1m;
    large_client_header_buffers 4 16k;

    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffer_size 64k;
    proxy_buffers 64 64k;
    proxy_busy_buffers_size 128k;
    proxy_max_temp_file_size {max(1024, int(settings.max_response_bytes / (1024 * 1024)) + 64)}m;
    proxy_connect_timeout 5s;
    proxy_send_timeout {send_timeout}s;
    proxy_read_timeout {read_timeout}s;
    # HTTP/1.1 with kept-alive connections to gunicorn: no unix-socket connection set up per request (in
    # bench/, 1 client x 1 text went from 0.84x to 1.0x the in-process limit, 15% less CPU per request)
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Request-Id $request_id;
    proxy_set_header X-Forwarded-For $remote_addr;

    upstream inference {{
        zone inference 64k;
        # past this many requests in gunicorn, nginx answers 503 at once: the threads left over keep
        # answering the routes that must never wait
        server unix:{paths.socket} max_conns={inference_connections(settings, paths.workers)};
        # closed by nginx before gunicorn's own keep-alive ends, so a reused connection is never closed under it
        keepalive 32;
        keepalive_timeout {UPSTREAM_KEEPALIVE_S}s;
    }}
    upstream control {{
        server unix:{paths.socket};
        keepalive 4;
        keepalive_timeout {UPSTREAM_KEEPALIVE_S}s;
    }}

    server {{
        listen {settings.port} backlog=4096 default_server;
{error_pages}
        error_page 494 =431 {_ERROR_PREFIX}431;
        error_page 502 503 504 =503 {_ERROR_PREFIX}503;

{readiness}
        # routes that must answer at any load go to the threads kept free of inference (container/routes.py)
        location ~ {routes.control_pattern()} {{
            proxy_pass http://control;
        }}
        location / {{
            proxy_pass http://inference;
        }}
{error_locations}
    }}
}}
"""


def _route_map() -> str:
    """nginx map entries from a request's path to its route, as the app labels it (a Flask rule; else "unmatched")."""
    patterns = {route.path: route.pattern for route in routes.routes()}
    return "\n".join(f'        "~^{pattern}(\\?|$)" "{rule}";' for rule, pattern in patterns.items())


def _append_when_a_file(fd: int) -> None:
    """nginx opens its access log by path, a description of its own: when stderr is a regular file, ours must append
    too, or our next line overwrites its lines."""
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    except OSError:
        pass  # closed or not ours to change: nothing of ours to overwrite


class AnswerLog:
    """The answers nginx made itself, from its answer log (`ProxyPaths.answers`): each read returns those logged since
    the last read by any reader of the same log (every worker has one: each answer is counted by one of them, and the
    workers' counts add up), following the log when it starts over (what the old file still held is read first).

    Where reading goes on from (the file's inode and the offset past its last whole line) is kept beside the log, in a
    file that is also the readers' lock."""

    def __init__(self, path: Path):
        self._path = path
        self._cursor = path.with_name(path.name + ".read")

    def new_answers(self) -> list[tuple[str, str]]:
        """(status, route) of each answer logged since the last read."""
        with open(self._cursor, "a+b") as cursor:
            fcntl.flock(cursor, fcntl.LOCK_EX)  # released when closed; a worker killed holding it releases it too
            cursor.seek(0)
            inode, _, offset = cursor.read().decode().partition(" ")
            data, inode, offset = self._read(int(inode) if inode else None, int(offset or 0))
            cursor.seek(0)
            cursor.truncate()
            cursor.write(f"{inode or ''} {offset}".encode())
        return [(status, route) for status, _, route in (line.decode().partition(" ") for line in data.splitlines())]

    def _read(self, inode: int | None, offset: int) -> tuple[bytes, int | None, int]:
        """The whole lines after `offset` in the log file `inode` (and, once the log started over, in the new one),
        and where the next read goes on from."""
        data = b""
        try:
            current = os.stat(self._path).st_ino
        except FileNotFoundError:
            current = None  # nginx has not started yet, or is between the rename and its reopen
        if inode is not None and inode != current:
            old = self._path.with_name(self._path.name + ".1")
            try:
                with open(old, "rb") as file:
                    if os.fstat(file.fileno()).st_ino == inode:
                        file.seek(offset)
                        data = _whole_lines(file.read())
            except FileNotFoundError:
                pass
            if current is None:
                return data, inode, offset + len(data)
            inode, offset = None, 0
        if current is None:
            return data, inode, offset
        with open(self._path, "rb") as file:
            if os.fstat(file.fileno()).st_ino != current:
                return data, inode, offset  # started over right now: read on next time
            file.seek(offset)
            more = _whole_lines(file.read())
        return data + more, current, offset + len(more)


def _whole_lines(data: bytes) -> bytes:
    """`data` up to its last newline: a line nginx is still writing is read when whole."""
    return data[:data.rfind(b"\n") + 1]


def _readiness(path: str, not_ready: str) -> str:
    """The location answering readiness on `path`: 200 once every worker's ready file exists, else 503."""
    return f"""\
        location = {path} {{
            default_type application/json;
            add_header X-Request-Id $request_id always;
{not_ready}
            return 200 '{{"status":"healthy"}}';
        }}"""


def _not_ready(ready_file: Path) -> str:
    """A /ping clause: 503 while `ready_file` is missing (a worker loading, restarting or stopping)."""
    return (f"            if (!-f {ready_file}) {{\n"
            f"                add_header X-Request-Id $request_id always;\n"
            f"                add_header Retry-After 2 always;\n"
            f"                return 503 '{{\"detail\":\"the model is loading (or the server is stopping); retry in a few "
            f"seconds\",\"code\":\"MODEL_LOADING\",\"request_id\":\"$request_id\"}}';\n"
            f"            }}")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: nginx then outlives a killed master, as any child would


def _error_location(status: int, code: str, detail: str, log: str) -> str:
    """The internal location answering `status` with the contract's JSON error; `log`: its access_log directive."""
    if "'" in detail or '"' in detail or "\\" in detail:
        raise ValueError(f"the {status} detail must hold no quotes or backslashes; this is a bug")
    retry = "            add_header Retry-After 1 always;\n" if status == 503 else ""
    body = f'{{"detail":"{detail}","code":"{code}","request_id":"$request_id"}}'
    return (f"        location = {_ERROR_PREFIX}{status} {{\n"
            f"            internal;\n"
            f"            {log}\n"
            f"            default_type application/json;\n"
            f"            add_header X-Request-Id $request_id always;\n{retry}"
            f"            return {status} '{body}';\n"
            f"        }}")


class Proxy:
    """The nginx process in front of gunicorn: started by the gunicorn master, stopped before it."""

    def __init__(self, binary: str, settings: Settings, paths: ProxyPaths):
        self._binary = binary
        self._settings = settings
        self._paths = paths
        self._process: subprocess.Popen | None = None

    def check(self) -> str | None:
        """Write the configuration and let nginx test it; the error when it refuses, else None."""
        self._paths.conf.write_text(render_conf(self._settings, self._paths))
        result = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True)
        return None if result.returncode == 0 else (result.stderr.strip() or f"nginx -t exited {result.returncode}")

    def start(self) -> None:
        # Its own session: a signal to the terminal's or the test's process group (Ctrl-C, killpg) reaches the
        # master, which stops nginx in order, instead of nginx dropping the requests in flight. Should the
        # master die without that (SIGKILL), the kernel sends nginx SIGTERM (PR_SET_PDEATHSIG).
        for fd in (1, 2):
            _append_when_a_file(fd)
        self._process = subprocess.Popen(self._command(), start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def process(self) -> subprocess.Popen | None:
        return self._process

    def rotate_answers(self, cap: int = ANSWER_LOG_CAP) -> bool:
        """Start the answer log over once it holds `cap` bytes (the old file kept as `.1` until the next time, for the
        workers to finish reading); whether it did."""
        path = self._paths.answers
        try:
            if path.stat().st_size < cap or self._process is None or self._process.poll() is not None:
                return False
        except FileNotFoundError:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
        self._process.send_signal(signal.SIGUSR1)  # nginx reopens its logs
        return True

    def stop_accepting(self) -> None:
        """nginx's graceful quit: close the port now, finish the requests in flight, then exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGQUIT)

    def wait(self, timeout: float) -> None:
        if self._process is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.terminate()
            try:
                self._process.wait(2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def _command(self, *extra: str) -> list[str]:
        return [self._binary, "-p", str(self._paths.run_dir), "-c", str(self._paths.conf), "-e", "stderr", *extra]
