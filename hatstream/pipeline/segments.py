"""Keyframe-aligned segments: the unit of resumable runs and of farming a video out to other machines.

    plan_segments(info, seconds)        demux the video packets only (no decoding), cut at keyframes
    segment_payload(info, segment)      stream-copy one segment's video packets into NUT in memory
    encode_segment(recipe, segment, ...)   decode one segment from its keyframe, upscale, encode to NUT
    assemble(recipe, segments, output)     remux the segment files in order, plus the carried streams

Every function takes plain, picklable arguments (paths and frozen dataclasses) and returns
frozen dataclasses, so a Ray task on another node can call `encode_segment` with the same
`SegmentRecipe` and a segment's payload, and send back the file: compressed bytes travel both
ways, never frames, and that node never opens the input path.

A segment is the frames whose pts lie in [start_pts, end_pts), both keyframe pts of the input.
Frames keep their input pts throughout: nothing is rebased, so concatenating the segments
gives exactly the timeline an uninterrupted run gives.

Why NUT for the segment files: it stores each stream in a time base that divides the one it is
given (FFmpeg's `ff_choose_timebase` only refines it), so every pts survives exactly, and it
keeps the encoder's global header (extradata) like MP4/MKV want it. Matroska would round every
timestamp to 1 ms, which is not exact for 1001-based or 90 kHz time bases; MPEG-TS rounds to
90 kHz; MP4 needs its trailer and edit lists. NUT, like Matroska, stores no dts, which
`assemble` rebuilds (see `_fill_dts`). The one exception is VP8/VP9 with alpha, whose alpha
only Matroska stores (`segment_format`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av

from hatstream.atomic import durable_replace, file_sha256
from hatstream.errors import HatstreamError
from hatstream.media.decode import DecodeStats, Frame, Remuxed, _check_complete, read_frames
from hatstream.media.probe import VideoInfo, alpha_decoder_name, open_input, seconds
from hatstream.media.writer import OutputPlan, VideoWriter, vpx_alpha
from hatstream.pipeline.engine import Progress, StageTimes, run_stages

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_SECONDS = 60.0
SEGMENT_FORMAT = "nut"
SEGMENT_SUFFIX = ".nut"


@dataclass(frozen=True)
class Segment:
    """Frames with `start_pts <= pts < end_pts` (input time base); None means the file's start or end.

    `start_pts` is a keyframe's pts, where decoding of the segment begins.
    """

    index: int
    start_pts: int | None
    end_pts: int | None

    def contains(self, pts: int) -> bool:
        """Whether a frame at `pts` belongs to this segment."""
        return (self.start_pts is None or pts >= self.start_pts) and (self.end_pts is None or pts < self.end_pts)


@dataclass(frozen=True)
class SegmentRecipe:
    """What every segment of one run shares: the input, the planned output, and how to run the model."""

    info: VideoInfo
    plan: OutputPlan
    batch: int = 1
    temporal: bool = False  # steady the output (`pipeline.temporal`); its state restarts at each segment
    deinterlace: str = "auto"


@dataclass(frozen=True)
class EncodedSegment:
    """A finished, fsynced segment file: its frame count, first frame's pts (input time base), size, SHA-256."""

    index: int
    path: Path
    frames: int
    first_pts: int
    size: int
    sha256: str


@dataclass(frozen=True)
class SegmentResult:
    """A segment an executor finished: what was encoded and, when it was made elsewhere, the file's bytes.

    `data` is None when the file is already at `segment.path`, in the work folder, durably (an
    executor in this process); otherwise the runner checks the bytes against `segment.sha256`
    and writes them there itself.
    """

    segment: EncodedSegment
    data: bytes | None = None


@dataclass(frozen=True)
class KeyframeIndex:
    """The input's video packets in brief: keyframe pts in decode order, the packet count, pts range."""

    keyframes: tuple[int, ...]
    packets: int
    first_pts: int | None
    last_pts: int | None
    usable: bool  # False when some packet has no pts or keyframes go backwards
    discarded: int = 0          # packets flagged discard (pre-roll an MP4 edit list hides), not in `packets`
    end_pts: int | None = None  # latest pts + duration of any packet: where the stream ends

    def stats(self) -> DecodeStats:
        """What a whole-file decode of these packets would count, one frame for each packet."""
        return DecodeStats(frames=self.packets, packets=self.packets, discarded=self.discarded,
                           end_pts=self.end_pts)


