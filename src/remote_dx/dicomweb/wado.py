"""WADO-RS retrieve (PS3.18 §10.4): instances, frames, bulk data, rendered images, thumbnails.

Transfer syntaxes (PS3.18 §8.7.3.5): instances and frames come as stored when the client accepts
``transfer-syntax=*`` (or names the stored one); asking for Explicit VR Little Endian
(``1.2.840.10008.1.2.1``, also the default of ``application/octet-stream`` frames) gets compressed
pixel data decoded with pydicom's plugins (pylibjpeg, GDCM; what :mod:`remote_dx.imaging` decodes).
A compressed frame may also be asked for by its own media type (``image/jpeg``, ``image/jls``,
``image/jp2``, ``image/dicom-rle``) when that is how it is stored. Anything else: 406.

Rendered resources (§10.4.1.1.3 / §8.3.5.1.3) follow PS3.3 C.11: Modality LUT, then the VOI
window from the ``window=center,width[,function]`` parameter, else from the header, else the
0.5–99.5 percentile range; MONOCHROME1 is inverted. ``viewport=width,height`` scales the image to
fit; ``quality`` sets the JPEG quality. ECG and other waveforms render as
:func:`remote_dx.imaging.preview.waveform_preview` draws them.
"""

from __future__ import annotations

import io
import itertools
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from remote_dx.core.errors import Invalid, NotFound
from remote_dx.dicomweb import renditions
from remote_dx.dicomweb.access import InstanceRef
from remote_dx.dicomweb.cache import cached_get
from remote_dx.dicomweb.multipart import BadRequest, NotAcceptable, parse_accept
from remote_dx.imaging.preview import has_waveform, waveform_preview
from remote_dx.storage.base import ObjectStore, RangedReads

EXPLICIT_LE = str(ExplicitVRLittleEndian)
OCTET = "application/octet-stream"
DICOM = "application/dicom"

# PS3.18 Table 8.7.3-2: media types of compressed frames.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_NATIVE_LE = {"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99"}


class RenderError(Invalid):
    """The instance has nothing that can be rendered (422)."""


@dataclass(frozen=True)
class Plan:
    """What one retrieve answers with: part media type, its transfer syntax, and whether the
    stored bytes must be decoded first."""

    media_type: str
    transfer_syntax: str
    transcode: bool


def _is_native_le(syntax: str) -> bool:
    return syntax in _NATIVE_LE


def frame_plan(accept: str | None, stored: str) -> Plan:
    """Negotiate the frames' representation (PS3.18 §8.7.3.5, Table 8.7.3-5)."""
    # "As stored": native little endian frames are Explicit VR LE bytes whatever the data set's
    # encoding; big endian ones are swapped; compressed ones go out untouched.
    if _is_native_le(stored):
        stored_plan = Plan(OCTET, EXPLICIT_LE, False)
    elif stored == str(ExplicitVRBigEndian):
        stored_plan = Plan(OCTET, EXPLICIT_LE, True)
    else:
        stored_plan = Plan(OCTET, stored, False)
    uncompressed = Plan(OCTET, EXPLICIT_LE, not _is_native_le(stored))
    for media in parse_accept(accept):
        if media.type in ("*/*", "multipart/*"):
            return stored_plan
        if not media.is_multipart:
            continue
        part = media.part_type or OCTET
        syntax = media.transfer_syntax
        if part in (OCTET, "*/*", "application/*"):
            if syntax == "*":
                return stored_plan
            if syntax in (None, EXPLICIT_LE):
                return uncompressed
            if syntax == stored:
                return stored_plan
            continue
        own = FRAME_MEDIA_TYPES.get(stored)
        if own is not None and part == own and syntax in (None, "*", stored):
            return Plan(own, stored, False)
    raise NotAcceptable(
        'frames are available as multipart/related; type="application/octet-stream" with '
        f"transfer-syntax=* (stored: {stored}) or {EXPLICIT_LE}"
    )


