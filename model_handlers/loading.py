"""Load a model directory: its kind from the registry, the kind's model, behind the shared pipeline."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Hashable, MutableMapping, Union

from model_handlers import operations
from model_handlers.errors import ModelDirectoryError
from model_handlers.onnx_runtime import resolved_backend
from model_handlers.options import HandlerOptions
from model_handlers.pipeline import Pipeline
from model_handlers.serving_config import ServingConfig, read_serving_config

logger = logging.getLogger(__name__)

# A model package runs network-isolated: whatever the caller's environment says, nothing is downloaded.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def force_offline(environ: MutableMapping[str, str] | None = None) -> None:
    """Switch the Hugging Face libraries offline (and their progress bars off, unless asked for)."""
    env = os.environ if environ is None else environ
    env.update(OFFLINE_ENVIRONMENT)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def load_handler(model_dir: Union[str, Path], options: HandlerOptions | None = None) -> Pipeline:
    """Read the serving config of `model_dir` and load its model behind the pipeline; nothing is ever downloaded.

    Raises:
        ModelDirectoryError: the directory would not serve; the message says why.
    """
    force_offline()
    options = options or HandlerOptions()
    model_dir = Path(model_dir)
    config = read_serving_config(model_dir, allow_pickle=options.allow_pickle,
                                 trust_remote_code=options.trust_remote_code, fallback_name=options.served_model_name)
    config = dataclasses.replace(config, backend=resolved_backend(config.backend, options.backend))
    return load_pipeline(model_dir, config, options)


def load_pipeline(model_dir: Path, config: ServingConfig, options: HandlerOptions) -> Pipeline:
    """The model `config` describes, loaded on `config.backend` by its kind, behind the pipeline: the one place
    a backend is chosen (packaging's quality gate loads one directory on both through here).

    Raises:
        ModelDirectoryError: the kind has no such backend, or the directory would not load.
    """
    load = config.kind.backends.get(config.backend)
    if load is None:
        raise ModelDirectoryError(f"kind {config.kind.name} has no {config.backend.upper()} backend (its models are "
                                  f"not exported); serve it on {', '.join(config.kind.backends)}: leave "
                                  "SEARCHBOX_BACKEND and searchbox.json's backend unset")
    logger.info("loading %s model %s from %s on %s", config.kind.name, config.served_model_name, model_dir,
                config.backend)
    model = load(model_dir, config, options)
    if config.backend == "torch":  # an ONNX artifact's image may have no torch; its sessions take their threads
        options.set_torch_threads(model.device, model.reentrant)
    for name in sorted(config.kind.operations):
        protocol = operations.named(name).model
        if not isinstance(model, protocol):
            raise AssertionError(f"kind {config.kind.name} answers {name}, but its {type(model).__name__} is no "
                                 f"{protocol.__name__}; this is a bug")
    return Pipeline(config.kind, model, config, options, measured_as=_pass_cost_key(model_dir, config, model, options))


def _pass_cost_key(model_dir: Path, config: ServingConfig, model, options: HandlerOptions) -> Hashable:
    """What the cost of this model's forward passes depends on: its files (by name, size and modification time, so a
    copy made with its times kept is the same model), its code, its device and threads, and the passes' shape."""
    files = tuple(sorted((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns)
                         for path in model_dir.rglob("*") if path.is_file() and (stat := path.stat())))
    return (files, config.kind.name, config.backend, type(model).__module__, type(model).__qualname__,
            str(model.device), model.max_length, options.resolved_max_batch_tokens(model.device),
            options.max_batch_items, options.torch_threads)
