"""``FileStorage`` behaves the same on the local filesystem and in an S3-compatible store.

The behaviour tests run against both ``LocalFileStorage`` (under ``tmp_path``) and
``S3FileStorage`` talking HTTP to a real S3 API: moto's standalone server (``moto[server]``,
``ThreadedMotoServer``, started once per test process in tests/storage/conftest.py). Why moto and
not MinIO: no package of PyPI or npm ships the MinIO server binary (the npm ``minio`` and PyPI
``minio`` packages are clients, ``@testcontainers/minio`` needs Docker), and this machine reaches
no other download site; moto implements the S3 calls used here (multipart uploads and their
abort, ranged GETs, HEAD, bucket creation) over real HTTP, signed requests included, so boto3's
client, its configuration and the error codes it reads are exercised as in production. Each test
has a bucket of its own (and a ``DATA_DIR`` of its own for the download cache).
"""
from __future__ import annotations

import contextlib
import random

import pytest
from botocore.exceptions import ClientError

from app.storage import media_storage
from app.storage.local import LocalFileStorage
from app.storage.s3 import MIN_PART_SIZE, S3FileStorage, s3_client

MiB = 1024 * 1024


def _data(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _leftovers(storage) -> list[str]:
    """Whatever a storage holds: files (temp files included) or objects and pending multipart uploads."""
    if isinstance(storage, LocalFileStorage):
        return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()) \
            if storage.root.exists() else []
    client = storage.client
    try:
        client.head_bucket(Bucket=storage.bucket)
    except ClientError:
        return []  # not even the bucket
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])]
    uploads = [f"upload:{u['Key']}" for u in client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])]
    return objects + uploads


@contextlib.contextmanager
def _s3_calls(storage: S3FileStorage):
    """The S3 operations (name, body length) the storage's client makes inside the block."""
    calls: list[tuple[str, int | None]] = []

    def record(params, model, **_):
        body = params.get("Body")
        calls.append((model.name, None if body is None else len(body)))

    events = storage.client.meta.events
    events.register("provide-client-params.s3", record)
    try:
        yield calls
    finally:
        events.unregister("provide-client-params.s3", record)


# ----------------------------------------------------------------------------- both implementations


def test_a_file_of_several_parts_round_trips(storage):
    data = _data(11 * MiB + 12345)  # three 5 MiB parts on S3 (5 + 5 + 1)
    assert storage.save("media/big.bin", _chunks(data, 700 * 1024 + 3)) == len(data)
    assert storage.size("media/big.bin") == len(data)
    with storage.open("media/big.bin") as fh:
        head = fh.read(1000)
        rest = fh.read()
    assert head + rest == data


def test_small_and_empty_files_round_trip(storage):
    assert storage.save("a/small", [b"hel", b"lo"]) == 5
    assert storage.save("a/empty", iter([])) == 0
    with storage.open("a/small") as fh:
        assert fh.read() == b"hello"
    with storage.open("a/empty") as fh:
        assert fh.read() == b""
    assert storage.size("a/small") == 5 and storage.size("a/empty") == 0


def test_save_replaces_the_file(storage):
    storage.save("k", [b"first version"])
    storage.save("k", [b"second"])
    with storage.open("k") as fh:
        assert fh.read() == b"second"
    assert storage.size("k") == 6


def test_read_range_at_the_start_in_the_middle_and_at_the_end(storage):
    data = _data(300 * 1024)
    storage.save("r/file", _chunks(data, 64 * 1024))
    assert b"".join(storage.read_range("r/file", 0, 100)) == data[:100]
    middle = list(storage.read_range("r/file", 1000, 50_000, chunk_size=8192))
    assert b"".join(middle) == data[1000:51_000]
    assert all(len(c) <= 8192 for c in middle) and len(middle) > 1
    assert b"".join(storage.read_range("r/file", len(data) - 50, 50)) == data[-50:]
    # a range running past the end gives what there is; one starting past it, nothing
    assert b"".join(storage.read_range("r/file", len(data) - 10, 100)) == data[-10:]
    assert b"".join(storage.read_range("r/file", len(data) + 5, 10)) == b""


