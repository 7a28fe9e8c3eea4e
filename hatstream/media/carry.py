"""Carrying everything but the main video over to the output: audio, subtitles, data, chapters, metadata.

Audio and subtitles are copied packet for packet by default: the bytes and timestamps are the
input's, so they stay bit-identical and in sync. On request they are re-encoded instead
(`--audio-codec aac`, `--subtitles mov_text`), which is the fix when the output container
cannot hold the original codec.

Whether a container can hold a stream is decided by actually writing a header into memory
with that stream (`check_streams`): `supported_codecs` is not enough (MOV lists opus and flac,
then fails at header time), and the check must fail before anything is written to disk.

A second demuxer on the input feeds the carried packets (`Carrier`), so the video pipeline
only ever sees video frames. The encoder thread asks it for packets up to each video packet's
time, which keeps the output interleaved without buffering.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import av

from hatstream.errors import HatstreamError
from hatstream.media.probe import open_input, pick_video_stream, seconds

log = logging.getLogger(__name__)

# Tags a muxer writes itself; copying the input's would make them wrong (MKV statistics,
# durations) or duplicate them (MP4 brands, the encoder name).
_MUXER_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration",
               "bps", "number_of_frames", "number_of_bytes"}
_MUXER_TAG_PREFIXES = ("_statistics_",)

TEXT_SUBTITLES = ("subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text")
FIX_CONTAINER = {"mp4": ".mkv", "mov": ".mkv", "webm": ".mkv", "matroska": ".mp4"}


def carry_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags worth copying to the output: all but those the muxer writes itself."""
    return {k: v for k, v in tags.items()
            if k.lower() not in _MUXER_TAGS and not k.lower().startswith(_MUXER_TAG_PREFIXES)}


@dataclass(frozen=True)
class CarriedStream:
    """One input stream to carry: `action` is 'copy' or 'encode' (then `target` names the encoder)."""

    index: int
    kind: str
    codec: str
    action: str = "copy"
    target: str | None = None

    def describe(self) -> str:
        """'audio stream #1 (opus)', for messages."""
        return f"{self.kind} stream #{self.index} ({self.codec})"


# The lossless audio each output container takes, for tracks that cannot be copied (ADPCM);
# WebM holds only Opus and Vorbis.
LOSSLESS_AUDIO = {"matroska": "flac", "mp4": "flac", "mov": "alac", "webm": "libopus"}


