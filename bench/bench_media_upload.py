"""Benchmark of media uploads: ``POST /api/media`` (multipart/form-data, field ``file``) streamed
through the product's parser and content checks into storage, beside an anchor that only writes
the raw request body to disk; prints throughput, the server CPU per upload and the api's memory.

  (1) documents: 100 MB PDF-looking files (``%PDF-1.7`` then random bytes, each upload distinct),
      one at a time, 5 of them: wall time per upload and MB/s, the same bodies to the anchor;
  (2) memory: the RSS of the api's gunicorn worker processes, sampled every 25 ms during each
      document upload, above the RSS it had just before: the goal is flat, under 50 MB for 100 MB;
  (3) CPU: server CPU seconds per document upload, ours beside the anchor's, and the ratio;
  (4) images: 200 JPEGs of ~1 MB (random noise made with Pillow, each distinct) by 4 client
      threads on keep-alive connections: uploads/s and MB/s until every one is ``ready`` with its
      thumbnail (the processing by the ``default`` pool is counted), beside the anchor.

Every process involved runs as in production: the api under gunicorn (the api's own config, 2
workers x 4 threads) parses the upload, checks it (type by magic bytes, sha256, the kind's limit)
and writes it to local storage (DATA_DIR/media), writes the row and enqueues ``media.process``;
one ``default`` pool process runs it; Postgres and Redis serve them. The anchor,
``bench.anchor_upload:app`` (a Flask app writing ``request.stream`` to a file in 256 KiB reads,
no parsing), runs under the same gunicorn config and shape, beside the api in the same run; the
two are measured in turn, upload by upload. CPU is that of the server side only (bench/common.py
``ServerMeter``): the api (or the anchor) with its workers, the pool, Postgres and Redis, not this
process (which streams the bodies from files and polls the database for ``ready``).

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench_media``, is recreated on that server; give Redis a database of its own), else embedded
servers in a temporary directory. Run: ``.venv/bin/python bench/bench_media_upload.py``
(``--quick``: 2 documents of 20 MB and 40 images; ``--doc-mb N``, ``--documents N``,
``--images N`` for other sizes, ``--images 0`` to skip (4)).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Processes, ServerMeter, wait_for_http, wait_until  # noqa: E402

GUNICORN_SHAPE = ["--workers", "2", "--threads", "4", "--keep-alive", "30"]
DOC_BYTES, DOCUMENTS = 100_000_000, 5
IMAGES, IMAGE_THREADS, IMAGE_SIDE, IMAGE_QUALITY = 200, 4, 1050, 90  # ~1.0 MB of noise as JPEG
SAMPLE_S = 0.025
SEND_BYTES = 1 << 20
GOALS = {"rss_mb": 50}
MB, MiB = 1_000_000, 1024 * 1024
SHARED = ("pool:", "postgres", "redis")  # server groups that are not the api or the anchor


# ----------------------------------------------------------------------------- the bodies


class Body:
    """One file to upload: its name, claimed type, size and chunks (read from disk as sent)."""

    def __init__(self, filename: str, content_type: str, size: int, chunks, sha256: str = ""):
        self.filename, self.content_type, self.size, self.chunks, self.sha256 = (
            filename, content_type, size, chunks, sha256)


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left > 0:
            out.write(os.urandom(min(left, 1 << 20)))
            left -= 1 << 20


def document(base: Path, size: int, i: int) -> Body:
    """A PDF-looking file of ``size`` bytes: a header naming upload ``i`` (so every upload has
    other bytes), then the random bytes of ``base`` from the same offset."""
    head = f"%PDF-1.7\n% bench upload {i} {secrets.token_hex(8)}\n".encode()

    def chunks():
        yield head
        with open(base, "rb") as fh:
            fh.seek(len(head))
            left = size - len(head)
            while left > 0 and (chunk := fh.read(min(SEND_BYTES, left))):
                left -= len(chunk)
                yield chunk

    digest = hashlib.sha256()
    for chunk in chunks():
        digest.update(chunk)
    return Body(f"report-{i}.pdf", "application/pdf", size, chunks, digest.hexdigest())


def make_images(folder: Path, n: int) -> list[Path]:
    """``n`` distinct JPEGs of random noise (none holding, by chance, a marker the polyglot check
    refuses: ``<svg``, ``<?php``, a ZIP record ...)."""
    import io

    from PIL import Image

    from app.media.checks import _IMAGE_MARKERS

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    while len(paths) < n:
        image = Image.frombytes("RGB", (IMAGE_SIDE, IMAGE_SIDE), os.urandom(IMAGE_SIDE * IMAGE_SIDE * 3))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=IMAGE_QUALITY)
        data = out.getvalue()
        if _IMAGE_MARKERS.search(data) or b"PK\x03\x04" in data:
            continue
        path = folder / f"noise-{len(paths)}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def image(path: Path) -> Body:
    def chunks():
        with open(path, "rb") as fh:
            while chunk := fh.read(SEND_BYTES):
                yield chunk

    return Body(path.name, "image/jpeg", path.stat().st_size, chunks)


# ----------------------------------------------------------------------------- HTTP


class Target:
    """The api or the anchor, on its port; ``upload`` streams one multipart body (Content-Length
    computed, the file read from disk chunk by chunk, never whole in memory here)."""

    def __init__(self, name: str, group: str, port: int, key: str, master_pid: int):
        self.name, self.group, self.port, self.key, self.master_pid = name, group, port, key, master_pid

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def upload(self, conn: http.client.HTTPConnection, body: Body, fields: dict | None = None
               ) -> tuple[int, dict, float]:
        boundary = "bench" + secrets.token_hex(12)
        head = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in (fields or {}).items())
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{body.filename}"\r\n'
                 f"Content-Type: {body.content_type}\r\n\r\n")
        tail = f"\r\n--{boundary}--\r\n".encode()

        def stream():
            yield head.encode()
            yield from body.chunks()
            yield tail

        started = time.perf_counter()
        conn.request("POST", "/api/media", body=stream(), headers={
            "X-API-Key": self.key, "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head.encode()) + body.size + len(tail))})
        resp = conn.getresponse()
        payload = resp.read()
        took = time.perf_counter() - started
        return resp.status, json.loads(payload or b"{}"), took


def start_gunicorn(procs: Processes, meter: ServerMeter, name: str, group: str, app: str, key: str) -> Target:
    """``app`` under the api's gunicorn config and shape, on a free port, once it answers."""
    from workers.embedded import free_port

    port = free_port()
    proc = procs.start(name, ["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", app,
                              "--bind", f"127.0.0.1:{port}", *GUNICORN_SHAPE])
    meter.add(group, proc.pid)

    wait_for_http(port, f"gunicorn {app}")
    import psutil

    wait_until(lambda: len(psutil.Process(proc.pid).children()) >= 2, 30, f"the workers of {app}")
    return Target(name, group, port, key, proc.pid)


