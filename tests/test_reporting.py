"""Reporting (issue 4): templates (the ECG one pre-filled from the analysis), draft autosave by
the lease holder, sign permissions, the second signature, amendment with versions kept, the
positive/critical flags and the view delivery builds on.

Studies enter through the real filing door (``ingest.instance.file_instance``) as the township's
devices send them; the worklist item the router would add is added here, so these tests do not
depend on the routing rules. Readers get their bearer tokens minted directly (no argon2 login
per user); claims go through the worklist API.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.api.security import issue_access_token
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    AlertSource,
    AnalysisStatus,
    CriticalAlert,
    Device,
    ECGAnalysisRecord,
    Institution,
    Report,
    ReportVersion,
    Role,
    Study,
    StudyStatus,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.reporting import service
from remote_dx.reporting.templates import CHEST_IMPRESSION
from remote_dx.storage.factory import get_store

SOP_CLASS = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "ECG": "1.2.840.10008.5.1.4.1.1.9.1.1"}
DEVICE = {("XIPING", "DX"): "XIPING_DR", ("XIPING", "ECG"): "XIPING_ECG"}
ABNORMAL = "右下肺片状高密度影，考虑肺炎。"

# Readers added to the demo network: (username, full name, role, institution, modalities, title)
EXTRA_USERS = [
    ("county_junior", "县医院住院医师", Role.READER, "XXXRMYY", ["DX", "CR", "ECG"], "住院医师"),
    ("county_senior", "县医院主任", Role.SENIOR_READER, "XXXRMYY", ["DX", "ECG"], "副主任医师"),
    ("county_ct", "县医院CT医师", Role.READER, "XXXRMYY", ["CT"], "主治医师"),
    ("xiping_reader", "西坪镇医师", Role.READER, "XIPING", ["DX", "CR", "ECG"], "主治医师"),
]  # fmt: skip

MACHINE_ECG = {
    "heart_rate": 72.4,
    "pr_ms": 212.0,
    "qrs_ms": 92.0,
    "qt_ms": 380.0,
    "qtc_bazett_ms": 417.0,
    "qtc_fridericia_ms": 405.0,
    "axis_deg": 45.0,
    "rhythm": "sinus",
    "statements": [
        {"code": "sinus", "zh": "窦性心律", "en": "Sinus rhythm"},
        {"code": "first_degree_av_block", "zh": "一度房室传导阻滞", "en": "First-degree AV block"},
    ],
    "critical": {"critical": False, "reasons": []},
    "quality": {"technically_unsatisfactory": False},
}


@dataclass
class Hub:
    settings: Settings
    db: sessionmaker[Session]
    client: TestClient

    def headers(self, username: str) -> dict[str, str]:
        with self.db() as session:
            user = session.scalar(select(User).where(User.username == username))
            assert user is not None, username
            token = issue_access_token(
                user, secret=self.client.app.state.jwt_secret, settings=self.settings
            )
        return {"Authorization": f"Bearer {token.access_token}"}

    def get(self, path: str, username: str | None = None, **kw):
        headers = self.headers(username) if username else {}
        return self.client.get(path, headers={**headers, **kw.pop("headers", {})}, **kw)

    def call(self, method: str, path: str, username: str, json=None):
        return self.client.request(method, path, headers=self.headers(username), json=json)

    def report(self, uid: str, username: str = "county_reader") -> dict:
        response = self.get(f"/api/v1/studies/{uid}/report", username)
        assert response.status_code == 200, response.text
        return response.json()

    def claim(self, uid: str, username: str = "county_reader") -> None:
        response = self.call("POST", f"/api/v1/worklist/{uid}/claim", username)
        assert response.status_code == 200, response.text

    def sign(self, uid: str, username: str = "county_reader", content: dict | None = None):
        body = {"content": content} if content is not None else None
        return self.call("POST", f"/api/v1/studies/{uid}/report/sign", username, body)

    def item(self, uid: str) -> WorklistItem:
        with self.db() as session:
            item = session.scalar(select(WorklistItem).join(Study).where(Study.study_uid == uid))
            assert item is not None
            return item


def add_users(db: sessionmaker[Session]) -> None:
    with db() as session, session.begin():
        inst = {i.code: i.id for i in session.scalars(select(Institution))}
        for username, name, role, code, modalities, title in EXTRA_USERS:
            session.add(
                User(
                    username=username,
                    full_name=name,
                    password_hash="!unused",
                    role=role,
                    institution_id=inst[code],
                    modalities=modalities,
                    title=title,
                )
            )


def dicom(study_uid: str, modality: str, patient_id: str, patient_name: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientSex = "M"
    ds.PatientBirthDate = "19650304"
    ds.StudyDate = utcnow().strftime("%Y%m%d")
    ds.StudyDescription = "胸部正位" if modality == "DX" else "常规心电图"
    if modality == "DX":
        ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def add_study(
    hub: Hub,
    *,
    modality: str = "DX",
    patient_id: str = "XP-20250001",
    patient_name: str = "王^小东",
    pool: str = "XXXRMYY",
    second_signature: bool = False,
    machine_ecg: dict | None = None,
) -> str:
    """File one instance from 西坪镇卫生院 and route it to ``pool`` (as processing would)."""
    uid = generate_uid()
    with hub.db() as session:
        device = session.scalar(
            select(Device).where(Device.ae_title == DEVICE[("XIPING", modality)])
        )
        sender = Sender.of(device)
    file_instance(
        dicom(uid, modality, patient_id, patient_name),
        store=get_store(hub.settings),
        sessions=hub.db,
        sender=sender,
    )
    with hub.db() as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == uid))
        pool_id = session.scalar(select(Institution.id).where(Institution.code == pool))
        study.status = StudyStatus.PROCESSED
        study.modalities = modality
        study.body_part = "CHEST" if modality == "DX" else None
        study.description = "胸部正位" if modality == "DX" else "常规心电图"
        session.add(
            WorklistItem(
                study_pk=study.id,
                pool_id=pool_id,
                due_at=utcnow() + timedelta(hours=2),
                routing_rule="test",
                second_signature_required=second_signature,
            )
        )
        if machine_ecg is not None:
            session.add(
                ECGAnalysisRecord(
                    study_pk=study.id,
                    status=AnalysisStatus.DONE,
                    result=machine_ecg,
                    heart_rate=machine_ecg.get("heart_rate"),
                    rhythm=machine_ecg.get("rhythm"),
                    analysed_at=utcnow(),
                )
            )
    return uid


def content(impression: str = CHEST_IMPRESSION, findings: str = "双肺纹理清晰。", **extra) -> dict:
    return {"findings": findings, "impression": impression, **extra}


def open_hub(settings: Settings, db: sessionmaker[Session]) -> Iterator[Hub]:
    """The app on the migrated demo network plus the readers of ``EXTRA_USERS``."""
    add_users(db)
    with TestClient(create_app(settings)) as client:
        yield Hub(settings, db, client)


@pytest.fixture
def hub(settings: Settings, db: sessionmaker[Session]) -> Iterator[Hub]:
    yield from open_hub(settings, db)


# --- templates ---------------------------------------------------------------------------------


def test_templates_list_and_chest_dx_starts_from_the_normal_wording(hub: Hub) -> None:
    response = hub.get("/api/v1/report-templates", "county_reader")
    assert response.status_code == 200, response.text
    templates = {t["code"]: t for t in response.json()}
    assert {"chest-dx", "limb-dx", "imaging", "ecg"} <= set(templates)
    assert templates["chest-dx"]["defaults"]["impression"] == CHEST_IMPRESSION
    assert "肋膈角锐利" in templates["chest-dx"]["defaults"]["findings"]
    assert templates["ecg"]["validity_days"] == 7
    assert hub.get("/api/v1/report-templates").status_code == 401

    uid = add_study(hub)
    report = hub.report(uid)
    assert report["status"] is None and report["versions"] == []
    assert report["template"] == "chest-dx"
    assert report["draft"]["saved"] is False
    assert report["draft"]["content"]["impression"] == CHEST_IMPRESSION


def test_ecg_template_is_prefilled_from_the_analysis_and_editable(hub: Hub) -> None:
    uid = add_study(hub, modality="ECG", machine_ecg=MACHINE_ECG)
    draft = hub.report(uid)["draft"]
    assert draft["template"] == "ecg"
    prefill = draft["content"]
    assert prefill["measurements"] == {
        "heart_rate": 72.4,
        "pr_ms": 212.0,
        "qrs_ms": 92.0,
        "qt_ms": 380.0,
        "qtc_bazett_ms": 417.0,
        "axis_deg": 45.0,
    }
    assert prefill["rhythm"] == "sinus"
    assert [s["code"] for s in prefill["statements"]] == ["sinus", "first_degree_av_block"]
    assert prefill["impression"] == "窦性心律；一度房室传导阻滞。"
    assert "心率 72 次/分" in prefill["findings"] and "PR 间期 212 ms" in prefill["findings"]

    # The reader's confirmed values (stored beside the machine's) win over the machine's.
    confirmed = {"measurements": {"heart_rate": 75.0, "pr_ms": 196.0}, "statements": []}
    response = hub.call("PUT", f"/api/v1/ecg/{uid}/confirmed", "county_reader", confirmed)
    assert response.status_code == 200, response.text
    prefill = hub.report(uid)["draft"]["content"]
    assert prefill["measurements"]["heart_rate"] == 75.0
    assert prefill["measurements"]["pr_ms"] == 196.0
    assert prefill["measurements"]["qrs_ms"] == 92.0  # not confirmed: the machine's
    assert "心率 75 次/分" in prefill["findings"]
    assert prefill["findings"].endswith("（测量值经医师确认）")

    # Editable: the reader changes a value and a statement, and that is what gets signed.
    hub.claim(uid)
    edited = {
        **prefill,
        "measurements": {**prefill["measurements"], "qtc_bazett_ms": 470.0},
        "statements": [*prefill["statements"], {"code": "prolonged_qtc", "zh": "QTc 延长"}],
        "impression": "窦性心律；一度房室传导阻滞；QTc 延长。",
    }
    response = hub.call("PUT", f"/api/v1/studies/{uid}/report/draft", "county_reader",
                        {"content": edited})  # fmt: skip
    assert response.status_code == 200, response.text
    signed = hub.sign(uid)
    assert signed.status_code == 200, signed.text
    version = signed.json()["versions"][0]
    assert version["content"]["measurements"]["qtc_bazett_ms"] == 470.0
    assert version["content"]["statements"][-1]["code"] == "prolonged_qtc"
    assert signed.json()["positive"] is True  # AV block, prolonged QTc
    assert signed.json()["critical"] is False


def test_confirmed_ecg_values_reach_the_saved_draft_labelled_as_confirmed(hub: Hub) -> None:
    """The reader opened the ECG (the draft autosaved with the machine's values) and then
    corrected the measurements: the draft shows the corrected values, labelled, without
    retyping; what the reader wrote by hand stays."""
    uid = add_study(hub, modality="ECG", machine_ecg=MACHINE_ECG)
    hub.claim(uid)
    machine = hub.report(uid)["draft"]["content"]
    assert "心率 72 次/分" in machine["findings"] and "医师确认" not in machine["findings"]
    own_impression = "窦性心律；一度房室传导阻滞，请结合临床。"
    saved = hub.call("PUT", f"/api/v1/studies/{uid}/report/draft", "county_reader",
                     {"content": {**machine, "impression": own_impression}})  # fmt: skip
    assert saved.status_code == 200, saved.text

    corrected = {
        "measurements": {**{k: MACHINE_ECG[k] for k in machine["measurements"]},
                         "heart_rate": 64.0, "pr_ms": 236.0, "axis_deg": -30.0},
        "rhythm": "sinus_brady",
        "statements": MACHINE_ECG["statements"],
    }  # fmt: skip
    response = hub.call("PUT", f"/api/v1/ecg/{uid}/confirmed", "county_reader", corrected)
    assert response.status_code == 200, response.text

    draft = hub.report(uid)["draft"]
    assert draft["saved"] is True
    content = draft["content"]
    findings = content["findings"]
    assert "心率 64 次/分" in findings and "PR 间期 236 ms" in findings, findings
    assert "QRS 电轴 -30°" in findings and findings.startswith("窦性心动过缓，"), findings
    assert "心率 72" not in findings and "PR 间期 212" not in findings
    assert findings.endswith("（测量值经医师确认）")
    assert content["measurements"]["heart_rate"] == 64.0
    assert content["measurements"]["qrs_ms"] == 92.0  # confirmed as the machine said it
    assert content["rhythm"] == "sinus_brady"
    assert content["impression"] == own_impression  # the reader's own words are kept

    # Signing the draft as saved signs the corrected values.
    signed = hub.sign(uid)
    assert signed.status_code == 200, signed.text
    version = signed.json()["versions"][0]["content"]
    assert version["findings"] == findings
    assert version["measurements"]["pr_ms"] == 236.0


def test_an_autosave_made_before_an_ecg_confirmation_cannot_put_the_machine_values_back(
    hub: Hub,
) -> None:
    """The browser's autosave was on its way (made from revision 1, with the machine's values)
    when the reader confirmed corrected measurements: the server refuses it (409, naming the
    draft's revision), keeps the confirmed values, and the reader's text saves on that
    revision."""
    uid = add_study(hub, modality="ECG", machine_ecg=MACHINE_ECG)
    hub.claim(uid)
    path = f"/api/v1/studies/{uid}/report/draft"
    suggestion = hub.report(uid)["draft"]
    assert suggestion["saved"] is False and suggestion["revision"] == 0
    machine = suggestion["content"]
    first = hub.call("PUT", path, "county_reader", {"content": machine, "base_revision": 0})
    assert first.status_code == 200, first.text
    assert first.json()["draft"]["revision"] == 1

    corrected = {
        "measurements": {**{k: MACHINE_ECG[k] for k in machine["measurements"]}, "pr_ms": 236.0},
        "statements": MACHINE_ECG["statements"],
    }
    assert hub.call("PUT", f"/api/v1/ecg/{uid}/confirmed", "county_reader", corrected).is_success
    assert hub.report(uid)["draft"]["revision"] == 2  # the confirmation changed the draft

    typed = "一度房室传导阻滞，请结合临床。"
    stale = {"content": {**machine, "impression": typed}, "base_revision": 1}
    refused = hub.call("PUT", path, "county_reader", stale)
    assert refused.status_code == 409, refused.text
    assert refused.json()["revision"] == 2 and "revision 1" in refused.json()["detail"]
    kept = hub.report(uid)["draft"]["content"]
    assert kept["measurements"]["pr_ms"] == 236.0 and "PR 间期 236 ms" in kept["findings"]

    # What the viewer does next: take the newer draft, keep the reader's text, save on it.
    retry = {"content": {**kept, "impression": typed}, "base_revision": 2}
    saved = hub.call("PUT", path, "county_reader", retry)
    assert saved.status_code == 200, saved.text
    draft = hub.report(uid)["draft"]
    assert draft["revision"] == 3
    assert draft["content"]["impression"] == typed
    assert draft["content"]["measurements"]["pr_ms"] == 236.0

    # A client that names no revision overwrites, as before.
    blind = hub.call("PUT", path, "county_reader", {"content": machine})
    assert blind.status_code == 200 and blind.json()["draft"]["revision"] == 4


# --- drafts ------------------------------------------------------------------------------------


def test_draft_autosave_by_the_lease_holder_only(hub: Hub) -> None:
    uid = add_study(hub)
    path = f"/api/v1/studies/{uid}/report/draft"
    body = {"content": content(ABNORMAL)}

    unclaimed = hub.call("PUT", path, "county_reader", body)
    assert unclaimed.status_code == 409 and "claim" in unclaimed.json()["detail"]
    hub.claim(uid)
    assert hub.call("PUT", path, "tech_xiping", body).status_code == 403
    other = hub.call("PUT", path, "county_senior", body)
    assert other.status_code == 409 and "claimed by" in other.json()["detail"]
    assert hub.call("PUT", path, "province_reader", body).status_code == 404

    first = hub.call("PUT", path, "county_reader", body)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "draft"
    assert first.json()["draft"]["saved"] is True
    saved_at = first.json()["draft"]["saved_at"]
    assert hub.item(uid).status == WorklistStatus.DRAFTED
    lease_before = hub.item(uid).lease_expires_at

    second = {"template": "imaging", "content": content("第二稿：" + ABNORMAL)}
    again = hub.call("PUT", path, "county_reader", second)
    assert again.status_code == 200, again.text
    report = hub.report(uid)
    assert report["template"] == "imaging"
    assert report["draft"]["content"]["impression"] == "第二稿：" + ABNORMAL
    assert report["draft"]["saved_at"] >= saved_at
    assert hub.item(uid).lease_expires_at == lease_before  # saving renews nothing

    # The township sees that a report is being written, not the unsigned text.
    township = hub.report(uid, "tech_xiping")
    assert township["status"] == "draft" and township["draft"] is None

    bad = hub.call("PUT", path, "county_reader", {"template": "nope", "content": content()})
    assert bad.status_code == 422 and "unknown report template" in bad.json()["detail"]
    extra = hub.call("PUT", path, "county_reader", {"content": {**content(), "x": 1}})
    assert extra.status_code == 422

    # Signing without content signs the saved draft.
    signed = hub.sign(uid)
    assert signed.status_code == 200, signed.text
    assert signed.json()["versions"][0]["content"]["impression"] == "第二稿：" + ABNORMAL
    assert signed.json()["draft"] is None
    late = hub.call("PUT", path, "county_reader", body)
    assert late.status_code == 409 and "amendment" in late.json()["detail"]


# --- signing -----------------------------------------------------------------------------------


def test_sign_permissions(hub: Hub) -> None:
    uid = add_study(hub)
    normal = content()
    technician = hub.sign(uid, "tech_xiping", normal)
    assert technician.status_code == 403 and "technician" in technician.json()["detail"]
    assert hub.sign(uid, "province_reader", normal).status_code == 404  # another pool
    assert hub.sign(uid, "xiping_reader", normal).status_code == 404  # township, another pool
    unqualified = hub.sign(uid, "county_ct", normal)
    assert unqualified.status_code == 403 and "DX" in unqualified.json()["detail"]
    assert hub.sign(uid, "admin", normal).status_code == 403
    assert hub.sign(uid, "county_reader").status_code == 422  # nothing to sign
    empty = hub.sign(uid, "county_reader", content(impression="  "))
    assert empty.status_code == 422 and "impression" in empty.json()["detail"]

    # A reader may not sign across another reader's lease.
    hub.claim(uid, "county_senior")
    assert hub.sign(uid, "county_reader", normal).status_code == 409

    signed = hub.sign(uid, "county_senior", normal)
    assert signed.status_code == 200, signed.text
    report = signed.json()
    assert report["status"] == "final" and report["current_version"] == 1
    assert report["signed_by"]["username"] == "county_senior"
    assert len(report["verify_code"]) == 10
    assert not set(report["verify_code"]) & set("01OI")
    assert report["positive"] is False and report["critical"] is False
    assert report["versions"][0]["signature_valid"] is True
    assert report["versions"][0]["kind"] == "final"
    item = hub.item(uid)
    assert item.status == WorklistStatus.SIGNED and item.claimed_by_id is None

    again = hub.sign(uid, "county_senior", normal)
    assert again.status_code == 409 and "amend" in again.json()["detail"]
    # The township sees the signed result.
    assert (
        hub.report(uid, "tech_xiping")["versions"][0]["content"]["impression"] == CHEST_IMPRESSION
    )


def test_second_signature_junior_preliminary_senior_final(hub: Hub) -> None:
    delivered: list[tuple[str, int]] = []

    def hook(_session: Session, report: Report, version: ReportVersion) -> None:
        delivered.append((report.status.value, version.version))

    service.on_signed.append(hook)
    try:
        uid = add_study(hub, second_signature=True)
        first = hub.sign(uid, "county_reader", content(ABNORMAL))  # 主治医师: junior
        assert first.status_code == 200, first.text
        assert first.json()["status"] == "preliminary"
        assert first.json()["versions"][0]["kind"] == "preliminary"
        assert first.json()["second_signature_required"] is True
        assert delivered == []  # a preliminary signature is not delivered
        assert hub.item(uid).status == WorklistStatus.DRAFTED

        path = f"/api/v1/studies/{uid}/report/confirm"
        junior = hub.call("POST", path, "county_junior")
        assert junior.status_code == 403 and "junior" in junior.json()["detail"]
        # A junior may read it but not claim it: a lease would only hold the senior off (409).
        claim = f"/api/v1/worklist/{uid}/claim"
        for reader in ("county_junior", "county_reader"):
            refused = hub.call("POST", claim, reader)
            assert refused.status_code == 403, refused.text
            assert "second signature" in refused.json()["detail"]
        assert hub.item(uid).claimed_by_id is None
        assert hub.report(uid, "county_junior")["status"] == "preliminary"  # still readable
        assert hub.call("POST", claim, "county_senior").status_code == 200
        assert hub.call("POST", path, "tech_xiping").status_code == 403
        assert hub.call("POST", path, "province_reader").status_code == 404
        amend = hub.call("POST", f"/api/v1/studies/{uid}/report/amend", "county_senior",
                         {"content": content(), "reason": "x"})  # fmt: skip
        assert amend.status_code == 409

        senior = hub.call("POST", path, "county_senior",
                          {"content": content(ABNORMAL + "建议抗炎治疗后复查。")})  # fmt: skip
        assert senior.status_code == 200, senior.text
        report = senior.json()
        assert report["status"] == "final"
        assert report["signed_by"]["username"] == "county_reader"
        assert report["confirmed_by"]["username"] == "county_senior"
        assert [v["kind"] for v in report["versions"]] == ["preliminary", "confirm"]
        assert report["versions"][0]["content"]["impression"] == ABNORMAL  # kept
        assert all(v["signature_valid"] for v in report["versions"])
        assert delivered == [("final", 2)]
        assert hub.item(uid).status == WorklistStatus.SIGNED
        assert hub.call("POST", path, "county_senior").status_code == 409

        # A senior's own first signature is final at once, second signature or not.
        direct = add_study(hub, second_signature=True)
        assert hub.sign(direct, "county_senior", content()).json()["status"] == "final"
        # A junior without a second-signature rule signs final too.
        plain = add_study(hub)
        assert hub.sign(plain, "county_junior", content()).json()["status"] == "final"
        assert len(delivered) == 3
    finally:
        service.on_signed.remove(hook)

    with hub.db() as session:
        view = service.signed_report_view(session, uid)
    assert view.status == "final" and view.version == 2 and view.kind == "confirm"
    assert [(s.username, s.role) for s in view.signers] == [
        ("county_reader", "author"),
        ("county_senior", "confirmer"),
    ]
    assert view.origin_name == "西坪镇卫生院" and view.pool_name == "西峡县人民医院"
    assert view.patient_name == "王^小东" and view.modality == "DX"
    assert view.signature_valid is True and view.verify_path == f"/verify/{view.verify_code}"
    assert view.impression.startswith(ABNORMAL)


def test_amend_keeps_versions_and_code_and_needs_a_reason(hub: Hub) -> None:
    uid = add_study(hub)
    signed = hub.sign(uid, "county_reader", content())
    assert signed.status_code == 200, signed.text
    code = signed.json()["verify_code"]
    path = f"/api/v1/studies/{uid}/report/amend"

    no_reason = hub.call("POST", path, "county_reader", {"content": content(ABNORMAL)})
    assert no_reason.status_code == 422
    blank = hub.call("POST", path, "county_reader", {"content": content(ABNORMAL), "reason": " "})
    assert blank.status_code == 422
    assert hub.call("POST", path, "tech_xiping",
                    {"content": content(ABNORMAL), "reason": "r"}).status_code == 403  # fmt: skip

    amended = hub.call("POST", path, "county_reader",
                       {"content": content(ABNORMAL), "reason": "复阅发现右下肺炎症"})  # fmt: skip
    assert amended.status_code == 200, amended.text
    report = amended.json()
    assert report["status"] == "amended" and report["current_version"] == 2
    assert report["verify_code"] == code  # the printed code leads to the current version
    assert report["positive"] is True  # normal → abnormal
    v1, v2 = report["versions"]
    assert (v1["version"], v1["kind"], v1["content"]["impression"]) == (
        1,
        "final",
        CHEST_IMPRESSION,
    )
    assert (v2["version"], v2["kind"], v2["reason"]) == (2, "amend", "复阅发现右下肺炎症")
    assert v1["signature_valid"] and v2["signature_valid"]

    third = hub.call("POST", path, "county_senior",
                     {"content": content(ABNORMAL + "请随访。"), "reason": "补充建议"})  # fmt: skip
    assert third.status_code == 200, third.text
    assert [v["version"] for v in third.json()["versions"]] == [1, 2, 3]
    with hub.db() as session:
        old = service.signed_report_view(session, uid, version=1)
        current = service.signed_report_view(session, uid)
    assert old.status == "superseded" and old.impression == CHEST_IMPRESSION
    assert current.status == "amended" and current.amendment_reason == "补充建议"
    assert [s.role for s in current.signers] == ["author", "amender"]


def test_critical_report_raises_an_alert_for_the_township_once(hub: Hub) -> None:
    stemi = {
        **MACHINE_ECG,
        "statements": [{"code": "stemi_suspected", "zh": "疑似急性 ST 段抬高型心肌梗死"}],
    }
    uid = add_study(hub, modality="ECG", machine_ecg=stemi)
    prefill = hub.report(uid)["draft"]["content"]
    prefill["critical"] = None  # derive it from the statement codes
    signed = hub.sign(uid, "county_reader", prefill)
    assert signed.status_code == 200, signed.text
    assert signed.json()["critical"] is True and signed.json()["positive"] is True
    with hub.db() as session:
        alerts = session.scalars(
            select(CriticalAlert).join(Study).where(Study.study_uid == uid)
        ).all()
        origin = session.scalar(select(Institution.id).where(Institution.code == "XIPING"))
    assert [(a.source, a.origin_id) for a in alerts] == [(AlertSource.READER, origin)]
    assert alerts[0].reasons[0]["verify_code"] == signed.json()["verify_code"]

    amended = hub.call("POST", f"/api/v1/studies/{uid}/report/amend", "county_reader",
                       {"content": prefill, "reason": "补充导联"})  # fmt: skip
    assert amended.status_code == 200, amended.text
    with hub.db() as session:
        count = len(
            session.scalars(select(CriticalAlert).join(Study).where(Study.study_uid == uid)).all()
        )
    assert count == 1


def test_racing_signatures_one_wins_the_other_is_told(hub: Hub) -> None:
    """Two readers press "sign" on one study at once: exactly one signature, never a 500."""
    uids = [add_study(hub) for _ in range(3)]
    headers = {name: hub.headers(name) for name in ("county_reader", "county_junior")}
    for uid in uids:
        barrier = threading.Barrier(2)

        def press(name: str, uid: str = uid, barrier: threading.Barrier = barrier) -> int:
            barrier.wait()
            return hub.client.post(
                f"/api/v1/studies/{uid}/report/sign",
                headers=headers[name],
                json={"content": content()},
            ).status_code

        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(press, headers))
        assert codes == [200, 409], codes
        assert [v["version"] for v in hub.report(uid)["versions"]] == [1]
