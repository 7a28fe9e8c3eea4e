"""Single frames by timestamp: seek to the keyframe before, then decode forward to the exact frame.

`read_frames` decodes a whole file from its start; a preview wants a handful of frames from a
two-hour film. A seek costs one GOP of decoding per frame, however long the file.

The frame "at" a time T is the one on screen at T: the last frame whose pts is at or before T
(T counted from the video's first frame, as a player's clock shows it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import av
import numpy as np

from hatstream.errors import HatstreamError
from hatstream.media.decode import frame_to_planes
from hatstream.media.deinterlace import DeinterlacePlan, Deinterlacer
from hatstream.media.probe import VideoInfo, configure_decoder, open_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeekFrame:
    """A frame found by `frames_at`: the time asked for, its own pts and time, and its planes."""

    asked: float
    pts: int
    time: float
    planes: tuple[np.ndarray, ...]


def video_length(info: VideoInfo) -> float:
    """Seconds of video from the first frame to the end (duration, else frames / rate); 0 if unknown."""
    if info.duration:
        return info.duration
    if info.frames and info.average_rate:
        return info.frames / float(info.average_rate)
    return 0.0


def spread_times(info: VideoInfo, count: int) -> list[float]:
    """`count` times spread evenly over the video, each in the middle of its share (never the black
    first frame of a fade-in, never past the last frame)."""
    length = video_length(info)
    return [length * (i + 0.5) / count for i in range(count)]


def _decode_to(container, stream, info: VideoInfo, target: int, seek: bool, decode=None):
    """The last decoded frame with pts <= target, decoding from the keyframe before `target`.

    Returns (pts, frame, before, after) with the frames decoded just before and after it (None at
    the ends), which a deinterlacer needs to rebuild the frame as `run` would; None when a seek
    landed past the target.
    """
    if seek:
        # backward=True lands on the keyframe at or before the target (FFmpeg's AVSEEK_FLAG_BACKWARD);
        # any_frame=False because decoding must start at a keyframe to give correct pictures.
        container.seek(target, stream=stream, backward=True, any_frame=False)
    best = None
    before = None
    for packet in container.demux(stream):
        try:
            decoded = decode(packet) if decode is not None else packet.decode()
        except av.error.FFmpegError as exc:
            where = float((packet.pts or 0) * info.time_base) - info.start_time
            raise HatstreamError(f"{info.path.name}: damaged video packet at {where:.3f}s "
                                 f"({exc.strerror or exc})") from None
        for frame in decoded:
            # Frames without a pts (raw AVI) cannot be placed by time; the best effort is their dts.
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None:
                continue
            if pts <= target:
                before = best[1] if best is not None else None
                best = (pts, frame)
            elif best is not None:
                return (*best, before, frame)
            elif seek:
                # The seek landed after the target (some demuxers index keyframes loosely):
                # start again from the very beginning, which is always before it.
                return None
            else:
                return pts, frame, None, None  # the target lies before the first frame: that one shows
    return None if best is None else (*best, before, None)


def _deinterlaced(plan: DeinterlacePlan, time_base, pts: int, frames: list) -> av.VideoFrame | None:
    """The frame at `pts` after bwdif, fed with its neighbours as `run`'s decode loop feeds it."""
    deinterlacer = Deinterlacer(plan, time_base)
    out = []
    for frame in frames:
        out += deinterlacer.feed(frame)
    out += deinterlacer.flush()
    return next((f for f in out if f.pts == pts), None)


def _decode_from_start(info: VideoInfo, target: int):
    """`_decode_to` on a freshly opened input, decoding from its first packet.

    A seek back to the start is not enough everywhere: MPEG program streams seek by a byte
    position guess and can land past the first keyframe even when asked for the first pts, and
    then nothing decodes at all. A new demuxer always starts at the first packet.
    """
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        decode = configure_decoder(stream)
        return _decode_to(container, stream, info, target, seek=False, decode=decode)


def frames_at(info: VideoInfo, times: list[float], deinterlace: DeinterlacePlan | None = None) -> list[SeekFrame]:
    """The frames on screen at each of `times` (seconds from the first frame), in the order asked.

    With `deinterlace`, each frame is deinterlaced as `run` does it (bwdif, from its neighbours).

    Raises HatstreamError for a time outside the video or a frame that cannot be decoded.
    """
    length = video_length(info)
    for t in times:
        if not (t >= 0) or math.isinf(t) or (length and t >= length):
            raise HatstreamError(f"{info.path.name}: no frame at {t:g}s (the video is {length:.3f}s long)")
    out = []
    with open_input(info.path) as container:
        stream = container.streams[info.stream_index]
        decode = configure_decoder(stream)
        tb = info.time_base
        start_pts = stream.start_time if stream.start_time is not None else 0
        for t in times:
            target = start_pts + math.floor(t / tb + 1e-6)  # the epsilon keeps 0.04s/(1/25) from flooring to 0
            found = _decode_to(container, stream, info, target, seek=True, decode=decode)
            if found is None:
                found = _decode_from_start(info, target)
            if found is None:
                raise HatstreamError(f"{info.path.name}: no decodable frame at {t:g}s")
            pts, frame, before, after = found
            if deinterlace is not None:
                neighbours = [f for f in (before, frame, after) if f is not None]
                frame = _deinterlaced(deinterlace, info.time_base, pts, neighbours) or frame
            out.append(SeekFrame(t, pts, float((pts - start_pts) * tb), frame_to_planes(frame, info.layout)))
            log.debug("frame at %.3fs: pts %d (%.3fs)", t, pts, out[-1].time)
    return out