def plan_streams(inp: av.container.InputContainer, audio_codec: str = "copy",
                 subtitles: str = "copy", container: str = "matroska") -> list[CarriedStream]:
    """Decide what happens to each stream other than the main video, for the `container` muxer.

    Cover art (an attached picture) is copied unchanged; other extra video streams (a second
    angle) are not carried: they are logged.
    """
    main = pick_video_stream(inp)
    plan = []
    for s in inp.streams:
        codec = s.codec_context.name if s.codec_context is not None else (s.metadata.get("mimetype") or s.type)
        if main is not None and s.index == main.index:
            continue
        if s.discard == av.stream.Discard.all:
            # The demuxer itself set this: an MP4 chapter text track, whose content already
            # comes through `chapters()`. Copying it as well would duplicate the chapters.
            continue
        if s.type == "video" and s.disposition & av.stream.Disposition.attached_pic:
            plan.append(CarriedStream(s.index, "video", codec))  # cover art: one picture, copied as it is
        elif s.type == "video":
            log.warning("video stream #%d (%s) is not carried over: only the main video is upscaled", s.index, codec)
        elif s.type == "audio":
            if audio_codec == "copy" and codec.startswith("adpcm_"):
                # No container PyAV writes takes ADPCM packets (Matroska only through ACM, which
                # FFmpeg allows below normal strictness, and PyAV checks at normal). Its decoded
                # samples are encoded instead, this track alone, losslessly where the container
                # has a lossless codec; the other tracks are still copied.
                target = LOSSLESS_AUDIO.get(container, "flac")
                log.warning("audio stream #%d (%s) cannot be copied into any container hatstream writes; "
                            "its decoded samples are encoded as %s", s.index, codec,
                            {"flac": "FLAC (lossless)", "alac": "ALAC (lossless)"}.get(target, "Opus"))
                plan.append(CarriedStream(s.index, "audio", codec, "encode", target))
            elif audio_codec in ("copy", codec):
                plan.append(CarriedStream(s.index, "audio", codec))
            else:
                plan.append(CarriedStream(s.index, "audio", codec, "encode", audio_codec))
        elif s.type == "subtitle":
            if subtitles == "drop":
                log.info("subtitle stream #%d (%s) dropped (--subtitles drop)", s.index, codec)
            elif subtitles in ("copy", codec):
                plan.append(CarriedStream(s.index, "subtitle", codec))
            elif codec not in TEXT_SUBTITLES:
                raise HatstreamError(f"subtitle stream #{s.index} ({codec}) is a picture format and cannot be "
                                     f"converted to {subtitles}; use an .mkv output or --subtitles drop")
            else:
                plan.append(CarriedStream(s.index, "subtitle", codec, "encode", subtitles))
        elif s.type == "data" and getattr(s, "name", None) == "dvd_nav_packet":
            # A DVD's navigation packets (menus, seamless angles) point at sector offsets in
            # the VOB; in any other file they mean nothing, so they are left behind quietly.
            log.info("data stream #%d (DVD navigation packets) is not carried over", s.index)
        elif s.type == "data" and "timecode" in s.metadata:
            # A QuickTime timecode (tmcd) track. Copied as a template its stream has no frame
            # rate, and the MOV muxer fails on that when it writes the trailer, after all the
            # work. The muxer builds a fresh track from the video's `timecode` tag instead
            # (`video_tags` puts it there); Matroska keeps the tag itself.
            log.info("timecode %s carried as the video's timecode tag", s.metadata["timecode"])
        elif s.type in ("data", "attachment"):
            plan.append(CarriedStream(s.index, s.type, codec))
    return plan


def video_tags(inp: av.container.InputContainer, index: int) -> dict[str, str]:
    """The tags to set on the output video stream: the input video's, plus the timecode of a
    timecode track when the video itself does not name it.

    ALPHA_MODE is never copied: where the output keeps alpha (VP9 yuva420p) the WebM muxer
    writes its own, and elsewhere it would promise players an alpha channel that is not there.
    Whether alpha is kept is the encoder's choice (`encode.choose_layout`, which warns).
    """
    stream = inp.streams[index]
    tags = carry_tags(dict(stream.metadata))
    for k in [k for k in tags if k.lower() == "alpha_mode"]:
        del tags[k]
    if "timecode" not in tags:
        for s in inp.streams:
            if s.type == "data" and s.metadata.get("timecode"):
                tags["timecode"] = s.metadata["timecode"]
                break
    return tags


# FFmpeg's default channel order per channel count (av_channel_layout_default).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _sample_format(codec, source: str) -> str:
    """The encoder's sample format nearest the source's: the same one, or its packed/planar twin
    (s16p -> s16), else the encoder's first (ALAC's first is s32p, which would store 16-bit audio
    as 32-bit)."""
    names = [f.name for f in codec.audio_formats or []]
    if not names:
        return source
    for name in (source, source.rstrip("p"), source + "p"):
        if name in names:
            return name
    return names[0]


