"""One answer for every host: (the route's JSON dialect, body bytes, media type) -> status, headers, body bytes.

The Flask routes (SageMaker, Azure ML custom container) and azmlinfsrv's `score.py` both answer
through `Dispatcher`, so one request gets byte-identical bodies whichever way the image is deployed.
It is also the one place where a request the served kind does not answer is refused.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import orjson

from container.dialects import JSON, Decoded, Records, TypedRequest, TypedResult, batch_transform, fields
from container.errors import (
    BadRequest, PayloadTooLarge, Reply, SearchboxError, UnsupportedMediaType, error_reply, from_handler_error,
    payload_too_large,
)
from container.runtime import ModelRuntime
from container.settings import ENV_MAX_RESPONSE_MB, Settings
from container.telemetry import RequestFigures
from model_handlers.batching import Timing
from model_handlers.deadline import Deadline
from model_handlers.errors import HandlerError
from model_handlers.kinds import Kind
from model_handlers.memory import release_free_memory
from model_handlers.metering import Metering
from model_handlers.types import EMBEDDINGS, EmbedRequest, Operation

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
# What to send for each operation, for the refusal of one the served kind does not answer.
_OPERATION_BODIES = {
    Operation.EMBED: 'embeddings: {"input": ["..."]} to /v1/embeddings, or {"data": [{"text": "..."}]} to /invocations',
    Operation.MULTI_VECTOR: 'multi-vector embeddings: {"input": ["..."], "input_type": "query"} to /v1/multi-vector, '
                            'or {"data": [{"text": "..."}], "parameters": {"input_type": "query"}} to /invocations',
    Operation.RERANK: 'rerank: {"query": "...", "documents": ["..."]} to /v1/rerank, or '
                      '{"data": {"query": "...", "documents": ["..."]}} to /invocations',
}


def _csv(body: bytes, decode: Callable[[Any], Decoded], kind: Kind, settings: Settings) -> Records:
    return batch_transform.decode_csv(body, kind, settings.max_inputs, settings.max_batch_rows)


def _jsonlines(body: bytes, decode: Callable[[Any], Decoded], kind: Kind, settings: Settings) -> Records:
    return batch_transform.decode_jsonlines(body, decode, settings.max_batch_rows)


# What each form of embeddings is, in a refusal of the other form.
_FORMS = {Operation.EMBED: "one vector per input", Operation.MULTI_VECTOR: "one vector per token of each input"}
_REQUESTS = {Operation.EMBED: "single-vector embedding", Operation.MULTI_VECTOR: "multi-vector embedding",
             Operation.RERANK: "rerank"}


# Batch bodies (media type -> decoder), taken only on the routes that take records (/invocations, /score).
_RECORD_DECODERS = {**dict.fromkeys(batch_transform.CSV_TYPES, _csv),
                    **dict.fromkeys(batch_transform.JSONLINES_TYPES, _jsonlines)}


class Dispatcher:
    """Decodes a body by its media type, runs its typed requests through the model, renders the answer."""

    def __init__(self, settings: Settings, runtime: ModelRuntime):
        self._settings = settings
        self._runtime = runtime

    def answer(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, *,
               records: bool = False, abandoned: Callable[[], bool] | None = None, adapter: str | None = None) -> Reply:
        """The 200 reply to `body`.

        Args:
            decode: the route's JSON dialect (also applied to each JSON line).
            body: the raw request body.
            media_type: the Content-Type without parameters; None or empty reads as JSON.
            records: whether the route also takes batch bodies (CSV, JSON Lines).
            abandoned: true once the caller is gone (its connection closed): its work is then dropped.
            adapter: the LoRA adapter SageMaker's adapter header names, for every request of the body.

        Raises:
            SearchboxError, HandlerError: what to tell the caller; `error_reply` renders either.
        """
        try:
            return self._answer(decode, body, media_type, records, abandoned, adapter)
        finally:
            if len(body) > _LARGE_BODY:
                release_free_memory()

    def admit(self, media_type: str | None, *, records: bool = False) -> None:
        """Refuse at once, before the body is even read, when the work queued ahead would outlast this request.

        A flood of requests that cannot be served then costs no parsing or tokenizing either.

        Raises:
            SearchboxError, HandlerError: loading, draining (503), or overloaded (503 with Retry-After).
        """
        batch_body = records and (media_type or "").lower() in _RECORD_DECODERS
        self._runtime.handler.admit(Deadline.after(self._settings.timeout_s(batch_body)))

    def reply(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, request_id: str, *,
              records: bool = False) -> Reply:
        """Like `answer`, with the caller's errors rendered as replies instead of raised."""
        try:
            return self.answer(decode, body, media_type, records=records)
        except (SearchboxError, HandlerError) as exc:
            return error_reply(exc, request_id)

    def _answer(self, decode: Callable[[Any], Decoded], body: bytes, media_type: str | None, records: bool,
                abandoned: Callable[[], bool] | None, adapter: str | None = None) -> Reply:
        received = time.monotonic()
        settings = self._settings
        handler = self._runtime.handler
        if len(body) > settings.max_payload_bytes:
            raise payload_too_large(settings.max_payload_bytes)
        media_type = (media_type or JSON).lower()
        if media_type == JSON or media_type.endswith("+json"):
            decoded = fields.decode_body(decode, body)
            job = Records([decoded.request], [""],
                          lambda results: orjson.dumps(decoded.render(results[0]), option=_JSON_OPTIONS),
                          encodings=[decoded.encoding])
            batch_body = False
        elif records and media_type in _RECORD_DECODERS:
            job = _RECORD_DECODERS[media_type](body, decode, handler.kind, settings)
            batch_body = True
        else:
            supported = [JSON, *_RECORD_DECODERS] if records else [JSON]
            raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported here; send one of "
                                       f"{', '.join(supported)}", code="UNSUPPORTED_MEDIA_TYPE")
        if adapter:
            job = dataclasses.replace(job, requests=[with_adapter(request, adapter) for request in job.requests])
        for request, origin in zip(job.requests, job.origins):
            try:
                check_operation(request, handler.kind, handler.model_name)
                check_limits(request, settings)
            except SearchboxError as exc:
                raise _at(exc, origin) from None
        if batch_body:
            check_response_size(job, handler.dimensions, handler.vector_count, settings)
        at = received + settings.timeout_s(batch_body)
        deadline = Deadline(at) if abandoned is None else Deadline(at, abandoned)
        timings = [Timing() for _ in job.requests]
        results = self._run(job, deadline, timings)
        figures = request_figures(job.requests, results, timings, handler.config.metering)
        return Reply(200, job.render(results), job.content_type, figure_headers(figures, handler.config.metering),
                     figures)

    def _run(self, job: Records, deadline: Deadline, timings: list[Timing]) -> list[TypedResult]:
        if len(job.requests) <= 1 or not job.concurrent:
            return [self._run_one(request, origin, deadline, timing)
                    for request, origin, timing in zip(job.requests, job.origins, timings)]
        # once one record fails, the body fails: the others' work is for nobody and is dropped
        failed = threading.Event()
        shared = Deadline(deadline.at, lambda: failed.is_set() or deadline.abandoned())
        with ThreadPoolExecutor(min(_RECORD_THREADS, len(job.requests)), thread_name_prefix="records") as pool:
            futures = [pool.submit(self._run_one, request, origin, shared, timing)
                       for request, origin, timing in zip(job.requests, job.origins, timings)]
            try:
                return [future.result() for future in futures]
            except BaseException:
                failed.set()
                raise
            finally:
                for future in futures:
                    future.cancel()

    def _run_one(self, request: TypedRequest, origin: str, deadline: Deadline, timing: Timing) -> TypedResult:
        handler = self._runtime.handler
        try:
            if isinstance(request, EmbedRequest):
                return handler.embed(request, deadline, timing)
            return handler.rerank(request, deadline, timing)
        except (SearchboxError, HandlerError) as exc:
            raise _at(exc, origin) from None


