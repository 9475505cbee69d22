"""`GET /execution-parameters`: what SageMaker batch transform should send, unless the job already said."""

from __future__ import annotations

from typing import Any

from container.settings import Settings

_MIB = 1024 * 1024
# SageMaker refuses a job whose MaxConcurrentTransforms x MaxPayloadInMB exceeds this.
_TRANSFORM_BUDGET_MB = 100


def execution_parameters(settings: Settings, on_gpu: bool) -> dict[str, Any]:
    """The job settings this server wants.

    One request's answer is about 100 times its CSV (a row of text becomes hundreds of JSON
    numbers) and must come back within the job's per-call timeout (600 s by default): 1 MB a
    request on CPU, 6 MB on GPU. A few requests in flight keep the batcher fed while others are
    parsed and rendered (2 on CPU, 4 on GPU). Values the job sets win; the ones chosen here are cut
    so that MaxConcurrentTransforms x MaxPayloadInMB stays within SageMaker's 100 MB.
    """
    body_limit_mb = max(1, settings.max_payload_bytes // _MIB)
    payload = settings.transform_max_payload_mb or min(6 if on_gpu else 1, body_limit_mb)
    concurrency = settings.transform_max_concurrent or (4 if on_gpu else 2)
    if settings.transform_max_concurrent is None:
        concurrency = max(1, min(concurrency, _TRANSFORM_BUDGET_MB // payload))
    elif settings.transform_max_payload_mb is None:
        payload = max(1, min(payload, _TRANSFORM_BUDGET_MB // concurrency))
    return {
        "MaxConcurrentTransforms": concurrency,
        "BatchStrategy": settings.transform_batch_strategy or "MULTI_RECORD",
        "MaxPayloadInMB": payload,
    }
