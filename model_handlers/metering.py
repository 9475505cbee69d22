"""What one billed unit is, when a model is sold per inference on AWS Marketplace (searchbox.json `metering`).

AWS bills each 2xx answer of a real-time endpoint by the `ConsumedUnits` the container reports in
`X-Amzn-Inference-Metering` (1 when it reports none), never a non-2xx; batch transform is always billed
per hour. A unit is one request, one input (a rerank's documents), or N tokens of the `usage` the body
reports (rounded up per request), so a buyer can reconcile the invoice with the responses. Without a
`metering` key the model is priced per hour and no header is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from model_handlers.errors import ModelDirectoryError

UNITS = ("request", "input", "tokens")


@dataclass(frozen=True)
class Metering:
    unit: str  # one of UNITS
    tokens_per_unit: int = 1

    def units(self, *, inputs: int, tokens: int) -> int:
        """The units one answered request consumed: a positive integer (AWS counts every 2xx at least once)."""
        if self.unit == "request":
            return 1
        if self.unit == "input":
            return max(1, inputs)
        return max(1, math.ceil(tokens / self.tokens_per_unit))

    def describe(self) -> str:
        """One unit, in a buyer's words."""
        if self.unit == "request":
            return "one request"
        if self.unit == "input":
            return "one input (a text or image to embed, or a document to rerank)"
        return f"{self.tokens_per_unit:,} tokens of usage, rounded up per request"


def parse_metering(value: Any, where: str) -> Metering | None:
    """searchbox.json's `metering` ({"unit": "tokens", "tokens_per_unit": 1000}); None: hourly pricing.

    Raises:
        ModelDirectoryError: naming the key to fix.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("unit") not in UNITS or set(value) - {"unit", "tokens_per_unit"}:
        raise ModelDirectoryError(f"{where}: metering must be {{\"unit\": one of {', '.join(UNITS)}"
                                  f"[, \"tokens_per_unit\": N]}}, not {value!r}")
    per = value.get("tokens_per_unit", 1)
    if isinstance(per, bool) or not isinstance(per, int) or per < 1 or (per != 1 and value["unit"] != "tokens"):
        raise ModelDirectoryError(f"{where}: metering.tokens_per_unit must be a positive integer, and only with "
                                  f"unit tokens, not {per!r}")
    return Metering(value["unit"], per)
