"""One engine under every host: an incoming request (route, body, the headers that matter) -> the rendered `Reply`.

The Flask app's inference routes (SageMaker, Azure ML custom container), azmlinfsrv's `score.py`, the artifact's
smoke test and few-shot training all answer through `Engine.answer`, so one request gets byte-identical answers
whichever way the image is deployed. Per request: admission once, before the body is read (a flood that cannot be
served costs no parsing or tokenizing); the body decoded into typed requests, each bound once to the served kind
(`Bound`: resolved, its operation spec and dialect looked up, checked against the kind and the limits); run; rendered.
A body spooled to disk (asynchronous mode) is the same loop over slices of its lines instead of one piece.
It is also the one place where a request the served kind does not answer is refused. What differs between
operations (inputs counted, answer sizes, what to send instead) is read from the registries
(model_handlers/operations, container/dialects), never branched on here.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

import orjson

from container import dialects, spooled
from container.dialects import JSON, Decoded, Records, TypedRequest, TypedResult, WireOperation, batch_transform, fields
from container.errors import (
    BadRequest, NotAcceptable, PayloadTooLarge, Reply, SearchboxError, UnsupportedMediaType, error_reply,
    from_handler_error, payload_too_large,
)
from container.settings import ENV_MAX_RESPONSE_MB, ENV_MODEL_DIR, Settings
from container.telemetry import RequestFigures
from model_handlers import operations
from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import HandlerError
from model_handlers.kinds import Kind
from model_handlers.memory import release_free_memory
from model_handlers.metering import Metering
from model_handlers.operations import OperationSpec

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
# AWS Marketplace's per-inference billing header: read on every 2xx of a real-time endpoint, never on an error.
METERING_HEADER = "X-Amzn-Inference-Metering"
# SageMaker inference components with adapters: the adapter a request is for (aws/model-hosting-container-standards,
# python/model_hosting_container_standards/sagemaker/lora/constants.py)
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
# After a body this large, what parsing and tokenizing it took is handed back to the system.
_LARGE_BODY = 1024 * 1024
# Records of one batch body run concurrently so that the model's batcher can pack them together.
_RECORD_THREADS = 8
# The model directory of an engine over a pipeline loaded by its caller (`Engine.loaded`): never read.
_LOADED = "(loaded by the caller)"
# What an Accept header may name to take any answer (the SageMaker toolkit's `content_types.ANY`).
_ANY = "*/*"


def _csv(body: bytes, decode: Callable[[Any], Decoded], kind: Kind, settings: Settings) -> Records:
    return batch_transform.decode_csv(body, kind, settings.max_inputs, settings.max_batch_rows,
                                      settings.csv_parameters())


def _jsonlines(body: bytes, decode: Callable[[Any], Decoded], kind: Kind, settings: Settings) -> Records:
    return batch_transform.decode_jsonlines(body, decode, settings.max_batch_rows)


# Batch bodies (media type -> decoder), taken only on the routes that take records (/invocations, /score).
_RECORD_DECODERS = {**dict.fromkeys(batch_transform.CSV_TYPES, _csv),
                    **dict.fromkeys(batch_transform.JSONLINES_TYPES, _jsonlines)}


@dataclass(frozen=True)
class Incoming:
    """One inference request as a host hands it over: what every host gives the engine alike.

    Attributes:
        decode: the route's JSON dialect (also applied to each JSON line).
        records: whether the route also takes batch bodies (CSV, JSON Lines).
        body: the raw body, or the stream to read it from (read only once the request is admitted).
        media_type: the Content-Type without parameters; None or empty reads as JSON.
        content_length: what Content-Length declares (None: not given, a chunked body).
        accept: the Accept header (None: any answer).
        adapter: the LoRA adapter SageMaker's adapter header names, for every request of the body.
        custom_attributes: SageMaker's CustomAttributes header (`searchbox-shape=<id>` names the body's shape).
        received: when the request arrived (time.monotonic()), before its body was read: its time budget runs from
            then (None: now).
        abandoned: true once the caller is gone (its connection closed): its work is then dropped.
    """

    decode: Callable[[Any], Decoded]
    records: bool
    body: bytes | IO[bytes]
    media_type: str | None = JSON
    content_length: int | None = None
    accept: str | None = None
    adapter: str | None = None
    custom_attributes: str | None = None
    received: float | None = None
    abandoned: Callable[[], bool] | None = None

    @classmethod
    def of(cls, request: Any, decode: Callable[[Any], Decoded], records: bool, body: bytes | IO[bytes],
           received: float | None = None) -> "Incoming":
        """From a werkzeug request (Flask's, azmlinfsrv's `AMLRequest`): the one place the headers are read."""
        headers = request.headers
        return cls(decode, records, body, request.mimetype, request.content_length, headers.get("Accept"),
                   headers.get(ADAPTER_HEADER) or None, headers.get(dialects.CUSTOM_ATTRIBUTES_HEADER), received,
                   client_gone(request.environ.get("gunicorn.socket")))


def client_gone(sock: socket.socket | None) -> Callable[[], bool] | None:
    """A check that the connection the request came on was closed (nginx closes it when its client leaves)."""
    if sock is None:
        return None

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


@dataclass(frozen=True)
class Bound:
    """One typed request bound to the served kind, once: resolved (the operation it asks filled in), its operation's
    spec looked up, checked; where it came from (errors are prefixed with it) and its encoding."""

    request: TypedRequest
    spec: OperationSpec
    origin: str
    encoding: Any = None

    @property
    def wire(self) -> WireOperation:
        """Its operation's dialect: looked up only where a batch answer's size is bounded before the model runs."""
        return dialects.named(self.spec.name)


# What a caller may watch of each answered part: its bound requests and their typed results (the smoke test sums up
# its sample's answer from them).
Observer = Callable[[Sequence[Bound], Sequence[TypedResult]], None]


class Engine:
    """Admits, decodes, binds, runs and renders every inference request, for every host.

    Args:
        settings: the limits and timeouts (read once at start).
        pipeline: the loaded model (`ModelRuntime.handler`'s getter: raises Unavailable while loading or draining).
    """

    def __init__(self, settings: Settings, pipeline: Callable[[], Any]):
        self._settings = settings
        self._pipeline = pipeline

    @classmethod
    def of(cls, runtime: Any, settings: Settings) -> "Engine":
        """The engine of a server's `ModelRuntime`."""
        return cls(settings, lambda: runtime.handler)

    @classmethod
    def loaded(cls, pipeline: Any, environ: Mapping[str, str] | None = None) -> "Engine":
        """The engine of a pipeline loaded outside a server (the artifact's smoke test, few-shot training), with the
        server's default limits, or those `environ` sets."""
        # the model is loaded already: only the limits are read, and no model directory is looked for
        return cls(Settings.from_env({ENV_MODEL_DIR: _LOADED, **(environ or {})}), lambda: pipeline)

    def answer(self, incoming: Incoming, observe: Observer | None = None) -> Reply:
        """The 200 reply to `incoming`; `observe`, when given, sees each answered part's bound requests and typed
        results before they are rendered.

        Raises:
            SearchboxError, HandlerError: what to tell the caller; `error_reply` renders either. Nothing has been sent
                when they are raised.
        """
        settings = self._settings
        pipeline = self._pipeline()  # 503 at once: loading, draining
        media_type = (incoming.media_type or JSON).lower()
        batch_body = incoming.records and media_type in _RECORD_DECODERS
        received = time.monotonic() if incoming.received is None else incoming.received
        # the time budget runs from the request's arrival: reading a slow client's body spends it too
        at, abandoned = received + settings.timeout_s(batch_body), incoming.abandoned or _never
        pipeline.admit(Deadline(at, abandoned))  # 503 (Retry-After) at once when the work queued ahead outlasts it
        deadline = Deadline(at, abandoned, admitted=True)
        decode = dialects.chosen(incoming.decode, incoming.custom_attributes)
        limit = settings.max_payload_bytes
        spooled.refuse_declared(incoming.content_length, limit)
        if isinstance(incoming.body, bytes):
            body = incoming.body
            if len(body) > limit:
                raise payload_too_large(limit)
        elif settings.async_mode and batch_body and media_type in batch_transform.JSONLINES_TYPES:
            with spooled.spool(incoming.body, limit) as file:
                return self._loop(_Spooled(file, decode, settings.max_batch_rows), pipeline, deadline, incoming,
                                  observe)
        else:
            body = spooled.read_body(incoming.body, limit)
        try:
            return self._loop(_Whole(self._decode(decode, body, media_type, incoming.records, pipeline.kind),
                                     batch_body), pipeline, deadline, incoming, observe)
        finally:
            if len(body) > _LARGE_BODY:
                release_free_memory()

    def reply(self, incoming: Incoming, request_id: str, observe: Observer | None = None) -> Reply:
        """Like `answer`, with the caller's errors rendered as replies instead of raised."""
        try:
            return self.answer(incoming, observe)
        except (SearchboxError, HandlerError) as exc:
            return error_reply(exc, request_id)

    def _loop(self, source: "_Whole | _Spooled", pipeline: Any, deadline: Deadline, incoming: Incoming,
              observe: Observer | None) -> Reply:
        """Every part of the body checked first (nothing runs for a body that is refused), then run and rendered."""
        settings = self._settings
        content_type = None
        estimate = 0
        kept = []
        for job in source.jobs():
            if content_type is None and source.answer_types:
                # a body in one piece is labelled as soon as it is decoded: a bad Accept is refused before its
                # requests are checked
                content_type = answer_type(incoming.accept, source.answer_types)
            bound = self._bind(job, pipeline, incoming.adapter)
            source.count(job)
            if source.batch:
                estimate += sum(b.wire.estimate(b.request, b.encoding, pipeline) for b in bound)
                if estimate > settings.max_response_bytes:
                    raise response_too_large(estimate, settings)
            if source.kept:
                kept.append((job, bound))
        if content_type is None:
            content_type = answer_type(incoming.accept, source.answer_types)
        parts = kept if source.kept else ((job, self._bind(job, pipeline, incoming.adapter)) for job in source.jobs())
        metering = pipeline.config.metering
        totals = RequestFigures()
        with source.answer() as answer:
            for job, bound in parts:
                timings = [Timing() for _ in bound]
                results = self._run(bound, job, pipeline, deadline, timings)
                if observe is not None:
                    observe(bound, results)
                answer.write(job.render(results))
                totals = totals.plus(request_figures(bound, results, timings, None))
                source.part_done()
            # billed on the body's totals, as an answer in one piece would be (a unit's rounding applies once)
            totals = dataclasses.replace(totals, units=metering.units(inputs=totals.inputs, tokens=totals.tokens)
                                         if metering else 0)
            body, headers = answer.finish()
            return Reply(200, body, content_type, {**figure_headers(totals, metering), **headers}, totals)

    def _bind(self, job: Records, pipeline: Any, adapter: str | None) -> list[Bound]:
        """The job's requests as the served kind reads them, each checked against the kind and the limits."""
        kind = pipeline.kind
        requests = [kind.resolve(request) for request in job.requests]
        if adapter:
            requests = [with_adapter(request, adapter) for request in requests]
        encodings = job.encodings
        bound = []
        for index, (request, origin) in enumerate(zip(requests, job.origins)):
            try:
                check_operation(request, kind, pipeline.model_name)
                spec = operations.named(request.operation)
                check_limits(request, spec, self._settings)
            except SearchboxError as exc:
                raise _at(exc, origin) from None
            bound.append(Bound(request, spec, origin, encodings[index] if index < len(encodings) else None))
        return bound

    def _decode(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str, records: bool,
                kind: Kind) -> Records:
        """The body's typed requests, by its media type."""
        if media_type == JSON or media_type.endswith("+json"):
            decoded = fields.decode_body(decode, body)
            if isinstance(decoded, Records):
                return decoded  # a dialect whose one body is several requests (Vertex AI's instances)
            return Records([decoded.request], [""],
                           lambda results: orjson.dumps(decoded.render(results[0]), option=_JSON_OPTIONS),
                           encodings=[decoded.encoding])
        if records and media_type in _RECORD_DECODERS:
            return _RECORD_DECODERS[media_type](body, decode, kind, self._settings)
        supported = [JSON, *_RECORD_DECODERS] if records else [JSON]
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported here; send one of "
                                   f"{', '.join(supported)}", code="UNSUPPORTED_MEDIA_TYPE")

    def _run(self, bound: Sequence[Bound], job: Records, pipeline: Any, deadline: Deadline,
             timings: list[Timing]) -> list[TypedResult]:
        if len(bound) <= 1 or not job.concurrent:
            return [_run_one(pipeline, b, deadline, timing) for b, timing in zip(bound, timings)]
        # once one record fails, the body fails: the others' work is for nobody and is dropped
        failed = threading.Event()
        shared = Deadline(deadline.at, lambda: failed.is_set() or deadline.abandoned(), admitted=deadline.admitted)
        with ThreadPoolExecutor(min(_RECORD_THREADS, len(bound)), thread_name_prefix="records") as pool:
            futures = [pool.submit(_run_one, pipeline, b, shared, timing) for b, timing in zip(bound, timings)]
            try:
                return [future.result() for future in futures]
            except BaseException:
                failed.set()
                raise
            finally:
                for future in futures:
                    future.cancel()


