"""The signed report as DICOM objects for the township's PACS, in the study of the original
(same Study Instance UID, a new series per kind), UTF-8 text (SpecificCharacterSet ISO_IR 192).

- Encapsulated PDF Storage (1.2.840.10008.5.1.4.1.1.104.1; IOD PS3.3 A.45.1): Patient, General
  Study, Encapsulated Document Series (C.24.1), General Equipment, SC Equipment (C.8.6.1),
  Encapsulated Document (C.24.2) and SOP Common modules; the report PDF as the document.
- Structured report: Basic Text SR (1.2.840.10008.5.1.4.1.1.88.11; PS3.3 A.35.1) — a CONTAINER
  titled by the exam's LOINC code with TEXT items for the findings (DCM 121071) and the
  impression (DCM 121073). The ECG measurements are NUM items with UCUM units; Basic Text SR
  does not allow NUM (its relationship constraints, PS3.3 Table A.35.1-2, list TEXT, CODE,
  DATETIME, DATE, TIME, UIDREF, PNAME, COMPOSITE, IMAGE, WAVEFORM and CONTAINER only), so a
  report with measurements is an Enhanced SR (1.2.840.10008.5.1.4.1.1.88.22; A.35.2), which is
  the same tree plus NUM. SR Document General (C.17.2): CompletionFlag COMPLETE, VerificationFlag
  VERIFIED with the signer(s) in VerifyingObserverSequence; an amended version names the
  version it replaces in PredecessorDocumentsSequence.

UIDs are derived from (report, version, kind) so a re-sent object carries the same SOP Instance
UID (a retry is a duplicate the receiver already knows), and an amended version is a new instance
in the same series.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from remote_dx.reporting.export.codes import (
    FINDING,
    IMPRESSION,
    Code,
    exam_code,
    measurement_values,
)
from remote_dx.reporting.export.view import SignedReportView

ENCAPSULATED_PDF_STORAGE = UID("1.2.840.10008.5.1.4.1.1.104.1")
BASIC_TEXT_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.11")
ENHANCED_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.22")
PDF_SERIES_NUMBER = 9001
SR_SERIES_NUMBER = 9002
MANUFACTURER = "remote_dx"
UTF8 = "ISO_IR 192"
LOCAL_TZ = ZoneInfo("Asia/Shanghai")


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:remote-dx:report-objects")


def _uid(*parts: object) -> UID:
    """A stable UID for ``parts``: "2.25." and a name-based (SHA-1, version 5) UUID as an
    integer (PS3.5 B.2). The same report, version and kind always get the same UID."""
    name = "/".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def instance_uid(view: SignedReportView, kind: str, version: int | None = None) -> UID:
    return _uid("report", view.report_id, "version", version or view.version, kind)


def series_uid(view: SignedReportView, kind: str) -> UID:
    return _uid("report", view.report_id, "series", kind)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.code
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.display
    return item


def _da_tm(value: datetime | None) -> tuple[str, str]:
    value = (value or datetime.now(UTC)).astimezone(LOCAL_TZ)
    return value.strftime("%Y%m%d"), value.strftime("%H%M%S")


def _dt(value: datetime | None) -> str:
    value = (value or datetime.now(UTC)).astimezone(LOCAL_TZ)
    return value.strftime("%Y%m%d%H%M%S%z")


def _common(view: SignedReportView, sop_class: UID, kind: str, modality: str) -> Dataset:
    """Patient, General Study, series, equipment and SOP Common attributes of both objects."""
    ds = Dataset()
    ds.SpecificCharacterSet = UTF8
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid(view, kind)
    patient, study = view.patient, view.study
    # Patient module (C.7.1.1); names as indexed (our charset decoding of the original).
    ds.PatientName = patient.name or ""
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.issuer
    ds.PatientBirthDate = patient.birth_date or ""
    ds.PatientSex = patient.sex or ""
    # General Study module (C.7.2.1): the original study.
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date or ""
    ds.StudyTime = study.study_time or ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = study.accession_number or ""
    if study.description:
        ds.StudyDescription = study.description
    # Series (C.24.1 / C.17.1): a new series of ours.
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid(view, kind)
    ds.SeriesNumber = PDF_SERIES_NUMBER if kind == "pdf" else SR_SERIES_NUMBER
    ds.SeriesDescription = "远程诊断报告 PDF" if kind == "pdf" else "远程诊断报告 SR"
    ds.InstanceNumber = view.version
    # General Equipment (C.7.5.1).
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = view.pool_name
    date, time = _da_tm(view.signed_at)
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da_tm(None)
    # All DA/TM of the instance are China time: the study's as the township's modality wrote
    # them, ours converted from UTC (PS3.3 C.12.1.1.8).
    ds.TimezoneOffsetFromUTC = "+0800"
    return ds


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def encapsulated_pdf(view: SignedReportView, pdf: bytes) -> Dataset:
    """Encapsulated PDF Storage instance holding ``pdf`` (PS3.3 A.45.1)."""
    ds = _common(view, ENCAPSULATED_PDF_STORAGE, "pdf", "DOC")
    # SC Equipment (C.8.6.1): a workstation made the document.
    ds.ConversionType = "WSD"
    # Encapsulated Document module (C.24.2).
    ds.AcquisitionDateTime = _dt(view.signed_at)
    ds.BurnedInAnnotation = "YES"  # the PDF names the patient
    ds.DocumentTitle = "远程诊断报告"
    code = exam_code(view.study.modality, view.study.body_part, view.study.num_images, view.is_ecg)
    ds.ConceptNameCodeSequence = Sequence([_code_item(code)])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    # OB values are padded to even length; the length above says where the PDF ends.
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    _file_meta(ds)
    return ds


def _content_item(relationship: str, value_type: str, concept: Code, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([_code_item(concept)])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _num_item(concept: Code, value: float, unit: str) -> Dataset:
    measured = Dataset()
    measured.NumericValue = f"{value:.16g}"[:16]
    unit_item = Dataset()
    unit_item.CodeValue = unit
    unit_item.CodingSchemeDesignator = "UCUM"
    unit_item.CodeMeaning = unit
    measured.MeasurementUnitsCodeSequence = Sequence([unit_item])
    item = _content_item("CONTAINS", "NUM", concept)
    item.MeasuredValueSequence = Sequence([measured])
    return item


def structured_report(view: SignedReportView) -> Dataset:
    """Basic Text SR (Enhanced SR when there are ECG measurements) of the signed report."""
    measured = measurement_values(view.measurements) if view.is_ecg else []
    sop_class = ENHANCED_SR_STORAGE if measured else BASIC_TEXT_SR_STORAGE
    ds = _common(view, sop_class, "sr", "SR")
    ds.ReferencedPerformedProcedureStepSequence = Sequence()  # Type 2 (C.17.1)
    # SR Document General module (C.17.2).
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observers = []
    for signer in reversed(view.signers):  # the one who answers for it first
        observer = Dataset()
        observer.VerifyingObserverName = signer.name
        observer.VerifyingObserverIdentificationCodeSequence = Sequence()  # Type 2
        if signer.username:
            observer.VerifyingObserverIdentificationCodeSequence = Sequence(
                [_code_item(Code(signer.username, signer.name, "99RDX"))]
            )
        observer.VerifyingOrganization = signer.institution or view.pool_name
        observer.VerificationDateTime = _dt(signer.signed_at or view.signed_at)
        observers.append(observer)
    ds.VerifyingObserverSequence = Sequence(observers)
    ds.PerformedProcedureCodeSequence = Sequence()  # Type 2
    if view.version > 1:
        previous = Dataset()
        previous.StudyInstanceUID = view.study.study_uid
        series = Dataset()
        series.SeriesInstanceUID = series_uid(view, "sr")
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = instance_uid(view, "sr", view.version - 1)
        series.ReferencedSOPSequence = Sequence([ref])
        previous.ReferencedSeriesSequence = Sequence([series])
        ds.PredecessorDocumentsSequence = Sequence([previous])
    # SR Document Content module (C.17.3): the root CONTAINER and its children.
    code = exam_code(view.study.modality, view.study.body_part, view.study.num_images, view.is_ecg)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code_item(code)])
    ds.ContinuityOfContent = "SEPARATE"
    children: list[Dataset] = []
    findings = view.findings
    if view.statements:
        findings = "\n".join([*view.statements, findings] if findings else view.statements)
    if findings:
        children.append(_content_item("CONTAINS", "TEXT", FINDING, TextValue=findings))
    children.append(_content_item("CONTAINS", "TEXT", IMPRESSION, TextValue=view.impression or "—"))
    for measurement, value in measured:
        children.append(_num_item(measurement.code, value, measurement.unit))
    ds.ContentSequence = Sequence(children)
    _file_meta(ds)
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
