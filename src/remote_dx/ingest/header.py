"""The few attributes filing reads of a received instance (PS3.5 §6.2, §7.1; PS3.3 C.12.1.1.2).

Filing indexes ~25 top-level attributes: the four UIDs, patient, study and series columns, and
the image geometry that the pixel check needs. :func:`read_header` walks the whole stream once
(:func:`~remote_dx.ingest.part10.walk`: every element, item and fragment must lie inside the
data) and keeps the raw bytes of just those attributes. Then:

- the **plain path**, for the usual instance: one character set (or none), every kept value a
  single value without escape sequences, code strings, dates, numbers and UIDs 7-bit, binary
  values of their one fixed size. These are decoded here directly, in the same codec pydicom
  picks for a value without escape sequences (PS3.5 §6.1.2.5.3: the first and only one named),
  and a person name goes through :func:`~remote_dx.core.charset.decode_bytes` exactly as on the
  other path.
- the **pydicom path**, for everything else (a multi-valued or 8-bit text, an escape sequence,
  a value of an odd size or VR): pydicom converts each value, as it did for every instance
  before. A CT slice cost ~0.27 ms of Python there, the largest piece of the receiver's work
  per instance after the bytes themselves (bench/README.md, "Seventh pass").

Both paths give the same :class:`InstanceHeader` (``tests/test_ingest_perf_paths.py`` compares
them on pydicom's test files, character-set samples included), and a value either path cannot
read makes the instance invalid.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydicom.config
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import IS

from remote_dx.core.charset import decode_bytes, decode_element, storable
from remote_dx.core.errors import InvalidInstance
from remote_dx.ingest.part10 import PixelData, Walked, file_meta_value, walk

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Objects with Rows/Columns whose samples are not in Pixel Data (parametric maps, spectroscopy).
OTHER_PIXEL_KEYWORDS = ("FloatPixelData", "DoubleFloatPixelData", "SpectroscopyData")
#: Texts the index keeps as decoded Unicode (person names keep ``^`` and ``=``).
TEXT_KEYWORDS = ("PatientName", "StudyDescription", "ReferringPhysicianName", "SeriesDescription")

HEADER_KEYWORDS = (
    *REQUIRED_UIDS,
    *OTHER_PIXEL_KEYWORDS,
    "SpecificCharacterSet",
    "IssuerOfPatientID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "ReferringPhysicianName",
    "StudyID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PhotometricInterpretation",
)

# tag → (keyword, the data dictionary's VR) of each attribute read
_WANTED: dict[int, tuple[str, str]] = {
    int(tag_for_keyword(keyword) or 0): (keyword, dictionary_VR(keyword))
    for keyword in HEADER_KEYWORDS
}
HEADER_TAGS = frozenset(_WANTED)
_TRANSFER_SYNTAX_UID = 0x00020010

# VRs whose values pydicom decodes as ISO 646 / Latin-1 whatever the character set: the plain
# path takes them only when 7-bit. SH and LO are in the character set; PN too (its own decoder).
_ASCII_VRS = frozenset({"UI", "CS", "DA", "TM", "IS"})
_TEXT_VRS = frozenset({"SH", "LO"})
_SPECIFIC_CHARACTER_SET = 0x00080005


@dataclass(frozen=True)
class InstanceHeader:
    """What filing reads of one instance."""

    #: keyword → value as pydicom converts it (str, UID, IS, int; person names not included)
    values: Mapping[str, Any]
    #: keyword of :data:`TEXT_KEYWORDS` → decoded text, or None (as ``decode_element``)
    texts: Mapping[str, str | None]
    transfer_syntax: str

    @classmethod
    def of_dataset(cls, ds: Dataset) -> InstanceHeader:
        """The header of a data set pydicom has read (every value converted)."""
        values = {element.keyword: element.value for element in ds if element.VR != "PN"}
        texts = {keyword: decode_element(ds, keyword) for keyword in TEXT_KEYWORDS}
        return cls(values, texts, str(ds.file_meta.TransferSyntaxUID))

    def uid(self, keyword: str) -> str:
        return str(self.values[keyword])


def read_header(data: bytes) -> InstanceHeader:
    """The attributes filing needs, with the structural checks of the whole stream.

    Raises InvalidInstance for a stream that is cut short or malformed, a missing or invalid
    required UID, a value that cannot be read, or native pixel data shorter than its geometry.
    """
    try:
        transfer_syntax = file_meta_value(data, _TRANSFER_SYNTAX_UID)
        if not transfer_syntax:
            raise InvalidInstance("no Transfer Syntax UID in the file meta information")
        walked = walk(data, transfer_syntax, HEADER_TAGS)
        header = _plain_header(walked, transfer_syntax)
        if header is None:
            header = InstanceHeader.of_dataset(_converted_dataset(walked, transfer_syntax))
        header = _without_nul(header)
        check_required_uids(header.values)
    except InvalidInstance:
        raise
    except (
        BytesLengthException,  # a value length that is no multiple of its VR's size (bench/fuzz)
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        NotImplementedError,
        AttributeError,
        IndexError,
        struct.error,
    ) as exc:
        raise InvalidInstance(f"not a readable DICOM instance: {exc}") from exc
    check_pixel_data(header.values, header.transfer_syntax, walked.pixel)
    return header


def _plain_header(walked: Walked, transfer_syntax: str) -> InstanceHeader | None:
    """The header decoded directly, or None where pydicom must convert (module docstring)."""
    config = pydicom.config
    if (
        config.datetime_conversion
        or config.use_none_as_empty_text_VR_value
        or config.settings.reading_validation_mode == config.RAISE
    ):
        return None  # DA/TM objects, None for empty texts, or refusals: pydicom's business
    values: dict[str, Any] = {}
    names: dict[str, bytes] = {}
    unpack = "<H" if walked.little_endian else ">H"
    # SH and LO are decoded in the data set's character set, as pydicom decodes a value
    # without escape sequences: with the first (here: only) encoding it names.
    specific = walked.elements.get(_SPECIFIC_CHARACTER_SET)
    term = specific[1].decode("latin-1").rstrip("\0 ") if specific else ""
    codec = python_encoding.get(term) if term else default_encoding
    if codec is None or "\\" in term:
        return None  # several or unknown character sets: pydicom's business
    for tag, (explicit_vr, raw) in walked.elements.items():
        keyword, vr = _WANTED[tag]
        if explicit_vr is not None and explicit_vr != vr:
            return None
        if vr == "PN":
            if b"\\" in raw:
                return None  # several names (or a GBK trail byte 0x5C): pydicom splits them
            names[keyword] = raw
        elif vr == "US":
            if len(raw) == 2:
                values[keyword] = struct.unpack(unpack, raw)[0]
            elif raw:
                return None
            else:
                values[keyword] = None
        elif vr in _TEXT_VRS:
            if b"\\" in raw or b"\x1b" in raw:
                return None
            try:
                values[keyword] = raw.decode(codec).rstrip("\0 ")
            except (UnicodeError, LookupError):
                return None  # pydicom warns and replaces: let it
        elif vr in _ASCII_VRS:
            if not raw.isascii() or b"\\" in raw or b"\x1b" in raw:
                return None
            text = raw.decode("ascii").rstrip("\0 ")
            if vr != "IS":
                values[keyword] = text
            elif not raw:
                values[keyword] = None  # an empty number is None in pydicom, not ""
            else:
                try:
                    values[keyword] = IS(text)
                except ValueError:
                    return None  # pydicom keeps what it cannot read, with a warning
        else:
            return None  # float pixel data and the like: rare, left to pydicom
    charsets = [] if specific is None else [term.strip()]
    texts: dict[str, str | None] = {}
    for keyword in TEXT_KEYWORDS:
        if keyword in names:
            text = decode_bytes(names[keyword], charsets).rstrip("=^ ")
        else:
            text = values.get(keyword) or ""
        texts[keyword] = text.strip(" \x00") or None
    return InstanceHeader(values, texts, transfer_syntax)


def _converted_dataset(walked: Walked, transfer_syntax: str) -> Dataset:
    """pydicom's reading of the kept elements, every value converted (the general path)."""
    implicit, little = walked.implicit_vr, walked.little_endian
    ds = Dataset(
        {
            Tag(tag): RawDataElement(
                Tag(tag), vr, len(value), value, 0, implicit, little, True, False
            )
            for tag, (vr, value) in sorted(walked.elements.items())
        }
    )
    # The character set, found once: pydicom otherwise looks up (0008,0005) again for every
    # element it converts (~10 µs each). Same value as its own lookup (no parent data set).
    specific = ds.get("SpecificCharacterSet")
    charset = convert_encodings(specific) if specific else default_encoding
    ds.set_original_encoding(implicit, little, charset)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    for element in ds:
        _ = element.value
    return ds


