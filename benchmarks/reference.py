"""The reference HAT (spandrel's port of the official code) for side-by-side benchmarks.

spandrel is a benchmark extra (`pip install -e .[bench]`), never a runtime dependency. Importing
the package pulls in torchvision, which may not match the installed torch; in that case only its
HAT architecture file is loaded, with its parent packages stubbed so their `__init__` never runs.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types


@functools.lru_cache(maxsize=1)  # the stubs below can be made once per process
def reference_hat_class():
    """The reference `HAT` class, or raise ImportError when spandrel is not installed."""
    try:
        from spandrel.architectures.HAT import HAT  # type: ignore

        return HAT
    except Exception:  # noqa: BLE001 - any import failure means: load the file directly
        pass
    spec = importlib.util.find_spec("spandrel")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("spandrel is not installed: pip install -e '.[bench]'")
    root = list(spec.submodule_search_locations)[0]
    for name in list(sys.modules):
        if name == "spandrel" or name.startswith("spandrel."):
            del sys.modules[name]
    for name, sub in (("spandrel", ""), ("spandrel.architectures", "/architectures"),
                      ("spandrel.architectures.HAT", "/architectures/HAT")):
        stub = types.ModuleType(name)
        stub.__path__ = [root + sub]
        sys.modules[name] = stub
    return importlib.import_module("spandrel.architectures.HAT.__arch.HAT").HAT
