"""Choosing the video encoder and pixel format, and turning planes back into encoder frames.

The rules (from the product issues): libx264 at CRF 18 by default, keeping the input's bit depth;
when the input is above 8 bits, pick an encoder and pixel format that keep it. WebM can hold only
VP8/VP9/AV1, so it gets VP9 (8-bit) or SVT-AV1 (10-bit) instead.

The default output is 4:2:0, whatever the input's chroma: H.264 High 4:2:2 / 4:4:4 and their
HEVC and VP9 equivalents play in almost no browser, phone or hardware decoder, and an MJPEG or
DV camera file (yuvj422p, yuv411p) would otherwise come out as one. Keeping the chroma is a
choice: `--pix-fmt`, `--keep-chroma`, or a lossless codec (which keeps everything by definition).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from hatstream.errors import HatstreamError
from hatstream.media.probe import ffmpeg_threads
from hatstream.media.formats import (HDR_TRANSFERS, MATRIX_TAG, RANGE_FULL, RANGE_LIMITED, ColourSpec,
                                     HdrMetadata, PlaneLayout)

log = logging.getLogger(__name__)

# Output extensions -> FFmpeg muxer names. The output container follows the extension.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}

# CRF that gives roughly "visually lossless" for each encoder (x264's 18 is the reference).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 24}
LOSSLESS = ("ffv1",)


@dataclass(frozen=True)
class EncodeSettings:
    """What the user asked for; `None` fields are chosen from the input and the container."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    keep_chroma: bool = False


@dataclass(frozen=True)
class VideoEncoding:
    """The resolved encoder setup for one output: codec, options, layout, colour and tags."""

    codec: str
    options: dict[str, str] = field(hash=False)
    layout: PlaneLayout
    colour: ColourSpec
    colour_tags: tuple[int, int, int, int]  # colorspace, range, primaries, transfer
    threads: int = 0  # FFmpeg encoder threads; 0: `probe.ffmpeg_threads()` (see `probe.encoder_threads`)


def container_for(path: Path) -> str:
    """The muxer for an output path, from its extension; HatstreamError for anything else."""
    fmt = CONTAINERS.get(Path(path).suffix.lower())
    if fmt is None:
        raise HatstreamError(f"cannot write {Path(path).name}: the output must end in "
                             f"{', '.join(sorted(set(CONTAINERS)))} (.mkv holds every stream of an AVI, "
                             f"MPEG or TS input)")
    return fmt


def encoder_layouts(codec: str) -> list[PlaneLayout]:
    """The planar pixel formats `codec` accepts that frames can be written in."""
    try:
        formats = av.codec.Codec(codec, "w").video_formats or []
    except (av.error.FFmpegError, ValueError):
        raise HatstreamError(f"there is no video encoder called {codec!r} in this FFmpeg build") from None
    layouts = [PlaneLayout.from_pix_fmt(f.name) for f in formats]
    return [layout for layout in layouts if layout is not None]


def default_codec(container: str, bit_depth: int) -> str:
    """libx264 (up to 10-bit), libx265 for 12-bit and more; VP9 or SVT-AV1 for WebM."""
    if container == "webm":
        return "libvpx-vp9" if bit_depth <= 8 else "libsvtav1"
    return "libx264" if bit_depth <= 10 else "libx265"


def playable_layout(source: PlaneLayout) -> PlaneLayout:
    """4:2:0 YUV at the source's bit depth: what every player can decode (yuv420p, yuv420p10le, ...),
    with an alpha plane where the source has one (yuva420p: VP9's alpha in WebM plays in browsers)."""
    depth = source.bit_depth
    name = "yuv420p" if depth <= 8 else f"yuv420p{min((d for d in (10, 12) if d >= depth), default=16)}le"
    layout = PlaneLayout(name, depth, (1, 1))
    return (layout.with_alpha() or layout) if source.has_alpha else layout


def choose_layout(codec: str, source: PlaneLayout, requested: str | None, keep_chroma: bool = False) -> PlaneLayout:
    """The output pixel format: `requested`; else 4:2:0 at the source's depth; else, keeping chroma
    (`keep_chroma` or a lossless codec), the source's own or the closest that keeps its depth.

    "Closest" means: same kind (YUV/GBR) at the smallest depth not below the source's, with no
    chroma resolution lost where a format keeps it (4:1:1 DV goes to 4:2:2, not 4:2:0) and as
    little added as possible; failing that, the deepest format.
    """
    layouts = encoder_layouts(codec)
    if requested:
        chosen = PlaneLayout.from_pix_fmt(requested)
        if chosen is None:
            raise HatstreamError(f"--pix-fmt {requested} is not a planar YUV or GBR format "
                                 "(e.g. yuv420p, yuv420p10le, yuv444p)")
        if chosen.pix_fmt not in {lay.pix_fmt for lay in layouts}:
            raise HatstreamError(f"{codec} cannot encode {requested}; it takes "
                                 f"{', '.join(lay.pix_fmt for lay in layouts)}")
        _warn_if_alpha_lost(codec, source, chosen)
        return chosen
    if not layouts:
        raise HatstreamError(f"{codec} takes no planar pixel format hatstream can write")
    target = source if keep_chroma or codec in LOSSLESS else playable_layout(source)
    chosen = _closest_layout(layouts, target, source.has_alpha)
    if chosen.bit_depth < source.bit_depth:
        log.warning("%s cannot keep %d-bit video; writing %s", codec, source.bit_depth, chosen.pix_fmt)
    _warn_if_alpha_lost(codec, source, chosen)
    return chosen