def _without_nul(header: InstanceHeader) -> InstanceHeader:
    """``header`` with U+0000 inside a text value :func:`storable` (padding is stripped already).

    A modality that pads a field with NUL where DICOM asks for spaces can leave one inside a
    value; PostgreSQL text cannot hold it, and the index refused the instance that SQLite
    took. A UID with one stays invalid and is refused by :func:`check_required_uids`.
    """
    texts = (*header.values.values(), *header.texts.values())
    if not any(isinstance(value, str) and "\x00" in value for value in texts):
        return header
    return InstanceHeader(
        {k: storable(v) if isinstance(v, str) else v for k, v in header.values.items()},
        {k: storable(v) if v is not None else v for k, v in header.texts.items()},
        header.transfer_syntax,
    )


def check_required_uids(values: Mapping[str, Any] | Dataset) -> None:
    """Study, series and instance UIDs and the SOP class must be there and valid (PS3.5 §9)."""
    for keyword in REQUIRED_UIDS:
        value = values.get(keyword)
        if not value or not UID(str(value)).is_valid:
            raise InvalidInstance(f"missing or invalid {keyword}")


def check_pixel_data(
    values: Mapping[str, Any], transfer_syntax: str | None, pixel: PixelData | None
) -> None:
    """Native Pixel Data must hold what the image's own geometry says (PS3.3 C.7.6.3)."""
    if pixel is None:
        if "Rows" in values and not any(keyword in values for keyword in OTHER_PIXEL_KEYWORDS):
            # A stream cut exactly between two elements is well formed but has lost its pixels.
            raise InvalidInstance("image attributes present but no Pixel Data (truncated?)")
        return
    if transfer_syntax is not None and UID(transfer_syntax).is_encapsulated:
        # PS3.5 A.4: an Item tag, then a Sequence Delimitation Item at the very end.
        if not pixel.head.startswith(b"\xfe\xff\x00\xe0"):
            raise InvalidInstance("encapsulated Pixel Data does not start with an item")
        return
    try:
        rows, columns = int(values["Rows"]), int(values["Columns"])
        bits = int(values["BitsAllocated"])
        samples = int(values.get("SamplesPerPixel", 1))
        frames = int(values.get("NumberOfFrames", 1) or 1)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInstance(f"image geometry incomplete: {exc}") from exc
    expected = rows * columns * samples * frames * bits
    if str(values.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        # Native 4:2:2 keeps two luminance samples per chroma pair (PS3.3 C.7.6.3.1.2).
        expected = expected * 2 // 3
    expected = (expected + 7) // 8
    if pixel.length < expected:
        raise InvalidInstance(
            f"Pixel Data truncated: {pixel.length} bytes, {expected} expected for "
            f"{frames}×{rows}×{columns}×{samples} at {bits} bits"
        )


__all__ = [
    "HEADER_KEYWORDS",
    "InstanceHeader",
    "check_pixel_data",
    "check_required_uids",
    "read_header",
]