def instance_plan(accept: str | None, stored: str) -> Plan:
    """Negotiate whole-instance retrieval: ``multipart/related; type="application/dicom"``."""
    for media in parse_accept(accept):
        if media.type in ("*/*", "multipart/*"):
            return Plan(DICOM, stored, False)
        if not media.is_multipart or media.part_type not in (None, DICOM, "*/*", "application/*"):
            continue
        syntax = media.transfer_syntax
        # No transfer-syntax parameter: as stored, as most archives answer (the standard's default
        # for application/dicom is Explicit VR Little Endian; ask for it to get it).
        if syntax in (None, "*", stored):
            return Plan(DICOM, stored, False)
        if syntax == EXPLICIT_LE:
            return Plan(DICOM, EXPLICIT_LE, True)
    raise NotAcceptable(
        'instances are available as multipart/related; type="application/dicom" '
        f"(transfer-syntax=* or {EXPLICIT_LE})"
    )


def load(store: ObjectStore, ref: InstanceRef) -> Dataset:
    """The stored instance, parsed (its bytes through :func:`.cache.cached_get`)."""
    return pydicom.dcmread(io.BytesIO(cached_get(store, ref.object_key)))


def instance_bytes(store: ObjectStore, ref: InstanceRef, plan: Plan) -> bytes:
    data = store.get(ref.object_key)
    if not plan.transcode or ref.transfer_syntax_uid == EXPLICIT_LE:
        return data
    ds = pydicom.dcmread(io.BytesIO(data))
    if UID(ref.transfer_syntax_uid).is_encapsulated:
        try:
            ds.decompress()
        except Exception as exc:  # decoders raise many types; all mean "cannot decode"
            raise NotAcceptable(f"cannot decode {ref.transfer_syntax_uid}: {exc}") from exc
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (PS3.18 §10.4.1.1.4; frames are numbered from 1)."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise BadRequest(f"frame numbers are whole numbers from 1; got {item!r}")
        numbers.append(int(item))
    return numbers


def frame_count(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def frames(ds: Dataset, numbers: Sequence[int], plan: Plan) -> list[bytes]:
    """The requested frames' bytes as ``plan`` says (stored or decoded)."""
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data, so no frames")
    count = frame_count(ds)
    for number in numbers:
        if number > count:
            raise NotFound(f"frame {number} not found: the instance has {count}")
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if plan.transcode:
        return [_decoded_frame(ds, number - 1) for number in numbers]
    if syntax.is_encapsulated:
        if count == 1:
            return [b"".join(generate_frames(ds.PixelData, number_of_frames=1))]
        wanted = set(numbers)
        found: dict[int, bytes] = {}
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=count), 1):
            if index in wanted:
                found[index] = frame
            if len(found) == len(wanted):
                break
        missing = sorted(wanted - found.keys())
        if missing:
            # NumberOfFrames promises more than the fragments hold (no end-of-image markers
            # where frames should end): say which frames are not there rather than fail.
            raise NotFound(
                f"frame {missing[0]} not found: the stored pixel data holds fewer frames than "
                f"its NumberOfFrames ({count})"
            )
        return [found[n] for n in numbers]
    size = _native_frame_size(ds)
    data = ds.PixelData
    return [bytes(data[(n - 1) * size : n * size]) for n in numbers]