def _closest_layout(layouts: list[PlaneLayout], target: PlaneLayout, alpha: bool) -> PlaneLayout:
    for lay in layouts:
        if lay.pix_fmt == target.pix_fmt:
            return lay
    # yuvj420p is yuv420p with a full-range label; the range travels in the tags instead.
    plain = target.pix_fmt.replace("yuvj", "yuv")
    for lay in layouts:
        if lay.pix_fmt == plain:
            return lay

    def rank(lay: PlaneLayout):
        same_kind = lay.is_rgb == target.is_rgb
        deep_enough = lay.bit_depth >= target.bit_depth
        (sx, sy), (tx, ty) = lay.chroma_shift, target.chroma_shift
        loses_chroma = sx > tx or sy > ty
        # Alpha is kept wherever the encoder can keep it, and never added where there is none.
        return (not deep_enough, lay.has_alpha != alpha, not same_kind, loses_chroma,
                abs(sx - tx) + abs(sy - ty), abs(lay.bit_depth - target.bit_depth), lay.pix_fmt.startswith("yuvj"))

    return min(layouts, key=rank)


def _warn_if_alpha_lost(codec: str, source: PlaneLayout, chosen: PlaneLayout) -> None:
    if source.has_alpha and not chosen.has_alpha:
        log.warning("the input's alpha channel is not carried over: %s %s has none, so the output is opaque "
                    "(alpha is kept by .webm (VP9), --codec ffv1 in .mkv, or --codec prores_ks in .mov)",
                    codec, chosen.pix_fmt)


def output_colour(source: ColourSpec, layout: PlaneLayout, tags: tuple[int, int, int, int]
                  ) -> tuple[ColourSpec, tuple[int, int, int, int]]:
    """The colour spec and tags of the output frames.

    Same matrix and range as the input, tagged explicitly: an untagged input was converted
    with the matrix players guess from its size, and an upscaled copy that crosses into HD
    would otherwise be guessed differently (BT.601 -> BT.709) and shift in colour.
    """
    colorspace, color_range, primaries, trc = tags
    if layout.is_rgb:
        return ColourSpec("rgb", True), (0, RANGE_FULL, primaries, trc)
    spec = source
    if source.matrix == "rgb":  # GBR in, YUV out: BT.709 limited is the safest default
        spec = ColourSpec("bt709", False)
    if layout.pix_fmt.startswith("yuvj") and not spec.full_range:
        # The JPEG formats are full range by name: encoders flag them so whatever the tag says,
        # and limited-range codes shown as full range look washed out (white 235 as grey).
        spec = replace(spec, full_range=True)
    colorspace = MATRIX_TAG[spec.matrix] if colorspace in (0, 2) or source.matrix == "rgb" else colorspace
    color_range = RANGE_FULL if spec.full_range else RANGE_LIMITED
    return spec, (colorspace, color_range, primaries, trc)


def resolve_encoding(settings: EncodeSettings, container: str, source: PlaneLayout, colour: ColourSpec,
                     tags: tuple[int, int, int, int], hdr: HdrMetadata | None = None) -> VideoEncoding:
    """Turn the user's settings and the input's format into a concrete `VideoEncoding`.

    HDR input (a PQ or HLG transfer) gets libx265 by default outside WebM: HEVC is what HDR10
    players expect, and x264 cannot write the mastering-display and light-level SEI.
    Subsampled output is tagged with the chroma location it was made with (`ColourSpec.chroma`,
    the input's): in the H.264/HEVC VUI and Matroska's ChromaSiting, through the generic
    `chroma_sample_location` option that every encoder takes.
    """
    codec = settings.codec
    if codec is None and tags[3] in HDR_TRANSFERS and container != "webm" and source.bit_depth <= 12:
        codec = "libx265"
    codec = codec or default_codec(container, source.bit_depth)
    layout = choose_layout(codec, source, settings.pix_fmt, settings.keep_chroma)
    spec, out_tags = output_colour(colour, layout, tags)
    options = encoder_options(codec, settings)
    if hdr is not None:
        _add_hdr_options(codec, options, hdr)
    if not layout.is_rgb and layout.chroma_shift != (0, 0):
        options["chroma_sample_location"] = spec.chroma
    return VideoEncoding(codec, options, layout, spec, out_tags)


