"""Opening input files safely and describing their video stream.

Every input goes through `open_input`: the path must be a regular local file, FFmpeg may use
only its `file` protocol, and only a short list of real video demuxers may claim the file. That
stops a crafted file (an HLS playlist or ffconcat script with a video extension, say) from
making FFmpeg read other local files or the network.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import av.filter
import av.logging

from hatstream.errors import HatstreamError
from hatstream.media.formats import ColourSpec, HdrMetadata, PlaneLayout, canonical_pix_fmt, chroma_siting

log = logging.getLogger(__name__)

# Demuxers allowed to open an input. Each entry is matched against FFmpeg's demuxer name list
# ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...), so one entry admits the whole family.
# What decides membership is what a demuxer may read: each of these reads only the one file it
# is given. Playlists and manifests (hls, dash), scripts (concat, ffmetadata), filter graphs
# (lavfi), session descriptions (sdp, rtp, rtsp), image sequences and patterns (image2, the
# *_pipe image readers), raw frame dumps that need their size from outside (rawvideo), and
# capture devices (v4l2, x11grab, kmsgrab, fbdev) are deliberately absent: several of them open
# other files or URLs named inside the input.
ALLOWED_DEMUXERS = (
    # Containers.
    "mov", "matroska", "avi", "mpegts", "mpeg", "flv", "live_flv", "ogg", "asf", "mxf", "nut", "rm", "wtv",
    "dv", "gxf", "lxf", "nuv", "nsv", "ty", "pva", "smjpeg", "mxg", "r3d", "dhav", "ivf", "yuv4mpegpipe",
    # Elementary video streams (timestamps come from the frame rate; see decode.py). "mpegvideo"
    # is FFmpeg's one demuxer for MPEG-1/2 video (.m1v/.m2v/.mpv); "mpeg1video"/"mpeg2video"
    # are only muxers. "m4v" is raw MPEG-4 Part 2, "obu"/"av1" raw AV1.
    "mpegvideo", "h264", "hevc", "vvc", "m4v", "mjpeg", "h261", "h263", "vc1", "cavsvideo", "avs2",
    "avs3", "dirac", "dnxhd", "obu", "av1", "evc", "mjpeg_2000",
    # Old game and multimedia-CD video that players still play.
    "bink", "smk", "roq", "flic", "film_cpk", "4xm", "thp", "vmd", "ipmovie", "wc3movie", "cdxl", "psxstr",
)

# Demuxers whose packets carry no presentation time of their own: AVI stores frames in decode
# order at one per tick of the rate, and elementary streams have only what the parser derives
# from the frame rate. FFmpeg's guesses for those (pts = dts shifted by a B-frame delay) are off
# by a frame or go backwards, so the decoder rebuilds the times (see decode.py); every other
# demuxer's pts are the file's own and are kept as they are.
REBUILT_PTS_DEMUXERS = frozenset((
    "avi", "mpegvideo", "h264", "hevc", "vvc", "m4v", "mjpeg", "h261", "h263", "vc1", "cavsvideo", "avs2",
    "avs3", "dirac", "dnxhd", "obu", "av1", "evc", "mjpeg_2000",
))
# Of those, the ones with no clock at all: their first frame is shown at 0.
ELEMENTARY_DEMUXERS = REBUILT_PTS_DEMUXERS - {"avi"}

# Packets looked at, past the first frame, to tell whether a reordering stream's pts are real.
_PTS_CHECK_PACKETS = 64


def _pts_are_decode_times(path: Path, index: int) -> bool:
    """Whether the first packets of stream `index` all have pts == dts (read from the file's start).

    A stream whose decoder reorders (B-frames) must have some packets shown later than they
    are decoded. A muxer that wrote no composition offsets (an MP4 without a ctts box, made
    from a raw stream) leaves pts == dts everywhere; those pts are decode times, and the
    frames come out of the decoder with them out of order. The look starts at the first
    packet, a fresh demuxer of its own: B-frames alone have pts == dts even in a good file,
    and the first frame's decoding has already read past the I- and P-frames before them.
    """
    seen = 0
    with open_input(path) as container:
        stream = container.streams[index]
        for s in container.streams:
            if s is not stream:
                s.discard = av.stream.Discard.all
        try:
            for packet in container.demux(stream):
                if not packet.size or packet.pts is None or packet.dts is None:
                    continue
                if packet.pts != packet.dts:
                    return False
                seen += 1
                if seen >= _PTS_CHECK_PACKETS:
                    break
        except av.error.FFmpegError:
            return False  # the decoder will meet the damage and name it
    return seen > 1

def ffmpeg_threads() -> int:
    """Threads for each FFmpeg decoder/encoder: a quarter of the cores, 1 to 4.

    The model wants the cores; FFmpeg's own pools run beside it. Oversubscribing a small CPU
    is very costly: an OpenMP parallel region in torch waits for its slowest thread, and on 2
    busy cores that made the RGB/YUV conversion a hundred times slower. thread_count=0 (auto)
    has also been seen to deadlock next to PyTorch, so the count is always explicit.
    """
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def encoder_threads(model_on_cpu: bool, cores: int | None = None, streams: int = 1) -> int:
    """Threads for each video encoder: the cores the model does not use, shared by `streams` encoders.

    On a CPU run the model keeps the cores and the encoder gets `ffmpeg_threads()`. When the
    model runs on an accelerator the CPUs are the encoder's, less one for decoding and one for
    the driver: libx264 `medium` at 2160p does about 0.6 fps per core, so a GPU that upscales
    at 15 fps needs some 26 of them, and a fixed cap of 4 left such a run at a sixth of the
    model's speed. `streams` encoders running side by side (one per GPU on a node) split them.
    """
    cores = cores or os.cpu_count() or 1
    if model_on_cpu:
        return max(1, min(4, cores // 4))
    return max(1, min(64, (cores - 2) // max(1, streams)))


def check_input_path(path: Path) -> Path:
    """Require `path` to be an existing, non-empty, regular local file; return it resolved."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HatstreamError(f"input {path} does not exist") from None
    except OSError as exc:
        raise HatstreamError(f"cannot read input {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise HatstreamError(f"input {path} is a folder, expected a video file")
    if not stat.S_ISREG(st.st_mode):
        raise HatstreamError(f"input {path} is not a regular file (device, pipe or socket)")
    if st.st_size == 0:
        raise HatstreamError(f"input {path} is empty")
    if not os.access(path, os.R_OK):
        raise HatstreamError(f"cannot read input {path}: permission denied")
    return path.resolve()


def open_input(path: Path) -> av.container.InputContainer:
    """Open a checked local file with FFmpeg restricted to the `file` protocol and video demuxers.

    The path is given as a `file:` URL so that a name containing a colon is never taken for
    another protocol.
    """
    path = check_input_path(path)
    options = {"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_DEMUXERS)}
    try:
        return av.open(f"file:{path}", "r", options=options, metadata_errors="replace")
    except av.error.InvalidDataError:
        raise HatstreamError(f"{path.name} is not a video file FFmpeg can read (or it is truncated)") from None
    except av.error.ArgumentError:
        # The format whitelist refuses the file with EINVAL: it is something, just not a
        # container we accept.
        raise HatstreamError(f"{path.name} is not a video file in a supported container") from None
    except av.error.FFmpegError as exc:
        raise HatstreamError(f"cannot open {path.name}: {exc.strerror or exc}") from None


def pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The main video stream: the first one that is not cover art (an attached picture)."""
    for s in container.streams.video:
        if not (s.disposition & av.stream.Disposition.attached_pic):
            return s
    return None


@dataclass(frozen=True)
class VideoInfo:
    """What the rest of the program needs to know about the input's main video stream.

    `pix_fmt` is the decoder's output format; `layout` describes `canonical_pix_fmt(pix_fmt)`,
    the planar format frames are converted to (the same one for nearly every stream).
    `duration` is the video stream's own duration (None when only the container's is known).
    `colour_tags` are the raw AVColor* values (matrix, range, primaries, transfer) as found on
    the first frame, or the stream when the frame has none. `display_matrix` is the 9-integer
    rotation/flip matrix, or None.
    `rebuilt_pts` is True where the container has no presentation times of its own (AVI,
    elementary streams; see `REBUILT_PTS_DEMUXERS`), or only decode times (B-frames, pts == dts).
    `field_order` is the stream's ("progressive", "tt" top first, "bb", "tb", "bt", or
    "unknown"), and `interlaced_frames` whether the first frame is flagged interlaced;
    `hatstream.media.deinterlace` reads both.
    """

    path: Path
    container: str
    stream_index: int
    codec: str
    width: int
    height: int
    pix_fmt: str
    layout: PlaneLayout
    colour: ColourSpec
    colour_tags: tuple[int, int, int, int]
    time_base: Fraction
    average_rate: Fraction | None
    frames: int
    frames_exact: bool
    duration: float | None
    start_time: float
    display_matrix: tuple[int, ...] | None
    rotation: float
    sample_aspect_ratio: Fraction | None
    rebuilt_pts: bool = False
    field_order: str = "unknown"
    interlaced_frames: bool = False
    hdr: HdrMetadata | None = None  # mastering display and light levels, from the first frame
    chroma_location: str = "unspecified"  # as the stream says; `colour.chroma` is what conversion uses

    @property
    def bit_depth(self) -> int:
        """Bits per sample of the decoded video."""
        return self.layout.bit_depth


def estimate_frames(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> tuple[int, bool]:
    """(frame count, exact?) for progress. MKV/WebM report 0 frames, so use duration x rate.

    Returns (0, False) when neither the count nor a duration and rate are known.
    """
    if stream.frames:
        # AVI's count includes its empty "drop" chunks, which are no frames: an estimate only.
        return int(stream.frames), container.format.name != "avi"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    length = stream_duration(stream)
    if length is None and container.duration:
        length = container.duration / av.time_base
    if not rate or not length:
        return 0, False
    return max(1, round(length * float(rate))), False


def stream_duration(stream) -> float | None:
    """The stream's own length in seconds, counted from its start time, or None.

    MP4 stores it in the stream header. Matroska has only the segment duration (all streams
    together) plus, from FFmpeg-made files, a per-stream DURATION tag "HH:MM:SS.nnnnnnnnn".
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            h, m, s = tag.split(":")
            end = int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
        # FFmpeg's muxer writes the stream's end time here, not its length (a video that starts
        # at 1.42 s and lasts 1 s says 2.42 s); mkvmerge writes the length. Taking it as the end
        # is right for the first and errs short for the second, so a check against it can only
        # be too lenient, never call a whole file truncated.
        start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
        return max(0.0, end - max(0.0, start)) or None
    return None


# AVFieldOrder (libavcodec/defs.h), in order.
FIELD_ORDERS = ("unknown", "progressive", "tt", "bb", "tb", "bt")


def riff_complete(path: Path) -> bool:
    """False when the chain of RIFF chunks (AVI, and OpenDML's AVIX parts) runs past the end of the file.

    The sizes are written when the file is closed; a placeholder of 0 (a writer that never
    finished) proves nothing, so it counts as complete.
    """
    size = os.path.getsize(path)
    pos = 0
    with open(path, "rb") as f:
        while pos + 12 <= size:
            f.seek(pos)
            head = f.read(8)
            if head[:4] != b"RIFF":
                break
            length = int.from_bytes(head[4:8], "little")
            if length == 0:
                return True
            if pos + 8 + length > size:
                return False
            pos += 8 + length + (length & 1)  # chunks are padded to an even size
    return True


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's display matrix side data as 9 signed 32-bit integers, or None."""
    for sd in frame.side_data:
        if str(sd.type).endswith("DISPLAYMATRIX"):
            raw = bytes(sd)
            if len(raw) == 36:
                return tuple(int.from_bytes(raw[i:i + 4], "little", signed=True) for i in range(0, 36, 4))
    return None


def _hdr_metadata(frame: av.VideoFrame) -> HdrMetadata | None:
    """The frame's HDR10 static metadata. Decoders put it there from the bitstream (HEVC SEI)
    and from the container (MKV's or MP4's mastering display and light level boxes) alike."""
    found = {}
    for sd in frame.side_data:
        name = str(sd.type).rsplit(".", 1)[-1]
        if name in ("MASTERING_DISPLAY_METADATA", "CONTENT_LIGHT_LEVEL"):
            found[name] = bytes(sd)
    return HdrMetadata.from_side_data(found.get("MASTERING_DISPLAY_METADATA"), found.get("CONTENT_LIGHT_LEVEL"))


# AVChromaLocation names as FFmpeg prints them (libavutil/pixfmt.h, in enum order).
CHROMA_LOCATIONS = ("unspecified", "left", "center", "topleft", "top", "bottomleft", "bottom")


def read_chroma_location(frame: av.VideoFrame) -> str:
    """Where the frame's subsampled chroma samples sit, as FFmpeg names it, or "unspecified".

    The decoder sets AVFrame.chroma_location from the bitstream (H.264/HEVC VUI) or the
    container (Matroska's ChromaSiting), but PyAV 18.1 exposes it on neither frames nor codec
    contexts. FFmpeg's own `showinfo` filter prints it ("cl:topleft"), so one frame goes through
    a showinfo graph with FFmpeg's log captured for that moment only.
    """
    if PlaneLayout.from_pix_fmt(canonical_pix_fmt(frame.format.name)).chroma_shift == (0, 0):
        return "unspecified"  # 4:4:4 and RGB have no siting
    before = av.logging.get_level()
    try:
        graph = av.filter.Graph()
        src = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                               time_base=Fraction(1, 1000))
        show, sink = graph.add("showinfo"), graph.add("buffersink")
        src.link_to(show)
        show.link_to(sink)
        graph.configure()
        with av.logging.Capture() as logs:
            av.logging.set_level(av.logging.INFO)
            try:
                graph.push(frame)
                graph.pull()
            finally:
                av.logging.set_level(before)
    except (av.error.FFmpegError, ValueError) as exc:
        log.debug("chroma location not read: %s", exc)
        return "unspecified"
    found = re.search(r"\bcl:(\w+)", "".join(text for _, _, text in logs))
    return found.group(1) if found and found.group(1) in CHROMA_LOCATIONS else "unspecified"


