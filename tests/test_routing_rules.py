"""Routing rules (issue 4): each rule kind, validation errors with line and rule, the rules in
force (stored version > RDX_ROUTING_FILE > packaged default), the admin API and the recorded
decision history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx.api.app import create_app
from remote_dx.core.clock import utcnow
from remote_dx.core.models import (
    Institution,
    InstitutionLevel,
    Patient,
    Priority,
    RoutingDecision,
    RoutingDecisionKind,
    Study,
    StudyStatus,
    User,
    WorklistItem,
)
from remote_dx.core.settings import Settings, reset_settings
from remote_dx.routing.route import active_rules, clear_rules_cache, decide, route_study
from remote_dx.routing.rules import (
    DEFAULT_RULES,
    RuleSetError,
    StudyFacts,
    load_rules,
    parse_duration,
)
from tests.support import SAMPLE_STUDIES

COUNTY, CITY, PROVINCE, XIPING, DINGHE = "XXXRMYY", "NYSZXYY", "HNSRMYY", "XIPING", "DINGHE"
CODES = {COUNTY, CITY, PROVINCE, XIPING, DINGHE}


def shanghai(text: str) -> datetime:
    """A wall-clock time in Asia/Shanghai (UTC+8, no DST) as aware UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC) - timedelta(hours=8)


# 2026-11-23 is a Monday.
MONDAY_10 = shanghai("2026-11-23T10:00")


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_rules_cache()


@pytest.fixture
def inst() -> dict[str, Institution]:
    """The demo tree in memory: rule matching needs no database."""
    tree: dict[str, Institution] = {}
    for n, (code, level, parent) in enumerate(
        [
            (PROVINCE, InstitutionLevel.PROVINCE, None),
            (CITY, InstitutionLevel.CITY, PROVINCE),
            (COUNTY, InstitutionLevel.COUNTY, CITY),
            (XIPING, InstitutionLevel.TOWNSHIP, COUNTY),
            (DINGHE, InstitutionLevel.TOWNSHIP, COUNTY),
        ],
        start=1,
    ):
        tree[code] = Institution(
            id=n, code=code, name=code, level=level, parent=tree[parent] if parent else None
        )
    return tree


def route(
    inst: dict, rules_yaml: str, origin: str = XIPING, *, modalities=("DX",), at=MONDAY_10,
    priority: Priority | None = None, source: str = "header", **facts,
):  # fmt: skip
    rules = load_rules(rules_yaml, known_codes=CODES)
    origin_inst = inst[origin]
    return decide(
        origin_inst,
        modalities=list(modalities),
        received_at=at,
        priority=priority,
        priority_source=source,
        rules=rules,
        facts=StudyFacts(origin=origin_inst, **facts),
        resolve=inst.get,
    )


def one_rule(match: str, target: str = f"{{pool: {PROVINCE}}}", extra: str = "") -> str:
    return f"""
rules:
  - name: special
    match: {match}
    target: {target}
{extra}
  - name: fallback
    target: {{pool: lead_hospital}}
"""


def pool_of(decision) -> str:
    return decision.pool.code


# --- the packaged default -------------------------------------------------------------------------


def test_default_rules_send_a_township_study_to_its_county(inst: dict) -> None:
    township = decide(inst[XIPING], modalities=["DX"], received_at=MONDAY_10)
    assert (pool_of(township), township.rule) == (COUNTY, "lead-hospital/imaging/routine(default)")
    assert township.due_at - MONDAY_10 == timedelta(hours=24)
    county = decide(inst[COUNTY], modalities=["ECG"], received_at=MONDAY_10, priority=Priority.STAT)
    assert (pool_of(county), county.rule) == (COUNTY, "own-pool/ecg/stat(header)")
    assert county.due_at - MONDAY_10 == timedelta(minutes=10)
    assert DEFAULT_RULES.source == "default"


