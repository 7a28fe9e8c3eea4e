"""`hatstream watch --http`: a real watcher subprocess serving its status page, read by a real
headless Chromium, by plain HTTP clients, and compared with `watch --status`.

The folder holds a good file (done, with its thumbnail), a poison file (quarantined after one
attempt), a long file that the bundled HAT model keeps running (in a subfolder whose
hatstream.toml picks that model; the others use bicubic), and one more that waits its turn.

The non-loopback peer is a network namespace that the test makes (`ip netns` and a veth pair
with a private /30, as root): a client run inside it reaches the watcher through the veth, a
real other machine on a real socket. Nothing is sent to any address but loopback and that veth
(never this machine's own interface address); the test skips where it cannot make the namespace.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT, run_cli
from mediagen import Clip, make_video

FAST = ("--poll", "0.1", "--settle", "0.3")
LONG_FRAMES = 1000
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get where missing and possible; else the test skips."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=1200, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if path := shutil.which("chromium"):
            return path
    pytest.skip("no chromium, and `apt-get install -y chromium` was not possible here (needs root and Debian)")


def _browser(chromium: str, profile: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)


def _start(inp: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "hatstream", "watch", inp, "-o", out, *FAST, *extra],
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env, cwd=ROOT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the watcher exited ({proc.returncode}): {log.read_text() if log else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-2000:] if log else ''}")


def _port(log: Path, host: str = r"[0-9.]+") -> int | None:
    m = re.search(rf"status page at http://{host}:(\d+)/", log.read_text())
    return int(m[1]) if m else None


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _api(port: int) -> dict[str, dict]:
    status, body = _get(f"http://127.0.0.1:{port}/api/jobs")
    assert status == 200
    return {job["path"]: job for job in json.loads(body)["jobs"]}


class _Rows(HTMLParser):
    """The job rows of the rendered DOM: state, and what each row holds."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.row = None
        self.cell = None
        self.body: dict = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "tr" and "data-state" in attrs:
            self.row = self.rows.setdefault(attrs["data-path"], {"state": attrs["data-state"], "text": {},
                                                                 "tags": set(), "img": None})
        if self.row is not None:
            self.row["tags"].add(tag)
            if tag == "td":
                self.cell = attrs.get("class", "").split()[0]
            if tag == "img":
                self.row["img"] = attrs.get("src")

    def handle_endtag(self, tag):
        if tag == "tr":
            self.row = None

    def handle_data(self, data):
        if self.row is not None and self.cell:
            self.row["text"][self.cell] = self.row["text"].get(self.cell, "") + data


