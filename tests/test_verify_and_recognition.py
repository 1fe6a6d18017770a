"""Signatures, verification codes, ``/verify/{code}`` (no login) and the recognition registry
(issue 4, 结果互认).

The hub's Ed25519 key signs each version; a payload or content edited in the database afterwards
must show as invalid. Recognition: final results signed by a qualified reader of county level or
above, within the exam's validity window (moved with the project clock), count; preliminary,
expired, withdrawn and township-signed results do not, and say why.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import flag_modified

from remote_dx.core import clock
from remote_dx.core.db import get_sessionmaker
from remote_dx.core.models import Report, ReportVersion, Study
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.reporting import keys
from remote_dx.reporting.keys import canonical_json, load_signing_key
from remote_dx.reporting.recognition import VALIDITY_DAYS, lookup
from remote_dx.reporting.verify import ALPHABET, mask_id, mask_name, new_code, normalise_code
from tests.support import demo_hub_on
from tests.test_reporting import ABNORMAL, MACHINE_ECG, Hub, add_study, content, open_hub

PATIENT = "XP-20250001"


@pytest.fixture(autouse=True)
def _fresh_keys() -> None:
    keys.reset_key_cache()


@pytest.fixture
def hub(settings: Settings, db: sessionmaker[Session]) -> Iterator[Hub]:
    yield from open_hub(settings, db)


def signed_study(hub: Hub, **kw) -> tuple[str, str]:
    uid = add_study(hub, **kw)
    response = hub.sign(uid, "county_reader", content(ABNORMAL))
    assert response.status_code == 200, response.text
    return uid, response.json()["verify_code"]


def verify_json(hub: Hub, code: str) -> dict:
    response = hub.client.get(f"/verify/{code}")
    assert response.status_code == 200, response.text
    return response.json()


def current_version(session: Session, uid: str) -> ReportVersion:
    version = session.scalar(
        select(ReportVersion)
        .join(Report, Report.id == ReportVersion.report_id)
        .join(Study, Study.id == Report.study_pk)
        .where(Study.study_uid == uid, ReportVersion.version == Report.current_version)
    )
    assert version is not None
    return version


# --- keys and codes ----------------------------------------------------------------------------


def test_key_file_is_made_once_private_and_stable(settings: Settings) -> None:
    key = load_signing_key(settings)
    path = settings.data_dir / keys.KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys.reset_key_cache()
    again = load_signing_key(settings)
    assert again.key_id == key.key_id and len(key.key_id) == 16
    payload = {"b": "王小东", "a": [1, 2.5], "c": None}
    assert canonical_json(payload) == '{"a":[1,2.5],"b":"王小东","c":null}'.encode()
    signature = key.sign(payload)
    assert again.verify(payload, signature)
    assert not again.verify({**payload, "b": "王小冬"}, signature)
    assert not again.verify(payload, "not base64!")


def test_key_from_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    ids = set()
    for value in (base64.b64encode(seed).decode(), pem, base64.b64encode(pem.encode()).decode()):
        monkeypatch.setenv(keys.ENV_NAME, value)
        keys.reset_key_cache()
        ids.add(load_signing_key(settings).key_id)
    assert ids == {keys.key_id_of(private.public_key())}
    assert not (settings.data_dir / keys.KEY_FILE).exists()  # the environment's key is used
    monkeypatch.setenv(keys.ENV_NAME, "bm90IGEga2V5")
    keys.reset_key_cache()
    with pytest.raises(keys.SigningKeyError):
        load_signing_key(settings)


def test_codes_and_masks(db: sessionmaker[Session]) -> None:
    with db() as session:
        codes = {new_code(session) for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 10 and set(c) <= set(ALPHABET) for c in codes)
    assert not set(ALPHABET) & set("01OI")
    code = next(iter(codes))
    assert normalise_code(f" {code[:5].lower()}-{code[5:]} ") == code
    assert normalise_code("O0000IIII1") is None
    assert mask_name("王^小东") == "王*东"
    assert mask_name("Wang^Xiaoming=王^小明") == "王*明"
    assert mask_name("李^娜") == "李*"
    assert mask_name("Wang^Xiaoming") == "W*g"
    assert mask_id("XP-20250001") == "XP*******01"
    assert mask_id("410102199001011234") == "4101**********1234"


# --- /verify -----------------------------------------------------------------------------------


def test_verify_holds_and_tampering_breaks_it(hub: Hub) -> None:
    uid, code = signed_study(hub)
    body = verify_json(hub, code)
    assert body["signature_valid"] is True
    assert body["signature"] == "签名有效 / signature valid"
    assert body["status"] == "final" and body["version"] == 1
    assert body["institution"] == "西峡县人民医院" and body["origin"] == "西坪镇卫生院"
    assert body["impression"] == ABNORMAL and body["signer"] == "县医院诊断医师"
    assert body["patient_name"] == "王*东" and body["patient_id"] == "XP*******01"
    assert "小东" not in json.dumps(body, ensure_ascii=False)
    assert verify_json(hub, code.lower())["code"] == code

    # The stored payload is edited: the signature no longer covers it.
    with hub.db() as session, session.begin():
        version = current_version(session, uid)
        original = dict(version.payload)
        version.payload = {**original, "impression": "未见异常。"}
        flag_modified(version, "payload")
    assert verify_json(hub, code)["signature_valid"] is False
    assert verify_json(hub, code)["signature"] == "签名无效 / signature NOT valid"
    page = hub.client.get(f"/verify/{code}", headers={"Accept": "text/html"}).text
    assert "签名无效" in page and "签名有效" not in page

    # Payload restored: valid again. Then the content is edited: invalid.
    with hub.db() as session, session.begin():
        version = current_version(session, uid)
        version.payload = original
        flag_modified(version, "payload")
    assert verify_json(hub, code)["signature_valid"] is True
    with hub.db() as session, session.begin():
        version = current_version(session, uid)
        version.content = {**version.content, "impression": "未见异常。"}
        flag_modified(version, "content")
    assert verify_json(hub, code)["signature_valid"] is False
    report = hub.report(uid)
    assert report["versions"][0]["signature_valid"] is False

    # A key other than the one that signed (a replaced key file) cannot vouch for it.
    _, code2 = signed_study(hub, patient_id="XP-2")
    (hub.settings.data_dir / keys.KEY_FILE).unlink()
    keys.reset_key_cache()
    assert verify_json(hub, code2)["signature_valid"] is False


def test_verify_page_without_login(hub: Hub) -> None:
    uid, code = signed_study(hub)
    page = hub.client.get(f"/verify/{code}", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "签名有效" in text and "王*东" in text and "XP*******01" in text
    assert "王小东" not in text and "XP-20250001" not in text
    assert ABNORMAL in text and "西峡县人民医院" in text and "县医院诊断医师" in text

    missing = hub.client.get("/verify/ABCDEFGHJK", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and "未找到" in missing.text
    assert hub.client.get("/verify/ABCDEFGHJK").status_code == 404
    assert hub.client.get("/verify/not-a-code").status_code == 404

    key = hub.client.get("/api/v1/report-signing-key").json()
    assert key["algorithm"] == "Ed25519" and key["key_id"] == verify_json(hub, code)["key_id"]

    # After an amendment the same code shows the current version and says so.
    body = {"content": content(ABNORMAL + "建议复查。"), "reason": "补充建议"}
    amended = hub.call("POST", f"/api/v1/studies/{uid}/report/amend", "county_reader", body)
    assert amended.status_code == 200, amended.text
    body = verify_json(hub, code)
    assert (body["status"], body["version"], body["versions"]) == ("amended", 2, 2)
    assert body["signature_valid"] is True and body["amendment_reason"] == "补充建议"
    page = hub.client.get(f"/verify/{code}", headers={"Accept": "text/html"})
    assert "已更正" in page.text and "签名有效" in page.text


def test_preliminary_report_verifies_as_preliminary(hub: Hub) -> None:
    uid = add_study(hub, second_signature=True)
    code = hub.sign(uid, "county_reader", content(ABNORMAL)).json()["verify_code"]
    body = verify_json(hub, code)
    assert body["status"] == "preliminary" and body["signature_valid"] is True
    confirm = hub.call("POST", f"/api/v1/studies/{uid}/report/confirm", "county_senior")
    assert confirm.status_code == 200 and confirm.json()["verify_code"] == code
    body = verify_json(hub, code)
    assert body["status"] == "final" and body["signer"] == "县医院主任"


# --- recognition -------------------------------------------------------------------------------


def recognition(hub: Hub, username: str = "tech_xiping", **params) -> dict:
    response = hub.get("/api/v1/recognition", username, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_recognised_after_final_signature_not_when_preliminary(hub: Hub) -> None:
    assert hub.client.get("/api/v1/recognition", params={"patient_id": PATIENT}).status_code == 401
    uid, code = signed_study(hub)
    pending = add_study(hub, second_signature=True)
    assert hub.sign(pending, "county_reader", content(ABNORMAL)).json()["status"] == "preliminary"

    answer = recognition(hub, patient_id=PATIENT, exam="chest-dx")
    assert [r["study_uid"] for r in answer["results"]] == [uid]
    result = answer["results"][0]
    assert result["verify_code"] == code and result["signature_valid"] is True
    assert result["status"] == "final" and result["impression"] == ABNORMAL
    assert result["signer"]["level"] == "county"
    assert result["origin"] == "西坪镇卫生院" and result["reading_institution"] == "西峡县人民医院"
    [excluded] = answer["not_recognisable"]
    assert excluded["study_uid"] == pending and "preliminary" in excluded["reason"]

    # Another member institution (the province) sees the same; other exams and patients do not.
    assert recognition(hub, "province_reader", patient_id=PATIENT, exam="dx")["results"]
    assert recognition(hub, patient_id=PATIENT, exam="ecg")["results"] == []
    assert recognition(hub, patient_id="OTHER")["results"] == []
    assert recognition(hub, patient_id=PATIENT, issuer="NOPE")["results"] == []
    bad = hub.get("/api/v1/recognition", "tech_xiping", params={"patient_id": PATIENT, "exam": "x"})
    assert bad.status_code == 422 and "unknown exam" in bad.json()["detail"]

    # Confirmed by the senior: recognisable now.
    hub.call("POST", f"/api/v1/studies/{pending}/report/confirm", "county_senior")
    assert {r["study_uid"] for r in recognition(hub, patient_id=PATIENT)["results"]} == {
        uid,
        pending,
    }


def test_validity_window_per_exam(hub: Hub) -> None:
    chest, _ = signed_study(hub)
    ecg = add_study(hub, modality="ECG", machine_ecg=MACHINE_ECG)
    prefill = hub.report(ecg)["draft"]["content"]
    assert hub.sign(ecg, "county_reader", prefill).status_code == 200
    key = load_signing_key(hub.settings)

    def recognised() -> set[str]:
        with hub.db() as session:
            return {r.study_uid for r in lookup(session, patient_id=PATIENT, key=key).results}

    assert recognised() == {chest, ecg}
    clock.advance(timedelta(days=VALIDITY_DAYS["ecg"], hours=1))
    assert recognised() == {chest}
    clock.advance(timedelta(days=VALIDITY_DAYS["chest-dx"] - VALIDITY_DAYS["ecg"]))
    assert recognised() == set()
    with hub.db() as session:
        reasons = [n.reason for n in lookup(session, patient_id=PATIENT, key=key).not_recognisable]
    assert len(reasons) == 2 and all("expired" in r for r in reasons)
    # A deployment's own table (a health commission's longer window) applies when given.
    with hub.db() as session:
        longer = lookup(session, patient_id=PATIENT, key=key, validity={"chest-dx": 60, "ecg": 7})
    assert [r.study_uid for r in longer.results] == [chest]


def test_township_signer_withdrawn_and_tampered_results_are_not_recognised(hub: Hub) -> None:
    township = add_study(hub, pool="XIPING")  # read at the township itself
    signed = hub.sign(township, "xiping_reader", content(ABNORMAL))
    assert signed.status_code == 200, signed.text
    county, _ = signed_study(hub)
    answer = recognition(hub, patient_id=PATIENT)
    assert [r["study_uid"] for r in answer["results"]] == [county]
    [excluded] = answer["not_recognisable"]
    assert excluded["study_uid"] == township and "township" in excluded["reason"]

    # Withdrawn by amendment (wrong patient): no longer recognised, the code still verifies.
    withdraw = {**content(impression=""), "withdrawn": True}
    response = hub.call("POST", f"/api/v1/studies/{county}/report/amend", "county_reader",
                        {"content": withdraw, "reason": "患者信息错误"})  # fmt: skip
    assert response.status_code == 200, response.text
    answer = recognition(hub, patient_id=PATIENT)
    assert answer["results"] == []
    assert any("withdrawn" in n["reason"] for n in answer["not_recognisable"])
    assert verify_json(hub, response.json()["verify_code"])["withdrawn"] is True

    # A tampered result is not recognised either.
    other, _ = signed_study(hub)
    assert [r["study_uid"] for r in recognition(hub, patient_id=PATIENT)["results"]] == [other]
    with hub.db() as session, session.begin():
        version = current_version(session, other)
        version.content = {**version.content, "impression": "未见异常。"}
        flag_modified(version, "content")
    answer = recognition(hub, patient_id=PATIENT)
    assert answer["results"] == []
    assert any("signature" in n["reason"] for n in answer["not_recognisable"])


@pytest.mark.postgres
def test_sign_confirm_amend_verify_and_recognise_on_postgresql(
    settings: Settings, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out database: row locks of the signing steps, JSON payloads read back from
    PostgreSQL verify byte for byte, the recognition join."""
    monkeypatch.setenv("RDX_DATABASE_URL", postgres_database)
    reset_settings()
    pg = demo_hub_on(settings, postgres_database)
    for hub in open_hub(pg, get_sessionmaker(pg)):
        ecg = add_study(hub, modality="ECG", machine_ecg=MACHINE_ECG, second_signature=True)
        prefill = hub.report(ecg)["draft"]["content"]
        hub.claim(ecg)
        draft = hub.call("PUT", f"/api/v1/studies/{ecg}/report/draft", "county_reader",
                         {"content": prefill})  # fmt: skip
        assert draft.status_code == 200, draft.text
        first = hub.sign(ecg)
        assert first.status_code == 200 and first.json()["status"] == "preliminary"
        code = first.json()["verify_code"]
        confirmed = hub.call("POST", f"/api/v1/studies/{ecg}/report/confirm", "county_senior")
        assert confirmed.status_code == 200, confirmed.text
        body = {
            "content": {**prefill, "impression": "窦性心律；一度房室传导阻滞。"},
            "reason": "措辞",
        }
        amended = hub.call("POST", f"/api/v1/studies/{ecg}/report/amend", "county_senior", body)
        assert amended.status_code == 200, amended.text
        assert [v["signature_valid"] for v in amended.json()["versions"]] == [True, True, True]
        assert verify_json(hub, code)["signature_valid"] is True
        [result] = recognition(hub, patient_id=PATIENT, exam="ecg")["results"]
        assert result["verify_code"] == code and result["status"] == "amended"
        with hub.db() as session, session.begin():
            version = current_version(session, ecg)
            version.payload = {**version.payload, "measurements": {"heart_rate": 60.0}}
            flag_modified(version, "payload")
        assert verify_json(hub, code)["signature_valid"] is False
        assert recognition(hub, patient_id=PATIENT, exam="ecg")["results"] == []