# --- each rule kind -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "hit", "miss"),
    [
        # origin by institution code, and by level
        (f"{{origin: [{XIPING}]}}", {"origin": XIPING}, {"origin": DINGHE}),
        ("{origin: [township]}", {"origin": DINGHE}, {"origin": COUNTY}),
        # community: the origin's lead hospital
        (f"{{community: [{COUNTY}]}}", {"origin": DINGHE}, {"origin": CITY}),
        ("{modality: [CT, MR]}", {"modalities": ("CT",)}, {"modalities": ("DX",)}),
        ("{body_part: [HEAD, chest]}", {"body_part": "CHEST"}, {"body_part": "KNEE"}),
        ("{description: 冠脉}", {"description": "冠脉CTA平扫+增强"}, {"description": "胸部正位"}),
        (
            '{description: {regex: "^头颅.*(CT|平扫)$"}}',
            {"description": "头颅CT平扫"},
            {"description": "胸部头颅CT"},
        ),
        ("{priority: [stat, urgent]}", {"priority": Priority.URGENT}, {"priority": None}),
        # age from birth and study dates (years completed), else DICOM PatientAge
        (
            "{age: {max: 14}}",
            {"birth_date": "20121124", "study_date": "20261123"},
            {"birth_date": "20121123", "study_date": "20261123"},
        ),
        ("{age: {min: 65}}", {"patient_age": "070Y"}, {"patient_age": "064Y"}),
        ("{age: {max: 1}}", {"patient_age": "006M"}, {}),
        # time of day in Asia/Shanghai, wrapping past midnight
        (
            '{time_of_day: ["22:00-08:00"]}',
            {"at": shanghai("2026-11-23T23:30")},
            {"at": shanghai("2026-11-23T08:00")},
        ),
        (
            '{time_of_day: ["12:00-13:30", "18:00-19:00"]}',
            {"at": shanghai("2026-11-23T13:29")},
            {"at": shanghai("2026-11-23T13:30")},
        ),
        # weekday in Asia/Shanghai: 2026-11-29 00:30 there is Sunday (still Saturday in UTC)
        (
            "{weekday: [sun]}",
            {"at": shanghai("2026-11-29T00:30")},
            {"at": shanghai("2026-11-28T23:30")},
        ),
    ],
)
def test_each_match_kind(inst: dict, match: str, hit: dict, miss: dict) -> None:
    def run(case: dict):
        case = dict(case)
        origin = case.pop("origin", XIPING)
        kwargs = {k: case.pop(k) for k in ("modalities", "at", "priority") if k in case}
        return route(inst, one_rule(match), origin, **kwargs, **case)

    matched, missed = run(hit), run(miss)
    assert (pool_of(matched), matched.rule_name) == (PROVINCE, "special")
    assert missed.rule_name == "fallback"
    assert pool_of(missed) == inst[miss.get("origin", XIPING)].lead_hospital().code


def test_all_criteria_of_a_rule_must_hold(inst: dict) -> None:
    rules = one_rule("{modality: [CT], description: 冠脉}")
    both = route(inst, rules, modalities=("CT",), description="冠脉CTA")
    only_modality = route(inst, rules, modalities=("CT",), description="头颅平扫")
    assert (both.rule_name, only_modality.rule_name) == ("special", "fallback")


def test_first_match_wins(inst: dict) -> None:
    rules = f"""
rules:
  - name: first
    match: {{modality: [CT]}}
    target: {{pool: {CITY}}}
  - name: second
    match: {{modality: [CT]}}
    target: {{pool: {PROVINCE}}}
"""
    decision = route(inst, rules, modalities=("CT",))
    assert (pool_of(decision), decision.rule) == (CITY, "first/imaging/routine(default)")


def test_on_call_calendar_chooses_the_pool_by_date(inst: dict) -> None:
    rules = f"""
calendars:
  duty:
    2026-10-01..2026-10-03: {CITY}
    2026-10-04: {PROVINCE}
rules:
  - name: duty
    match: {{on_call: duty}}
    target: {{pool: on_call}}
  - name: fallback
    target: {{pool: lead_hospital}}
"""
    first = route(inst, rules, at=shanghai("2026-10-01T00:10"))
    fourth = route(inst, rules, at=shanghai("2026-10-04T12:00"))
    # 2026-10-04 23:00 UTC is already 10-05 in Shanghai: off the calendar.
    after = route(inst, rules, at=shanghai("2026-10-05T07:00"))
    assert (pool_of(first), first.rule_name) == (CITY, "duty")
    assert pool_of(fourth) == PROVINCE
    assert (pool_of(after), after.rule_name) == (COUNTY, "fallback")


