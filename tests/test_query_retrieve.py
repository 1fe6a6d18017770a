"""Query/Retrieve on the receiver (issue 5): C-FIND, C-GET and C-MOVE with dcmtk and pynetdicom.

Each test files a small community's worth of studies through the real filing code, routes them
to reading pools (the scoping input), starts a receiver on a free port and asks it as the county
PACS (``COUNTY_PACS`` of 西峡县人民医院 in the demo network) or as a township device.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, sessionmaker

from remote_dx.core.clock import utcnow
from remote_dx.core.models import AuditRecord, Device, Institution, Study, WorklistItem
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.ingest.dicom_scp import Receiver, start_receiver
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store
from tests.support import free_port, wait_until
from tests.test_dicom_scp import CALLED, dcmtk_tool

PACS = "COUNTY_PACS"


@dataclass
class Community:
    county_study: str  # from 西坪 (XIPING), routed to the county pool: the PACS sees it
    county_series: list[str]
    county_instances: dict[str, Path]  # SOP Instance UID → the file as sent
    province_study: str  # from 丁河 (DINGHE), routed to the province pool: the PACS does not


def _copy(name: str, folder: Path, **attrs: object) -> Path:
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path)
    return path


def _file(settings: Settings, db: sessionmaker[Session], ae_title: str, path: Path) -> None:
    with db() as session:
        device = session.scalar(
            select(Device)
            .options(joinedload(Device.institution))
            .where(Device.ae_title == ae_title)
        )
        sender = Sender.of(device)
    file_instance(path.read_bytes(), store=get_store(settings), sessions=db, sender=sender)


def _route(db: sessionmaker[Session], study_uid: str, pool_code: str) -> None:
    with db() as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        pool = session.scalar(select(Institution).where(Institution.code == pool_code))
        session.add(
            WorklistItem(
                study_pk=study.id,
                pool_id=pool.id,
                due_at=utcnow() + timedelta(hours=1),
                routing_rule="test",
            )
        )


@pytest.fixture
def community(settings: Settings, db: sessionmaker[Session], tmp_path: Path) -> Community:
    sent = tmp_path / "sent"
    sent.mkdir()
    study, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    common = {
        "StudyInstanceUID": study,
        "PatientID": "XP0001",
        "PatientName": "Wang^Xiaoming=王^小明",
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": "20261120",
        "AccessionNumber": "ACC-1",
    }
    files = [
        _copy("CT_small.dcm", sent, SeriesInstanceUID=ct_series, InstanceNumber=1, **common),
        _copy("CT_small.dcm", sent, SeriesInstanceUID=ct_series, InstanceNumber=2, **common),
        # RLE Lossless: stored compressed, decoded for a C-GET requestor that takes no RLE.
        _copy("MR_small_RLE.dcm", sent, SeriesInstanceUID=mr_series, **common),
    ]
    for path in files:
        _file(settings, db, "XIPING_DR", path)
    other = generate_uid()
    _file(
        settings,
        db,
        "DINGHE_DR",
        _copy(
            "CT_small.dcm", sent, StudyInstanceUID=other, PatientID="DH0001", StudyDate="20261121"
        ),
    )
    _route(db, study, "XXXRMYY")
    _route(db, other, "HNSRMYY")
    return Community(
        county_study=study,
        county_series=[ct_series, mr_series],
        county_instances={str(pydicom.dcmread(p).SOPInstanceUID): p for p in files},
        province_study=other,
    )


@pytest.fixture
def receiver(settings: Settings, db: sessionmaker[Session]) -> Iterator[Receiver]:
    running = start_receiver(settings)
    yield running
    running.stop(timeout=1)


def findscu(
    port: int, out: Path, *keys: str, calling: str = PACS, root: str = "-S"
) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["-aet", calling, "-aec", CALLED, root, "-X", "-od", out]
    for key in keys:
        args += ["-k", key]
    run = dcmtk_tool("findscu", *args, "127.0.0.1", str(port))
    assert run.returncode == 0, run.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def find(
    port: int, identifier: Dataset, calling: str = PACS, model=None
) -> list[tuple[int, Dataset]]:
    model = model or StudyRootQueryRetrieveInformationModelFind
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=CALLED)
    assert assoc.is_established
    try:
        return [
            (int(status.Status), ident) for status, ident in assoc.send_c_find(identifier, model)
        ]
    finally:
        assoc.release()
        ae.shutdown()


# -- C-FIND -----------------------------------------------------------------------------------


def test_findscu_study_level_sees_only_what_the_county_may_see(
    dcmtk: str, community: Community, receiver: Receiver, tmp_path: Path
) -> None:
    answers = findscu(
        receiver.port,
        tmp_path / "all",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
        "InstitutionName",  # not in the index: returned empty
    )
    assert [a.StudyInstanceUID for a in answers] == [community.county_study]
    (answer,) = answers
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Wang^Xiaoming=王^小明"
    assert answer.PatientID == "XP0001"
    assert answer.StudyDate == "20261120"
    assert list(answer.ModalitiesInStudy) == ["CT", "MR"]
    assert int(answer.NumberOfStudyRelatedSeries) == 2
    assert int(answer.NumberOfStudyRelatedInstances) == 3
    assert answer.AccessionNumber == "ACC-1"
    assert "InstitutionName" in answer and not answer.InstitutionName
    assert answer.RetrieveAETitle == CALLED

    # Matching: date range, wild card on the ID, a value that matches nothing.
    hit = findscu(
        receiver.port, tmp_path / "range", "QueryRetrieveLevel=STUDY",
        "StudyDate=20261101-20261130", "PatientID=XP*", "StudyInstanceUID",
    )  # fmt: skip
    assert [a.StudyInstanceUID for a in hit] == [community.county_study]
    miss = findscu(
        receiver.port, tmp_path / "miss", "QueryRetrieveLevel=STUDY", "StudyDate=-20261001",
        "StudyInstanceUID",
    )  # fmt: skip
    assert miss == []

    # The township that sent the other study sees it (and only it), as its technicians do.
    township = findscu(
        receiver.port, tmp_path / "dinghe", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
        calling="DINGHE_DR",
    )  # fmt: skip
    assert [a.StudyInstanceUID for a in township] == [community.province_study]


def test_find_series_and_image_levels_and_chinese_name_matching(
    community: Community, receiver: Receiver
) -> None:
    series = Dataset()
    series.QueryRetrieveLevel = "SERIES"
    series.StudyInstanceUID = community.county_study
    series.SeriesInstanceUID = ""
    series.Modality = ""
    series.NumberOfSeriesRelatedInstances = None
    results = find(receiver.port, series)
    assert [s for s, _ in results] == [0xFF00, 0xFF00, 0x0000]
    found = {a.SeriesInstanceUID: a for _, a in results[:-1]}
    assert set(found) == set(community.county_series)
    assert sorted((a.Modality, int(a.NumberOfSeriesRelatedInstances)) for a in found.values()) == [
        ("CT", 2),
        ("MR", 1),
    ]
    assert all(a.StudyInstanceUID == community.county_study for a in found.values())

    image = Dataset()
    image.QueryRetrieveLevel = "IMAGE"
    image.StudyInstanceUID = community.county_study
    image.SeriesInstanceUID = community.county_series[0]
    image.SOPInstanceUID = ""
    image.InstanceNumber = None
    image.Rows = None
    results = find(receiver.port, image)
    answers = [a for s, a in results if s == 0xFF00]
    assert [int(a.InstanceNumber) for a in answers] == [1, 2]
    assert {a.SOPInstanceUID for a in answers} <= set(community.county_instances)
    assert all(a.Rows == 128 for a in answers)

    # A Chinese wild card, sent in UTF-8, matches the ideographic component group.
    by_name = Dataset()
    by_name.SpecificCharacterSet = "ISO_IR 192"
    by_name.QueryRetrieveLevel = "STUDY"
    by_name.PatientName = "王*"
    by_name.StudyInstanceUID = ""
    hits = [a.StudyInstanceUID for s, a in find(receiver.port, by_name) if s == 0xFF00]
    assert hits == [community.county_study]
    by_name.PatientName = "李*"
    assert [s for s, _ in find(receiver.port, by_name)] == [0x0000]

    # A study the county may not see is not found even by its UID.
    hidden = Dataset()
    hidden.QueryRetrieveLevel = "SERIES"
    hidden.StudyInstanceUID = community.province_study
    hidden.SeriesInstanceUID = ""
    assert [s for s, _ in find(receiver.port, hidden)] == [0x0000]


def test_patient_root_and_bad_identifiers(community: Community, receiver: Receiver) -> None:
    patient = Dataset()
    patient.QueryRetrieveLevel = "PATIENT"
    patient.PatientID = ""
    patient.PatientName = ""
    patient.NumberOfPatientRelatedStudies = None
    results = find(receiver.port, patient, model=PatientRootQueryRetrieveInformationModelFind)
    answers = [a for s, a in results if s == 0xFF00]
    assert [(a.PatientID, int(a.NumberOfPatientRelatedStudies)) for a in answers] == [("XP0001", 1)]

    bad = Dataset()
    bad.QueryRetrieveLevel = "PATIENT"  # not a Study Root level
    bad.PatientID = ""
    assert [s for s, _ in find(receiver.port, bad)] == [0xA900]
    below = Dataset()
    below.QueryRetrieveLevel = "STUDY"
    below.SOPInstanceUID = "1.2.3"  # an IMAGE key in a STUDY query
    assert [s for s, _ in find(receiver.port, below)] == [0xA900]


# -- C-GET ------------------------------------------------------------------------------------


def test_getscu_retrieves_the_study_and_nothing_it_may_not_see(
    dcmtk: str,
    community: Community,
    receiver: Receiver,
    db: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    out = tmp_path / "got"
    out.mkdir()
    run = dcmtk_tool(
        "getscu", "-aet", PACS, "-aec", CALLED, "-S", "-od", out,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={community.county_study}",
        "127.0.0.1", str(receiver.port),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, out.iterdir())}
    assert set(got) == set(community.county_instances)
    for uid, path in community.county_instances.items():
        original = pydicom.dcmread(path)
        assert np.array_equal(got[uid].pixel_array, original.pixel_array)
        assert got[uid].PatientName == original.PatientName
    # The RLE instance came decoded (getscu accepts uncompressed syntaxes only).
    assert all(not ds.file_meta.TransferSyntaxUID.is_compressed for ds in got.values())

    # The retrieve is in the audit trail (IHE ATNA): the node, its institution, the study.
    with db() as session:
        (record,) = session.scalars(select(AuditRecord).where(AuditRecord.method == "C-GET")).all()
    assert (record.action, record.username, record.institution) == (
        "download", PACS, "XXXRMYY",
    )  # fmt: skip
    assert record.object_id == community.county_study
    assert record.patient == "XP0001^^^XIPING"
    assert record.detail["instances"] == 3

    hidden = tmp_path / "hidden"
    hidden.mkdir()
    run = dcmtk_tool(
        "getscu", "-aet", PACS, "-aec", CALLED, "-S", "-od", hidden,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={community.province_study}",
        "127.0.0.1", str(receiver.port),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert list(hidden.iterdir()) == []


# -- C-MOVE -----------------------------------------------------------------------------------


@pytest.fixture
def county_pacs(dcmtk: str, db: sessionmaker[Session], tmp_path: Path) -> Iterator[Path]:
    """dcmtk's storescp as the county PACS, listening where the devices table says it does."""
    port = free_port()
    with db() as session, session.begin():
        session.scalar(select(Device).where(Device.ae_title == PACS)).port = port
    inbox = tmp_path / "pacs"
    inbox.mkdir()
    process = subprocess.Popen(
        ["storescp", "+xa", "-aet", PACS, "-od", str(inbox), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        from tests.support import port_open

        wait_until(lambda: port_open("127.0.0.1", port), timeout=10, message="storescp")
        yield inbox
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_movescu_sends_the_series_to_the_county_pacs(
    community: Community, receiver: Receiver, county_pacs: Path
) -> None:
    run = dcmtk_tool(
        "movescu", "-aet", PACS, "-aec", CALLED, "-aem", PACS, "-S",
        "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"StudyInstanceUID={community.county_study}",
        "-k", f"SeriesInstanceUID={community.county_series[1]}",
        "127.0.0.1", str(receiver.port),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    files = wait_until(lambda: list(county_pacs.iterdir()), timeout=10, message="moved file")
    (moved,) = [pydicom.dcmread(p) for p in files]  # type: ignore[union-attr]
    (mr_uid,) = [
        uid
        for uid, p in community.county_instances.items()
        if pydicom.dcmread(p).SeriesInstanceUID == community.county_series[1]
    ]
    assert moved.SOPInstanceUID == mr_uid
    # Sent as stored: RLE Lossless, which storescp +xa accepts.
    assert moved.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert np.array_equal(
        moved.pixel_array, pydicom.dcmread(community.county_instances[mr_uid]).pixel_array
    )


def test_move_to_unknown_destination_is_a801_and_hidden_study_moves_nothing(
    community: Community, receiver: Receiver, county_pacs: Path
) -> None:
    ae = AE(ae_title=PACS)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = community.county_study
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
    assert assoc.is_established
    try:
        unknown = [
            int(s.Status)
            for s, _ in assoc.send_c_move(
                identifier, "NOWHERE", StudyRootQueryRetrieveInformationModelMove
            )
        ]
        assert unknown == [0xA801]
        identifier.StudyInstanceUID = community.province_study
        hidden = [
            s
            for s, _ in assoc.send_c_move(
                identifier, PACS, StudyRootQueryRetrieveInformationModelMove
            )
        ]
        assert [int(s.Status) for s in hidden] == [0x0000]
        assert int(hidden[-1].NumberOfCompletedSuboperations) == 0
        no_uid = Dataset()
        no_uid.QueryRetrieveLevel = "SERIES"
        no_uid.StudyInstanceUID = community.county_study
        refused = [
            s
            for s, _ in assoc.send_c_move(no_uid, PACS, StudyRootQueryRetrieveInformationModelMove)
        ]
        assert [int(s.Status) for s in refused] == [0xA900]
    finally:
        assoc.release()
        ae.shutdown()
    assert list(county_pacs.iterdir()) == []


def test_move_to_our_own_test_scp_counts_sub_operations(
    community: Community, receiver: Receiver, db: sessionmaker[Session]
) -> None:
    """A pynetdicom Storage SCP as the destination: every instance of the study, counted."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = free_port()
    with db() as session, session.begin():
        session.scalar(select(Device).where(Device.ae_title == PACS)).port = port
    dest = AE(ae_title=PACS)
    dest.add_supported_context(CTImageStorage)
    dest.add_supported_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.5"])  # MR, RLE
    server = dest.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        ae = AE(ae_title=PACS)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title=CALLED)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = community.county_study
        statuses = [
            s
            for s, _ in assoc.send_c_move(
                identifier, PACS, StudyRootQueryRetrieveInformationModelMove
            )
        ]
        assoc.release()
        ae.shutdown()
    finally:
        server.shutdown()
    final = statuses[-1]
    assert int(final.Status) == 0x0000
    assert int(final.NumberOfCompletedSuboperations) == 3
    assert int(final.get("NumberOfFailedSuboperations", 0)) == 0
    assert sorted(received) == sorted(community.county_instances)


def test_find_and_get_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The scoping joins, name matching and paging of C-FIND, and C-GET, on PostgreSQL."""
    from remote_dx.core.db import get_sessionmaker, session_scope
    from remote_dx.core.migrate import upgrade
    from remote_dx.core.network import apply_network, load_network_file
    from remote_dx.core.settings import reset_settings
    from tests.support import DEMO_NETWORK

    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = settings.model_copy(update={"database_url": postgres_database})
    upgrade(pg)
    with session_scope(pg) as session:
        apply_network(session, load_network_file(DEMO_NETWORK), with_passwords=False)
    sessions = get_sessionmaker(pg)
    sent = tmp_path / "sent"
    sent.mkdir()
    study, series = generate_uid(), generate_uid()
    for number in (1, 2):
        path = _copy(
            "CT_small.dcm", sent, StudyInstanceUID=study, SeriesInstanceUID=series,
            InstanceNumber=number,
            PatientName="Li^Na=李^娜", SpecificCharacterSet="ISO_IR 192", PatientID="PG1",
        )  # fmt: skip
        _file(pg, sessions, "XIPING_DR", path)
    hidden = generate_uid()
    _file(
        pg, sessions, "DINGHE_DR",
        _copy("CT_small.dcm", sent, StudyInstanceUID=hidden, SeriesInstanceUID=generate_uid()),
    )  # fmt: skip
    _route(sessions, study, "XXXRMYY")
    _route(sessions, hidden, "HNSRMYY")

    running = start_receiver(pg)
    try:
        query = Dataset()
        query.SpecificCharacterSet = "ISO_IR 192"
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "李*"
        query.StudyInstanceUID = ""
        query.NumberOfStudyRelatedSeries = None
        answers = [a for s, a in find(running.port, query) if s == 0xFF00]
        assert [(a.StudyInstanceUID, int(a.NumberOfStudyRelatedSeries)) for a in answers] == [
            (study, 1)
        ]
        out = tmp_path / "got"
        out.mkdir()
        run = dcmtk_tool(
            "getscu", "-aet", PACS, "-aec", CALLED, "-S", "-od", out,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(running.port),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert len(list(out.iterdir())) == 2
    finally:
        running.stop(timeout=1)


def test_movescu_to_another_institutions_node_is_refused_0124(
    community: Community,
    receiver: Receiver,
    county_pacs: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A township device sees its own study but may not have it pushed to the county's PACS: that
    node is the county's, not XIPING's. Named in RDX_MOVE_SHARED_DESTINATIONS it may."""

    def move() -> subprocess.CompletedProcess[str]:
        return dcmtk_tool(
            "movescu", "-d", "-aet", "XIPING_DR", "-aec", CALLED, "-aem", PACS, "-S",
            "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={community.county_study}",
            "127.0.0.1", str(receiver.port),
        )  # fmt: skip

    refused = move()
    output = refused.stdout + refused.stderr
    assert "Move response with error status (Unknown Status: 0x124)" in output, output
    assert "DIMSE Status                  : 0x0124: Refused: Not authorized" in output, output
    assert "COUNTY_PACS is not your institution" in output, output
    assert list(county_pacs.iterdir()) == []
    # Unknown stays 0xA801 for this caller too.
    unknown = dcmtk_tool(
        "movescu", "-v", "-aet", "XIPING_DR", "-aec", CALLED, "-aem", "NOWHERE", "-S",
        "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={community.county_study}",
        "127.0.0.1", str(receiver.port),
    )  # fmt: skip
    unknown_output = unknown.stdout + unknown.stderr
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in unknown_output

    monkeypatch.setenv("RDX_MOVE_SHARED_DESTINATIONS", f"REGION_ARCHIVE, {PACS}")
    reset_settings()
    allowed = move()
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    files = wait_until(
        lambda: len(list(county_pacs.iterdir())) == 3 and list(county_pacs.iterdir()),
        timeout=20,
        message="the three instances at the shared destination",
    )
    assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in files} == set(  # type: ignore[union-attr]
        community.county_instances
    )
