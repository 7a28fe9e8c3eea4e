"""The Ray engine on a real local Ray instance with CPU actors: same output as the local engine, through
faults, with no Ray process left behind.

Every Ray process started here inherits a marker in its environment, so the "nothing left" check
finds exactly this test's processes, whatever else runs Ray on the machine.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from hatstream.media.decode import Frame
from hatstream.models.hat import HAT
from hatstream.pipeline.collector import OrderedCollector
from hatstream.errors import HatstreamError
from hatstream.media.encode import EncodeSettings
from hatstream.media.probe import probe
from hatstream.pipeline.ray_engine import WORKER_NAME, WorkerPool, _batch_task, _stream
from hatstream.pipeline.run import RunConfig, run_file
from mediagen import Clip, frame_times, make_video, read_planes, run_cli

pytestmark = pytest.mark.slow  # real Ray clusters: `make test-quick` leaves these out
MARK = "HATSTREAM_RAY_TEST"
LOSSLESS = EncodeSettings(codec="ffv1")
# Every node here is on loopback: left to itself Ray takes this machine's interface address as the
# node address, and its processes would talk to each other through it.
LOOPBACK = "127.0.0.1"


def _node_addresses() -> set[str]:
    return {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}


def _ray_processes(tag: str) -> list[int]:
    """Pids (other than this one) whose environment carries this test's marker."""
    found = []
    needle = f"{MARK}={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _assert_no_ray_left(tag: str) -> None:
    # Ray stops its processes asynchronously; on a loaded machine that can take a while.
    deadline = time.monotonic() + 60
    while (left := _ray_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for pid in left:
        try:
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            pass
    assert not names, f"Ray processes left running: {names}"


@pytest.fixture
def marker(monkeypatch):
    """A fresh marker in this process's environment (and so in every Ray process it starts)."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARK, tag)
    yield tag
    _assert_no_ray_left(tag)


@pytest.fixture
def local_ray(marker):
    """A small Ray instance in this process: 3 logical CPUs, no dashboard, on loopback; shut down afterwards."""
    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False,
             _node_ip_address=LOOPBACK)
    try:
        assert _node_addresses() == {LOOPBACK}
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("ray") / "clip.mkv", Clip(frames=16))


@pytest.fixture(scope="module")
def tiny_hat(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = HAT(upscale=2, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    path = tmp_path_factory.mktemp("ray") / "tiny-hat.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    return path


def _run(clip: Path, out: Path, model: str, **kwargs) -> list:
    run_file(RunConfig(input=clip, output=out, model=model, encode=LOSSLESS, **kwargs))
    return read_planes(out)


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert all(np.array_equal(p, q) for p, q in zip(x, y)), f"frame {i} differs"


def test_collector_orders_and_drops_duplicates():
    c: OrderedCollector[str] = OrderedCollector()
    assert c.add(1, "b") and c.add(2, "c")
    assert list(c.ready()) == [] and len(c) == 2
    assert c.add(0, "a") and list(c.ready()) == ["a", "b", "c"]
    assert not c.add(1, "b again") and c.add(3, "d")
    assert not c.add(3, "d twice") and c.duplicates == 2
    assert list(c.ready()) == ["d"] and c.next == 4


def test_cli_embedded_ray_two_cpu_actors_match_the_local_engine(clip, tmp_path, marker):
    local = _run(clip, tmp_path / "local.mkv", "bicubic", engine="local")
    res = run_cli(clip, "-o", tmp_path / "ray.mkv", "--model", "bicubic", "--codec", "ffv1",
                  "--engine", "ray", "--workers", "2", "--device", "cpu", "--json", timeout=240)
    assert res.returncode == 0, res.stderr
    assert '"event": "done"' in res.stdout
    _assert_same(read_planes(tmp_path / "ray.mkv"), local)


def test_tiny_hat_on_two_actors_matches_the_local_engine(clip, tiny_hat, tmp_path, local_ray):
    local = _run(clip, tmp_path / "local.mkv", str(tiny_hat), engine="local", batch=2)
    remote = _run(clip, tmp_path / "ray.mkv", str(tiny_hat), engine="ray", workers=2, device="cpu", batch=2)
    _assert_same(remote, local)


def test_killing_an_actor_mid_run_changes_nothing(clip, tiny_hat, tmp_path, local_ray, caplog):
    local = _run(clip, tmp_path / "local.mkv", str(tiny_hat), engine="local")
    killed = []

    def kill_worker_0(progress):
        if progress.frames == 2 and not killed:
            # The pid comes from the actor itself; SIGKILL, as a crash or the OOM killer would.
            pid = ray.get(ray.get_actor(WORKER_NAME.format(0)).describe.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    caplog.set_level(logging.WARNING, logger="hatstream.pipeline.ray_engine")
    run_file(RunConfig(input=clip, output=tmp_path / "ray.mkv", model=str(tiny_hat), encode=LOSSLESS,
                       engine="ray", workers=2, device="cpu"), on_progress=kill_worker_0)
    assert killed
    assert "running it again" in caplog.text   # the dead actor's batches were re-run
    _assert_same(read_planes(tmp_path / "ray.mkv"), local)


@ray.remote
class _Flaky:
    """A stand-in worker: `upscale` fails for frames with a bad value, succeeds otherwise."""

    def upscale(self, frames):
        if any(int(f[0][0, 0]) == 255 for f in frames):
            raise ValueError("this batch always fails")
        return [tuple(p * 2 for p in f) for f in frames]


def test_a_batch_that_keeps_failing_fails_the_run_clearly(local_ray):
    pool = WorkerPool([_Flaky.remote(), _Flaky.remote()], max_attempts=3)
    good = _batch_task(0, [Frame(0, 0, (np.ones((2, 2), np.uint8),))])
    bad = _batch_task(1, [Frame(1, 1, (np.full((2, 2), 255, np.uint8),))])
    pool.submit(good)
    pool.submit(bad)
    results = []
    with pytest.raises(HatstreamError, match=r"frames 1-1 failed 3 times .*this batch always fails"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results += pool.poll(timeout=0.5)
    assert [job.key for job, _ in results] == [0] and results[0][1][0][0][0, 0] == 2


@ray.remote
class _StuckOnFirst:
    """A stand-in worker that holds frame 0 for a while and doubles everything else at once."""

    def upscale(self, frames):
        if any(int(f[0][0, 0]) == 0 for f in frames):
            time.sleep(3)
        return [tuple(p * 2 for p in f) for f in frames], 0  # and no pixel clipped (`UpscaleWorker.upscale`)


def test_decoding_pauses_while_the_window_is_full_and_order_is_kept(local_ray):
    produced, written = [], []

    def frames():
        for i in range(200):
            produced.append(i)
            yield Frame(i, i, (np.full((2, 2), i % 100, np.uint8),))

    actors = [_StuckOnFirst.remote(), _StuckOnFirst.remote()]
    ray.get([a.__ray_ready__.remote() for a in actors])
    # Halfway through the 3 s that frame 0 is held: how far has decoding gone?
    ahead = []
    timer = threading.Timer(1.5, lambda: ahead.append(len(produced)))
    timer.start()
    pool = WorkerPool(actors, in_flight=2)
    assert _stream(frames(), pool, written.append, batch=2, window=8, total=200, exact=True, on_progress=None) == 200
    timer.join()
    assert [f.index for f in written] == list(range(200))
    assert all(f.planes[0][0, 0] == 2 * (f.index % 100) for f in written)
    # The window (8) and at most one batch over it: never the whole video.
    assert 8 <= ahead[0] <= 8 + 2


# ---- segment mode on a 2-node cluster on this machine -----------------------------------------

@pytest.fixture
def two_nodes(marker):
    """A head without CPUs (the driver's) and two worker nodes of 2 CPUs each; all shut down afterwards."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": LOOPBACK})
    try:
        nodes = [cluster.add_node(num_cpus=2, node_ip_address=LOOPBACK) for _ in range(2)]
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False, _node_ip_address=LOOPBACK)
        assert cluster.address.startswith(LOOPBACK + ":") and _node_addresses() == {LOOPBACK}
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def keyframed_clip(tmp_path_factory) -> Path:
    """24 frames with a keyframe every 4 (0.16 s), so 0.15 s segments give 6 of them."""
    return make_video(tmp_path_factory.mktemp("ray") / "gop4.mkv", Clip(frames=24, options={"g": "4"}))


@pytest.fixture(scope="module")
def longer_segments_clip(tmp_path_factory) -> Path:
    """48 larger frames with a keyframe every 8 (0.32 s): 0.3 s segments give 6 that take a while each."""
    return make_video(tmp_path_factory.mktemp("ray") / "gop8.mkv",
                      Clip(frames=48, width=96, height=64, options={"g": "8"}))


def _run_segments(clip: Path, model: str, out: Path, address: str, seconds: float) -> int:
    """`hatstream run --engine ray --address ...` with `seconds`-long segments (6 of them), through `run_file`."""
    from hatstream.pipeline.segments import plan_segments

    assert len(plan_segments(probe(clip), seconds)) == 6
    return run_file(RunConfig(input=clip, output=out, model=model, encode=LOSSLESS, engine="ray", address=address,
                              workers=2, device="cpu", segment_seconds=seconds)).frames


def test_segment_mode_on_two_nodes_matches_the_local_engine(keyframed_clip, tmp_path, two_nodes):
    local = _run(keyframed_clip, tmp_path / "local.mkv", "bicubic", engine="local")
    cluster, _ = two_nodes
    assert _run_segments(keyframed_clip, "bicubic", tmp_path / "ray.mkv", cluster.address, 0.15) == 24
    assert not list(tmp_path.glob(".hatstream-segments-*"))
    _assert_same(read_planes(tmp_path / "ray.mkv"), local)
    assert frame_times(tmp_path / "ray.mkv") == frame_times(tmp_path / "local.mkv")


def test_removing_a_node_mid_run_changes_nothing(longer_segments_clip, tiny_hat, tmp_path, two_nodes, caplog):
    cluster, nodes = two_nodes
    clip = longer_segments_clip
    local = _run(clip, tmp_path / "local.mkv", str(tiny_hat), engine="local")
    removed, finished = [], threading.Event()

    def remove_worker_1_node_while_busy():
        # Ask worker 1 where it runs, then watch its heartbeat (answered from its own thread): once
        # it names a segment in hand, take its node away, as a lost machine would be. (Timing an
        # unanswered probe instead missed every segment on a fast CPU.)
        node_id = None
        while not finished.is_set() and not removed:
            try:
                actor = ray.get_actor(WORKER_NAME.format(1))
                if node_id is None:
                    node_id = ray.get(actor.describe.remote(), timeout=30)["node_id"]
                segment, _ = ray.get(actor.heartbeat.remote(), timeout=30)
            except (ValueError, ray.exceptions.GetTimeoutError):  # not started yet, or busy starting
                time.sleep(0.01)
                continue
            if segment >= 0:
                cluster.remove_node(next(n for n in nodes if n.node_id == node_id), allow_graceful=False)
                removed.append(node_id)
            else:
                time.sleep(0.005)

    remover = threading.Thread(target=remove_worker_1_node_while_busy)
    remover.start()
    caplog.set_level(logging.WARNING, logger="hatstream.pipeline.ray_engine")
    try:
        assert _run_segments(clip, str(tiny_hat), tmp_path / "ray.mkv", cluster.address, 0.3) == 48
    finally:
        finished.set()
        remover.join()
    assert removed and "running it again" in caplog.text   # the lost node's segment was re-run
    _assert_same(read_planes(tmp_path / "ray.mkv"), local)
    assert frame_times(tmp_path / "ray.mkv") == frame_times(tmp_path / "local.mkv")


# ---- segment mode: timeouts follow progress, input errors are not retried ------------------------

def _segment_job(clip: Path, out: Path):
    from hatstream.inference import load_model
    from hatstream.media.writer import plan_output
    from hatstream.pipeline.segments import Segment, SegmentRecipe

    model = load_model("bicubic", device="cpu", precision="fp32", scale=2)
    info = probe(clip)
    return SegmentRecipe(info, plan_output(info, out, 2, LOSSLESS)), (Segment(0, None, None),), model


def run_ray_segments(job, segments, model, out, options):
    """The segment runner with the Ray executor, as `run_file` uses it for `--engine ray --address`."""
    from hatstream.pipeline.ray_engine import RaySegments
    from hatstream.pipeline.resume import run_resumable

    return run_resumable(job, segments, RaySegments(model, options), out, settings=())


@pytest.fixture(scope="module")
def slow_clip(tmp_path_factory) -> Path:
    """One segment that takes several seconds to encode, a frame at a time."""
    return make_video(tmp_path_factory.mktemp("ray") / "slow.mkv", Clip(frames=240, width=320, height=240))


def test_a_segment_that_makes_progress_is_not_timed_out(slow_clip, tmp_path, local_ray, caplog):
    from hatstream.pipeline.ray_engine import RayOptions

    out = tmp_path / "out.mkv"
    job, segments, model = _segment_job(slow_clip, out)
    caplog.set_level(logging.INFO, logger="hatstream.pipeline.ray_engine")
    # The segment takes longer than the timeout as a whole, but no frame takes anywhere near as long.
    options = RayOptions(workers=1, device="cpu", stall_timeout=2.0, batch_timeout=2.0)
    started = time.monotonic()
    done = run_ray_segments(job, segments, model, out, options)
    took = time.monotonic() - started
    assert done.frames == 240 and len(read_planes(out)) == 240
    assert "running it again" not in caplog.text
    assert not list(tmp_path.glob(".hatstream-segments-*"))
    if took < 4:  # on a fast machine the check above proves nothing; say so rather than pass silently
        pytest.skip(f"the segment took only {took:.1f} s")


def test_a_damaged_input_fails_at_once_on_the_worker(tmp_path, local_ray, caplog):
    # Workers decode the segment's packets the driver sent them: damage found there is the input's,
    # and no retry could fix it.
    from test_run_errors import _damaged_clip

    from hatstream.pipeline.ray_engine import RayOptions

    _, src = _damaged_clip(tmp_path, "mjpeg")
    out = tmp_path / "out.mkv"
    job, segments, model = _segment_job(src, out)
    caplog.set_level(logging.WARNING, logger="hatstream.pipeline.ray_engine")
    with pytest.raises(HatstreamError, match=r"^segment 0: bad.mkv: damaged video packet at 0.400s") as error:
        run_ray_segments(job, segments, model, out, RayOptions(workers=2, device="cpu"))
    assert "times" not in str(error.value) and "running it again" not in caplog.text
    # Nothing at the output path; the work folder stays, as after any failure, for a rerun.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.mkv.hatstream-work", "bad.mkv", "good.mkv"]


def test_segment_folders_left_by_a_killed_run_are_removed(clip, tmp_path, local_ray):
    import fcntl

    from hatstream.pipeline.ray_engine import RayOptions

    stale, live = tmp_path / ".hatstream-segments-dead", tmp_path / ".hatstream-segments-live"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "seg-00000.nut").write_bytes(b"x" * 100)
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    out = tmp_path / "out.mkv"
    job, segments, model = _segment_job(clip, out)
    with open(live / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another run, still going
        assert run_ray_segments(job, segments, model, out, RayOptions(workers=1, device="cpu")).frames == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hatstream-segments-live", "out.mkv"]


def test_the_actors_count_clipped_pixels_in_frame_and_segment_mode(tmp_path, local_ray):
    # 8 frames, each with 12x8 super-white pixels that an RGB output (gbrp10le) has no code for; a keyframe
    # every 2 frames (0.08 s), so 0.07 s segments give 4 of them.
    def planes(i):
        y = np.full((48, 64), 128, np.uint8)
        y[:8, :12] = 250
        return y, np.full((24, 32), 128, np.uint8), np.full((24, 32), 128, np.uint8)

    from hatstream.pipeline.segments import plan_segments

    src = make_video(tmp_path / "hot.mkv", Clip(frames=8, planes=planes, colour_tags=(1, 1, 1, 1), options={"g": "2"}))
    assert len(plan_segments(probe(src), 0.07)) == 4
    rgb = EncodeSettings(codec="ffv1", pix_fmt="gbrp10le")

    def run(name, **kwargs):
        return run_file(RunConfig(input=src, output=tmp_path / name, model="bicubic", scale=2, encode=rgb,
                                  **kwargs)).clipped

    assert run("local.mkv", engine="local") == 8 * 96
    assert run("frames.mkv", engine="ray", workers=2, device="cpu", batch=3) == 8 * 96
    # --address: segment mode (Ray is already up in this process, so no other is joined).
    assert run("segments.mkv", engine="ray", address="auto", workers=2, device="cpu", segment_seconds=0.07) == 8 * 96
