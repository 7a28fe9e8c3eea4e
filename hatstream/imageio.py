"""Reading and writing still images (PNG, JPEG) as float RGB plus optional alpha; knows no model.

Pixels go through OpenCV (8- and 16-bit, alpha). What a photo tool keeps goes through Pillow,
which parses EXIF (a TIFF structure inside the file) and re-serialises it: the EXIF orientation is
applied to the pixels on reading, and the ICC profile, EXIF (orientation then 1, pixel size
updated), XMP, resolution and PNG text are written back into the encoded output.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from hatstream.atomic import atomic_output
from hatstream.errors import HatstreamError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Metadata:
    """What a photo tool carries from input to output, as found in the input file.

    `exif` is the raw TIFF-structured block without the "Exif\\0\\0" marker, `xmp` an XML
    packet, `text` PNG text chunks; `orientation` is the EXIF orientation (1-8) that was found.
    """

    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    text: dict[str, str] = field(default_factory=dict)
    comment: bytes | None = None  # JPEG COM segment
    gamma: float | None = None  # PNG gAMA
    srgb: int | None = None  # PNG sRGB rendering intent
    orientation: int = 1


@dataclass(frozen=True)
class Image:
    """An image split for upscaling: RGB float32 (H, W, 3) in [0, 1], alpha likewise or None.

    The pixels are as displayed: the EXIF orientation is already applied.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int  # 8 or 16
    grey: bool
    metadata: Metadata = field(default_factory=Metadata)


_ORIENTATION_TAG, _EXIF_IFD, _EXIF_WIDTH, _EXIF_HEIGHT = 0x0112, 0x8769, 0xA002, 0xA003


def read_metadata(path: Path) -> Metadata:
    """The metadata of an image file; an unreadable part is left out with a warning, never fatal."""
    import warnings

    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: only headers are read here
            with PILImage.open(path) as im:
                info = dict(im.info)
                exif = im.getexif()
                text = dict(getattr(im, "text", {}) or {})
    except Exception as exc:  # noqa: BLE001 - metadata is a courtesy; the pixels decide success
        log.warning("%s: metadata not read (%s); the output carries none", path, exc)
        return Metadata()
    xmp = info.get("xmp") or text.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    raw_exif = info.get("exif")
    if isinstance(raw_exif, bytes) and raw_exif.startswith(b"Exif\0\0"):
        raw_exif = raw_exif[6:]
    dpi = info.get("dpi")
    orientation = exif.get(_ORIENTATION_TAG, 1)
    return Metadata(
        icc_profile=info.get("icc_profile") or None,
        exif=raw_exif or None,
        xmp=xmp or None,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
        text={k: str(v) for k, v in text.items() if k != "XML:com.adobe.xmp"},
        comment=info["comment"] if isinstance(info.get("comment"), bytes) and info["comment"] else None,
        gamma=float(info["gamma"]) if info.get("gamma") else None,
        srgb=int(info["srgb"]) if isinstance(info.get("srgb"), int) else None,
        orientation=orientation if orientation in range(1, 9) else 1,
    )


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """The (H, W, ...) array as displayed for an EXIF orientation (1-8)."""
    if orientation in (5, 6, 7, 8):
        # 5: transpose, 6: 90 degrees clockwise, 7: transverse, 8: 90 degrees counter-clockwise.
        a = {5: a, 6: a[::-1], 7: a[::-1, ::-1], 8: a[:, ::-1]}[orientation].swapaxes(0, 1)
    else:
        a = {1: a, 2: a[:, ::-1], 3: a[::-1, ::-1], 4: a[::-1]}[orientation]
    return np.ascontiguousarray(a)


