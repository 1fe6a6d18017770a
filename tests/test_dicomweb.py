"""DICOMweb (issue 5): QIDO-RS matching and scoping, WADO-RS metadata / frames / rendered /
instances, errors (400/401/404/406), through the real app with instances filed by the real
filing door (``ingest.instance.file_instance``) as the township devices would send them.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core.clock import utcnow
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import Device, Institution, Study, StudyStatus, WorklistItem
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.dicomweb import wado
from remote_dx.dicomweb.metadata import metadata_key
from remote_dx.dicomweb.multipart import parse_media_type
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store
from tests.support import demo_hub_on

COUNTY, PROVINCE = "XXXRMYY", "HNSRMYY"


@dataclass
class Filed:
    study_uid: str
    series_uid: str
    sop_uid: str
    source: str  # pydicom test file it came from


def _bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _instance(
    source: str, study: str, series: str, *, patient: tuple[str, str], date: str, acc: str, **extra
) -> tuple[bytes, str]:
    ds = pydicom.dcmread(get_testdata_file(source))
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID, ds.PatientName = patient
    ds.StudyDate, ds.AccessionNumber = date, acc
    ds.StudyTime = "101500"
    for key, value in extra.items():
        setattr(ds, key, value)
    return _bytes(ds), sop


@pytest.fixture
def archive(settings: Settings, db: sessionmaker[Session]) -> dict[str, Filed]:
    return file_archive(settings, db)


def file_archive(settings: Settings, db: sessionmaker[Session]) -> dict[str, Filed]:
    """Three studies: two from XIPING routed to the county pool, one from DINGHE routed to the
    province (the county reader must not see it)."""
    store = get_store(settings)
    with db() as session:
        inst = {i.code: i for i in session.scalars(select(Institution))}
        xiping = Sender.of(session.scalar(select(Device).where(Device.ae_title == "XIPING_DR")))
        dinghe = Sender.of(session.scalar(select(Device).where(Device.ae_title == "DINGHE_DR")))
    filed: dict[str, Filed] = {}
    plan = [
        # key, source, sender, patient, date, accession, pool, extra
        ("mr", "MR_small.dcm", xiping, ("P001", "Wang^Xiaodong=王^小东"), "20240105", "A1", COUNTY,
         {"ReferringPhysicianName": "Li^Ming", "StudyID": "S1"}),
        ("mr-rle", "MR_small_RLE.dcm", xiping, ("P001", "Wang^Xiaodong=王^小东"), "20240105", "A1",
         COUNTY, {}),
        ("rgb", "SC_rgb_rle_2frame.dcm", xiping, ("P002", "Zhang^Wei"), "20240310", "A2", COUNTY,
         {"Modality": "OT"}),
        ("ct", "CT_small.dcm", dinghe, ("P003", "Li^Na"), "20240220", "A3", PROVINCE, {}),
    ]  # fmt: skip
    studies: dict[str, str] = {}
    series: dict[str, str] = {}
    for key, source, sender, patient, date, acc, _pool, extra in plan:
        study = studies.setdefault(acc, generate_uid())
        # The RLE copy of the MR joins the MR's study as a second series.
        this_series = series.setdefault(key, generate_uid())
        data, sop = _instance(
            source, study, this_series, patient=patient, date=date, acc=acc, **extra
        )
        file_instance(data, store=store, sessions=db, sender=sender)
        filed[key] = Filed(study, this_series, sop, source)
    with db() as session, session.begin():
        for key, *_rest, pool, _extra in plan:
            row = session.scalar(select(Study).where(Study.study_uid == filed[key].study_uid))
            if row.worklist_item is None:
                row.status = StudyStatus.PROCESSED
                session.add(
                    WorklistItem(
                        study=row,
                        pool_id=inst[pool].id,
                        due_at=utcnow(),
                        routing_rule="test",
                    )
                )
                session.flush()
    return filed


@pytest.fixture
def client(settings: Settings, archive: dict[str, Filed]) -> TestClient:
    return TestClient(create_app(settings))


def login(client: TestClient, username: str) -> dict[str, str]:
    tokens: dict[str, str] = client.__dict__.setdefault("rdx_tokens", {})
    if username not in tokens:
        response = client.post(
            "/api/v1/auth/token", data={"username": username, "password": "demo"}
        )
        assert response.status_code == 200, response.text
        tokens[username] = response.json()["access_token"]
    return {"Authorization": f"Bearer {tokens[username]}"}


def qido(client: TestClient, path: str, user: str = "county_reader", **params) -> list[dict]:
    response = client.get(f"/dicom-web{path}", params=params, headers=login(client, user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return response.json()


def values(datasets: list[dict], tag: str) -> list:
    return [d[tag]["Value"][0] if "Value" in d[tag] else None for d in datasets]


def test_qido_studies_matching_and_scope(client: TestClient, archive: dict[str, Filed]) -> None:
    mr, rgb, ct = archive["mr"], archive["rgb"], archive["ct"]
    everything = qido(client, "/studies")
    assert sorted(values(everything, "0020000D")) == sorted([mr.study_uid, rgb.study_uid])
    # Newest study first.
    assert values(everything, "0020000D") == [rgb.study_uid, mr.study_uid]
    (study,) = qido(client, "/studies", PatientID="P001")
    assert study["0020000D"]["Value"] == [mr.study_uid]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东"}]
    assert study["00201208"]["Value"] == [2] and study["00201206"]["Value"] == [2]
    assert study["00080061"]["Value"] == ["MR"]
    assert study["00080090"]["Value"] == [{"Alphabetic": "Li^Ming"}]
    assert study["00200010"]["Value"] == ["S1"]
    assert study["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{mr.study_uid}")

    def uids(**params: str) -> set[str]:
        return set(values(qido(client, "/studies", **params), "0020000D"))

    assert uids(PatientName="王*") == {mr.study_uid}
    assert uids(PatientName="wang*") == {mr.study_uid}  # case-insensitive person names
    assert uids(PatientName="Zh?ng^Wei") == {rgb.study_uid}
    assert uids(PatientName="xiao", fuzzymatching="true") == {mr.study_uid}
    assert uids(PatientName="xiao") == set()
    assert uids(StudyDate="20240101-20240131") == {mr.study_uid}
    assert uids(StudyDate="20240301-") == {rgb.study_uid}
    assert uids(StudyDate="-20240301") == {mr.study_uid}
    assert uids(StudyDate="20240310") == {rgb.study_uid}
    assert uids(ModalitiesInStudy="OT") == {rgb.study_uid}
    assert uids(ModalitiesInStudy="CT,MR") == {mr.study_uid}
    assert uids(**{"00080050": "A2"}) == {rgb.study_uid}  # a tag as the key
    assert uids(StudyInstanceUID=f"{mr.study_uid},{rgb.study_uid},{ct.study_uid}") == {
        mr.study_uid,
        rgb.study_uid,
    }
    # The province's study is out of the county reader's scope, whatever the query.
    assert uids(PatientID="P003") == set()
    assert set(values(qido(client, "/studies", "province_reader"), "0020000D")) == {ct.study_uid}
    assert set(values(qido(client, "/studies", "admin"), "0020000D")) == {
        mr.study_uid,
        rgb.study_uid,
        ct.study_uid,
    }
    # A technician sees what their own institution sent (XIPING), not DINGHE's.
    assert set(values(qido(client, "/studies", "tech_xiping"), "0020000D")) == {
        mr.study_uid,
        rgb.study_uid,
    }


def test_qido_paging_and_includefield(client: TestClient, archive: dict[str, Filed]) -> None:
    first = qido(client, "/studies", limit="1")
    second = qido(client, "/studies", limit="1", offset="1")
    assert len(first) == len(second) == 1 and first != second
    assert qido(client, "/studies", offset="2") == []
    plain = qido(client, "/studies", PatientID="P001")[0]
    assert "00100021" not in plain  # Issuer of Patient ID only when asked for
    asked = qido(client, "/studies", PatientID="P001", includefield="00081030,IssuerOfPatientID")
    assert "00081030" in asked[0] and asked[0]["00100021"]["Value"] == ["XIPING"]
    series = qido(client, "/series", PatientID="P001")[0]
    assert "00180015" not in series
    series = qido(client, "/series", PatientID="P001", includefield="BodyPartExamined")[0]
    assert "00180015" in series
    every = qido(client, "/studies", PatientID="P001", includefield="all")[0]
    assert {"00081030", "00100021"} <= set(every)


def test_qido_series_and_instances(client: TestClient, archive: dict[str, Filed]) -> None:
    mr, rle = archive["mr"], archive["mr-rle"]
    series = qido(client, f"/studies/{mr.study_uid}/series")
    assert set(values(series, "0020000E")) == {mr.series_uid, rle.series_uid}
    assert values(series, "00201209") == [1, 1]
    assert "00100020" not in series[0]  # study attributes only when the study is not in the path
    (only,) = qido(client, f"/studies/{mr.study_uid}/series", SeriesInstanceUID=rle.series_uid)
    assert only["00080060"]["Value"] == ["MR"]
    all_series = qido(client, "/series", PatientID="P001")
    assert len(all_series) == 2 and all_series[0]["00100020"]["Value"] == ["P001"]
    (instance,) = qido(client, f"/studies/{mr.study_uid}/series/{mr.series_uid}/instances")
    assert instance["00080018"]["Value"] == [mr.sop_uid]
    assert instance["00280010"]["Value"] == [64] and instance["00280011"]["Value"] == [64]
    rgb = archive["rgb"]
    (frames,) = qido(client, f"/studies/{rgb.study_uid}/instances")
    assert frames["00280008"]["Value"] == [2]
    assert len(qido(client, "/instances", PatientID="P001")) == 2


def test_qido_reads_no_object(
    client: TestClient, archive: dict[str, Filed], settings: Settings
) -> None:
    """Searches are answered from the index: they work with the object store emptied."""
    store = get_store(settings)
    for key in list(store.list("dicom/")):
        store.delete(key)
    mr = archive["mr"]
    assert len(qido(client, "/studies", PatientID="P001")) == 1
    assert len(qido(client, f"/studies/{mr.study_uid}/series")) == 2
    assert len(qido(client, f"/studies/{mr.study_uid}/series/{mr.series_uid}/instances")) == 1


def _parts(response) -> list[tuple[dict[str, str], bytes]]:
    media = parse_media_type(response.headers["content-type"])
    assert media.type == "multipart/related"
    from remote_dx.dicomweb.multipart import parse_multipart

    return [
        (p.headers, p.body)
        for p in parse_multipart(response.content, response.headers["content-type"])
    ]


def test_series_metadata_precomputed_or_on_demand(
    client: TestClient, archive: dict[str, Filed], settings: Settings
) -> None:
    mr = archive["mr"]
    url = f"/dicom-web/studies/{mr.study_uid}/series/{mr.series_uid}/metadata"
    store = get_store(settings)
    key = metadata_key(mr.study_uid, mr.series_uid, 1)
    assert not store.exists(key)
    response = client.get(url, headers=login(client, "county_reader"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    (item,) = response.json()
    assert store.exists(key)  # computed once, kept for the next request
    assert item["00080018"]["Value"] == [mr.sop_uid]
    assert item["00280010"] == {"vr": "US", "Value": [64]}
    assert item["00100010"]["Value"] == [{"Alphabetic": "Wang^Xiaodong", "Ideographic": "王^小东"}]
    pixel_uri = item["7FE00010"]["BulkDataURI"]
    assert pixel_uri.endswith(f"/instances/{mr.sop_uid}/bulkdata/7FE00010")
    assert item["00083002"]["Value"] == ["1.2.840.10008.1.2.1"]
    # The stored gzip goes out as is to clients that take gzip.
    raw = client.get(url, headers={**login(client, "county_reader"), "Accept-Encoding": "gzip"})
    assert raw.json() == [item]
    # Bulk data named by the metadata.
    bulk = client.get(pixel_uri, headers=login(client, "county_reader"))
    assert bulk.status_code == 200
    ((_, value),) = _parts(bulk)
    assert value == pydicom.dcmread(get_testdata_file("MR_small.dcm")).PixelData
    # Study and instance level metadata.
    study = client.get(
        f"/dicom-web/studies/{mr.study_uid}/metadata", headers=login(client, "county_reader")
    ).json()
    assert len(study) == 2
    one = client.get(
        f"/dicom-web/studies/{mr.study_uid}/series/{mr.series_uid}/instances/{mr.sop_uid}/metadata",
        headers=login(client, "county_reader"),
    ).json()
    assert one == [item]


def test_metadata_precomputed_by_processing(settings: Settings, db, archive) -> None:
    from remote_dx.pipeline import process_study

    rgb = archive["rgb"]
    store = get_store(settings)
    with db() as session, session.begin():
        study = session.scalar(select(Study).where(Study.study_uid == rgb.study_uid))
        study.status = StudyStatus.QUEUED
    process_study(rgb.study_uid, sessions=db, store=store, force=True)
    blob = store.get(metadata_key(rgb.study_uid, rgb.series_uid, 1))
    (item,) = json.loads(gzip.decompress(blob))
    assert item["00280008"]["Value"] == [2]


def _frames(client, ref: Filed, frames: str, accept: str | None, user="county_reader"):
    headers = login(client, user)
    if accept is not None:
        headers["Accept"] = accept
    return client.get(
        f"/dicom-web/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_uid}"
        f"/frames/{frames}",
        headers=headers,
    )


STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
EXPLICIT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


def test_frames_stored_and_transcoded(client: TestClient, archive: dict[str, Filed]) -> None:
    native = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    # Native: the stored bytes are Explicit VR Little Endian bytes.
    response = _frames(client, archive["mr"], "1", STORED)
    assert response.status_code == 200, response.text
    ((headers, body),) = _parts(response)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    assert body == native.PixelData
    # RLE as stored: the compressed frame; transcoded: the same pixels as the native file.
    stored = _frames(client, archive["mr-rle"], "1", STORED)
    ((headers, body),) = _parts(stored)
    assert "transfer-syntax=1.2.840.10008.1.2.5" in headers["content-type"]
    assert body != native.PixelData
    decoded = _frames(client, archive["mr-rle"], "1", EXPLICIT)
    ((headers, body),) = _parts(decoded)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    assert body == native.PixelData
    # No transfer-syntax parameter means Explicit VR Little Endian (PS3.18 Table 8.7.3-5).
    plain = _frames(
        client, archive["mr-rle"], "1", 'multipart/related; type="application/octet-stream"'
    )
    assert _parts(plain)[0][1] == native.PixelData
    # Multi-frame: frames 2 and 1, in the order asked.
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    two = _parts(_frames(client, archive["rgb"], "2,1", EXPLICIT))
    arr = rgb.pixel_array
    assert [body for _, body in two] == [arr[1].tobytes(), arr[0].tobytes()]


def test_frames_errors(client: TestClient, archive: dict[str, Filed]) -> None:
    mr = archive["mr"]
    assert _frames(client, mr, "2", STORED).status_code == 404
    assert _frames(client, mr, "0", STORED).status_code == 400
    assert _frames(client, mr, "x", STORED).status_code == 400
    assert _frames(client, mr, "1", "image/png").status_code == 406
    assert _frames(client, mr, "1", 'multipart/related; type="application/octet-stream"; '
                   "transfer-syntax=1.2.840.10008.1.2.4.50").status_code == 406  # fmt: skip
    # Another pool's study: 404 as if it did not exist.
    assert _frames(client, archive["ct"], "1", STORED).status_code == 404
    assert _frames(client, archive["ct"], "1", STORED, user="province_reader").status_code == 200


def test_rendered_and_thumbnail(client: TestClient, archive: dict[str, Filed]) -> None:
    mr = archive["mr"]
    base = f"/dicom-web/studies/{mr.study_uid}/series/{mr.series_uid}/instances/{mr.sop_uid}"
    auth = login(client, "county_reader")
    jpeg = client.get(f"{base}/rendered", headers=auth)
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (64, 64)
    png = client.get(f"{base}/rendered", headers={**auth, "Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    narrow = client.get(
        f"{base}/rendered", params={"window": "600,100"}, headers={**auth, "Accept": "image/png"}
    )
    wide = client.get(
        f"{base}/rendered", params={"window": "600,4000"}, headers={**auth, "Accept": "image/png"}
    )
    a = np.asarray(Image.open(io.BytesIO(narrow.content)), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(wide.content)), dtype=float)
    assert np.abs(a - b).mean() > 10  # the window really changes the pixels
    small = client.get(f"{base}/rendered", params={"viewport": "32,32"}, headers=auth)
    assert Image.open(io.BytesIO(small.content)).size == (32, 32)
    frame = client.get(f"{base}/frames/1/rendered", headers=auth)
    assert frame.status_code == 200
    assert client.get(f"{base}/frames/3/rendered", headers=auth).status_code == 404
    assert (
        client.get(f"{base}/rendered", headers={**auth, "Accept": "image/gif"}).status_code == 406
    )
    assert client.get(f"{base}/rendered", params={"window": "a,b"}, headers=auth).status_code == 400
    thumb = client.get(f"/dicom-web/studies/{mr.study_uid}/thumbnail", headers=auth)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    rgb = archive["rgb"]
    second = client.get(
        f"/dicom-web/studies/{rgb.study_uid}/series/{rgb.series_uid}/instances/{rgb.sop_uid}"
        "/frames/2/rendered",
        headers={**auth, "Accept": "image/png"},
    )
    assert Image.open(io.BytesIO(second.content)).mode == "RGB"


def test_retrieve_instances(client: TestClient, archive: dict[str, Filed]) -> None:
    mr, rle = archive["mr"], archive["mr-rle"]
    auth = login(client, "county_reader")
    study = client.get(f"/dicom-web/studies/{mr.study_uid}", headers=auth)
    assert study.status_code == 200
    parts = _parts(study)
    uids = {str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID) for _, body in parts}
    assert uids == {mr.sop_uid, rle.sop_uid}
    transcoded = client.get(
        f"/dicom-web/studies/{mr.study_uid}/series/{rle.series_uid}/instances/{rle.sop_uid}",
        headers={**auth, "Accept": 'multipart/related; type="application/dicom"; '
                 "transfer-syntax=1.2.840.10008.1.2.1"},
    )  # fmt: skip
    ((_, body),) = _parts(transcoded)
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    native = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(ds.pixel_array, native.pixel_array)
    refused = client.get(
        f"/dicom-web/studies/{mr.study_uid}", headers={**auth, "Accept": "application/json"}
    )
    assert refused.status_code == 406


def test_errors(client: TestClient, archive: dict[str, Filed]) -> None:
    mr, ct = archive["mr"], archive["ct"]
    assert client.get("/dicom-web/studies").status_code == 401
    bad = client.get("/dicom-web/studies", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401
    auth = login(client, "county_reader")
    for path in (
        "/studies/1.2.3/series",
        "/studies/1.2.3/metadata",
        f"/studies/{mr.study_uid}/series/1.2.3/metadata",
        f"/studies/{ct.study_uid}/series",
        f"/studies/{ct.study_uid}/metadata",
        f"/studies/{ct.study_uid}",
    ):
        response = client.get(f"/dicom-web{path}", headers=auth)
        assert response.status_code == 404, (path, response.text)
        assert "detail" in response.json()
    assert (
        client.get("/dicom-web/studies", params={"StudyDate": "2024"}, headers=auth).status_code
        == 400
    )
    assert client.get("/dicom-web/studies", params={"limit": "-1"}, headers=auth).status_code == 400
    assert (
        client.get("/dicom-web/studies", params={"Nonsense": "1"}, headers=auth).status_code == 400
    )
    xml = client.get("/dicom-web/studies", headers={**auth, "Accept": "application/dicom+xml"})
    assert xml.status_code == 406
    # A known attribute the index cannot match on: ignored, with a Warning (PS3.18 §8.3.4.1).
    warned = client.get("/dicom-web/studies", params={"PatientWeight": "70"}, headers=auth)
    assert warned.status_code == 200 and "PatientWeight" in warned.headers["warning"]
    # Statisticians see aggregates, never patients.


@pytest.mark.postgres
def test_on_postgres(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same searches and retrieves on PostgreSQL (ILIKE, LIKE … ESCAPE, EXISTS, ranges)."""
    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = demo_hub_on(settings, postgres_database)
    archive = file_archive(pg, get_sessionmaker(pg))
    client = TestClient(create_app(pg))
    test_qido_studies_matching_and_scope(client, archive)
    test_qido_series_and_instances(client, archive)
    test_frames_stored_and_transcoded(client, archive)
    test_errors(client, archive)


