"""Load the right handler for a model directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import MutableMapping, Protocol, Union

from model_handlers.deadline import Deadline
from model_handlers.options import HandlerOptions
from model_handlers.serving_config import ModelKind, ServingConfig, read_serving_config
from model_handlers.types import EmbedRequest, EmbedResult, RerankRequest, RerankResult

logger = logging.getLogger(__name__)


class Handler(Protocol):
    """What the server calls. Handlers of one kind may also answer the other (see rerank below)."""

    kind: ModelKind
    model_name: str
    config: ServingConfig

    def embed(self, request: EmbedRequest, deadline: Deadline | None = None) -> EmbedResult: ...

    def rerank(self, request: RerankRequest, deadline: Deadline | None = None) -> RerankResult: ...

    def warm_up(self) -> None: ...

    def admit(self, deadline: Deadline) -> None: ...

    def drain(self, grace_s: float) -> None: ...

    def close(self) -> None: ...


# A model package runs network-isolated: whatever the caller's environment says, nothing is downloaded.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def force_offline(environ: MutableMapping[str, str] | None = None) -> None:
    """Switch the Hugging Face libraries offline (and their progress bars off, unless asked for)."""
    env = os.environ if environ is None else environ
    env.update(OFFLINE_ENVIRONMENT)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def load_handler(model_dir: Union[str, Path], options: HandlerOptions | None = None) -> Handler:
    """Read the serving config of `model_dir` and load its handler; nothing is ever downloaded.

    Raises:
        ModelDirectoryError: the directory would not serve; the message says why.
    """
    force_offline()
    options = options or HandlerOptions()
    model_dir = Path(model_dir)
    config = read_serving_config(model_dir, allow_pickle=options.allow_pickle,
                                 fallback_name=options.served_model_name)
    import torch

    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    logger.info("loading %s model %s from %s", config.kind.value, config.served_model_name, model_dir)
    if config.kind is ModelKind.EMBEDDING:
        from model_handlers.text_embedding import TextEmbeddingHandler

        return TextEmbeddingHandler(model_dir, config, options)
    if config.kind is ModelKind.RERANKER:
        from model_handlers.reranker import CrossEncoderHandler

        return CrossEncoderHandler(model_dir, config, options)
    raise NotImplementedError(f"no handler for kind {config.kind.value} yet")
