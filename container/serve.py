"""`serve`: the entry point SageMaker runs. Reads settings once, checks the model, starts gunicorn.

One gunicorn worker holds the one copy of the weights; its threads accept requests and the
handler's batcher gathers their inputs. The master imports no torch: the app (and the model) load
in the worker after fork.
"""

from __future__ import annotations

import logging
import os
import sys

from gunicorn.app.base import BaseApplication

from container.settings import Settings, SettingsError, apply_library_environment
from model_handlers import read_serving_config
from model_handlers.errors import ModelDirectoryError

logger = logging.getLogger("searchbox")

# gunicorn halts the whole server when a worker exits with this code, instead of respawning it.
_WORKER_BOOT_ERROR = 3


class SearchboxServer(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        self._runtime = None  # set in the worker by load()
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        for key, value in {
            "bind": [f"0.0.0.0:{s.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": s.threads,
            # the worker's main loop keeps its heartbeat while the model loads on a thread
            "timeout": 120,
            "graceful_timeout": s.graceful_timeout_s,
            # longer than the load balancers' idle timeout, so they never see a closed connection
            "keepalive": 75,
            "backlog": 2048,
            "loglevel": s.log_level.lower(),
            "errorlog": "-",
            "accesslog": "-" if s.log_level == "DEBUG" else None,
            "proc_name": "searchbox",
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            # runs in the worker after its last request: let a running forward pass finish before
            # the interpreter tears down under it (libgomp aborts with SIGABRT otherwise)
            "worker_exit": lambda server, worker: self._runtime and self._runtime.close(),
        }.items():
            self.cfg.set(key, value)

    def load(self):
        from container.app import create_app
        from container.runtime import ModelRuntime

        self._runtime = ModelRuntime(self.settings, on_load_failure=lambda exc: os._exit(_WORKER_BOOT_ERROR))
        return create_app(self.settings, self._runtime.start())


def main(argv: list[str] | None = None) -> int:
    """Run the server; `serve` ignores extra arguments (SageMaker passes `serve` itself)."""
    apply_library_environment()
    logging.basicConfig(level=os.environ.get("SEARCHBOX_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        logger.error("bad setting: %s", exc)
        return 2
    logger.info("model: %s (%s)", settings.model_dir, settings.model_source)
    try:
        config = read_serving_config(settings.model_dir, allow_pickle=settings.allow_pickle,
                                     fallback_name=settings.model_name)
    except ModelDirectoryError as exc:
        logger.error("cannot serve %s: %s", settings.model_dir, exc.detail)
        return 1
    logger.info("serving %s model %s on port %d", config.kind.value, config.served_model_name, settings.port)
    SearchboxServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