def read_image(path: Path) -> Image:
    """Read an 8- or 16-bit PNG/JPEG, grey or colour, with or without alpha."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    if data is None:
        raise HatstreamError(f"input {path} does not exist")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise HatstreamError(f"input {path} is not a readable PNG or JPEG image")
    # IMREAD_UNCHANGED keeps 16 bits and alpha but ignores EXIF orientation: apply it here.
    meta = read_metadata(path)
    img = apply_orientation(img, meta.orientation)
    if img.dtype == np.uint8:
        depth, peak = 8, 255.0
    elif img.dtype == np.uint16:
        depth, peak = 16, 65535.0
    else:
        raise HatstreamError(f"input {path} has unsupported sample type {img.dtype}")
    img = img.astype(np.float32) / peak
    grey = img.ndim == 2 or img.shape[2] in (1, 2)
    if img.ndim == 2:
        img = img[..., None]
    alpha = img[..., -1] if img.shape[2] in (2, 4) else None
    colour = img[..., :1] if grey else img[..., 2::-1]  # OpenCV stores BGR(A)
    rgb = np.repeat(colour, 3, axis=2) if grey else colour
    return Image(np.ascontiguousarray(rgb), alpha, depth, grey, meta)


def write_image(path: Path, rgb: np.ndarray, alpha: np.ndarray | None, bit_depth: int, grey: bool,
                overwrite: bool = True, metadata: Metadata | None = None) -> None:
    """Write float RGB (and alpha) in [0, 1] atomically; JPEG is always 8-bit.

    `metadata` (from the input) is written into the file; the pixels are upright, so the EXIF
    orientation becomes 1.
    """
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise HatstreamError(f"output {path} must end in one of {', '.join(IMAGE_EXTENSIONS)}")
    if ext != ".png":
        bit_depth, alpha = 8, None  # JPEG holds neither 16 bits nor alpha
    peak = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    planes = [rgb.mean(axis=2, keepdims=True)] if grey else [rgb[..., ::-1]]
    if alpha is not None:
        planes.append(alpha[..., None])
    out = np.concatenate(planes, axis=2)
    out = np.rint(np.clip(out, 0, 1) * peak).astype(dtype)
    ok, buf = cv2.imencode(ext, out if out.shape[2] > 1 else out[..., 0])
    if not ok:
        raise HatstreamError(f"could not encode {path}")
    data = buf.tobytes()
    if metadata is not None:
        height, width = out.shape[:2]
        data = (_png_with(data, metadata, width, height) if ext == ".png"
                else _jpeg_with(data, metadata, width, height))
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(data)


def _upright_exif(exif: bytes, width: int, height: int) -> bytes | None:
    """The EXIF block for the written pixels: orientation 1, pixel size updated, no thumbnail
    (it shows the old orientation); None when it cannot be parsed."""
    from PIL import Image as PILImage

    try:
        e = PILImage.Exif()
        e.load(b"Exif\0\0" + exif)
        if _ORIENTATION_TAG in e:
            e[_ORIENTATION_TAG] = 1
        sub = e.get_ifd(_EXIF_IFD)
        if _EXIF_WIDTH in sub or _EXIF_HEIGHT in sub:
            sub[_EXIF_WIDTH], sub[_EXIF_HEIGHT] = width, height
        return e.tobytes()[6:]  # tobytes() adds the "Exif\0\0" marker
    except Exception as exc:  # noqa: BLE001 - a malformed block is dropped, not fatal
        log.warning("EXIF not carried: it could not be parsed (%s)", exc)
        return None


def _upright_xmp(xmp: bytes) -> bytes:
    # XMP repeats the orientation (tiff:Orientation), as an attribute or an element.
    return re.sub(rb'(tiff:Orientation(?:="|>))[1-8]', rb"\g<1>1", xmp)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(png: bytes, meta: Metadata, width: int, height: int) -> bytes:
    """`png` (as OpenCV encodes it: IHDR, IDAT..., IEND) with the metadata chunks after IHDR,
    where the PNG spec wants iCCP and eXIf: before the image data."""
    chunks = []
    if meta.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc_profile)))
    elif meta.srgb is not None:  # the PNG spec allows sRGB only without an embedded profile
        chunks.append(_png_chunk(b"sRGB", bytes((meta.srgb,))))
    if meta.gamma:
        chunks.append(_png_chunk(b"gAMA", struct.pack(">I", round(meta.gamma * 100000))))
    if meta.exif and (exif := _upright_exif(meta.exif, width, height)):
        chunks.append(_png_chunk(b"eXIf", exif))
    if meta.dpi:
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", *(round(d / 0.0254) for d in meta.dpi), 1)))
    if meta.xmp:
        chunks.append(_png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + _upright_xmp(meta.xmp)))
    for key, value in meta.text.items():
        chunks.append(_png_chunk(b"iTXt", key.encode("latin-1", "replace")[:79] + b"\0\0\0\0\0" + value.encode()))
    end_of_ihdr = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4  # signature, length+type, data, CRC
    return png[:end_of_ihdr] + b"".join(chunks) + png[end_of_ihdr:]


def _jpeg_segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _jpeg_with(jpeg: bytes, meta: Metadata, width: int, height: int) -> bytes:
    """`jpeg` (SOI, then OpenCV's JFIF APP0) with EXIF and XMP (APP1) and the ICC profile (APP2,
    split into numbered chunks of at most 65519 bytes, as the ICC spec says) after the APP0."""
    segments = []
    if meta.exif and (exif := _upright_exif(meta.exif, width, height)):
        if len(exif) < 65527:
            segments.append(_jpeg_segment(0xE1, b"Exif\0\0" + exif))
        else:
            log.warning("EXIF not carried: %d bytes is more than one JPEG segment holds", len(exif))
    if meta.xmp:
        if len(meta.xmp) < 65500:
            segments.append(_jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + _upright_xmp(meta.xmp)))
        else:  # extended XMP spreads over several segments with a GUID; not written
            log.warning("XMP not carried: %d bytes is more than one JPEG segment holds", len(meta.xmp))
    if meta.icc_profile:
        parts = [meta.icc_profile[i:i + 65519] for i in range(0, len(meta.icc_profile), 65519)]
        if len(parts) < 256:
            segments += [_jpeg_segment(0xE2, b"ICC_PROFILE\0" + bytes((n, len(parts))) + part)
                         for n, part in enumerate(parts, 1)]
    if meta.comment and len(meta.comment) < 65534:
        segments.append(_jpeg_segment(0xFE, meta.comment))
    head = 2  # after SOI
    if jpeg[2:4] == b"\xff\xe0":  # the JFIF APP0 must stay first
        head = 4 + struct.unpack(">H", jpeg[4:6])[0]
        if meta.dpi and jpeg[6:11] == b"JFIF\0":
            # JFIF density: units 1 = dots per inch, then X and Y density.
            app0 = bytearray(jpeg[:head])
            app0[13:18] = struct.pack(">BHH", 1, *(min(65535, round(d)) for d in meta.dpi))
            jpeg = bytes(app0) + jpeg[head:]
    return jpeg[:head] + b"".join(segments) + jpeg[head:]