def probe(path: Path) -> VideoInfo:
    """Describe the input's main video stream, decoding its first frame to be sure it decodes.

    Raises HatstreamError for files without video (audio-only files included), for streams no
    decoder exists for, and for files whose first frame cannot be decoded.
    """
    with open_input(path) as container:
        stream = pick_video_stream(container)
        name = Path(path).name
        if stream is None:
            kinds = sorted({s.type for s in container.streams})
            has = f" (it has {', '.join(kinds)} only)" if kinds else ""
            raise HatstreamError(f"{name} has no video stream{has}")
        frame = first_frame(container, stream, name)
        pix_fmt = frame.format.name
        layout = PlaneLayout.from_pix_fmt(canonical_pix_fmt(pix_fmt))
        cc = stream.codec_context
        # Tags on the frame win (the bitstream's own VUI); the container's are the fallback.
        tags = tuple(int(getattr(frame, a) or getattr(cc, a) or 0)
                     for a in ("colorspace", "color_range", "color_primaries", "color_trc"))
        if tags[2] == 0:
            tags = (tags[0], tags[1], 2, tags[3])  # 0 is "reserved" for primaries; 2 means unspecified
        frames, exact = estimate_frames(stream, container)
        tb = stream.time_base
        duration = stream_duration(stream)
        start = float(stream.start_time * tb) if stream.start_time is not None and tb else 0.0
        matrix = _display_matrix(frame)
        # The decoder sets the field order from the first frame's flags; read it after decoding.
        order = int(cc.field_order or 0)
        # A stream SAR of 0:1 means unknown; the codec's own (MPEG-2 sequence header, H.264 VUI)
        # is the fallback where the container says nothing.
        sar = stream.sample_aspect_ratio or cc.sample_aspect_ratio
        kind = container.format.name.split(",")
        rebuilt = any(n in REBUILT_PTS_DEMUXERS for n in kind)
        if not rebuilt and cc.has_b_frames and _pts_are_decode_times(path, stream.index):
            log.info("%s: its video packets carry decode times only (pts == dts with B-frames); "
                     "presentation times are rebuilt from them", name)
            rebuilt = True
        location = read_chroma_location(frame)
        colour = ColourSpec.from_tags(tags[0], tags[1], frame.height, layout, frame.width)
        colour = replace(colour, chroma=chroma_siting(location, cc.name))
        return VideoInfo(
            path=Path(path), container=container.format.name, stream_index=stream.index,
            codec=cc.name, width=frame.width, height=frame.height, pix_fmt=pix_fmt, layout=layout,
            colour=colour, colour_tags=tags,
            time_base=Fraction(tb), average_rate=Fraction(stream.average_rate) if stream.average_rate else None,
            frames=frames, frames_exact=exact, duration=duration, start_time=start,
            display_matrix=matrix, rotation=float(frame.rotation or 0) if matrix else 0.0,
            sample_aspect_ratio=Fraction(sar) if sar else None,
            rebuilt_pts=rebuilt,
            field_order=FIELD_ORDERS[order] if 0 <= order < len(FIELD_ORDERS) else "unknown",
            interlaced_frames=bool(frame.interlaced_frame),
            hdr=_hdr_metadata(frame),
            chroma_location=location,
        )


