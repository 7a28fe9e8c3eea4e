"""The read-only status page of `hatstream watch --http [HOST:]PORT`.

    GET /                 the page: every job's state, progress and ETA, timings, output, thumbnail
    GET /api/jobs         the same as JSON (the newest job of each file, as `watch --status` lists)
    GET /api/jobs/<id>    one job, current or history
    GET /thumbs/<id>.png  the before/after thumbnail of a finished job

Everything comes from the ledger (and the thumbnails beside it), which each request opens
afresh; the page knows nothing the watcher has not committed, so a restarted watcher shows
exactly what it had before. Nothing can be changed through this server: it answers GET and
HEAD only.

Who may ask:
- by default it listens on loopback only, and answers only requests whose Host header is an IP
  address or `localhost`, so a web page elsewhere cannot read it through DNS rebinding;
- any other address needs `remote=True` (the --http-remote flag) and a token; a request from a
  peer that is not loopback must carry it (`Authorization: Bearer TOKEN` or `?token=TOKEN`),
  or it is refused with 403 and nothing else.

The standard library's ThreadingHTTPServer is enough here: four read-only routes, a handful of
clients, no sessions, templates or uploads. A framework would add a runtime dependency and
more code in front of the network than this whole module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hatstream.errors import HatstreamError
from hatstream.watch.job import thumbnail_path
from hatstream.watch.ledger import STATE_DIR, Job, Ledger, ledger_path

log = logging.getLogger(__name__)

TOKEN_FILE = "http-token"


def parse_listen(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); the host defaults to 127.0.0.1. IPv6 hosts go in brackets."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([^:\[\]]+):)?(\d{1,5})", text.strip())
    if not m or int(m[3]) > 65535:
        raise HatstreamError(f"--http {text!r}: expected [HOST:]PORT, e.g. 8080 or 127.0.0.1:8080")
    return (m[1] or m[2] or "127.0.0.1"), int(m[3])


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else, names included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _resolve(host: str) -> str:
    """The numeric address to bind for `host` (names are looked up once, here)."""
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as exc:
        raise HatstreamError(f"--http: cannot resolve {host}: {exc.strerror}") from None


def load_token(out_dir: Path, token_file: Path | None) -> tuple[str, Path]:
    """The token for remote requests: read from `token_file`, or made once and kept (mode 0600)
    in OUT_DIR/.hatstream/http-token, so it survives restarts. Returns (token, where it is)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HatstreamError(f"--http-token-file {token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise HatstreamError(f"--http-token-file {token_file}: the token must be at least 16 characters")
        return token, Path(token_file)
    path = Path(out_dir) / STATE_DIR / TOKEN_FILE
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if len(token) >= 16:
            return token, path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    # O_EXCL into a fresh name, then rename: the token is never readable by others, even briefly.
    tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    tmp.replace(path)
    return token, path


def job_json(job: Job, out_dir: Path, now: float | None = None) -> dict:
    """One job as the API shows it: `watch --status`'s state names, times, and progress while running."""
    now = time.time() if now is None else now
    data = {
        "id": job.id, "path": job.rel, "state": job.label, "attempts": job.attempts, "output": job.output,
        "queued_at": job.queued_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "seconds": job.seconds, "frames": job.frames, "note": job.note,
        "error": job.last_error if job.state == "failed" else None,
        "progress": None, "thumbnail": None,
    }
    fresh = job.progress_at is not None and job.started_at is not None and job.progress_at >= job.started_at
    if job.state == "running":
        data["elapsed"] = round(now - job.started_at, 3) if job.started_at else None
        if fresh:  # progress left from an earlier attempt is not this attempt's
            frames, total, fps = job.progress_frames or 0, job.progress_total or 0, job.progress_fps or 0.0
            eta = None
            if fps > 0 and total >= frames:
                eta = max(0.0, (total - frames) / fps - (now - job.progress_at))
            data["progress"] = {"frames": frames, "total": total, "fps": fps,
                                "percent": round(100 * frames / total, 1) if total else None,
                                "eta": round(eta, 1) if eta is not None else None, "at": job.progress_at}
    if job.state == "done" and thumbnail_path(out_dir, job.id).exists():
        data["thumbnail"] = f"/thumbs/{job.id}.png"
    return data


def _read(out_dir: Path, read, empty):
    """`read(ledger)` on a fresh read-side connection; `empty` before the watcher has made the ledger."""
    if not ledger_path(out_dir).exists():
        return empty
    ledger = Ledger(out_dir, create=False)
    try:
        return read(ledger)
    except sqlite3.OperationalError as exc:
        # The watcher creates the file a moment before the table; between the two there is no job yet.
        if "no such table" in str(exc):
            return empty
        raise
    finally:
        ledger.close()


def read_jobs(out_dir: Path) -> list[dict]:
    """The newest job of every file, from a fresh read of the ledger ([] before it exists)."""
    now = time.time()
    return _read(out_dir, lambda ledger: [job_json(job, out_dir, now) for job in ledger.latest()], [])


def read_job(out_dir: Path, job_id: int) -> dict | None:
    """One job by id, or None."""
    def one(ledger):
        job = ledger.get(job_id)
        return job_json(job, out_dir) if job else None
    return _read(out_dir, one, None)


_PAGE_SCRIPT = r"""
(function () {
  var token = new URLSearchParams(location.search).get('token');
  var suffix = token ? '?token=' + encodeURIComponent(token) : '';
  var body = document.getElementById('jobs'), refreshes = 0;
  function text(v) { return v === null || v === undefined ? '' : String(v); }
  function when(t) { return t ? new Date(t * 1000).toLocaleString() : ''; }
  function span(s) {
    if (s === null || s === undefined) return '';
    s = Math.round(s);
    var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    return (h ? h + 'h ' : '') + (h || m ? m + 'm ' : '') + r + 's';
  }
  function cell(tr, cls, value) {
    var td = document.createElement('td'); td.className = cls;
    if (value instanceof Node) td.appendChild(value); else td.textContent = text(value);
    tr.appendChild(td); return td;
  }
  function detail(job) {
    if (job.state === 'running' && job.progress) {
      var p = job.progress, box = document.createElement('div');
      var bar = document.createElement('progress'); bar.max = p.total || 1; bar.value = p.frames;
      box.appendChild(bar);
      box.appendChild(document.createTextNode(' ' + p.frames + '/' + (p.total || '?') + ' frames' +
        (p.percent !== null ? ' (' + p.percent + '%)' : '') + ', ' + p.fps.toFixed(2) + ' fps' +
        (p.eta !== null ? ', ETA ' + span(p.eta) : '')));
      box.className = 'progress'; return box;
    }
    if (job.state === 'running') return 'starting';
    if (job.state === 'failed' || job.state === 'quarantined') return job.error || '';
    return job.note || '';
  }
  function render(data) {
    var rows = [], counts = {};
    data.jobs.forEach(function (job) {
      counts[job.state] = (counts[job.state] || 0) + 1;
      var tr = document.createElement('tr');
      tr.id = 'job-' + job.id; tr.dataset.state = job.state; tr.dataset.path = job.path;
      cell(tr, 'state', job.state).classList.add(job.state);
      cell(tr, 'path', job.path);
      cell(tr, 'detail', detail(job));
      cell(tr, 'tries', job.attempts);
      cell(tr, 'time', job.state === 'running' ? span(job.elapsed) : (job.seconds !== null ? span(job.seconds) : ''));
      cell(tr, 'updated', when(job.finished_at || job.started_at || job.queued_at));
      cell(tr, 'output', job.output);
      var thumb = '';
      if (job.thumbnail) {
        thumb = document.createElement('img'); thumb.src = job.thumbnail + suffix;
        thumb.alt = 'before/after ' + job.path; thumb.className = 'thumb';
      }
      cell(tr, 'thumbnail', thumb);
      rows.push(tr);
    });
    body.replaceChildren.apply(body, rows);
    var summary = Object.keys(counts).sort().map(function (k) { return counts[k] + ' ' + k; }).join(', ');
    document.getElementById('summary').textContent = data.jobs.length + ' file(s)' + (summary ? ': ' + summary : '');
    document.getElementById('updated').textContent = '· updated ' + new Date().toLocaleTimeString();
  }
  function refresh() {
    fetch('/api/jobs' + suffix, {cache: 'no-store'}).then(function (r) {
      if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
      return r.json();
    }).then(function (data) {
      refreshes += 1; document.body.dataset.refreshes = refreshes; render(data);
      document.getElementById('error').textContent = '';
    }).catch(function (e) { document.getElementById('error').textContent = 'cannot reach the watcher: ' + e.message; });
  }
  render(JSON.parse(document.getElementById('initial').textContent));
  setInterval(refresh, 2000); refresh();
})();
"""
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_PAGE_SCRIPT.encode()).digest()).decode()

