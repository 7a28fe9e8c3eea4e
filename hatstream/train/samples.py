"""The photos the bundled models are trained on: scikit-image's sample images shipped in its wheel.

`python -m hatstream.train.samples OUT_DIR [--debs DIR]` writes the splits as PNG folders:
  pretrain/  the larger, mixed pool for same-task pretraining (grey photos replicated to RGB)
  finetune/  the target set, colour photos, for the small-learning-rate fine-tuning stage
  heldout/   photos never trained on, for validation and `hatstream eval`
  debian/    with --debs: landscape and close-up photos from Debian's wallpaper packages, added to
             the pretraining pool (scikit-image alone has too few natural colour photos)
Only files inside installable packages are used (scikit-image's wheel, no download via pooch; the
.deb files `apt-get download` fetches), so the result is reproducible offline once they are on disk.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
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


# Photos (not renders or abstract art) in Debian bookworm's wallpaper packages, fetched with
# `apt-get download mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04`.
# Licences: GPL-2+ (MATE), CC-BY-4.0 / CC-BY-SA-4.0 (Ubuntu wallpaper contest photos).
DEBIAN_PHOTOS = {
    "mate-backgrounds_1.26.0-1_all.deb": (
        "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
        "./usr/share/backgrounds/mate/nature/",
        ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
         "TwoWings", "Wood", "YellowFlower"),
    ),
    "lomiri-wallpapers-16.04_20.04.0-2_all.deb": (
        "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
        "./usr/share/backgrounds/",
        ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
         "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
         "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
         "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi"),
    ),
    "lomiri-wallpapers-20.04_20.04.0-2_all.deb": (
        "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
        "./usr/share/backgrounds/",
        ("Kleiber_by_Lukas_Baubkus",),
    ),
}
# Wallpapers are 1.3-6k pixel JPEGs. Shrinking them (area filter) to this short side removes JPEG
# blocking and sensor noise, as DIV2K-style HR sets are clean, and packs more detail per patch.
DEBIAN_SHORT_SIDE = 720


def _deb_members(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files named in `wanted` from a .deb's data archive, by path (a .deb is an `ar` archive
    of tarballs); names it lacks are absent from the result."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb}: not a .deb (ar) archive")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:  # tarfile reads gz/xz/bz2 itself
                return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and m.name in wanted}
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    raise ValueError(f"{deb}: no data.tar member")


def write_debian_photos(debs: Path, out: Path, photos: dict | None = None) -> list[str]:
    """Write `photos` (default DEBIAN_PHOTOS) from the .deb files in `debs` to `out` as PNG,
    shrunk to a short side of DEBIAN_SHORT_SIDE; returns the names written."""
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for deb_name, (sha256, folder, names) in (DEBIAN_PHOTOS if photos is None else photos).items():
        deb = debs / deb_name
        if hashlib.sha256(deb.read_bytes()).hexdigest() != sha256:
            raise ValueError(f"{deb}: sha256 differs from the version these photos were chosen from")
        members = _deb_members(deb, {f"{folder}{name}.jpg" for name in names})
        for name in names:
            data = members[f"{folder}{name}.jpg"]
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            f = DEBIAN_SHORT_SIDE / min(h, w)
            img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / f"{name}.png"), img)
            written.append(name)
    return written


def main(argv: list[str] | None = None) -> None:
    """Command line: write the splits (and, with --debs, the Debian photos) under OUT_DIR."""
    parser = argparse.ArgumentParser(prog="python -m hatstream.train.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="samples", help="output folder (default: samples)")
    parser.add_argument("--debs", type=Path, help="folder holding the .deb files named in DEBIAN_PHOTOS")
    args = parser.parse_args(argv)
    out = Path(args.out)
    splits = write_splits(out)
    if args.debs:
        splits["debian"] = write_debian_photos(args.debs, out / "debian")
    for split, names in splits.items():
        print(f"{out / split}: {len(names)} images")


if __name__ == "__main__":
    main()