class _Transcoder:
    """Re-encodes one audio or subtitle stream; `feed(packet)` yields output packets."""

    def __init__(self, out: av.container.OutputContainer, src, target: str):
        self.src = src
        self.kind = src.type
        if self.kind == "audio":
            rate = src.codec_context.sample_rate
            rates = av.codec.Codec(target, "w").audio_rates
            if rates and rate not in rates:
                # Opus runs at 48/24/16/12/8 kHz only: the nearest rate above (the resampler converts).
                rate = min((r for r in rates if r >= rate), default=max(rates))
            self.stream = out.add_stream(target, rate=rate)
            codec = self.stream.codec_context.codec
            layout = src.codec_context.layout
            if layout.name.endswith("channels"):
                # An unordered layout ("2 channels": AVI/WAV without a channel mask, as ADPCM
                # camcorders write) is refused by AAC, ALAC and Opus; FFmpeg's default order for
                # that count is what a player assumes.
                layout = av.AudioLayout(_DEFAULT_LAYOUTS.get(layout.nb_channels, layout.name))
            fmt = _sample_format(codec, src.codec_context.format.name)
            self.stream.codec_context.layout = layout
            self.stream.codec_context.format = fmt
            # Encoders such as AAC take fixed-size frames; the resampler rebuffers to that size.
            self.resampler = None
            self._fmt, self._layout, self._rate = fmt, layout, rate
        else:
            self.stream = out.add_stream(target)
            dec = src.codec_context
            if not dec.is_open:
                dec.open()
            # Text subtitle encoders need the decoder's ASS header (styles) before they open.
            self.stream.codec_context.subtitle_header = dec.subtitle_header
            self.stream.codec_context.time_base = src.time_base
            self.stream.time_base = src.time_base

    def feed(self, packet: av.Packet | None) -> Iterator[av.Packet]:
        """Decode `packet` (None flushes) and encode what comes out."""
        if self.kind == "audio":
            if self.resampler is None:
                size = self.stream.codec_context.frame_size or None
                self.resampler = av.AudioResampler(self._fmt, self._layout, self._rate, frame_size=size)
            frames = self.src.decode(packet)
            for frame in frames:
                for chunk in self.resampler.resample(frame):
                    yield from self.stream.encode(chunk)
            if packet is None:
                for chunk in self.resampler.resample(None):
                    yield from self.stream.encode(chunk)
                yield from self.stream.encode(None)
            return
        if packet is None or packet.size == 0:
            return
        subs = self.src.codec_context.decode2(packet)
        if subs is None:
            return
        out = self.stream.codec_context.encode_subtitle(subs)
        # The encoder knows nothing about time: the packet keeps the source cue's timing.
        out.pts, out.dts, out.duration = packet.pts, packet.pts, packet.duration
        out.time_base = self.src.time_base
        yield out


def add_streams(out: av.container.OutputContainer, inp: av.container.InputContainer,
                plan: list[CarriedStream]) -> dict[int, object]:
    """Add the output stream for each planned stream; returns input index -> output stream or transcoder.

    Must run before the first packet is muxed: the header freezes the stream list.
    """
    mapping: dict[int, object] = {}
    for item in plan:
        src = inp.streams[item.index]
        if item.action == "encode":
            tr = _Transcoder(out, src, item.target)
            dst, mapping[item.index] = tr.stream, tr
        else:
            dst = out.add_stream_from_template(src)
            mapping[item.index] = dst
        for key, value in carry_tags(dict(src.metadata)).items():
            dst.metadata[key] = value
        dst.disposition = src.disposition
    return mapping


def copy_container_tags(out: av.container.OutputContainer, inp: av.container.InputContainer) -> None:
    """Container metadata and chapters, before the header is written."""
    for key, value in carry_tags(dict(inp.metadata)).items():
        out.metadata[key] = value
    chapters = inp.chapters()
    if chapters:
        out.set_chapters(chapters)


def _header_error(fmt: str, build: Callable[[av.container.OutputContainer], object],
                  feed: Callable[[av.container.OutputContainer, object], None] | None = None) -> str | None:
    """Write a whole file for `fmt` into memory: `build` adds streams, the header is written,
    `feed` may mux sample packets, then the trailer is written. The error text, or None.

    The trailer matters: some muxers check a stream only there (MOV refuses a copied timecode
    track with no frame rate when it closes the file), and that must fail before any work.
    """
    out = av.open(io.BytesIO(), "w", format=fmt)
    try:
        built = build(out)
        out.start_encoding()
        if feed is not None:
            feed(out, built)
    except (av.error.FFmpegError, ValueError, TypeError) as exc:
        try:
            out.close()
        except (av.error.FFmpegError, ValueError):
            pass
        return str(getattr(exc, "strerror", None) or exc)
    try:
        out.close()
    except (av.error.FFmpegError, ValueError) as exc:
        return str(getattr(exc, "strerror", None) or exc)
    return None