_PAGE_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.banner{padding:.5em .8em;border-radius:4px;margin-bottom:1em;background:#e8f0fe}
.banner.remote{background:#fff3cd}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd;
vertical-align:middle}th{background:#eee}
td.state{font-weight:600}.queued{color:#555}.running{color:#0b63c5}.done{color:#1a7f37}
.failed{color:#b35900}.quarantined{color:#c62828}td.detail{max-width:32em}td.output{font-family:monospace;
font-size:12px;word-break:break-all}img.thumb{height:60px;image-rendering:pixelated;border:1px solid #ccc}
#error{color:#c62828}progress{width:10em}
"""


def render_page(out_dir: Path, jobs: list[dict], listen: str, remote: bool) -> str:
    """The status page, with the current jobs inline so it shows them before its first refresh."""
    import html

    if remote:
        banner = (f'<div class="banner remote">Served to the network on {html.escape(listen)}. Requests '
                  'from other machines need the token (<code>?token=...</code> or an Authorization: Bearer '
                  'header); this machine needs none. Read-only.</div>')
    else:
        banner = (f'<div class="banner">Loopback only ({html.escape(listen)}): only this machine can open '
                  'this page. Read-only.</div>')
    initial = json.dumps({"jobs": jobs}).replace("</", "<\\/")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>hatstream watch: {html.escape(str(out_dir))}</title><style>{_PAGE_STYLE}</style></head>'
            f'<body data-refreshes="0"><h1>hatstream watch</h1>{banner}'
            f'<p>Output folder <code>{html.escape(str(out_dir))}</code>. <span id="summary"></span> '
            f'<span id="updated"></span> <span id="error"></span></p>'
            f'<table><thead><tr><th>state</th><th>file</th><th>progress / reason</th><th>tries</th><th>time</th>'
            f'<th>updated</th><th>output</th><th>before / after</th></tr></thead><tbody id="jobs"></tbody></table>'
            f'<script type="application/json" id="initial">{initial}</script>'
            f'<script>{_PAGE_SCRIPT}</script></body></html>\n')


class _Handler(BaseHTTPRequestHandler):
    server: "StatusServer"
    server_version = "hatstream-watch"
    sys_version = ""
    timeout = 30  # seconds a client may stall mid-request before its thread gives up on it

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("http %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, kind: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token may be in the URL
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _refuse(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _allowed(self, query: dict) -> bool:
        """The access rule of the module docstring; refuses (and answers) the request when it fails."""
        peer = self.client_address[0]
        if is_loopback(peer):
            host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
            if host != "localhost" and not _is_ip(host):
                self._refuse(HTTPStatus.FORBIDDEN, "the Host header must be an IP address or localhost")
                return False
            return True
        token = self.server.token
        given = (query.get("token") or [""])[0]
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        if token is None or not hmac.compare_digest(given.encode(), token.encode()):
            log.info("http: refused %s %s from %s (no valid token)", self.command, urlsplit(self.path).path, peer)
            self._refuse(HTTPStatus.FORBIDDEN, "a request from another machine needs the token")
            return False
        return True

    def do_GET(self):  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if not self._allowed(parse_qs(url.query)):
            return
        out_dir = self.server.out_dir
        try:
            if url.path in ("/", "/index.html"):
                body = render_page(out_dir, read_jobs(out_dir), self.server.listen, self.server.token is not None)
                csp = (f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
                       "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                       "frame-ancestors 'none'")
                self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": csp})
            elif url.path == "/api/jobs":
                self._json(HTTPStatus.OK, {"jobs": read_jobs(out_dir), "time": time.time()})
            elif m := re.fullmatch(r"/api/jobs/(\d{1,18})", url.path):
                job = read_job(out_dir, int(m[1]))
                if job is None:
                    self._refuse(HTTPStatus.NOT_FOUND, f"no job {m[1]}")
                else:
                    self._json(HTTPStatus.OK, job)
            elif m := re.fullmatch(r"/thumbs/(\d{1,18})\.png", url.path):
                path = thumbnail_path(out_dir, int(m[1]))
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    self._refuse(HTTPStatus.NOT_FOUND, "no thumbnail")
                    return
                self._send(HTTPStatus.OK, data, "image/png")
            else:
                self._refuse(HTTPStatus.NOT_FOUND, "not found")
        except (HatstreamError, OSError, sqlite3.Error) as exc:
            log.warning("http: %s failed: %s", url.path, exc)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, f"cannot read the ledger: {exc}")

    do_HEAD = do_GET

    def _read_only(self):
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "this server is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _read_only


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class StatusServer(ThreadingHTTPServer):
    """The status page server for one OUT_DIR. `start()` serves from a daemon thread; `close()` stops it."""

    daemon_threads = True

    def __init__(self, out_dir: Path, host: str, port: int, remote: bool = False, token_file: Path | None = None):
        address = _resolve(host)
        if not is_loopback(address) and not remote:
            raise HatstreamError(f"--http {host}:{port} would serve the status page to the network; "
                                 "pass --http-remote as well (requests from other machines then need a token)")
        self.out_dir = Path(out_dir).resolve()
        self.token, self.token_path = load_token(out_dir, token_file) if remote else (None, None)
        if ":" in address:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((address, port), _Handler)
        except OSError as exc:
            raise HatstreamError(f"--http: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = self.server_address[1]
        self.listen = f"[{address}]:{bound}" if ":" in address else f"{address}:{bound}"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address as people type it (loopback shown as 127.0.0.1)."""
        return f"http://{self.listen}/"

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hatstream-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
