"""Decoding the main video stream into compact integer planes, frame-exact.

Each decoded frame keeps its own `pts` in the stream's time base, untouched: the output gets
exactly the same timestamps, so variable frame rate survives and audio stays in sync. The one
exception is a container with no presentation times (AVI, elementary streams: see
`probe.REBUILT_PTS_DEMUXERS`), whose times `_Clock` rebuilds from the packets' decode times.

Interlaced frames can be deinterlaced on the way (`hatstream.media.deinterlace`), one frame
out per frame in, at the same times.

Damage is never hidden. A packet the decoder rejects, or a frame FFmpeg marks as corrupt,
either stops the run with the timestamp in the message (`on_error="fail"`), or, with
`on_error="conceal"`, is repaired and counted in `DecodeStats`.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from hatstream.errors import HatstreamError
from hatstream.media.deinterlace import Deinterlacer, plan_deinterlace
from hatstream.media.formats import PlaneLayout
from hatstream.media.probe import (ELEMENTARY_DEMUXERS, VideoInfo, configure_decoder, open_input, riff_complete,
                                   seconds)

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "conceal")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in output order, its pts (stream time base) and its planes.

    `repaired` is True for frames that were concealed by the decoder or repeated in place of a
    packet that could not be decoded.
    """

    index: int
    pts: int
    planes: tuple[np.ndarray, ...]
    repaired: bool = False


@dataclass(frozen=True)
class Remuxed:
    """A stretch of the video stream's packets, stream-copied into a NUT file in memory (Matroska
    for VP8/VP9 alpha, see `format`): what a node that cannot read the input decodes instead
    (see `read_frames`' `source`).

    NUT stores no negative timestamps, so its muxer shifts a file whose first dts is negative
    (B-frames) forward; `first_pts`, the input pts of the first packet, undoes that shift.
    NUT has no discard flag either: `hidden` lists the pts of packets the input's demuxer flagged
    discard (pre-roll an MP4 edit list hides), whose frames the decoder would have dropped.
    """

    data: bytes
    first_pts: int
    hidden: frozenset[int] = frozenset()
    format: str = "nut"  # "matroska" for VP8/VP9 with alpha, whose alpha NUT cannot store


@dataclass
class DecodeStats:
    """Counters the decoder fills in while it runs (read them after it finishes)."""

    frames: int = 0
    packets: int = 0       # non-empty video packets read (the decoder's input)
    discarded: int = 0     # non-empty packets flagged discard: pre-roll an MP4 edit list hides
    end_pts: int | None = None  # latest pts + duration of any video packet (the stream's end)
    concealed: int = 0     # frames FFmpeg decoded but flagged corrupt
    repeated: int = 0      # undecodable packets replaced by a copy of a neighbouring frame
    dropped: int = 0       # frames that could not be placed in time order (conceal mode only)
    problems: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        """Frames that are not what the file holds, for the summary line."""
        return self.concealed + self.repeated


def frame_to_planes(frame: av.VideoFrame, layout: PlaneLayout) -> tuple[np.ndarray, ...]:
    """Copy a decoded frame's planes out of FFmpeg's buffers into tight numpy arrays.

    Frames in another pixel format (nv12, p010, rgb24, ...) are first repacked into `layout`
    by swscale; for the formats decoders actually produce that is lossless.
    """
    if layout.has_alpha and not any(c.is_alpha for c in frame.format.components):
        _warn_alpha_lost()
    if frame.format.name != layout.pix_fmt:
        # threads=1: FFmpeg 8.1's threaded swscale (the default, threads=0) gives slightly
        # different rows from run to run (checked with av 18.1.0: ~1-3% of small conversions).
        frame = frame.reformat(format=layout.pix_fmt, threads=1)
    out = []
    for plane, (h, w) in zip(frame.planes, layout.plane_shapes(frame.width, frame.height)):
        # FFmpeg pads each row to `line_size` bytes; cut the padding off while copying.
        row = plane.line_size // layout.dtype.itemsize
        arr = np.frombuffer(plane, dtype=layout.dtype, count=row * h).reshape(h, row)
        out.append(np.ascontiguousarray(arr[:, :w]))
    return tuple(out)


_alpha_warned = False


def _warn_alpha_lost() -> None:
    # A reader that decodes with the stream's own decoder instead of `configure_decoder`'s gets
    # VP8/VP9 without its alpha; swscale would then fill the alpha plane with opaque silently.
    global _alpha_warned
    if not _alpha_warned:
        _alpha_warned = True
        log.warning("frames arrived without the alpha channel the probe found; the output's alpha is opaque")


