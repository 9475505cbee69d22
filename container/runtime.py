"""The one place holding the server's mutable state: the model handler, whether it is ready, whether it drains.

The model loads on a background thread so the port answers `/ping` (503) from the first second;
it turns ready only after one warm-up inference has run. Readiness is also a file when the server runs
behind nginx (`ready_file`): nginx answers `/ping` from it without waiting on Python.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from container.errors import Unavailable
from container.settings import Settings
from container.telemetry import Telemetry
from model_handlers import load_handler

logger = logging.getLogger(__name__)


class ModelRuntime:
    def __init__(self, settings: Settings, on_load_failure: Callable[[BaseException], None] | None = None,
                 ready_file: Path | None = None,
                 proxy_answers: Callable[[], list[tuple[str, str]]] | None = None, shared_metrics: Path | None = None):
        """`shared_metrics`: where the server's workers keep their metrics for one another (container/telemetry.py)."""
        self._settings = settings
        self._on_load_failure = on_load_failure
        self._ready_file = ready_file
        self.telemetry = Telemetry(request_log=settings.request_log, proxy_answers=proxy_answers,
                                   shared=shared_metrics)
        self._handler = None
        self._ready = threading.Event()
        self._draining = threading.Event()
        self.telemetry.watch(lambda: self._handler.queue_depth if self._handler is not None else 0,
                             lambda: self.ready)
        self.load_error: str | None = None
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)

    def start(self) -> "ModelRuntime":
        self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        """Loaded, warm, and not draining: what /ping says."""
        return self._ready.is_set() and not self._draining.is_set()

    @property
    def loaded(self):
        """The handler once loaded (None before), whatever the readiness: for /health and /v1/models."""
        return self._handler

    @property
    def handler(self):
        """The loaded handler.

        Raises:
            Unavailable: the model is still loading (or failed to).
        """
        if self._draining.is_set():
            raise Unavailable("the server is shutting down; retry on another instance", code="SHUTTING_DOWN")
        if not self._ready.is_set():
            if self.load_error:
                raise Unavailable(f"the model failed to load: {self.load_error}", code="MODEL_LOAD_FAILED")
            raise Unavailable("the model is still loading; retry in a few seconds", code="MODEL_LOADING")
        return self._handler

    def _load(self) -> None:
        started = time.monotonic()
        settings = self._settings
        try:
            handler = load_handler(settings.model_dir, settings.handler_options(observer=self.telemetry))
            handler.warm_up()
        except BaseException as exc:
            self.load_error = str(exc) or type(exc).__name__
            logger.error("cannot serve %s: %s", settings.model_dir, self.load_error, exc_info=exc)
            if self._on_load_failure is not None:
                self._on_load_failure(exc)
            return
        self._handler = handler
        self.telemetry.load_seconds.set(time.monotonic() - started)
        self._ready.set()
        if self._ready_file is not None and not self._draining.is_set():
            self._ready_file.touch()
        logger.info("model %s (%s) ready in %.1f s", handler.model_name, handler.kind.name,
                    time.monotonic() - started)

    def drain(self) -> None:
        """SIGTERM: stop being ready; admitted work that fits in the grace period finishes, the rest is answered 503
        (Retry-After) at once."""
        self._draining.set()
        if self._ready_file is not None:
            self._ready_file.unlink(missing_ok=True)
        if self._handler is not None:
            grace = self._settings.graceful_timeout_s
            kept, refused = self._handler.drain(grace)
            logger.info("draining: %d queued request(s) kept to finish within the %.0f s grace (with those running), "
                        "%d refused with 503 and Retry-After", kept, grace, refused)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
