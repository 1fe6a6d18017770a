"""WADO-RS frames sliced out of the stored bytes by their layout (issue 5): the same bytes the
full parse gives, for native and encapsulated objects, and no parse on later requests."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from remote_dx.core.errors import NotFound
from remote_dx.dicomweb import wado
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.storage.base import ObjectStore

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
