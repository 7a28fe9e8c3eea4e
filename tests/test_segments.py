"""Segments decoded alone, from the input or from the packets a farm worker receives, are the whole-file
decode cut at their bounds: same frames, same pts. And the one segment runner keeps a segment once."""

from __future__ import annotations

from fractions import Fraction

import pytest
from mediagen import Clip, dump_packets, make_video, read_planes
from test_media_complete import _stream_copy_cut

from hatstream.media.decode import read_frames
from hatstream.media.probe import probe
from hatstream.pipeline.segments import plan_segments, segment_frames, segment_payload

X264 = dict(rate=Fraction(10), codec="libx264")


def _frames(frames):
    return [(f.pts, f.planes) for f in frames]


def _same(a, b) -> bool:
    return [p for p, _ in a] == [p for p, _ in b] and all(
        all((x == y).all() for x, y in zip(pa, pb)) for (_, pa), (_, pb) in zip(a, b))


@pytest.mark.parametrize("name, clip", [
    ("bframes.mkv", Clip(frames=40, options={"g": "5", "bf": "2"}, **X264)),
    ("bframes.mp4", Clip(frames=40, options={"g": "5", "bf": "2"}, **X264)),
    # Leading pictures of an open GOP come after the next segment's keyframe in decode order.
    ("opengop.mkv", Clip(frames=40, options={"g": "7", "bf": "3", "x264-params": "open-gop=1"}, **X264)),
])
def test_segments_alone_and_remuxed_decode_as_the_whole_file(tmp_path, name, clip):
    info = probe(make_video(tmp_path / name, clip))
    segments = plan_segments(info, 0.5)
    assert len(segments) > 3
    whole = _frames(read_frames(info))
    alone, remuxed = [], []
    for segment in segments:
        alone += _frames(segment_frames(info, segment))
        remuxed += _frames(segment_frames(info, segment, source=segment_payload(info, segment)))
    assert len(whole) == 40 and _same(alone, whole) and _same(remuxed, whole)


def test_remuxed_first_segment_hides_the_pre_roll_an_edit_list_hides(tmp_path):
    # A stream-copy cut keeps the frames from the keyframe before the cut, flagged discard; NUT has
    # no such flag, so the payload says which frames the input's decoder never shows.
    src = make_video(tmp_path / "src.mp4", Clip(frames=60, options={"g": "10", "bf": "2"}, **X264))
    info = probe(_stream_copy_cut(src, tmp_path / "cut.mp4", Fraction(3, 2)))
    segments = plan_segments(info, 0.5)
    payload = segment_payload(info, segments[0])
    assert payload.hidden
    remuxed = []
    for segment in segments:
        remuxed += _frames(segment_frames(info, segment, source=segment_payload(info, segment)))
    assert _same(remuxed, _frames(read_frames(info)))


def test_a_segment_that_comes_back_twice_is_kept_once(tmp_path):
    from hatstream.inference import load_model
    from hatstream.media.encode import EncodeSettings
    from hatstream.media.writer import plan_output
    from hatstream.pipeline.resume import InProcess, run_resumable
    from hatstream.pipeline.segments import SegmentRecipe, upscaler_for

    class Twice(InProcess):
        """Delivers every segment twice, as a retried task whose first try finished after all."""

        def encode(self, job, segments, folder, on_progress):
            for result in super().encode(job, segments, folder, on_progress):
                yield result
                yield result

    src = make_video(tmp_path / "clip.mkv", Clip(frames=20, options={"g": "5"}, **X264))
    info = probe(src)
    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    segments = plan_segments(info, 0.5)
    ref, out = tmp_path / "once.mkv", tmp_path / "twice.mkv"
    for executor, path in ((InProcess, ref), (Twice, out)):
        job = SegmentRecipe(info, plan_output(info, path, 2, EncodeSettings(codec="ffv1")))
        done = run_resumable(job, segments, executor(upscaler_for(job, model)), path, settings=())
        assert done.frames == done.processed == 20 and done.segments == len(segments) == 4
    assert all(all((x == y).all() for x, y in zip(a, b)) for a, b in zip(read_planes(out), read_planes(ref)))
    assert len(read_planes(out)) == 20


def test_parallel_segments_give_the_serial_output(tmp_path):
    import threading

    from hatstream.inference import load_model
    from hatstream.media.encode import EncodeSettings
    from hatstream.media.writer import plan_output
    from hatstream.pipeline.resume import InProcess, Parallel, run_resumable
    from hatstream.pipeline.segments import SegmentRecipe, plan_segments, upscaler_for

    src = make_video(tmp_path / "clip.mkv", Clip(frames=30, options={"g": "5"}, **X264))
    info = probe(src)
    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    segments = plan_segments(info, 0.4)
    # Each pool thread's first batch waits for the other's: a pool that ran one segment at a time
    # would break the barrier (after its timeout) and fail the run.
    meet, first = threading.Barrier(2, timeout=60), set()

    def together(upscale):
        def call(batch):
            if threading.get_ident() not in first:
                first.add(threading.get_ident())
                meet.wait()
            return upscale(batch)
        return call

    ref, out = tmp_path / "serial.mkv", tmp_path / "parallel.mkv"
    for path in (ref, out):
        job = SegmentRecipe(info, plan_output(info, path, 2, EncodeSettings(codec="libx264")))
        executor = (InProcess(upscaler_for(job, model)) if path == ref
                    else Parallel(together(upscaler_for(job, model)), workers=2))
        done = run_resumable(job, segments, executor, path, settings=())
        assert done.frames == done.processed == 30 and done.segments == len(segments) > 2
    assert len(first) == 2
    assert dump_packets(out) == dump_packets(ref)  # every packet, bytes and timing
    assert len(read_planes(out)) == 30


def test_encoder_threads_follow_the_machine_and_the_device():
    from hatstream.media.probe import encoder_threads, ffmpeg_threads

    # A CPU run leaves the cores to the model; a GPU run gives them to the encoder, shared per GPU.
    assert encoder_threads(True, cores=16) == 4 and encoder_threads(True, cores=2) == 1
    assert encoder_threads(True) == ffmpeg_threads()
    assert encoder_threads(False, cores=16) == 14 and encoder_threads(False, cores=64, streams=8) == 7
    assert encoder_threads(False, cores=2) == 1 and encoder_threads(False, cores=256) == 64
