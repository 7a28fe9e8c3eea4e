"""The output file: the upscaled video stream plus everything `carry` brings along.

`plan_output` settles every choice and checks that the container can hold it all, before a
byte is written. `VideoWriter` then takes planes with their original pts, encodes them, and
interleaves the carried packets by time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from hatstream.errors import HatstreamError
from hatstream.media.carry import CarriedStream, Carrier, check_streams, mux_packet, plan_streams, video_tags
from hatstream.media.encode import (CONTAINERS, EncodeSettings, VideoEncoding, add_video_stream, container_for,
                                    planes_to_frame, resolve_encoding)
from hatstream.media.probe import VideoInfo, open_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputPlan:
    """Everything needed to write the output, settled and checked up front."""

    container: str
    encoding: VideoEncoding
    width: int
    height: int
    streams: tuple[CarriedStream, ...]
    video_tags: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        """One line for logs: 'libx264 yuv420p 128x96 in mp4, carrying 2 streams'."""
        return (f"{self.encoding.codec} {self.encoding.layout.pix_fmt} {self.width}x{self.height} in "
                f"{self.container}, carrying {len(self.streams)} other stream(s)")


def default_output_path(input_path: Path, scale: int) -> Path:
    """`<stem>.x<scale><ext>` beside the input; inputs in other containers get `.mkv`.

    AVI, MPEG program and transport streams, elementary streams, DV, FLV, ... are not written
    (AVI cannot store B-frame timing or modern codecs; the others would lose streams or
    metadata). Matroska holds every codec they carry (AC-3, MP2, MP3, PCM, ADPCM, DVD
    subtitles), so their streams are kept packet for packet.
    """
    input_path = Path(input_path)
    ext = input_path.suffix.lower()
    if ext not in CONTAINERS:
        ext = ".mkv"
    return input_path.with_name(f"{input_path.stem}.x{scale}{ext}")


def default_output_note(info: VideoInfo, output: Path) -> str | None:
    """One line saying why a default output is Matroska although the input is not, or None."""
    ext = Path(info.path).suffix.lower()
    if ext in CONTAINERS or Path(output).suffix.lower() != ".mkv":
        return None
    kind = info.container.split(",")[0]
    return (f"{Path(info.path).name} is {_CONTAINER_WORDS.get(kind, kind)}, which hatstream does not write; "
            f"the output is Matroska ({Path(output).name}), keeping every stream (-o NAME.mp4 for MP4)")


_CONTAINER_WORDS = {"avi": "AVI", "mpeg": "an MPEG program stream", "mpegts": "an MPEG transport stream",
                    "mpegvideo": "an MPEG video elementary stream", "h264": "a raw H.264 stream",
                    "hevc": "a raw HEVC stream", "m4v": "a raw MPEG-4 video stream", "dv": "DV", "flv": "FLV",
                    "asf": "ASF/WMV", "mjpeg": "a raw MJPEG stream", "rm": "RealMedia", "ogg": "Ogg"}


def _container_options(container: str, info: VideoInfo) -> dict[str, str]:
    # MP4/MOV store a non-zero start (and B-frame delay) in an edit list counted in the movie
    # timescale, 1000 by default, which rounds it; a timescale that the stream's own clock
    # divides keeps the start exact.
    if container in ("mp4", "mov") and info.time_base.denominator:
        scale = math.lcm(1000, info.time_base.denominator)
        if scale < 2**31:
            return {"movie_timescale": str(scale)}
    return {}


# Encoders whose bitstream holds the sample aspect ratio (the H.264/HEVC VUI).
_SAR_IN_BITSTREAM = ("libx264", "libx265")


def _warn_if_aspect_lost(container: str, codec: str, sar) -> None:
    # Matroska stores the display size from the AVStream's own aspect ratio, which PyAV 18.1
    # cannot set (only the codec context's); MP4/MOV write their `pasp` box from the codec's.
    # So in MKV/WebM only a bitstream that carries it keeps it: VP9, AV1 and FFV1 come out square.
    if container in ("matroska", "webm") and codec not in _SAR_IN_BITSTREAM and sar and sar != 1:
        fix = "use .mp4 or .mov" if container == "webm" else "use --codec libx264 or libx265, or .mp4/.mov"
        log.warning("%s in %s cannot keep the input's sample aspect ratio %s: the output shows square pixels "
                    "(%s)", codec, "WebM" if container == "webm" else "Matroska", sar, fix)


def plan_output(info: VideoInfo, output: Path, scale: int, settings: EncodeSettings,
                audio_codec: str = "copy", subtitles: str = "copy") -> OutputPlan:
    """Resolve the encoder and the carried streams for `output`, refusing what cannot work.

    Raises HatstreamError naming the fix when the container cannot hold a stream.
    """
    container = container_for(output)
    encoding = resolve_encoding(settings, container, info.layout, info.colour, info.colour_tags, info.hdr)
    width, height = info.width * scale, info.height * scale
    sx, sy = encoding.layout.chroma_shift
    if width % (1 << sx) or height % (1 << sy):
        raise HatstreamError(f"{encoding.layout.pix_fmt} needs even sizes, but the output would be "
                             f"{width}x{height}; use --pix-fmt with 4:4:4 (e.g. yuv444p) or another scale")
    with open_input(info.path) as inp:
        plan = plan_streams(inp, audio_codec, subtitles, container)
        tags = tuple(video_tags(inp, info.stream_index).items())
    _warn_if_aspect_lost(container, encoding.codec, info.sample_aspect_ratio)
    draft = OutputPlan(container, encoding, width, height, tuple(plan), tags)
    kept = check_streams(info.path, container, plan, lambda out: _add_video(out, info, draft))
    return OutputPlan(container, encoding, width, height, tuple(kept), tags)


def _add_video(out: av.container.OutputContainer, info: VideoInfo, plan: OutputPlan):
    return add_video_stream(out, plan.encoding, plan.width, plan.height, info.time_base, info.average_rate,
                            info.sample_aspect_ratio, info.display_matrix, dict(plan.video_tags))


def vpx_alpha(encoding: VideoEncoding) -> bool:
    """Whether `encoding` is VP8/VP9 with alpha, whose alpha travels as Matroska BlockAdditional
    side data on each packet (a second libvpx stream), not in the codec's own frames."""
    return encoding.layout.has_alpha and encoding.codec in ("libvpx", "libvpx-vp9")