@dataclass(frozen=True)
class FrameLayout:
    """Where each frame's bytes lie in a stored object, as it is stored (no decoding).

    Found once per object (one parse) and kept, so later frame requests slice the stored bytes
    instead of parsing the whole data set again: a viewer asks for every frame of a series, one
    request each.
    """

    ranges: tuple[tuple[int, int], ...]  # (start, end) of frame 1, 2, … in the Part 10 bytes
    # Only when a frame is split over several fragments (encapsulated, found by ranged reads):
    # each frame's fragment values, whose bytes joined are the frame; ``ranges`` then spans them.
    fragments: tuple[tuple[tuple[int, int], ...], ...] | None = None
    # True when the ranges come from a Basic Offset Table: each is a run of whole items (the
    # last one up to the object's end), and the frame is their values joined.
    items: bool = False

    def frame(self, number: int, span: bytes) -> bytes:
        """Frame ``number`` (from 1) out of ``span``, the bytes of its range. Raises ValueError
        when an offset table's range does not hold whole items (the table is wrong)."""
        if self.items:
            return _item_values(span, last=number == len(self.ranges))
        start = self.ranges[number - 1][0]
        if self.fragments is None:
            return span
        return b"".join(span[a - start : b - start] for a, b in self.fragments[number - 1])


def _item_values(span: bytes, last: bool) -> bytes:
    """The values of the items that fill ``span`` (the last frame's: up to the delimiter)."""
    position, values = 0, []
    while position < len(span):
        if position + 8 > len(span):
            raise ValueError("an item header is cut off")
        tag, length = struct.unpack_from("<II", span, position)
        if tag == _SEQUENCE_END and last:
            break
        if tag != _ITEM or length == 0xFFFFFFFF or position + 8 + length > len(span):
            raise ValueError("not an item where the offset table points")
        values.append(span[position + 8 : position + 8 + length])
        position += 8 + length
    else:
        if last:
            raise ValueError("no sequence delimiter after the last frame")
    if not values:
        raise ValueError("no fragment in the frame")
    return b"".join(values)


_ITEM = 0xE000FFFE  # (FFFE,E000) read as one little-endian uint32
_SEQUENCE_END = 0xE0DDFFFE


class _InMemory:
    """Bytes already read, offered as ranged reads, so that a layout found from them walks the
    fragment items with the same code as one found by ranged reads of a stored object."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


def frame_layout(data: bytes) -> FrameLayout | None:
    """The frames' byte ranges in ``data`` (a Part 10 object), or None when they cannot be
    sliced out as stored: big endian, several fragments per frame, no Pixel Data."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), defer_size=1024)
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        element = ds.get_item(0x7FE00010)
    except Exception:  # whatever cannot be parsed here is left to the full path's errors
        return None
    if element is None:
        return None
    # Where the value starts in ``data``: a deferred (raw) element's value_tell, a read one's
    # file_tell (pydicom records the value's offset in both).
    tell = getattr(element, "value_tell", None)
    if tell is None:
        tell = getattr(element, "file_tell", None)
    if tell is None:
        return None
    start = int(tell)
    count = frame_count(ds)
    if syntax.is_encapsulated:
        walked = _walk_items(_InMemory(data), "", start, len(data))
        if walked is None or len(walked[0]) != count:
            return None
        return FrameLayout(tuple(walked[0]))
    if not _is_native_le(str(syntax)) or "PixelData" not in ds:
        return None
    size = _native_frame_size(ds)
    value = ds.PixelData
    if len(value) < size * count or data[start : start + len(value)] != value:
        return None
    return FrameLayout(tuple((start + i * size, start + i * size + size) for i in range(count)))