def _status_rows(out: Path) -> dict[str, str]:
    result = run_cli("watch", "--status", out, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()[1:-1]
    rows = {}
    for line in lines:
        cells = line.split()
        # STATE TRIES SECONDS DATE TIME PATH [DETAIL]
        rows[cells[5]] = cells[0]
    return rows


@pytest.fixture()
def folder(tmp_path) -> tuple[Path, Path, Path]:
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp / "slow").mkdir(parents=True)
    make_video(inp / "a-good.mkv", Clip(frames=12))
    (inp / "b-poison.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    # Long enough to stay running through every check below, even on a fast many-core machine.
    make_video(inp / "slow" / "long.mkv", Clip(frames=LONG_FRAMES, width=96, height=72))
    make_video(inp / "z-queued.mkv", Clip(frames=12))
    # The long file runs the bundled HAT model: slow enough to be caught running.
    (inp / "slow" / "hatstream.toml").write_text('model = "default"\n')
    preset = tmp_path / "preset.toml"
    preset.write_text('model = "bicubic"\ncontainer = "mkv"\n[encode]\ncodec = "ffv1"\n')
    return inp, out, preset


@pytest.mark.slow  # a HAT job long enough to be caught running, and two browser runs
def test_status_page_in_a_browser_agrees_with_the_ledger(folder, tmp_path, chromium):
    inp, out, preset = folder
    log = tmp_path / "watch.log"
    proc = _start(inp, out, log, "--preset", preset, "--max-attempts", "1", "--http", "0")
    try:
        port = _wait_for(lambda: _port(log), 120, "the status page", proc, log)
        want = {"a-good.mkv": "done", "b-poison.mp4": "quarantined", "slow/long.mkv": "running",
                "z-queued.mkv": "queued"}
        _wait_for(lambda: {p: j["state"] for p, j in _api(port).items()} == want, 600, "the four states", proc, log)

        def progressed():
            now = _api(port)
            return now if (now["slow/long.mkv"]["progress"] or {}).get("frames") else None

        jobs = _wait_for(progressed, 600, "progress of the running job", proc, log)
        running = jobs["slow/long.mkv"]
        assert running["progress"]["total"] == LONG_FRAMES and 0 < running["progress"]["frames"] < LONG_FRAMES
        assert running["progress"]["fps"] > 0 and running["progress"]["eta"] is not None
        assert running["output"] == str(out.resolve() / "slow" / "long.mkv")
        assert "not a video file" in jobs["b-poison.mp4"]["error"]
        assert jobs["a-good.mkv"]["frames"] == 12 and jobs["a-good.mkv"]["seconds"] > 0

        # The JSON API and `watch --status` read the same ledger and say the same.
        assert _status_rows(out) == {p: j["state"] for p, j in _api(port).items()} == want
        one = json.loads(_get(f"http://127.0.0.1:{port}/api/jobs/{jobs['a-good.mkv']['id']}")[1])
        assert one["path"] == "a-good.mkv" and one["state"] == "done"
        assert _get(f"http://127.0.0.1:{port}/api/jobs/999999")[0] == 404

        # The finished job's thumbnail: source and upscale of the 64x48 clip, side by side.
        status, png = _get(f"http://127.0.0.1:{port}{jobs['a-good.mkv']['thumbnail']}")
        thumb = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert status == 200 and thumb.shape == (96, 2 * 128 + 2, 3)
        assert jobs["b-poison.mp4"]["thumbnail"] is None and jobs["z-queued.mkv"]["thumbnail"] is None

        # Read-only: nothing but GET and HEAD.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405

        # A real browser: the DOM it builds (page script run, at least one refresh through fetch).
        profile = Path(tempfile.mkdtemp(dir=tmp_path))
        dom = _browser(chromium, profile, "--virtual-time-budget=6000", "--dump-dom", f"http://127.0.0.1:{port}/")
        assert dom.returncode == 0, dom.stderr[-2000:]
        parsed = _Rows()
        parsed.feed(dom.stdout)
        assert {p: r["state"] for p, r in parsed.rows.items()} == want, dom.stdout[-3000:]
        assert int(parsed.body.get("data-refreshes", 0)) >= 1  # the page refreshed itself from /api/jobs
        assert "progress" in parsed.rows["slow/long.mkv"]["tags"]
        assert f"/{LONG_FRAMES} frames" in parsed.rows["slow/long.mkv"]["text"]["detail"]
        assert "not a video file" in parsed.rows["b-poison.mp4"]["text"]["detail"]
        assert parsed.rows["a-good.mkv"]["img"] == jobs["a-good.mkv"]["thumbnail"]
        assert str(out.resolve() / "a-good.mkv") in parsed.rows["a-good.mkv"]["text"]["output"]
        assert "Loopback only" in dom.stdout

        shot = tmp_path / "status.png"
        taken = _browser(chromium, profile, "--window-size=1200,500", "--virtual-time-budget=4000",
                         f"--screenshot={shot}", f"http://127.0.0.1:{port}/")
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
        img = cv2.imread(str(shot))
        assert img.shape[:2] == (500, 1200)
        # Not blank: text and coloured states make many colours and a real spread of brightness.
        assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    finally:
        assert _stop(proc) == 0, log.read_text()[-2000:]
    # Restarts lose nothing: with the watcher gone the ledger says what the page said.
    rows = _status_rows(out)
    assert rows["a-good.mkv"] == "done" and rows["b-poison.mp4"] == "quarantined"
    assert rows["slow/long.mkv"] in ("queued", "done")  # stopped mid-run, it waits for the next start


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _free_slash30() -> tuple[str, str]:
    """Two addresses of a 10.231.0.0/16 /30 that no interface here already uses (other tests may
    run their own namespaces at the same time)."""
    used = set(re.findall(r"inet (10\.231\.\d+\.\d+)/", _ip("-4", "-o", "addr", "show").stdout))
    while True:
        base = f"10.231.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}"
        net = base.rsplit(".", 1)[0]
        first = int(base.rsplit(".", 1)[1])
        if not any(f"{net}.{first + i}" in used for i in range(4)):
            return f"{net}.{first + 1}", f"{net}.{first + 2}"


@pytest.fixture()
def other_machine():
    """A network namespace joined to this one by a veth pair: (namespace, host end's address,
    the namespace's address). Both are deleted afterwards, whatever happened."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("a network namespace for the non-loopback peer needs root and iproute2's `ip`")
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"hs-{tag}", f"hs{tag}h", f"hs{tag}n"  # interface names: 15 characters at most
    try:
        _ip("netns", "add", ns)
    except OSError as exc:
        pytest.skip(f"`ip netns add` failed here: {exc}")
    try:
        host_addr, ns_addr = _free_slash30()
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_addr, ns_addr
    finally:
        _ip("link", "del", host_if, check=False)  # takes its peer in the namespace with it
        _ip("netns", "del", ns, check=False)


# Run inside the namespace: GET each (path, headers) of argv[2] from argv[1], printing
# [[status, body], ...] as JSON. The veth may take a moment to carry traffic, so a refused or
# unreachable first connection is retried, a bounded number of times.
_CLIENT = """
import json, sys, time, urllib.error, urllib.request
base, asks = sys.argv[1], json.loads(sys.argv[2])
def get(path, headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10) as r:
            return [r.status, r.read().decode("utf-8", "replace")]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode("utf-8", "replace")]