def index_keyframes(info: VideoInfo) -> KeyframeIndex:
    """Demux the main video stream (no decoding) and list its keyframes' pts.

    Reading packets is I/O only: a two-hour film takes seconds, against hours of upscaling.
    The other streams are demuxed too, as a whole-file decode demuxes them: in a cut MP4 the
    demuxer stops at the first sample past the end, audio or video, and `packets` must be the
    count a whole-file run would see (see `plan_segments`).
    """
    keyframes: list[int] = []
    packets, discarded, usable = 0, 0, True
    first = last = end = None
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the demuxer's flush packet
                if packet.is_discard:  # counted as decode.read_frames counts them
                    discarded += 1
                else:
                    packets += 1
                if packet.pts is None:
                    usable = False
                    continue
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
                first = packet.pts if first is None else min(first, packet.pts)
                last = packet.pts if last is None else max(last, packet.pts)
                if packet.is_keyframe:
                    if keyframes and packet.pts <= keyframes[-1]:
                        usable = False
                    keyframes.append(packet.pts)
        except av.error.FFmpegError as exc:
            where = f" after {seconds(last, info.time_base):.3f}s" if last is not None else ""
            raise HatstreamError(f"{info.path.name}: the container is damaged{where} ({exc.strerror or exc})") from None
    return KeyframeIndex(tuple(keyframes), packets, first, last, usable, discarded, end)


def plan_segments(info: VideoInfo, segment_seconds: float, index: KeyframeIndex | None = None) -> tuple[Segment, ...]:
    """Cut the input at keyframes into segments of at least `segment_seconds` (the last may be shorter).

    Returns a single whole-file segment when segments are off (`segment_seconds <= 0`), when
    the input is known to be shorter than one segment (then nothing is even indexed), or when
    the packets cannot be cut safely (missing pts, keyframes out of order, or times that the
    decoder rebuilds from the decode order: `VideoInfo.rebuilt_pts`), saying so in one line.
    """
    whole = (Segment(0, None, None),)
    if segment_seconds <= 0 or (info.duration is not None and info.duration <= segment_seconds):
        return whole
    if info.rebuilt_pts:
        # Rebuilt times (decode._Clock) give the k-th frame shown the k-th packet's slot, so a
        # frame's time is the number of frames shown before it. A keyframe followed in decode
        # order by B-frames shown before it (an open GOP, the default of MPEG-4 Part 2 and
        # MPEG-2: in PyAV's mpeg4 with 2 B-frames and g=8, keyframe packet 7 is shown at place
        # 9, both counted from 0) is shown later than its packet's place by a count no packet
        # states, and a decoder started at it drops those B-frames (their forward reference is
        # missing). A segment would know neither its first frame's time nor hold its frames;
        # raw streams (h264, m4v, ...) give their packets no times to seek to at all. Only a
        # decode from the first packet is exact.
        if info.duration is None and info.average_rate:
            # Raw streams declare no length; their packets, one per frame, tell it (I/O only).
            index = index or index_keyframes(info)
            if index.packets / info.average_rate <= Fraction(segment_seconds):
                return whole
        log.warning("%s: its frame times are rebuilt from the decode order, which only a decode from the "
                    "first packet gets right (B-frames after a keyframe may be shown before it); it runs in one "
                    "pass, not in resumable segments, so an interrupted run starts over", info.path.name)
        return whole
    index = index or index_keyframes(info)
    # The verdict of a whole-file run on a file that ends early, given before any work: one
    # check, the decoder's own, fed with what the packets say (each packet is one frame).
    _check_complete(info, index.stats(), index.last_pts)
    if not index.usable:
        log.info("%s: video packets without pts or with keyframes out of order; not cut into segments",
                 info.path.name)
        return whole
    step = Fraction(segment_seconds) / info.time_base
    starts: list[int] = []
    origin = index.first_pts
    for pts in index.keyframes:
        if origin is not None and pts - origin >= step:
            starts.append(pts)
            origin = pts
    bounds = [None, *starts, None]
    return tuple(Segment(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))


