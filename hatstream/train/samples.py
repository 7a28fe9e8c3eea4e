"""The photos the bundled models are trained on: scikit-image's sample images shipped in its wheel.

`python -m hatstream.train.samples OUT_DIR` writes the three splits as PNG folders:
  pretrain/  the larger, mixed pool for same-task pretraining (grey photos replicated to RGB)
  finetune/  the target set, colour photos, for the small-learning-rate fine-tuning stage
  heldout/   photos never trained on, for validation and `hatstream eval`
Only files inside the wheel are used (no download via pooch), so the result is reproducible offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Natural colour photos: the target set.
FINETUNE = ("coffee", "motorcycle_left", "motorcycle_right", "immunohistochemistry")
# Pretraining adds grey photos, textures, astronomy and medical images: more diverse, less like
# the target (hubble and retina are mostly black, which would dominate a small target set).
PRETRAIN_EXTRA = ("hubble_deep_field", "retina", "brick", "camera", "cell", "clock", "coins", "grass", "gravel",
                  "microaneurysms", "moon", "page", "text", "logo")
HELDOUT = ("astronaut", "chelsea", "rocket")
SPLITS = {"pretrain": FINETUNE + PRETRAIN_EXTRA, "finetune": FINETUNE, "heldout": HELDOUT}


def load(name: str):
    """A scikit-image sample photo as uint8 RGB (H, W, 3)."""
    import numpy as np
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) * (255.0 if img.max() <= 1 else 1.0)).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def _stereo(name: str):
    from skimage import data

    left, right = data.stereo_motorcycle()[:2]
    return left if name == "motorcycle_left" else right


def write_splits(out: Path) -> dict[str, list[str]]:
    """Write every split under `out` as PNG files; returns {split: [names]}."""
    import cv2
    import numpy as np

    for split, names in SPLITS.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            img = _stereo(name) if name.startswith("motorcycle") else load(name)
            img = np.ascontiguousarray(img)
            cv2.imwrite(str(out / split / f"{name}.png"), img[..., ::-1])
    return {k: list(v) for k, v in SPLITS.items()}


if __name__ == "__main__":
    print(write_splits(Path(sys.argv[1] if len(sys.argv) > 1 else "samples")))