for attempt in range(50):
    try:
        first = get(*asks[0])
        break
    except OSError:
        if attempt == 49:
            raise
        time.sleep(0.2)
print(json.dumps([first] + [get(*ask) for ask in asks[1:]]))
"""


def _get_from(ns: str, base: str, asks: list[tuple[str, dict]]) -> list[tuple[int, str]]:
    """GET each (path, headers) from inside network namespace `ns`."""
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, base, json.dumps(asks)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return [tuple(answer) for answer in json.loads(result.stdout)]


def test_remote_needs_the_flag_and_a_token_from_other_machines(tmp_path, other_machine):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    refused = run_cli("watch", inp, "-o", out, "--http", "0.0.0.0:0", "--once", timeout=120)
    assert refused.returncode == 2 and "--http-remote" in refused.stderr
    assert refused.stderr.startswith("hatstream: error: ") and "Traceback" not in refused.stderr

    ns, host_addr, ns_addr = other_machine
    log = tmp_path / "watch.log"
    # On every address, so that one watcher answers both loopback and the veth; only those two
    # are ever connected to.
    proc = _start(inp, out, log, "--http", "0.0.0.0:0", "--http-remote")
    try:
        port = _wait_for(lambda: _port(log), 120, "the status page", proc, log)
        token_file = out / ".hatstream" / "http-token"
        assert token_file.stat().st_mode & 0o077 == 0  # the token is its owner's alone
        token = token_file.read_text().strip()
        bare = ("/", "/api/jobs", "/api/jobs/1", "/thumbs/1.png")
        asks = [(path, {}) for path in bare] + [
            ("/api/jobs?token=wrong-token-of-some-length", {}),
            ("/api/jobs", {"Authorization": "Bearer nope"}),
            (f"/api/jobs?token={token}", {}),
            ("/api/jobs", {"Authorization": f"Bearer {token}"}),
            (f"/?token={token}", {}),
        ]
        answers = _get_from(ns, f"http://{host_addr}:{port}", asks)
        for path, (status, body) in zip(bare, answers):
            assert status == 403 and "token" in body, path
        wrong_query, wrong_bearer, right_query, right_bearer, page = answers[len(bare):]
        assert wrong_query[0] == 403 and wrong_bearer[0] == 403
        assert right_query[0] == 200 and right_bearer[0] == 200
        assert json.loads(right_query[1])["jobs"] == []
        assert page[0] == 200 and "need the token" in page[1]
        # This machine's own loopback needs no token, but a foreign Host header (DNS rebinding) is refused.
        assert _get(f"http://127.0.0.1:{port}/api/jobs")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/api/jobs", {"Host": f"attacker.example:{port}"})[0] == 403
        # The watcher saw the namespace's address as the peer: it came from elsewhere.
        assert "refused GET /api/jobs from " + ns_addr in log.read_text()
    finally:
        assert _stop(proc) == 0, log.read_text()[-2000:]


def test_old_ledger_gains_the_progress_columns(tmp_path):
    from hatstream.watch.ledger import Ledger

    out = tmp_path / "out"
    (out / ".hatstream").mkdir(parents=True)
    # The ledger as the first release wrote it, with one finished job.
    with sqlite3.connect(out / ".hatstream" / "ledger.sqlite") as db:
        db.executescript("""
            CREATE TABLE jobs (id INTEGER PRIMARY KEY, rel TEXT NOT NULL, size INTEGER NOT NULL,
              mtime_ns INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
              quarantined INTEGER NOT NULL DEFAULT 0, last_error TEXT, note TEXT, output TEXT,
              queued_at REAL NOT NULL, started_at REAL, finished_at REAL, seconds REAL, frames INTEGER,
              UNIQUE (rel, size, mtime_ns));
            INSERT INTO jobs (rel, size, mtime_ns, state, attempts, queued_at, finished_at, seconds, frames)
              VALUES ('old.mkv', 10, 1, 'done', 1, 1.0, 2.0, 1.0, 5);
        """)
    ledger = Ledger(out)
    try:
        [job] = ledger.latest()
        assert (job.rel, job.state, job.frames, job.progress_frames) == ("old.mkv", "done", 5, None)
        running = ledger.start(ledger.add("new.mkv", 1, 1).id, str(out / "new.mkv"))
        ledger.progress(running.id, 7, 70, 3.5)
        again = ledger.get(running.id)
        assert (again.progress_frames, again.progress_total, again.progress_fps) == (7, 70, 3.5)
        ledger.progress(job.id, 1, 1, 1.0)  # a job that is not running keeps its row as it was
        assert ledger.get(job.id).progress_frames is None
    finally:
        ledger.close()
    assert _status_rows(out) == {"old.mkv": "done", "new.mkv": "running"}
