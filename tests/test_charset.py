"""Patient names in the character sets Chinese modalities send (PS3.3 C.12.1.1.2, PS3.5 §6.1).

The raw value bytes are written out here by hand (PS3.5 Annex K shows the ISO 2022 form), put
into datasets as raw elements, filed as real Part 10 instances and indexed by the worker: what the
worklist shows must be the Unicode name with DICOM's ``^`` (and ``=`` between groups) kept.
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import tasks
from remote_dx.core.charset import decode_element
from remote_dx.core.models import Study, StudyStatus
from remote_dx.core.settings import Settings
from remote_dx.ingest.study import sweep_ready_studies
from remote_dx.ingest.validation import validate_study
from tests.test_pipeline import file, make_dx, part10, quiet_over, run_task

PATIENT_NAME = Tag(0x0010, 0x0010)

# 张^三丰 in GB18030 (= GB2312 for these three), and a family name 𠀀 (U+20000, CJK Ext. B)
# that only GB18030's four-byte form can carry.
GB18030_NAME = bytes.fromhex("d5c5 5e c8fd b7e1")
GB18030_FOUR_BYTE = bytes.fromhex("95328236 5e d5c5")
# PS3.5 K.2 style: alphabetic group in ASCII, ideographic group with ESC $ ) A (GB2312 in G1)
# before each component: "Wang^XiaoDong=王^小东="
ISO2022_IR58_NAME = (
    b"Wang^XiaoDong="
    + b"\x1b$)A"
    + bytes.fromhex("cdf5")
    + b"^"
    + b"\x1b$)A"
    + bytes.fromhex("d0a1 b6ab")
    + b"="
)
UTF8_NAME = bytes.fromhex("e69d8e 5e e59b9b")  # 李^四


def _placeholder(keyword: str, raw: bytes) -> str:
    """An ASCII stand-in of the same (even) length, unique in the file, replaced after writing."""
    mark = f"@{keyword}@"
    return (mark * (len(raw) // len(mark) + 1))[: len(raw) + len(raw) % 2]


def _part10_with_raw(ds: Dataset, values: dict[str, bytes]) -> bytes:
    """Serialise ``ds`` with ``values`` as the exact raw bytes of those text elements.

    pydicom re-encodes text it writes, so the elements are written as same-length ASCII
    placeholders and then swapped for the hand-made bytes (PS3.5 §7.1.1: even length, text
    padded with a space).
    """
    swaps = []
    for keyword, raw in values.items():
        padded = raw + b" " * (len(raw) % 2)
        placeholder = _placeholder(keyword, raw)
        setattr(ds, keyword, placeholder)
        swaps.append((placeholder.encode("ascii"), padded))
    data = part10(ds)
    for placeholder, padded in swaps:
        assert data.count(placeholder) == 1
        data = data.replace(placeholder, padded)
    return data


@pytest.mark.parametrize(
    ("charset", "raw", "expected"),
    [
        ("GB18030", GB18030_NAME, "张^三丰"),
        ("GB18030", GB18030_FOUR_BYTE, "\U00020000^张"),
        (["", "ISO 2022 IR 58"], ISO2022_IR58_NAME, "Wang^XiaoDong=王^小东"),
        ("ISO_IR 192", UTF8_NAME, "李^四"),
        (None, b"Smith^John^^Dr", "Smith^John^^Dr"),
    ],
    ids=["gb18030", "gb18030-four-byte", "iso2022-ir58", "utf8", "default"],
)
def test_person_name_decodes_with_components_kept(
    charset: str | list[str] | None, raw: bytes, expected: str
) -> None:
    ds = make_dx(generate_uid(), patient_name=None)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds = pydicom.dcmread(io.BytesIO(_part10_with_raw(ds, {"PatientName": raw})))
    # The bytes in the file are exactly the ones written above.
    assert ds.get_item(PATIENT_NAME).value.rstrip(b" ") == raw
    assert decode_element(ds, "PatientName") == expected


def test_validation_does_not_spoil_decoding() -> None:
    """pydicom 3.0 decodes ISO 2022 IR 58 with ``$)A`` left in (FIELD-NOTES) and keeps the result
    in the dataset once a value is touched; validation must leave the raw bytes alone."""
    ds = make_dx(generate_uid(), patient_name=None)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    data = _part10_with_raw(ds, {"PatientName": ISO2022_IR58_NAME})
    headers = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for _ in range(2)]
    headers[1].PatientID = "OTHER"
    problems = validate_study(headers)
    assert any("Patient ID (0010,0020) differs" in p for p in problems)
    assert not any("Patient's Name" in p for p in problems)
    assert decode_element(headers[0], "PatientName") == "Wang^XiaoDong=王^小东"


@pytest.mark.parametrize(
    ("charset", "raw", "expected_name"),
    [
        ("GB18030", GB18030_NAME, "张^三丰"),
        (["", "ISO 2022 IR 58"], ISO2022_IR58_NAME, "Wang^XiaoDong=王^小东"),
    ],
    ids=["gb18030", "iso2022-ir58"],
)
def test_worker_indexes_the_name_and_description_in_the_study_charset(
    settings: Settings,
    db: sessionmaker[Session],
    charset: str | list[str],
    raw: bytes,
    expected_name: str,
) -> None:
    tasks.configure(settings)
    study_uid = generate_uid()
    ds = make_dx(study_uid, patient_name=None)
    ds.SpecificCharacterSet = charset
    description = "胸部正位".encode("gb2312")  # chest PA
    if charset != "GB18030":
        description = b"\x1b$)A" + description
    file(settings, db, _part10_with_raw(ds, {"PatientName": raw, "StudyDescription": description}))
    quiet_over(settings)
    assert sweep_ready_studies(db, quiet_seconds=settings.quiet_seconds) == [study_uid]
    assert run_task(study_uid)["result"] == "processed"
    with db() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None and study.status == StudyStatus.PROCESSED
        assert study.patient.name == expected_name
        assert study.description == "胸部正位"
        expected_charset = charset if isinstance(charset, str) else "\\".join(charset)
        assert study.character_set == expected_charset


def test_name_already_converted_by_pydicom_still_decodes_iso2022() -> None:
    """Reading ``ds.PatientName`` first caches pydicom's ``$)A…`` decoding in the dataset."""
    import io

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    from remote_dx.core.charset import decode_element

    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.PatientName = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\xd0\xa1\xb6\xab\x1b(B="
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    _ = str(read.PatientName)  # pydicom converts (and caches) the element here
    assert decode_element(read, "PatientName") == "Zhang^XiaoDong=张^小东"
