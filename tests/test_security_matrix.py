"""Every route × every role × own / foreign institution: 401, 403 or 404 where due (issue 7).

The table :data:`ROUTES` lists each route of the app once (method + path template) with the roles
allowed and how its object is scoped. The test walks ``app.routes`` (all methods) and fails for a
route the table does not list, so a new router cannot slip by unreviewed: add one row.

For every listed route it sends, with the path parameters filled with an *own* object (the
caller's institution / pool) or a *foreign* one (another community's):

- no token and a garbage token → 401 (unless the row is ``public``);
- a role not in ``roles`` → 403;
- an allowed role on a foreign object → 404 (existence is not revealed); administrators are
  hub-wide, so for them the foreign object is allowed too;
- an allowed role on its own object → anything but 401/403/404/5xx (409 or 422 may be due to
  the object's state), or exactly the row's ``ok`` statuses where given.

Users: a technician of township XIPING; a reader, senior reader, supervisor, statistician and
administrator of county hospital XXXRMYY. Own objects: studies XIPING sent, routed to the county
pool. Foreign objects: studies DINGHE sent, routed to the provincial pool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount

from remote_dx.api.app import create_app
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    AlertSource,
    Consultation,
    CriticalAlert,
    Device,
    Institution,
    Role,
    Study,
    StudyStatus,
    User,
    WorklistItem,
)
from remote_dx.core.security import hash_password
from remote_dx.core.settings import Settings
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.storage.factory import get_store

try:  # FastAPI ≥ 0.16x keeps included routers nested; this walks them.
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI: app.routes is already flat
    iter_route_contexts = None  # type: ignore[assignment]

T, R, SR, SV, ST, A = (
    Role.TECHNICIAN,
    Role.READER,
    Role.SENIOR_READER,
    Role.SUPERVISOR,
    Role.STATISTICIAN,
    Role.ADMIN,
)
ALL = frozenset(Role)
PATIENT = frozenset({T, R, SR, SV, A})  # who may see patient data at all
READERS = frozenset({R, SR, SV})  # who reads (claims, raises alerts, asks consultations)
SIGNERS = frozenset({R, SR})  # who writes and signs reports (supervisors manage, not sign)
ADMIN = frozenset({A})
STATS = frozenset({ST, A, R, SR, SV})
BLIND = frozenset({ST})  # roles that see no patient data at all

USERS = {
    T: "tech_xiping",
    R: "county_reader",
    SR: "county_senior",
    SV: "county_supervisor",
    ST: "county_stats",
    A: "admin",
}

NONE = "none"  # the route names no object: own and foreign are the same request
STUDY = "study"
ECG = "ecg"
ALERT = "alert"
CONSULT = "consultation"
WADO = "wado"  # WADO-URI: the object is named by query parameters


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    roles: frozenset[Role] = ALL
    scope: str = NONE
    public: bool = False
    body: Any = None
    form: dict[str, str] | None = None
    ok: frozenset[int] = frozenset()  # empty: anything but 401/403/404/5xx
    own_404: str = ""  # an own-object 404 is fine when its detail says this (e.g. no pixel data)
    admin_foreign: str = "ok"  # what an administrator gets on the foreign object
    skip_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


STOW = (
    "the body's media type is checked before the role (a reader gets 415, not 403); "
    "statisticians are refused by the router; roles and origins in the STOW-RS tests"
)
DRAFT = {"content": {"findings": "双肺纹理清晰", "impression": "未见异常"}}
AMEND = {"content": {"findings": "双肺纹理清晰", "impression": "未见异常"}, "reason": "补充"}

# fmt: off
ROUTES: list[Row] = [
    # public: probes, docs, verification of a printed code, the signing key
    Row("GET", "/healthz", public=True, ok=frozenset({200})),
    Row("GET", "/readyz", public=True),
    Row("GET", "/metrics", public=True),
    Row("GET", "/openapi.json", public=True, ok=frozenset({200})),
    Row("GET", "/docs", public=True, ok=frozenset({200})),
    Row("GET", "/docs/oauth2-redirect", public=True, ok=frozenset({200})),
    Row("GET", "/redoc", public=True, ok=frozenset({200})),
    Row("GET", "/verify/{code}", public=True, ok=frozenset({404})),  # unknown code
    Row("GET", "/api/v1/report-signing-key", public=True, ok=frozenset({200})),
    Row("GET", "/*", public=True, ok=frozenset({200, 404})),  # viewer files (404: not built)
    # auth: login/refresh are how one gets a token; their own tests check them
    Row("POST", "/api/v1/auth/token", public=True, form={"username": "x", "password": "y"},
        ok=frozenset({401, 423})),  # 423: the repeated failures lock "x" out
    Row("POST", "/api/v1/auth/refresh", public=True, form={"refresh_token": "nope"},
        ok=frozenset({401})),
    Row("POST", "/api/v1/auth/logout", form={"refresh_token": "nope"}, ok=frozenset({204})),
    Row("GET", "/api/v1/auth/me", ok=frozenset({200})),
    # administration
    Row("GET", "/api/v1/admin/users", ADMIN, ok=frozenset({200})),
    Row("GET", "/api/v1/admin/users/{username}", ADMIN, ok=frozenset({200})),
    Row("POST", "/api/v1/admin/users", ADMIN, body={
        "username": "matrix_new", "full_name": "新用户", "role": "reader",
        "institution": "XXXRMYY", "password": "long-enough-password"}),
    Row("POST", "/api/v1/admin/users/{username}/disable", ADMIN, ok=frozenset({200})),
    Row("POST", "/api/v1/admin/users/{username}/enable", ADMIN, ok=frozenset({200})),
    Row("POST", "/api/v1/admin/users/{username}/password", ADMIN, body={}, ok=frozenset({200})),
    Row("POST", "/api/v1/admin/users/{username}/unlock", ADMIN, ok=frozenset({200})),
    Row("GET", "/api/v1/audit", ADMIN, ok=frozenset({200})),
    Row("GET", "/api/v1/audit/verify", ADMIN, ok=frozenset({200})),
    Row("GET", "/api/v1/routing/rules", ADMIN, ok=frozenset({200})),
    Row("GET", "/api/v1/routing/rules/versions", ADMIN, ok=frozenset({200})),
    Row("PUT", "/api/v1/routing/rules", ADMIN, body={"yaml": "not: [valid"},
        ok=frozenset({422})),
    # worklist and studies
    Row("GET", "/api/v1/worklist/events", PATIENT, skip_reason="a stream; scoped per event "
        "in tests/test_worklist_events.py"),
    Row("GET", "/api/v1/worklist", PATIENT, ok=frozenset({200})),
    Row("GET", "/api/v1/worklist/counts", PATIENT, ok=frozenset({200})),
    Row("POST", "/api/v1/worklist/{study_uid}/claim", READERS, STUDY),
    Row("POST", "/api/v1/worklist/{study_uid}/renew", READERS, STUDY),
    Row("POST", "/api/v1/worklist/{study_uid}/release", READERS | ADMIN, STUDY),  # stuck lease
    Row("POST", "/api/v1/worklist/{study_uid}/reassign", frozenset({SV, A}), STUDY,
        body={"user": "county_reader"}, admin_foreign="403"),  # not a reader of that pool
    Row("GET", "/api/v1/studies/{study_uid}", PATIENT, STUDY, ok=frozenset({200})),
    Row("GET", "/api/v1/studies/{study_uid}/routing", PATIENT, STUDY, ok=frozenset({200})),
    # critical alerts
    Row("GET", "/api/v1/alerts", PATIENT, ok=frozenset({200})),
    Row("GET", "/api/v1/alerts/{alert_id}", PATIENT, ALERT, ok=frozenset({200})),
    Row("POST", "/api/v1/alerts/{alert_id}/acknowledge", PATIENT, ALERT,
        body={"name": "值班医生 王芳"}),
    Row("POST", "/api/v1/studies/{study_uid}/alerts", READERS, STUDY,
        body={"reasons": [{"text": "右侧张力性气胸"}]}),
    # ECG
    Row("POST", "/api/v1/ecg", frozenset({T}), skip_reason="upload: the origin is the caller's "
        "institution, nothing foreign to name; tests/test_ecg_upload_api.py checks roles"),
    Row("GET", "/api/v1/ecg/{study_uid}/analysis", PATIENT, ECG),
    Row("PUT", "/api/v1/ecg/{study_uid}/confirmed", READERS, ECG, body={"rhythm": "sinus"}),
    Row("GET", "/api/v1/ecg/{study_uid}/render.{fmt}", PATIENT, ECG, ok=frozenset({200})),
    Row("GET", "/api/v1/ecg/{study_uid}/leads", PATIENT, ECG, ok=frozenset({200})),
    Row("GET", "/api/v1/ecg/reacquire-requests", PATIENT, ok=frozenset({200})),
    # consultations (会诊)
    Row("POST", "/api/v1/studies/{study_uid}/consultations", READERS, STUDY,
        body={"question": "请上级会诊"}),
    Row("GET", "/api/v1/studies/{study_uid}/consultations", PATIENT, STUDY, ok=frozenset({200})),
    Row("POST", "/api/v1/studies/{study_uid}/consultations/{consultation_id}/answer", READERS,
        CONSULT, body={"answer": "同意"}),
    # reports and results
    Row("GET", "/api/v1/report-templates", ALL, ok=frozenset({200})),  # no patient data
    Row("GET", "/api/v1/studies/{study_uid}/report", PATIENT, STUDY),
    Row("PUT", "/api/v1/studies/{study_uid}/report/draft", SIGNERS, STUDY, body=DRAFT),
    Row("POST", "/api/v1/studies/{study_uid}/report/sign", SIGNERS, STUDY, body={}),
    Row("POST", "/api/v1/studies/{study_uid}/report/confirm", SIGNERS, STUDY, body={}),
    Row("POST", "/api/v1/studies/{study_uid}/report/amend", SIGNERS, STUDY, body=AMEND),
    Row("GET", "/api/v1/studies/{study_uid}/report.pdf", PATIENT, STUDY,
        skip_reason="own study unsigned: 404 'not signed yet' cannot be told from scoping "
        "here; foreign case covered by tests/test_report_exports.py"),
    Row("GET", "/api/v1/studies/{study_uid}/report/fhir", PATIENT, STUDY,
        skip_reason="as report.pdf"),
    Row("GET", "/api/v1/studies/{study_uid}/deliveries", PATIENT, STUDY, ok=frozenset({200})),
    # de-identified export (PS3.15 basic profile) for teaching or outside consultation
    Row("GET", "/api/v1/studies/{study_uid}/deidentified", READERS | ADMIN, STUDY,
        ok=frozenset({200})),
    Row("GET", "/api/v1/recognition", PATIENT, extra={"params": {"patient_id": "P1"}}),
    # statistics (aggregates, no patient): statisticians and admins all pools, readers their own
    Row("GET", "/api/v1/stats/tables", STATS, ok=frozenset({200})),
    Row("GET", "/api/v1/stats/network", STATS, ok=frozenset({200})),
    Row("GET", "/api/v1/stats/dashboard", STATS, ok=frozenset({200})),
    Row("GET", "/api/v1/stats/{name}", STATS, ok=frozenset({200})),
    Row("GET", "/api/v1/stats/{name}/export", STATS, ok=frozenset({200})),
    Row("POST", "/api/v1/recognition/{verify_code}/use", ALL - {ST}, own_404="no signed result"),
    # DICOMweb (PS3.18): STOW by technicians (their institution becomes the origin) and admins
    Row("POST", "/dicom-web/studies", frozenset({T, A}), skip_reason=STOW),
    Row("POST", "/dicom-web/studies/{study_uid}", frozenset({T, A}), STUDY, skip_reason=STOW),
    Row("GET", "/dicom-web/wado", PATIENT, WADO),
    # QIDO lists are filtered by the same visibility, the rest is per study
    Row("GET", "/dicom-web/studies", PATIENT, ok=frozenset({200, 204})),
    Row("GET", "/dicom-web/series", PATIENT, ok=frozenset({200, 204})),
    Row("GET", "/dicom-web/instances", PATIENT, ok=frozenset({200, 204})),
    *(
        Row("GET", "/dicom-web/studies/{study_uid}" + tail, PATIENT, STUDY,
            own_404="no pixel data" if "/frames/" in tail else "no bulk data")
        for tail in (
            "", "/instances", "/metadata", "/series", "/thumbnail",
            "/series/{series_uid}", "/series/{series_uid}/instances",
            "/series/{series_uid}/metadata", "/series/{series_uid}/thumbnail",
            "/series/{series_uid}/instances/{sop_uid}",
            "/series/{series_uid}/instances/{sop_uid}/metadata",
            "/series/{series_uid}/instances/{sop_uid}/rendered",
            "/series/{series_uid}/instances/{sop_uid}/thumbnail",
            "/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}",
            "/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered",
            "/series/{series_uid}/instances/{sop_uid}/bulkdata/{path:path}",
        )
    ),
]
# fmt: on


def all_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, included routers walked."""
    routes = iter_route_contexts(app.routes) if iter_route_contexts else app.routes
    found: set[tuple[str, str]] = set()
    for route in routes:
        original = getattr(route, "original_route", route)
        if isinstance(original, Mount):  # static files: any path below the mount, GET only
            found.add(("GET", (original.path or "") + "/*"))
            continue
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None) or {"GET"}
        if path is None:
            continue
        for method in methods:
            if method != "HEAD":
                found.add((method, path))
    return found


