"""Server settings: one table (`SETTINGS`), read once from the environment by `serve`.

Each setting is defined once, in its row: the environment variable, its default, how its value is parsed and
checked, what it means, and where it goes (a `Settings` attribute, and the model handler's option it also sets).
`Settings`' fields, `serve --help`, the README's Configuration table (`python -m container.settings --readme`
rewrites it; a test keeps it in step) and the handler's options (`Settings.handler_options`) are made from it. A
setting the model handler also takes has no default here: it is the handler's own (model_handlers/options.py, the
model layer's view, which never imports the server). Environment names are constants here, and nothing else reads
`os.environ` but container/gpus.py (CUDA's own CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from container.gpus import on_gpu, visible_gpus
from model_handlers import classifier_store
from model_handlers.embedded import DEFAULT_MODEL_NAME, EmbeddedModelMissing, embedded_model_dir
from model_handlers.loading import force_offline
# the two switches of the one policy on the code a model directory may run, named where the policy is stated
from model_handlers.model_code import ENV_ALLOW_PICKLE, ENV_TRUST_REMOTE_CODE
from model_handlers.onnx_runtime import BACKENDS
from model_handlers.options import CPU_MAX_BATCH_TOKENS, GPU_MAX_BATCH_TOKENS, HandlerOptions, ImageOptions
from model_handlers.types import INPUT_TYPE_TASKS

# Which model (first match wins).
ENV_MODEL_DIR = "SEARCHBOX_MODEL_DIR"
ENV_AZUREML_MODEL_DIR = "AZUREML_MODEL_DIR"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")

ENV_PORT = "SAGEMAKER_BIND_TO_PORT"
# Google Cloud Vertex AI sets these in a custom container (Google's "Custom container requirements" page): the port,
# the routes the Model's containerSpec names, and the Cloud Storage directory of the model's files (artifactUri).
ENV_VERTEX_PORT = "AIP_HTTP_PORT"
ENV_VERTEX_PREDICT_ROUTE = "AIP_PREDICT_ROUTE"
ENV_VERTEX_HEALTH_ROUTE = "AIP_HEALTH_ROUTE"
ENV_VERTEX_STORAGE_URI = "AIP_STORAGE_URI"
# The model directory while AIP_STORAGE_URI's copy is pending: `serve` replaces it before anything reads it.
STORAGE_COPY_PENDING = Path("/nonexistent/searchbox-aip-storage-uri")
ENV_MAX_PAYLOAD_MB = "SEARCHBOX_MAX_PAYLOAD_MB"
ENV_SAGEMAKER_MAX_PAYLOAD_MB = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
ENV_SAGEMAKER_BATCH_STRATEGY = "SAGEMAKER_BATCH_STRATEGY"
ENV_SAGEMAKER_MAX_CONCURRENT_TRANSFORMS = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"
BATCH_STRATEGIES = ("MULTI_RECORD", "SINGLE_RECORD")
# A job with MaxPayloadInMB=0 sends bodies of any size (streamed); 100 MB is batch transform's own ceiling.
UNBOUNDED_TRANSFORM_PAYLOAD_MB = 100
ENV_MAX_INPUTS = "SEARCHBOX_MAX_INPUTS"
ENV_THREADS = "SEARCHBOX_THREADS"
ENV_MAX_BATCH_TOKENS = "SEARCHBOX_MAX_BATCH_TOKENS"
ENV_TORCH_THREADS = "SEARCHBOX_TORCH_THREADS"
ENV_REQUEST_TIMEOUT = "SEARCHBOX_REQUEST_TIMEOUT_S"
ENV_DEVICE = "SEARCHBOX_DEVICE"
ENV_LOG_LEVEL = "SEARCHBOX_LOG_LEVEL"
ENV_MODEL_NAME = "SEARCHBOX_MODEL_NAME"
ENV_SAGEMAKER_BATCH = "SAGEMAKER_BATCH"
ENV_BATCH_TIMEOUT = "SEARCHBOX_BATCH_TIMEOUT_S"
ENV_MAX_BATCH_ROWS = "SEARCHBOX_MAX_BATCH_ROWS"
ENV_MAX_RESPONSE_MB = "SEARCHBOX_MAX_RESPONSE_MB"
ENV_MAX_RERANK_WINDOWS = "SEARCHBOX_MAX_RERANK_WINDOWS"
ENV_GRACE = "SEARCHBOX_GRACEFUL_TIMEOUT_S"
ENV_NGINX = "SEARCHBOX_NGINX"
ENV_REQUEST_LOG = "SEARCHBOX_REQUEST_LOG"
ENV_BACKEND = "SEARCHBOX_BACKEND"
ENV_IMAGE_MAX_PIXELS = "SEARCHBOX_IMAGE_MAX_PIXELS"
ENV_IMAGE_FETCH = "SEARCHBOX_IMAGE_FETCH"
ENV_IMAGE_FETCH_TIMEOUT = "SEARCHBOX_IMAGE_FETCH_TIMEOUT_S"
ENV_IMAGE_FETCH_MAX_MB = "SEARCHBOX_IMAGE_FETCH_MAX_MB"
ENV_IMAGE_FETCH_ALLOW_HOSTS = "SEARCHBOX_IMAGE_FETCH_ALLOW_HOSTS"
ENV_PDF_MAX_PAGES = "SEARCHBOX_PDF_MAX_PAGES"
ENV_DEFAULT_INPUT_TYPE = "SEARCHBOX_DEFAULT_INPUT_TYPE"
ENV_CLASSIFY_LABELS = "SEARCHBOX_CLASSIFY_LABELS"
ENV_CLASSIFIER = "SEARCHBOX_CLASSIFIER"
ENV_MAX_ADAPTERS = "SEARCHBOX_MAX_ADAPTERS"
ENV_CLASSIFIER_STORE = "SEARCHBOX_CLASSIFIER_STORE"
ENV_CLASSIFIER_REFRESH = "SEARCHBOX_CLASSIFIER_REFRESH_S"
ENV_MAX_CLASSES = "SEARCHBOX_MAX_CLASSES"
ENV_MAX_CLASSIFIERS = "SEARCHBOX_MAX_CLASSIFIERS"
ENV_MAX_TRAIN_EXAMPLES = "SEARCHBOX_MAX_TRAIN_EXAMPLES"
ENV_CLASSIFIER_OVERWRITE = "SEARCHBOX_CLASSIFIER_OVERWRITE"
ENV_ASYNC = "SEARCHBOX_ASYNC"
ENV_WORKERS = "SEARCHBOX_WORKERS"
INPUT_TYPES = tuple(INPUT_TYPE_TASKS)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_MIB = 1024 * 1024
# SageMaker asynchronous inference: bodies up to 1 GB and InvocationTimeoutSeconds up to 3600
# (docs.aws.amazon.com/sagemaker/latest/dg/async-inference.html, AsyncInferenceClientConfig in the API reference).
ASYNC_MAX_PAYLOAD_MB = 1024
ASYNC_TIMEOUT_S = 3600.0
ASYNC_MAX_BATCH_ROWS = 2_000_000
# rows or lines one batch body may hold off asynchronous mode (packaging/deployment.py sizes batch jobs by it)
MAX_BATCH_ROWS = 50_000
ASYNC_MAX_RESPONSE_MB = 2048

_MODEL_MARKERS = ("searchbox.json", "config.json", "modules.json")

# Environment the libraries read when they load, set by every entry point before torch is imported
# (offline mode itself is forced by model_handlers.loading.force_offline).
LIBRARY_ENVIRONMENT_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "false",
    # OpenMP threads spinning at barriers burn the cores the request threads need; when one is
    # preempted its peers spin until it runs again. Sleeping made the server 2-10x faster under
    # load in bench/ (bench/ runs the in-process limit with the same policy).
    "OMP_WAIT_POLICY": "PASSIVE",
}


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use."""


