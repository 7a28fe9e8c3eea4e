"""hatstream: video super-resolution with HAT, the Hybrid Attention Transformer.

The public entry points are re-exported here lazily so that `import hatstream` stays cheap
(the CLI imports torch only for the commands that need it).
"""

__version__ = "0.1.0"

__all__ = ["load_model", "__version__"]


def load_model(name_or_path=None, device=None, precision="auto", scale=None, compile=False):
    """Load a built-in model by name or a checkpoint by path; see `hatstream.inference.load_model`."""
    from hatstream.inference import load_model as _load_model

    return _load_model(name_or_path, device=device, precision=precision, scale=scale, compile=compile)