def test_every_route_is_in_the_table(settings: Settings, db: sessionmaker[Session]) -> None:
    app = create_app(settings)
    listed = {(r.method, r.path) for r in ROUTES}
    missing = sorted(all_routes(app) - listed)
    assert not missing, (
        "routes without a row in tests/test_security_matrix.py ROUTES (say who may call them "
        f"and how they are scoped): {missing}"
    )
    stale = sorted(listed - all_routes(app))
    assert not stale, f"rows for routes the app no longer has: {stale}"


# -- the world the matrix runs in ------------------------------------------------------------


def _dx(origin_sender: Sender, patient_id: str) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "王^小东"
    ds.PatientID = patient_id
    ds.StudyDescription = "胸部正位"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _ecg(patient_id: str) -> bytes:
    ds = dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass
class World:
    client: TestClient
    tokens: dict[Role, str]
    own: dict[str, str]
    foreign: dict[str, str]


def _route_study(session: Session, uid: str, pool: Institution) -> Study:
    study = session.scalar(select(Study).where(Study.study_uid == uid))
    study.status = StudyStatus.PROCESSED
    study.processed_at = utcnow()
    session.add(
        WorklistItem(
            study_pk=study.id,
            pool_id=pool.id,
            due_at=utcnow(),
            routing_rule="matrix",
        )
    )
    return study


