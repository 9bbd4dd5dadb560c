"""A real S3 API over HTTP for the storage tests: moto's standalone server, started once per test
process on a free port of this machine (tests/storage/test_storage.py says why moto)."""
from __future__ import annotations

import secrets

import pytest

# (the app is imported inside the fixtures: pytest may load this file before tests/conftest.py has
# pointed the environment at the test services, and config reads it once)


@pytest.fixture(scope="session")
def s3_endpoint():
    """The address of a running S3 server (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(override_settings, s3_endpoint, tmp_path):
    """Settings of ``MEDIA_STORAGE=s3`` on that server, with a bucket (not yet created) and a
    ``DATA_DIR`` of this test's own."""
    bucket = f"wa-test-{secrets.token_hex(8)}"
    override_settings(MEDIA_STORAGE="s3", S3_ENDPOINT_URL=s3_endpoint, S3_BUCKET=bucket, S3_REGION="us-east-1",
                      S3_ACCESS_KEY_ID="testing", S3_SECRET_ACCESS_KEY="testing", DATA_DIR=str(tmp_path / "data"))
    return bucket


@pytest.fixture
def s3_storage(s3_settings):
    """``S3FileStorage`` from the settings, with S3's smallest parts (5 MiB) so a test's files stay small."""
    from app.storage.s3 import MIN_PART_SIZE, S3FileStorage

    return S3FileStorage.from_settings(part_size=MIN_PART_SIZE)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    """Each implementation of ``FileStorage`` in turn."""
    from app.storage.local import LocalFileStorage

    if request.param == "local":
        return LocalFileStorage(tmp_path / "files")
    return request.getfixturevalue("s3_storage")
