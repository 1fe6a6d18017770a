"""Results that travel (issue 4, 结果互认): a signed report as PDF (Chinese text extractable, QR
code of the verify URL), as DICOM Encapsulated PDF and SR (valid for pydicom and dcmtk, in the
original study) sent by C-STORE to the township's AE — retried while it is down, then delivered
— and as a FHIR R4 DiagnosticReport validated with the ``fhir.resources`` models; who may fetch
them (the township's own users yes, another township no).

Studies come in through the real doors (ECG upload API, DICOM filing) and are processed and
routed by the real task; reports are signed with the reporting service when it is there.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import tasks
from remote_dx.api.app import create_app
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Delivery,
    DeliveryChannel,
    Institution,
    Role,
    Study,
    User,
)
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings
from remote_dx.reporting import signing
from remote_dx.reporting.export import delivery
from remote_dx.reporting.export.dicom import (
    BASIC_TEXT_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
    ENHANCED_SR_STORAGE,
    encapsulated_pdf,
    part10_bytes,
    structured_report,
)
from remote_dx.reporting.export.pdf import qr_drawing, render_report_pdf, verify_url
from remote_dx.reporting.export.view import load_view
from remote_dx.reporting.keys import load_signing_key
from remote_dx.reporting.schemas import ReportContent
from tests.ecg_samples import synthetic_ecg
from tests.support import demo_hub_on, free_port, wait_until
from tests.test_ecg_pipeline import process
from tests.test_ecg_upload_api import auth
from tests.test_pipeline import file, make_dx, part10

ECG_IMPRESSION = "窦性心律，下壁导联 ST 段抬高，考虑急性下壁心肌梗死，请立即处理。"
DX_IMPRESSION = "双肺纹理清晰，心影大小正常，未见明确实质性病变。"
PATIENT_NAME_ECG = "Li^Si=李^四"
PATIENT_NAME_DX = "Wang^Xiaoming=王^小明"


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    tasks.configure(settings)
    client = TestClient(create_app(settings))
    with db() as session:
        dinghe = session.scalar(select(Institution).where(Institution.code == "DINGHE"))
        assert dinghe is not None
        session.add(
            User(
                username="tech_dinghe",
                full_name="丁河镇技师",
                password_hash=hash_password("demo"),
                role=Role.TECHNICIAN,
                institution_id=dinghe.id,
            )
        )
        session.commit()
    for username in ("tech_xiping", "tech_dinghe", "county_reader", "province_reader"):
        auth(client, username)
    return client


def sign(
    settings: Settings,
    db: sessionmaker[Session],
    study_uid: str,
    content: dict,
    *,
    username: str = "county_reader",
) -> int:
    """Sign the study's report as ``username`` with the reporting service (which runs the
    delivery hook in the signing transaction); returns the report id."""
    with db() as session:
        user = session.scalar(select(User).where(User.username == username))
        assert user is not None
        report, _version = signing.sign(
            session,
            user,
            study_uid,
            key=load_signing_key(settings),
            content=ReportContent.model_validate(content),
        )
        session.commit()
        return report.id


def amend(
    settings: Settings, db: sessionmaker[Session], study_uid: str, content: dict, reason: str
) -> None:
    with db() as session:
        user = session.scalar(select(User).where(User.username == "county_reader"))
        assert user is not None
        signing.amend(
            session,
            user,
            study_uid,
            key=load_signing_key(settings),
            content=ReportContent.model_validate(content),
            reason=reason,
        )
        session.commit()


def ecg_study(client: TestClient, settings: Settings, db: sessionmaker[Session]) -> str:
    response = client.post(
        "/api/v1/ecg",
        headers=auth(client, "tech_xiping"),
        files=[("files", ("cart.csv", _csv(), "text/csv"))],
        data={
            "patient_id": "XP-ECG-1",
            "patient_name": PATIENT_NAME_ECG,
            "patient_sex": "F",
            "patient_birth_date": "19620505",
        },
    )
    assert response.status_code == 201, response.text
    study_uid = response.json()["study_uid"]
    process(settings, db, study_uid)
    return study_uid


def _csv() -> bytes:
    from tests.ecg_samples import csv_text

    return csv_text(synthetic_ecg(hr=72.0))


def dx_study(settings: Settings, db: sessionmaker[Session]) -> str:
    study_uid = generate_uid()
    ds = make_dx(
        study_uid,
        patient_id="XP-DX-1",
        patient_name=PATIENT_NAME_DX,
        extra={"SpecificCharacterSet": "ISO_IR 192"},
    )
    file(settings, db, part10(ds))
    process(settings, db, study_uid)
    return study_uid


ECG_CONTENT = {
    "findings": "窦性心律，心率 72 次/分；II、III、aVF 导联 ST 段抬高 0.3 mV。",
    "impression": ECG_IMPRESSION,
    "measurements": {
        "heart_rate": 72,
        "pr_ms": 160,
        "qrs_ms": 92,
        "qt_ms": 380,
        "qtc_bazett_ms": 416,
        "axis_deg": 45,
    },
    "statements": [{"code": "sinus", "zh": "窦性心律", "en": "Sinus rhythm"}],
}
DX_CONTENT = {"findings": "胸廓对称，气管居中。两肺野清晰。", "impression": DX_IMPRESSION}


@dataclass
class TownshipSCP:
    """A township PACS: a pynetdicom storage SCP on a free port, collecting what it receives."""

    ae_title: str = "XIPING_PACS"
    port: int = field(default_factory=free_port)
    received: list[Dataset] = field(default_factory=list)
    calling: list[str] = field(default_factory=list)
    _server: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
            self.calling.append(event.assoc.requestor.ae_title)
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title=self.ae_title)
        for sop_class in (ENCAPSULATED_PDF_STORAGE, BASIC_TEXT_SR_STORAGE, ENHANCED_SR_STORAGE):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # type: ignore[attr-defined]
            self._server = None


@pytest.fixture
def township_pacs(db: sessionmaker[Session]) -> Iterator[TownshipSCP]:
    """Xiping gets a return AE (not yet listening: each test starts it when it wants)."""
    scp = TownshipSCP()
    with db() as session:
        xiping = session.scalar(select(Institution).where(Institution.code == "XIPING"))
        assert xiping is not None
        xiping.return_ae_title = scp.ae_title
        xiping.return_host = "127.0.0.1"
        xiping.return_port = scp.port
        session.commit()
    yield scp
    scp.stop()


def deliveries(db: sessionmaker[Session], report_id: int) -> dict[tuple[int, str], Delivery]:
    with db() as session:
        rows = session.scalars(select(Delivery).where(Delivery.report_id == report_id)).all()
        return {(d.version, DeliveryChannel(d.channel).value): d for d in rows}


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


needs_poppler = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdftoppm") is None,
    reason="poppler-utils (pdftotext, pdftoppm) is not installed",
)


# --- PDF -----------------------------------------------------------------------------------------


@needs_poppler
def test_pdf_has_the_chinese_report_the_patient_and_a_qr_code_of_the_verify_url(
    client: TestClient, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    study_uid = ecg_study(client, settings, db)
    sign(settings, db, study_uid, ECG_CONTENT)
    response = client.get(
        f"/api/v1/studies/{study_uid}/report.pdf", headers=auth(client, "tech_xiping")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    pdf = response.content
    text = pdf_text(pdf, tmp_path)
    with db() as session:
        view = load_view(session, study_uid, settings=settings)
    assert view.verify_code and view.signature_valid
    url = verify_url(settings.public_base_url, view.verify_code)
    flat = "".join(text.split())
    assert "".join(ECG_IMPRESSION.split()) in flat
    assert "李四" in flat
    assert "远程诊断报告" in flat and "西峡县人民医院" in flat and "县医院诊断医师" in flat
    assert view.verify_code in flat and url in flat
    assert "72次/分" in flat and "416ms" in flat  # the measurements table
    # The font is embedded (a subset), so any viewer shows the Chinese.
    fonts = subprocess.run(
        ["pdffonts", str(tmp_path / "report.pdf")], capture_output=True, text=True, check=True
    ).stdout
    # pdffonts columns: name type encoding emb sub uni; a subset's name starts "ABCDEF+".
    rows = [line.split() for line in fonts.splitlines()[2:]]
    assert any("+" in row[0] and row[-5:-2] == ["yes", "yes", "yes"] for row in rows), fonts
    # Page 2 is the 12-lead printout.
    info = subprocess.run(
        ["pdfinfo", str(tmp_path / "report.pdf")], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^Pages:\s+2$", info, re.MULTILINE), info

    # The QR code encodes the verify URL and is drawn at the signature block (bottom right of
    # the signature table): a square of about half dark modules where the code should be.
    assert qr_drawing(url).contents[0].value == url
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "72",
            "-f",
            "1",
            "-l",
            "1",
            "-gray",
            "-png",
            str(tmp_path / "report.pdf"),
            str(tmp_path / "page"),
        ],
        check=True,
        timeout=60,
    )
    page = Image.open(next(tmp_path.glob("page*.png"))).convert("L")
    dark, edges = _qr_like_square(page)
    assert 0.2 < dark < 0.75 and edges > 400, f"no QR code on page 1 ({dark:.2f}, {edges})"


def _qr_like_square(page: Image.Image) -> tuple[float, int]:
    """(dark fraction, dark/light transitions along rows) of the busiest 28 mm square at the
    right margin of the page: a QR code is about a third dark and full of edges, text is
    sparse and a blank area has neither."""
    pixels = np.asarray(page) < 128
    height, width = pixels.shape
    side = round(28 / 210 * width)
    left = width - round(20 / 210 * width) - side
    best = (0.0, 0)
    for top in range(0, height - side, 4):
        square = pixels[top : top + side, left : left + side]
        edges = int(np.abs(np.diff(square.astype(np.int8), axis=1)).sum())
        if edges > best[1]:
            best = (float(square.mean()), edges)
    return best


def test_an_unsigned_study_has_no_report_yet(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = dx_study(settings, db)
    for path in ("report.pdf", "report/fhir"):
        response = client.get(
            f"/api/v1/studies/{study_uid}/{path}", headers=auth(client, "tech_xiping")
        )
        assert response.status_code == 404
        assert "not signed" in response.json()["detail"] or "no report" in response.json()["detail"]


# --- FHIR ----------------------------------------------------------------------------------------


def test_fhir_diagnostic_report_validates_with_its_observations_and_pdf(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    study_uid = ecg_study(client, settings, db)
    sign(settings, db, study_uid, ECG_CONTENT)
    response = client.get(
        f"/api/v1/studies/{study_uid}/report/fhir", headers=auth(client, "tech_xiping")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    report = DiagnosticReport.model_validate(body)
    assert report.status == "final"
    assert report.code.coding[0].system == "http://loinc.org"
    assert report.code.coding[0].code == "11524-6"
    assert report.category[0].coding[0].code == "EC"
    assert report.conclusion == ECG_IMPRESSION
    assert report.effectiveDateTime is not None and report.issued is not None
    contained = {c.id: c for c in report.contained}
    patient = contained["patient"]
    assert patient.identifier[0].value == "XP-ECG-1"
    assert patient.identifier[0].system.endswith(":XIPING")
    assert any(n.text == "李四" for n in patient.name)
    assert patient.gender == "female" and str(patient.birthDate) == "1962-05-05"
    performers = {p.reference for p in report.performer}
    assert "#pool" in performers and contained["pool"].name == "西峡县人民医院"
    assert any(contained[r.lstrip("#")].__class__.__name__ == "Practitioner" for r in performers)
    observations = [contained[r.reference.lstrip("#")] for r in report.result]
    assert all(isinstance(o, Observation) for o in observations)
    by_code = {o.code.coding[0].code: o.valueQuantity for o in observations}
    assert {"8867-4", "8625-6", "8633-0", "8634-8", "8636-3"} <= set(by_code)
    assert by_code["8867-4"].code == "/min" and by_code["8867-4"].value == 72
    assert by_code["8636-3"].code == "ms" and by_code["8636-3"].value == 416
    assert all(q.system == "http://unitsofmeasure.org" for q in by_code.values())
    form = report.presentedForm[0]
    assert form.contentType == "application/pdf"
    assert base64.b64decode(body["presentedForm"][0]["data"]).startswith(b"%PDF-")


def test_fhir_for_a_chest_dx_uses_the_chest_x_ray_code_and_no_observations(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    study_uid = dx_study(settings, db)
    sign(settings, db, study_uid, DX_CONTENT)
    body = client.get(
        f"/api/v1/studies/{study_uid}/report/fhir", headers=auth(client, "county_reader")
    ).json()
    report = DiagnosticReport.model_validate(body)
    assert report.code.coding[0].code == "36554-4"  # one chest image: a single view
    assert report.category[0].coding[0].code == "RAD"
    assert not report.result and report.conclusion == DX_IMPRESSION


# --- DICOM ---------------------------------------------------------------------------------------


def test_dicom_pdf_and_sr_are_valid_and_in_the_original_study(
    client: TestClient, settings: Settings, db: sessionmaker[Session], tmp_path: Path
) -> None:
    ecg_uid = ecg_study(client, settings, db)
    dx_uid = dx_study(settings, db)
    sign(settings, db, ecg_uid, ECG_CONTENT)
    sign(settings, db, dx_uid, DX_CONTENT)
    with db() as session:
        ecg_view, dx_view = (
            load_view(session, ecg_uid, settings=settings),
            load_view(session, dx_uid, settings=settings),
        )
    pdf = render_report_pdf(ecg_view, public_base_url=settings.public_base_url)
    objects = {
        "ecg-pdf": encapsulated_pdf(ecg_view, pdf),
        "ecg-sr": structured_report(ecg_view),
        "dx-sr": structured_report(dx_view),
    }
    for name, ds in objects.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(part10_bytes(ds))
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192"
        view = ecg_view if name.startswith("ecg") else dx_view
        assert back.StudyInstanceUID == view.study.study_uid
        with db() as session:
            study = session.scalar(select(Study).where(Study.study_uid == back.StudyInstanceUID))
            assert study is not None
            assert back.SeriesInstanceUID not in {s.series_uid for s in study.series}
        assert back.PatientID == view.patient.patient_id
        if shutil.which("dcmdump"):
            dump = subprocess.run(
                ["dcmdump", "-E", str(path)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=60,
            )
            assert dump.returncode == 0, dump.stderr
            assert "E:" not in dump.stderr, dump.stderr

    pdf_ds = pydicom.dcmread(tmp_path / "ecg-pdf.dcm")
    assert pdf_ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert pdf_ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert pdf_ds.EncapsulatedDocument[: pdf_ds.EncapsulatedDocumentLength] == pdf
    assert str(pdf_ds.PatientName) == PATIENT_NAME_ECG

    ecg_sr = pydicom.dcmread(tmp_path / "ecg-sr.dcm")
    # NUM items need Enhanced SR (Basic Text SR forbids NUM); the imaging report stays Basic.
    assert ecg_sr.SOPClassUID == ENHANCED_SR_STORAGE
    assert pydicom.dcmread(tmp_path / "dx-sr.dcm").SOPClassUID == BASIC_TEXT_SR_STORAGE
    assert ecg_sr.CompletionFlag == "COMPLETE" and ecg_sr.VerificationFlag == "VERIFIED"
    assert ecg_sr.VerifyingObserverSequence[0].VerifyingObserverName == "县医院诊断医师"
    items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in ecg_sr.ContentSequence}
    assert items["121073"].TextValue == ECG_IMPRESSION
    heart_rate = items["8867-4"].MeasuredValueSequence[0]
    assert float(heart_rate.NumericValue) == 72
    assert heart_rate.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert heart_rate.MeasurementUnitsCodeSequence[0].CodeValue == "/min"

    if shutil.which("dsrdump"):
        dumps = {}
        for name in ("ecg-sr", "dx-sr"):
            out = subprocess.run(
                ["dsrdump", str(tmp_path / f"{name}.dcm")],
                capture_output=True,
                text=True,
                errors="replace",  # dcmtk cuts long values mid-character
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            assert "E:" not in out.stderr, out.stderr
            assert "VERIFIED" in out.stdout and "Impression" in out.stdout
            dumps[name] = out.stdout
        assert '"Heart rate")="72" (/min,UCUM' in dumps["ecg-sr"]


def test_signed_report_is_sent_by_c_store_retried_while_the_pacs_is_down_then_delivered(
    client: TestClient,
    settings: Settings,
    db: sessionmaker[Session],
    township_pacs: TownshipSCP,
) -> None:
    study_uid = dx_study(settings, db)
    report_id = sign(settings, db, study_uid, DX_CONTENT)
    rows = deliveries(db, report_id)
    assert set(rows) == {(1, "fhir"), (1, "dicom-pdf"), (1, "dicom-sr")}
    assert rows[(1, "fhir")].status == delivery.AVAILABLE
    target = f"XIPING_PACS@127.0.0.1:{township_pacs.port}"
    assert rows[(1, "dicom-pdf")].target == target and rows[(1, "dicom-pdf")].status == "pending"

    # The PACS is down: the attempt is counted, the reason kept, and the task asks for a retry.
    pdf_id, sr_id = rows[(1, "dicom-pdf")].id, rows[(1, "dicom-sr")].id
    outcome = delivery.attempt_delivery(settings, pdf_id)
    assert outcome.status == delivery.RETRYING and outcome.attempts == 1
    assert "cannot connect" in (outcome.error or "")
    assert delivery.backoff_seconds(settings, 1) == settings.delivery_retry_seconds
    assert delivery.backoff_seconds(settings, 3) == 4 * settings.delivery_retry_seconds

    # It comes up: the next attempts (as the worker runs them) deliver both objects.
    township_pacs.start()
    for delivery_id in (pdf_id, sr_id):
        result = tasks.deliver_report.apply(args=[delivery_id])
        assert result.successful(), result.traceback
        assert result.result["status"] == delivery.DELIVERED
    rows = deliveries(db, report_id)
    assert rows[(1, "dicom-pdf")].attempts == 2 and rows[(1, "dicom-sr")].attempts == 1
    assert all(rows[(1, c)].delivered_at is not None for c in ("dicom-pdf", "dicom-sr"))
    assert {str(ds.SOPClassUID) for ds in township_pacs.received} == {
        ENCAPSULATED_PDF_STORAGE,
        BASIC_TEXT_SR_STORAGE,
    }
    assert all(ds.StudyInstanceUID == study_uid for ds in township_pacs.received)
    assert set(township_pacs.calling) == {settings.ae_title}
    received_pdf = next(
        ds for ds in township_pacs.received if ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    )
    assert bytes(received_pdf.EncapsulatedDocument).startswith(b"%PDF-")

    # Idempotent: running a delivered row again sends nothing.
    again = tasks.deliver_report.apply(args=[pdf_id]).result
    assert again["status"] == delivery.DELIVERED and len(township_pacs.received) == 2

    # The township sees where its result went.
    listed = client.get(
        f"/api/v1/studies/{study_uid}/deliveries", headers=auth(client, "tech_xiping")
    )
    assert listed.status_code == 200
    assert {(d["channel"], d["status"]) for d in listed.json()} == {
        ("fhir", "available"),
        ("dicom-pdf", "delivered"),
        ("dicom-sr", "delivered"),
    }

    # An amendment is delivered again: a new SR instance naming the one it replaces.
    amend(settings, db, study_uid, {**DX_CONTENT, "impression": "右下肺少许炎症。"}, "复核更正")
    rows = deliveries(db, report_id)
    assert rows[(2, "dicom-sr")].status == "pending"
    for channel in ("dicom-pdf", "dicom-sr"):
        assert delivery.attempt_delivery(settings, rows[(2, channel)].id).status == "delivered"
    srs = [ds for ds in township_pacs.received if ds.SOPClassUID == BASIC_TEXT_SR_STORAGE]
    assert len(srs) == 2 and srs[0].SOPInstanceUID != srs[1].SOPInstanceUID
    assert srs[0].SeriesInstanceUID == srs[1].SeriesInstanceUID
    predecessor = srs[1].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == srs[0].SOPInstanceUID
    assert srs[1].ContentSequence[-1].TextValue == "右下肺少许炎症。"


def test_delivery_gives_up_after_the_configured_attempts(
    client: TestClient, settings: Settings, db: sessionmaker[Session], township_pacs: TownshipSCP
) -> None:
    settings.delivery_max_attempts = 3
    tasks.configure(settings)
    study_uid = dx_study(settings, db)
    report_id = sign(settings, db, study_uid, DX_CONTENT)
    sr_id = deliveries(db, report_id)[(1, "dicom-sr")].id
    # The worker's retries (run eagerly here: Celery re-runs a retried task at once).
    result = tasks.deliver_report.apply(args=[sr_id])
    row = deliveries(db, report_id)[(1, "dicom-sr")]
    assert row.status == delivery.FAILED and row.attempts == 3, (result.traceback, row.error)
    assert "cannot connect" in (row.error or "")


def test_no_return_ae_means_fhir_only(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = dx_study(settings, db)
    report_id = sign(settings, db, study_uid, DX_CONTENT)
    assert set(deliveries(db, report_id)) == {(1, "fhir")}


def test_lost_delivery_messages_are_found_by_the_reconciler(
    client: TestClient, settings: Settings, db: sessionmaker[Session], township_pacs: TownshipSCP
) -> None:
    from datetime import timedelta

    study_uid = dx_study(settings, db)
    report_id = sign(settings, db, study_uid, DX_CONTENT)
    open_ids = {d.id for d in deliveries(db, report_id).values() if d.status == "pending"}
    assert delivery.reconcile_deliveries(db, settings) == []
    later = utcnow() + timedelta(seconds=settings.reconcile_after_seconds + 1)
    assert set(delivery.reconcile_deliveries(db, settings, later)) == open_ids
    assert delivery.reconcile_deliveries(db, settings, later) == []  # once per grace period


# --- who may fetch -------------------------------------------------------------------------------


def test_the_township_fetches_its_own_results_and_another_township_cannot(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    study_uid = dx_study(settings, db)
    sign(settings, db, study_uid, DX_CONTENT)
    expected = {
        "tech_xiping": 200,  # the township that sent it
        "county_reader": 200,  # the pool that signed it
        "tech_dinghe": 404,  # another township
        "province_reader": 404,  # a pool it never went to
    }
    for username, code in expected.items():
        for path in ("report.pdf", "report/fhir", "deliveries"):
            response = client.get(
                f"/api/v1/studies/{study_uid}/{path}", headers=auth(client, username)
            )
            assert response.status_code == code, (username, path, response.text)
    assert client.get(f"/api/v1/studies/{study_uid}/report.pdf").status_code == 401


def test_the_worker_retries_a_refused_delivery_with_backoff_until_the_pacs_answers(
    client: TestClient, settings: Settings, db: sessionmaker[Session], township_pacs: TownshipSCP
) -> None:
    """The real path: signing enqueues deliver_report after the commit; the embedded Celery
    worker's attempts are refused while the PACS is down and retried with a doubling countdown;
    once the PACS listens, the next retry delivers."""
    settings.delivery_retry_seconds = 0.3
    study_uid = dx_study(settings, db)
    worker = tasks.start_embedded_worker(settings)
    try:
        report_id = sign(settings, db, study_uid, DX_CONTENT)

        def refused_twice() -> bool:
            # An attempt is counted when it starts, so a third counted attempt is the first
            # proof that the second one has been refused (the second may still be in flight
            # when the count reads 2, and would then reach the PACS started below).
            rows = deliveries(db, report_id)
            return all(
                rows[(1, c)].status == delivery.RETRYING and rows[(1, c)].attempts >= 3
                for c in ("dicom-pdf", "dicom-sr")
            )

        wait_until(refused_twice, timeout=60, message="two refused attempts per object")
        township_pacs.start()

        def delivered() -> bool:
            rows = deliveries(db, report_id)
            return all(rows[(1, c)].status == delivery.DELIVERED for c in ("dicom-pdf", "dicom-sr"))

        wait_until(delivered, timeout=60, message="delivery once the PACS listens")
    finally:
        worker.stop()
    assert len(township_pacs.received) == 2
    rows = deliveries(db, report_id)
    assert all(rows[(1, c)].attempts >= 3 for c in ("dicom-pdf", "dicom-sr"))


@pytest.mark.postgres
def test_delivery_and_exports_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out database: delivery rows made in the signing transaction, the attempt
    counted, the C-STORE delivered, the exports read back (JSON content, joins, scoping)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from remote_dx.core.db import get_sessionmaker
    from remote_dx.core.settings import reset_settings

    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = demo_hub_on(settings, postgres_database)
    pg_db = get_sessionmaker(pg)
    tasks.configure(pg)
    client = TestClient(create_app(pg))
    scp = TownshipSCP()
    scp.start()
    try:
        with pg_db() as session:
            xiping = session.scalar(select(Institution).where(Institution.code == "XIPING"))
            assert xiping is not None
            xiping.return_ae_title, xiping.return_host, xiping.return_port = (
                scp.ae_title,
                "127.0.0.1",
                scp.port,
            )
            session.commit()
        auth(client, "tech_xiping")
        study_uid = dx_study(pg, pg_db)
        report_id = sign(pg, pg_db, study_uid, DX_CONTENT)
        rows = deliveries(pg_db, report_id)
        assert set(rows) == {(1, "fhir"), (1, "dicom-pdf"), (1, "dicom-sr")}
        for channel in ("dicom-pdf", "dicom-sr"):
            outcome = delivery.attempt_delivery(pg, rows[(1, channel)].id)
            assert outcome.status == delivery.DELIVERED and outcome.attempts == 1
        assert {ds.StudyInstanceUID for ds in scp.received} == {study_uid}
        body = client.get(
            f"/api/v1/studies/{study_uid}/report/fhir", headers=auth(client, "tech_xiping")
        ).json()
        assert DiagnosticReport.model_validate(body).conclusion == DX_IMPRESSION
    finally:
        scp.stop()
