"""Old-style media made with PyAV for the real-world-media tests: DVD-like MPEG-2 program streams
(interlaced, anamorphic, MP2/AC-3), MPEG-1 elementary streams, DivX-era AVIs with B-frames and
old audio codecs, MJPEG 4:2:2 in MOV, raw H.264.

Interlaced pictures are built the way a camera makes them: the top field's lines are sampled
at time t and the bottom field's half a frame interval later, so anything moving combs.
`combing` measures that comb.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np

NTSC = Fraction(30000, 1001)


def scene(t: float, width: int, height: int) -> np.ndarray:
    """RGB picture at time `t` (in frames): soft vertical bars sliding right, over a still gradient."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    bars = 0.5 + 0.5 * np.sin(2 * np.pi * (x - 6.0 * t) / 24.0)
    base = 40 + 0.6 * y * 160 / height
    r = np.clip(base + 150 * bars, 0, 255)
    g = np.clip(base + 100 * (1 - bars), 0, 255)
    b = np.clip(60 + 0.5 * x * 160 / width, 0, 255)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def interlaced_picture(i: int, width: int, height: int, tff: bool = True) -> np.ndarray:
    """Frame `i` as an interlaced camera makes it: the first field at t=i, the second at i+0.5."""
    first, second = scene(i, width, height), scene(i + 0.5, width, height)
    out = first.copy()
    rows = slice(1, None, 2) if tff else slice(0, None, 2)  # the later field's lines
    out[rows] = second[rows]
    return out


def combing(luma: np.ndarray) -> float:
    """Mean energy of the vertical 1-2-1 high-pass (y-1, y, y+1): large where alternate lines differ."""
    y = luma.astype(np.float64)
    hp = y[:-2] - 2 * y[1:-1] + y[2:]
    return float(np.mean(hp ** 2))


def _tone(stream, seconds: float) -> None:
    """Feed `seconds` of a 440 Hz tone into an audio stream's encoder (muxing is the caller's)."""
    cc = stream.codec_context
    rate, layout = cc.sample_rate, cc.layout.name
    channels = cc.layout.nb_channels
    total = int(seconds * rate)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(total) / rate)).astype(np.float32)
    resampler = av.AudioResampler(format=cc.format.name, layout=layout, rate=rate, frame_size=cc.frame_size or 1024)
    packets = []
    for start in range(0, total, 1024):
        chunk = np.tile(wave[start:start + 1024], (channels, 1))
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for f in resampler.resample(frame):
            packets += stream.encode(f)
    for f in resampler.resample(None):
        packets += stream.encode(f)
    packets += stream.encode(None)
    return packets


def _yuv(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt, threads=1)


def write(path: Path, codec: str, frames: int, width: int, height: int, *, fmt: str | None = None,
          rate: Fraction = Fraction(25), pix_fmt: str = "yuv420p", audio: tuple[str, ...] = (),
          picture=None, sar: Fraction | None = None, tff: bool | None = None, bframes: int | None = None,
          options: dict | None = None, audio_rate: int = 48000) -> Path:
    """Write a clip: `picture(i, w, h)` -> RGB (default: the moving scene); `tff` marks the frames
    interlaced (True top field first, False bottom first) and codes them as such (MPEG-2)."""
    picture = picture or (lambda i, w, h: scene(i, w, h))
    path = Path(path)
    out = av.open(str(path), "w", format=fmt)
    v = out.add_stream(codec, rate=rate)
    v.width, v.height, v.pix_fmt = width, height, pix_fmt
    cc = v.codec_context
    if sar:
        cc.sample_aspect_ratio = sar
    if bframes is not None:
        cc.max_b_frames = bframes
    if tff is not None:
        cc.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
    v.options = dict(options or {})
    tracks = []
    for name in audio:
        a = out.add_stream(name, rate=audio_rate)
        a.layout = "mono" if name == "pcm_u8" else "stereo"
        tracks.append(a)
    graph = None
    if tff is not None:
        # PyAV cannot set a frame's interlace flags; FFmpeg's setfield filter can, and the
        # MPEG-2 encoder writes them into each picture header.
        graph = av.filter.Graph()
        src = graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=1 / Fraction(rate))
        field = graph.add("setfield", "tff" if tff else "bff")
        sink = graph.add("buffersink")
        src.link_to(field)
        field.link_to(sink)
        graph.configure()
    video = []
    for i in range(frames):
        frame = _yuv(picture(i, width, height), pix_fmt)
        frame.pts, frame.time_base = i, 1 / Fraction(rate)
        if graph is not None:
            graph.push(frame)
            frame = graph.pull()
        video += v.encode(frame)
    video += v.encode(None)
    audio_packets = [p for a in tracks for p in _tone(a, frames / float(rate))]
    # Interleave by time so every muxer (AVI, MPEG-PS) takes them.
    for p in sorted(video + audio_packets, key=lambda p: float((p.dts if p.dts is not None else 0) * p.time_base)):
        out.mux(p)
    out.close()
    return path