class _Timeline:
    """Emits frames in strictly increasing pts order and fills holes left by bad packets.

    A packet that fails to decode leaves no frame, only its pts. Decoders that reorder
    (B-frames) return frames later than their packets arrive, so the hole cannot be filled
    at once: its pts waits in a heap until the first decoded frame that comes after it, and
    is then filled with the frame before it (or, at the very start, the one after it).
    """

    def __init__(self, stats: DecodeStats, info: VideoInfo):
        self.stats = stats
        self.info = info
        self.holes: list[int] = []
        self.last_pts: int | None = None
        self.last_planes: tuple[np.ndarray, ...] | None = None
        self.index = 0

    def _make(self, pts: int, planes, repaired: bool) -> Frame:
        frame = Frame(self.index, pts, planes, repaired)
        self.index += 1
        self.last_pts, self.last_planes = pts, planes
        return frame

    def hole(self, pts: int | None) -> None:
        """Remember the pts of a packet whose frame is lost (conceal mode)."""
        if pts is None or (self.last_pts is not None and pts <= self.last_pts):
            self.stats.dropped += 1
            self.stats.problems.append(f"frame at {seconds(pts, self.info.time_base):.3f}s lost")
            log.warning("a damaged frame at %.3fs could not be repeated in place; it is missing from the output",
                        seconds(pts, self.info.time_base))
            return
        heapq.heappush(self.holes, pts)

    def _fill_until(self, limit: int | None, fallback) -> Iterator[Frame]:
        while self.holes and (limit is None or self.holes[0] < limit):
            pts = heapq.heappop(self.holes)
            planes = self.last_planes if self.last_planes is not None else fallback
            if planes is None:
                self.stats.dropped += 1
                continue
            self.stats.repeated += 1
            yield self._make(pts, planes, True)

    def push(self, pts: int, planes, repaired: bool) -> Iterator[Frame]:
        """Yield any holes before `pts`, then this frame."""
        yield from self._fill_until(pts, planes)
        if self.holes and self.holes[0] == pts:
            heapq.heappop(self.holes)  # the frame turned up after all (decoder recovered it)
        yield self._make(pts, planes, repaired)

    def finish(self) -> Iterator[Frame]:
        """Fill the holes left after the last decoded frame."""
        yield from self._fill_until(None, None)


class _Clock:
    """Presentation times for a container that has none: the k-th frame out gets the k-th time in.

    AVI stores one chunk per tick of its rate, in decode order, and an elementary stream's
    parser counts ticks the same way; a decoder that reorders (B-frames, DivX packed B-frames)
    hands its frames out in presentation order, a frame or two later. FFmpeg's guess for those
    frames is the packet pts it derived from the dts plus a guessed delay, which starts one
    frame late in AVI, skips a tick in MPEG-1 video and goes backwards with packed B-frames.
    The times a player shows are the chunks' own slots in order, so every packet's dts goes
    into a heap and each frame out takes the smallest: gaps left by empty "drop" chunks stay
    where they are, and so does a start offset. Packets without any time (raw H.264) leave the
    heap empty; the caller then counts on from the frame rate.

    An elementary stream has no clock at all, and its parser starts the dts a B-frame delay
    below zero or not, depending on the codec (MPEG-4 Part 2 does, MPEG-2 does not); there the
    first slot is moved to 0. AVI's slots are kept as they are: they are the file's own timing,
    and so are an MP4's decode times where it stored no presentation times (pts == dts).
    """

    def __init__(self, from_zero: bool):
        self.times: list[int] = []
        self.last: int | None = None
        self.offset: int | None = None if from_zero else 0

    def add(self, packet: av.Packet) -> int | None:
        """Note the time slot of a non-empty packet; returns it (None when it has none)."""
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None:
            return None
        if self.offset is None:
            self.offset = -ts
        ts += self.offset
        heapq.heappush(self.times, ts)
        return ts

    def forget(self, ts: int | None) -> None:
        """Take back the slot of a packet that produced no frame (it becomes a hole instead)."""
        if ts is not None and ts in self.times:
            self.times.remove(ts)
            heapq.heapify(self.times)

    def next(self) -> int | None:
        """The next frame's time: the smallest slot still free past the last one given, or None."""
        while self.times:
            ts = heapq.heappop(self.times)
            if self.last is None or ts > self.last:
                self.last = ts
                return ts
        return None


