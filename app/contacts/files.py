"""Where uploaded files live: the file storage interface and its local implementation.

An upload is written once (``save``, from a stream of chunks, never held in memory whole), read
back as a binary file by a worker (``open``, seekable: a resumed import seeks to where it was) and
deleted when done with. ``LocalFileStorage`` keeps files under ``DATA_DIR/files``; every process of
a deployment shares that directory (compose mounts one volume at ``/data`` in each). A write is
atomic: a file is complete under its key or not there.
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

from config import settings

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


class FileStorage(Protocol):
    def save(self, key: str, chunks: Iterable[bytes]) -> int: ...

    def open(self, key: str) -> BinaryIO: ...

    def delete(self, key: str) -> None: ...


class LocalFileStorage:
    """Files under one directory, a key being a relative path (letters, digits, ``_.-``, ``/``)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        if not _KEY_OK.match(key) or ".." in key.split("/"):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def save(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` under ``key``; returns the size. Whatever ``chunks`` raises leaves nothing."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        size = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def storage() -> FileStorage:
    """The configured file storage."""
    return LocalFileStorage(settings.data_dir / "files")