def test_missing_file(storage):
    assert storage.size("no/such/file") is None
    with pytest.raises(FileNotFoundError):
        storage.open("no/such/file")
    with pytest.raises(FileNotFoundError):
        list(storage.read_range("no/such/file", 0, 10))


def test_delete(storage):
    storage.save("d/file", [b"x" * 10])
    storage.delete("d/file")
    assert storage.size("d/file") is None
    storage.delete("d/file")  # again: nothing there, no error
    storage.delete("d/never-was")
    assert _leftovers(storage) == []


@pytest.mark.parametrize("before_failure", [1024, 6 * MiB + 1], ids=["within-one-part", "after-a-part"])
def test_chunks_that_raise_leave_nothing(storage, before_failure):
    """The error reaches the caller; no object, no temp file, no pending multipart upload, and a
    file already under the key is untouched."""
    storage.save("f/kept", [b"old content"])

    def failing():
        yield from _chunks(_data(before_failure), MiB)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        storage.save("f/new", failing())
    with pytest.raises(RuntimeError, match="client went away"):
        storage.save("f/kept", failing())
    assert storage.size("f/new") is None
    with storage.open("f/kept") as fh:
        assert fh.read() == b"old content"
    assert _leftovers(storage) == ["f/kept"]


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "a/..", "/abs", "a//b", "", "a\\b", "é"])
def test_keys_that_are_not_storage_keys_are_refused(storage, key):
    with pytest.raises(ValueError, match="not a storage key"):
        storage.save(key, [b"x"])
    with pytest.raises(ValueError):
        storage.open(key)
    with pytest.raises(ValueError):
        list(storage.read_range(key, 0, 1))
    with pytest.raises(ValueError):
        storage.size(key)
    with pytest.raises(ValueError):
        storage.delete(key)
    with pytest.raises(ValueError):
        storage.local_path(key)
    assert _leftovers(storage) == []


def test_local_path_has_the_content(storage):
    data = _data(200 * 1024)
    storage.save("p/photo.jpg", _chunks(data, 50_000))
    path = storage.local_path("p/photo.jpg")
    assert path.read_bytes() == data
    assert storage.local_path("p/photo.jpg") == path


# ----------------------------------------------------------------------------- S3 only


def test_s3_uploads_parts_as_the_chunks_come(s3_storage):
    """Parts of ``part_size`` are sent while the chunks are still being read (never the whole file
    in memory), completed into one object; a file of one part or less is one PutObject."""
    data = _data(11 * MiB)
    parts_sent_when_asked: list[int] = []

    with _s3_calls(s3_storage) as calls:
        def chunks():
            for chunk in _chunks(data, MiB):
                parts_sent_when_asked.append(sum(1 for name, _ in calls if name == "UploadPart"))
                yield chunk

        s3_storage.save("m/big", chunks())
    uploads = [(name, n) for name, n in calls if name in ("CreateMultipartUpload", "UploadPart", "PutObject",
                                                        "CompleteMultipartUpload")]
    assert uploads == [("CreateMultipartUpload", None), ("UploadPart", 5 * MiB), ("UploadPart", 5 * MiB),
                       ("UploadPart", MiB), ("CompleteMultipartUpload", None)]
    # the first part went out once 6 MiB had been read, before the 7th chunk was asked for
    assert parts_sent_when_asked == [0] * 6 + [1] * 5
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="m/big")
    assert head["ETag"].strip('"').endswith("-3") and head["ContentLength"] == len(data)

    with _s3_calls(s3_storage) as calls:
        s3_storage.save("m/one-part", _chunks(_data(MIN_PART_SIZE), MiB))
    assert [name for name, _ in calls if name != "HeadBucket"] == ["PutObject"]
    assert s3_storage.size("m/one-part") == MIN_PART_SIZE


def test_s3_read_range_asks_for_the_range_only(s3_storage):
    s3_storage.save("m/f", [_data(100_000)])
    seen = []

    def record(params, **_):
        seen.append(params.get("Range"))

    s3_storage.client.meta.events.register("provide-client-params.s3.GetObject", record)
    try:
        assert len(b"".join(s3_storage.read_range("m/f", 10, 20))) == 20
    finally:
        s3_storage.client.meta.events.unregister("provide-client-params.s3.GetObject", record)
    assert seen == ["bytes=10-29"]


