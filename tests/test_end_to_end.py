"""The first end-to-end path as a township and a county reader live it (issue 2, Proof).

`remote-dx serve` runs as its own process on free ports; a township pushes the sample studies with
dcmtk's storescu and with `remote-dx push`; once the quiet period passes the worker processes
them and the county reader — and only the county reader — finds them in the worklist.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pydicom.errors
import pytest

from remote_dx.core.settings import Settings
from tests.conftest import settings_env
from tests.support import SAMPLE_STUDIES, wait_until

BIN = Path(sys.executable).parent


# storescu proposes only uncompressed syntaxes unless told which compressed one to propose.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
}


def storescu(dcmtk: str, settings: Settings, files: list[Path]) -> None:
    """Send ``files`` as the XIPING_DR modality would, one storescu run per transfer syntax."""
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, []).append(path)
    for syntax, group in by_syntax.items():
        flag = [STORESCU_PROPOSE[syntax]] if syntax in STORESCU_PROPOSE else []
        sent = subprocess.run(
            [
                dcmtk,
                *flag,
                "-aet",
                "XIPING_DR",
                "-aec",
                settings.ae_title,
                "127.0.0.1",
                str(settings.dicom_port),
                *map(str, group),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr


def _dicom_files(folder: Path) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            except pydicom.errors.InvalidDicomError:  # README, YAML, scripts
                continue
            found.append(path)
    return found


@pytest.fixture
def hub(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    env = {**os.environ, **settings_env(settings)}
    log = (tmp_path / "hub.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "remote-dx"), "serve", "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{settings.http_port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"hub exited: {(tmp_path / 'hub.log').read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60, message="the hub to become ready")
    yield settings
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def _token(base: str, username: str) -> str:
    response = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": username, "password": "demo"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _worklist(base: str, token: str) -> dict:
    response = httpx.get(
        f"{base}/api/v1/worklist", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_township_push_reaches_county_worklist_only(hub: Settings, dcmtk: str) -> None:
    files = _dicom_files(SAMPLE_STUDIES)
    assert files, "sample_studies/ holds no DICOM files"
    ecg = [f for f in files if "ecg" in f.name.lower() or "waveform" in f.name.lower()]
    images = [f for f in files if f not in ecg]
    study_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}

    # The DR sends its images with dcmtk's storescu, as a real modality would.
    storescu(dcmtk, hub, images)
    # The ECG cart's PC uses our own client.
    if ecg:
        pushed = subprocess.run(
            [
                str(BIN / "remote-dx"),
                "push",
                *map(str, ecg),
                "--port",
                str(hub.dicom_port),
                "--calling-ae",
                "XIPING_ECG",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr

    base = f"http://127.0.0.1:{hub.http_port}"
    county = _token(base, "county_reader")

    def all_listed() -> dict | None:
        listing = _worklist(base, county)
        return listing if {i["study_uid"] for i in listing["items"]} >= study_uids else None

    listing = wait_until(all_listed, timeout=60, message="every pushed study in the worklist")
    assert listing["total"] >= len(study_uids)
    for item in listing["items"]:
        assert item["pool"] == "西峡县人民医院"
        assert item["origin"] == "西坪镇卫生院"
        assert item["status"] == "unread"
        assert item["due_at"] > item["received_at"]

    province = _token(base, "province_reader")
    assert not {i["study_uid"] for i in _worklist(base, province)["items"]} & study_uids

    # Sending everything again changes nothing: the same SOP Instance UIDs are stored once.
    storescu(dcmtk, hub, images)
    for uid in study_uids:
        study = httpx.get(
            f"{base}/api/v1/studies/{uid}",
            headers={"Authorization": f"Bearer {county}"},
            timeout=10,
        ).json()
        instances = sum(len(s["instances"]) for s in study["series"])
        expected = sum(
            1
            for f in files
            if str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) == uid
        )
        assert instances == expected