# ----------------------------------------------------------------------------- memory


class WorkerRss:
    """RSS of a gunicorn master's worker processes, sampled every SAMPLE_S while in the block:
    each worker's RSS when the block starts is its idle RSS, and what counts is the largest rise
    of one worker above its own idle RSS (the worker that took the upload)."""

    def __init__(self, master_pid: int):
        import psutil

        self.master = psutil.Process(master_pid)
        self.idle: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.trace: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()

    def read(self) -> dict[int, int]:
        import psutil

        found = {}
        for p in self.master.children():
            try:
                found[p.pid] = p.memory_info().rss
            except psutil.Error:
                pass
        return found

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            now = self.read()
            self.trace.append((time.monotonic(), now))
            for pid, rss in now.items():
                self.peak[pid] = max(self.peak.get(pid, 0), rss)

    def __enter__(self) -> WorkerRss:
        self.idle = self.read()
        self.peak = dict(self.idle)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        now = self.read()
        for pid, rss in now.items():
            self.peak[pid] = max(self.peak.get(pid, 0), rss)

    def rise(self) -> tuple[int, int, int]:
        """(largest rise above idle, that worker's idle RSS, its peak RSS), in bytes. A worker
        that was not there at the start (a replaced one) counts from zero."""
        pid = max(self.peak, key=lambda p: self.peak[p] - self.idle.get(p, 0))
        return self.peak[pid] - self.idle.get(pid, 0), self.idle.get(pid, 0), self.peak[pid]

    def profile(self, points: int = 10) -> list[float]:
        """The rising worker's RSS above idle (MiB) at ``points`` moments spread over the block."""
        if not self.trace:
            return []
        pid = max(self.peak, key=lambda p: self.peak[p] - self.idle.get(p, 0))
        idle = self.idle.get(pid, 0)
        step = max(1, len(self.trace) // points)
        return [(s.get(pid, idle) - idle) / MiB for _, s in self.trace[::step]][:points]


# ----------------------------------------------------------------------------- the runs


def media_status(media_id: str) -> tuple[str, bool] | None:
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        row = session.execute(text("SELECT status, thumbnail_key IS NOT NULL FROM media WHERE id = :id"),
                              {"id": media_id}).first()
    return (row[0], row[1]) if row else None


def processed_count(ids: list[str]) -> int:
    """How many of ``ids`` are done: ready (with their thumbnail, images) or failed."""
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        return session.scalar(text("SELECT count(*) FROM media WHERE id = ANY(:ids) AND (status = 'failed' OR "
                                   "(status = 'ready' AND (kind <> 'image' OR thumbnail_key IS NOT NULL)))"),
                              {"ids": ids})


def failed_of(ids: list[str]) -> list[tuple[str, str]]:
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        return list(session.execute(text("SELECT id, error FROM media WHERE id = ANY(:ids) AND status = 'failed'"),
                                    {"ids": ids}).all())


def stored_all(target: Target, answer: dict, sent: Body) -> bool:
    """The api stored the file's bytes; the anchor the whole body (the file and its multipart framing)."""
    size = answer.get("size") or 0
    return size == sent.size if target.group == "api" else sent.size < size < sent.size + 1024


def expect_created(target: Target, status: int, body: dict, sent: Body) -> None:
    if status != 201:
        raise SystemExit(f"bench: {target.name} answered {status} to {sent.filename}: {body}")
    if not stored_all(target, body, sent):
        raise SystemExit(f"bench: {target.name} stored {body.get('size')} bytes of {sent.size}: {body}")
    if target.group == "api" and sent.sha256 and body.get("sha256") != sent.sha256:
        raise SystemExit(f"bench: the api's sha256 {body.get('sha256')} is not that of the bytes sent")


def server_cpu(reading, target: Target, other: Target) -> dict:
    """The reading's CPU without the other server (idle beside it), split by group."""
    groups = {k: v for k, v in reading.groups.items() if k != other.group}
    return {"total": sum(groups.values()), "groups": groups}


def upload_document(target: Target, other: Target, meter: ServerMeter, body: Body) -> dict:
    """One document upload to ``target``: wall time to its answer, the worker's RSS rise during it,
    and the server CPU until the api's medium is ready (the anchor has nothing after its answer)."""
    out: dict = {}

    def once():
        conn = target.connection()
        with WorkerRss(target.master_pid) as rss:
            status, answer, took = target.upload(conn, body)
        conn.close()
        expect_created(target, status, answer, body)
        out.update(seconds=took, rss=rss.rise(), profile=rss.profile(), samples=len(rss.trace))
        if target.group == "api":
            done = wait_until(lambda: (s := media_status(answer["id"])) and s[0] in ("ready", "failed") and s,
                              120, "the document to be processed", interval=0.05)
            if done[0] != "ready":
                raise SystemExit(f"bench: the document {answer['id']} failed: {failed_of([answer['id']])}")
            out["ready_after"] = time.perf_counter() - started
        return out

    started = time.perf_counter()
    _, reading = meter.measure(once)
    out["cpu"] = server_cpu(reading, target, other)
    return out


def upload_images(target: Target, other: Target, meter: ServerMeter, paths: list[Path]) -> dict:
    """Every image of ``paths`` by IMAGE_THREADS client threads (one keep-alive connection each);
    for the api, until every medium is ready with its thumbnail."""
    ids: list[str] = []
    errors: list = []
    lock = threading.Lock()
    uploaded: dict = {}

    def worker(mine: list[Path]) -> None:
        conn = target.connection()
        try:
            for path in mine:
                body = image(path)
                status, answer, _ = target.upload(conn, body)
                if status != 201 or not stored_all(target, answer, body):
                    errors.append((status, answer))
                    return
                with lock:
                    ids.append(answer["id"])
        finally:
            conn.close()

    def run():
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(paths[w::IMAGE_THREADS],)) for w in range(IMAGE_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        uploaded["seconds"] = time.perf_counter() - started
        if errors:
            raise SystemExit(f"bench: an image upload to {target.name} failed: {errors[0]}")
        if target.group == "api":
            wait_until(lambda: processed_count(ids) >= len(ids), 600, "the images to be processed", interval=0.25)
            failed = failed_of(ids)
            if failed:
                raise SystemExit(f"bench: {len(failed)} images failed to process, e.g. {failed[0]}")

    with WorkerRss(target.master_pid) as rss:
        _, reading = meter.measure(run)
    return {"n": len(ids), "bytes": sum(p.stat().st_size for p in paths), "upload_s": uploaded["seconds"],
            "wall": reading.wall, "cpu": server_cpu(reading, target, other), "rss": rss.rise()}


def warm_up(targets: list[Target], folder: Path) -> None:
    """A few small uploads of each kind to every worker of both servers (imports, pools, caches)."""
    base = folder / "warm.bin"
    write_random(base, 2 * MB)
    warm_images = make_images(folder / "warm-images", 8)
    for target in targets:
        bodies = [document(base, 2 * MB, 10_000 + i) for i in range(8)] + [image(p) for p in warm_images]
        errors: list = []

        def send(mine, target=target, errors=errors):
            conn = target.connection()
            for body in mine:
                status, answer, _ = target.upload(conn, body)
                if status not in (200, 201):
                    errors.append((status, answer))
            conn.close()

        threads = [threading.Thread(target=send, args=(bodies[w::4],)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit(f"bench: a warm-up upload to {target.name} failed: {errors[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 documents of 20 MB and 40 images")
    parser.add_argument("--doc-mb", type=int, help=f"document size in MB (default {DOC_BYTES // MB})")
    parser.add_argument("--documents", type=int, help=f"document uploads to each server (default {DOCUMENTS})")
    parser.add_argument("--images", type=int, help=f"1 MB image uploads to each server (default {IMAGES}; 0: none)")
    args = parser.parse_args()
    doc_bytes = (args.doc_mb * MB if args.doc_mb else 20 * MB if args.quick else DOC_BYTES)
    documents = args.documents or (2 if args.quick else DOCUMENTS)
    images = args.images if args.images is not None else (40 if args.quick else IMAGES)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("BENCH_DATABASE_NAME", "wa_bench_media")
    from bench.bench_messages import prepare_environment, server_meter, stop_stack

    load_at_start = os.getloadavg()[0]
    keep = prepare_environment()
    # the quota is not what is measured: room for every upload of the run
    os.environ.update({"MEDIA_QUOTA_BYTES": str(50 * 1024 ** 3), "MEDIA_QUOTA_FILES": "1000000"})
    procs = Processes(keep["data_dir"])
    meter: ServerMeter = server_meter(keep)
    import atexit

    def cleanup() -> None:
        stop_stack(keep, procs)
        for sub in ("media", "anchor-uploads", "inputs"):  # GBs of uploads; the logs stay
            shutil.rmtree(keep["data_dir"] / sub, ignore_errors=True)

    atexit.register(cleanup)
    try:
        result = run(keep, procs, meter, doc_bytes, documents, images)
    finally:
        cleanup()
    report(result, (load_at_start, os.getloadavg()[0]), meter.notes)


def run(keep: dict, procs: Processes, meter: ServerMeter, doc_bytes: int, documents: int, images: int) -> dict:
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats
    from bench.bench_messages import make_org_and_key

    _, key = make_org_and_key("Media bench")
    inputs = keep["data_dir"] / "inputs"
    inputs.mkdir()
    print("bench: starting the api, the anchor and a default pool ...", flush=True)
    api = start_gunicorn(procs, meter, "api", "api", "wsgi:app", key)
    anchor = start_gunicorn(procs, meter, "anchor", "anchor", "bench.anchor_upload:app", key)
    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    pool = procs.start("pool-default", ["-m", "workers", "run", "--pool", "default", "--processes", "1"])
    meter.add("pool:default", pool.pid)
    wait_until(lambda: any(b["name"] == "default" and b["pid"] not in before
                           for b in live_heartbeats(redis_client(), "pool")), 90, "the default pool")

    print(f"bench: writing {doc_bytes / MB:.0f} MB of random bytes and {images} noise JPEGs ...", flush=True)
    base = inputs / "document.bin"
    write_random(base, doc_bytes)
    image_paths = make_images(inputs / "images", images) if images else []
    print("bench: warming up both servers ...", flush=True)
    warm_up([api, anchor], inputs)
    time.sleep(1)
    idle_before = sorted(WorkerRss(api.master_pid).read().values())

    results: dict = {"doc_bytes": doc_bytes, "api": [], "anchor": []}
    for i in range(documents):
        pair = (anchor, api) if i % 2 == 0 else (api, anchor)  # alternate who goes first
        for target in pair:
            other = api if target is anchor else anchor
            body = document(base, doc_bytes, i * 2 + (target is api))
            r = upload_document(target, other, meter, body)
            results[target.group].append(r)
            print(f"bench:   document {i + 1}/{documents} to {target.name}: {r['seconds']:.2f} s, "
                  f"{doc_bytes / MB / r['seconds']:.0f} MB/s, server CPU {r['cpu']['total']:.2f} s, "
                  f"worker RSS +{r['rss'][0] / MiB:.1f} MB", flush=True)
    results["idle_rss"] = (idle_before, sorted(WorkerRss(api.master_pid).read().values()))

    if image_paths:
        for target in (anchor, api):
            other = api if target is anchor else anchor
            print(f"bench: {len(image_paths)} images to {target.name}, {IMAGE_THREADS} threads ...", flush=True)
            results[f"images:{target.group}"] = upload_images(target, other, meter, image_paths)
    return results


# ----------------------------------------------------------------------------- the table


def report(r: dict, load: tuple[float, float], notes: list[str]) -> None:
    size_mb = r["doc_bytes"] / MB
    ours, base = r["api"], r["anchor"]
    n = len(ours)

    def med(values):
        return statistics.median(values)

    secs_o, secs_a = [x["seconds"] for x in ours], [x["seconds"] for x in base]
    cpu_o, cpu_a = [x["cpu"]["total"] for x in ours], [x["cpu"]["total"] for x in base]
    rise = max(x["rss"][0] for x in ours)
    rise_a = max(x["rss"][0] for x in base)
    worst = max(ours, key=lambda x: x["rss"][0])
    met = rise < GOALS["rss_mb"] * MiB

    def split(rows: list[dict]) -> str:
        groups: dict[str, float] = {}
        for x in rows:
            for g, v in x["cpu"]["groups"].items():
                groups[g] = groups.get(g, 0.0) + v / len(rows)
        return ", ".join(f"{g} {v:.2f}" for g, v in sorted(groups.items(), key=lambda kv: -kv[1]))

    table = [
        ("measure", "ours (POST /api/media)", "anchor (raw body to disk)", "ratio", "goal", "met?"),
        (f"(1) document {size_mb:.0f} MB x {n}, one at a time: wall per upload, median (min-max)",
         f"{med(secs_o):.2f} s ({min(secs_o):.2f}-{max(secs_o):.2f})",
         f"{med(secs_a):.2f} s ({min(secs_a):.2f}-{max(secs_a):.2f})", f"{med(secs_o) / med(secs_a):.2f}x", "", ""),
        ("(1) upload throughput, median", f"{size_mb / med(secs_o):.0f} MB/s", f"{size_mb / med(secs_a):.0f} MB/s",
         f"{med(secs_a) / med(secs_o):.0%}", "", ""),
        ("(1) 201 -> ready (media.process in the default pool), median",
         f"{med([x['ready_after'] - x['seconds'] for x in ours]) * 1000:.0f} ms", "-", "", "", ""),
        ("(2) api worker RSS above idle during the upload, worst of all",
         f"+{rise / MiB:.1f} MB ({worst['rss'][1] / MiB:.0f} -> {worst['rss'][2] / MiB:.0f} MB)",
         f"+{rise_a / MiB:.1f} MB", "", f"< {GOALS['rss_mb']} MB, flat", "met" if met else "MISSED"),
        ("(2) that upload's RSS above idle, over its course (MB)",
         " ".join(f"{v:.0f}" for v in worst["profile"]), "", "", "flat", ""),
        ("(2) api workers' idle RSS before / after the documents",
         " + ".join(f"{v / MiB:.0f}" for v in r["idle_rss"][0]) + " / "
         + " + ".join(f"{v / MiB:.0f}" for v in r["idle_rss"][1]) + " MB", "", "", "", ""),
        ("(3) server CPU per document upload, median (all processes)", f"{med(cpu_o):.2f} s",
         f"{med(cpu_a):.2f} s", f"{med(cpu_o) / med(cpu_a):.2f}x", "", ""),
        ("(3) server CPU per MB", f"{med(cpu_o) / size_mb * 1000:.1f} ms", f"{med(cpu_a) / size_mb * 1000:.1f} ms",
         "", "", ""),
        ("(3) by process, mean s", split(ours), split(base), "", "", ""),
    ]
    if "images:api" in r:
        io_, ia = r["images:api"], r["images:anchor"]
        mb_each = io_["bytes"] / io_["n"] / MB
        table += [
            (f"(4) {io_['n']} images of {mb_each:.2f} MB, {IMAGE_THREADS} threads: uploads/s until all ready",
             f"{io_['n'] / io_['wall']:.1f}/s ({io_['bytes'] / MB / io_['wall']:.1f} MB/s)",
             f"{ia['n'] / ia['wall']:.1f}/s ({ia['bytes'] / MB / ia['wall']:.1f} MB/s)",
             f"{ia['wall'] / io_['wall']:.0%}", "", ""),
            ("(4) uploads alone (all answered)", f"{io_['n'] / io_['upload_s']:.1f}/s",
             f"{ia['n'] / ia['upload_s']:.1f}/s", f"{ia['upload_s'] / io_['upload_s']:.0%}", "", ""),
            ("(4) server CPU per image, processing included", f"{io_['cpu']['total'] / io_['n'] * 1000:.1f} ms",
             f"{ia['cpu']['total'] / ia['n'] * 1000:.1f} ms",
             f"{io_['cpu']['total'] / ia['cpu']['total']:.2f}x", "", ""),
            ("(4) by process, ms per image",
             ", ".join(f"{g} {v / io_['n'] * 1000:.1f}" for g, v in sorted(io_["cpu"]["groups"].items(),
                                                                           key=lambda kv: -kv[1])),
             ", ".join(f"{g} {v / ia['n'] * 1000:.1f}" for g, v in sorted(ia["cpu"]["groups"].items(),
                                                                          key=lambda kv: -kv[1])), "", "", ""),
            ("(4) api worker RSS above idle during the images", f"+{io_['rss'][0] / MiB:.1f} MB",
             f"+{ia['rss'][0] / MiB:.1f} MB", "", "", ""),
        ]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    print()
    print(f"Media upload benchmark (gunicorn {GUNICORN_SHAPE[1]} workers x {GUNICORN_SHAPE[3]} threads; "
          f"load average {load[0]:.1f} -> {load[1]:.1f}; RSS sampled every {SAMPLE_S * 1000:.0f} ms, "
          f"~{med([x['samples'] for x in ours]):.0f} samples per document)")
    for k, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for note in notes:
        print(f"- {note}")
    print("result:", f"memory goal {'met' if met else 'MISSED'} "
                     f"(+{rise / MiB:.1f} MB above idle for a {size_mb:.0f} MB document; goal < {GOALS['rss_mb']} MB)")


if __name__ == "__main__":
    main()
