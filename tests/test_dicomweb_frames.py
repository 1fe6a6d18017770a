"""WADO-RS frames sliced out of the stored bytes by their layout (issue 5): the same bytes the
full parse gives, for native and encapsulated objects, and no parse on later requests."""

from __future__ import annotations

import io
import struct
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from remote_dx.core.errors import NotFound
from remote_dx.dicomweb import wado
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.storage.base import ObjectStore
from remote_dx.storage.file_store import FileStore
from remote_dx.storage.s3_store import S3Store
from tests.support import multiframe_cine

AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class MemoryStore(ObjectStore):
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return self.objects[key]

    def put(self, key: str, data: bytes, content_type: str = "") -> None:  # pragma: no cover
        self.objects[key] = data


def _ref(key: str, syntax: str) -> InstanceRef:
    return InstanceRef("1", "2", "3", "1.2", syntax, key, None, 1)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # Explicit VR Little Endian, one frame
        "MR_small_implicit.dcm",  # Implicit VR Little Endian
        "SC_rgb_2frame.dcm",  # native, two frames
        "SC_rgb_rle_2frame.dcm",  # RLE, one fragment per frame
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
    ],
)
def test_layout_gives_the_bytes_the_full_parse_gives(name: str) -> None:
    data = open(get_testdata_file(name), "rb").read()  # noqa: SIM115 - a test file, read once
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    plan = wado.frame_plan(AS_STORED, syntax)
    count = wado.frame_count(ds)
    expected = wado.frames(ds, list(range(1, count + 1)), plan)
    layout = wado.frame_layout(data)
    assert layout is not None
    assert [data[slice(*r)] for r in layout.ranges] == expected
    store = MemoryStore({name: data})
    assert wado.stored_frames(store, _ref(name, syntax), [count], plan) == [expected[-1]]
    with pytest.raises(NotFound):
        wado.stored_frames(store, _ref(name, syntax), [count + 1], plan)


def test_not_sliceable_objects_take_the_full_path() -> None:
    # Big endian frames are byte-swapped on the way out; they cannot be sliced as stored.
    data = open(get_testdata_file("MR_small_bigendian.dcm"), "rb").read()  # noqa: SIM115
    assert wado.frame_layout(data) is None
    ds = pydicom.dcmread(io.BytesIO(data))
    plan = wado.frame_plan(AS_STORED, str(ds.file_meta.TransferSyntaxUID))
    store = MemoryStore({"be": data})
    ref = _ref("be", str(ds.file_meta.TransferSyntaxUID))
    assert wado.stored_frames(store, ref, [1], plan) == wado.frames(ds, [1], plan)


def test_later_frames_are_not_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    data = open(get_testdata_file("SC_rgb_rle_2frame.dcm"), "rb").read()  # noqa: SIM115
    syntax = str(pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID)
    plan = wado.frame_plan(AS_STORED, syntax)
    store = MemoryStore({"later-frames": data})
    ref = _ref("later-frames", syntax)
    first = wado.stored_frames(store, ref, [1], plan)
    parses = []
    real = pydicom.dcmread
    monkeypatch.setattr(wado.pydicom, "dcmread", lambda *a, **k: parses.append(1) or real(*a, **k))
    assert wado.stored_frames(store, ref, [2], plan) != first
    assert wado.stored_frames(store, ref, [1], plan) == first
    assert parses == []


# -- large objects: frames read by byte range (issue: a 150 MB cine read whole per frame) --------


class SpyStore:
    """A real store (FileStore or S3Store) whose whole and ranged reads are counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets: list[str] = []
        self.ranges: list[tuple[int, int]] = []

    def put(self, key: str, data: bytes, content_type: str = "application/dicom") -> None:
        self.inner.put(key, data, content_type)

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((offset, length))
        return self.inner.get_range(key, offset, length)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def spy(request: pytest.FixtureRequest, tmp_path: Path) -> SpyStore:
    if request.param == "file":
        return SpyStore(FileStore(tmp_path / "objects"))
    server = request.getfixturevalue("s3_server")
    bucket = f"rdx-frames-{uuid.uuid4().hex[:12]}"
    return SpyStore(
        S3Store(server.endpoint, server.access_key, server.secret_key, bucket, secure=False)
    )


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects from 1 MB count as large, so a 10 MB test object takes the ranged path."""
    monkeypatch.setattr(wado, "RANGED_MIN_BYTES", 1024 * 1024)