def segment_payload(info: VideoInfo, segment: Segment) -> Remuxed:
    """The video packets that decoding `segment` needs, stream-copied (no decoding) into NUT in memory.

    What travels to a node that cannot read the input: compressed video only, a segment's
    worth. The packets run in decode order from the segment's keyframe up to and including the
    next segment's keyframe and the packets right after it that are shown before it: the
    leading pictures of an open GOP belong to this segment (`read_frames`' window), and the
    decoder needs the keyframe they reference. A closed GOP costs one extra packet, whose frame
    is dropped. Nothing else of the input (audio, subtitles) goes: the driver carries those when
    it assembles.
    """
    name, tb, end = info.path.name, info.time_base, segment.end_pts
    packets: list[av.Packet] = []
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        if segment.start_pts is not None:
            container.seek(segment.start_pts, backward=True, any_frame=False, stream=stream)
        tail = False
        last = None
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue  # the demuxer's flush packet
                if not packets and segment.start_pts is not None:
                    if packet.pts is None or not packet.is_keyframe or packet.pts < segment.start_pts:
                        continue
                    if packet.pts > segment.start_pts:
                        raise HatstreamError(f"{name}: cannot seek to the keyframe at "
                                             f"{seconds(segment.start_pts, tb):.3f}s")
                if end is not None and packet.pts is not None:
                    if tail and packet.pts >= end:
                        break
                    tail = tail or (packet.is_keyframe and packet.pts >= end)
                last = packet.pts if packet.pts is not None else last
                packets.append(packet)
        except av.error.FFmpegError as exc:
            where = f" after {seconds(last, tb):.3f}s" if last is not None else ""
            raise HatstreamError(f"{name}: the container is damaged{where} ({exc.strerror or exc})") from None
        if not packets:
            raise HatstreamError(f"{name}: segment {segment.index} has no video packets")
        first = packets[0].pts
        hidden = frozenset(p.pts for p in packets if p.is_discard and p.pts is not None)
        _decode_order_dts(packets)
        # VP8/VP9 alpha rides in Matroska BlockAdditional side data, which NUT drops; a WebM
        # input is on Matroska's own 1 ms clock, so Matroska keeps its pts exactly too.
        fmt = "matroska" if alpha_decoder_name(stream) and tb == Fraction(1, 1000) else SEGMENT_FORMAT
        buf = io.BytesIO()
        with av.open(buf, "w", format=fmt) as out:
            copy = out.add_stream_from_template(stream)
            if fmt == "matroska":
                copy.metadata["alpha_mode"] = "1"  # what makes configure_decoder pick libvpx there
            for packet in packets:
                packet.stream = copy
                out.mux(packet)
    return Remuxed(buf.getvalue(), first, hidden, fmt)


def _decode_order_dts(packets: list[av.Packet]) -> None:
    """Give every packet a dts the muxer accepts: rising, never past its pts.

    After a seek, and at a file's start, Matroska's demuxer leaves the first packets of a
    B-frame stream without dts and guesses the rest, and FFmpeg's muxer refuses the mix
    (EINVAL, non-monotonic dts). NUT keeps no dts anyway (its demuxer rebuilds them) and a
    decoder works in packet order, so any such dts will do: the sorted pts, moved back by the
    largest reorder delay. Packets without pts are left to the muxer.
    """
    timed = [p for p in packets if p.pts is not None]
    if len(timed) != len(packets):
        return
    order = sorted(p.pts for p in timed)
    delay = max(s - p.pts for s, p in zip(order, timed))
    for s, p in zip(order, timed):
        p.dts = s - delay


