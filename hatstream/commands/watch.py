"""Watch a folder and upscale every video that lands in it, as a service that survives restarts.

Files under IN_DIR (recursively) are taken once their size and mtime have held still for
--settle seconds; each becomes a job in a ledger (OUT_DIR/.hatstream/ledger.sqlite), runs through
the same pipeline as `hatstream run`, and is written atomically to the same relative path under
OUT_DIR. Done jobs are never redone, jobs cut off by a crash are redone, and failing files are
retried up to --max-attempts times, then quarantined (OUT_DIR/failed/<path>.error.txt).
SIGTERM or Ctrl-C stops the running jobs cleanly, puts them back in the queue and exits 0.

    hatstream watch IN_DIR -o OUT_DIR [--preset NAME|FILE] [--once] ...
    hatstream watch --status OUT_DIR

--http [HOST:]PORT serves a read-only status page (and /api/jobs) from the ledger; it listens on
loopback only unless --http-remote is given, and then other machines need the token.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

from hatstream.commands.common import add_engine_arguments, nonnegative_seconds, positive_int, positive_seconds
from hatstream.errors import HatstreamError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `hatstream watch`."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("in_dir", nargs="?", type=Path, metavar="IN_DIR", help="the folder to watch (recursively)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT_DIR", help="where outputs, the ledger and failed/ go")
    p.add_argument("--preset", default="default", metavar="NAME|FILE",
                   help="run settings: a preset in pipelines/ or a .toml file (default: default)")
    p.add_argument("--poll", type=positive_seconds, default=5.0, metavar="SECONDS",
                   help="seconds between scans, more than 0 (default: 5)")
    p.add_argument("--settle", type=nonnegative_seconds, default=5.0, metavar="SECONDS",
                   help="a file must hold still this long before it is taken (default: 5)")
    p.add_argument("--max-attempts", type=positive_int, default=3, metavar="N",
                   help="tries before a failing file is quarantined (default: 3)")
    p.add_argument("--retry-delay", type=nonnegative_seconds, default=60.0, metavar="SECONDS",
                   help="wait before retrying a failed file, doubling each time (default: 60)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="files processed at a time (default: 1)")
    add_engine_arguments(p)
    p.add_argument("--model-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="a folder whose checkpoints a folder's hatstream.toml may name as model (repeatable; "
                        "IN_DIR is always allowed)")
    p.add_argument("--once", action="store_true", help="process what is ready now, then exit (for cron)")
    p.add_argument("--status", type=Path, metavar="OUT_DIR", help="print the jobs recorded in OUT_DIR and exit")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve a read-only status page and JSON API (default host 127.0.0.1; port 0 picks one)")
    p.add_argument("--http-remote", action="store_true",
                   help="allow --http on an address other machines can reach; their requests need the token")
    p.add_argument("--http-token-file", type=Path, metavar="FILE",
                   help="the token for --http-remote (default: made once, kept in OUT_DIR/.hatstream/http-token)")


def _print_status(out_dir: Path) -> int:
    from hatstream.watch.ledger import Ledger

    ledger = Ledger(out_dir, create=False)
    try:
        jobs = ledger.latest()
    finally:
        ledger.close()
    rows = [("STATE", "TRIES", "SECONDS", "UPDATED", "PATH", "DETAIL")]
    for job in jobs:
        when = job.finished_at or job.started_at or job.queued_at
        detail = job.last_error if job.state == "failed" else (job.note or "")
        rows.append((job.label, str(job.attempts), f"{job.seconds:.1f}" if job.seconds is not None else "-",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)), job.rel,
                     " ".join((detail or "").split())[:100]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.label] = counts.get(job.label, 0) + 1
    print(f"{len(jobs)} file(s): " + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"))
    return 0


def _status_server(args: argparse.Namespace):
    """The --http status server, listening and serving (None without --http)."""
    if args.http is None:
        if args.http_remote or args.http_token_file:
            raise HatstreamError("--http-remote and --http-token-file need --http [HOST:]PORT")
        return None
    from hatstream.watch.http import StatusServer, parse_listen

    host, port = parse_listen(args.http)
    server = StatusServer(args.output, host, port, remote=args.http_remote, token_file=args.http_token_file)
    server.start()
    where = (f"; other machines need the token in {server.token_path}" if server.token is not None
             else " (loopback only)")
    logging.getLogger("hatstream.watch").info("status page at %s%s", server.url, where)
    return server


def run(args: argparse.Namespace) -> int:
    """Watch (or, with --status, report) and return the exit status."""
    if args.status is not None:
        if args.in_dir is not None or args.output is not None:
            raise HatstreamError("--status takes only OUT_DIR: hatstream watch --status OUT_DIR")
        if args.http is not None:
            raise HatstreamError("--http serves the page of a running watcher: "
                                 "hatstream watch IN_DIR -o OUT_DIR --http PORT")
        return _print_status(args.status)
    if args.in_dir is None or args.output is None:
        raise HatstreamError("usage: hatstream watch IN_DIR -o OUT_DIR (or: hatstream watch --status OUT_DIR)")
    from hatstream.watch.service import WatchConfig, Watcher

    config = WatchConfig(in_dir=args.in_dir, out_dir=args.output, preset=args.preset, poll=args.poll,
                         settle=args.settle, max_attempts=args.max_attempts, jobs=args.jobs, once=args.once,
                         retry_delay=args.retry_delay, device=args.device, engine=args.engine,
                         address=args.address, workers=args.workers, model_dirs=tuple(args.model_dir))
    stop = threading.Event()

    def request_stop(signum, frame):  # noqa: ARG001 - signal handler signature
        # Replaces the CLI's KeyboardInterrupt: the watcher takes no new job, stops the running
        # ones through their own clean-up, requeues them, and returns normally.
        if not stop.is_set():
            logging.getLogger("hatstream.watch").info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    # State changes are the point of a service's log; show them without -v.
    watch_log = logging.getLogger("hatstream.watch")
    if watch_log.getEffectiveLevel() > logging.INFO:
        watch_log.setLevel(logging.INFO)
    server = _status_server(args)
    try:
        summary = Watcher(config, stop).run()
    finally:
        if server is not None:
            server.close()
    print(f"hatstream: watch stopped: {summary.done} done, {summary.failed} failed, "
          f"{summary.quarantined} quarantined, {summary.interrupted} interrupted", flush=True)
    return 0
