"""DICOMweb against the live app (uvicorn on a free port): ``dicomweb-client`` as another imaging
application would use it (issue 5, Proof), STOW-RS with its failure statuses, WADO-URI, and the
error answers to raw HTTP (401, 400, 404, 406, 415).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
import uvicorn
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from remote_dx.api.app import create_app
from remote_dx.core.settings import Settings
from remote_dx.dicomweb.multipart import multipart_body
from tests.support import wait_until
from tests.test_dicomweb import Filed, archive  # noqa: F401 — the shared fixture

dicomweb_client = pytest.importorskip("dicomweb_client", reason="pip install dicomweb-client")


@pytest.fixture
def live(settings: Settings, archive: dict[str, Filed]) -> Iterator[str]:  # noqa: F811
    """The app served by uvicorn in a thread on the settings' free port; its base URL."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=settings.http_port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, message="uvicorn to start")
    yield f"http://127.0.0.1:{settings.http_port}"
    server.should_exit = True
    thread.join(timeout=10)


def token(base: str, username: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": username, "password": "demo"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def client_for(base: str, username: str):
    return dicomweb_client.DICOMwebClient(
        url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {token(base, username)}"}
    )


def test_dicomweb_client_search_and_retrieve(live: str, archive: dict[str, Filed]) -> None:  # noqa: F811
    client = client_for(live, "county_reader")
    mr, rle, rgb = archive["mr"], archive["mr-rle"], archive["rgb"]
    studies = client.search_for_studies(search_filters={"PatientID": "P001"})
    assert [Dataset.from_json(s).StudyInstanceUID for s in studies] == [mr.study_uid]
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "xiao"})
    assert len(fuzzy) == 1
    paged = client.search_for_studies(limit=1, offset=1)
    assert len(paged) == 1
    fields = client.search_for_studies(
        fields=["StudyDescription"], search_filters={"PatientID": "P002"}
    )
    assert "00081030" in fields[0]
    series = client.search_for_series(study_instance_uid=mr.study_uid)
    assert {Dataset.from_json(s).SeriesInstanceUID for s in series} == {
        mr.series_uid,
        rle.series_uid,
    }
    instances = client.search_for_instances(
        study_instance_uid=mr.study_uid, series_instance_uid=mr.series_uid
    )
    assert Dataset.from_json(instances[0]).SOPInstanceUID == mr.sop_uid

    metadata = client.retrieve_series_metadata(mr.study_uid, rle.series_uid)
    ds = Dataset.from_json(metadata[0])
    assert ds.SOPInstanceUID == rle.sop_uid and ds.Rows == 64
    assert len(client.retrieve_study_metadata(mr.study_uid)) == 2

    instance = client.retrieve_instance(mr.study_uid, rle.series_uid, rle.sop_uid)
    native = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert np.array_equal(instance.pixel_array, native.pixel_array)
    study = client.retrieve_study(mr.study_uid)
    assert {str(d.SOPInstanceUID) for d in study} == {mr.sop_uid, rle.sop_uid}

    (frame,) = client.retrieve_instance_frames(
        mr.study_uid, rle.series_uid, rle.sop_uid, frame_numbers=[1],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )  # fmt: skip
    assert frame == native.PixelData
    (stored,) = client.retrieve_instance_frames(
        mr.study_uid, rle.series_uid, rle.sop_uid, frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )  # fmt: skip
    assert stored != native.PixelData and len(stored) < len(native.PixelData) * 2
    frames = client.retrieve_instance_frames(rgb.study_uid, rgb.series_uid, rgb.sop_uid, [1, 2])
    assert len(frames) == 2

    rendered = client.retrieve_instance_rendered(
        mr.study_uid, mr.series_uid, mr.sop_uid, media_types=("image/png",),
        params={"window": "600,800"},
    )  # fmt: skip
    assert Image.open(io.BytesIO(rendered)).size == (64, 64)
    bulk_uri = metadata[0]["7FE00010"]["BulkDataURI"]
    assert bulk_uri.startswith("/dicom-web/")
    (bulk,) = client.retrieve_bulkdata(live + bulk_uri)
    assert len(bulk) > 0