def _add_hdr_options(codec: str, options: dict[str, str], hdr: HdrMetadata) -> None:
    """Write the mastering display and content light level through the encoder's own parameters.

    PyAV cannot attach new side data to frames or streams, so the encoders that carry HDR10
    metadata in the bitstream (x265 in SEI, SVT-AV1 in metadata OBUs) are told it directly;
    decoders and players read it back from there.
    """
    if codec == "libx265":
        options["x265-params"] = ":".join([options.get("x265-params", "log-level=error"), *hdr.x265_params()])
    elif codec == "libsvtav1":
        params = [p for p in [options.get("svtav1-params"), *hdr.svtav1_params()] if p]
        options["svtav1-params"] = ":".join(params)
    else:
        log.warning("%s cannot write the input's HDR mastering-display and light-level metadata; "
                    "use --codec libx265 to keep it", codec)


# x264's and x265's speed presets, fastest first (both encoders accept exactly these names).
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


def encoder_options(codec: str, settings: EncodeSettings) -> dict[str, str]:
    """FFmpeg private options for the encoder: quality, speed preset, and quiet logs."""
    opts: dict[str, str] = {}
    if codec in LOSSLESS:
        if settings.crf is not None:
            log.warning("--crf has no effect with %s, which is lossless", codec)
        # Version 3 with per-slice CRCs, so damage in an archived file is detected on decode.
        return {"level": "3", "slicecrc": "1", "g": "1"}
    crf = settings.crf if settings.crf is not None else DEFAULT_CRF.get(codec)
    if crf is not None:
        opts["crf"] = str(crf)
    if settings.preset:
        known = X26X_PRESETS if codec in ("libx264", "libx265") else None
        if known is not None and settings.preset not in known:
            # x264 says only "invalid preset" in its log, and FFmpeg then "Invalid argument".
            raise HatstreamError(f"{codec} has no preset {settings.preset!r}; choose one of {', '.join(known)}")
        opts["preset"] = settings.preset
    if codec == "libx265":
        opts["x265-params"] = "log-level=error"
    elif codec in ("libvpx-vp9", "libvpx"):
        # VP9 in CRF mode needs a zero target bitrate; the default deadline is very slow.
        opts.update({"b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"})
        opts.pop("preset", None)
        if settings.preset:
            log.warning("--preset has no effect with %s", codec)
    return opts


def add_video_stream(out: av.container.OutputContainer, enc: VideoEncoding, width: int, height: int,
                     time_base: Fraction, rate: Fraction | None, sample_aspect_ratio: Fraction | None,
                     display_matrix: tuple[int, ...] | None, metadata: dict[str, str]) -> av.video.stream.VideoStream:
    """Add and configure the output video stream (before the header is written).

    The encoder works in the input's own time base, so every frame's pts goes through
    unchanged; the average rate is informational only (VFR streams have none that is exact).
    """
    stream = out.add_stream(enc.codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, enc.layout.pix_fmt
    cc = stream.codec_context
    cc.time_base = time_base
    # The muxer starts from the stream time base where the format allows (MP4/MOV do; MKV
    # always uses 1 ms), so timestamps are not rounded onto another clock.
    stream.time_base = time_base
    cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = enc.colour_tags
    if sample_aspect_ratio:
        cc.sample_aspect_ratio = sample_aspect_ratio
    stream.options = dict(enc.options)
    # FFmpeg's own encoder threads: always explicit and bounded, for the same reason as the
    # decoder's; more only where the model leaves the cores free (`probe.encoder_threads`).
    cc.thread_count = enc.threads or ffmpeg_threads()
    if display_matrix is not None:
        stream.set_display_matrix(list(display_matrix))
    for key, value in metadata.items():
        stream.metadata[key] = value
    return stream


def planes_to_frame(planes: tuple[np.ndarray, ...], enc: VideoEncoding, pts: int,
                    duration: int | None = None) -> av.VideoFrame:
    """Build an encoder frame from integer planes, copying them row by row into FFmpeg's buffers."""
    layout = enc.layout
    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, layout.pix_fmt)
    for plane, arr in zip(frame.planes, planes):
        rows = arr.shape[0]
        row = plane.line_size // layout.dtype.itemsize
        dst = np.frombuffer(plane, dtype=layout.dtype, count=row * rows).reshape(rows, row)
        dst[:, : arr.shape[1]] = arr
    frame.pts = pts
    if duration:
        frame.duration = duration
    frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = enc.colour_tags
    return frame
