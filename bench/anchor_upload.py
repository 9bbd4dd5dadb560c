"""The anchor of the media-upload benchmark: the least an upload endpoint can do, served the same way.

``bench.anchor_upload:app`` answers ``POST /api/media`` (the same multipart/form-data body the
product takes) by writing the raw request stream to a file under ``DATA_DIR/anchor-uploads`` in
256 KiB reads, with no parsing, no type check, no hash, no row and no job: 201 with the size
written. It is the floor cost of receiving N MB over HTTP and putting them on disk, under the
product's gunicorn config and shape (bench/bench_media_upload.py starts it).
"""
from __future__ import annotations

import secrets

from flask import Flask, request

from config import settings

READ_BYTES = 256 * 1024

app = Flask("anchor_upload")


@app.post("/api/media")
def upload():
    folder = settings.data_dir / "anchor-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / secrets.token_hex(8)
    size = 0
    with open(path, "wb") as out:
        while chunk := request.stream.read(READ_BYTES):
            out.write(chunk)
            size += len(chunk)
    return {"id": path.name, "size": size, "status": "stored"}, 201