def _dicom(study_uid: str | None = None, patient: str = "P100") -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    return ds


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_stow_with_dicomweb_client(live: str, archive: dict[str, Filed]) -> None:  # noqa: F811
    technician = client_for(live, "tech_xiping")
    study_uid = generate_uid()
    first, second = _dicom(study_uid), _dicom(study_uid)
    answer = technician.store_instances([first, second])
    assert len(answer.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"/dicom-web/studies/{study_uid}")
    # The technician's institution is the origin: they find it; again is idempotent.
    assert technician.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    technician.store_instances([first])
    (found,) = technician.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert found["00201208"]["Value"] == [2]
    # Not routed yet: the county reader does not see it.
    reader = client_for(live, "county_reader")
    assert reader.search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []


def _stow(base: str, user: str | None, parts: list[bytes], path: str = "/studies", **kw):
    boundary = "b0undary"
    body = b"".join(
        multipart_body([(p, {"Content-Type": "application/dicom"}) for p in parts], boundary)
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **kw.pop("headers", {}),
    }
    if user:
        headers["Authorization"] = f"Bearer {token(base, user)}"
    return httpx.post(
        f"{base}/dicom-web{path}", content=kw.pop("content", body), headers=headers, timeout=60
    )


def _failures(response: httpx.Response) -> list[int]:
    body = response.json()
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def test_stow_failures(live: str, archive: dict[str, Filed]) -> None:  # noqa: F811
    good = _part10(_dicom())
    truncated = _part10(_dicom())[:-2000]
    partly = _stow(live, "tech_xiping", [good, truncated])
    assert partly.status_code == 202, partly.text
    assert _failures(partly) == [0xC000]
    assert len(partly.json()["00081199"]["Value"]) == 1
    none = _stow(live, "tech_xiping", [b"not dicom at all"])
    assert none.status_code == 409 and _failures(none) == [0xC000]
    # Another institution's study (DINGHE's CT) cannot be written into.
    foreign = _stow(live, "tech_xiping", [_part10(_dicom(archive["ct"].study_uid))])
    assert foreign.status_code == 409 and _failures(foreign) == [0x0124]
    # POST /studies/{study}: an instance of another study does not match.
    target = generate_uid()
    mismatch = _stow(live, "tech_xiping", [_part10(_dicom())], path=f"/studies/{target}")
    assert mismatch.status_code == 409 and _failures(mismatch) == [0xA900]
    # Readers add to studies they see, but do not create studies.
    reader = _stow(live, "county_reader", [_part10(_dicom())])
    assert reader.status_code == 409 and _failures(reader) == [0x0124]
    # Request-level errors.
    assert _stow(live, None, [good]).status_code == 401
    assert _stow(live, "tech_xiping", [good], content=b"--nope").status_code == 400
    wrong_type = _stow(live, "tech_xiping", [good], headers={"Content-Type": "application/dicom"})
    assert wrong_type.status_code == 415
    xml = _stow(live, "tech_xiping", [good], headers={"Accept": "application/dicom+xml"})
    assert xml.status_code == 406


def test_raw_http_errors_and_wado_uri(live: str, archive: dict[str, Filed]) -> None:  # noqa: F811
    mr, ct = archive["mr"], archive["ct"]
    auth = {"Authorization": f"Bearer {token(live, 'county_reader')}"}
    with httpx.Client(base_url=f"{live}/dicom-web", timeout=30) as http:
        assert http.get("/studies").status_code == 401
        assert http.get("/studies", headers={**auth, "Accept": "text/html"}).status_code == 406
        assert http.get("/studies/1.2.3/series", headers=auth).status_code == 404
        assert http.get(f"/studies/{ct.study_uid}/series", headers=auth).status_code == 404
        assert (
            http.get("/studies", params={"StudyDate": "yesterday"}, headers=auth).status_code == 400
        )
        wado = {"requestType": "WADO", "studyUID": mr.study_uid, "seriesUID": mr.series_uid,
                "objectUID": mr.sop_uid}  # fmt: skip
        jpeg = http.get("/wado", params=wado, headers=auth)
        assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
        dicom = http.get("/wado", params={**wado, "contentType": "application/dicom"}, headers=auth)
        assert pydicom.dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == mr.sop_uid
        windowed = http.get(
            "/wado", params={**wado, "contentType": "image/png", "windowCenter": "600",
                             "windowWidth": "100", "rows": "32"}, headers=auth,
        )  # fmt: skip
        assert Image.open(io.BytesIO(windowed.content)).size == (32, 32)
        assert (
            http.get("/wado", params={**wado, "requestType": "X"}, headers=auth).status_code == 400
        )
        foreign = {
            **wado,
            "studyUID": ct.study_uid,
            "seriesUID": ct.series_uid,
            "objectUID": ct.sop_uid,
        }
        assert http.get("/wado", params=foreign, headers=auth).status_code == 404
