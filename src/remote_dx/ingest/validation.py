"""Checking received instances for the attributes a remote reading needs.

The checks follow the Type of each attribute in its PS3.3 module (Type 1: present and not empty;
Type 2: present, may be empty). A few Type 2 attributes a remote reader cannot do without
(Patient ID, Patient's Name, Study Date) are also reported when empty, because the reader must
know whose study it is and the result must be recognisable by other hospitals.

Validation never blocks anything: the study is still routed and read; the problems are shown to
the reader and the township so the next exam is sent right.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from remote_dx.core.charset import decode_element


@dataclass(frozen=True)
class Requirement:
    keyword: str
    type: str  # "1" or "2" (PS3.5 §7.4)
    module: str  # PS3.3 section of the module
    needed: bool = False  # report an empty Type 2 value too


PATIENT = "Patient Module (PS3.3 C.7.1.1)"
GENERAL_STUDY = "General Study Module (PS3.3 C.7.2.1)"
GENERAL_SERIES = "General Series Module (PS3.3 C.7.3.1)"
GENERAL_EQUIPMENT = "General Equipment Module (PS3.3 C.7.5.1)"
SOP_COMMON = "SOP Common Module (PS3.3 C.12.1)"
IMAGE_PIXEL = "Image Pixel Module (PS3.3 C.7.6.3)"
WAVEFORM = "Waveform Module (PS3.3 C.10.9)"

REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("PatientName", "2", PATIENT, needed=True),
    Requirement("PatientID", "2", PATIENT, needed=True),
    Requirement("PatientBirthDate", "2", PATIENT),
    Requirement("PatientSex", "2", PATIENT),
    Requirement("StudyInstanceUID", "1", GENERAL_STUDY),
    Requirement("StudyDate", "2", GENERAL_STUDY, needed=True),
    Requirement("StudyTime", "2", GENERAL_STUDY),
    Requirement("ReferringPhysicianName", "2", GENERAL_STUDY),
    Requirement("StudyID", "2", GENERAL_STUDY),
    Requirement("AccessionNumber", "2", GENERAL_STUDY),
    Requirement("Modality", "1", GENERAL_SERIES),
    Requirement("SeriesInstanceUID", "1", GENERAL_SERIES),
    Requirement("SeriesNumber", "2", GENERAL_SERIES),
    Requirement("Manufacturer", "2", GENERAL_EQUIPMENT),
    Requirement("SOPClassUID", "1", SOP_COMMON),
    Requirement("SOPInstanceUID", "1", SOP_COMMON),
)

IMAGE_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("Rows", "1", IMAGE_PIXEL),
    Requirement("Columns", "1", IMAGE_PIXEL),
    Requirement("BitsAllocated", "1", IMAGE_PIXEL),
    Requirement("BitsStored", "1", IMAGE_PIXEL),
    Requirement("PhotometricInterpretation", "1", IMAGE_PIXEL),
    Requirement("SamplesPerPixel", "1", IMAGE_PIXEL),
    Requirement("PixelRepresentation", "1", IMAGE_PIXEL),
)

WAVEFORM_REQUIREMENTS: tuple[Requirement, ...] = (Requirement("WaveformSequence", "1", WAVEFORM),)

# Attributes that must agree across a study's instances (same patient, same study).
CONSISTENT = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate")


def _label(keyword: str) -> str:
    from pydicom.datadict import dictionary_description

    tag = Tag(keyword)
    return f"{dictionary_description(tag)} ({tag.group:04X},{tag.element:04X})"


def _raw(ds: Dataset, keyword: str) -> object:
    """The element's value without making pydicom convert it in place.

    Reading ``ds.PatientName`` replaces the raw bytes with pydicom's decoding, which is wrong for
    ISO 2022 IR 58; the index decodes names itself (core.charset) and needs the bytes intact.
    """
    item = ds.get_item(keyword)
    return None if item is None else item.value


def _empty(ds: Dataset, keyword: str) -> bool:
    value = _raw(ds, keyword)
    if value is None:
        return True
    if isinstance(value, bytes):
        return not value.strip(b" \x00")
    if isinstance(value, str):
        return not value.strip(" \x00")
    try:
        return len(value) == 0  # type: ignore[arg-type]  # sequences, multi-values
    except TypeError:
        return not str(value).strip()


def validate_instance(ds: Dataset) -> list[str]:
    """Problems of one instance, as readable sentences (empty list: nothing to say)."""
    requirements = list(REQUIREMENTS)
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        requirements += IMAGE_REQUIREMENTS
    elif "WaveformSequence" in ds:
        requirements += WAVEFORM_REQUIREMENTS
    problems = []
    for req in requirements:
        if req.keyword not in ds:
            problems.append(f"{_label(req.keyword)} is missing [Type {req.type}, {req.module}]")
        elif (req.type == "1" or req.needed) and _empty(ds, req.keyword):
            problems.append(f"{_label(req.keyword)} is empty [Type {req.type}, {req.module}]")
    return problems


def validate_study(datasets: Iterable[Dataset]) -> list[str]:
    """Problems of a study: each distinct instance problem once, then cross-instance conflicts.

    ``datasets`` are the instances' headers (pixel data not needed).
    """
    problems: list[str] = []
    seen_values: dict[str, set[str]] = {keyword: set() for keyword in CONSISTENT}
    for ds in datasets:
        for problem in validate_instance(ds):
            if problem not in problems:
                problems.append(problem)
        for keyword in CONSISTENT:
            if keyword in ds and not _empty(ds, keyword):
                seen_values[keyword].add(decode_element(ds, keyword) or "")
    for keyword, values in seen_values.items():
        if len(values) > 1:
            problems.append(
                f"{_label(keyword)} differs between the study's instances: "
                + ", ".join(sorted(values))
            )
    return problems
