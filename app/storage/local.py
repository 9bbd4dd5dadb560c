"""``LocalFileStorage``: files under one directory of the local filesystem (``app/storage``)."""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")


def check_key(key: str) -> str:
    """``key`` when it is a storage key (letters, digits, ``_.-`` and ``/``, no ``..``), else ValueError."""
    if not _KEY_OK.match(key) or ".." in key.split("/"):
        raise ValueError(f"not a storage key: {key!r}")
    return key


class LocalFileStorage:
    """Files under ``root``, a key being a relative path."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

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

    def read_range(self, key: str, start: int, length: int, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        with open(self.path(key), "rb") as fh:
            fh.seek(start)
            while length > 0:
                chunk = fh.read(min(chunk_size, length))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        return self.path(key)