def _native_cine(syntax: str = str(ExplicitVRLittleEndian), frames: int = 20) -> bytes:
    pixels = np.random.default_rng(5).integers(0, 4096, (frames, 512, 512), dtype="<u2")
    return multiframe_cine(syntax, pixels.tobytes(), frames)


def _encapsulated_cine(frames: int, fragments_per_frame: int, has_bot: bool) -> bytes:
    rng = np.random.default_rng(frames * 10 + fragments_per_frame)
    # As stored, frames are opaque codestreams (some 6 MB in all); odd sizes make the fragments'
    # padding matter; each ends with the EOI/EOC marker, as real ones do.
    low = 4_000_000 // frames
    codestreams = [
        rng.bytes(int(rng.integers(low, 2 * low)) | 1) + b"\xff\xd9" for _ in range(frames)
    ]
    encapsulated = encapsulate(codestreams, fragments_per_frame, has_bot=has_bot)
    return multiframe_cine(str(JPEG2000Lossless), encapsulated, frames)


def _large_ref(spy: SpyStore, data: bytes, syntax: str) -> InstanceRef:
    key = f"dicom/ranged/{uuid.uuid4().hex}.dcm"
    spy.put(key, data)
    return InstanceRef("1", "2", "3", "1.2", syntax, key, None, 1, len(data))


def test_large_native_frames_are_read_by_range(spy: SpyStore, small_threshold: None) -> None:
    data = _native_cine()
    ds = pydicom.dcmread(io.BytesIO(data))
    pydicom_frames = [frame.tobytes() for frame in ds.pixel_array]
    ref = _large_ref(spy, data, str(ExplicitVRLittleEndian))
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)

    assert wado.stored_frames(spy, ref, [1], plan) == [pydicom_frames[0]]
    assert spy.gets == []  # even the layout came from ranged reads (the header only)
    spy.ranges.clear()
    for number in (20, 7, 2):
        assert wado.stored_frames(spy, ref, [number], plan) == [pydicom_frames[number - 1]]
    frame = 512 * 512 * 2
    assert spy.gets == []
    assert spy.ranges and all(length == frame for _, length in spy.ranges)  # one frame each
    # Several frames in one request: neighbours come in one read.
    spy.ranges.clear()
    assert wado.stored_frames(spy, ref, [4, 3, 9], plan) == [
        pydicom_frames[3],
        pydicom_frames[2],
        pydicom_frames[8],
    ]
    assert sorted(length for _, length in spy.ranges) == [frame, 2 * frame]
    with pytest.raises(NotFound):
        wado.stored_frames(spy, ref, [21], plan)
    assert spy.gets == []


def test_large_implicit_vr_frames_are_read_by_range(spy: SpyStore, small_threshold: None) -> None:
    data = _native_cine("1.2.840.10008.1.2", frames=5)
    ds = pydicom.dcmread(io.BytesIO(data))
    ref = _large_ref(spy, data, "1.2.840.10008.1.2")
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)
    assert wado.stored_frames(spy, ref, [5, 1], plan) == [
        ds.pixel_array[4].tobytes(),
        ds.pixel_array[0].tobytes(),
    ]
    assert spy.gets == []