def build_world(settings: Settings, db: sessionmaker[Session]) -> World:
    store = get_store(settings)
    with db() as session, session.begin():
        inst = {i.code: i for i in session.scalars(select(Institution))}
        for username, role in (
            ("county_senior", Role.SENIOR_READER),
            ("county_stats", Role.STATISTICIAN),
            ("matrix_target", Role.READER),
        ):
            session.add(
                User(
                    username=username,
                    full_name=username,
                    password_hash=hash_password("demo"),
                    role=role,
                    institution_id=inst["XXXRMYY"].id,
                    modalities=["DX", "CR", "ECG"],
                )
            )
        xiping = Sender.of(session.scalar(select(Device).where(Device.ae_title == "XIPING_ECG")))
        dinghe = Sender.of(session.scalar(select(Device).where(Device.ae_title == "DINGHE_DR")))
    objects: dict[str, dict[str, str]] = {"own": {}, "foreign": {}}
    for side, sender, pool, pid in (
        ("own", xiping, "XXXRMYY", "OWN1"),
        ("foreign", dinghe, "HNSRMYY", "FOREIGN1"),
    ):
        dx = file_instance(_dx(sender, pid), store=store, sessions=db, sender=sender)
        ecg = file_instance(_ecg(pid), store=store, sessions=db, sender=sender)
        with db() as session, session.begin():
            pool_row = session.scalar(select(Institution).where(Institution.code == pool))
            study = _route_study(session, dx.study_uid, pool_row)
            ecg_study = _route_study(session, ecg.study_uid, pool_row)
            session.flush()
            alert = CriticalAlert(
                study_pk=ecg_study.id,
                pool_id=pool_row.id,
                origin_id=ecg_study.origin_id,
                source=AlertSource.READER,
                reasons=[{"code": "x", "text": "室颤"}],
            )
            other = session.scalar(select(Institution).where(Institution.code == "NYSZXYY"))
            consultation = Consultation(
                study_pk=study.id,
                from_pool_id=other.id,
                to_pool_id=pool_row.id,
                question="请会诊",
            )
            session.add_all([alert, consultation])
            session.flush()
            objects[side] = {
                "study_uid": dx.study_uid,
                "series_uid": dx.series_uid,
                "sop_uid": dx.sop_instance_uid,
                "ecg_uid": ecg.study_uid,
                "alert_id": str(alert.id),
                "consultation_id": str(consultation.id),
            }
    client = TestClient(create_app(settings))
    tokens = {}
    for role, username in USERS.items():
        response = client.post(
            "/api/v1/auth/token", data={"username": username, "password": "demo"}
        )
        assert response.status_code == 200, response.text
        tokens[role] = response.json()["access_token"]
    return World(client, tokens, objects["own"], objects["foreign"])


