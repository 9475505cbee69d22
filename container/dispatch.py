"""One answer for every host: (the route's JSON dialect, body bytes, media type, Accept) -> status, headers, body.

The Flask routes (SageMaker, Azure ML custom container) and azmlinfsrv's `score.py` both answer
through `Dispatcher`, so one request gets byte-identical bodies whichever way the image is deployed.
It is also the one place where a request the served kind does not answer is refused. What differs between
operations (inputs counted, answer sizes, what to send instead) is read from the registries
(model_handlers/operations, container/dialects), never branched on here.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, Sequence

import orjson

from container import dialects, spooled
from container.dialects import JSON, Decoded, Records, TypedRequest, TypedResult, batch_transform, fields
from container.errors import (
    BadRequest, NotAcceptable, PayloadTooLarge, Reply, SearchboxError, UnsupportedMediaType, error_reply,
    from_handler_error, payload_too_large,
)
from container.runtime import ModelRuntime
from container.settings import ENV_MAX_RESPONSE_MB, Settings
from container.telemetry import RequestFigures
from model_handlers import operations
from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import HandlerError
from model_handlers.kinds import Kind
from model_handlers.memory import release_free_memory
from model_handlers.metering import Metering

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


class Dispatcher:
    """Decodes a body by its media type, runs its typed requests through the model, renders the answer."""

    def __init__(self, settings: Settings, runtime: ModelRuntime):
        self._settings = settings
        self._runtime = runtime

    def answer(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, *,
               records: bool = False, accept: str | None = None, abandoned: Callable[[], bool] | None = None,
               adapter: str | None = None, received: float | None = None) -> Reply:
        """The 200 reply to `body`.

        Args:
            decode: the route's JSON dialect (also applied to each JSON line).
            body: the raw request body.
            media_type: the Content-Type without parameters; None or empty reads as JSON.
            records: whether the route also takes batch bodies (CSV, JSON Lines).
            accept: the request's Accept header (None: any answer).
            abandoned: true once the caller is gone (its connection closed): its work is then dropped.
            adapter: the LoRA adapter SageMaker's adapter header names, for every request of the body.
            received: when the request arrived (time.monotonic()), before its body was read: its time budget
                runs from then (None: now).

        Raises:
            SearchboxError, HandlerError: what to tell the caller; `error_reply` renders either.
        """
        try:
            return self._answer(decode, body, media_type, records, accept, abandoned, adapter,
                                time.monotonic() if received is None else received)
        finally:
            if len(body) > _LARGE_BODY:
                release_free_memory()

    def answer_spooled(self, decode: Callable[[Any], Decoded], body: IO[bytes], *, accept: str | None = None,
                       abandoned: Callable[[], bool] | None = None, adapter: str | None = None,
                       received: float | None = None) -> Reply:
        """The 200 reply to a JSON Lines body spooled to disk (container/spooled.py): every line checked first, then
        run a slice at a time, the answer written to disk and streamed out.

        Raises:
            SearchboxError, HandlerError: as `answer`; nothing has been sent when they are raised.
        """
        received = time.monotonic() if received is None else received
        settings = self._settings
        handler = self._runtime.handler
        lines = estimate = 0
        for first, piece in spooled.slices(body):
            job = batch_transform.decode_jsonlines(piece, decode, settings.max_batch_rows, first)
            requests = self._checked(job, adapter)
            lines += len(batch_transform.split_lines(piece))
            if lines > settings.max_batch_rows:
                raise batch_transform.too_many_rows(settings.max_batch_rows)
            estimate += answer_size(requests, job.encodings, handler)
            if estimate > settings.max_response_bytes:
                raise response_too_large(estimate, settings)
        content_type = answer_type(accept, batch_transform.answer_types(lines))
        deadline = Deadline(received + settings.timeout_s(True), abandoned or (lambda: False))
        answer = tempfile.TemporaryFile(prefix="searchbox-answer-")
        totals = RequestFigures()
        try:
            for first, piece in spooled.slices(body):
                job = batch_transform.decode_jsonlines(piece, decode, settings.max_batch_rows, first)
                requests = self._checked(job, adapter)
                timings = [Timing() for _ in requests]
                results = self._run(requests, job, deadline, timings)
                answer.write(job.render(results))
                totals = totals.plus(request_figures(requests, results, timings, handler.config.metering))
                release_free_memory()
        except BaseException:
            answer.close()
            raise
        metering = handler.config.metering
        # billed on the body's totals, as an answer in one piece would be (a unit's rounding applies once)
        totals = dataclasses.replace(totals, units=metering.units(inputs=totals.inputs, tokens=totals.tokens)
                                     if metering else 0)
        headers = {**figure_headers(totals, metering), "Content-Length": str(answer.tell())}
        return Reply(200, spooled.stream_file(answer), content_type, headers, totals)

    def admit(self, media_type: str | None, *, records: bool = False, received: float | None = None) -> None:
        """Refuse at once, before the body is even read, when the work queued ahead would outlast this request.

        A flood of requests that cannot be served then costs no parsing or tokenizing either.

        Raises:
            SearchboxError, HandlerError: loading, draining (503), or overloaded (503 with Retry-After).
        """
        batch_body = records and (media_type or "").lower() in _RECORD_DECODERS
        start = time.monotonic() if received is None else received
        self._runtime.handler.admit(Deadline(start + self._settings.timeout_s(batch_body)))

    def reply(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, request_id: str, *,
              records: bool = False, accept: str | None = None) -> Reply:
        """Like `answer`, with the caller's errors rendered as replies instead of raised."""
        try:
            return self.answer(decode, body, media_type, records=records, accept=accept)
        except (SearchboxError, HandlerError) as exc:
            return error_reply(exc, request_id)

    def _answer(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, records: bool,
                accept: str | None, abandoned: Callable[[], bool] | None, adapter: str | None,
                received: float) -> Reply:
        settings = self._settings
        handler = self._runtime.handler
        if len(body) > settings.max_payload_bytes:
            raise payload_too_large(settings.max_payload_bytes)
        job, batch_body = self._decode(decode, body, (media_type or JSON).lower(), records, handler.kind)
        content_type = answer_type(accept, job.answer_types)
        requests = self._checked(job, adapter)
        if batch_body:
            check_response_size(requests, job.encodings, handler, settings)
        at = received + settings.timeout_s(batch_body)
        deadline = Deadline(at) if abandoned is None else Deadline(at, abandoned)
        timings = [Timing() for _ in requests]
        results = self._run(requests, job, deadline, timings)
        figures = request_figures(requests, results, timings, handler.config.metering)
        return Reply(200, job.render(results), content_type, figure_headers(figures, handler.config.metering),
                     figures)

    def _checked(self, job: Records, adapter: str | None) -> list[TypedRequest]:
        """The body's requests as the served kind reads them, each checked against the kind and the limits."""
        handler = self._runtime.handler
        requests = [handler.kind.resolve(request) for request in job.requests]
        if adapter:
            requests = [with_adapter(request, adapter) for request in requests]
        for request, origin in zip(requests, job.origins):
            try:
                check_operation(request, handler.kind, handler.model_name)
                check_limits(request, self._settings)
            except SearchboxError as exc:
                raise _at(exc, origin) from None
        return requests

    def _decode(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str, records: bool,
                kind: Kind) -> tuple[Records, bool]:
        """The body's typed requests, by its media type; and whether it is a batch body."""
        if media_type == JSON or media_type.endswith("+json"):
            decoded = fields.decode_body(decode, body)
            return Records([decoded.request], [""],
                           lambda results: orjson.dumps(decoded.render(results[0]), option=_JSON_OPTIONS),
                           encodings=[decoded.encoding]), False
        if records and media_type in _RECORD_DECODERS:
            return _RECORD_DECODERS[media_type](body, decode, kind, self._settings), True
        supported = [JSON, *_RECORD_DECODERS] if records else [JSON]
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported here; send one of "
                                   f"{', '.join(supported)}", code="UNSUPPORTED_MEDIA_TYPE")

    def _run(self, requests: Sequence[TypedRequest], job: Records, deadline: Deadline,
             timings: list[Timing]) -> list[TypedResult]:
        if len(requests) <= 1 or not job.concurrent:
            return [self._run_one(request, origin, deadline, timing)
                    for request, origin, timing in zip(requests, job.origins, timings)]
        # once one record fails, the body fails: the others' work is for nobody and is dropped
        failed = threading.Event()
        shared = Deadline(deadline.at, lambda: failed.is_set() or deadline.abandoned())
        with ThreadPoolExecutor(min(_RECORD_THREADS, len(requests)), thread_name_prefix="records") as pool:
            futures = [pool.submit(self._run_one, request, origin, shared, timing)
                       for request, origin, timing in zip(requests, job.origins, timings)]
            try:
                return [future.result() for future in futures]
            except BaseException:
                failed.set()
                raise
            finally:
                for future in futures:
                    future.cancel()

    def _run_one(self, request: TypedRequest, origin: str, deadline: Deadline, timing: Timing) -> TypedResult:
        try:
            return self._runtime.handler.run(request, deadline, timing)
        except (SearchboxError, HandlerError) as exc:
            raise _at(exc, origin) from None


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


