"""``POST /api/v1/ecg``: every format a township cart exports, through the real API and the real
filing door, ends as a DICOM 12-lead waveform object in the store (plus the original files);
device-key and technician authentication; bad input refused with a message naming the problem,
without losing anything uploaded before it (issue 3, "In")."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core.errors import StorageUnavailable
from remote_dx.core.models import Device, Instance, Institution, Role, Series, Study, User
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings
from remote_dx.ecg import service
from remote_dx.ecg.dicom_codes import TWELVE_LEAD_ECG
from remote_dx.ingest.ecg_upload import original_key
from remote_dx.storage.factory import get_store
from tests.ecg_samples import csv_text, muse_xml, sierra_xml, synthetic_ecg
from tests.support import SHARED_DATA

ECG_DATA = SHARED_DATA / "ecg"
LUDB = ECG_DATA / "ludb" / "data"
AECG = ECG_DATA / "hl7-aecg" / "HL7_Example_aECG.xml"
STANDARD_12 = {"I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"}


@pytest.fixture
def client(settings: Settings, db: sessionmaker[Session]) -> TestClient:
    return TestClient(create_app(settings))


def auth(client: TestClient, username: str) -> dict[str, str]:
    tokens: dict[str, str] = client.__dict__.setdefault("rdx_tokens", {})
    if username not in tokens:
        response = client.post(
            "/api/v1/auth/token", data={"username": username, "password": "demo"}
        )
        assert response.status_code == 200, response.text
        tokens[username] = response.json()["access_token"]
    return {"Authorization": f"Bearer {tokens[username]}"}


def upload(
    client: TestClient,
    files: list[tuple[str, bytes]],
    *,
    headers: dict[str, str] | None = None,
    **form: str,
):
    return client.post(
        "/api/v1/ecg",
        headers=headers if headers is not None else auth(client, "tech_xiping"),
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
    )


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference ECG data not found at {path}")
    return path


def _pydicom_ecg() -> list[tuple[str, bytes]]:
    path = get_testdata_file("waveform_ecg.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's waveform_ecg.dcm is not installed locally")
    return [("waveform_ecg.dcm", Path(path).read_bytes())]


def _ludb() -> list[tuple[str, bytes]]:
    folder = _shared(LUDB)
    return [(name, (folder / name).read_bytes()) for name in ("1.hea", "1.dat")]


def _aecg() -> list[tuple[str, bytes]]:
    return [("HL7_Example_aECG.xml", _shared(AECG).read_bytes())]


FORMATS = {
    "dicom": _pydicom_ecg,
    "wfdb": _ludb,
    "hl7-aecg": _aecg,
    "csv": lambda: [("cart.csv", csv_text(synthetic_ecg()))],
    "philips-sierra": lambda: [("sierra.xml", sierra_xml(synthetic_ecg()))],
    "ge-muse": lambda: [("muse.xml", muse_xml(synthetic_ecg()))],
}


def stored_instance(db: sessionmaker[Session], study_uid: str) -> tuple[Study, Instance]:
    with db() as session:
        row = session.execute(
            select(Study, Instance)
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Study.study_uid == study_uid)
        ).one()
        _ = row[0].patient, row[0].origin
        return row[0], row[1]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_is_stored_as_a_dicom_12_lead_ecg(
    client: TestClient, settings: Settings, db: sessionmaker[Session], fmt: str
) -> None:
    files = FORMATS[fmt]()
    response = upload(
        client,
        files,
        patient_id=f"ECG-{fmt}",
        patient_name="张^三",
        patient_sex="M",
        patient_birth_date="1961-05-04",
        priority="urgent",
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == fmt
    assert body["duplicate"] is False
    assert body["n_leads"] >= 12

    study, instance = stored_instance(db, body["study_uid"])
    assert instance.sop_instance_uid == body["sop_instance_uid"]
    assert study.origin.code == "XIPING"
    assert study.device_id is None  # a technician's upload names no device
    assert (study.patient.patient_id, study.patient.name) == (f"ECG-{fmt}", "张^三")
    store = get_store(settings)
    ds = pydicom.dcmread(io.BytesIO(store.get(instance.object_key)))
    assert ds.SOPClassUID == TWELVE_LEAD_ECG and ds.Modality == "ECG"
    assert ds.PatientID == f"ECG-{fmt}" and ds.PatientSex == "M"
    assert ds.PatientBirthDate == "19610504"
    assert ds.RequestAttributesSequence[0].RequestedProcedurePriority == "HIGH"
    group = ds.WaveformSequence[0]
    labels = {str(c.ChannelLabel) for c in group.ChannelDefinitionSequence}
    assert labels >= STANDARD_12
    samples = ds.waveform_array(0)
    assert samples.shape[1] == len(labels) and np.ptp(samples) > 0
    for name, data in files:  # the uploaded files are kept as they came
        assert store.get(original_key(body["study_uid"], name)) == data


def test_device_key_authenticates_a_cart(
    client: TestClient, db: sessionmaker[Session], settings: Settings
) -> None:
    with db() as session:
        key = service.new_device_key(session, "XIPING_ECG")
        session.commit()
        device = session.scalar(select(Device).where(Device.ae_title == "XIPING_ECG"))
        assert device is not None and device.api_key_hash == service.hash_device_key(key)
        assert key not in (device.api_key_hash or "")
        device_id = device.id
    files = [("muse.xml", muse_xml(synthetic_ecg()))]
    response = upload(client, files, headers={"X-Device-Key": key})
    assert response.status_code == 201, response.text
    study, instance = stored_instance(db, response.json()["study_uid"])
    assert study.device_id == device_id and study.origin.code == "XIPING"
    assert study.patient.patient_id == "T-001"  # from the file when the form gives none
    assert instance.calling_ae == "XIPING_ECG"

    assert upload(client, files, headers={"X-Device-Key": key + "x"}).status_code == 401
    with db() as session:
        session.execute(
            Device.__table__.update().where(Device.id == device_id).values(enabled=False)
        )
        session.commit()
    refused = upload(client, files, headers={"X-Device-Key": key})
    assert refused.status_code == 401 and "device key" in refused.json()["detail"]


def test_resending_an_upload_gives_the_same_study(client: TestClient) -> None:
    files = [("cart.csv", csv_text(synthetic_ecg()))]
    first = upload(client, files, patient_id="P-1")
    again = upload(client, files, patient_id="P-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["study_uid"] == first.json()["study_uid"]
    assert again.json()["duplicate"] is True
    other = upload(client, files, patient_id="P-2")
    assert other.json()["study_uid"] != first.json()["study_uid"]


def test_only_technicians_and_devices_upload(client: TestClient, db: sessionmaker[Session]) -> None:
    with db() as session:
        county = session.scalar(select(Institution).where(Institution.code == "XXXRMYY"))
        assert county is not None
        session.add(
            User(
                username="stats",
                full_name="统计员",
                password_hash=hash_password("demo"),
                role=Role.STATISTICIAN,
                institution_id=county.id,
            )
        )
        session.commit()
    files = [("cart.csv", csv_text(synthetic_ecg()))]
    for username in ("county_reader", "stats"):
        response = upload(client, files, headers=auth(client, username))
        assert response.status_code == 403, response.text
        assert "cannot upload ECGs" in response.json()["detail"]
    anonymous = upload(client, files, headers={})
    assert anonymous.status_code == 401


def _wfdb_truncated() -> list[tuple[str, bytes]]:
    files = _ludb()
    return [files[0], ("1.dat", files[1][1][:60000])]


def _flat_csv() -> list[tuple[str, bytes]]:
    return [("flat.csv", b"# sampling_rate=500; units=uV\nI,II,V1\n" + b"0,0,0\n" * 5000)]


BAD = {
    "unknown binary": (lambda: [("x.bin", bytes(range(256)) * 40)], 415, "unrecognised"),
    "unknown XML": (lambda: [("x.xml", b"<html><body/></html>")], 415, "not a known ECG"),
    "WFDB .dat truncated": (_wfdb_truncated, 422, "1.dat is truncated"),
    "flat leads": (_flat_csv, 422, "flat"),
    "empty file": (lambda: [("x.csv", b"")], 422, "empty file"),
    "two ECGs at once": (
        lambda: [("a.xml", muse_xml(synthetic_ecg())), ("b.csv", csv_text(synthetic_ecg()))],
        422,
        "one file per ECG",
    ),
    "CSV too short": (
        lambda: [("short.csv", csv_text(synthetic_ecg(seconds=1.0)))],
        422,
        "at least 2 s",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_upload_is_refused_with_a_message_and_loses_nothing(
    client: TestClient, settings: Settings, db: sessionmaker[Session], case: str
) -> None:
    good = upload(client, [("good.csv", csv_text(synthetic_ecg()))], patient_id="GOOD")
    assert good.status_code == 201
    make, code, fragment = BAD[case]
    response = upload(client, make(), patient_id="BAD")
    assert response.status_code == code, response.text
    assert fragment in response.json()["detail"]
    # The earlier upload is whole; the refused one left nothing in the index.
    study, instance = stored_instance(db, good.json()["study_uid"])
    ds = pydicom.dcmread(io.BytesIO(get_store(settings).get(instance.object_key)))
    assert ds.PatientID == "GOOD"
    with db() as session:
        assert session.scalars(select(Study.study_uid)).all() == [study.study_uid]


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"patient_sex": "X"}, "patient_sex"),
        ({"patient_birth_date": "31/02/1990"}, "patient_birth_date"),
        ({"priority": "asap"}, "field 'priority'"),
        ({"sampling_rate": "-5"}, "field 'sampling_rate'"),
    ],
)
def test_bad_form_fields_are_422_with_a_message(
    client: TestClient, form: dict[str, str], fragment: str
) -> None:
    response = upload(client, [("cart.csv", csv_text(synthetic_ecg()))], **form)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_an_ecg_without_any_patient_id_is_refused(client: TestClient) -> None:
    # A CSV names no patient; without the form field there is nobody to file it under.
    response = upload(client, [("cart.csv", csv_text(synthetic_ecg()))])
    assert response.status_code == 422
    assert "patient_id" in response.json()["detail"]


def test_too_large_is_413(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("remote_dx.api.routers.ecg.MAX_UPLOAD_BYTES", 10_000)
    response = upload(client, [("cart.csv", csv_text(synthetic_ecg()))], patient_id="BIG")
    assert response.status_code == 413 and "exceeds" in response.json()["detail"]


def test_storage_down_is_503_and_nothing_is_indexed(
    client: TestClient, db: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise StorageUnavailable("disk gone")

    monkeypatch.setattr(store, "put", broken)
    response = upload(client, [("cart.csv", csv_text(synthetic_ecg()))], patient_id="P-503")
    assert response.status_code == 503
    assert "retry" in response.json()["detail"]
    with db() as session:
        assert session.scalars(select(Study)).all() == []


def test_cli_makes_a_device_key_once_and_loads_a_network(
    client: TestClient, db: sessionmaker[Session], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from remote_dx.cli import app as cli

    runner = CliRunner()
    network = tmp_path / "network.yaml"
    network.write_text(
        "institutions:\n"
        "  - {code: XXXRMYY, name: 西峡县人民医院, level: county}\n"
        "  - {code: MIJIANG, name: 米坪镇卫生院, level: township, parent: XXXRMYY}\n"
        "devices:\n"
        "  - {ae_title: MIJIANG_ECG, name: 米坪心电图机, modality: ECG, institution: MIJIANG}\n"
        "users:\n"
        "  - {username: tech_mijiang, role: technician, institution: MIJIANG, password: demo}\n",
        encoding="utf-8",
    )
    loaded = runner.invoke(cli, ["network", "load", str(network), "--with-passwords"])
    assert loaded.exit_code == 0, loaded.output
    assert "1 devices" in loaded.output

    made = runner.invoke(cli, ["devices", "key", "MIJIANG_ECG"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    assert key.startswith("rdx_") and len(key) > 40
    response = upload(client, [("m.xml", muse_xml(synthetic_ecg()))], headers={"X-Device-Key": key})
    assert response.status_code == 201, response.text
    study, _ = stored_instance(db, response.json()["study_uid"])
    assert study.origin.code == "MIJIANG"
    # The township's technician can log in (password from the file) and see the study.
    seen = client.get(f"/api/v1/studies/{study.study_uid}", headers=auth(client, "tech_mijiang"))
    assert seen.status_code == 200

    # A new key replaces the old one.
    again = runner.invoke(cli, ["devices", "key", "MIJIANG_ECG"])
    assert again.stdout.strip().splitlines()[0] != key
    old = upload(client, [("m.xml", muse_xml(synthetic_ecg()))], headers={"X-Device-Key": key})
    assert old.status_code == 401

    unknown = runner.invoke(cli, ["devices", "key", "NO_SUCH_AE"])
    assert unknown.exit_code == 1 and "NO_SUCH_AE" in unknown.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("devices:\n  - {ae_title: X, modality: ECG, institution: NOWHERE}\n")
    failed = runner.invoke(cli, ["network", "load", str(broken)])
    assert failed.exit_code == 1 and "NOWHERE" in failed.output