def test_parent_target_is_above_the_lead_hospital(inst: dict) -> None:
    rules = one_rule("{modality: [MR]}", target="{pool: parent}")
    assert pool_of(route(inst, rules, modalities=("MR",))) == CITY
    # At the top of the tree "parent" resolves to nothing: the next rule is tried.
    top = route(inst, rules, PROVINCE, modalities=("MR",))
    assert (pool_of(top), top.rule_name) == (PROVINCE, "fallback")


def test_section_and_second_signature(inst: dict) -> None:
    rules = one_rule(
        "{modality: [CT], age: {max: 14}}",
        target=f"{{pool: {PROVINCE}, section: paediatric}}",
        extra="    second_signature: true",
    )
    child = route(inst, rules, modalities=("CT",), patient_age="008Y")
    adult = route(inst, rules, modalities=("CT",), patient_age="040Y")
    assert (child.section, child.second_signature) == ("paediatric", True)
    assert (adult.section, adult.second_signature) == (None, False)


def test_priority_override_raise_and_sla(inst: dict) -> None:
    rules = """
sla:
  imaging: {routine: 48h}
  CT: {stat: 20m}
rules:
  - name: night-ecg
    match: {modality: [ECG]}
    target: {pool: lead_hospital}
    priority: {raise_to: urgent}
  - name: trauma
    match: {description: 外伤}
    target: {pool: lead_hospital}
    priority: stat
  - name: slow-mr
    match: {modality: [MR]}
    target: {pool: lead_hospital}
    sla: {routine: 3d}
  - name: fallback
    target: {pool: lead_hospital}
"""
    raised = route(inst, rules, modalities=("ECG",))
    assert (raised.priority, raised.rule) == (Priority.URGENT, "night-ecg/ecg/urgent(rule)")
    assert raised.due_at - MONDAY_10 == timedelta(minutes=30)
    # Raising never lowers: a STAT ECG stays STAT.
    stat = route(inst, rules, modalities=("ECG",), priority=Priority.STAT)
    assert (stat.priority, stat.rule) == (Priority.STAT, "night-ecg/ecg/stat(header)")
    trauma = route(inst, rules, modalities=("CT",), description="头颅外伤")
    assert trauma.priority is Priority.STAT
    assert trauma.due_at - MONDAY_10 == timedelta(minutes=20)  # the CT entry beats "imaging"
    assert route(inst, rules, modalities=("MR",)).due_at - MONDAY_10 == timedelta(days=3)
    assert route(inst, rules, modalities=("DX",)).due_at - MONDAY_10 == timedelta(hours=48)


def test_a_rule_never_makes_a_critical_ecg_less_urgent(inst: dict) -> None:
    rules = one_rule(
        "{modality: [ECG]}", target="{pool: lead_hospital}", extra="    priority: routine"
    )
    critical = route(
        inst, rules, modalities=("ECG",), priority=Priority.STAT, source="ecg-critical"
    )
    assert (critical.priority, critical.rule) == (Priority.STAT, "special/ecg/stat(ecg-critical)")
    header = route(inst, rules, modalities=("ECG",), priority=Priority.STAT)
    assert header.priority is Priority.ROUTINE  # a header's STAT is the rule author's to change


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("10min") == timedelta(minutes=10)
    assert parse_duration("0m") is None and parse_duration("soon") is None


# --- validation -----------------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(RuleSetError) as caught:
        load_rules(text, known_codes=CODES)
    return [str(p) for p in caught.value.problems]


