"""The storage implementations for the storage tests (the S3 server and settings they use are
``s3_endpoint`` / ``s3_settings`` of tests/conftest.py; tests/storage/test_storage.py says why moto)."""
from __future__ import annotations

import pytest


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
