"""Memory per WhatsApp Web session: resident memory of one session host with 1 and with N fixture
sessions open (one Chromium, one browser context per account), and the marginal MB per session.

    python bench/bench_web_sessions.py [--sessions 10] [--settle 5]

This process plays the session host: it runs the same ``BrowserRuntime`` (one Chromium) and
``WebTransport`` objects a ``sessions`` pool worker runs, against the fixture WhatsApp Web of the
test suite (tests/fixtures/wa_web) on loopback; every session is logged in (QR scanned) and shows
its chat list. Memory is measured after ``--settle`` seconds of quiet at each step, over the
process and all its descendants (Playwright's driver, Chromium's browser, GPU/utility and renderer
processes), exactly as ``python -m workers status`` reports a host:

* RSS: resident set size summed over the processes (what the brief asks; it counts pages shared
  between Chromium's processes once per process, so it overstates the total);
* PSS: proportional set size (shared pages split between their sharers): the better estimate of
  what the host really costs the machine.

No database or Redis is needed. Real WhatsApp Web is a much heavier page than the fixture (its
JavaScript bundle and IndexedDB), so production numbers per session are several times higher; the
shape (one browser, a context per account) is what this measures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("APP_ENV", "development")


def _pss_mb() -> float:
    import psutil

    root = psutil.Process()
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return round(total / 2 ** 20, 1)


def measure(label: str, sessions: int, settle: float) -> dict:
    import gc

    from workers.session_host import memory_usage

    gc.collect()
    time.sleep(settle)
    usage = memory_usage()
    return {"label": label, "sessions": sessions, "rss_mb": usage["rss_mb"], "pss_mb": _pss_mb(),
            "processes": usage["processes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each measurement")
    args = parser.parse_args()

    from app.transports.base import ClientInfo
    from app.transports.web import WebTransport
    from app.transports.web_browser import BrowserRuntime
    from config import settings
    from tests.fixtures.wa_web.server import FakeWhatsAppWeb
    from tests.fixtures.wa_web.sink import RecordingSink, start_and_scan

    fake = FakeWhatsAppWeb().start()
    settings.override(WEB_URL=fake.url)
    runtime = BrowserRuntime()
    rows = [measure("host, no browser yet", 0, 0)]
    transports = []
    try:
        def open_session(i: int) -> None:
            sink = RecordingSink()
            transport = WebTransport(ClientInfo(id=f"cli_bench_{i:03d}", organization_id="org_bench", transport="web"),
                                     sink, runtime=runtime)
            transports.append(transport)
            start_and_scan(transport, sink, fake, f"+1555020{i:04d}", timeout=120)

        started = time.monotonic()
        open_session(0)
        first_s = time.monotonic() - started
        rows.append(measure("1 session", 1, args.settle))
        started = time.monotonic()
        for i in range(1, args.sessions):
            open_session(i)
        rest_s = (time.monotonic() - started) / max(1, args.sessions - 1)
        rows.append(measure(f"{args.sessions} sessions", args.sessions, args.settle))
        ready = sum(t.state == "ready" for t in transports)
    finally:
        for transport in transports:
            try:
                transport.close()
            except Exception:
                pass
        runtime.close()
        fake.stop()

    print(f"\nWeb session memory — Chromium {runtime.browser_version}, one browser, one context per session "
          f"(fixture WhatsApp Web)\n")
    print(f"{'':<22} {'sessions':>8} {'processes':>9} {'RSS MB':>9} {'PSS MB':>9}")
    for r in rows:
        print(f"{r['label']:<22} {r['sessions']:>8} {r['processes']:>9} {r['rss_mb']:>9.1f} {r['pss_mb']:>9.1f}")
    one, many = rows[1], rows[2]
    n = many["sessions"] - one["sessions"]
    print()
    print(f"{'first session (browser + 1 context)':<40} RSS {one['rss_mb'] - rows[0]['rss_mb']:>7.1f} MB   "
          f"PSS {one['pss_mb'] - rows[0]['pss_mb']:>7.1f} MB")
    print(f"{'marginal MB per additional session':<40} RSS {(many['rss_mb'] - one['rss_mb']) / n:>7.1f} MB   "
          f"PSS {(many['pss_mb'] - one['pss_mb']) / n:>7.1f} MB")
    print(f"\nsessions ready: {ready}/{args.sessions}; time to ready: first {first_s:.1f} s, "
          f"then {rest_s:.1f} s per session")


if __name__ == "__main__":
    main()
