"""The signed report as an HL7 FHIR R4 DiagnosticReport (JSON), with its Patient, Practitioner(s),
Organizations and — for an ECG — one Observation per measurement, all *contained* so the
resource stands alone (FHIR R4 §2.30 "Contained resources").

- ``status``: preliminary | final | amended (the report's status); entered-in-error when an
  amendment withdrew the result.
- ``category``: HL7 v2 table 0074 — EC (electrocardiac) or RAD (radiology).
- ``code``: LOINC, see :mod:`remote_dx.reporting.export.codes`.
- ``subject``: the Patient with its identifier in the issuer's namespace
  (``urn:remote-dx:issuer:{issuer}``), as PatientID is only unique per issuer.
- ``effectiveDateTime``: the exam's date and time; ``issued``: when this version was signed.
- ``performer``: the signing reader(s) (Practitioner) and the reading centre (Organization);
  ``resultsInterpreter``: the reader(s) too.
- ``conclusion``: the impression; ``presentedForm``: the report PDF (base64).
- ``result``: the measurement Observations (UCUM units ``/min``, ``ms``, ``deg``).
- ``identifier``: the verification code (``urn:remote-dx:verify``).

Validated in tests with the ``fhir.resources`` models (its R4B package: fhir.resources 8 ships
R5 as default, R4B and STU3, not R4 proper; DiagnosticReport and Observation have the same
elements used here in R4 and R4B).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from remote_dx.reporting.export.codes import LOINC, UCUM, V2_0074, exam_code, measurement_values
from remote_dx.reporting.export.view import SignedReportView

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
ISSUER_SYSTEM = "urn:remote-dx:issuer:"
INSTITUTION_SYSTEM = "urn:remote-dx:institution"
USER_SYSTEM = "urn:remote-dx:user"
VERIFY_SYSTEM = "urn:remote-dx:verify"
STUDY_UID_SYSTEM = "urn:dicom:uid"
GENDER = {"M": "male", "F": "female", "O": "other"}


def _instant(value: datetime | None) -> str:
    value = (value or datetime.now(UTC)).astimezone(UTC)
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _effective(date: str | None, time: str | None) -> str | None:
    """DICOM DA/TM of the exam (local time at the township) as a FHIR dateTime."""
    if not (date and len(date) == 8 and date.isdigit()):
        return None
    digits = "".join(c for c in (time or "").split(".")[0] if c.isdigit())
    if len(digits) >= 4:
        hh, mm, ss = digits[:2], digits[2:4], (digits[4:6] or "00")
        try:
            moment = datetime(
                int(date[:4]),
                int(date[4:6]),
                int(date[6:]),
                int(hh),
                int(mm),
                int(ss),
                tzinfo=LOCAL_TZ,
            )
        except ValueError:
            return f"{date[:4]}-{date[4:6]}-{date[6:]}"
        return moment.isoformat()
    return f"{date[:4]}-{date[4:6]}-{date[6:]}"


def _birth_date(value: str | None) -> str | None:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return None


def _human_name(pn: str | None) -> list[dict[str, Any]]:
    if not pn:
        return []
    names = []
    for group in pn.split("="):
        parts = group.split("^")
        family, given = parts[0].strip(), [p.strip() for p in parts[1:3] if p.strip()]
        if not (family or given):
            continue
        # Chinese names are written without spaces (王小明), alphabetic ones with (Wang Xiaoming).
        sep = " " if group.isascii() else ""
        name: dict[str, Any] = {"use": "official", "text": sep.join([family, *given]).strip()}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        names.append(name)
    return names


def diagnostic_report(view: SignedReportView, pdf: bytes | None = None) -> dict[str, Any]:
    """The DiagnosticReport resource (a JSON-ready dict) for ``view``."""
    study, patient = view.study, view.patient
    code = exam_code(study.modality, study.body_part, study.num_images, view.is_ecg)
    contained: list[dict[str, Any]] = []
    # R4: "entered-in-error — the report has been withdrawn following a previous final release".
    status = "entered-in-error" if view.content.get("withdrawn") else view.status

    patient_resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "patient",
        "identifier": [
            {
                "system": f"{ISSUER_SYSTEM}{patient.issuer}",
                "value": patient.patient_id,
                "assigner": {"display": patient.issuer},
            }
        ],
        # The township that took the exam keeps the patient's record.
        "managingOrganization": {"reference": "#origin"},
    }
    if names := _human_name(patient.name):
        patient_resource["name"] = names
    if patient.sex in GENDER:
        patient_resource["gender"] = GENDER[patient.sex or ""]
    if birth := _birth_date(patient.birth_date):
        patient_resource["birthDate"] = birth
    contained.append(patient_resource)

    contained.append(
        {
            "resourceType": "Organization",
            "id": "pool",
            "identifier": [{"system": INSTITUTION_SYSTEM, "value": view.pool_code}],
            "name": view.pool_name,
        }
    )
    contained.append(
        {
            "resourceType": "Organization",
            "id": "origin",
            "identifier": [{"system": INSTITUTION_SYSTEM, "value": view.origin_code}],
            "name": view.origin_name,
        }
    )
    practitioners = []
    for index, signer in enumerate(view.signers):
        practitioner: dict[str, Any] = {
            "resourceType": "Practitioner",
            "id": f"signer{index + 1}",
            "name": [{"text": signer.name}],
        }
        if signer.username:
            practitioner["identifier"] = [{"system": USER_SYSTEM, "value": signer.username}]
        if signer.title:
            practitioner["qualification"] = [{"code": {"text": signer.title}}]
        contained.append(practitioner)
        practitioners.append({"reference": f"#{practitioner['id']}", "display": signer.name})

    effective = _effective(study.study_date, study.study_time)
    results = []
    if view.is_ecg:
        for index, (measurement, value) in enumerate(measurement_values(view.measurements)):
            observation: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"obs{index + 1}",
                "status": status,
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/"
                                "observation-category",
                                "code": "procedure",
                                "display": "Procedure",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [
                        {
                            "system": LOINC,
                            "code": measurement.code.code,
                            "display": measurement.code.display,
                        }
                    ],
                    "text": measurement.label_zh,
                },
                "subject": {"reference": "#patient"},
                "valueQuantity": {
                    "value": round(value, 1),
                    "unit": measurement.unit_display,
                    "system": UCUM,
                    "code": measurement.unit,
                },
            }
            if effective:
                observation["effectiveDateTime"] = effective
            contained.append(observation)
            results.append({"reference": f"#{observation['id']}"})

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"report-{view.report_id}-v{view.version}",
        "meta": {"versionId": str(view.version), "lastUpdated": _instant(view.signed_at)},
        "language": "zh-CN",
        "contained": contained,
        "identifier": [
            {"system": STUDY_UID_SYSTEM, "value": f"urn:oid:{study.study_uid}"},
        ],
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": V2_0074,
                        "code": "EC" if view.is_ecg else "RAD",
                        "display": "Electrocardiac" if view.is_ecg else "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": code.code, "display": code.display}],
            "text": study.description or code.display,
        },
        "subject": {"reference": "#patient"},
        "issued": _instant(view.signed_at),
        "performer": [*practitioners, {"reference": "#pool", "display": view.pool_name}],
        "resultsInterpreter": practitioners or [{"reference": "#pool"}],
        "conclusion": view.impression or None,
    }
    if view.verify_code:
        report["identifier"].append({"system": VERIFY_SYSTEM, "value": view.verify_code})
    if effective:
        report["effectiveDateTime"] = effective
    if results:
        report["result"] = results
    if pdf is not None:
        report["presentedForm"] = [
            {
                "contentType": "application/pdf",
                "language": "zh-CN",
                "data": base64.b64encode(pdf).decode("ascii"),
                "title": "远程诊断报告",
                "creation": _instant(view.signed_at),
            }
        ]
    if report["conclusion"] is None:
        del report["conclusion"]
    return report
