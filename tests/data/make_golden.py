"""Write tests/data from the reference fixtures in ../shared (run by hand; the tests never need ../shared).

    python tests/data/make_golden.py [SHARED_DIR]

- `released_layouts.json.xz`: every tensor name, shape and dtype of each released HAT checkpoint, with its
  config and parameter count (shared/fixtures/hat/released_layouts.json, xz-compressed: 808 kB -> 3 kB).
- `metrics.npz`: BasicSR 1.4.2's MATLAB-style bicubic downscales and the images it scores, reduced to what
  the tests need. The HR images are crops of scikit-image's sample photos (a test dependency), so only
  the crop box is kept, with the crop's SHA-256. The LR image is kept as uint8, with the rounding
  residual of the float downscale (which overshoots [0, 1] where bicubic rings) as int16 in steps of
  1/50 of a code value (error <= 4e-5 on [0, 1]; the tests allow 1e-4).
  The scored image (an OpenCV bicubic upscale of the LR) is rebuilt by the test with OpenCV; where this
  OpenCV rounds differently from the fixture's (a few pixels at x3), the fixture's values are kept sparsely.
- `metrics.json`: the reference PSNR/SSIM values (shared/fixtures/metrics/expected.json).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data

HERE = Path(__file__).resolve().parent
CROPS = {"astronaut": (40, 120), "chelsea": (20, 100), "coffee": (100, 200)}  # (top, left) in the photo


def main(shared: Path) -> None:
    hat, metrics = shared / "fixtures" / "hat", shared / "fixtures" / "metrics"
    layouts = json.loads((hat / "released_layouts.json").read_text())
    (HERE / "released_layouts.json.xz").write_bytes(lzma.compress(json.dumps(layouts).encode(), preset=9 | lzma.PRESET_EXTREME))
    expected = json.loads((metrics / "expected.json").read_text())
    arrays = {}
    for case in expected:
        name = case["case"]
        d = np.load(metrics / f"{name}.npz")
        photo = case["case"].split("_")[0]
        top, left = CROPS[photo]
        h, w = d["hr"].shape[:2]
        assert np.array_equal(getattr(skimage.data, photo)()[top:top + h, left:left + w], d["hr"]), name
        case.update(photo=photo, box=[top, left, h, w], hr_sha256=hashlib.sha256(d["hr"].tobytes()).hexdigest())
        residual = np.round((d["lr_float"].astype(np.float64) * 255 - d["lr"]) * 50)
        arrays[f"{name}/lr"] = d["lr"]
        arrays[f"{name}/lr_residual"] = residual.astype(np.int16)
        ours = cv2.resize(d["lr"], (w, h), interpolation=cv2.INTER_CUBIC)
        where = np.nonzero(ours != d["sr"])
        arrays[f"{name}/sr_fix_index"] = np.stack(where).astype(np.int32)
        arrays[f"{name}/sr_fix_value"] = d["sr"][where]
    np.savez_compressed(HERE / "metrics.npz", **arrays)
    (HERE / "metrics.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[2] / "shared"))