def test_s3_local_path_downloads_once_into_the_cache(s3_storage, s3_settings):
    from config import settings

    data = _data(3 * MiB)
    s3_storage.save("media/7/file.ogg", _chunks(data, MiB))
    path = s3_storage.local_path("media/7/file.ogg")
    assert path == settings.data_dir / "cache" / "s3" / "media" / "7" / "file.ogg"
    assert path.read_bytes() == data
    inode = path.stat().st_ino

    with _s3_calls(s3_storage) as calls:
        assert s3_storage.local_path("media/7/file.ogg") == path
    assert "GetObject" not in [name for name, _ in calls], "the cached copy is used again"
    assert path.stat().st_ino == inode

    path.write_bytes(b"truncated")  # a copy of another size is not the object's: fetched again
    assert s3_storage.local_path("media/7/file.ogg").read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.ogg"], "no temp file left"

    s3_storage.delete("media/7/file.ogg")
    assert not path.exists(), "delete drops the cached copy too"
    with pytest.raises(FileNotFoundError):
        s3_storage.local_path("media/7/file.ogg")


def test_s3_bucket_is_created_at_first_use(s3_storage):
    client = s3_storage.client
    with pytest.raises(ClientError):
        client.head_bucket(Bucket=s3_storage.bucket)
    assert s3_storage.size("x") is None  # first use
    client.head_bucket(Bucket=s3_storage.bucket)
    s3_storage.save("x", [b"1"])
    assert s3_storage.size("x") == 1


def test_s3_bucket_made_meanwhile_by_another_process_is_fine(s3_settings, override_settings, monkeypatch):
    """head_bucket says missing, then another process creates it first: BucketAlreadyOwnedByYou."""
    override_settings(S3_REGION="eu-west-1")  # where S3 (and moto) answer a second create that way
    storage = S3FileStorage.from_settings(part_size=MIN_PART_SIZE)
    client = storage.client
    client.create_bucket(Bucket=storage.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

    def head_bucket(**_):
        raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")

    monkeypatch.setattr(client, "head_bucket", head_bucket)
    storage.save("k", [b"data"])
    assert storage.size("k") == 4


def test_s3_client_configuration(s3_settings, s3_endpoint, override_settings):
    storage = S3FileStorage.from_settings()
    assert storage.part_size == 8 * MiB and storage.bucket == s3_settings
    config = storage.client.meta.config
    assert storage.client.meta.endpoint_url == s3_endpoint
    assert config.s3 == {"addressing_style": "path"}
    assert config.connect_timeout and config.read_timeout and config.retries["total_max_attempts"] > 1
    assert S3FileStorage.from_settings().client is storage.client, "one client per process"

    override_settings(S3_ENDPOINT_URL="", S3_REGION="eu-central-1")
    aws = S3FileStorage.from_settings().client
    assert aws is not storage.client
    assert aws.meta.endpoint_url == "https://s3.eu-central-1.amazonaws.com" and aws.meta.region_name == "eu-central-1"
    assert not (aws.meta.config.s3 or {}).get("addressing_style")
    assert s3_client("", "eu-central-1", "testing", "testing") is aws


def test_s3_part_size_below_the_minimum_is_refused(s3_settings):
    with pytest.raises(ValueError, match="part_size"):
        S3FileStorage.from_settings(part_size=MIN_PART_SIZE - 1)


def test_media_storage_follows_the_setting(s3_settings, override_settings, tmp_path):
    storage = media_storage()
    assert isinstance(storage, S3FileStorage) and storage.bucket == s3_settings
    storage.save("media/1", [b"abc"])
    assert media_storage().size("media/1") == 3

    override_settings(MEDIA_STORAGE="local", DATA_DIR=str(tmp_path / "local"))
    local = media_storage()
    assert isinstance(local, LocalFileStorage) and local.root == tmp_path / "local" / "media"