def _run_one(pipeline: Any, bound: Bound, deadline: Deadline, timing: Timing) -> TypedResult:
    try:
        return pipeline.run(bound.request, deadline, timing, spec=bound.spec)
    except (SearchboxError, HandlerError) as exc:
        raise _at(exc, bound.origin) from None


def _never() -> bool:
    return False


# --- where a body's parts come from, and where its answer goes -----------------------------------------


class _Whole:
    """A body held in memory: one part, decoded once and kept for the run; the answer is bytes."""

    kept = True

    def __init__(self, job: Records, batch: bool):
        self._job = job
        self.batch = batch  # a batch body: its answer's size is checked before the model runs
        self.answer_types = job.answer_types

    def jobs(self) -> Iterator[Records]:
        yield self._job

    def count(self, job: Records) -> None:
        pass  # its decoder bounded its rows

    def answer(self) -> "_InMemory":
        return _InMemory()

    def part_done(self) -> None:
        pass


class _Spooled:
    """A JSON Lines body spooled to disk (container/spooled.py): its slices of lines, decoded again for the run rather
    than held; the answer is written to disk and streamed out."""

    kept = False
    batch = True

    def __init__(self, body: IO[bytes], decode: Callable[[Any], Decoded], max_rows: int):
        self._body = body
        self._decode = decode
        self._max_rows = max_rows
        self.answer_types: Sequence[str] = ()  # known once every line is counted
        self._lines = self._slice_lines = 0

    def jobs(self) -> Iterator[Records]:
        self._lines = 0
        for first, piece in spooled.slices(self._body):
            self._slice_lines = len(batch_transform.split_lines(piece))
            yield batch_transform.decode_jsonlines(piece, self._decode, self._max_rows, first)
        self.answer_types = batch_transform.answer_types(self._lines)

    def count(self, job: Records) -> None:
        """The body's lines so far, the slice just checked included (a slice's decoder bounds only its own)."""
        self._lines += self._slice_lines
        if self._lines > self._max_rows:
            raise batch_transform.too_many_rows(self._max_rows)

    def answer(self) -> "_OnDisk":
        return _OnDisk()

    def part_done(self) -> None:
        release_free_memory()


