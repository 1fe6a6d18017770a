"""De-identified export (issue 7, PS3.15 Annex E basic profile): no PHI left, UIDs remapped
consistently, burned-in annotation honoured, pixels intact; the API's roles and scope; the CLI."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, sessionmaker
from typer.testing import CliRunner

from remote_dx.api.app import create_app
from remote_dx.cli import app as cli_app
from remote_dx.core.clock import utcnow
from remote_dx.core.models import AuditRecord, Device, Institution, Study, WorklistItem
from remote_dx.core.settings import Settings
from remote_dx.imaging.deidentify import Pseudonym, UIDMap, deidentify_instances
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store

# Identifying values put into the test study; none may survive, in any encoding.
PHI = [
    "Zhang", "张", "P123456", "19650304", "ACC998877", "S4242", "西峡县人民医院", "Xixia",
    "Dr^Li", "李医生", "Operator^Wang", "STATION-7", "SN-0042", "胸部正位", "13800138000",
    "河南省西峡县", "OTHER-ID-9", "HOSPITAL-NOTE", "20261120", "083015", "1.3.6.1.4.1.99999",
]  # fmt: skip


def _phi_instance(
    name: str, study: str, series: str, frame: str, number: int, **extra: object
) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.remove_private_tags()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.SourceApplicationEntityTitle = "STATION-7"
    ds.InstanceNumber = number
    ds.PatientName = "Zhang^San=张^三"
    ds.PatientID = "P123456"
    ds.PatientBirthDate = "19650304"
    ds.PatientSex = "M"
    ds.PatientAge = "061Y"
    ds.PatientAddress = "河南省西峡县"
    ds.PatientTelephoneNumbers = "13800138000"
    ds.AccessionNumber = "ACC998877"
    ds.StudyID = "S4242"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20261120"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "083015"
    ds.StudyDescription = "胸部正位"
    ds.InstitutionName = "西峡县人民医院"
    ds.InstitutionAddress = "Xixia"
    ds.ReferringPhysicianName = "Dr^Li=李医生"
    ds.OperatorsName = "Operator^Wang"
    ds.StationName = "STATION-7"
    ds.DeviceSerialNumber = "SN-0042"
    ds.ImageComments = "HOSPITAL-NOTE"
    other = Dataset()
    other.PatientID = "OTHER-ID-9"
    ds.OtherPatientIDsSequence = Sequence([other])
    # A nested person name and date somewhere the table does not name: cleaned by kind.
    item = Dataset()
    item.VerifyingObserverName = "Dr^Li"
    item.VerificationDateTime = "20261120083015"
    item.VerifyingOrganization = "西峡县人民医院"
    ds.VerifyingObserverSequence = Sequence([item])
    ds.add_new(0x00091010, "LO", "P123456")  # private: removed
    ds.private_block(0x0011, "RDX TEST", create=True).add_new(0x01, "LO", "Zhang")
    ds.add_new(0x00190010, "UN", b"Zhang P123456")  # private creator as UN
    ds.DerivationDescription = "from 1.3.6.1.4.1.99999"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def originals() -> list[Dataset]:
    study, ct_series, mr_series, frame = (generate_uid() for _ in range(4))
    first = _phi_instance("CT_small.dcm", study, ct_series, frame, 1)
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second = _phi_instance(
        "CT_small.dcm", study, ct_series, frame, 2, ReferencedImageSequence=Sequence([ref])
    )
    mr = _phi_instance("MR_small_RLE.dcm", study, mr_series, frame, 1)  # compressed pixels
    burned = _phi_instance("CT_small.dcm", study, ct_series, frame, 3, BurnedInAnnotation="YES")
    return [first, second, mr, burned]


def _uids(ds: Dataset) -> set[str]:
    found: set[str] = set()

    def visit(dataset: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.update(str(v) for v in values if not str(v).startswith("1.2.840.10008."))

    ds.walk(visit)
    ds.file_meta.walk(visit)
    # Names the writing software, not the patient.
    found.discard(str(ds.file_meta.get("ImplementationClassUID", "")))
    return found


def _assert_no_phi(data: bytes, original_uids: set[str]) -> None:
    for text in PHI:
        for codec in ("utf-8", "gb18030"):
            assert text.encode(codec) not in data, f"{text!r} left in the file ({codec})"
    for uid in original_uids:
        assert uid.encode() not in data, f"original UID {uid} left in the file"
    ds = pydicom.dcmread(io.BytesIO(data))

    def visit(dataset: Dataset, element: pydicom.DataElement) -> None:
        assert not element.tag.is_private, f"private {element.tag} left"
        assert element.VR != "UN", f"UN {element.tag} left"
        if element.VR == "PN":
            assert not element.value or str(element.value).startswith("ANON^"), element
        if element.VR in ("DA", "DT", "TM"):
            assert not element.value, f"{element.keyword} = {element.value!r}"
        if element.VR not in ("SQ", "OB", "OW", "OF", "OD", "UN"):
            text = str(element.value)
            assert not any(phi in text for phi in PHI), f"{element.keyword} = {text!r}"

    ds.walk(visit)


def test_basic_profile_removes_phi_and_remaps_uids_consistently(
    originals: list[Dataset],
) -> None:
    original_uids = set().union(*(_uids(ds) for ds in originals))
    uids = UIDMap()
    result = deidentify_instances(
        [(str(ds.SOPInstanceUID), _bytes(ds)) for ds in originals], uids=uids
    )
    # Burned-in annotation: left out, and said so.
    assert [s.sop_instance_uid for s in result.skipped] == [str(originals[3].SOPInstanceUID)]
    assert "Burned-in" in result.readme()
    assert len(result.files) == 3
    for _, data in result.files:
        _assert_no_phi(data, original_uids)
        assert data[:128] == b"\0" * 128  # CT_small's preamble is a TIFF header

    out = [pydicom.dcmread(io.BytesIO(data)) for _, data in result.files]
    first, second, mr = out
    # One new study; the two CT instances share a new series, the MR has another.
    assert {ds.StudyInstanceUID for ds in out} == {result.study_uid}
    assert result.study_uid != originals[0].StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != mr.SeriesInstanceUID
    assert len({ds.FrameOfReferenceUID for ds in out}) == 1
    assert uids(str(originals[0].SeriesInstanceUID)) == first.SeriesInstanceUID
    # A reference between instances still points at the right (new) instance.
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in out)
    assert all(ds.SOPClassUID == orig.SOPClassUID for ds, orig in zip(out, originals, strict=False))
    # Deidentification method attributes (PS3.15 E.1.1).
    for ds in out:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
        assert "PS3.15" in ds.DeidentificationMethod
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
        assert str(ds.PatientName) == result.pseudonym.patient_name
        assert ds.PatientID == result.pseudonym.patient_id
        assert "PatientBirthDate" in ds and not ds.PatientBirthDate  # type 2: present, empty
        assert "AccessionNumber" in ds and not ds.AccessionNumber
        assert "InstitutionName" not in ds and "OtherPatientIDsSequence" not in ds
    # Pixels: unchanged, compressed ones still compressed and byte-identical.
    for ds, orig in zip(out, originals, strict=False):
        assert ds.PixelData == orig.PixelData
        assert ds.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
        assert np.array_equal(ds.pixel_array, orig.pixel_array)


def test_separate_exports_do_not_link(originals: list[Dataset]) -> None:
    parts = [(str(ds.SOPInstanceUID), _bytes(ds)) for ds in originals[:1]]
    one, two = deidentify_instances(parts), deidentify_instances(parts)
    assert one.study_uid != two.study_uid
    gone = deidentify_instances([*parts, ("1.2.3.999", None)])
    assert [(s.sop_instance_uid, s.reason) for s in gone.skipped] == [
        ("1.2.3.999", "missing from the object store")
    ]
    assert len(gone.files) == 1
    fixed = Pseudonym("ANON^CASE7", "CASE7")
    assert deidentify_instances(parts, pseudonym=fixed).pseudonym.patient_id == "CASE7"


# -- API and CLI ------------------------------------------------------------------------------


def _file_study(settings: Settings, db: sessionmaker[Session], datasets: list[Dataset]) -> str:
    with db() as session:
        device = session.scalar(
            select(Device)
            .options(joinedload(Device.institution))
            .where(Device.ae_title == "XIPING_DR")
        )
        sender = Sender.of(device)
    for ds in datasets:
        file_instance(_bytes(ds), store=get_store(settings), sessions=db, sender=sender)
    study_uid = str(datasets[0].StudyInstanceUID)
    with db() as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        county = session.scalar(select(Institution).where(Institution.code == "XXXRMYY"))
        session.add(
            WorklistItem(
                study_pk=study.id, pool_id=county.id, due_at=utcnow() + timedelta(hours=1),
                routing_rule="test",
            )
        )  # fmt: skip
    return study_uid


def _token(client: TestClient, username: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/token", data={"username": username, "password": "demo"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def test_api_export_by_role_and_scope(
    settings: Settings, db: sessionmaker[Session], originals: list[Dataset]
) -> None:
    study_uid = _file_study(settings, db, originals)
    original_uids = set().union(*(_uids(ds) for ds in originals))
    client = TestClient(create_app(settings))
    url = f"/api/v1/studies/{study_uid}/deidentified"

    response = client.get(url, headers=_token(client, "county_reader"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["x-instances-left-out"] == "1"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
        dicoms = [archive.read(n) for n in names if n.endswith(".dcm")]
        assert "README.txt" in names
    assert len(dicoms) == 3
    for data in dicoms:
        _assert_no_phi(data, original_uids)

    with db() as session:
        exports = session.scalars(
            select(AuditRecord).where(AuditRecord.path == url, AuditRecord.status_code == 200)
        ).all()
    assert [(r.action, r.username) for r in exports] == [("export", "county_reader")]

    assert client.get(url).status_code == 401
    assert client.get(url, headers=_token(client, "tech_xiping")).status_code == 403
    # The province reader's pool did not get this study: 404, existence not revealed.
    hidden = client.get(url, headers=_token(client, "province_reader"))
    assert hidden.status_code == 404
    assert "detail" in hidden.json()
    assert client.get(url, headers=_token(client, "admin")).status_code == 200
    missing = client.get("/api/v1/studies/1.2.3.4/deidentified", headers=_token(client, "admin"))
    assert missing.status_code == 404


def test_cli_deidentify(
    settings: Settings, db: sessionmaker[Session], originals: list[Dataset], tmp_path: Path
) -> None:
    study_uid = _file_study(settings, db, originals)
    out = tmp_path / "teaching"
    run = CliRunner().invoke(cli_app, ["deidentify", study_uid, str(out)])
    assert run.exit_code == 0, run.output
    assert "3 instances de-identified" in run.output
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 3
    assert {p.parent.name for p in files} == {"series001", "series002"}
    original_uids = set().union(*(_uids(ds) for ds in originals))
    for path in files:
        _assert_no_phi(path.read_bytes(), original_uids)
    assert "Burned-in" in (out / "README.txt").read_text(encoding="utf-8")

    missing = CliRunner().invoke(cli_app, ["deidentify", "1.2.3.4", str(tmp_path / "none")])
    assert missing.exit_code == 1
