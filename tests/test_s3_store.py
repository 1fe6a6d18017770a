"""One contract, two backends: FileStore (embedded) and S3Store against a real S3 server.

The S3 side runs against SeaweedFS started by the ``s3_server`` fixture; everything the
receiver relies on — durable put, ObjectNotFound for a missing key, StorageUnavailable (fast,
not a hang) when the backend is gone, and working again once it returns — is checked on both.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from remote_dx.core.errors import StorageUnavailable
from remote_dx.storage import ObjectNotFound, ObjectStore
from remote_dx.storage.base import RangedReads
from remote_dx.storage.file_store import FileStore
from remote_dx.storage.s3_store import S3Store
from tests.s3_server import SeaweedS3


def _bucket() -> str:
    return f"rdx-test-{uuid.uuid4().hex[:16]}"


def _s3_store(server: SeaweedS3, bucket: str | None = None) -> S3Store:
    return S3Store(
        server.endpoint, server.access_key, server.secret_key, bucket or _bucket(), secure=False
    )


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        yield FileStore(tmp_path / "objects")
    else:
        yield _s3_store(request.getfixturevalue("s3_server"))


def test_put_get_roundtrip(store: ObjectStore) -> None:
    key = "dicom/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    store.put(key, b"DICM-bytes", content_type="application/dicom")
    assert store.get(key) == b"DICM-bytes"
    assert store.exists(key)


def test_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.exists("empty")
    assert store.get("empty") == b""


def test_overwrite_replaces(store: ObjectStore) -> None:
    store.put("a/key", b"first version, longer")
    store.put("a/key", b"second")
    assert store.get("a/key") == b"second"
    assert list(store.list("a/")) == ["a/key"]


def test_missing_object(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("no/such/object")
    assert not store.exists("no/such/object")
    # An ObjectNotFound is also a KeyError, so mapping-style callers can catch either.
    with pytest.raises(KeyError):
        store.get("no/such/object")


def test_delete(store: ObjectStore) -> None:
    store.put("d/one", b"1")
    store.put("d/two", b"2")
    store.delete("d/one")
    assert not store.exists("d/one")
    with pytest.raises(ObjectNotFound):
        store.get("d/one")
    assert store.get("d/two") == b"2"
    store.delete("d/one")  # deleting a missing key is not an error


def test_list_with_prefix(store: ObjectStore) -> None:
    keys = [
        "dicom/1.2.840.1/s1/i2.dcm",
        "dicom/1.2.840.1/s1/i1.dcm",
        "dicom/1.2.840.1/s2/i3.dcm",
        "dicom/1.2.840.10/s1/i1.dcm",
        "previews/1.2.840.1/i1.png",
    ]
    for key in keys:
        store.put(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("dicom/1.2.840.1/")) == sorted(keys[:3])
    # A prefix is a string prefix, not a folder: both backends agree on that.
    assert list(store.list("dicom/1.2.840.1")) == sorted(keys[:4])
    assert list(store.list("previews/")) == ["previews/1.2.840.1/i1.png"]
    assert list(store.list("nothing/")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/./b", "back\\slash"])
def test_invalid_keys_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_large_object_roundtrip(store: ObjectStore) -> None:
    """About the size of one 2048×2048 16-bit DX (8 MB), which the receiver must handle."""
    data = np.random.default_rng(7).integers(0, 4096, 2048 * 2048, dtype="<u2").tobytes()
    store.put("dicom/big/one.dcm", data, content_type="application/dicom")
    back = store.get("dicom/big/one.dcm")
    assert len(back) == len(data) == 8 * 1024 * 1024
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()


def test_ranged_read(store: ObjectStore) -> None:
    """One frame of a large object is read by its byte range (WADO-RS frames), on both."""
    data = bytes(range(256)) * 64
    store.put("ranged/one", data)
    assert isinstance(store, RangedReads)
    assert store.get_range("ranged/one", 0, 10) == data[:10]
    assert store.get_range("ranged/one", 1000, 3000) == data[1000:4000]
    assert store.get_range("ranged/one", len(data) - 5, 100) == data[-5:]  # short at the end
    assert store.get_range("ranged/one", len(data), 10) == b""  # nothing past it
    assert store.get_range("ranged/one", 5, 0) == b""
    with pytest.raises(ObjectNotFound):
        store.get_range("ranged/missing", 0, 10)


def test_check_passes_when_usable(store: ObjectStore) -> None:
    store.check()


def test_file_store_unusable_root_is_storage_unavailable(tmp_path: Path) -> None:
    """The FileStore's own outage: its root cannot be a directory (a file sits there)."""
    root = tmp_path / "objects"
    root.write_bytes(b"not a directory")
    store = FileStore(root)
    with pytest.raises(StorageUnavailable):
        store.put("a/b", b"x")
    with pytest.raises(StorageUnavailable):
        store.check()


@pytest.mark.s3
def test_s3_bucket_created_on_first_use(s3_server: SeaweedS3) -> None:
    bucket = _bucket()
    client = s3_server.client()
    assert not client.bucket_exists(bucket)
    store = _s3_store(s3_server, bucket)
    store.put("first", b"1")
    assert client.bucket_exists(bucket)
    # A second store on the same, now existing, bucket just uses it.
    assert _s3_store(s3_server, bucket).get("first") == b"1"


@pytest.mark.s3
def test_s3_objects_are_really_on_the_server(s3_server: SeaweedS3) -> None:
    bucket = _bucket()
    store = _s3_store(s3_server, bucket)
    store.put("dicom/x.dcm", b"payload", content_type="application/dicom")
    stat = s3_server.client().stat_object(bucket, "dicom/x.dcm")
    assert stat.size == len(b"payload")
    assert stat.content_type == "application/dicom"


def _fails_fast(operation: Callable[[], object], limit: float = 5.0) -> float:
    began = time.monotonic()
    with pytest.raises(StorageUnavailable):
        operation()
    elapsed = time.monotonic() - began
    assert elapsed < limit, f"took {elapsed:.1f}s to report the outage"
    return elapsed


@pytest.mark.s3
def test_s3_outage_is_storage_unavailable_then_recovers(s3_server: SeaweedS3) -> None:
    store = _s3_store(s3_server)
    store.put("before/outage", b"kept")
    with s3_server.outage():
        assert not s3_server.running
        _fails_fast(lambda: store.put("during/outage", b"lost?"))
        _fails_fast(lambda: store.get("before/outage"))
        _fails_fast(lambda: store.exists("before/outage"))
        _fails_fast(lambda: list(store.list("before/")))
        _fails_fast(lambda: store.delete("before/outage"))
        _fails_fast(store.check)
        # A store created during the outage must not hang on its bucket either.
        _fails_fast(lambda: _s3_store(s3_server).put("x", b"y"))
    assert s3_server.running
    store.check()
    assert store.get("before/outage") == b"kept"
    assert not store.exists("during/outage")
    store.put("after/outage", b"back")
    assert store.get("after/outage") == b"back"