def segment_frames(info: VideoInfo, segment: Segment, deinterlace: str = "auto",
                   source: Remuxed | None = None) -> Iterator[Frame]:
    """Decode exactly the frames of `segment`, at their input pts, starting from its keyframe.

    The whole-file decoder's own loop (`decode.read_frames`) over the window
    `[start_pts, end_pts)`: the same damage messages, frames without pts placed the same way.
    `source` is the segment's packets as `segment_payload` remuxed them, for a node that cannot
    read the input.
    """
    return read_frames(info, "fail", None, deinterlace, window=(segment.start_pts, segment.end_pts), source=source)


def segment_format(plan: OutputPlan) -> str:
    """The container of a segment file: NUT, except for VP8/VP9 with alpha.

    libvpx codes the alpha plane as a second stream that travels as Matroska BlockAdditional
    side data on each packet, which only Matroska stores: in NUT it is dropped silently and the
    joined WebM plays opaque. Matroska's 1 ms clock is no loss there: VP8/VP9 alpha ends in
    WebM or Matroska output, whose muxer rounds to 1 ms anyway.
    """
    return "matroska" if vpx_alpha(plan.encoding) else SEGMENT_FORMAT


def segment_path(folder: Path, index: int) -> Path:
    """Where segment `index` is written in a work folder: `seg-00003.nut`."""
    return Path(folder) / f"seg-{index:05d}{SEGMENT_SUFFIX}"


def encode_segment(recipe: SegmentRecipe, segment: Segment, upscale: Callable[[list[tuple]], list[tuple]],
                   dest: Path, on_progress: Callable[[Progress], None] | None = None,
                   source: Remuxed | None = None, times: StageTimes | None = None) -> EncodedSegment:
    """Decode, upscale and encode one segment into the NUT file `dest`, durably; returns what was written.

    `upscale(list of plane tuples) -> list of plane tuples` runs the model, e.g.
    `lambda b: upscale_planes(b, model, src, dst)` (see `upscaler_for`). The file is written
    as `dest.part`, fsynced, then renamed onto `dest` (and the folder fsynced), so `dest`
    exists only complete. It holds the video only, encoded exactly as the final output's;
    the encoder starts afresh, so the segment begins with an IDR frame and references nothing
    outside itself (x264's default closed GOP). `source`: the segment's packets from
    `segment_payload`, decoded instead of the input file (a node that cannot read it). `times`
    gets the seconds spent decoding, upscaling and encoding (`engine.StageTimes`).
    """
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".part")
    # The intermediate gets the final encoding but no carried streams and no container options.
    plan = dataclasses.replace(recipe.plan, container=segment_format(recipe.plan), streams=())
    writer = VideoWriter(tmp, recipe.info, plan, carry=False)
    first: list[int] = []
    if recipe.temporal:
        upscale = _with_temporal(recipe, upscale)
    try:
        def write(frame: Frame) -> None:
            if not first:
                first.append(frame.pts)
            writer.write(frame.planes, frame.pts)

        frames = run_stages(segment_frames(recipe.info, segment, recipe.deinterlace, source), upscale, write,
                            batch=recipe.batch, on_progress=on_progress, times=times)
        flushed = time.perf_counter()
        writer.finish()
        if times is not None:  # the encoder's delayed frames are encoded here (x264's lookahead)
            times.encode += time.perf_counter() - flushed
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if frames == 0:
        tmp.unlink(missing_ok=True)
        raise HatstreamError(f"{recipe.info.path.name}: segment {segment.index} has no frames")
    digest, size = file_sha256(tmp), tmp.stat().st_size
    durable_replace(tmp, dest)
    log.debug("segment %d: %d frames, %d bytes -> %s", segment.index, frames, size, dest)
    return EncodedSegment(segment.index, dest, frames, first[0], size, digest)


