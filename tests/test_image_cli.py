"""`hatstream image` as a user runs it: a subprocess on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from conftest import run_cli
from hatstream.models.hat import HAT


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(peak**2 / max(mse, 1e-12))


@pytest.fixture
def photo(tmp_path):
    rgb = skimage.data.astronaut()[96:160, 160:256]  # (64, 96, 3): a face, real detail
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), rgb[..., ::-1])
    return path, rgb


def test_upscales_a_real_photo_with_visible_content(photo, tmp_path):
    path, rgb = photo
    out = tmp_path / "out.png"
    res = run_cli("image", path, "-o", out, "--scale", "2")
    assert res.returncode == 0, res.stderr
    up = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert up.shape == (128, 192, 3)
    # Content, not noise: downscaled back, it matches the photo closely.
    back = cv2.resize(up, (96, 64), interpolation=cv2.INTER_AREA)
    assert psnr(back, rgb) > 28
    assert np.corrcoef(back.ravel(), rgb.ravel())[0, 1] > 0.97


def test_hat_checkpoint_through_the_cli(photo, tmp_path):
    path, _ = photo
    model = HAT(upscale=4, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"params_ema": model.state_dict()}, ckpt)
    out = tmp_path / "hat.jpg"
    res = run_cli("image", path, "-o", out, "--model", ckpt)
    assert res.returncode == 0, res.stderr
    assert cv2.imread(str(out)).shape == (256, 384, 3)


def test_16bit_and_alpha_are_kept(tmp_path):
    rgb16 = (skimage.data.coffee()[:40, :56].astype(np.uint16) * 257)
    alpha = np.tile(np.linspace(0, 65535, 56, dtype=np.uint16), (40, 1))
    bgra = np.dstack([rgb16[..., ::-1], alpha])
    src = tmp_path / "deep.png"
    cv2.imwrite(str(src), bgra)
    out = tmp_path / "deep_x3.png"
    res = run_cli("image", src, "-o", out, "--model", "bicubic", "--scale", "3")
    assert res.returncode == 0, res.stderr
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (120, 168, 4)
    # The alpha ramp survives as a ramp, upscaled, not flattened to opaque.
    assert img[..., 3][:, 0].mean() < 2000 and img[..., 3][:, -1].mean() > 63000
    # 16-bit precision is used: values that an 8-bit path could not produce appear.
    assert np.any(img[..., :3] % 257 != 0)


def test_folder_to_folder(tmp_path, photo):
    path, rgb = photo
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "a.png"), rgb[..., ::-1])
    cv2.imwrite(str(src / "sub" / "b.jpg"), rgb[..., ::-1])
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = run_cli("image", src, "-o", out, "--model", "bicubic", "--scale", "2")
    assert res.returncode == 0, res.stderr
    assert cv2.imread(str(out / "a.png")).shape == (128, 192, 3)
    assert cv2.imread(str(out / "sub" / "b.jpg")).shape == (128, 192, 3)
    assert not (out / "notes.txt").exists()


def test_bad_inputs_give_one_line_errors(tmp_path, photo):
    path, _ = photo
    cases = {
        "missing": (tmp_path / "missing.png", tmp_path / "o1.png"),
        "not an image": (tmp_path / "fake.png", tmp_path / "o2.png"),
    }
    (tmp_path / "fake.png").write_bytes(b"this is not a png at all")
    for name, (src, out) in cases.items():
        res = run_cli("image", src, "-o", out, "--model", "bicubic")
        assert res.returncode == 2, name
        assert res.stderr.startswith("hatstream: error: ") and res.stderr.count("\n") == 1, res.stderr
        assert "Traceback" not in res.stderr
        assert not out.exists()
    # No overwrite without --overwrite, and never over the input.
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep me")
    res = run_cli("image", path, "-o", existing, "--model", "bicubic")
    assert res.returncode == 2 and existing.read_bytes() == b"keep me"
    res = run_cli("image", path, "-o", path, "--model", "bicubic", "--overwrite")
    assert res.returncode == 2 and "input" in res.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if ".part" in p.name]
    assert leftovers == []


def test_partial_files_are_found_and_finished_files_are_world_readable(tmp_path):
    import os

    from hatstream.atomic import atomic_output, partial_files

    out = tmp_path / "clip.x2.mkv"
    with pytest.raises(RuntimeError):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"half")
            assert partial_files(out) == [tmp]  # what a SIGKILL at this point would leave
            raise RuntimeError("writer failed")
    assert partial_files(out) == [] and not out.exists()
    (tmp_path / "unrelated.part.mkv").write_bytes(b"x")
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and partial_files(out) == []
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_partial_files_never_match_another_outputs_temporary_file(tmp_path):
    from hatstream.atomic import atomic_output, partial_files

    with atomic_output(tmp_path / "talk.final.mp4") as other:
        other.write_bytes(b"someone else's run")
        assert partial_files(tmp_path / "talk.mp4") == []
        assert partial_files(tmp_path / "talk.final.mp4") == [other]


def test_an_output_that_appears_during_the_run_is_not_clobbered_without_overwrite(tmp_path):
    from hatstream.atomic import atomic_output, partial_files
    from hatstream.errors import HatstreamError

    out = tmp_path / "clip.x2.mp4"
    with pytest.raises(HatstreamError, match="appeared while"):
        with atomic_output(out, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            out.write_bytes(b"another job's")  # written after the up-front check, before we finish
    assert out.read_bytes() == b"another job's" and partial_files(out) == []
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"ours")
    assert out.read_bytes() == b"ours"
    out.unlink()
    with atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"first")
    assert out.read_bytes() == b"first" and partial_files(out) == [] and out.stat().st_nlink == 1


def _exif(orientation: int, **ifd0):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "Phonemaker", "Phone 7"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = "2026:12:01 10:00:00"  # DateTimeOriginal, in the Exif sub-IFD
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_displays_it(tmp_path, orientation):
    from PIL import Image, ImageOps

    from hatstream.imageio import read_image

    rgb = skimage.data.astronaut()[100:120, 180:220]  # (20, 40): stored landscape
    src = tmp_path / "o.png"
    Image.fromarray(rgb).save(src, exif=_exif(orientation))
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    img = read_image(src)
    assert img.metadata.orientation == orientation
    assert np.array_equal(np.rint(img.rgb * 255).astype(np.uint8), shown)


def test_phone_jpeg_keeps_its_orientation_profile_and_metadata(tmp_path):
    from PIL import Image, ImageCms, ImageOps

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = skimage.data.astronaut()[100:120, 180:220]  # stored 40x20, Orientation=6: shown 20x40
    src = tmp_path / "phone.jpg"
    Image.fromarray(rgb).save(src, quality=95, exif=_exif(6), icc_profile=icc, dpi=(300, 300))
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    assert shown.shape == (40, 20, 3)
    for name in ("phone_x2.jpg", "phone_x2.png"):
        out = tmp_path / name
        res = run_cli("image", src, "-o", out, "--model", "bicubic", "--scale", "2")
        assert res.returncode == 0, res.stderr
        stored = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
        assert stored.shape == (80, 40, 3), name  # upright pixels, not the sensor's landscape
        back = cv2.resize(stored, (20, 40), interpolation=cv2.INTER_AREA)
        assert psnr(back, shown) > 28, name
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == icc, name
            exif = im.getexif()
            assert exif.get(0x0112, 1) == 1 and exif[0x010F] == "Phonemaker" and exif[0x0110] == "Phone 7", name
            assert exif.get_ifd(0x8769)[0x9003] == "2026:12:01 10:00:00", name
            assert tuple(round(d) for d in im.info["dpi"]) == (300, 300), name
            assert ImageOps.exif_transpose(im).size == (40, 80), name  # shown the same way as the input


def test_png_text_gamma_and_resolution_survive_a_png_to_png_upscale(tmp_path):
    import struct
    import zlib

    from PIL import Image, PngImagePlugin

    rgb = skimage.data.astronaut()[100:132, 180:228]
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "A. Photographer")
    info.add_itxt("Description", "Mond über dem See")
    src = tmp_path / "scan.png"
    Image.fromarray(rgb).save(src, pnginfo=info, dpi=(600, 600))
    # Pillow writes no gAMA chunk; add one after IHDR (8 + 25 bytes in), as a scanner would.
    data = src.read_bytes()
    body = b"gAMA" + struct.pack(">I", 45455)
    src.write_bytes(data[:33] + struct.pack(">I", 4) + body + struct.pack(">I", zlib.crc32(body)) + data[33:])
    out = tmp_path / "scan_x2.png"
    res = run_cli("image", src, "-o", out, "--model", "bicubic", "--scale", "2")
    assert res.returncode == 0, res.stderr
    with Image.open(out) as im:
        assert im.size == (96, 64)
        assert im.text["Author"] == "A. Photographer" and im.text["Description"] == "Mond über dem See"
        assert tuple(round(d) for d in im.info["dpi"]) == (600, 600)
        assert abs(im.info["gamma"] - 0.45455) < 1e-5