def request_figures(requests: Sequence[TypedRequest], results: Sequence[TypedResult], timings: Sequence[Timing],
                    metering: Metering | None) -> RequestFigures:
    """What an answered body cost, from the exact usage it reports: inputs (or documents) of the operations that are
    metered, tokens, metered units."""
    inputs = sum(spec.inputs(request) for spec, request in ((operations.named(r.operation), r) for r in requests)
                 if spec.metered)
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


def check_response_size(requests: Sequence[TypedRequest], encodings: Sequence[Any], handler, settings: Settings) -> None:
    """Refuse a batch body whose answer would exceed the response cap, before the model runs.

    Each operation's dialect bounds its answer's size (`WireOperation.estimate`: a multi-vector answer holds a vector
    per kept token, which the model counts).
    """
    estimate = answer_size(requests, encodings, handler)
    if estimate > settings.max_response_bytes:
        raise response_too_large(estimate, settings)


def answer_size(requests: Sequence[TypedRequest], encodings: Sequence[Any], handler) -> int:
    """Bytes the answer to `requests` may take, as each operation's dialect bounds it."""
    return sum(dialects.named(request.operation).estimate(request, encodings[i] if i < len(encodings) else None,
                                                          handler)
               for i, request in enumerate(requests))


def response_too_large(estimate: int, settings: Settings) -> PayloadTooLarge:
    cap_mb = settings.max_response_bytes / (1024 * 1024)
    return PayloadTooLarge(
        f"the answer to this body would take about {estimate / (1024 * 1024):.0f} MiB, over the {cap_mb:g} MiB "
        f"cap on one batch answer ({ENV_MAX_RESPONSE_MB}); send fewer rows per request (a smaller "
        "MaxPayloadInMB), or fewer dimensions", code="RESPONSE_TOO_LARGE")


def check_limits(request: TypedRequest, settings: Settings) -> None:
    spec = operations.named(request.operation)
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