class _InMemory:
    def __init__(self):
        self._parts: list[bytes] = []

    def __enter__(self) -> "_InMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def write(self, part: bytes) -> None:
        self._parts.append(part)

    def finish(self) -> tuple[bytes, dict[str, str]]:
        return (self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)), {}


class _OnDisk:
    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="searchbox-answer-")

    def __enter__(self) -> "_OnDisk":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is not None:  # refused or failed: nothing will stream it out
            self._file.close()

    def write(self, part: bytes) -> None:
        self._file.write(part)

    def finish(self) -> tuple[Any, dict[str, str]]:
        return spooled.stream_file(self._file), {"Content-Length": str(self._file.tell())}


def answer_type(accept: str | None, offered: Sequence[str]) -> str:
    """The media type to answer with, as the SageMaker inference toolkit chooses it: no Accept (or `*/*`) takes the
    answer's own type; otherwise the first type the client lists that the answer can be (parameters such as `q` are
    ignored; `*/*` and `type/*` match).

    Raises:
        NotAcceptable: the client lists none of them (406, as the toolkit refuses an unsupported Accept).
    """
    if not accept or accept.strip() == _ANY:
        return offered[0]
    for listed in accept.replace(" ", "").lower().split(","):
        wanted = listed.split(";", 1)[0]
        for media in offered:
            if wanted in (media, _ANY) or (wanted.endswith("/*") and media.startswith(wanted[:-1])):
                return media
    raise NotAcceptable(f"Accept {accept!r} names no type this answer can be; accept one of {', '.join(offered)}",
                        code="NOT_ACCEPTABLE")