def read_frames(info: VideoInfo, on_error: str = "fail", stats: DecodeStats | None = None,
                deinterlace: str = "auto", window: tuple[int | None, int | None] | None = None,
                source: Remuxed | None = None) -> Iterator[Frame]:
    """Decode `info`'s video stream, yielding `Frame`s in presentation order.

    `deinterlace` is 'auto', 'on' or 'off' (see `hatstream.media.deinterlace`). Raises
    HatstreamError for damage (unless `on_error="conceal"`), for timestamps that go backwards,
    and for a file that ends before the frame count or duration it declares.

    `window=(start, end)` decodes only the frames with `start <= pts < end` (None: the file's
    start or end), as one segment of a whole-file run: decoding begins at the keyframe packet
    whose pts is `start` (after a backward seek); frames a decoder returns with an earlier pts
    (leading pictures of an open GOP) belong to the segment before, which decodes them from its
    own references, so they are dropped here. Decoders return frames in pts order, so the first
    frame at or past `end` ends the window. Deinterlacing sees every decoded frame, the dropped
    ones too, so the frames at a window's edges get the same neighbours as in a whole-file run.
    The completeness check is the planner's then (`segments.plan_segments`), made once for all.

    `source`, with a window: the window's video packets, remuxed into a NUT file in memory
    (`segments.segment_payload`), read instead of `info.path` (which then need not exist here),
    their timestamps put back into the input's time base.
    """
    if on_error not in ON_ERROR:
        raise HatstreamError(f"unknown --on-error {on_error!r}; choose {' or '.join(ON_ERROR)}")
    stats = stats if stats is not None else DecodeStats()
    conceal = on_error == "conceal"
    name, tb = info.path.name, info.time_base
    start, end = window if window is not None else (None, None)
    timeline = _Timeline(stats, info)
    elementary = any(n in ELEMENTARY_DEMUXERS for n in info.container.split(","))
    clock = _Clock(from_zero=elementary) if info.rebuilt_pts else None
    plan = plan_deinterlace(info, deinterlace)
    deint = Deinterlacer(plan, tb) if plan is not None else None

    hidden = source.hidden if source is not None else frozenset()

    def wanted(frame: av.VideoFrame) -> bool:
        if frame.pts in hidden:
            return False
        return start is None or frame.pts is None or frame.pts >= start

    def past_end(frame: av.VideoFrame) -> bool:
        return end is not None and frame.pts is not None and frame.pts >= end

    with _open_video(info, source) as (container, stream):
        decode = configure_decoder(stream)
        if start is not None and source is None:
            # backward=True lands on the keyframe at or before `start`; the packets before our
            # keyframe are then skipped without being decoded (`_decode_packets`).
            container.seek(start, backward=True, any_frame=False, stream=stream)
        retime = _Retime(Fraction(stream.time_base) / tb, source.first_pts) if source is not None else None
        ended = False
        cut_short = None  # the damage message of a packet the demuxer could read only in part
        for packet, frames, error in _decode_packets(container, stream, name, stats, decode, start, retime, tb):
            if cut_short is not None and packet.size:
                raise HatstreamError(cut_short)
            slot = clock.add(packet) if clock is not None and packet.size and not packet.is_discard else None
            if error is not None:
                where = seconds(packet.pts if packet.pts is not None else packet.dts, tb)
                message = (f"{name}: damaged video packet at {where:.3f}s ({error}); "
                           "pass --on-error conceal to repeat the frame before it instead")
                if not conceal and packet.is_corrupt and window is None:
                    # A file cut inside a packet ends in one the demuxer read only in part (and
                    # flagged corrupt). Whether it was the last is known only at the end, where the
                    # verdict is "truncated" as for a cut between packets; any packet after it
                    # makes it plain damage.
                    cut_short = message
                    continue
                if not conceal:
                    raise HatstreamError(message)
                stats.problems.append(f"undecodable packet at {where:.3f}s")
                if clock is not None:
                    clock.forget(slot)
                timeline.hole(slot if clock is not None else packet.pts)
            for frame in frames:
                if clock is not None:
                    frame.pts = clock.next()
                for out in (deint.feed(frame) if deint is not None else (frame,)):
                    if past_end(out):
                        ended = True
                        break
                    if wanted(out):
                        yield from _place(out, timeline, stats, info, conceal)
                if ended:
                    break
            if ended:
                break
        if deint is not None and not ended:
            for out in deint.flush():
                if past_end(out):
                    break
                if wanted(out):
                    yield from _place(out, timeline, stats, info, conceal)
        yield from timeline.finish()
    stats.frames = timeline.index
    if window is None:
        _check_complete(info, stats, timeline.last_pts)
    if cut_short is not None:
        raise HatstreamError(cut_short)