def first_frame(container: av.container.InputContainer, stream, name: str) -> av.VideoFrame:
    """Decode the first frame of `stream`, translating every FFmpeg failure into HatstreamError."""
    decode = configure_decoder(stream)
    try:
        for packet in container.demux(stream):
            for frame in decode(packet):
                return frame
    except av.error.DecoderNotFoundError:
        raise HatstreamError(f"{name}: no decoder for its {stream.codec_context.name} video") from None
    except av.error.FFmpegError as exc:
        raise HatstreamError(f"{name}: cannot decode its video ({exc.strerror or exc}); is it truncated?") from None
    raise HatstreamError(f"{name}: its video stream has no decodable frames (truncated or empty?)")


# VP8/VP9 in WebM/Matroska keep alpha as a second bitstream in each block's BlockAdditional
# (which reaches the decoder as packet side data), flagged by the track's AlphaMode. FFmpeg's own
# vp8/vp9 decoders ignore it and return opaque yuv420p; libvpx's decoders decode it (yuva420p).
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def alpha_decoder_name(stream) -> str | None:
    """The decoder to use instead of FFmpeg's default one so that the stream's alpha is decoded, or None."""
    name = _ALPHA_DECODERS.get(stream.codec_context.name)
    flagged = any(k.lower() == "alpha_mode" and v.strip() not in ("", "0") for k, v in stream.metadata.items())
    if name is None or not flagged:
        return None
    try:
        av.codec.Codec(name, "r")
    except (av.error.FFmpegError, ValueError):
        log.warning("this FFmpeg build has no %s decoder: the video's alpha channel cannot be read", name)
        return None
    return name


def configure_decoder(stream) -> Callable[[av.Packet], list]:
    """Bounded slice threading for a video decoder; returns the `decode(packet) -> frames` to use.

    That is `packet.decode` (the stream's own decoder) except for VP8/VP9 with alpha, which get
    a libvpx decoder of their own (`alpha_decoder_name`); every reader of the video must decode
    through the returned callable, or its frames differ in pixel format from the probe's.

    Slice threading reports a damaged packet on the packet itself, so errors can name the
    right timestamp; frame threading reports it frames later. Decoding is not the bottleneck
    next to the model, so the exactness is worth more than frame threading's speed.
    """
    stream.thread_type = "SLICE"
    stream.thread_count = ffmpeg_threads()
    name = alpha_decoder_name(stream)
    if name is None:
        return lambda packet: packet.decode()
    cc = av.CodecContext.create(name, "r")
    cc.thread_count = ffmpeg_threads()
    # The packets keep their stream's time base; the frames' pts are the packets' own.
    return cc.decode


def seconds(pts: int | None, time_base: Fraction) -> float:
    """A timestamp in seconds, for messages (nan when unknown)."""
    return float(pts * time_base) if pts is not None else math.nan
