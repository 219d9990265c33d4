"""Errors of the weights pipeline (merge, quantize, fine-tune).

They subclass the service's domain errors, so a failed startup shows up in
`/ready` with the same clear message the CLI prints.
"""

from __future__ import annotations

from services.common.errors import InvalidRequest


class WeightsError(InvalidRequest):
    """The weights settings can't be served (bad adapter, incompatible base...)."""

    code = "invalid_weights"


class UnsupportedQuantization(WeightsError):
    """The quantization method can't run with this engine on this device."""

    code = "unsupported_quantization"

    def __init__(self, message: str):
        super().__init__(message, param="quantization")
