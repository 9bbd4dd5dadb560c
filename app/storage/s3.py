"""``S3FileStorage``: files as objects of one bucket of an S3-compatible store (AWS S3, MinIO, ...).

- ``save`` streams: chunks are gathered into parts of ``part_size`` (8 MiB; S3 refuses parts under
  5 MiB but the last) sent as one multipart upload, so at most one part is in memory. A file no
  larger than one part is a single PutObject. Whatever the chunks raise aborts the upload: no
  object, and no pending upload whose parts the store would keep (and bill) forever.
- ``read_range`` is a ranged GetObject; ``local_path`` downloads the object once into
  ``DATA_DIR/cache/s3/<key>`` (temp file, then ``os.replace``) and reuses that copy while its size
  is the object's (keys are written once: media are named by their id).
- One boto3 client per process and configuration (boto3 clients are thread-safe; the pid is part of
  the cache key so a forked worker never shares its parent's connections). Path-style addressing
  when an endpoint is given (MinIO and most self-hosted stores have no per-bucket host names);
  checksums only where the API requires them (stores other than AWS may not know the newer ones);
  bounded connect/read timeouts and the standard retry mode, so a stalled store fails a job
  instead of holding its thread.
- The bucket is created at first use when missing (once per process and bucket).
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.storage.local import check_key
from config import settings

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (but the last)

_MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@functools.lru_cache(maxsize=16)
def _client_for(pid: int, endpoint_url: str | None, region: str, access_key_id: str, secret_access_key: str) -> Any:
    config = Config(
        region_name=region or None,
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=32,  # the threads of a worker process or of a gunicorn worker
        s3={"addressing_style": "path"} if endpoint_url else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    credentials = {}
    if access_key_id:
        credentials = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key or None}
    # a Session of its own: boto3's default session is not safe to build clients from in threads
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config, **credentials)


def s3_client(endpoint_url: str | None, region: str, access_key_id: str = "", secret_access_key: str = "") -> Any:
    """This process's boto3 client for that store (made once)."""
    return _client_for(os.getpid(), endpoint_url or None, region, access_key_id, secret_access_key)


_buckets_ready: set[tuple[str, str]] = set()
_buckets_lock = threading.Lock()


class S3FileStorage:
    """Files as objects of ``bucket``, a key being the object's key."""

    def __init__(self, client: Any, bucket: str, cache_dir: Path, part_size: int = PART_SIZE):
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's smallest part)")
        self.client = client
        self.bucket = bucket
        self.cache_dir = cache_dir
        self.part_size = part_size

    @classmethod
    def from_settings(cls, part_size: int = PART_SIZE) -> S3FileStorage:
        client = s3_client(settings.S3_ENDPOINT_URL, settings.S3_REGION, settings.S3_ACCESS_KEY_ID,
                           settings.S3_SECRET_ACCESS_KEY)
        return cls(client, settings.S3_BUCKET, settings.data_dir / "cache" / "s3", part_size)

    # ------------------------------------------------------------------ the bucket

    def _ready(self) -> None:
        """Create the bucket if it is missing (checked once per process)."""
        marker = (str(self.client.meta.endpoint_url), self.bucket)
        if marker in _buckets_ready:
            return
        with _buckets_lock:
            if marker in _buckets_ready:
                return
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) not in _MISSING:
                    raise
                self._create_bucket()
            _buckets_ready.add(marker)

    def _create_bucket(self) -> None:
        region = self.client.meta.region_name
        params: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":  # us-east-1 takes no location constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**params)
            log.info("created bucket %s", self.bucket)
        except ClientError as exc:
            if _code(exc) != "BucketAlreadyOwnedByYou":  # another process was first
                raise

    # ------------------------------------------------------------------ FileStorage

    def save(self, key: str, chunks: Iterable[bytes]) -> int:
        """Write ``chunks`` under ``key``; returns the size. Whatever ``chunks`` raises leaves nothing."""
        check_key(key)
        self._ready()
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                # strictly more than a part: what is left at the end (1 byte to one part) is the last part
                while len(buffer) > self.part_size:
                    if upload_id is None:
                        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
                    parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer[:self.part_size])))
                    del buffer[:self.part_size]
            if upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
                return size
            parts.append(self._upload_part(key, upload_id, len(parts) + 1, bytes(buffer)))
            del buffer[:]
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            if upload_id is not None:
                self._abort(key, upload_id)
            raise
        return size

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> dict[str, Any]:
        answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception:  # the original error is the one to raise; this one is logged
            log.exception("could not abort the multipart upload %s of %s", upload_id, key)

    def open(self, key: str) -> BinaryIO:
        """The object's streaming body (``read(n)``, a context manager; close it)."""
        check_key(key)
        self._ready()
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(key) from None
            raise
        return cast(BinaryIO, answer["Body"])

    def read_range(self, key: str, start: int, length: int, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        check_key(key)
        if length <= 0:
            return
        self._ready()
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(key) from None
            if _code(exc) == "InvalidRange":  # starts at or past the end: nothing there, as a file reads
                return
            raise
        body = answer["Body"]
        try:
            while length > 0:
                chunk = body.read(min(chunk_size, length))
                if not chunk:
                    return
                length -= len(chunk)
                yield chunk
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        check_key(key)
        self._ready()
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def delete(self, key: str) -> None:
        check_key(key)
        self._ready()
        self.client.delete_object(Bucket=self.bucket, Key=key)  # no error when there is none
        (self.cache_dir / key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        """A cached copy of the object under ``cache_dir`` (FileNotFoundError when there is none)."""
        path = self.cache_dir / check_key(key)
        size = self.size(key)
        if size is None:
            raise FileNotFoundError(key)
        try:
            if path.stat().st_size == size:
                return path
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with self.open(key) as body, open(tmp, "wb") as out:
                while chunk := body.read(1024 * 1024):
                    out.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
