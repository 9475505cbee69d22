"""The models: a registry of kinds (`kinds`), one module per kind, one shared pipeline (`pipeline`).

Imports stay light here: `serve` reads serving configs in the gunicorn master without torch.
"""

from model_handlers.options import HandlerOptions
from model_handlers.serving_config import ServingConfig, read_serving_config

__all__ = ["HandlerOptions", "ServingConfig", "load_handler", "read_serving_config"]


def load_handler(model_dir, options=None):
    """See `model_handlers.loading.load_handler` (imported lazily: it pulls in torch)."""
    from model_handlers.loading import load_handler as _load

    return _load(model_dir, options)
