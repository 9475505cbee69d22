"""Runtime options a handler is built with: the server fills them from its settings table, once (container/settings.py),
whose rows for these options take their defaults from here; scripts and tests build them directly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from model_handlers.batching import BatchObserver
from model_handlers.deadline import Deadline


GPU_MAX_BATCH_TOKENS = 16384
CPU_MAX_BATCH_TOKENS = 1024
# Forward passes at once on a CPU, each on its share of the cores. Measured on 2 cores (`python -m bench.lanes`:
# all-MiniLM-L6-v2, passes of 32 short texts, in-process): two passes on one thread each ran torch at 1.11x, ONNX fp32
# at 1.05x and int8 at 1.07x one pass on two threads; two passes on two threads each (the cores oversubscribed) ran
# below both. A pass's own threads idle at every operator's end (its GELUs, layer norms, softmax are short), and the
# other pass fills them. Not measured on more cores: there each pass keeps half of them.
CPU_LANES = 2


@dataclass(frozen=True)
class ImageOptions:
    """How image inputs are read (model_handlers/images.py)."""

    # Pixels (width x height) an image may have; checked from its header, before any pixel is decoded.
    max_pixels: int = 50_000_000
    # Fetch http(s) image URLs. Off: model packages run network-isolated, and a server that fetches what its
    # callers name must be trusted not to be turned against its own network.
    fetch: bool = False
    # Seconds the fetching of one request's images may take in all (redirects included).
    fetch_timeout_s: float = 10.0
    # Bytes one fetched image may have.
    fetch_max_bytes: int = 10 * 1024 * 1024
    # Host names fetched even though they resolve to loopback or private addresses (an internal image store;
    # tests); metadata and link-local addresses stay refused whatever the name.
    fetch_allow_hosts: tuple[str, ...] = ()
    # Pages one PDF input may have (model_handlers/pdf.py): each is rendered and read as an image.
    pdf_max_pages: int = 32


@dataclass(frozen=True)
class HandlerOptions:
    device: str = "auto"
    # The operator's word on the code a model directory may run (model_handlers/model_code.py): pickled weights,
    # and remote code that no artifact manifest pins.
    allow_pickle: bool = False
    trust_remote_code: bool = False
    # Padded tokens (longest x count) one forward pass may hold; None: the device's default (below).
    max_batch_tokens: int | None = None
    max_batch_items: int = 256
    # Inputs one request may make: the server refuses longer lists before they reach a model; a model that reads a
    # PDF as its pages counts each page as an input (a row of the answer).
    max_inputs: int = 2048
    # How long a caller waits for its rows before getting an Overloaded error, when the server gives no deadline:
    # below SageMaker's 60 s real-time invocation limit, so that the caller gets the answer or the 503 + Retry-After
    # it can act on before its own client gives up (the margin covers transfer and a busy machine's variance).
    request_timeout_s: float = 50.0
    # Model inputs one rerank request may make (a long document makes one per window).
    max_rerank_windows: int = 4096
    # intra-op threads of torch or ONNX Runtime; None: their own choice (one per core)
    torch_threads: int | None = None
    # "torch" or "onnx" whatever searchbox.json says; None: searchbox.json's choice
    backend: str | None = None
    # The name answered in `model` when searchbox.json gives none.
    served_model_name: str | None = None
    # Told about every forward pass and queue wait (the server's metrics); None: nobody listens.
    observer: BatchObserver | None = None
    images: ImageOptions = field(default_factory=ImageOptions)
    # LoRA adapters registered at run time (SageMaker's adapter API) held in memory at once; past it the least
    # recently used one not pinned is unloaded (and loaded again when asked for).
    max_adapters: int = 8
    # Few-shot classifiers trained on the endpoint (POST /v1/train, model_handlers/classifier_store.py): where they are
    # kept (a local directory, or a volume every instance mounts; None: a directory under the system's temp dir), how
    # long a read classifier is reused before the store is read again (the bound on a stale answer), Jina's published
    # limits (16 classes and 16 classifiers for few-shot, 1,024 inputs per request), and whether training may
    # overwrite a classifier shipped in the artifact.
    classifier_store: str | None = None
    classifier_refresh_s: float = 2.0
    max_classes: int = 16
    max_classifiers: int = 16
    max_train_examples: int = 1024
    overwrite_artifact_classifiers: bool = False
    # The `input_type` of requests that give none ("query" or "document"; batch transform CSV rows give none),
    # chosen by the operator for a whole job; None leaves it to searchbox.json, else to the model.
    default_input_type: str | None = None

    def deadline(self) -> Deadline:
        """The deadline of a request the server gave none (warm-up, scripts)."""
        return Deadline.after(self.request_timeout_s)

    def resolved_max_batch_tokens(self, device) -> int:
        """A GPU wants big passes. A CPU is saturated by ~1k tokens, and smaller passes keep it busy
        while earlier callers' answers are written, and bound the activations' resident memory:
        in bench/, 1024 instead of 16384 gave 4 clients x 32 texts 0.90x instead of 0.76x the
        in-process limit, 15% less CPU per text, and the same memory as the 16384 budget plus a
        fixed malloc mmap threshold."""
        if self.max_batch_tokens:
            return self.max_batch_tokens
        return GPU_MAX_BATCH_TOKENS if str(device).startswith("cuda") else CPU_MAX_BATCH_TOKENS

    def lanes(self, device: str, reentrant: bool) -> int:
        """Forward passes run at once: on a CPU, two share the cores (CPU_LANES) where the model's forward may run
        on several threads at once (`reentrant`: ONNX Runtime, which leaves the GIL for a whole pass; torch on modules
        that hold no state of a pass); elsewhere, and on any GPU, one."""
        if not reentrant or str(device).startswith("cuda"):
            return 1
        return max(1, min(CPU_LANES, self._threads()))

    def pass_threads(self, device: str, reentrant: bool) -> int:
        """Intra-op threads of one pass: the instance's threads (SEARCHBOX_TORCH_THREADS, or one per core this
        process may use) shared out to the lanes."""
        return max(1, self._threads() // self.lanes(device, reentrant))

    def set_torch_threads(self, device: str, reentrant: bool) -> None:
        """torch's intra-op threads (one setting per process) for the passes of a model loaded on `device`: each lane's
        share where passes run at once, SEARCHBOX_TORCH_THREADS where the operator names some, else torch's own."""
        if self.torch_threads or self.lanes(device, reentrant) > 1:
            import torch

            torch.set_num_threads(self.pass_threads(device, reentrant))

    def _threads(self) -> int:
        return self.torch_threads or len(os.sched_getaffinity(0))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def weights_dtype(device: str) -> str:
    """The dtype a model's weights are loaded in on `device`, as transformers' `dtype` argument names it: float32 on a
    CPU, where bf16 (what decoders are stored in) is slower on most CPUs and drifts from the fp32 answers; the
    checkpoint's own on a GPU ("auto": bf16 for Qwen3 and Gemma 3)."""
    return "auto" if str(device).startswith("cuda") else "float32"