@contextlib.contextmanager
def _open_video(info: VideoInfo, source: Remuxed | None):
    """(container, video stream) of the input, or of a segment's packets remuxed into NUT in memory."""
    if source is None:
        with open_input(info.path) as container:
            yield container, container.streams[info.stream_index]
        return
    # Our own remux (segments.segment_payload), so the format is known and forced.
    with av.open(io.BytesIO(source.data), "r", format=source.format) as container:
        yield container, container.streams.video[0]


class _Retime:
    """Timestamps of a remuxed stretch (`Remuxed`) back on the input's clock, exactly.

    NUT keeps each stream in a time base that divides the one it was given (FFmpeg's
    `ff_choose_timebase` only refines it), so the rescale is exact; then the muxer's shift is
    undone, from the first packet, whose input pts is known.
    """

    def __init__(self, ratio: Fraction, first_pts: int):
        self.ratio, self.first_pts, self.shift = ratio, first_pts, None

    def _exact(self, value: int | None) -> int | None:
        if value is None:
            return None
        out = value * self.ratio
        if out.denominator != 1:  # cannot happen (see above); never round a timestamp silently
            raise RuntimeError(f"timestamp {value} x {self.ratio} is not exact")
        return int(out) - self.shift

    def __call__(self, packet: av.Packet) -> None:
        if self.shift is None:
            if packet.pts is None:
                return
            self.shift = 0
            self.shift = self._exact(packet.pts) - self.first_pts
        packet.pts, packet.dts = self._exact(packet.pts), self._exact(packet.dts)


def _decode_packets(container, stream, name: str, stats: DecodeStats, decode=None, from_pts: int | None = None,
                    retime: _Retime | None = None, time_base: Fraction | None = None):
    """Yield (packet, frames, error) for every packet of `stream`, then the decoder's flush.

    Decoding errors are returned, not raised, so that the caller can choose to go on; a
    demuxing error (the container itself is broken) always ends the run. With `from_pts`,
    packets before the keyframe at that pts are skipped, undecoded. `retime` puts each packet
    of a remuxed stretch back on the input's clock (`time_base`) before it is decoded, so its
    frames come out with the input's own pts.
    """
    demux = container.demux(stream)
    last = None
    tb = time_base if time_base is not None else Fraction(stream.time_base)
    started = from_pts is None
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            where = f" after {seconds(last, tb):.3f}s" if last is not None else ""
            raise HatstreamError(f"{name}: the container is damaged{where} ({exc.strerror or exc})") from None
        if retime is not None and packet.size:
            retime(packet)
        if not started:
            if packet.size and (packet.pts is None or not packet.is_keyframe or packet.pts < from_pts):
                continue
            if packet.size and packet.pts > from_pts:
                raise HatstreamError(f"{name}: cannot seek to the keyframe at {seconds(from_pts, tb):.3f}s")
            started = True
        # The demuxer ends with an empty packet whose only job is to flush the decoder. It is
        # recognised by its size, not by a missing dts: B-frame MKV keyframes have no dts either.
        if packet.pts is not None:
            last = packet.pts
        if packet.size:
            # A stream-copy cut (`ffmpeg -ss 1.5 -c copy`) keeps the packets from the keyframe
            # before the cut and hides them with an edit list; the demuxer flags them discard and
            # the decoder returns no frame for them, but the sample count includes them.
            if packet.is_discard:
                stats.discarded += 1
            else:
                stats.packets += 1
            if packet.pts is not None:
                end = packet.pts + (packet.duration or 0)
                stats.end_pts = end if stats.end_pts is None else max(stats.end_pts, end)
        try:
            frames = decode(packet) if decode is not None else packet.decode()
        except av.error.FFmpegError as exc:
            if packet.size == 0:
                raise HatstreamError(f"{name}: the video ends in a damaged frame ({exc.strerror or exc})") from None
            yield packet, [], exc.strerror or str(exc)
            continue
        yield packet, frames, None


