"""Lower layers never import upper ones: checked on the source, so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hatstream"

# package -> modules it must not import (at module level or inside a function)
FORBIDDEN = {
    "models": ("av", "hatstream.media", "hatstream.inference", "hatstream.pipeline", "hatstream.watch",
               "hatstream.commands", "hatstream.cli"),
    "media": ("hatstream.models", "hatstream.inference", "hatstream.pipeline", "hatstream.watch",
              "hatstream.commands", "hatstream.cli"),
    "inference": ("av", "hatstream.media", "hatstream.pipeline", "hatstream.watch", "hatstream.commands",
                  "hatstream.cli"),
    "pipeline": ("hatstream.watch", "hatstream.commands", "hatstream.cli"),
    "train": ("hatstream.watch", "hatstream.commands", "hatstream.cli"),
    # The watcher hands its settings to the pipeline (hatstream.pipeline.options), not to media/.
    "watch": ("hatstream.media", "hatstream.commands", "hatstream.cli"),
}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_layers_import_only_downward():
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not found, "\n".join(found)