def request_figures(bound: Sequence[Bound], results: Sequence[TypedResult], timings: Sequence[Timing],
                    metering: Metering | None) -> RequestFigures:
    """What an answered body cost, from the exact usage it reports: inputs (or documents) of the operations that are
    metered, tokens, metered units."""
    inputs = sum(b.spec.inputs(b.request) for b in bound if b.spec.metered)
    tokens = sum(result.total_tokens for result in results)
    return RequestFigures(inputs=inputs, tokens=tokens,
                          units=metering.units(inputs=inputs, tokens=tokens) if metering else 0,
                          queue_s=max((t.queue_s for t in timings), default=0.0),
                          forward_s=sum(t.forward_s for t in timings))


def figure_headers(figures: RequestFigures, metering: Metering | None) -> dict[str, str]:
    """The answer's own figures as headers: AWS Marketplace metering (when sold per inference), and the compute
    figures TEI's clients know (`x-compute-tokens`, `x-queue-time`, `x-inference-time`, milliseconds)."""
    headers = {"X-Compute-Tokens": str(figures.tokens), "X-Queue-Time": str(round(figures.queue_s * 1000)),
               "X-Inference-Time": str(round(figures.forward_s * 1000))}
    if metering is not None:
        headers[METERING_HEADER] = orjson.dumps({"Dimension": "inference.count",
                                                 "ConsumedUnits": figures.units}).decode()
    return headers


