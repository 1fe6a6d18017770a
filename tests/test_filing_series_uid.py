"""A Series Instance UID names one series of one study (PS3.3 C.7.3.1).

An instance that reuses another study's series UID (a broken modality, a copied header) must be
refused, not filed into that other study — where it would show up for that study's readers, at
another institution perhaps. Checked on both filing paths (SQLite's and PostgreSQL's).
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.core.db import get_sessionmaker, session_scope
from remote_dx.core.errors import InvalidInstance
from remote_dx.core.migrate import upgrade
from remote_dx.core.models import Device, Instance, Series, Study
from remote_dx.core.network import apply_network, load_network_file
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance, object_key
from remote_dx.storage.factory import get_store
from tests.support import DEMO_NETWORK


def _instance(study_uid: str, series_uid: str, patient_id: str) -> tuple[bytes, str]:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DX"
    ds.PatientName = "李^四"
    ds.PatientID = patient_id
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    if request.param == "sqlite":
        chosen = settings
    else:
        url = request.getfixturevalue("postgres_database")
        chosen = settings.model_copy(update={"database_url": url})
    upgrade(chosen)
    with session_scope(chosen) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=True)
    return chosen


def _sender(sessions: sessionmaker[Session], ae_title: str) -> Sender:
    with sessions() as session:
        return Sender.of(session.scalar(select(Device).where(Device.ae_title == ae_title)))


def test_an_instance_naming_another_studys_series_is_refused(backend: Settings) -> None:
    sessions = get_sessionmaker(backend)
    store = get_store(backend)
    series_uid = generate_uid()
    first_study, second_study = generate_uid(), generate_uid()

    data, _ = _instance(first_study, series_uid, "P-XIPING-1")
    file_instance(data, store=store, sessions=sessions, sender=_sender(sessions, "XIPING_DR"))
    # The same series again, in the same study, is fine (and is the cached path).
    data, _ = _instance(first_study, series_uid, "P-XIPING-1")
    file_instance(data, store=store, sessions=sessions, sender=_sender(sessions, "XIPING_DR"))

    stray, stray_sop = _instance(second_study, series_uid, "P-DINGHE-9")
    with pytest.raises(InvalidInstance, match="already belongs to another study"):
        file_instance(stray, store=store, sessions=sessions, sender=_sender(sessions, "DINGHE_DR"))

    with sessions() as session:
        owner = session.scalar(
            select(Study.study_uid).join(Series).where(Series.series_uid == series_uid)
        )
        assert owner == first_study
        assert session.scalar(select(func.count()).select_from(Instance)) == 2
        # Nothing of the refused instance stays behind: no study row, no object.
        assert session.scalar(select(Study).where(Study.study_uid == second_study)) is None
    assert not store.exists(object_key(second_study, series_uid, stray_sop))

    # The refusal is stable: a resend gets the same answer, never a success.
    with pytest.raises(InvalidInstance):
        file_instance(stray, store=store, sessions=sessions, sender=_sender(sessions, "DINGHE_DR"))