def test_waveform_bulk_data_and_rendering(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    """An ECG's Waveform Data is a BulkDataURI inside its sequence item; it renders as a trace."""
    with db() as session:
        cart = Sender.of(session.scalar(select(Device).where(Device.ae_title == "XIPING_ECG")))
    study_uid, series_uid = generate_uid(), generate_uid()
    data, sop = _instance(
        "waveform_ecg.dcm", study_uid, series_uid, patient=("P009", "Wu^Lei"), date="20240401",
        acc="E1",
    )  # fmt: skip
    file_instance(data, store=get_store(settings), sessions=db, sender=cart)
    auth = login(client, "tech_xiping")  # the technician of the sending township sees it
    base = f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop}"
    (item,) = client.get(f"{base}/metadata", headers=auth).json()
    waveform = item["54000100"]["Value"][0]["54001010"]
    assert waveform["BulkDataURI"] == f"{base}/bulkdata/54000100/0/54001010"
    assert "7FE00010" not in item
    ((_, value),) = _parts(client.get(waveform["BulkDataURI"], headers=auth))
    original = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    assert value == original.WaveformSequence[0].WaveformData
    assert client.get(f"{base}/bulkdata/54000100/9/54001010", headers=auth).status_code == 404
    rendered = client.get(f"{base}/rendered", headers={**auth, "Accept": "image/png"})
    assert rendered.status_code == 200
    image = np.asarray(Image.open(io.BytesIO(rendered.content)).convert("L"))
    assert (image < 64).any()  # black traces on the grid
    # Frames of an object without pixel data: 404, not a crash.
    assert client.get(f"{base}/frames/1", headers=auth).status_code == 404