class _Layouts:
    """Frame layouts of recently read objects by object key (stored objects never change)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, FrameLayout | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], FrameLayout | None]) -> FrameLayout | None:
        """The layout kept for ``key``, else ``compute()``'s, kept (None too: not sliceable)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        layout = compute()
        with self._lock:
            self._items[key] = layout
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return layout

    def put(self, key: str, layout: FrameLayout | None) -> None:
        with self._lock:
            self._items[key] = layout
            self._items.move_to_end(key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


_layouts = _Layouts()

# Objects at least this large have their frames read by byte range (once the layout is known)
# rather than whole: the object cache (:mod:`.cache`) keeps objects only up to a quarter of its
# 256 MB, so each frame of a larger one meant reading all of it again (from S3: a 150 MB GET
# per frame of a 300-frame cine). Smaller ones are read whole once and sliced from memory.
RANGED_MIN_BYTES = 64 * 1024 * 1024
_HEADER_FIRST = 64 * 1024  # first read for the header; doubled until Pixel Data is in it
_HEADER_MAX = 16 * 1024 * 1024  # a header larger than this: whole-object path
_ITEMS_CHUNK = 4 * 1024 * 1024  # one read of the fragment items' walk
_MERGE_GAP = 256 * 1024  # frames closer than this in one request are read in one range
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _header(store: RangedReads, key: str) -> tuple[Dataset, int, int] | None:
    """The data set before Pixel Data, where Pixel Data's value starts and its length (0xFFFFFFFF:
    undefined), read by growing ranges from the start. None: no top-level Pixel Data found."""
    want = _HEADER_FIRST
    while want <= _HEADER_MAX:
        prefix = store.get_range(key, 0, want)
        fp = io.BytesIO(prefix)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            syntax = UID(ds.file_meta.TransferSyntaxUID)
        except Exception:  # a cut-off element in the prefix, or not DICOM: read more, or give up
            ds = None
        if ds is not None:
            position = fp.tell()
            # pydicom leaves the file at the tag it stopped before; a prefix cut inside the data
            # set leaves it at the end instead.
            element = 8 if syntax.is_implicit_VR else 12
            if prefix[position : position + 4] == _PIXEL_DATA_TAG and position + element <= len(
                prefix
            ):
                (length,) = struct.unpack_from("<I", prefix, position + element - 4)
                return ds, position + element, length
        if len(prefix) < want:
            return None  # the whole object was read and has no Pixel Data at the top level
        want *= 2
    return None


def _walk_items(
    store: RangedReads, key: str, start: int, size: int
) -> tuple[list[tuple[int, int]], list[int], list[int]] | None:
    """One pass over encapsulated Pixel Data's items from ``start`` (PS3.5 A.4), reading item
    headers in chunks (fragments larger than a chunk are skipped, not read): the fragments'
    value ranges, their item offsets from the first fragment's item, and the Basic Offset
    Table. None if the items are malformed."""
    buffer, base = b"", start
    fragments: list[tuple[int, int]] = []
    item_offsets: list[int] = []
    table: list[int] = []
    position, first_item = start, -1

    def read(at: int, length: int) -> bytes | None:
        nonlocal buffer, base
        if not (base <= at and at + length <= base + len(buffer)):
            buffer, base = store.get_range(key, at, max(length, _ITEMS_CHUNK)), at
            if len(buffer) < length:
                return None
        return buffer[at - base : at - base + length]

    while position + 8 <= size:
        head = read(position, 8)
        if head is None:
            return None
        tag, length = struct.unpack("<II", head)
        if tag == _SEQUENCE_END:
            return fragments, item_offsets, table
        if tag != _ITEM or length == 0xFFFFFFFF or position + 8 + length > size:
            return None
        if first_item < 0:  # the Basic Offset Table
            first_item = position + 8 + length
            if length:
                value = read(position + 8, length)
                if value is None or length % 4:
                    return None
                table = list(struct.unpack(f"<{length // 4}I", value))
        else:
            fragments.append((position + 8, position + 8 + length))
            item_offsets.append(position - first_item)
        position += 8 + length
    return None


def _group(
    fragments: list[tuple[int, int]], item_offsets: list[int], table: list[int], count: int
) -> FrameLayout | None:
    """Fragments → frames as pydicom's generate_frames groups them: one frame takes them all;
    as many fragments as frames, one each; else by the Basic Offset Table."""
    if not fragments:
        return None
    if len(fragments) == count:
        return FrameLayout(tuple(fragments))
    if count == 1:
        groups = [fragments]
    elif len(table) == count and table[0] == 0 and table == sorted(set(table)):
        index = {offset: i for i, offset in enumerate(item_offsets)}
        if any(offset not in index for offset in table):
            return None
        starts = [index[offset] for offset in table] + [len(fragments)]
        groups = [fragments[a:b] for a, b in itertools.pairwise(starts)]
    else:
        return None  # frame boundaries only the codestreams tell: the full parse finds them
    return FrameLayout(
        tuple((group[0][0], group[-1][1]) for group in groups),
        tuple(tuple(group) for group in groups),
    )


def _table_layout(
    store: RangedReads, key: str, start: int, size: int, count: int
) -> FrameLayout | None:
    """Frames as runs of items from a Basic Offset Table with one offset per frame: one small
    read instead of a pass over all the items (None: no such table)."""
    if count < 1:
        return None
    head = store.get_range(key, start, 8 + 4 * count)
    if len(head) < 8 + 4 * count:
        return None
    tag, length = struct.unpack_from("<II", head)
    if tag != _ITEM or length != 4 * count:
        return None
    table = struct.unpack_from(f"<{count}I", head, 8)
    first = start + 8 + length
    if table[0] != 0 or any(b <= a for a, b in itertools.pairwise(table)):
        return None
    if first + table[-1] + 8 > size:
        return None
    ends = [first + offset for offset in table[1:]] + [size]
    return FrameLayout(
        tuple((first + offset, end) for offset, end in zip(table, ends, strict=True)), items=True
    )


def ranged_layout(
    store: RangedReads, key: str, size: int, use_table: bool = True
) -> FrameLayout | None:
    """The frames' byte ranges in the object of ``size`` bytes under ``key``, found with ranged
    reads (the header; for encapsulated data the Basic Offset Table when ``use_table`` and it
    has one offset per frame, else one pass over the fragment items), or None when they cannot
    be read as stored (big endian, deflated, float pixels, no Pixel Data)."""
    found = _header(store, key)
    if found is None:
        return None
    ds, start, length = found
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    count = frame_count(ds)
    if syntax.is_encapsulated:
        if length != 0xFFFFFFFF:
            return None
        if use_table and (table := _table_layout(store, key, start, size, count)) is not None:
            return table
        walked = _walk_items(store, key, start, size)
        return _group(*walked, count) if walked is not None else None
    if not _is_native_le(str(syntax)) or str(syntax) == _DEFLATED or length == 0xFFFFFFFF:
        return None
    try:
        frame = _native_frame_size(ds)
    except (AttributeError, TypeError, ValueError):
        return None
    if frame <= 0 or frame * count > length or start + length > size:
        return None
    return FrameLayout(tuple((start + i * frame, start + (i + 1) * frame) for i in range(count)))


def _read_frames(
    store: RangedReads, key: str, layout: FrameLayout, numbers: Sequence[int]
) -> list[bytes] | None:
    """The frames ``numbers`` by ranged reads, neighbours in one read; None if a read came
    back short (the object is not what its layout says)."""
    wanted = sorted(set(numbers), key=lambda n: layout.ranges[n - 1][0])
    runs: list[list[int]] = []
    for number in wanted:
        if runs and layout.ranges[number - 1][0] - layout.ranges[runs[-1][-1] - 1][1] <= _MERGE_GAP:
            runs[-1].append(number)
        else:
            runs.append([number])
    found: dict[int, bytes] = {}
    for run in runs:
        low = layout.ranges[run[0] - 1][0]
        high = max(layout.ranges[n - 1][1] for n in run)
        data = store.get_range(key, low, high - low)
        if len(data) < high - low:
            return None
        for number in run:
            a, b = layout.ranges[number - 1]
            try:
                found[number] = layout.frame(number, data[a - low : b - low])
            except ValueError:
                return None
    return [found[n] for n in numbers]


def _require_frames(layout: FrameLayout, numbers: Sequence[int]) -> None:
    count = len(layout.ranges)
    for number in numbers:
        if number > count:
            raise NotFound(f"frame {number} not found: the instance has {count}")


def stored_frames(
    store: ObjectStore, ref: InstanceRef, numbers: Sequence[int], plan: Plan
) -> list[bytes]:
    """The requested frames as ``plan`` says: sliced out of the stored bytes by their layout
    when they go out as stored, else through a full parse (:func:`frames`)."""
    expensive = ref.transfer_syntax_uid in renditions.EXPENSIVE_SYNTAXES
    if plan.transcode and expensive and list(numbers) == [1]:
        kept = renditions.get(store, ref.object_key, 1)
        if kept is not None:
            return [kept]
    key = ref.object_key
    if (
        not plan.transcode
        and (ref.size_bytes or 0) >= RANGED_MIN_BYTES
        and isinstance(store, RangedReads)  # a protocol check: not for every small object
    ):
        size = int(ref.size_bytes or 0)
        layout = _layouts.get(key, lambda: ranged_layout(store, key, size))
        if layout is not None:
            _require_frames(layout, numbers)
            answer = _read_frames(store, key, layout, numbers)
            if answer is None and layout.items:
                # The offset table points elsewhere than at the frames' items: walk the items.
                layout = ranged_layout(store, key, size, use_table=False)
                _layouts.put(key, layout)
                if layout is not None and all(n <= len(layout.ranges) for n in numbers):
                    answer = _read_frames(store, key, layout, numbers)
            if answer is not None:
                return answer
            _layouts.forget(key)  # not what its layout says: the full parse will tell why
    data = cached_get(store, key)
    if not plan.transcode:
        layout = _layouts.get(key, lambda: frame_layout(data))
        if layout is not None:
            _require_frames(layout, numbers)
            return [data[slice(*layout.ranges[n - 1])] for n in numbers]
    ds = pydicom.dcmread(io.BytesIO(data))
    answer = frames(ds, numbers, plan)
    if plan.transcode and expensive and list(numbers) == [1] and renditions.worth_keeping(ds):
        # Decoded here because processing kept none (an instance from before renditions, or
        # asked for before its study was processed): keep it for the next reader.
        renditions.keep_decoded(store, ref.object_key, answer[0])
    return answer


def _native_frame_size(ds: Dataset) -> int:
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    return (rows * columns * samples * bits + 7) // 8


def _decoded_frame(ds: Dataset, index: int) -> bytes:
    try:
        return renditions.decoded_frame(ds, index)
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise NotAcceptable(
            f"cannot decode {ds.file_meta.TransferSyntaxUID} to {EXPLICIT_LE}: {exc}"
        ) from exc


def bulk_value(ds: Dataset, path: str) -> bytes:
    """The value of the element at a tag path (``7FE00010``, ``54000100/0/54001010``)."""
    parts = path.strip("/").split("/")
    node: Any = ds
    try:
        for position, part in enumerate(parts):
            if position % 2 == 1:
                node = node[int(part)]
                continue
            element = node[int(part, 16)]
            node = element.value
    except (KeyError, IndexError, ValueError, TypeError):
        raise NotFound(f"no bulk data at {path}") from None
    if not isinstance(node, bytes | bytearray):
        raise NotFound(f"{path} is not a bulk data element")
    return bytes(node)


# -- rendered ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None
    quality: int = 90


def render_options(
    accept: str | None,
    window: str | None = None,
    viewport: str | None = None,
    quality: str | None = None,
    default_viewport: tuple[int, int] | None = None,
) -> RenderOptions:
    """Parse the rendered resource's Accept and query parameters (PS3.18 §8.3.5.1.3)."""
    media_type = None
    for media in parse_accept(accept):
        for candidate in ("image/jpeg", "image/png"):
            if media.matches(candidate):
                media_type = candidate
                break
        if media_type:
            break
    if media_type is None:
        raise NotAcceptable("rendered images are available as image/jpeg or image/png")
    parsed_window = None
    if window:
        items = [w.strip() for w in window.split(",")]
        try:
            center, width = float(items[0]), float(items[1])
        except (IndexError, ValueError):
            raise BadRequest("window must be center,width[,function]") from None
        function = items[2].upper() if len(items) > 2 and items[2] else "LINEAR"
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
            raise BadRequest("window function is linear, linear-exact or sigmoid; width > 0")
        parsed_window = (center, width, function)
    size = default_viewport
    if viewport:
        items = viewport.split(",")
        try:
            size = (int(items[0]), int(items[1] if len(items) > 1 else items[0]))
        except ValueError:
            raise BadRequest("viewport must be width,height") from None
        if not (0 < size[0] <= 8192 and 0 < size[1] <= 8192):
            raise BadRequest("viewport sides must be 1…8192 pixels")
    q = 90
    if quality:
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise BadRequest("quality must be 1…100")
        q = int(quality)
    return RenderOptions(media_type, parsed_window, size, q)


def _first(value: object) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _voi(values: np.ndarray, ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """Modality values → [0, 1] (PS3.3 C.11.2.1.2 linear, C.11.2.1.3 sigmoid, LINEAR_EXACT)."""
    if window is None and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
            if math.isfinite(c) and math.isfinite(w) and w >= 1:
                window = (c, w, str(ds.get("VOILUTFunction", "LINEAR")).upper())
        except (TypeError, ValueError, IndexError):
            window = None
    if window is None:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.zeros_like(values)
        low, high = np.percentile(finite, [0.5, 99.5])
        if high <= low:
            low, high = float(finite.min()), float(finite.max())
        if high <= low:
            return np.zeros_like(values)
        return np.clip((values - low) / (high - low), 0.0, 1.0)
    c, w, function = window
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if function == "LINEAR_EXACT" or w <= 1:
        return np.clip((values - (c - w / 2)) / w, 0.0, 1.0)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def render(ds: Dataset, frame: int, options: RenderOptions) -> bytes:
    """One frame (from 1) as a JPEG or PNG. Raises RenderError, NotFound."""
    if "PixelData" in ds:
        image = _image(ds, frame, options.window)
    elif has_waveform(ds):
        try:
            image = waveform_preview(ds, width=max(options.viewport or (1024, 0)))
        except Exception as exc:
            raise RenderError(f"cannot render the waveform: {exc}") from exc
    else:
        raise RenderError("the instance has neither pixel data nor a waveform to render")
    if options.viewport is not None:
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG", compress_level=3)
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            out, format="JPEG", quality=options.quality
        )
    return out.getvalue()


def _image(ds: Dataset, frame: int, window: tuple[float, float, str] | None) -> Image.Image:
    count = frame_count(ds)
    if frame > count:
        raise NotFound(f"frame {frame} not found: the instance has {count}")
    try:
        arr = pixel_array(ds, index=frame - 1) if count > 1 else ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        raise RenderError(f"cannot decode the pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        top = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / top if top > 255.0 else 1.0
        return Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="RGB")
    values = apply_modality_lut(arr, ds).astype(np.float32)
    display = _voi(values, ds, window)
    if photometric == "MONOCHROME1":
        display = 1.0 - display
    return Image.fromarray((display * 255.0 + 0.5).astype(np.uint8), mode="L")


def representative(refs: Sequence[InstanceRef]) -> InstanceRef:
    """The instance a series' or study's thumbnail shows: the middle one of the largest series."""
    by_series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        by_series.setdefault(ref.series_uid, []).append(ref)
    largest = max(by_series.values(), key=len)
    return largest[len(largest) // 2]


def iter_instances(
    store: ObjectStore, refs: Sequence[InstanceRef], plan: Plan
) -> Iterator[tuple[bytes, dict[str, str]]]:
    for ref in refs:
        syntax = plan.transfer_syntax if plan.transcode else ref.transfer_syntax_uid
        yield (
            instance_bytes(store, ref, plan),
            {"Content-Type": f"{DICOM}; transfer-syntax={syntax}"},
        )
