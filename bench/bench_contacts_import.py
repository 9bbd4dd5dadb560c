"""Benchmark of contact imports: a generated CSV of 1,000,000 rows uploaded to the api and imported
by a real ``default`` pool worker; prints rows per second, the server CPU it cost and the worker's
peak memory.

Every process involved runs as in production: the api under gunicorn (the api's own config, 2
workers x 4 threads) takes the upload (streamed to DATA_DIR, checked), one ``default`` pool
process imports it, Postgres and Redis serve them. CPU is that of the server side only
(bench/common.py ``ServerMeter``): the api, the pool, Postgres and Redis, not this process (which
writes the file and polls). Memory is the resident set size (RSS) of the pool's processes, sampled
every 50 ms during the import: the goal is that it stays flat (the file is streamed, never read
whole) and under 200 MB.

The file: `phone,name,tags,plan,city` with a BOM, a third of the numbers written nationally
(read with ``default_region=US``), 1 % invalid numbers, 1 % empty phones and 1 % numbers repeated.

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench_import``, is recreated on that server; give Redis a database of its own), else embedded
servers in a temporary directory. Run: ``.venv/bin/python bench/bench_contacts_import.py``
(``--rows N`` for another size).
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Processes, ServerMeter, wait_until  # noqa: E402

ROWS = 1_000_000
GUNICORN_SHAPE = ["--workers", "2", "--threads", "4", "--keep-alive", "30"]
GOALS = {"rss_mb": 200}


def make_csv(path: Path, rows: int) -> dict:
    """Write the file; what the import must report for it."""
    invalid = duplicates = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write("\ufeffphone,name,tags,plan,city\r\n")
        buf = []
        for i in range(rows):
            kind = i % 100
            if kind == 11:
                buf.append(f",Nobody {i},,,\r\n")
                invalid += 1
            elif kind == 23:
                buf.append(f"+1415,Short {i},,,\r\n")
                invalid += 1
            elif kind == 37:
                buf.append(f"+1{4150000000 + i - 10},Again {i},again,,\r\n")  # row i - 10
                duplicates += 1
            else:
                n = 4150000000 + i
                phone = f"({str(n)[:3]}) {str(n)[3:6]}-{str(n)[6:]}" if i % 3 == 0 else f"+1{n}"
                buf.append(f'{phone},"Person {i}","t{i % 7}|all",plan{i % 4},City {i % 100}\r\n')
            if len(buf) >= 10_000:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    return {"total": rows, "invalid": invalid, "duplicates": duplicates, "updated": 0,
            "created": rows - invalid - duplicates}


class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path, headers={"X-API-Key": self.key})
        resp = conn.getresponse()
        return json.loads(resp.read())

    def upload(self, path: Path, fields: dict) -> tuple[int, dict]:
        """A multipart POST streamed from the file (never read whole here either)."""
        boundary = "bench" + secrets.token_hex(8)
        head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields.items())
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                 "Content-Type: text/csv\r\n\r\n")
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = len(head.encode()) + path.stat().st_size + len(tail)

        def body():
            yield head.encode()
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk
            yield tail

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("POST", "/api/contacts/import", body=body(), headers={
            "X-API-Key": self.key, "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(size)})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())


class RssSampler:
    """Peak RSS of a process tree (the pool: its supervisor and its worker processes), sampled."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every = pid, every
        self.peak_tree = self.peak_one = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                family = [root, *root.children(recursive=True)]
                rss = []
                for p in family:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.peak_tree = max(self.peak_tree, sum(rss))
                self.peak_one = max(self.peak_one, max(rss or [0]))
                self.samples.append((time.monotonic(), max(rss or [0])))
            except psutil.Error:
                pass
            self._stop.wait(self.every)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def main() -> None:
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else ROWS
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("BENCH_DATABASE_NAME", "wa_bench_import")
    from bench.bench_messages import prepare_environment, server_meter, stop_stack

    load_at_start = os.getloadavg()[0]
    keep = prepare_environment()
    os.environ["MAX_CONTACTS_PER_ORG"] = str(rows * 2)  # the cap is not what is measured
    from config import settings

    settings.override(MAX_CONTACTS_PER_ORG=rows * 2)
    procs = Processes(keep["data_dir"])
    meter: ServerMeter = server_meter(keep)
    import atexit

    def cleanup() -> None:
        stop_stack(keep, procs)

    atexit.register(cleanup)
    try:
        result = run(rows, keep, procs, meter)
    finally:
        cleanup()
    report(result, (load_at_start, os.getloadavg()[0]), meter.notes)


