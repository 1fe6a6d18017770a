"""A fast structural check of a DICOM Part 10 byte stream (PS3.10 §7, PS3.5 §7).

pydicom reads a file cut short without complaint in several places: a native Pixel Data value
is returned short, an encapsulated one whose delimiter is missing is dropped with a warning (the
instance then looks like an image without pixels), and sequences are parsed lazily. Decoding every
value would find most of it, at ~25 ms for a 12-lead ECG with its annotation sequences — the
receiver's whole budget. This walk reads only element headers (tag, VR, length), steps over
values, descends into undefined-length sequences and encapsulated fragments, and fails as soon as
something claims bytes the stream does not have: ~1 µs per element.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Container
from dataclasses import dataclass

from remote_dx.core.errors import InvalidInstance

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the data set starts: after the preamble, ``DICM`` and the group 0002 elements."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 stream (no DICM prefix)")
    pos = 132
    end = len(data)
    # File meta is always explicit VR little endian (PS3.10 §7.1).
    while pos + 8 <= end:
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        pos = _skip_element(data, pos, end, explicit=True, little=True)
    return pos


@dataclass(frozen=True)
class PixelData:
    """The top-level Pixel Data element as the walk found it (its value is not copied)."""

    length: int  #: bytes of the value (for encapsulated data: up to the delimiter)
    head: bytes  #: the value's first 8 bytes


def check_structure(data: bytes | memoryview, transfer_syntax: str) -> PixelData | None:
    """Raise InvalidInstance unless every element of the data set lies wholly inside ``data``.

    Returns what the walk saw of the top-level Pixel Data (7FE0,0010), or None if there is none.
    """
    return walk(data, transfer_syntax).pixel


@dataclass(frozen=True)
class Walked:
    """What :func:`walk` found besides a well-formed stream."""

    pixel: PixelData | None
    #: tag → (explicit VR or None, value bytes) of the top-level elements asked for
    elements: dict[int, tuple[str | None, bytes]]
    implicit_vr: bool
    little_endian: bool


def walk(data: bytes | memoryview, transfer_syntax: str, wanted: Container[int] = ()) -> Walked:
    """:func:`check_structure`, also keeping the values of the top-level elements in ``wanted``.

    Lets a reader that needs a handful of attributes skip a full parse: the walk visits every
    element header anyway. Undefined-length (sequence) elements are never kept.
    """
    pos = dataset_offset(data)
    body: bytes | memoryview = data
    end = len(data)
    if transfer_syntax == _DEFLATED:
        try:
            body = zlib.decompress(bytes(data[pos:]), -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise InvalidInstance(f"deflated data set is corrupt: {exc}") from exc
        pos, end = 0, len(body)
    explicit = transfer_syntax != _IMPLICIT_LE
    little = transfer_syntax != _BIG_ENDIAN
    if explicit and pos + 6 <= end and not _looks_like_vr(bytes(body[pos + 4 : pos + 6])):
        # Some writers label implicit VR data as explicit; pydicom reads it as implicit too.
        explicit = False
    pixel = None
    elements: dict[int, tuple[str | None, bytes]] = {}
    while pos < end:
        tag, vr, length, value_start, pos = _element(body, pos, end, explicit, little)
        if tag == _PIXEL_DATA:
            pixel = PixelData(pos - value_start, bytes(body[value_start : value_start + 8]))
        elif length != _UNDEFINED and tag in wanted:
            value = bytes(body[value_start:pos])
            elements[tag] = (vr.decode("ascii") if vr is not None else None, value)
    return Walked(pixel, elements, not explicit, little)


def file_meta_value(data: bytes | memoryview, tag: int) -> str | None:
    """A text value of the File Meta Information (PS3.10 §7.1), padding stripped; or None."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 stream (no DICM prefix)")
    pos, end = 132, len(data)
    while pos + 8 <= end:
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        found, _, length, value_start = _header(data, pos, end, True, True)
        pos = _skip_element(data, pos, end, explicit=True, little=True)
        if found == tag:
            value = bytes(data[value_start : value_start + length])
            return value.rstrip(b"\0 ").decode("ascii", "replace")
    return None