def request_figures(requests: Sequence[TypedRequest], results: Sequence[TypedResult], timings: Sequence[Timing],
                    metering: Metering | None) -> RequestFigures:
    """What an answered body cost, from the exact usage it reports: inputs (or documents), tokens, metered units."""
    inputs = sum(len(r.inputs) if isinstance(r, EmbedRequest) else len(r.documents) for r in requests)
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
    """The one place a request the served kind does not answer is refused, naming what it does answer.

    An embedding body that does not say which form it wants (the SageMaker envelope, batch transform) asks for
    the kind's own: single vectors or multi-vectors. The public routes say which (/v1/embeddings, /v1/multi-vector).
    """
    operation = kind.asked(request.operation)
    if kind.answers(operation):
        return
    instead = "; or ".join(_OPERATION_BODIES[op] for op in sorted(kind.operations, key=lambda op: op.value))
    serves = f"model {model_name} is {kind.summary}"
    if operation in EMBEDDINGS and kind.embedding_operation is not None:
        serves += f", {_FORMS[kind.embedding_operation]}"
    raise BadRequest(f"{serves}: it does not answer {_REQUESTS[operation]} requests. Send {instead}",
                     code="UNSUPPORTED_OPERATION")


def check_response_size(job: Records, width: int | None, vector_count: Callable[[EmbedRequest], int],
                        settings: Settings) -> None:
    """Refuse a batch body whose answer would exceed the response cap, before the model runs.

    `vector_count` says how many vectors an embedding request's answer holds (one per input, or per kept token).
    """
    estimate = batch_transform.estimated_response_bytes(job, width, vector_count)
    if estimate > settings.max_response_bytes:
        cap_mb = settings.max_response_bytes / (1024 * 1024)
        raise PayloadTooLarge(
            f"the answer to this body would take about {estimate / (1024 * 1024):.0f} MiB, over the {cap_mb:g} MiB "
            f"cap on one batch answer ({ENV_MAX_RESPONSE_MB}); send fewer rows per request (a smaller "
            "MaxPayloadInMB), or fewer dimensions", code="RESPONSE_TOO_LARGE")


def check_limits(request: TypedRequest, settings: Settings) -> None:
    count = len(request.inputs) if isinstance(request, EmbedRequest) else len(request.documents)
    if count > settings.max_inputs:
        what = "inputs" if isinstance(request, EmbedRequest) else "documents"
        raise BadRequest(
            f"the request has {count} {what}; at most {settings.max_inputs} are allowed per request, "
            "split it into several requests", code="TOO_MANY_INPUTS")


def _at(exc: SearchboxError | HandlerError, origin: str) -> SearchboxError:
    """The error with where it happened ("line 3: ...") in front of its detail."""
    error = exc if isinstance(exc, SearchboxError) else from_handler_error(exc)
    if origin:
        # each error object belongs to the one request that raised it: prefixing in place is safe
        error.detail = f"{origin}: {error.detail}"
    return error