def test_validation_reports_every_problem_with_line_and_rule() -> None:
    text = """\
rules:
  - name: good
    target: {pool: lead_hospital}
  - name: bad-pool
    target:
      pool: NOWHERE
  - name: bad-regex
    match:
      description: {regex: "冠脉(("}
    target: {pool: HNSRMYY}
  - name: typo
    match:
      modalty: [CT]
    target: {pool: HNSRMYY}
  - name: bad-window
    match:
      time_of_day: ["25:00-08:00"]
    target: {pool: HNSRMYY}
"""
    found = problems_of(text)
    assert len(found) == 4, found
    assert found[0] == "line 6, rule 'bad-pool': target.pool: unknown institution code 'NOWHERE'"
    assert found[1].startswith("line 9, rule 'bad-regex': match.description.regex: bad regular")
    assert found[2].startswith("line 13, rule 'typo': match: unknown key 'modalty' (allowed: ")
    assert "modality" in found[2]
    assert found[3].startswith(
        "line 17, rule 'bad-window': match.time_of_day: '25:00-08:00' is not a time window"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [", "line 1: not valid YAML"),
        ("- just a list", "line 1: expected a mapping with a 'rules' list"),
        ("rules:\n  - target: {pool: lead_hospital}\n", "line 2: rule #1 needs a 'name'"),
        ("rules:\n  - name: x\n", "line 2, rule 'x': missing 'target'"),
        (
            "rules:\n  - {name: x, target: lead_hospital}\n  - {name: x, target: lead_hospital}\n",
            "line 3, rule 'x': duplicate rule name",
        ),
        (
            "rules:\n  - name: x\n    match: {priority: [asap]}\n    target: lead_hospital\n",
            "line 3, rule 'x': match.priority: unknown priority 'asap'",
        ),
        (
            "rules:\n  - name: x\n    match: {weekday: [funday]}\n    target: lead_hospital\n",
            "line 3, rule 'x': match.weekday: unknown weekday 'funday'",
        ),
        (
            "rules:\n  - name: x\n    match: {age: {min: 20, max: 10}}\n"
            "    target: lead_hospital\n",
            "line 3, rule 'x': match.age: age min must be below max",
        ),
        (
            "rules:\n  - name: x\n    match: {on_call: nights}\n    target: {pool: on_call}\n",
            "line 3, rule 'x': match.on_call: unknown calendar 'nights'",
        ),
        ("sla:\n  ecg: {stat: fast}\n", "line 2: sla.ecg.stat: 'fast' is not a duration"),
        ("calendars:\n  d:\n    2026-02-30: HNSRMYY\n", "line 3: calendars.d: '2026-02-30'"),
        ("rulez: []\n", "line 1: unknown key 'rulez'"),
        (
            "rules:\n  - name: x\n    target: lead_hospital\n    second_signature: yes please\n",
            "line 4, rule 'x': second_signature: second_signature must be true or false",
        ),
    ],
)
def test_validation_messages(text: str, expected: str) -> None:
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_demo_rules_file_is_valid_for_the_demo_network() -> None:
    rules = load_rules(
        (SAMPLE_STUDIES / "routing_rules.yaml").read_text(encoding="utf-8"), known_codes=CODES
    )
    assert rules.rules[0].name == "own-pool" and rules.rules[-1].name == "lead-hospital"


# --- the rules in force, and recorded decisions ---------------------------------------------------


def make_study(session: Session, origin: Institution, modality: str = "DX", **fields) -> Study:
    patient = Patient(issuer=origin.code, patient_id=uuid.uuid4().hex[:16], name="王^小东")
    study = Study(
        study_uid=f"2.25.{uuid.uuid4().int}",
        patient=patient,
        origin=origin,
        modalities=modality,
        status=StudyStatus.PROCESSED,
        received_at=utcnow(),
        **fields,
    )
    session.add(study)
    session.flush()
    return study