def test_frames_of_one_object_read_it_once(
    client: TestClient, archive: dict[str, Filed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer fetches a multi-frame object frame by frame: the store is read once, not per
    frame (from S3 each read would be the whole object over the network)."""
    store = client.app.state.store
    reads: list[str] = []
    original = store.get

    def counting(key: str) -> bytes:
        reads.append(key)
        return original(key)

    monkeypatch.setattr(store, "get", counting)
    rgb = archive["rgb"]
    for frame in ("1", "2", "1"):
        assert _frames(client, rgb, frame, EXPLICIT).status_code == 200
    assert len([k for k in reads if k.startswith("dicom/")]) == 1


def test_frames_of_a_large_object_are_read_by_range(
    client: TestClient, archive: dict[str, Filed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the size the object cache keeps (lowered here), the route reads only the frames'
    byte ranges: the object's size comes from the index with the instance's reference."""
    monkeypatch.setattr(wado, "RANGED_MIN_BYTES", 1)
    store = client.app.state.store
    whole: list[str] = []
    ranged: list[tuple[str, int, int]] = []
    get, get_range = store.get, store.get_range

    def counting(key: str) -> bytes:
        whole.append(key)
        return get(key)

    def counting_range(key: str, offset: int, length: int) -> bytes:
        ranged.append((key, offset, length))
        return get_range(key, offset, length)

    monkeypatch.setattr(store, "get", counting)
    monkeypatch.setattr(store, "get_range", counting_range)
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    expected = list(generate_frames(rgb.PixelData, number_of_frames=2))
    two = _parts(_frames(client, archive["rgb"], "2,1", STORED))
    assert [body for _, body in two] == [expected[1], expected[0]]
    assert ranged and not [k for k in whole if k.startswith("dicom/")]


def test_metadata_leaves_out_a_malformed_value(
    client: TestClient, settings: Settings, db: sessionmaker[Session]
) -> None:
    """An element stored as received with an unreadable value does not fail the metadata."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    with db() as session:
        sender = Sender.of(session.scalar(select(Device).where(Device.ae_title == "XIPING_DR")))
    study_uid, series_uid = generate_uid(), generate_uid()
    data, sop = _instance(
        "MR_small.dcm", study_uid, series_uid, patient=("P010", "Zhou^Jie"), date="20240402",
        acc="M1",
    )  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(data))
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 4, b"ab.c", 0, False, True)
    file_instance(_bytes(ds), store=get_store(settings), sessions=db, sender=sender)
    response = client.get(
        f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
        headers=login(client, "tech_xiping"),
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()
    assert "00180050" not in item and item["00080018"]["Value"] == [sop]