def _url(row: Row, objects: dict[str, str]) -> str:
    study = objects["ecg_uid"] if row.scope == ECG else objects["study_uid"]
    return (
        row.path.replace("/*", "/")
        .replace("{study_uid}", study)
        .replace("{alert_id}", objects["alert_id"])
        .replace("{consultation_id}", objects["consultation_id"])
        .replace("{username}", "matrix_target")
        .replace("{code}", "NOSUCHCODE")
        .replace("{verify_code}", "NOSUCHCODE")
        .replace("{name}", "workload")
        .replace("{fmt}", "png")
        .replace("{series_uid}", objects["series_uid"])
        .replace("{sop_uid}", objects["sop_uid"])
        .replace("{frame_list}", "1")
        .replace("{frame}", "1")
        .replace("{path:path}", "7FE00010")
    )


def _send(world: World, row: Row, objects: dict[str, str], headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers, **row.extra}
    if row.scope == WADO:
        kwargs["params"] = {
            "requestType": "WADO",
            "studyUID": objects["study_uid"],
            "seriesUID": objects["series_uid"],
            "objectUID": objects["sop_uid"],
            "contentType": "application/dicom",
        }
    if row.form is not None:
        kwargs["data"] = row.form
    elif row.body is not None:
        kwargs["json"] = row.body
    return world.client.request(row.method, _url(row, objects), **kwargs)


