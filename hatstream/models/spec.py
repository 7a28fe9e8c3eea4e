"""What a loaded model declares about itself, as data (in the spirit of spandrel's ModelDescriptor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping


@dataclass(frozen=True)
class ModelInfo:
    """Capabilities and hyperparameters of a model; callers decide padding and precision from it."""

    name: str  # human name of the variant: 'HAT-S', 'HAT', 'HAT-L', 'HAT (custom)', 'bicubic', ...
    arch: str  # architecture family: 'HAT', 'HAT-chain' (models.chain) or 'bicubic'
    scale: int
    window_multiple: int = 1  # inputs are padded to a multiple of this
    supports_bf16: bool = True
    # Whether hatstream can run the model in fp16. For HAT only because its registry entry's
    # `prepare` rescales the trunk (`hatstream.models.hat_rescale`): it overflows plain fp16.
    supports_fp16: bool = False
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    source: str = "built-in"
    parameters: int = 0

    def __post_init__(self):
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))

    def describe(self) -> str:
        """One line for logs and `hatstream models`."""
        return f"{self.name} x{self.scale} ({self.arch}, {self.parameters:,} parameters, from {self.source})"