def _place(frame: av.VideoFrame, timeline: _Timeline, stats: DecodeStats, info: VideoInfo,
           conceal: bool) -> Iterator[Frame]:
    """Turn one decoded AVFrame into Frames (with any filled holes before it)."""
    pts = frame.pts
    where = seconds(pts, info.time_base)
    if pts is None:
        # No timestamp at all (raw streams in AVI, say): place it one frame interval on.
        if timeline.last_pts is None:
            pts = 0
        else:
            step = 1 / (info.average_rate or 25) / info.time_base
            pts = timeline.last_pts + max(1, round(step))
        log.debug("frame %d has no pts; placed at %d", timeline.index, pts)
    elif timeline.last_pts is not None and pts <= timeline.last_pts:
        message = f"{info.path.name}: video timestamps go backwards at {where:.3f}s"
        if not conceal:
            raise HatstreamError(message + "; the file is damaged (pass --on-error conceal to skip such frames)")
        stats.dropped += 1
        stats.problems.append(f"out-of-order frame at {where:.3f}s skipped")
        log.warning("%s; that frame is skipped", message)
        return
    if frame.is_corrupt:
        if not conceal:
            raise HatstreamError(f"{info.path.name}: damaged video frame at {where:.3f}s; "
                                 "pass --on-error conceal to keep FFmpeg's concealed version of it")
        stats.concealed += 1
        stats.problems.append(f"concealed frame at {where:.3f}s")
    yield from timeline.push(pts, frame_to_planes(frame, info.layout), bool(frame.is_corrupt))


def _check_complete(info: VideoInfo, stats: DecodeStats, last_pts: int | None) -> None:
    """Fail if the stream ended early: fewer frames than declared, or far short of its duration.

    A verdict of "truncated" must never be wrong, so each container's declaration is read with
    its own meaning: MP4 counts every sample, those an edit list hides included; AVI counts its
    empty "drop" chunks as frames; Matroska and MPEG-TS declare a duration, not a count.
    """
    name = info.path.name
    if info.container == "avi":
        # AVI's frame count (dwLength) and the duration made from it include null chunks, which
        # the demuxer skips (a player holds the previous picture), and a run of them may end the
        # file. The RIFF chunk sizes, written when the file is closed, tell a cut file instead.
        if not riff_complete(info.path):
            raise HatstreamError(f"{name} is truncated: its RIFF chunks run past the end of the file")
        return
    short_count = info.frames_exact and stats.packets + stats.discarded < info.frames
    known, end = _end_if_short(info, stats, last_pts)
    # A count that falls short while the video lasts its declared length is a file that counts
    # something else (empty chunks), not a cut one.
    if short_count and (end is not None or not known):
        raise HatstreamError(f"{name} is truncated: it declares {info.frames} frames but only "
                             f"{stats.packets + stats.discarded} could be read")
    if short_count:
        log.info("%s declares %d frames and has %d video packets, but its video lasts as long as it says",
                 name, info.frames, stats.packets + stats.discarded)
    # Every packet ends as one frame (decoded, or repeated in its place) or one counted drop.
    if stats.frames + stats.dropped < stats.packets:
        log.warning("the decoder returned %d frames for %d video packets; the difference was never "
                    "output by FFmpeg (edit list or decoder delay)", stats.frames + stats.dropped, stats.packets)
    if not info.frames_exact and end is not None:
        raise HatstreamError(f"{name} is truncated: it declares {info.start_time + info.duration:.2f}s of video "
                             f"but ends at {end:.2f}s")


def _end_if_short(info: VideoInfo, stats: DecodeStats, last_pts: int | None) -> tuple[bool, float | None]:
    """(known, end): whether a declared duration could be compared, and the video's end time
    when that falls far short of it (None when it does not)."""
    if not info.duration or last_pts is None:
        return False, None
    # The end is the last packet's pts plus its duration where the container stores one (a
    # slide show's last picture may last seconds); else one average frame interval.
    interval = 1 / float(info.average_rate) if info.average_rate else 0.0
    end = float(last_pts * info.time_base) + interval
    if stats.end_pts is not None:
        end = max(end, float(stats.end_pts * info.time_base))
    # Both are times on the stream's clock: `duration` is the length from `start_time`. Allow
    # a few intervals (and at least a second): real files differ by rounding, never by that much.
    if info.start_time + info.duration - end > max(1.0, 3 * interval):
        return True, end
    return True, None
