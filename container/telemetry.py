"""Seeing into the endpoint: Prometheus metrics, one JSON log line per request, and the per-request figures.

Each worker counts what it answers; nginx routes `/metrics` to whichever worker's reserved threads are free. Under
`serve` every worker keeps its values in files of one directory (prometheus-client's multiprocess mode: `share`, made
fresh by the master before the workers fork), and a scrape reads them all, so `/metrics` says the same whichever
worker answers, and counts stay counted when a worker dies and is forked again. In one process (tests, Azure ML's
score.py) the values stay in memory. The answers nginx makes itself are logged by nginx (the same line) and counted
into `searchbox_requests_total` from its answer log (container/proxy.py), each by the one worker that reads it. The log
line says what a request cost and how long it took, never what it held: no input text, no image bytes (buyers are
promised their data is not kept).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

request_logger = logging.getLogger("searchbox.requests")
# The keys of a request's log line, in order: the app's lines and nginx's (container/proxy.py, for the answers it
# makes itself) have the same shape.
REQUEST_LOG_KEYS = ("request_id", "route", "status", "inputs", "tokens", "units", "queue_ms", "forward_ms", "total_ms")

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# prometheus-client's switch to multiprocess mode, read by its value files
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker writes its queue depth and readiness to its files for the others' scrapes (its own scrape writes
# them first): a file holds a value, not a function to call.
_SHARED_GAUGES_S = 1.0


def share(directory: Path) -> None:
    """In the master, before any worker forks: the workers keep their values in files in `directory` (made here,
    empty), for any one of them to read all (`Telemetry(shared=directory)`)."""
    directory.mkdir(mode=0o700)
    os.environ[ENV_MULTIPROC_DIR] = str(directory)


def worker_gone(pid: int, directory: Path) -> None:
    """In the master, when a worker exits: its gauges leave the figures (its counts stay counted)."""
    mark_process_dead(pid, str(directory))


@dataclass(frozen=True)
class RequestFigures:
    """What one answered request cost: its inputs (or documents), tokens, metered units, and where its time went."""

    inputs: int = 0
    tokens: int = 0
    units: int = 0
    queue_s: float = 0.0
    forward_s: float = 0.0

    def plus(self, other: "RequestFigures") -> "RequestFigures":
        """The figures of a body answered in parts: counts and forward time add up, the longest wait is kept."""
        return RequestFigures(self.inputs + other.inputs, self.tokens + other.tokens, self.units + other.units,
                              max(self.queue_s, other.queue_s), self.forward_s + other.forward_s)


class Telemetry:
    """The worker's metrics registry and request log; also the batcher's observer (model_handlers.batching)."""

    def __init__(self, request_log: bool = True,
                 proxy_answers: Callable[[], list[tuple[str, str]]] | None = None, shared: Path | None = None):
        """`proxy_answers`: the (status, route) of answers made in front of the worker (nginx's) since the last call,
        counted into `searchbox_requests_total` when scraped. `shared`: the directory `share` made, when this is one
        of several worker processes; None: this process alone."""
        if shared is not None and values.ValueClass is values.MutexValue:
            # prometheus-client chose in-memory values when the master imported it, before `share` ran
            values.ValueClass = values.MultiProcessValue()
        self.registry = CollectorRegistry()
        self._request_log = request_log
        self._proxy_answers = proxy_answers
        self._shared = shared
        self._watched: tuple[Callable[[], int], Callable[[], bool]] | None = None
        registry = self.registry
        self.requests = Counter("searchbox_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("searchbox_request_duration_seconds", "Time from the body received to the answer",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.inputs = Counter("searchbox_inputs", "Inputs embedded and documents reranked", ["route"],
                              registry=registry)
        self.tokens = Counter("searchbox_tokens", "Tokens the model processed (the usage answers report)", ["route"],
                              registry=registry)
        self.units = Counter("searchbox_metered_units", "Units reported in X-Amzn-Inference-Metering", registry=registry)
        self.batch_inputs = Histogram("searchbox_batch_inputs", "Inputs (sequences) in one forward pass",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry)
        self.batch_tokens = Histogram("searchbox_batch_padded_tokens", "Padded tokens (longest x count) of one pass",
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536), registry=registry)
        self.forward = Histogram("searchbox_forward_seconds", "Duration of one forward pass",
                                 buckets=_PASS_BUCKETS, registry=registry)
        self.queue_wait = Histogram("searchbox_queue_wait_seconds", "Time a request waited for its first pass",
                                    buckets=_PASS_BUCKETS + (30, 60), registry=registry)
        # across workers: the inputs of all, ready only when every one is, the slowest load
        self.queue_depth = Gauge("searchbox_queue_depth", "Inputs queued or running in the batcher", registry=registry,
                                 multiprocess_mode="livesum")
        self.ready = Gauge("searchbox_ready", "1 once the model is loaded and warm, 0 before and while draining",
                           registry=registry, multiprocess_mode="livemin")
        self.load_seconds = Gauge("searchbox_model_load_seconds", "Seconds from start to ready (load and warm-up)",
                                  registry=registry, multiprocess_mode="livemax")

    # --- the batcher's observer (called on its thread) -------------------------------------------------

    def pass_ran(self, items: int, padded_tokens: int, seconds: float) -> None:
        self.batch_inputs.observe(items)
        self.batch_tokens.observe(padded_tokens)
        self.forward.observe(seconds)

    def waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    # --- the server's side ---------------------------------------------------------------------------

    def watch(self, queue_depth: Callable[[], int], ready: Callable[[], bool]) -> None:
        """Read the queue depth and readiness when scraped, never stale; shared, this worker's are also written every
        `_SHARED_GAUGES_S` for the scrapes other workers answer."""
        if self._shared is None:
            self.queue_depth.set_function(lambda: float(queue_depth()))
            self.ready.set_function(lambda: 1.0 if ready() else 0.0)
            return
        self._watched = (queue_depth, ready)
        self._write_gauges()
        threading.Thread(target=self._keep_writing_gauges, name="metrics-gauges", daemon=True).start()

    def _write_gauges(self) -> None:
        if self._watched is not None:
            queue_depth, ready = self._watched
            self.queue_depth.set(float(queue_depth()))
            self.ready.set(1.0 if ready() else 0.0)

    def _keep_writing_gauges(self) -> None:
        while True:
            time.sleep(_SHARED_GAUGES_S)
            self._write_gauges()

    def record(self, route: str, status: int, seconds: float, figures: RequestFigures | None,
               request_id: str) -> None:
        """Count one answered request and log its line (never any of its content)."""
        figures = figures or RequestFigures()
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status < 300:
            self.inputs.labels(route).inc(figures.inputs)
            self.tokens.labels(route).inc(figures.tokens)
            self.units.inc(figures.units)
        if self._request_log and request_logger.isEnabledFor(logging.INFO):
            values = (request_id, route, status, figures.inputs, figures.tokens, figures.units,
                      round(figures.queue_s * 1000, 1), round(figures.forward_s * 1000, 1), round(seconds * 1000, 1))
            request_logger.info("%s", orjson.dumps(dict(zip(REQUEST_LOG_KEYS, values, strict=True))).decode())

    def exposition(self) -> bytes:
        if self._proxy_answers is not None:
            for status, route in self._proxy_answers():
                self.requests.labels(route, status).inc()
        if self._shared is None:
            return generate_latest(self.registry)
        self._write_gauges()
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, str(self._shared))
        return generate_latest(every_worker)