def _empty(response: Any) -> bool:
    """A listing with nothing in it (JSON [] or {"items": [], "total": 0, …})."""
    try:
        body = response.json()
    except ValueError:
        return False
    if isinstance(body, list):
        return not body
    if isinstance(body, dict):
        lists = [v for v in body.values() if isinstance(v, list)]
        counted = "total" in body
        return (bool(lists) or counted) and not any(lists) and not body.get("total")
    return False


def expected(row: Row, role: Role | None, side: str) -> str:
    """'401', '403', '404' or 'ok' for this caller."""
    if row.public:
        return "ok"
    if role is None:
        return "401"
    if role not in row.roles:
        # On another community's object, "not found" is as good: it reveals nothing. A role
        # that sees no patient data at all (statistician) may likewise get 404 or an empty list.
        if role in BLIND and row.roles <= PATIENT:
            return "403|404|empty"
        return "403|404" if side == "foreign" and row.scope != NONE else "403"
    if side == "foreign" and row.scope != NONE:
        return row.admin_foreign if role is Role.ADMIN else "404"
    return "ok"


@pytest.fixture
def world(settings: Settings, db: sessionmaker[Session]) -> World:
    return build_world(settings, db)


def test_route_role_institution_matrix(world: World) -> None:
    """All rows in one test: the world (studies, alerts, logins) is built once."""
    failures: list[str] = []
    discovered: list[str] = []
    for row in ROUTES:
        if row.skip_reason:
            continue
        cases: list[tuple[Role | None, str, dict[str, str]]] = [
            (None, "own", {}),
            (None, "own", {"Authorization": "Bearer not-a-token"}),
        ]
        # Denied and foreign callers first, the allowed owners last: their requests may change
        # the object's state (claim, sign), never its institution or pool.
        order = sorted(Role, key=lambda r: (r in row.roles, r is Role.ADMIN))
        for side in ("foreign", "own"):
            for role in order:
                cases.append((role, side, {"Authorization": f"Bearer {world.tokens[role]}"}))
        for role, side, headers in cases:
            objects = world.own if side == "own" else world.foreign
            response = _send(world, row, objects, headers)
            got = response.status_code
            want = expected(row, role, side)
            who = f"{row.method} {row.path} as {role.value if role else 'anonymous'}/{side}"
            discovered.append(f"{who}: {got} (want {want})")
            if got >= 500:
                failures.append(f"{who}: {got} {response.text[:200]}")
            elif want == "ok":
                bad = (row.ok and got not in row.ok) or (not row.ok and got in (401, 403, 404))
                if got == 404 and row.own_404 and row.own_404 in response.text:
                    bad = False
                if bad:
                    failures.append(
                        f"{who}: {got}, expected {sorted(row.ok) or 'allowed'} "
                        f"{response.text[:200]}"
                    )
            elif got == 200 and "empty" in want.split("|") and _empty(response):
                pass
            elif str(got) not in want.split("|"):
                failures.append(f"{who}: {got}, expected {want} {response.text[:200]}")
            if role is None and want == "401":
                assert response.headers.get("www-authenticate") == "Bearer", who
    if os.environ.get("RDX_MATRIX_DISCOVER"):
        print("\n".join(discovered))
    assert not failures, f"{len(failures)} authorisation failures:\n" + "\n".join(failures)