def run(rows: int, keep: dict, procs: Processes, meter: ServerMeter) -> dict:
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats
    from bench.bench_messages import make_org_and_key
    from workers.embedded import free_port

    csv_path = keep["data_dir"] / "contacts.csv"
    print(f"bench: writing {rows} rows ...", flush=True)
    expected = make_csv(csv_path, rows)
    _, key = make_org_and_key("Import bench")
    port = free_port()
    api_proc = procs.start("api", ["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
                                   "--bind", f"127.0.0.1:{port}", *GUNICORN_SHAPE])
    meter.add("api", api_proc.pid)
    api = Api(port, key)

    def up() -> bool:
        try:
            api.get("/health")
            return True
        except (OSError, ValueError):
            return False

    wait_until(up, 60, "the api")
    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    pool = procs.start("pool-default", ["-m", "workers", "run", "--pool", "default", "--processes", "1"])
    meter.add("pool:default", pool.pid)
    wait_until(lambda: any(b["name"] == "default" and b["pid"] not in before
                           for b in live_heartbeats(redis_client(), "pool")), 90, "the default pool")
    time.sleep(1)  # let the pool settle: its idle RSS is the baseline
    sampler = RssSampler(pool.pid).start()
    time.sleep(0.5)
    idle_rss = sampler.peak_one

    print(f"bench: uploading {csv_path.stat().st_size / 1e6:.1f} MB and importing ...", flush=True)
    upload: dict = {}

    def whole() -> dict:
        started = time.perf_counter()
        status, body = api.upload(csv_path, {"default_region": "US"})
        upload["seconds"] = time.perf_counter() - started
        if status != 202:
            raise SystemExit(f"bench: the upload answered {status}: {body}")
        path = f"/api/contacts/imports/{body['id']}"
        return wait_until(lambda: (b := api.get(path))["status"] in ("completed", "failed") and b, 3600,
                          "the import to finish", interval=0.25)

    final, reading = meter.measure(whole)
    sampler.stop()
    assert isinstance(final, dict)
    if final["status"] != "completed":
        raise SystemExit(f"bench: the import failed: {final.get('error')}")
    got = {k: final[k] for k in ("total", "created", "updated", "duplicates", "invalid")}
    from datetime import datetime

    worker_s = (datetime.fromisoformat(final["completed_at"]) - datetime.fromisoformat(final["started_at"]))
    return {"rows": rows, "bytes": csv_path.stat().st_size, "expected": expected, "got": got,
            "upload_s": upload["seconds"], "import_s": worker_s.total_seconds(), "wall_s": reading.wall,
            "reading": reading, "rss_peak": sampler.peak_one, "rss_tree": sampler.peak_tree, "rss_idle": idle_rss,
            "samples": sampler.samples}


def report(r: dict, load: tuple[float, float], notes: list[str]) -> None:
    mb = 1024 * 1024
    reading = r["reading"]
    rate = r["rows"] / r["import_s"]
    rows = [
        ("rows (file size)", f"{r['rows']:,} ({r['bytes'] / 1e6:.1f} MB)", ""),
        ("counts as expected", "yes" if r["got"] == r["expected"] else f"NO: {r['got']} != {r['expected']}",
         "true counts"),
        ("upload (202) seconds", f"{r['upload_s']:.1f}", ""),
        ("import: worker started -> completed", f"{r['import_s']:.1f} s", ""),
        ("import rate", f"{rate:,.0f} rows/s", ""),
        ("end to end (upload + import)", f"{r['rows'] / r['wall_s']:,.0f} rows/s", ""),
        ("server CPU, all processes", f"{reading.cpu:.1f} s ({reading.cpu * 1e6 / r['rows']:.0f} us/row)", ""),
        ("  api / pool / postgres / redis",
         " / ".join(f"{reading.of(g):.1f}" for g in ("api", "pool:", "postgres", "redis")) + " s", ""),
        ("worker peak RSS (idle before)", f"{r['rss_peak'] / mb:.0f} MB ({r['rss_idle'] / mb:.0f} MB)",
         f"< {GOALS['rss_mb']} MB, flat"),
        ("pool processes together, peak RSS", f"{r['rss_tree'] / mb:.0f} MB", ""),
    ]
    samples = r["samples"]
    if len(samples) > 10:  # flatness: RSS in the second half of the run against the first
        half = len(samples) // 2
        first, second = max(s for _, s in samples[:half]), max(s for _, s in samples[half:])
        rows.append(("worker RSS, 1st half / 2nd half peak", f"{first / mb:.0f} / {second / mb:.0f} MB",
                     "flat"))
    width = max(len(a) for a, _, _ in rows)
    print()
    print(f"Contact import benchmark (load average {load[0]:.1f} -> {load[1]:.1f})")
    print(f"| {'measure'.ljust(width)} | value | goal |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for a, b, c in rows:
        print(f"| {a.ljust(width)} | {b} | {c} |")
    for note in notes:
        print(f"- {note}")
    ok = r["got"] == r["expected"] and r["rss_peak"] < GOALS["rss_mb"] * mb
    print("result:", "goals met" if ok else "GOALS MISSED")


if __name__ == "__main__":
    main()