def _add_copied_video(out: av.container.OutputContainer, info: VideoInfo, plan: OutputPlan, encoded):
    """An output video stream that takes `encoded`'s packets as they are (codec parameters copied).

    The intermediate file need not keep colour tags, aspect ratio, rotation or tags (NUT keeps
    none of them), so they are set again from the plan, as `_add_video` sets them on the encoder.
    The time base is the input's, like the encoder's, so pts are rebased exactly.
    """
    try:
        stream = out.add_stream_from_template(encoded)
    except av.codec.codec.UnknownCodecError:
        # PyAV finds the template's encoder by its decoder's name; AV1 is read by libdav1d, which
        # no encoder is called. An opaque stream copies the codec parameters without an encoder.
        stream = out.add_stream_from_template(encoded, opaque=True)
    stream.time_base = info.time_base
    cc = stream.codec_context
    if cc.is_encoder:  # an opaque stream keeps the template's decoder context, which has no time base to set
        cc.time_base = info.time_base
    cc.framerate = info.average_rate or 24  # becomes the stream's rate (MKV DefaultDuration), as add_stream's
    cc.colorspace, cc.color_range, cc.color_primaries, cc.color_trc = plan.encoding.colour_tags
    if info.sample_aspect_ratio:
        cc.sample_aspect_ratio = info.sample_aspect_ratio
    if info.display_matrix is not None:
        stream.set_display_matrix(list(info.display_matrix))
    for key, value in plan.video_tags:
        stream.metadata[key] = value
    if vpx_alpha(plan.encoding):
        # The WebM muxer writes AlphaMode itself for a yuva420p encoder, but a copied stream says
        # yuv420p (the alpha rides in each packet's BlockAdditional); without the tag players,
        # and libvpx, ignore it.
        stream.metadata["alpha_mode"] = "1"
    return stream


class _NoCarrier:
    """The carrier of a video-only intermediate (a segment): the input is never opened, so a node
    that cannot see it writes one all the same."""

    def mux_until(self, t: float) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class VideoWriter:
    """Writes the planned output to `path` (the caller makes it a temporary path).

    `write(planes, pts, duration)` encodes one frame at its original pts; `finish()` flushes
    the encoder (skipping that loses the last frames), muxes the rest of the carried streams
    and writes the trailer; `close()` releases everything without finishing.

    With `encoded` (an input video stream already in the planned encoding, e.g. a finished
    segment), the video is not encoded: `write_packet` muxes that stream's packets unchanged.
    With `carry=False` nothing of the input is carried (no streams, no container tags), and the
    input file is never opened.
    """

    def __init__(self, path: Path, info: VideoInfo, plan: OutputPlan, encoded=None, carry: bool = True):
        self.plan = plan
        self.copying = encoded is not None
        # A `file:` URL, as for inputs (`probe.open_input`): a name with a colon (`x:y.mkv`, or the
        # work folder `.x:y.mkv.hatstream-work/`) must never be taken for a protocol.
        options = dict(_container_options(plan.container, info), protocol_whitelist="file")
        self.out = av.open(f"file:{path}", "w", format=plan.container, options=options)
        try:
            # Every stream is added before the first mux: the header freezes them.
            self.stream = (_add_copied_video(self.out, info, plan, encoded) if self.copying
                           else _add_video(self.out, info, plan))
            self.carrier = Carrier(info.path, self.out, list(plan.streams)) if carry else _NoCarrier()
        except BaseException:
            self.out.close()
            raise
        self.frames = 0
        self._closed = False

    def write(self, planes: tuple[np.ndarray, ...], pts: int, duration: int | None = None) -> None:
        """Encode one frame and mux what the encoder returns."""
        frame = planes_to_frame(planes, self.plan.encoding, pts, duration)
        self._mux(self.stream.encode(frame))
        self.frames += 1

    def write_packet(self, packet: av.Packet) -> None:
        """Mux one already-encoded video packet (only with `encoded`); its timestamps are kept."""
        packet.stream = self.stream
        self._mux([packet])
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            if packet.dts is not None:
                self.carrier.mux_until(float(packet.dts * packet.time_base))
            mux_packet(self.out, packet)

    def finish(self) -> None:
        """Flush the encoder and carried streams, and write the trailer."""
        if not self.copying:
            self._mux(self.stream.encode(None))
        self.carrier.finish()
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.out.close()
            finally:
                self.carrier.close()

    def close(self) -> None:
        """Release the files without flushing (after an error; the output is discarded)."""
        try:
            self._close()
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            log.debug("ignored while closing a discarded output: %s", exc)
