"""A small fixed scenario for the statistics tests, built through the real code (filing,
processing and routing, claim, consultation, sign, overdue escalation, alert acknowledgement,
recognition re-use) with the movable clock, so every figure can be computed by hand.

Times are Asia/Shanghai (UTC+8). Studies (DX unless said):

=====  ========  ====================  =====================================================
study  township  received              what happens
=====  ========  ====================  =====================================================
A      西坪      01-31 10:00           county claims 10:20, signs 10:40 (TAT 40, claim→sign 20)
B      丁河      01-31 23:30           claims 02-01 00:30, signs 01:30 (TAT 120, c→s 60), positive
C      西坪      02-01 00:30 (UTC Jan) claims 02-02 01:00, signs 01:10 (TAT 1480, over 24 h SLA)
D      西坪      02-10 09:00           county asks the province 09:10; province claims 09:40,
                                       signs 10:00 (TAT 60, c→s 20), positive; 丁河 re-uses it
                                       02-12 10:00 (an exam avoided)
E      丁河      02-20 09:00           never claimed; escalated to the city at 02-21 10:00
F ECG  西坪      02-15 08:00           HR 38 → critical alert (analysis), acknowledged 12 min
                                       after it was raised; claims 08:05, signs 08:09 (TAT 9)
G ECG  丁河      02-16 08:00           four leads off → technically unsatisfactory, sent back
=====  ========  ====================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import pipeline
from remote_dx.core import clock
from remote_dx.core.clock import SHANGHAI
from remote_dx.core.models import CriticalAlert, Device, Study, User
from remote_dx.core.network import apply_network
from remote_dx.core.settings import Settings
from remote_dx.ecg.model import PatientInfo
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.ingest.study import sweep_ready_studies
from remote_dx.reporting.keys import load_signing_key
from remote_dx.reporting.schemas import ReportContent
from remote_dx.reporting.signing import sign
from remote_dx.routing.escalation import escalate_overdue, request_consultation
from remote_dx.simulate.exams import dx_part10, ecg_part10
from remote_dx.stats.recording import record_use
from remote_dx.storage.base import ObjectStore
from remote_dx.worklist.alerts import acknowledge
from remote_dx.worklist.lease import claim

EXTRA_NETWORK = {
    "devices": [
        {"ae_title": "DINGHE_ECG", "name": "丁河镇卫生院 心电图机", "modality": "ECG",
         "institution": "DINGHE"},
    ],
    "users": [
        {"username": "statistician", "full_name": "卫健委统计员", "role": "statistician",
         "institution": "XXXRMYY", "password": "demo"},
        {"username": "tech_dinghe", "full_name": "丁河镇技师", "role": "technician",
         "institution": "DINGHE", "password": "demo"},
    ],
}  # fmt: skip


def sh(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A 2026 Asia/Shanghai wall-clock time as aware UTC."""
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def at(moment: datetime) -> None:
    clock.reset()
    clock.advance(moment - datetime.now(UTC))


@dataclass
class Scenario:
    uids: dict[str, str]
    verify_codes: dict[str, str]


def build(settings: Settings, sessions: sessionmaker[Session], store: ObjectStore) -> Scenario:
    rng = np.random.default_rng(7)
    key = load_signing_key(settings)
    with sessions() as session:
        apply_network(session, EXTRA_NETWORK, with_passwords=True)
        session.commit()
        users = {u.username: u for u in session.scalars(select(User))}
        senders = {}
        for device in session.scalars(select(Device)):
            _ = device.institution
            senders[device.ae_title] = Sender.of(device)
        for user in users.values():
            session.expunge(user)
    county, province = users["county_reader"], users["province_reader"]
    uids: dict[str, str] = {}
    codes: dict[str, str] = {}

    def receive(name: str, when: datetime, ae: str, *, hr: float = 0, leads_off: int = 0) -> None:
        uid = f"1.2.826.0.1.3680043.10.1999.{ord(name)}"
        uids[name] = uid
        patient = PatientInfo(patient_id=f"P-{name}", name=f"TEST^{name}", sex="M",
                              birth_date="19600101")  # fmt: skip
        at(when)
        if ae.endswith("_ECG"):
            data = ecg_part10(rng, study_uid=uid, patient=patient, acquired_at=when, hr=hr,
                              leads_off=leads_off, institution="T", station=ae)  # fmt: skip
        else:
            data = dx_part10(rng, study_uid=uid, patient=patient, acquired_at=when, institution="T")
        file_instance(data, store=store, sessions=sessions, sender=senders[ae])
        processed = when + timedelta(seconds=settings.quiet_seconds + 1)
        at(processed)
        assert uid in sweep_ready_studies(sessions, quiet_seconds=settings.quiet_seconds)
        outcome = pipeline.process_study(uid, sessions=sessions, store=store, now=processed)
        assert outcome.result == "processed", outcome

    def take(name: str, reader: User, when: datetime) -> None:
        at(when)
        with sessions() as session:
            claim(session, reader, uids[name], lease=timedelta(minutes=30), now=when)

    def signed(name: str, reader: User, when: datetime, **content: object) -> None:
        at(when)
        body = ReportContent(findings="所见", impression="意见", **content)  # type: ignore[arg-type]
        with sessions() as session:
            report, _ = sign(session, reader, uids[name], key=key, content=body, now=when)
            codes[name] = str(report.verify_code)
            session.commit()

    receive("A", sh(1, 31, 10), "XIPING_DR")
    take("A", county, sh(1, 31, 10, 20))
    signed("A", county, sh(1, 31, 10, 40), positive=False)

    receive("B", sh(1, 31, 23, 30), "DINGHE_DR")
    take("B", county, sh(2, 1, 0, 30))
    signed("B", county, sh(2, 1, 1, 30), positive=True)

    receive("C", sh(2, 1, 0, 30), "XIPING_DR")
    take("C", county, sh(2, 2, 1, 0))
    signed("C", county, sh(2, 2, 1, 10), positive=False)

    receive("D", sh(2, 10, 9), "XIPING_DR")
    take("D", county, sh(2, 10, 9, 5))
    at(sh(2, 10, 9, 10))
    with sessions() as session:
        request_consultation(session, county, uids["D"], question="请会诊", now=sh(2, 10, 9, 10))
    take("D", province, sh(2, 10, 9, 40))
    signed("D", province, sh(2, 10, 10), positive=True)
    at(sh(2, 12, 10))
    with sessions() as session:
        record_use(session, users["tech_dinghe"], codes["D"], now=sh(2, 12, 10))

    receive("F", sh(2, 15, 8), "XIPING_ECG", hr=38.0)
    with sessions() as session:
        alert = session.scalar(
            select(CriticalAlert).join(Study).where(Study.study_uid == uids["F"])
        )
        assert alert is not None, "the HR 38 ECG raised no critical alert"
        raised = alert.raised_at
        alert_id = alert.id
    take("F", county, sh(2, 15, 8, 5))
    signed("F", county, sh(2, 15, 8, 9), positive=True, critical=True)
    at(raised + timedelta(minutes=12))
    with sessions() as session:
        acknowledge(session, users["tech_xiping"], alert_id, name="值班医生 王芳",
                    now=raised + timedelta(minutes=12))  # fmt: skip

    receive("G", sh(2, 16, 8), "DINGHE_ECG", hr=70.0, leads_off=4)

    receive("E", sh(2, 20, 9), "DINGHE_DR")
    at(sh(2, 21, 10))
    moved = escalate_overdue(sessions, now=sh(2, 21, 10))
    assert uids["E"] in moved
    clock.reset()
    return Scenario(uids, codes)
