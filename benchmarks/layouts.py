"""The released HAT layouts (HAT-S, HAT, HAT-L at x2/x3/x4), and random-weight checkpoints of them.

Benchmarks need the released architectures but not the released weights: speed does not depend
on the values. The configs are written out here (they are the official constructor keywords)
rather than read from ../shared, which does not exist on the lent GPU machine;
`check_against(path)` compares them with shared/fixtures/hat/released_layouts.json.

    python benchmarks/layouts.py HAT-S_SRx4 /tmp/HAT-S_SRx4.pth     # write a random checkpoint
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# Settings every released model shares (notes/hat.md section 1).
_COMMON = {"in_chans": 3, "img_size": 64, "conv_scale": 0.01, "overlap_ratio": 0.5, "img_range": 1.0,
           "mlp_ratio": 2.0, "upsampler": "pixelshuffle", "resi_connection": "1conv", "window_size": 16}
_FAMILIES = {
    "HAT-S": {"embed_dim": 144, "depths": [6] * 6, "num_heads": [6] * 6, "compress_ratio": 24, "squeeze_factor": 24},
    "HAT": {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "compress_ratio": 3, "squeeze_factor": 30},
    "HAT-L": {"embed_dim": 180, "depths": [6] * 12, "num_heads": [6] * 12, "compress_ratio": 3, "squeeze_factor": 30},
}
RELEASED: dict[str, dict] = {f"{family}_SRx{scale}": {**_COMMON, **widths, "upscale": scale}
                             for family, widths in _FAMILIES.items() for scale in (2, 3, 4)}


def released_config(name: str) -> dict:
    """The official constructor keywords of a released layout, e.g. 'HAT-S_SRx4' (a fresh copy)."""
    try:
        return json.loads(json.dumps(RELEASED[name]))
    except KeyError:
        raise KeyError(f"unknown layout {name!r}; known: {', '.join(RELEASED)}") from None


def random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the layout with deterministic random weights (hatstream's own HAT init)."""
    from hatstream.models.hat import HAT

    torch.manual_seed(seed)
    return HAT(**released_config(name)).state_dict()


def save_random_checkpoint(name: str, path: str | Path, seed: int = 0) -> Path:
    """Write a BasicSR-style `{'params_ema': ...}` .pth of the layout with random weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": random_state(name, seed)}, path)
    return path


def check_against(layouts_json: str | Path) -> list[str]:
    """Differences between RELEASED and the shared fixture's configs and parameter counts ([] if none)."""
    from hatstream.models.hat import HAT

    shared = json.loads(Path(layouts_json).read_text())
    problems = [f"{n}: missing here" for n in shared if n not in RELEASED]
    problems += [f"{n}: not in the fixture" for n in RELEASED if n not in shared]
    for name in set(RELEASED) & set(shared):
        if RELEASED[name] != shared[name]["config"]:
            problems.append(f"{name}: config differs")
        with torch.device("meta"):
            params = sum(p.numel() for p in HAT(**RELEASED[name]).parameters())
        if params != shared[name]["params"]:
            problems.append(f"{name}: {params} parameters, fixture says {shared[name]['params']}")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} LAYOUT OUT.pth   (layouts: {', '.join(RELEASED)})")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(save_random_checkpoint(sys.argv[1], sys.argv[2]))