def test_routing_file_setting_and_decisions_recorded(
    db: sessionmaker[Session], tmp_path: Path, settings: Settings
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        f"rules:\n  - name: ct-to-province\n    match: {{modality: [CT]}}\n"
        f"    target: {{pool: {PROVINCE}, section: neuro}}\n    second_signature: true\n",
        encoding="utf-8",
    )
    with db() as session, session.begin():
        origin = session.scalar(select(Institution).where(Institution.code == XIPING))
        assert active_rules(session, None) is DEFAULT_RULES
        rules = active_rules(session, rules_file)
        assert rules.source == f"file:{rules_file}"
        ct = make_study(session, origin, "CT", description="头颅平扫")
        item = route_study(session, ct, modalities=["CT"], rules=rules)
        # Re-routing the same study with the same outcome records nothing new.
        route_study(session, ct, modalities=["CT"], rules=rules)
        dx = make_study(session, origin, "DX")
        route_study(session, dx, modalities=["DX"], rules=rules)
        session.flush()
        assert (item.pool.code, item.section, item.second_signature_required) == (
            PROVINCE,
            "neuro",
            True,
        )
        assert item.routing_rule == "ct-to-province/imaging/routine(default)"
        ct_decisions = session.scalars(
            select(RoutingDecision).where(RoutingDecision.study_pk == ct.id)
        ).all()
        assert [(d.kind, d.rule, d.section) for d in ct_decisions] == [
            (RoutingDecisionKind.INITIAL, item.routing_rule, "neuro")
        ]
        assert ct_decisions[0].detail["rules"] == f"file:{rules_file}"
        dx_item = session.scalar(select(WorklistItem).where(WorklistItem.study_pk == dx.id))
        # No rule matched the DX: the built-in default (its lead hospital) read it.
        assert (dx_item.pool.code, dx_item.routing_rule) == (
            COUNTY,
            "default/imaging/routine(default)",
        )
        # A priority change on re-processing is recorded as such.
        route_study(session, dx, modalities=["DX"], priority=Priority.STAT, rules=rules)
        session.flush()
        kinds = session.scalars(
            select(RoutingDecision.kind).where(RoutingDecision.study_pk == dx.id)
        ).all()
        assert kinds == [RoutingDecisionKind.INITIAL, RoutingDecisionKind.PRIORITY]