def _with_temporal(recipe: SegmentRecipe, upscale: Callable[[list[tuple]], list[tuple]]
                   ) -> Callable[[list[tuple]], list[tuple]]:
    """`upscale` followed by a temporal filter that starts afresh with this segment.

    A segment is decoded from its own keyframe, and so never sees the previous segment's last
    output: resetting at every segment start keeps a segment's output a function of its own
    frames only, whichever process or node encodes it, and a resumed run frame-exact.
    """
    from hatstream.pipeline.stage import FrameFormat, temporal_filter

    steady = temporal_filter(FrameFormat(recipe.plan.encoding.layout, recipe.plan.encoding.colour),
                             max(1, recipe.plan.width // recipe.info.width))
    return lambda batch: [steady(planes) for planes in upscale(batch)]


def upscaler_for(recipe: SegmentRecipe, model, clipped=None) -> Callable[[list[tuple]], list[tuple]]:
    """The `upscale` callable for `encode_segment`: `upscale_planes` with the recipe's formats,
    counting into `clipped` (a `stage.ClipCounter`) what the output's range cannot hold."""
    from hatstream.pipeline.stage import FrameFormat, upscale_planes

    src = FrameFormat(recipe.info.layout, recipe.info.colour)
    dst = FrameFormat(recipe.plan.encoding.layout, recipe.plan.encoding.colour)
    return lambda batch: upscale_planes(batch, model, src, dst, clipped=clipped)


def count_packets(path: Path) -> int:
    """Video packets in a segment file (one per frame), read without decoding; -1 if it cannot be read."""
    try:
        with open_input(path) as container:
            return sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    except (HatstreamError, av.error.FFmpegError, IndexError):
        return -1


def _rebase(value: int | None, src: Fraction, dst: Fraction) -> int | None:
    # NUT's time base divides the input's, so this is exact; round() only guards the type.
    return None if value is None else round(Fraction(value) * src / dst)


def _rescale_near(value: int, src: Fraction, dst: Fraction) -> int:
    # av_rescale_q's rounding as PyAV's mux applies it: to nearest, halves away from zero.
    out = Fraction(value) * src / dst
    return math.floor(out + Fraction(1, 2)) if out >= 0 else -math.floor(-out + Fraction(1, 2))


def _fill_dts(packets: list[av.Packet], after: int | None) -> None:
    """Give the first packets of a segment the dts the encoder gave them, which NUT did not keep.

    NUT (like Matroska) stores only pts. The demuxer rebuilds dts as the pts sorted into
    decode order, delayed by the reorder depth d, so the first d packets of a B-frame segment
    come back without one. x264/x265 gave them `D[j] - (D[d] - D[0])`, with D the sorted pts
    (the dts the demuxer does give: D[j] is the dts of packet d + j); that is rebuilt here, so
    an MP4 gets the same negative start (edit list) as from an uninterrupted run. For CFR
    these dts continue the previous segment's exactly. With variable frame rate they could
    reach back to the previous segment's last dts, which muxers refuse, so each is raised to
    at least one tick past it; that stays below its pts, which is past the previous segment.
    """
    missing = 0
    while missing < len(packets) and packets[missing].dts is None:
        missing += 1
    known = [p.dts for p in packets[missing:] if p.dts is not None]
    if len(known) <= missing:  # a tiny segment: fall back on the sorted pts themselves
        known = sorted(p.pts for p in packets)
    delay = known[min(missing, len(known) - 1)] - known[0]
    for j in range(missing):
        dts = known[j] - delay if j < len(known) else packets[j].pts
        if after is not None:
            dts = max(dts, after + 1)
        packets[j].dts = min(dts, packets[j].pts)
        after = packets[j].dts


def encoder_duration(info: VideoInfo) -> int:
    """The duration libavcodec gives each packet of the final encoding, in the input's time base.

    Frames reach the encoder without a duration, so FFmpeg's encode layer gives each one frame
    interval of the stream's rate (`av_rescale_q(1, 1/framerate, time_base)`, rounded to
    nearest, halves away from zero), and the packet carries it. NUT keeps no packet durations,
    so the remuxed packets get that value again: the same block durations and stream duration
    as an uninterrupted run. Without a known rate PyAV's `add_stream` sets 24 fps, and so here.
    """
    rate = info.average_rate or Fraction(24)
    return math.floor(1 / (rate * info.time_base) + Fraction(1, 2))


def _segment_packets(segment: EncodedSegment, time_base: Fraction, after: int | None,
                     duration: int) -> Iterator[av.Packet]:
    """The packets of one segment file in decode order, at their input pts, with every dts set.

    NUT cannot store negative timestamps, so FFmpeg's muxer (avoid_negative_ts=auto) shifted
    the whole file forward when the encoder's first dts was negative (x264 with B-frames starts
    it before the first pts). The shift is undone from the first packet, the keyframe that a
    fresh encoder emits first, whose pts is the segment's first frame's.
    """
    shift = None
    with open_input(segment.path) as container:
        stream = container.streams.video[0]
        head: list[av.Packet] = []
        filled = False
        for packet in container.demux(stream):
            if not packet.size:
                continue
            src = Fraction(packet.time_base)
            pts, dts = _rebase(packet.pts, src, time_base), _rebase(packet.dts, src, time_base)
            if shift is None:
                # The first frame's pts as this file's clock holds it: exactly in NUT; in a
                # Matroska segment (VP8/VP9 alpha, `segment_format`) rounded to 1 ms as the
                # muxer rounded it, so that rounding is not mistaken for a shift.
                shift = pts - _rebase(_rescale_near(segment.first_pts, time_base, src), src, time_base)
            packet.pts = pts - shift
            packet.dts = dts - shift if dts is not None else None
            packet.duration = duration or _rebase(packet.duration, src, time_base) or 0
            packet.time_base = time_base
            if filled:
                yield packet
                continue
            head.append(packet)
            # Enough known dts past the missing ones to rebuild them (see _fill_dts).
            missing = next((i for i, p in enumerate(head) if p.dts is not None), len(head))
            if len(head) - missing > missing:
                _fill_dts(head, after)
                filled = True
                yield from head
        if not filled and head:
            _fill_dts(head, after)
            yield from head


def assemble(recipe: SegmentRecipe, segments: Sequence[EncodedSegment], output: Path) -> int:
    """Concatenate segment files, in order, into `output` with the carried streams; returns frames.

    No video is re-encoded: packets are remuxed with their own pts (nothing is rebased or
    shifted), while audio, subtitles, chapters and metadata come from the input exactly as in
    a whole-file run (`VideoWriter` and its `Carrier`). `output` should be a temporary path
    (see `hatstream.atomic`). Refuses segments whose codec headers differ (they could not be
    decoded as one stream) and joins where timestamps overlap or dts go backwards.
    """
    if not segments:
        raise ValueError("no segments to assemble")
    tb, duration = recipe.info.time_base, encoder_duration(recipe.info)
    with open_input(segments[0].path) as first:
        template = first.streams.video[0]
        extradata = bytes(template.codec_context.extradata or b"")
        writer = VideoWriter(output, recipe.info, recipe.plan, encoded=template)
    try:
        last_pts = last_dts = None
        for segment in segments:
            seg_max = None
            for n, packet in enumerate(_segment_packets(segment, tb, last_dts, duration)):
                if n == 0:
                    _check_join(segment.path, packet, extradata, last_pts)
                if last_dts is not None and packet.dts <= last_dts:
                    raise HatstreamError(f"{segment.path.name}: video dts go backwards at "
                                         f"{seconds(packet.dts, tb):.3f}s")
                last_dts = packet.dts
                seg_max = packet.pts if seg_max is None else max(seg_max, packet.pts)
                writer.write_packet(packet)
            last_pts = seg_max if seg_max is not None else last_pts
        writer.finish()
    finally:
        writer.close()
    return writer.frames


def _check_join(path: Path, packet: av.Packet, extradata: bytes, last_pts: int | None) -> None:
    """The first packet of a segment: a keyframe past the previous segment, same codec headers."""
    with open_input(path) as container:
        if bytes(container.streams.video[0].codec_context.extradata or b"") != extradata:
            raise HatstreamError(f"{Path(path).name}: its codec headers differ from the first segment's; "
                                 "segments encoded with different settings cannot be joined")
    if not packet.is_keyframe:
        raise HatstreamError(f"{Path(path).name} does not start with a keyframe")
    if last_pts is not None and packet.pts <= last_pts:
        raise HatstreamError(f"{Path(path).name} overlaps the segment before it")