def program_stream(path: Path, frames: int = 6, width: int = 720, height: int = 480,
                   audio: tuple[str, ...] = ("mp2", "ac3")) -> Path:
    """A DVD-like MPEG-2 program stream: 29.97 fps, interlaced TFF, with MP2/AC-3 audio.

    MPEG-2 stores a display aspect (4:3), not a SAR: at 720x480 that is SAR 8:9, as on a DVD.
    """
    return write(path, "mpeg2video", frames, width, height, fmt="dvd", rate=NTSC, audio=audio, sar=Fraction(8, 9),
                 tff=True, bframes=2, picture=interlaced_picture, options={"b": "4000000"})


def packets(path: Path, kind: str) -> dict[int, list[bytes]]:
    """Per stream index of `kind`: the bytes of every non-empty packet."""
    result: dict[int, list[bytes]] = {}
    with av.open(str(path)) as c:
        for p in c.demux([s for s in c.streams if s.type == kind]):
            if p.size:
                result.setdefault(p.stream.index, []).append(bytes(p))
    return result


def codecs(path: Path, kind: str) -> list[str]:
    """The codec names of the streams of `kind`, in order."""
    with av.open(str(path)) as c:
        return [s.codec_context.name for s in c.streams if s.type == kind]


def decoded(path: Path) -> tuple[list[Fraction], list[av.VideoFrame], dict]:
    """(frame times, frames, stream facts) of the first video stream, decoded as a player does."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        facts = {"width": v.codec_context.width, "height": v.codec_context.height,
                 "sar": v.sample_aspect_ratio, "pix_fmt": frames[0].format.name, "codec": v.codec_context.name,
                 "profile": v.codec_context.profile}
        times = [Fraction(f.pts) * Fraction(v.time_base) if f.pts is not None else None for f in frames]
    return times, frames, facts


def flat(i: int, width: int, height: int) -> np.ndarray:
    """A flat grey whose level tells the frame's index (20 + 15 i), for checking frame order."""
    return np.full((height, width, 3), 20 + 15 * i, np.uint8)


# DivX 5 marks a packed bitstream with this user data ("p" at the end); FFmpeg's MPEG-4 decoder
# unpacks only when it sees it. An N-VOP is a P-VOP header with vop_coded = 0: "01" P type, "0"
# modulo_time_base, marker, 5 bits of time increment (FFmpeg writes resolution 25: 5 bits),
# marker, vop_coded 0, then the "0111.." stuffing to the byte boundary.
_DIVX_USER_DATA = b"\x00\x00\x01\xb2DivX503b1393p"
_N_VOP = b"\x00\x00\x01\xb6\x50\x4f"


def packed_divx_avi(path: Path, frames: int = 12, width: int = 64, height: int = 48, picture=flat) -> Path:
    """An AVI in DivX's packed B-frame layout, at 25 fps.

    AVI has one chunk per frame slot and no reordering, so DivX packs each B-frame into the
    chunk of the P-frame it precedes and writes a placeholder N-VOP in the next slot:
    I0 [P2 B1] N [P4 B3] N ... Decoders unpack that and return one frame per chunk.
    """
    enc = av.CodecContext.create("mpeg4", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base, enc.framerate, enc.max_b_frames, enc.gop_size = Fraction(1, 25), 25, 1, 12
    coded = _encode_all(enc, frames, width, height, picture)
    chunks, keys, newest = [], [], -1
    for n, packet in enumerate(coded):
        data = bytes(packet)
        if n == 0:
            at = data.index(b"\x00\x00\x01\xb6")
            data = data[:at] + _DIVX_USER_DATA + data[at:]
        if packet.pts < newest:  # a B-frame: into the P-frame's chunk, and a placeholder after it
            chunks[-1] += data
            chunks.append(_N_VOP)
            keys.append(False)
        else:
            chunks.append(data)
            keys.append(packet.is_keyframe)
            newest = packet.pts
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        for i, (data, key) in enumerate(zip(chunks, keys)):
            packet = av.Packet(data)
            packet.pts = packet.dts = i
            packet.time_base, packet.stream, packet.is_keyframe = Fraction(1, 25), v, key
            out.mux(packet)
    return Path(path)


def _encode_all(encoder, frames: int, width: int, height: int, picture) -> list:
    """Every packet of `frames` yuv420p pictures (pts 0, 1, ...) from `encoder`, flushed."""
    coded = []
    for i in range(frames):
        frame = _yuv(picture(i, width, height), "yuv420p")
        frame.pts = i
        coded += encoder.encode(frame)
    return coded + list(encoder.encode(None))


def mp4_without_ctts(path: Path, frames: int = 12, width: int = 64, height: int = 48, picture=flat) -> Path:
    """H.264 with B-frames in an MP4 that stores decode times only (no ctts box: pts == dts).

    Muxers fed from a raw stream write files like this; the frames leave the decoder in order
    but carry the decode times of the packets, out of order.
    """
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"bframes": "2", "b-adapt": "0"}
        coded = _encode_all(v, frames, width, height, picture)
        first = coded[0].dts
        for packet in coded:
            packet.pts = packet.dts = packet.dts - first
            out.mux(packet)
    return Path(path)
