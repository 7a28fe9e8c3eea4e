"""HAT and its registry: the architecture, checkpoint loading and the built-in models (no video here).

`hatstream.models.HAT(**official_kwargs)` builds the network with the official constructor keywords;
`HATConfig` is the same as a frozen dataclass. Both are imported on first use, so that importing a
light submodule (`hatstream.models.spec`) does not import torch.
"""

__all__ = ["HAT", "HATConfig"]


def __getattr__(name: str):
    if name in __all__:
        from hatstream.models import hat

        return getattr(hat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