def with_adapter(request: TypedRequest, adapter: str) -> TypedRequest:
    """The request for the adapter SageMaker's header names; a body naming another one is refused, not overridden."""
    if request.adapter is not None and request.adapter != adapter:
        raise BadRequest(f"the {ADAPTER_HEADER} header names adapter {adapter!r} and the body names "
                         f"{request.adapter!r}; name one", code="CONFLICTING_ADAPTERS")
    return dataclasses.replace(request, adapter=adapter)


def check_operation(request: TypedRequest, kind: Kind, model_name: str) -> None:
    """The one place a request the served kind does not answer is refused, naming what it does answer and how.

    `request` asks for an operation (`kind.resolve` gives an embeddings body that names none the kind's own form).
    """
    if kind.answers(request.operation):
        return
    asked = operations.named(request.operation)
    instead = "; or ".join(dialects.named(name).hint for name in sorted(kind.operations))
    serves = f"model {model_name} is {kind.summary}"
    if asked.embeddings and kind.embedding_operation is not None:
        serves += f", {operations.named(kind.embedding_operation).form}"
    raise BadRequest(f"{serves}: it does not answer {asked.noun} requests. Send {instead}",
                     code="UNSUPPORTED_OPERATION")


def response_too_large(estimate: int, settings: Settings) -> PayloadTooLarge:
    cap_mb = settings.max_response_bytes / (1024 * 1024)
    return PayloadTooLarge(
        f"the answer to this body would take about {estimate / (1024 * 1024):.0f} MiB, over the {cap_mb:g} MiB "
        f"cap on one batch answer ({ENV_MAX_RESPONSE_MB}); send fewer rows per request (a smaller "
        "MaxPayloadInMB), or fewer dimensions", code="RESPONSE_TOO_LARGE")


def check_limits(request: TypedRequest, spec: OperationSpec, settings: Settings) -> None:
    count = spec.inputs(request)
    if count > settings.max_inputs:
        raise BadRequest(
            f"the request has {count} {spec.input_word}; at most {settings.max_inputs} are allowed per request, "
            "split it into several requests", code="TOO_MANY_INPUTS")


def _at(exc: SearchboxError | HandlerError, origin: str) -> SearchboxError:
    """The error with where it happened ("line 3: ...") in front of its detail."""
    error = exc if isinstance(exc, SearchboxError) else from_handler_error(exc)
    if origin:
        # each error object belongs to the one request that raised it: prefixing in place is safe
        error.detail = f"{origin}: {error.detail}"
    return error
