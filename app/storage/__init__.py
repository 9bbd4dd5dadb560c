"""Where files live: one interface (``FileStorage``) for contact-import uploads and media.

A file is written once under a key (``save``, from a stream of chunks, never held in memory whole,
atomic: complete under its key or not there), read back whole or by byte range, and deleted.
Keys are relative paths of letters, digits, ``_.-`` and ``/`` that the product chooses (media are
named by their id, never by the user's file name).

- ``import_storage()``: contact-import uploads, on the local filesystem under ``DATA_DIR/files``
  (a worker reads them seekably and deletes them once imported).
- ``media_storage()``: media, where ``MEDIA_STORAGE`` says: ``local`` (``DATA_DIR/media``, the
  laptop case; every process of a deployment shares that directory) or ``s3`` (any S3-compatible
  store: AWS, MinIO, ...).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from config import settings


class FileStorage(Protocol):
    def save(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` under ``key`` (replacing what was there); the size written."""

    def open(self, key: str) -> BinaryIO:
        """The file, readable from its start (FileNotFoundError when there is none)."""

    def read_range(self, key: str, start: int, length: int, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """``length`` bytes from ``start``, in chunks."""

    def size(self, key: str) -> int | None:
        """The file's size, None when there is none."""

    def delete(self, key: str) -> None:
        """Remove the file (nothing when there is none)."""

    def local_path(self, key: str) -> Path:
        """A local file with the content (the file itself, or a cached copy of a remote one), for
        code that needs a path (Pillow, a browser's file input, a multipart upload to Meta)."""


def import_storage() -> FileStorage:
    """Where contact-import uploads live."""
    from app.storage.local import LocalFileStorage

    return LocalFileStorage(settings.data_dir / "files")


def media_storage() -> FileStorage:
    """Where media live (``MEDIA_STORAGE``)."""
    if settings.MEDIA_STORAGE == "s3":
        from app.storage.s3 import S3FileStorage

        return S3FileStorage.from_settings()
    from app.storage.local import LocalFileStorage

    return LocalFileStorage(settings.data_dir / "media")