def test_invalid_routing_file_falls_back_to_the_default(
    db: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - name: x\n    target: {pool: NOWHERE}\n", encoding="utf-8")
    with db() as session:
        assert active_rules(session, rules_file) is DEFAULT_RULES
    assert "unknown institution code 'NOWHERE'" in caplog.text


# --- admin API ------------------------------------------------------------------------------------


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


NEW_RULES = f"""\
rules:
  - name: all-to-city   # 全部送市级
    target: {{pool: {CITY}}}
"""


def test_admin_reads_and_replaces_the_rules(client: TestClient, db: sessionmaker[Session]) -> None:
    admin = auth(client, "admin")
    current = client.get("/api/v1/routing/rules", headers=admin)
    assert current.status_code == 200, current.text
    assert current.json()["source"] == "default"
    assert current.json()["rules"] == ["own-pool", "lead-hospital"]

    for user in ("county_reader", "tech_xiping"):
        headers = auth(client, user)
        assert client.get("/api/v1/routing/rules", headers=headers).status_code == 403
        denied = client.put(
            "/api/v1/routing/rules",
            content=NEW_RULES,
            headers={**headers, "Content-Type": "application/yaml"},
        )
        assert denied.status_code == 403

    bad = client.put(
        "/api/v1/routing/rules",
        content=NEW_RULES.replace(CITY, "NOWHERE") + "    match: {time_of_day: [noon]}\n",
        headers={**admin, "Content-Type": "application/yaml"},
    )
    assert bad.status_code == 422
    errors = bad.json()["errors"]
    assert {(e["line"], e["rule"]) for e in errors} == {(3, "all-to-city"), (4, "all-to-city")}
    assert "unknown institution code 'NOWHERE'" in bad.json()["detail"]

    stored = client.put(
        "/api/v1/routing/rules",
        params={"comment": "节假日"},
        content=NEW_RULES.encode(),
        headers={**admin, "Content-Type": "application/yaml"},
    )
    assert stored.status_code == 200, stored.text
    version = stored.json()["version"]
    assert stored.json()["source"] == f"db:{version}"
    now_in_force = client.get("/api/v1/routing/rules", headers=admin).json()
    assert (now_in_force["version"], now_in_force["yaml"]) == (version, NEW_RULES)
    assert (now_in_force["created_by"], now_in_force["comment"]) == ("admin", "节假日")

    as_json = client.put(
        "/api/v1/routing/rules",
        json={"yaml": NEW_RULES.replace(CITY, PROVINCE), "comment": "json"},
        headers=admin,
    )
    assert as_json.status_code == 200 and as_json.json()["version"] > version
    versions = client.get("/api/v1/routing/rules/versions", headers=admin).json()
    assert [v["comment"] for v in versions] == ["json", "节假日"]

    # The newest stored version routes new studies, and the history shows the decision.
    with db() as session, session.begin():
        origin = session.scalar(select(Institution).where(Institution.code == DINGHE))
        study = make_study(session, origin, "DX")
        item = route_study(session, study, modalities=["DX"])
        session.flush()
        uid, pool = study.study_uid, item.pool.code
    assert pool == PROVINCE
    history = client.get(f"/api/v1/studies/{uid}/routing", headers=admin)
    assert history.status_code == 200, history.text
    [decision] = history.json()
    assert decision["kind"] == "initial"
    assert decision["rule"] == "all-to-city/imaging/routine(default)"
    assert decision["pool"]["code"] == PROVINCE and decision["from_pool"] is None
    assert decision["detail"]["rules_version"] == as_json.json()["version"]
    # Same scoping as the study: the province's reader sees it, the county's does not, nor does
    # the technician of another township.
    for user, expected in (("province_reader", 200), ("county_reader", 404), ("tech_xiping", 404)):
        seen = client.get(f"/api/v1/studies/{uid}/routing", headers=auth(client, user))
        assert seen.status_code == expected, (user, seen.text)


def test_demo_rules_route_the_demo_network(db: sessionmaker[Session]) -> None:
    """The demo's subspecialty pools have readers: the network file gives them the sections."""
    rules_file = SAMPLE_STUDIES / "routing_rules.yaml"
    with db() as session, session.begin():
        rules = active_rules(session, rules_file)
        assert rules.source == f"file:{rules_file}"
        origin = session.scalar(select(Institution).where(Institution.code == XIPING))
        child = make_study(session, origin, "CT", study_date="20261123")
        child.patient.birth_date = "20200101"
        item = route_study(session, child, modalities=["CT"], rules=rules)
        session.flush()
        assert (item.pool.code, item.section, item.second_signature_required) == (
            PROVINCE,
            "paediatric",
            True,
        )
        readers = session.scalars(select(User).where(User.institution_id == item.pool_id)).all()
        assert any(item.section in (r.sections or []) for r in readers)


def test_pipeline_routes_by_the_rules_file(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real DX through filing and processing: the rules see the decoded Chinese description,
    the body part and the header's Patient's Age (no birth date sent)."""
    from pydicom.uid import generate_uid

    from remote_dx import pipeline
    from remote_dx.storage.factory import get_store
    from tests.test_pipeline import file, make_dx, part10

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        f"""rules:
  - name: child-chest
    match:
      age: {{max: 14}}
      body_part: [CHEST]
      description: 胸部
    target: {{pool: {PROVINCE}, section: paediatric}}
    second_signature: true
  - name: township
    target: lead_hospital
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("RDX_ROUTING_FILE", str(rules_file))
    reset_settings()
    uids = {}
    for age in ("008Y", "045Y"):
        uid = uids[age] = generate_uid()
        ds = make_dx(uid, size=16, patient_id=f"XP-{age}")
        del ds.PatientBirthDate
        ds.PatientAge = age
        ds.SpecificCharacterSet = "GB18030"
        ds.StudyDescription = "胸部正位"
        file(settings, db, part10(ds))
        with db() as session, session.begin():
            study = session.scalar(select(Study).where(Study.study_uid == uid))
            study.status = StudyStatus.QUEUED
        outcome = pipeline.process_study(uid, sessions=db, store=get_store(settings))
        assert outcome.result == "processed", outcome
    with db() as session:
        routed = {
            age: session.execute(
                select(Institution.code, WorklistItem.section, WorklistItem.routing_rule)
                .join(WorklistItem, WorklistItem.pool_id == Institution.id)
                .join(Study, Study.id == WorklistItem.study_pk)
                .where(Study.study_uid == uid)
            ).one()
            for age, uid in uids.items()
        }
    assert tuple(routed["008Y"]) == (
        PROVINCE,
        "paediatric",
        "child-chest/imaging/routine(default)",
    )
    assert tuple(routed["045Y"]) == (COUNTY, None, "township/imaging/routine(default)")