# --- parsers: (raw value, variable name) -> value; each raises SettingsError naming the variable -------------


def _number(kind: type, *, allow_zero: bool = False, scale: float = 1, most: float | None = None,
            hint: str = "") -> Callable[[str, str], Any]:
    def parse(raw: str, name: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise SettingsError(f"{name}={raw!r} must be positive")
        if most is not None and value > most:
            raise SettingsError(f"{name}={value} is {hint}")
        return value if scale == 1 else int(value * scale)

    return parse


def _flag(raw: str, name: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes")


def _on_unless_off(raw: str, name: str) -> bool:
    return raw.strip().lower() not in ("off", "0", "false", "no")


def _route(raw: str, name: str) -> str:
    """A URL path Vertex AI sends requests to: it goes into nginx's configuration and Flask's rules as it is."""
    if not re.fullmatch(r"/[A-Za-z0-9/_.:@~-]*", raw) or "//" in raw or "/../" in raw + "/":
        raise SettingsError(f"{name}={raw!r} is not a URL path of letters, digits and / _ . : @ ~ -")
    return raw


def _storage_uri(raw: str, name: str) -> str:
    """A Cloud Storage directory, gs://bucket[/prefix]."""
    if not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]{1,220}(/[^\s]*)?", raw):
        raise SettingsError(f"{name}={raw!r} is not a Cloud Storage directory (gs://bucket/prefix)")
    return raw.rstrip("/")


def _text(raw: str, name: str) -> str | None:
    return raw or None


def _choice(choices: tuple[str, ...], normal: Callable[[str], str]) -> Callable[[str, str], str | None]:
    def parse(raw: str, name: str) -> str | None:
        value = normal(raw.strip())
        if value not in choices:
            raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return value

    return parse


def _transform_payload(raw: str, name: str) -> int:
    """SageMaker's MaxPayloadInMB, a whole number; 0 (unbounded) takes batch transform's own ceiling."""
    value = _number(float, allow_zero=True)(raw, name)
    return UNBOUNDED_TRANSFORM_PAYLOAD_MB if value == 0 else max(1, int(value))


def _workers(raw: str, name: str) -> int | None:
    """A number of workers, or auto (None): one per visible GPU, else one."""
    if raw.strip().lower() == "auto":
        return None
    return _number(int, most=64, hint="more workers than any instance has GPUs; give auto or a count")(raw, name)


def _host_names(raw: str, name: str) -> tuple[str, ...]:
    """Host names, lower-case, as URLs name them (no scheme, port or path)."""
    names = tuple(part.strip().lower().rstrip(".") for part in raw.split(","))
    for host in names:
        if host and any(char in host for char in "/:@ "):
            raise SettingsError(f"{name}: {host!r} is not a host name; list names only, comma-separated "
                                "(images.internal,localhost)")
    return tuple(host for host in names if host)


def _labels(raw: str, name: str) -> tuple[str, ...]:
    """Labels: a JSON array of strings (labels may hold commas), or comma-separated."""
    text = raw.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
            raise SettingsError(f'{name}: not a JSON array of strings (["billing", "sales"], or billing,sales)')
        return tuple(value)
    return tuple(label.strip() for label in text.split(",") if label.strip())


def _store(raw: str, name: str) -> str:
    """A classifier store the server can open: refused at start, not at the first training call."""
    try:
        classifier_store.opened(raw.strip())
    except classifier_store.StoreError as exc:
        raise SettingsError(f"{name}: {exc.detail}") from None
    return raw.strip()


# --- the table ----------------------------------------------------------------------------------------------

_HANDLER = object()  # a row's default is the model handler's own (model_handlers/options.py)


@dataclass(frozen=True)
class Setting:
    """One environment variable the server reads.

    Attributes:
        name: the variable.
        meaning: what it does (`serve --help`, the README).
        shown: the default as --help and the README write it.
        attribute: the `Settings` attribute it fills; None: read by the model directory's rule (`resolve_model_dir`).
        parse: `parse(raw, name)`, for a set, non-blank value; raises SettingsError.
        default: the value when unset: a value, or `default(values)` of the rows above; the handler's own for a
            row with `handler` (unless given).
        handler: the `HandlerOptions` attribute it also sets ("images.max_pixels": an `ImageOptions` one).
    """

    name: str
    meaning: str
    shown: str
    attribute: str | None = None
    parse: Callable[[str, str], Any] = field(default=_text, repr=False)
    default: Any = field(default=_HANDLER, repr=False)
    handler: str | None = None

    def default_value(self, values: Mapping[str, Any]) -> Any:
        if self.default is _HANDLER:
            return _handler_default(self.handler) if self.handler else None
        return self.default(values) if callable(self.default) else self.default

    def read(self, env: Mapping[str, str], values: Mapping[str, Any]) -> Any:
        raw = env.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default_value(values)
        return self.parse(raw, self.name)


def _handler_default(path: str) -> Any:
    owner, _, name = path.rpartition(".")
    spec = {f.name: f for f in dataclasses.fields(ImageOptions if owner == "images" else HandlerOptions)}[name]
    return spec.default


# Every variable the server reads, in the order `serve --help` and the README list them.
SETTINGS = (
    Setting(ENV_MODEL_DIR, "model directory, or a model.tar.gz (.tgz, .tar) that serve unpacks once into a private "
            "temporary directory as SageMaker does; wins over everything below", "none"),
    Setting(ENV_AZUREML_MODEL_DIR, "Azure ML's model mount (or its single sub-directory holding the model); "
            f"without either or {ENV_VERTEX_STORAGE_URI}, {SAGEMAKER_MODEL_DIR} when not empty, else the embedded "
            f"{DEFAULT_MODEL_NAME}", "none"),
    Setting(ENV_MODEL_NAME, "name answered in `model` when searchbox.json gives none", "dir name", "model_name",
            default=None, handler="served_model_name"),
    Setting(ENV_VERTEX_STORAGE_URI, "Vertex AI: the Cloud Storage directory (gs://bucket/prefix) of the model's "
            "files, copied by serve at start with Google's client into a private temporary directory, then checked "
            f"like any model directory; used when {ENV_MODEL_DIR} and {ENV_AZUREML_MODEL_DIR} are unset",
            "none", "storage_uri", _storage_uri, None),
    Setting(ENV_VERTEX_PORT, f"Vertex AI's port, used when {ENV_PORT} is unset", "none", "vertex_port",
            _number(int, most=65535, hint="not a port; choose one from 1 to 65535"), None),
    Setting(ENV_PORT, f"port to listen on; unset, {ENV_VERTEX_PORT}'s (Vertex AI sets it), else 8080", "8080", "port",
            _number(int, most=65535, hint="not a port; choose one from 1 to 65535"),
            lambda values: values["vertex_port"] or 8080),
    Setting(ENV_VERTEX_PREDICT_ROUTE, "Vertex AI: the route that answers `{\"instances\", \"parameters\"}` with "
            "`{\"predictions\"}` (container/dialects/vertex.py), beside every other route", "none",
            "vertex_predict_route", _route, None),
    Setting(ENV_VERTEX_HEALTH_ROUTE, "Vertex AI: a readiness route answered as /ping is", "none",
            "vertex_health_route", _route, None),
    Setting(ENV_ASYNC, "1/true/yes on a SageMaker asynchronous endpoint (packaging/deployment.py sets it there): the "
            f"body limit, timeouts, batch rows and answer cap below default to asynchronous inference's "
            f"({ASYNC_MAX_PAYLOAD_MB} MiB, {ASYNC_TIMEOUT_S:.0f} s, {ASYNC_MAX_BATCH_ROWS} lines, "
            f"{ASYNC_MAX_RESPONSE_MB} MiB), and a JSON Lines body is spooled to disk and run a slice of lines at a "
            "time, its answer written to disk and streamed out, so the worker's memory does not grow with the body",
            "off", "async_mode", _flag, False),
    Setting(ENV_SAGEMAKER_MAX_PAYLOAD_MB, "a batch transform job's MaxPayloadInMB (0, unbounded, takes "
            f"{UNBOUNDED_TRANSFORM_PAYLOAD_MB}), answered by GET /execution-parameters", "chosen",
            "transform_max_payload_mb", _transform_payload, None),
    Setting(ENV_MAX_PAYLOAD_MB, "request body limit in MiB",
            f"6, or {ENV_SAGEMAKER_MAX_PAYLOAD_MB}; {ASYNC_MAX_PAYLOAD_MB} when {ENV_ASYNC}",
            "max_payload_bytes", _number(float, scale=_MIB),
            lambda values: (ASYNC_MAX_PAYLOAD_MB if values["async_mode"] else values["transform_max_payload_mb"] or 6)
            * _MIB),
    Setting(ENV_SAGEMAKER_BATCH_STRATEGY, f"a batch transform job's BatchStrategy ({', '.join(BATCH_STRATEGIES)}), "
            "answered by GET /execution-parameters", "chosen", "transform_batch_strategy",
            _choice(BATCH_STRATEGIES, str.upper), None),
    Setting(ENV_SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, "a batch transform job's MaxConcurrentTransforms, answered by "
            "GET /execution-parameters", "chosen", "transform_max_concurrent", _number(int), None),
    Setting(ENV_SAGEMAKER_BATCH, "true when SageMaker runs a batch transform job: every request gets the batch "
            f"timeout ({ENV_BATCH_TIMEOUT})", "unset", "batch_job", _flag, False),
    Setting(ENV_MAX_INPUTS, "inputs (or documents) per request; a batch-transform CSV body is a batch, not one "
            f"request: its rows (at most {ENV_MAX_BATCH_ROWS}) go to the model in requests of this many",
            "2048", "max_inputs", _number(int), 2048, handler="max_inputs"),
    Setting(ENV_THREADS, "gunicorn threads of the single worker; nginx lets at most this many minus 4 requests in at "
            "once and answers the rest 503 at once", "128", "threads", _number(int), 128),
    Setting(ENV_MAX_BATCH_TOKENS, "padded tokens per forward pass",
            f"{CPU_MAX_BATCH_TOKENS} on CPU, {GPU_MAX_BATCH_TOKENS} on a GPU", "max_batch_tokens", _number(int),
            handler="max_batch_tokens"),
    Setting(ENV_TORCH_THREADS, "intra-op threads of torch, or of ONNX Runtime (on a CPU shared by its two passes at once)", "one per core", "torch_threads",
            _number(int), handler="torch_threads"),
    Setting(ENV_BACKEND, "torch or onnx: the compute path, whatever the artifact's searchbox.json says (onnx needs "
            "the artifact's exported onnx/ files)", "searchbox.json's, else torch", "backend",
            _choice(BACKENDS, str.lower), handler="backend"),
    Setting(ENV_REQUEST_TIMEOUT, "seconds a request may take from its arrival, its budget: work that cannot finish "
            "within it is refused at once (503 with Retry-After, or 413 when it alone is too much). Below SageMaker's "
            "60 s real-time invocation limit, so that an answer or a refusal arrives before the client gives up",
            f"50; {ASYNC_TIMEOUT_S:.0f} when {ENV_ASYNC}", "request_timeout_s", _number(float),
            lambda values: ASYNC_TIMEOUT_S if values["async_mode"] else _handler_default("request_timeout_s"),
            handler="request_timeout_s"),
    Setting(ENV_BATCH_TIMEOUT, f"the same for CSV and JSON Lines bodies, and for every request when "
            f"{ENV_SAGEMAKER_BATCH}=true (batch transform's default per-call timeout)",
            f"600; {ASYNC_TIMEOUT_S:.0f} when {ENV_ASYNC}", "batch_timeout_s", _number(float),
            lambda values: ASYNC_TIMEOUT_S if values["async_mode"] else 600.0),
    Setting(ENV_MAX_BATCH_ROWS, "rows (CSV) or lines (JSON Lines) one batch body may hold (413 above)",
            f"{MAX_BATCH_ROWS}; {ASYNC_MAX_BATCH_ROWS} when {ENV_ASYNC}", "max_batch_rows", _number(int),
            lambda values: ASYNC_MAX_BATCH_ROWS if values["async_mode"] else MAX_BATCH_ROWS),
    Setting(ENV_MAX_RESPONSE_MB, "MiB the answer to one batch body may take, estimated before any work (413 above)",
            f"512; {ASYNC_MAX_RESPONSE_MB} when {ENV_ASYNC}", "max_response_bytes", _number(float, scale=_MIB),
            lambda values: (ASYNC_MAX_RESPONSE_MB if values["async_mode"] else 512) * _MIB),
    Setting(ENV_MAX_RERANK_WINDOWS, "model inputs one rerank request may make; a long document makes one per window "
            "(413 above)", "4096", "max_rerank_windows", _number(int), handler="max_rerank_windows"),
    Setting(ENV_DEFAULT_INPUT_TYPE, f"{' or '.join(INPUT_TYPES)}: the input_type of requests that give none, for a "
            "whole job (batch transform CSV rows give none): a multi-vector (ColBERT) model then encodes them as "
            "queries or documents (unset: searchbox.json's default_input_type, else documents); an embedding model "
            "takes the retrieval task of that side", "unset", "default_input_type", _choice(INPUT_TYPES, str.lower),
            handler="default_input_type"),
    Setting(ENV_CLASSIFY_LABELS, "a batch transform job that classifies: each CSV row (id,text) is classified "
            "zero-shot against these labels (a JSON array, or comma-separated), answered as /invocations answers a "
            "classify envelope", "unset", "classify_labels", _labels, ()),
    Setting(ENV_CLASSIFIER, f"the same with a classifier trained into the artifact (GET /v1/models lists them); not "
            f"with {ENV_CLASSIFY_LABELS}", "unset", "classifier", default=None),
    Setting(ENV_MAX_ADAPTERS, "LoRA adapters registered at run time (POST /adapters) held in memory at once; past it "
            "the least recently used one that is neither pinned nor in use is unloaded, and loaded again from its src "
            "when a request names it (adapters built into the artifact are not counted)", "8", "max_adapters",
            _number(int), handler="max_adapters"),
    Setting(ENV_CLASSIFIER_STORE, "where few-shot classifiers trained on the endpoint (POST /v1/train) are kept, "
            "one JSON document each (weights and labels, never a pickle): a local directory, a volume every "
            "instance mounts, s3://bucket/prefix (the s3 extra; boto3's credentials and AWS_ENDPOINT_URL), "
            "gs://bucket/prefix (the vertex extra; the service account, or STORAGE_EMULATOR_HOST) or "
            "az://container/prefix (the azureblob extra; AZURE_STORAGE_CONNECTION_STRING, or "
            "AZURE_STORAGE_ACCOUNT_NAME with a managed identity), so that a classifier trained on one instance is "
            "used by all. Updates are conditional writes (a lock file and a rename; S3's If-Match / If-None-Match; "
            "Cloud Storage generations; Azure ETags): two instances updating one classifier both land. Unset: "
            "searchbox-classifiers in the temp directory (one instance's)", "unset",
            "classifier_store", _store, handler="classifier_store"),
    Setting(ENV_CLASSIFIER_REFRESH, "seconds a classify call may reuse a trained classifier it read before reading "
            "the store again: an update made on any instance is answered at most this long after", "2",
            "classifier_refresh_s", _number(float, allow_zero=True), handler="classifier_refresh_s"),
    Setting(ENV_MAX_CLASSES, "labels one trained classifier may have (Jina's few-shot limit; 422 TOO_MANY_CLASSES "
            "above)", "16", "max_classes", _number(int), handler="max_classes"),
    Setting(ENV_MAX_CLASSIFIERS, "classifiers the endpoint may hold for its model, trained ones (Jina's few-shot "
            "limit; 422 TOO_MANY_CLASSIFIERS above)", "16", "max_classifiers", _number(int),
            handler="max_classifiers"),
    Setting(ENV_MAX_TRAIN_EXAMPLES, "examples one POST /v1/train may carry (Jina's limit; 422 TOO_MANY_EXAMPLES "
            "above)", "1024", "max_train_examples", _number(int), handler="max_train_examples"),
    Setting(ENV_CLASSIFIER_OVERWRITE, "1/true/yes: POST /v1/train may update a classifier shipped in the artifact "
            "(the trained copy, kept in the store, then answers for it); off: refused, 422 ARTIFACT_CLASSIFIER",
            "off", "overwrite_artifact_classifiers", _flag, handler="overwrite_artifact_classifiers"),
    Setting(ENV_GRACE, "seconds the work admitted before SIGTERM gets to finish: queued requests whose measured cost "
            "does not fit are answered 503 (Retry-After) at once, what still runs at its end is cut; SageMaker and "
            "Kubernetes kill at 30", "20", "graceful_timeout_s", _number(float), 20.0),
    Setting(ENV_NGINX, "the nginx binary in front of gunicorn", "nginx on PATH, or /usr/sbin/nginx", "nginx",
            default=None),
    Setting(ENV_REQUEST_LOG, "one JSON log line per request at INFO (request id, route, status, inputs, tokens, "
            "units, queue, forward and total ms; never any input); off/0/false turns it off", "on", "request_log",
            _on_unless_off, True),
    Setting(ENV_IMAGE_MAX_PIXELS, "pixels (width x height) an image input may have, read from its header before any "
            "pixel is decoded (400 IMAGE_TOO_LARGE above)", "50000000", "image_max_pixels", _number(int),
            handler="images.max_pixels"),
    Setting(ENV_IMAGE_FETCH, "1/true/yes: fetch http(s) image URLs (off: a URL is a 400 IMAGE_URL_NOT_ALLOWED; model "
            "packages run without network). Never towards loopback, private, link-local or metadata addresses, "
            "also not through redirects or DNS names that resolve there", "off", "image_fetch", _flag,
            handler="images.fetch"),
    Setting(ENV_IMAGE_FETCH_TIMEOUT, "seconds the fetching of all of one request's image URLs may take (name "
            "resolution, connects, redirects and bodies; up to 8 URLs at once)", "10", "image_fetch_timeout_s",
            _number(float), handler="images.fetch_timeout_s"),
    Setting(ENV_IMAGE_FETCH_MAX_MB, "MiB one fetched image may have", "10", "image_fetch_max_bytes",
            _number(float, scale=_MIB), handler="images.fetch_max_bytes"),
    Setting(ENV_IMAGE_FETCH_ALLOW_HOSTS, "comma-separated host names fetched although they resolve to loopback or "
            "private addresses (an internal image store); link-local and metadata addresses stay refused", "none",
            "image_fetch_allow_hosts", _host_names, handler="images.fetch_allow_hosts"),
    Setting(ENV_PDF_MAX_PAGES, "pages one PDF input may have, counted before any page is rendered (400 "
            "PDF_TOO_MANY_PAGES above); each page is an input, and counts against "
            f"{ENV_MAX_INPUTS}", "32", "pdf_max_pages", _number(int), handler="images.pdf_max_pages"),
    Setting(ENV_ALLOW_PICKLE, "1/true/yes: load pickled .bin weights (refused by default: unpickling runs code)",
            "off", "allow_pickle", _flag, handler="allow_pickle"),
    Setting(ENV_TRUST_REMOTE_CODE, "1/true/yes: run a model directory's remote code (auto_map modules) that no "
            "artifact manifest pins (local use: code you have read). Off: remote code runs only where "
            "searchbox-manifest.json pins every .py file by SHA-256 (packaging/build_artifact.py writes it); anything "
            "else is refused at start, naming the file. Architectures read natively (Jina's XLM-RoBERTa flash "
            "checkpoints, jina-embeddings-v3) run none", "off", "trust_remote_code", _flag,
            handler="trust_remote_code"),
    Setting(ENV_DEVICE, "cpu, cuda, cuda:1; auto takes the GPU when there is one", "auto", "device",
            lambda raw, name: raw, handler="device"),
    Setting(ENV_WORKERS, "worker processes, each with its own copy of the model: auto is one per GPU the instance "
            "has (each pinned to its GPU; a dead one is restarted on the same GPU alone, and /ping is 200 only "
            "while every one is ready), else one. A count on CPU splits the cores between the workers, each pinned "
            "to its share", "auto", "workers", _workers, None),
    Setting(ENV_LOG_LEVEL, f"{', '.join(LOG_LEVELS)}; DEBUG also logs every request", "INFO", "log_level",
            # checked here, not by logging.basicConfig, so a typo is one named line instead of a traceback
            _choice(LOG_LEVELS, str.upper), "INFO"),
)


def _fields_from_the_table(cls: type) -> type:
    """`cls` as a frozen dataclass with, after the fields it declares, one field per SETTINGS row that fills an
    attribute: a setting is written once, in its row (the row's parse and default say what the value is)."""
    attributes = [setting.attribute for setting in SETTINGS if setting.attribute is not None]
    if len(set(attributes)) != len(attributes):
        raise RuntimeError("two SETTINGS rows fill the same attribute: this is a bug")
    cls.__annotations__ = {**cls.__dict__.get("__annotations__", {}), **dict.fromkeys(attributes, Any)}
    return dataclass(frozen=True)(cls)


@_fields_from_the_table
class Settings:
    """What the server was told, read once (`from_env`): the model directory, why it was chosen, then one attribute
    per row of SETTINGS (its `attribute`), which says what it is."""

    model_dir: Path
    model_source: str  # why this model directory was chosen, for the start-up log

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Every row of SETTINGS, read from `environ` (the process environment by default).

        Raises:
            SettingsError: naming the variable whose value cannot be used.
        """
        env = os.environ if environ is None else environ
        model_dir, source, embedded = resolve_model_dir(env)
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.attribute is not None:
                values[setting.attribute] = setting.read(env, values)
        if values["model_name"] is None and (embedded or model_dir == _embedded_or_none()):
            values["model_name"] = DEFAULT_MODEL_NAME  # its directory is called `model`
        if values["classify_labels"] and values["classifier"]:
            raise SettingsError(f"{ENV_CLASSIFY_LABELS} and {ENV_CLASSIFIER} both set: a job classifies against "
                                "labels or with a trained classifier, set one")
        return cls(model_dir=model_dir, model_source=source, **values)

    def csv_parameters(self) -> Mapping[str, Any] | None:
        """What every CSV row of a batch transform job asks beside its input, as the operation these settings make the
        job one of says (`WireOperation.csv_parameters`: a classify job's labels or classifier); None: rows are the
        served kind's own."""
        from container import dialects  # imported on use: reading settings (the `serve` CLI) needs no wire registry

        asked = (wire.csv_parameters(self) for wire in dialects.registered() if wire.csv_parameters is not None)
        return next((parameters for parameters in asked if parameters), None)

    def handler_options(self, **extra: Any) -> HandlerOptions:
        """The model handler's options from the rows that say they go there (`extra`: what no setting says, such
        as the metrics observer)."""
        options: dict[str, Any] = {}
        images: dict[str, Any] = {}
        for setting in SETTINGS:
            if setting.handler is not None:
                owner, _, name = setting.handler.rpartition(".")
                (images if owner == "images" else options)[name] = getattr(self, setting.attribute)
        return HandlerOptions(**options, images=ImageOptions(**images), **extra)

    def expects_gpu(self, gpus: int | None = None) -> bool:
        """Whether the model will run on a GPU (`gpus`: how many are visible; None: count them), by the rule that
        also places `serve`'s workers."""
        return on_gpu(self.device, visible_gpus() if gpus is None else gpus)

    def timeout_s(self, batch_body: bool) -> float:
        """How long a request may take: a batch body's, or any request's in a batch transform job, is longer."""
        return self.batch_timeout_s if batch_body or self.batch_job else self.request_timeout_s


def describe_environment(width: int = 100) -> str:
    """SETTINGS as text for `serve --help`: each variable, its default, then its meaning."""
    blocks = []
    for setting in SETTINGS:
        meaning = textwrap.fill(setting.meaning, width, initial_indent="      ", subsequent_indent="      ",
                                break_on_hyphens=False)
        blocks.append(f"  {setting.name} (default: {setting.shown})\n{meaning}")
    libraries = ", ".join(f"{name}={value}" for name, value in LIBRARY_ENVIRONMENT_DEFAULTS.items())
    blocks.append(textwrap.fill(
        f"Set for the libraries unless you set them: {libraries}. Always forced: HF_HUB_OFFLINE=1, "
        "TRANSFORMERS_OFFLINE=1 (nothing is downloaded).", width))
    return "\n".join(blocks)


def markdown_table() -> str:
    """SETTINGS as the README's Configuration table."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{setting.name}` | {setting.shown} | {setting.meaning} |" for setting in SETTINGS]
    return "\n".join(rows) + "\n"


def apply_library_environment(environ=None) -> None:
    """Force offline mode and set the libraries' defaults (a user's own OMP_WAIT_POLICY etc. win)."""
    env = os.environ if environ is None else environ
    force_offline(env)
    for name, value in LIBRARY_ENVIRONMENT_DEFAULTS.items():
        env.setdefault(name, value)


def resolve_model_dir(env: Mapping[str, str]) -> tuple[Path, str, bool]:
    """Which model to serve: $SEARCHBOX_MODEL_DIR, $AZUREML_MODEL_DIR, $AIP_STORAGE_URI (copied by `serve`: the
    directory is `STORAGE_COPY_PENDING` until then), /opt/ml/model, else the embedded default.

    Returns the directory, why it was chosen (for the start-up log), and whether it is the embedded default; the
    embedded model is looked for only when nothing else names a model.
    """
    if env.get(ENV_MODEL_DIR):
        return Path(env[ENV_MODEL_DIR]), f"${ENV_MODEL_DIR}", False
    if env.get(ENV_AZUREML_MODEL_DIR):
        return _azure_model_dir(Path(env[ENV_AZUREML_MODEL_DIR])), f"${ENV_AZUREML_MODEL_DIR}", False
    if env.get(ENV_VERTEX_STORAGE_URI, "").strip():
        return STORAGE_COPY_PENDING, f"${ENV_VERTEX_STORAGE_URI}", False
    if SAGEMAKER_MODEL_DIR.is_dir() and any(SAGEMAKER_MODEL_DIR.iterdir()):
        return SAGEMAKER_MODEL_DIR, "SageMaker model artifact", False
    try:
        return embedded_model_dir(), f"embedded default ({DEFAULT_MODEL_NAME})", True
    except EmbeddedModelMissing:
        raise SettingsError(f"no model to serve: mount a model artifact at {SAGEMAKER_MODEL_DIR} or set "
                            f"{ENV_MODEL_DIR} (this installation carries no default model: the slim image, or no "
                            "torch extra)") from None


def _embedded_or_none() -> Path | None:
    try:
        return embedded_model_dir()
    except EmbeddedModelMissing:
        return None


def _azure_model_dir(root: Path) -> Path:
    """Azure mounts the registered folder under the model dir: use it when it is the only child."""
    if any((root / marker).exists() for marker in _MODEL_MARKERS) or not root.is_dir():
        return root
    children = [c for c in root.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return root


def _rewrite_readme(path: Path) -> bool:
    """Replace the README's Configuration table with SETTINGS'; whether anything changed."""
    text = path.read_text(encoding="utf-8")
    head, found, rest = text.partition("## Configuration\n")
    start = rest.index("| variable |")
    end = rest.index("\n\n", start) + 1
    updated = head + found + rest[:start] + markdown_table() + rest[end:]
    path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        print(f"{readme}: {'rewritten' if _rewrite_readme(readme) else 'already in step'}")
    else:
        print(markdown_table(), end="")