@pytest.mark.parametrize(
    ("frames", "fragments_per_frame", "has_bot"),
    [
        (20, 1, False),  # one fragment per frame, empty offset table: the common case
        (20, 1, True),
        (12, 3, True),  # frames split over fragments: grouped by the Basic Offset Table
        (1, 25, False),  # one frame in many fragments
    ],
)
def test_large_encapsulated_frames_are_read_by_range(
    spy: SpyStore,
    small_threshold: None,
    frames: int,
    fragments_per_frame: int,
    has_bot: bool,
) -> None:
    data = _encapsulated_cine(frames, fragments_per_frame, has_bot)
    ds = pydicom.dcmread(io.BytesIO(data))
    pydicom_frames = list(generate_frames(ds.PixelData, number_of_frames=frames))
    ref = _large_ref(spy, data, str(JPEG2000Lossless))
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)

    assert wado.stored_frames(spy, ref, [1], plan) == [pydicom_frames[0]]
    assert spy.gets == []
    if has_bot and frames > 1:  # the offset table gave the layout: no pass over the items
        assert sum(length for _, length in spy.ranges) < len(data) / 4
    spy.ranges.clear()  # the layout is kept: from here on, only the frames' own bytes are read
    asked = sorted({frames, max(1, frames // 2)})
    for number in asked:
        assert wado.stored_frames(spy, ref, [number], plan) == [pydicom_frames[number - 1]]
    assert spy.gets == []
    # Each read is the frame's fragments with their item headers (and, for the last frame,
    # the sequence delimiter), nothing more.
    assert len(spy.ranges) == len(asked)
    assert (
        sum(length for _, length in spy.ranges)
        <= sum(len(pydicom_frames[n - 1]) + 8 * fragments_per_frame for n in asked) + 8
    )


def test_a_wrong_offset_table_falls_back_to_walking_the_items(
    spy: SpyStore, small_threshold: None
) -> None:
    rng = np.random.default_rng(11)
    codestreams = [rng.bytes(300_000) + b"\xff\xd9" for _ in range(8)]
    encapsulated = bytearray(encapsulate(codestreams, 1, has_bot=True))
    (second,) = struct.unpack_from("<I", encapsulated, 12)
    struct.pack_into("<I", encapsulated, 12, second + 8)  # frame 2 "starts" inside an item
    data = multiframe_cine(str(JPEG2000Lossless), bytes(encapsulated), 8)
    ref = _large_ref(spy, data, str(JPEG2000Lossless))
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)
    assert wado.stored_frames(spy, ref, [1], plan) == [codestreams[0]]
    assert sum(length for _, length in spy.ranges) > len(data) / 2  # the items were walked
    spy.ranges.clear()
    assert wado.stored_frames(spy, ref, [2, 8], plan) == [codestreams[1], codestreams[7]]
    assert spy.gets == [] and len(spy.ranges) == 2  # the walked layout was kept


def test_large_objects_not_sliceable_by_range_take_the_full_path(
    spy: SpyStore, small_threshold: None
) -> None:
    # Several fragments per frame and no offset table: only the codestreams tell where frames
    # end, so the whole object is read and parsed (as before).
    data = _encapsulated_cine(4, 2, has_bot=False)
    ds = pydicom.dcmread(io.BytesIO(data))
    ref = _large_ref(spy, data, str(JPEG2000Lossless))
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)
    assert wado.stored_frames(spy, ref, [3], plan) == wado.frames(ds, [3], plan)
    assert spy.gets == [ref.object_key]


def test_small_objects_are_read_whole_once(spy: SpyStore) -> None:
    """Below the threshold the object is read whole once and kept in memory (faster than a
    ranged read per frame)."""
    data = _native_cine(frames=3)
    ds = pydicom.dcmread(io.BytesIO(data))
    ref = _large_ref(spy, data, str(ExplicitVRLittleEndian))
    plan = wado.frame_plan(AS_STORED, ref.transfer_syntax_uid)
    for number in (1, 2, 3):
        assert wado.stored_frames(spy, ref, [number], plan) == [
            ds.pixel_array[number - 1].tobytes()
        ]
    assert spy.gets == [ref.object_key] and spy.ranges == []


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "SC_rgb_2frame.dcm",
        "SC_rgb_rle_2frame.dcm",
        "JPEG2000.dcm",
        "emri_small.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_ranged_path_gives_the_full_parse_bytes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wado, "RANGED_MIN_BYTES", 0)
    data = open(get_testdata_file(name), "rb").read()  # noqa: SIM115 - a test file, read once
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    plan = wado.frame_plan(AS_STORED, syntax)
    count = wado.frame_count(ds)
    spy = SpyStore(FileStore(tmp_path / "objects"))
    ref = _large_ref(spy, data, syntax)
    numbers = list(range(count, 0, -1))
    assert wado.stored_frames(spy, ref, numbers, plan) == wado.frames(ds, numbers, plan)
    # Big endian frames are swapped on the way out: not sliceable, so read whole.
    assert (spy.gets != []) == (name == "MR_small_bigendian.dcm")


def test_fewer_fragments_than_number_of_frames_is_not_found_not_a_crash() -> None:
    """Three frames promised, two fragments stored, no offset table: frame 3 is a 404 that says
    why (it raised KeyError, a 500, before)."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    ds.NumberOfFrames = 3
    plan = wado.frame_plan(AS_STORED, str(ds.file_meta.TransferSyntaxUID))
    assert len(wado.frames(ds, [1, 2], plan)) == 2
    with pytest.raises(NotFound, match="fewer frames than its NumberOfFrames"):
        wado.frames(ds, [3], plan)