def _first_packet(inp: av.container.InputContainer, index: int, limit: int = 2000) -> av.Packet | None:
    """The first non-empty packet of input stream `index` among the file's first `limit` packets.

    The bound keeps the check cheap for a stream that starts late (subtitles an hour in).
    """
    try:
        inp.seek(0)
    except av.error.FFmpegError:
        pass
    try:
        for n, packet in enumerate(inp.demux()):
            if packet.stream_index == index and packet.size:
                return packet
            if n >= limit:
                break
    except av.error.FFmpegError:
        return None
    return None


def _holders(codec: str, fmt: str) -> list[str]:
    """The other output extensions whose muxer takes `codec` (PyAV's own check, as `add_streams` meets it)."""
    found = []
    for ext, other in ((".mkv", "matroska"), (".mp4", "mp4"), (".mov", "mov")):
        if other == fmt:
            continue
        out = av.open(io.BytesIO(), "w", format=other)
        try:
            if codec in out.supported_codecs:
                found.append(ext)
        finally:
            out.close()
    return found


def _fix_for(item: CarriedStream, fmt: str) -> str:
    if item.kind == "audio":
        codec = item.codec.replace("mp3float", "mp3")
        others = _holders(codec, fmt)
        where = f"use an {' or '.join(others)} output, or " if others else "pass "
        # PCM and ADPCM decode to plain samples; FLAC keeps those exactly. ADPCM itself cannot
        # be copied into any container PyAV will write (Matroska takes it only through ACM,
        # which FFmpeg allows below normal strictness, and PyAV checks at normal).
        if codec.startswith(("pcm_", "adpcm_")):
            return f"{where}--audio-codec flac (its decoded samples, losslessly) or aac"
        return f"{where}--audio-codec {'libopus' if fmt == 'webm' else 'aac'}"
    other = FIX_CONTAINER.get(fmt, ".mkv")
    if item.kind == "subtitle" and item.codec not in TEXT_SUBTITLES:
        # Picture subtitles (PGS, DVB, VobSub) cannot become text: drop is the only other way.
        return f"use an {other} output, or --subtitles drop"
    if item.kind == "subtitle":
        names = {"mp4": "mov_text", "mov": "mov_text", "webm": "webvtt"}.get(fmt, "ass")
        return f"use an {other} output, or --subtitles {names}|drop"
    return f"use an {other} output"


def check_streams(path, fmt: str, plan: list[CarriedStream], add_video: Callable) -> list[CarriedStream]:
    """Refuse, before anything is written, streams the output container cannot hold.

    `add_video(out)` adds the configured video stream. Each carried stream is tried on its own
    beside it, so the error names every stream that fails and its fix. Data streams and
    attachments the container refuses are dropped with a warning instead (there is no flag to
    convert them), and so is cover art. Returns the plan without those.
    """
    error = _header_error(fmt, add_video)
    if error:
        raise HatstreamError(f"cannot write this video into {fmt}: {error}; try another --codec or container")
    problems, kept = [], []
    with open_input(path) as inp:
        for item in plan:
            if item.kind == "video" and fmt not in ("mp4", "mov"):
                # Matroska's muxer would write the picture as a one-frame second video track
                # rather than as cover art; only MP4/MOV keep it as what it is.
                log.warning("%s (cover art) is dropped: %s has no cover art that players show", item.describe(), fmt)
                continue
            def build(out, item=item):
                add_video(out)
                return add_streams(out, inp, [item])

            def feed(out, mapping, item=item):
                # One real packet of a copied stream goes through mux and trailer, as in the run.
                dst = mapping.get(item.index)
                packet = (_first_packet(inp, item.index)
                          if item.action == "copy" and item.kind != "attachment" and dst is not None else None)
                if packet is not None:
                    packet.stream = dst
                    out.mux(packet)
            error = _header_error(fmt, build, feed)
            if error is None:
                kept.append(item)
            elif item.kind in ("data", "attachment", "video"):
                log.warning("%s is dropped: %s cannot hold it", item.describe(), fmt)
            elif item.action == "encode":
                problems.append(f"{item.describe()} cannot be encoded as {item.target} in {fmt} ({error})")
            else:
                problems.append(f"{item.describe()} cannot go in {fmt}: {_fix_for(item, fmt)}")
    if problems:
        raise HatstreamError("; ".join(problems))
    return kept


