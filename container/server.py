"""The process tree `serve` runs: nginx on the port, the gunicorn master, gunicorn workers with the model.

    nginx (port 8080)  --unix socket-->  gunicorn master  --fork-->  worker: Flask app + model + batcher

One worker, or one per GPU (container/workers.py): each in its slot, pinned to its device; a worker that dies
is forked again into the slot it left, so the same device loads again and the others go on serving.

The master imports no torch: the app (and the model) load in the worker after fork. nginx is started by
the master once its socket listens and stopped after the worker; if nginx dies, the master stops too (an
endpoint that no longer listens must not look alive).

Shutdown (SIGTERM from SageMaker, Kubernetes, `docker stop`): nginx quits gracefully (its port closes at
once, requests in flight go on); the worker drains (the ready file goes, so `/ping` says 503; admitted work
that fits in `graceful_timeout_s` by its measured cost finishes, the rest is answered 503 with Retry-After at
once); then everything exits, within SageMaker's and Kubernetes' 30 s.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from container.errors import refused_by_worker
from container.proxy import UPSTREAM_KEEPALIVE_S, AnswerLog, Proxy, ProxyPaths
from container.settings import Settings
from container.telemetry import share, worker_gone
from container.workers import Slot
from model_handlers.memory import limit_arenas

logger = logging.getLogger("searchbox")

# gunicorn halts the whole server when a worker exits with this code, instead of respawning it.
WORKER_BOOT_ERROR = 3
# after the worker is gone, how long nginx gets to hand the last answers on before it is killed
_PROXY_EXIT_S = 5.0
# How often the master looks at the size of nginx's answer log (container/proxy.py).
_ANSWER_LOG_CHECK_S = 10.0


class SearchboxServer(BaseApplication):
    def __init__(self, settings: Settings, proxy: Proxy, paths: ProxyPaths, slots: list[Slot] | None = None):
        self.settings = settings
        self.proxy = proxy
        self.paths = paths
        self.slots = slots or [Slot(0, settings.device)]
        self.slot = self.slots[0]  # in a worker: its own, set after the fork (post_fork)
        self.runtime = None  # set in the worker by load()
        share(paths.metrics)  # before any worker forks: /metrics then reads every worker's figures
        super().__init__()

    def _take_slot(self, arbiter: Arbiter, worker) -> None:
        """In the master, before a fork: the new worker takes the lowest slot no living worker holds."""
        held = {w.searchbox_slot for w in arbiter.WORKERS.values() if hasattr(w, "searchbox_slot")}
        worker.searchbox_slot = next(slot for slot in self.slots if slot not in held)

    def _enter_slot(self, arbiter: Arbiter, worker) -> None:
        """In the worker, after the fork: its slot's device and cores, before the model loads."""
        self.slot = worker.searchbox_slot
        self.slot.pin()
        logger.info("worker %d serves slot %d on %s%s", os.getpid(), self.slot.index, self.slot.device,
                    f" (cores {','.join(map(str, self.slot.cores))})" if self.slot.cores else "")

    def _left_slot(self, arbiter: Arbiter, worker) -> None:
        # a worker that died (killed, crashed) is not ready, whatever its file said
        slot = getattr(worker, "searchbox_slot", None)
        self.paths.ready_file(slot.index if slot else 0).unlink(missing_ok=True)
        worker_gone(worker.pid, self.paths.metrics)

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": [f"unix:{self.paths.socket}"],
            "workers": len(self.slots),
            "worker_class": SearchboxWorker,
            "threads": s.threads,
            # the worker's main loop keeps its heartbeat while the model loads on a thread
            "timeout": 120,
            # the worker's own bound; it drains well before: queued work at once, running work in graceful_timeout_s
            "graceful_timeout": int(s.graceful_timeout_s) + 5,
            # longer than nginx's upstream keepalive_timeout (proxy.py): nginx closes an idle connection first
            "keepalive": UPSTREAM_KEEPALIVE_S + 10,
            "backlog": 2048,
            "loglevel": s.log_level.lower(),
            "errorlog": "-",
            "accesslog": "-" if s.log_level == "DEBUG" else None,
            "proc_name": "searchbox",
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            # no management socket in $HOME: nothing but nginx talks to this server
            "control_socket_disable": True,
            "pre_fork": self._take_slot,
            "post_fork": self._enter_slot,
            "child_exit": self._left_slot,
            # runs in the worker after its last request: let a running forward pass finish before
            # the interpreter tears down under it (libgomp aborts with SIGABRT otherwise)
            "worker_exit": lambda server, worker: self.runtime and self.runtime.close(),
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from container.app import create_app
        from container.runtime import ModelRuntime

        settings = self.slot.settings(self.settings)
        self.runtime = ModelRuntime(settings, on_load_failure=lambda exc: os._exit(WORKER_BOOT_ERROR),
                                    ready_file=self.paths.ready_file(self.slot.index),
                                    proxy_answers=AnswerLog(self.paths.answers).new_answers,
                                    shared_metrics=self.paths.metrics)
        return create_app(settings, self.runtime.start())

    def run(self) -> None:
        SearchboxArbiter(self).run()


class SearchboxArbiter(Arbiter):
    """gunicorn's master, with nginx started beside it and stopped before its workers."""

    def start(self) -> None:
        super().start()
        self.app.proxy.start()
        threading.Thread(target=self._watch_proxy, name="proxy-watch", daemon=True).start()
        threading.Thread(target=self._rotate_answers, name="answer-log", daemon=True).start()
        logger.info("nginx listens on port %d in front of gunicorn", self.app.settings.port)

    def stop(self, graceful: bool = True) -> None:
        self.app.proxy.stop_accepting()
        super().stop(graceful)
        self.app.proxy.wait(_PROXY_EXIT_S)

    def _rotate_answers(self) -> None:
        while self.app.proxy.process is not None and self.app.proxy.process.poll() is None:
            time.sleep(_ANSWER_LOG_CHECK_S)
            self.app.proxy.rotate_answers()

    def _watch_proxy(self) -> None:
        process = self.app.proxy.process
        code = process.wait()
        if self.LISTENERS:  # not our own stop: nginx died under a running server
            logger.error("nginx exited with %s; stopping the server", code)
            os.kill(self.pid, signal.SIGTERM)


class SearchboxWorker(ThreadWorker):
    """gunicorn's gthread worker, with SIGTERM draining the model's queue, and its own errors in the contract's JSON."""

    def init_process(self) -> None:
        limit_arenas()  # before the model loads: see model_handlers/memory.py
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGTERM, self._drain_and_exit)
        signal.siginterrupt(signal.SIGTERM, False)

    def _drain_and_exit(self, signum, frame) -> None:
        runtime = self.app.runtime
        if runtime is not None:
            runtime.drain()
        self.handle_exit(signum, frame)

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's classification and logging, then the contract's JSON instead of its HTML page."""
        page = _CapturedResponse()
        super().handle_error(req, page, addr, exc)
        status, _, reason = page.status_line().partition(" ")
        body = refused_by_worker(status, reason, exc, uuid.uuid4().hex)
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        try:
            util.write_nonblock(client, head + body)
        except OSError:
            logger.debug("could not send an error answer")


class _CapturedResponse:
    """Stands in for the client socket while gunicorn writes its HTML error page, to read its status line."""

    def __init__(self) -> None:
        self._data = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self._data += data

    def send(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def status_line(self) -> str:
        first = self._data.split(b"\r\n", 1)[0].decode("latin-1")
        return first.partition(" ")[2] or "500 Internal Server Error"
