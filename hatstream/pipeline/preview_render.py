"""Rendering a `Preview`: a PNG contact sheet, or one self-contained HTML page.

The HTML page holds its images as data: URIs and its few lines of script inline, so it opens
from a file, a mail attachment or an air-gapped machine alike, and loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html

import cv2
import numpy as np

from hatstream.pipeline.preview import Preview, PreviewFrame

_BG = (32, 32, 32)
_FG = (235, 235, 235)
_GAP = 6
_LABEL = 24     # height of the label strip above each panel
_HEADER = 30    # height of the strip above each frame's row
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG file bytes."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data.tobytes()


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.5) -> None:
    # The panels are RGB; putText does not care about channel order for a grey colour.
    cv2.putText(img, text, (x, y), _FONT, scale, _FG, 1, cv2.LINE_AA)


def _fit(text: str, width: int, scale: float = 0.5) -> str:
    """`text` cut (with '...') to what fits in `width` pixels at `scale`."""
    while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > width - 8:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def _panels(frame: PreviewFrame, scale: int) -> list[np.ndarray]:
    x, y, w, h = frame.box
    sx, sy, sw, sh = x // scale, y // scale, w // scale, h // scale
    source = np.repeat(np.repeat(frame.source[sy:sy + sh, sx:sx + sw], scale, axis=0), scale, axis=1)
    return [source, frame.bicubic[y:y + h, x:x + w], frame.upscaled[y:y + h, x:x + w]]


def sheet(preview: Preview) -> np.ndarray:
    """The PNG contact sheet as an RGB image: one row per frame, source (nearest neighbour, so the
    pixels show), bicubic and the model side by side, on each frame's most detailed crop."""
    rows = []
    for frame in preview.frames:
        panels = _panels(frame, preview.scale)
        h, w = panels[0].shape[:2]
        row = np.full((_HEADER + _LABEL + h, 3 * w + 4 * _GAP, 3), _BG, np.uint8)
        x, y, bw, bh = frame.box
        _text(row, _fit(f"{frame.time:.3f}s  crop {bw}x{bh} at ({x},{y})  model {preview.model} "
                        f"x{preview.scale}", row.shape[1], 0.55), _GAP, 20, 0.55)
        labels = [f"source {frame.time:.2f}s (nearest)", "bicubic", f"{preview.model} x{preview.scale}"]
        for i, (panel, label) in enumerate(zip(panels, labels)):
            left = _GAP + i * (w + _GAP)
            _text(row, _fit(label, w), left + 2, _HEADER + 16)
            row[_HEADER + _LABEL:, left:left + w] = panel
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=_BG[0]) for r in rows]
    return np.concatenate(rows, axis=0)


# Above this many pixels a frame is embedded as JPEG: a 4K PNG is ~15 MB, and a page of a few
# frames in three versions would be too heavy for a browser to open comfortably.
JPEG_ABOVE = 2_100_000
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


def _data_uri(rgb: np.ndarray) -> str:
    if rgb.shape[0] * rgb.shape[1] <= JPEG_ABOVE:
        return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), _JPEG)
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


_STYLE = """
body{font:14px system-ui,sans-serif;background:#202020;color:#eee;margin:1.5em}
table{border-collapse:collapse;margin-bottom:1.5em}td{padding:2px 12px 2px 0;vertical-align:top}
td:first-child{color:#aaa}figure{margin:0 0 2em 0}figcaption{margin:.4em 0}
.cmp{position:relative;display:inline-block;max-width:100%;line-height:0}
.cmp img{display:block;max-width:100%}
.cmp .before{position:absolute;left:0;top:0;width:100%;height:100%;clip-path:inset(0 50% 0 0)}
.cmp .src{image-rendering:pixelated}
.cmp .line{position:absolute;top:0;bottom:0;left:50%;width:2px;background:#ffcc00;pointer-events:none}
.cmp .tag{position:absolute;top:6px;font-size:12px;line-height:1.2;background:#000a;padding:2px 6px}
.frame{display:inline-block;max-width:100%}.frame input[type=range]{display:block;width:100%;margin:6px 0 0 0}
"""

# Inline by design: the page must work with no network and no other file.
_SCRIPT = """
document.querySelectorAll('figure').forEach(function (fig) {
  var range = fig.querySelector('input[type=range]'), pick = fig.querySelector('select');
  var line = fig.querySelector('.line');
  function slide() {
    var v = range.value;
    fig.querySelectorAll('.before').forEach(function (img) { img.style.clipPath = 'inset(0 ' + (100 - v) + '% 0 0)'; });
    line.style.left = v + '%';
  }
  function choose() {
    fig.querySelectorAll('.before').forEach(function (img) { img.hidden = img.dataset.kind !== pick.value; });
    fig.querySelector('.tag.left').textContent = pick.options[pick.selectedIndex].text;
  }
  range.addEventListener('input', slide); pick.addEventListener('change', choose); slide(); choose();
});
"""


def page(preview: Preview) -> str:
    """The HTML preview: the settings, then a before/after slider over each whole frame."""
    e = html.escape
    settings = list(preview.settings)
    if any(f.upscaled.shape[0] * f.upscaled.shape[1] > JPEG_ABOVE for f in preview.frames):
        settings.append(("images", "frames above 2 megapixels are embedded as JPEG (quality 95, 4:4:4) to keep "
                                   "this file small; the PNG preview has the exact pixels"))
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in settings)
    figures = []
    for i, frame in enumerate(preview.frames):
        figures.append(
            f'<figure id="frame-{i}" data-time="{frame.time:.6f}" data-pts="{frame.pts}">'
            f'<figcaption>Frame at {frame.time:.3f}s (asked {frame.asked:g}s), '
            f'model {e(preview.model)} x{preview.scale}, {frame.model_seconds:.2f}s for this frame. '
            f'Before: <select><option value="src">source (nearest)</option>'
            f'<option value="bicubic">bicubic</option></select></figcaption>'
            f'<div class="frame"><div class="cmp">'
            f'<img class="after" alt="{e(preview.model)}" src="{_data_uri(frame.upscaled)}">'
            f'<img class="before src" data-kind="src" alt="source" src="{_data_uri(frame.source)}">'
            f'<img class="before" data-kind="bicubic" alt="bicubic" src="{_data_uri(frame.bicubic)}" hidden>'
            f'<div class="line"></div><span class="tag left" style="left:6px">source</span>'
            f'<span class="tag" style="right:6px">{e(preview.model)}</span></div>'
            f'<input type="range" min="0" max="100" value="50" aria-label="before/after"></div></figure>')
    title = f"hatstream preview: {preview.input.name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f'<title>{e(title)}</title><style>{_STYLE}</style></head><body>'
            f'<h1>{e(title)}</h1><table>{rows}</table>{"".join(figures)}'
            f'<script>{_SCRIPT}</script></body></html>\n')