def mux_packet(out: av.container.OutputContainer, packet: av.Packet) -> None:
    """`out.mux(packet)`, with FFmpeg's refusal turned into a message naming the stream and time."""
    try:
        out.mux(packet)
    except av.error.FFmpegError as exc:
        raise HatstreamError(f"cannot write {packet.stream.type} packet at "
                             f"{seconds(packet.pts, packet.time_base):.3f}s: {exc.strerror or exc}") from None


class Carrier:
    """Feeds the carried streams' packets into the output, interleaved with the video by time.

    It owns a second demuxer on the input that reads only the carried streams. Call
    `mux_until(t)` before each video packet of time `t` seconds, and `finish()` at the end.
    """

    def __init__(self, path, out: av.container.OutputContainer, plan: list[CarriedStream]):
        self.inp = open_input(path)
        self.out = out
        self.plan = plan
        self.mapping = add_streams(out, self.inp, plan) if plan else {}
        copy_container_tags(out, self.inp)
        streams = [self.inp.streams[i.index] for i in plan if i.kind != "attachment"]
        for s in self.inp.streams:  # read nothing the output does not need
            if s not in streams:
                s.discard = av.stream.Discard.all
        self._packets = self.inp.demux(streams) if streams else iter(())
        self._pending: av.Packet | None = None
        self._last_dts: dict[int, int] = {}
        self.packets = 0

    def _next(self) -> av.Packet | None:
        if self._pending is None:
            try:
                self._pending = next(self._packets)
            except StopIteration:
                return None
            except av.error.FFmpegError as exc:
                raise HatstreamError(f"{self.inp.name}: the container is damaged ({exc.strerror or exc})") from None
        return self._pending

    def mux_until(self, t: float | None) -> None:
        """Mux every carried packet whose decode time is before `t` seconds (all when None)."""
        while (packet := self._next()) is not None:
            ts = packet.dts if packet.dts is not None else packet.pts
            if t is not None and ts is not None and float(ts * packet.time_base) > t:
                return
            self._pending = None
            self._write(packet)

    def _write(self, packet: av.Packet) -> None:
        target = self.mapping.get(packet.stream_index)
        if isinstance(target, _Transcoder):
            for out_packet in target.feed(packet):
                self._mux(out_packet, target.stream)
            return
        # The demuxer's final empty packet of each stream only flushes a decoder; copying it
        # would write an empty sample. It is recognised by size: a missing dts is normal for
        # B-frame keyframes in MKV and must not cost a packet.
        if target is None or packet.size == 0:
            return
        self._mux(packet, target)

    def _mux(self, packet: av.Packet, stream) -> None:
        # Muxers reject a dts that goes backwards, and MP4 only finds out deep into a job;
        # name the stream and time instead of FFmpeg's bare EINVAL.
        if packet.dts is not None:
            tb = packet.time_base or stream.time_base
            dts = Fraction(packet.dts) * Fraction(tb)
            last = self._last_dts.get(stream.index)
            if last is not None and dts < last:
                raise HatstreamError(f"stream #{packet.stream_index} of the input has timestamps going backwards "
                                     f"at {float(dts):.3f}s; remux it first (e.g. ffmpeg -c copy to .mkv)")
            self._last_dts[stream.index] = dts
        packet.stream = stream
        mux_packet(self.out, packet)
        self.packets += 1

    def finish(self) -> None:
        """Mux everything left and flush the re-encoders."""
        self.mux_until(None)
        for target in self.mapping.values():
            if isinstance(target, _Transcoder):
                for out_packet in target.feed(None):
                    self._mux(out_packet, target.stream)

    def close(self) -> None:
        """Close the second demuxer."""
        self.inp.close()