def _header(
    data: bytes | memoryview, pos: int, end: int, explicit: bool, little: bool
) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value start) of the element at ``pos``."""
    if pos + 8 > end:
        raise InvalidInstance(f"data ends inside an element header at byte {pos}")
    tag_length = _TAG_LENGTH if little else _TAG_LENGTH_BE
    group, element, length = tag_length.unpack_from(data, pos)
    tag = group << 16 | element
    if group == 0xFFFE or not explicit:
        return tag, None, length, pos + 8
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > end:
            raise InvalidInstance(f"data ends inside the header of ({group:04X},{element:04X})")
        (length,) = (_LONG if little else _LONG_BE).unpack_from(data, pos + 8)
        return tag, vr, length, pos + 12
    (length,) = (_SHORT if little else _SHORT_BE).unpack_from(data, pos + 6)
    return tag, vr, length, pos + 8


# Element header layouts, compiled once (the walk reads one per element).
_TAG_LENGTH, _TAG_LENGTH_BE = struct.Struct("<HHL"), struct.Struct(">HHL")
_LONG, _LONG_BE = struct.Struct("<L"), struct.Struct(">L")
_SHORT, _SHORT_BE = struct.Struct("<H"), struct.Struct(">H")


def _skip_element(
    data: bytes | memoryview, pos: int, end: int, explicit: bool, little: bool
) -> int:
    return _element(data, pos, end, explicit, little)[4]


def _element(
    data: bytes | memoryview, pos: int, end: int, explicit: bool, little: bool
) -> tuple[int, bytes | None, int, int, int]:
    """(tag, VR or None, value length, value start, where the next element starts)."""
    tag, vr, length, start = _header(data, pos, end, explicit, little)
    if length != _UNDEFINED:
        stop = start + length
        if stop > end:
            raise InvalidInstance(
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) claims {length} bytes, "
                f"only {end - start} left: data truncated"
            )
        return tag, vr, length, start, stop
    if tag == _PIXEL_DATA:
        return tag, vr, length, start, _skip_fragments(data, start, end, little)
    # Undefined length: a sequence, or UN holding implicit VR little endian (PS3.5 §6.2.2).
    if vr == b"UN":
        explicit, little = False, True
    return tag, vr, length, start, _skip_items(data, start, end, explicit, little)


def _skip_items(data: bytes | memoryview, pos: int, end: int, explicit: bool, little: bool) -> int:
    """Step over the items of an undefined-length sequence, through its delimiter."""
    while True:
        tag, _, length, start = _header(data, pos, end, False, little)
        if tag == _SEQUENCE_DELIMITER:
            return start
        if tag != _ITEM:
            raise InvalidInstance(f"expected a sequence item at byte {pos}, found {tag:08X}")
        if length != _UNDEFINED:
            if start + length > end:
                raise InvalidInstance("a sequence item runs past the end of the data: truncated")
            pos = start + length
            continue
        pos = start
        while True:
            if pos + 8 > end:
                raise InvalidInstance("data ends inside a sequence item: truncated")
            if _peek_tag(data, pos, little) == _ITEM_DELIMITER:
                pos += 8
                break
            pos = _skip_element(data, pos, end, explicit, little)


def _skip_fragments(data: bytes | memoryview, pos: int, end: int, little: bool) -> int:
    """Step over encapsulated Pixel Data (PS3.5 §A.4): items, then the sequence delimiter."""
    while True:
        tag, _, length, start = _header(data, pos, end, False, little)
        if tag == _SEQUENCE_DELIMITER:
            return start
        if tag != _ITEM or length == _UNDEFINED:
            raise InvalidInstance(f"malformed encapsulated Pixel Data at byte {pos}")
        if start + length > end:
            raise InvalidInstance(
                f"a Pixel Data fragment claims {length} bytes, only {end - start} left: truncated"
            )
        pos = start + length


def _looks_like_vr(value: bytes) -> bool:
    return len(value) == 2 and value.isalpha() and value.isupper()


def _peek_tag(data: bytes | memoryview, pos: int, little: bool) -> int:
    group, element = struct.unpack_from("<HH" if little else ">HH", data, pos)
    return group << 16 | element
