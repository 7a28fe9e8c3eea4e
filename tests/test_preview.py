"""`hatstream preview`: real clips made here, the real CLI in a subprocess, real PNG and HTML files.

Every frame of the clip is a checkerboard whose dark squares carry the frame's index as their
grey level, so a preview panel says which frame it came from. The clip is H.264 with B-frames
and a keyframe every 8 frames, so each time needs a seek and decoding past reordered frames.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import run_cli
from mediagen import Clip, make_video

W, H, FRAMES = 64, 48, 40
_SQUARE = 4


def _level(i: int) -> int:
    return 20 + 5 * i  # the dark squares of frame i; the light ones are 250


def _indexed(i: int, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    dark = ((x // _SQUARE + y // _SQUARE) % 2) == 0
    img = np.where(dark, _level(i), 250).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def _index_of(panel: np.ndarray) -> int:
    """The frame index a source panel shows (its darkest grey, allowing for x264's rounding)."""
    dark = np.percentile(panel[:, :, 1], 10)
    return int(round((dark - 20) / 5))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("preview") / "indexed.mp4"
    return make_video(path, Clip(frames=FRAMES, width=W, height=H, codec="libx264", image=_indexed,
                                 options={"g": "8", "bf": "2", "qp": "0", "preset": "ultrafast"}))


def test_png_shows_the_frames_at_the_given_times(clip, tmp_path):
    out = tmp_path / "sheet.png"
    result = run_cli("preview", clip, "--at", "0.5,1.0,0:01.38", "--model", "bicubic", "--scale", "2",
                     "--crop", "40x32", "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "0.480s, 1.000s, 1.360s" in result.stdout and str(out) in result.stdout
    assert "a full run would take about" in result.stderr and f"its {FRAMES} frames" in result.stderr
    img = cv2.imread(str(out))[:, :, ::-1]
    # Three rows (header 30 + labels 24 + panel 32), three 40-pixel panels with 6-pixel gaps.
    assert img.shape == (3 * (30 + 24 + 32), 3 * 40 + 4 * 6, 3)
    for row, index in enumerate((12, 25, 34)):
        top = row * 86 + 54
        source = img[top:top + 32, 6:46]
        assert _index_of(source) == index
        # Nearest neighbour: every 2x2 block of the source panel is one source pixel.
        assert (source[0::2, 0::2] == source[1::2, 1::2]).all()


def test_count_spreads_frames_and_the_default_model_runs(clip, tmp_path):
    out = tmp_path / "sheet.png"
    result = run_cli("preview", clip, "--count", "4", "-o", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # 1.6 s of video in four shares, each frame from the middle of its share.
    assert "0.200s, 0.600s, 1.000s, 1.400s" in result.stdout and "hat-tiny-x2" in result.stdout
    img = cv2.imread(str(out))[:, :, ::-1]
    assert img.shape[0] == 4 * (30 + 24 + 96) and img.shape[1] == 3 * 128 + 4 * 6  # crop limited to 128x96
    for row, index in enumerate((5, 15, 25, 35)):
        assert _index_of(img[row * 150 + 54:row * 150 + 54 + 96, 6:134]) == index


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.figures: list[dict] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        for name in ("src", "href", "action", "data", "poster", "srcset"):
            if name in attrs:
                self.urls.append((tag, name, attrs[name] or ""))
        if tag == "figure":
            self.figures.append({"time": float(attrs["data-time"]), "images": {}})
        if tag == "img":
            kind = attrs.get("data-kind") or attrs["class"]
            self.figures[-1]["images"][kind] = attrs["src"]


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1]


def test_html_is_self_contained_with_the_right_frames_and_sizes(clip, tmp_path):
    out = tmp_path / "page.html"
    result = run_cli("preview", clip, "--at", "0.2,1.2", "--model", "bicubic", "--scale", "3", "-o", out,
                     "--device", "cpu")
    assert result.returncode == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    for tag, name, url in parser.urls:
        assert not url.lower().startswith(("http:", "https:", "//", "file:", "ftp:")), (tag, name, url[:80])
        assert url.startswith("data:"), (tag, name, url[:80])
    assert not {"link", "iframe", "object", "embed", "base"} & parser.tags
    assert "<script src" not in text and "url(" not in text and "@import" not in text
    assert "default-src 'none'" in text  # the page's own CSP forbids any load that might slip in
    assert [round(f["time"], 3) for f in parser.figures] == [0.2, 1.2]
    for figure, index in zip(parser.figures, (5, 30)):
        source, bicubic, after = (_decode(figure["images"][k]) for k in ("src", "bicubic", "after"))
        assert source.shape == (H, W, 3) and bicubic.shape == after.shape == (3 * H, 3 * W, 3)
        assert _index_of(source) == index
    for setting in ("model", "precision", "device", "full run", "bicubic x3"):
        assert setting in text


def test_bad_time_and_bad_output_are_one_line_errors(clip, tmp_path):
    late = run_cli("preview", clip, "--at", "1.7", "-o", tmp_path / "late.png", "--model", "bicubic")
    assert late.returncode == 2 and late.stderr.startswith("hatstream: error: ") and "1.7s" in late.stderr
    assert "Traceback" not in late.stderr and not (tmp_path / "late.png").exists()
    wrong = run_cli("preview", clip, "-o", tmp_path / "x.jpg", "--model", "bicubic")
    assert wrong.returncode == 2 and ".png or an .html" in wrong.stderr
    garbled = run_cli("preview", clip, "--at", "1,x", "--model", "bicubic")
    assert garbled.returncode == 2 and "is not a time" in garbled.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_detail_box_finds_the_textured_patch():
    from hatstream.pipeline.preview import detail_box

    img = np.full((120, 200, 3), 90, np.uint8)
    rng = np.random.default_rng(1)
    img[70:100, 130:170] = rng.integers(0, 255, (30, 40, 3))
    x, y, w, h = detail_box(img, 40, 30)
    assert (w, h) == (40, 30) and abs(x - 130) <= 1 and abs(y - 70) <= 1
    assert detail_box(img, 500, 500) == (0, 0, 200, 120)  # a crop larger than the frame is the frame
