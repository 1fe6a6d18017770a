"""Simulated traffic of a county network, driven through the hub's real code.

Every exam goes the way a real one goes, only faster than the wall clock: the township's DR or
ECG cart hands its Part 10 object to :func:`remote_dx.ingest.instance.file_instance` (what the
C-STORE receiver does), the quiet-period sweep queues it, :func:`remote_dx.pipeline.process_study`
(what the worker runs) analyses, previews and routes it, then the pool's readers claim
(:func:`remote_dx.worklist.lease.claim`), sign (:func:`remote_dx.reporting.signing.sign`), ask
for consultations (:func:`remote_dx.routing.escalation.request_consultation`); the periodic
overdue escalation runs every simulated quarter hour; townships acknowledge critical values
(:func:`remote_dx.worklist.alerts.acknowledge`) and look up and re-use recognised results
(:func:`remote_dx.reporting.recognition.lookup`, :func:`remote_dx.stats.recording.record_use`).

The movable clock (:mod:`remote_dx.core.clock`) is set to each event's time before the event
runs, so every row carries the simulated time. Events run in time order from one heap.

Volumes and rates default to a county like 西峡县 (Xixia, Henan): about 16,000 ECGs and 6,300
imaging studies a year, weekdays busier than weekends, a morning and an afternoon clinic peak
(:data:`HOUR_WEIGHTS`, Asia/Shanghai), ~1.5 % critical ECGs, ~2 % technically unsatisfactory
ECGs re-acquired, ~3 % consultations, and readers slower at night (so some routine ECGs go past
their 2 h SLA and escalate automatically).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from remote_dx import pipeline
from remote_dx.core import clock
from remote_dx.core.clock import SHANGHAI
from remote_dx.core.errors import ServiceError
from remote_dx.core.models import (
    CriticalAlert,
    Device,
    Institution,
    Study,
    User,
    WorklistItem,
    WorklistStatus,
)
from remote_dx.core.network import apply_network
from remote_dx.core.settings import Settings
from remote_dx.ecg.model import PatientInfo
from remote_dx.ingest.instance import Sender, file_instance
from remote_dx.ingest.study import sweep_ready_studies
from remote_dx.reporting.keys import load_signing_key
from remote_dx.reporting.recognition import lookup
from remote_dx.reporting.schemas import ReportContent
from remote_dx.reporting.signing import sign
from remote_dx.routing.escalation import escalate_overdue, request_consultation
from remote_dx.simulate.exams import dx_part10, ecg_part10
from remote_dx.simulate.network import CountyNetwork, county_network
from remote_dx.stats.recording import record_use
from remote_dx.storage.base import ObjectStore
from remote_dx.worklist.alerts import acknowledge
from remote_dx.worklist.lease import claim

log = logging.getLogger(__name__)

# Relative exam counts per hour of the day, Asia/Shanghai (0–23): township clinics open ~8:00,
# a morning peak, lunch, an afternoon peak, emergencies through the night.
HOUR_WEIGHTS = (
    0.6, 0.4, 0.3, 0.3, 0.3, 0.5, 1.0, 2.5, 7.0, 10.0, 10.0, 8.0,
    4.0, 3.0, 6.5, 7.5, 7.0, 5.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8,
)  # fmt: skip
# Monday … Sunday (market days and weekend clinics keep Saturday and Sunday open, but lighter).
WEEKDAY_WEIGHTS = (1.15, 1.1, 1.1, 1.05, 1.05, 0.8, 0.75)


@dataclass(frozen=True)
class Rates:
    ecg_per_year: float = 16_000
    imaging_per_year: float = 6_300
    ecg_critical: float = 0.015
    ecg_unsatisfactory: float = 0.02
    positive_ecg: float = 0.35
    positive_imaging: float = 0.3
    consultation: float = 0.03
    unacknowledged: float = 0.05
    recognition_lookup: float = 0.02


@dataclass
class Case:
    kind: str  # ecg | imaging
    township: int
    at: datetime
    patient: PatientInfo
    critical: bool = False
    unsatisfactory: bool = False
    positive: bool = False
    consult: bool = False
    reacquired: bool = False
    study_uid: str = field(default_factory=generate_uid)


@dataclass
class SimulationReport:
    county: str
    code: str
    start: date
    days: int
    studies: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # wall time of the whole run
    cpu_seconds: float = 0.0  # this process's CPU time (all its threads) for the run
    stage_seconds: Counter[str] = field(default_factory=Counter)  # CPU time by stage

    @property
    def ms_per_study(self) -> float:
        return 1000.0 * self.seconds / self.studies if self.studies else 0.0

    @property
    def cpu_ms_per_study(self) -> float:
        return 1000.0 * self.cpu_seconds / self.studies if self.studies else 0.0

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        stages = ", ".join(
            f"{k} {1000.0 * v / max(self.studies, 1):.1f}"
            for k, v in sorted(self.stage_seconds.items())
        )
        return (
            f"{self.county} ({self.code}): {self.studies} studies over {self.days} days from "
            f"{self.start.isoformat()} in {self.seconds:.1f} s = {self.ms_per_study:.1f} ms per "
            f"study (CPU {self.cpu_ms_per_study:.1f} ms per study; by stage {stages} ms); {parts}"
        )


def _set_clock(at: datetime) -> None:
    clock.reset()
    clock.advance(at - datetime.now(UTC))


class Simulator:
    """One county's traffic, ``days`` days from ``start`` (Asia/Shanghai dates)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        *,
        county: str,
        code: str | None = None,
        start: date,
        days: int,
        seed: int = 1,
        townships: int = 12,
        rates: Rates | None = None,
        scale: float = 1.0,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.rng = np.random.default_rng(seed)
        self.rates = rates or Rates()
        self.scale = scale
        weights = list(self.rng.lognormal(0.0, 0.45, townships))
        self.network: CountyNetwork = county_network(
            county, code, townships=townships, weights=weights
        )
        self.start, self.days = start, days
        self.report = SimulationReport(county, self.network.code, start, days)
        self.key = load_signing_key(settings)
        self._events: list[tuple[datetime, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._patients: dict[int, list[PatientInfo]] = defaultdict(list)
        self._signed: list[tuple[datetime, int, str, str]] = []  # at, township, patient, exam
        self._open = 0  # routed and not yet signed: the overdue sweep has nothing to do at 0

    # --- set-up ---------------------------------------------------------------------------

    def _load_network(self) -> None:
        with self.sessions() as session:
            apply_network(session, self.network.data, with_passwords=True)
            session.commit()
            self.users: dict[str, User] = {
                u.username: u for u in session.scalars(select(User)).all()
            }
            for user in self.users.values():
                session.expunge(user)
            self.senders: dict[str, Sender] = {}
            for device in session.scalars(select(Device)).all():
                _ = device.institution
                self.senders[device.ae_title] = Sender.of(device)
            insts = session.scalars(select(Institution)).all()
            self.readers_of: dict[int, list[str]] = defaultdict(list)
            by_code = {i.code: i.id for i in insts}
            for name in (
                *self.network.county_readers,
                *self.network.city_readers,
                *self.network.province_readers,
            ):
                self.readers_of[self.users[name].institution_id].append(name)
            self.county_id = by_code[self.network.code]

    # --- the plan ---------------------------------------------------------------------------

    def _patient(self, township: int) -> PatientInfo:
        pool = self._patients[township]
        # Returning patients are common in a township: a third of exams are of someone seen before.
        if pool and self.rng.random() < 0.33:
            return pool[int(self.rng.integers(len(pool)))]
        number = len(pool) + 1
        sex = "M" if self.rng.random() < 0.5 else "F"
        year, month = int(self.rng.integers(1935, 2015)), int(self.rng.integers(1, 13))
        patient = PatientInfo(
            patient_id=f"{self.network.townships[township].code}-{number:06d}",
            name=f"SIM^{township:02d}{number:05d}",
            sex=sex,
            birth_date=f"{year}{month:02d}{int(self.rng.integers(1, 28)):02d}",
        )
        pool.append(patient)
        return patient

    def _plan(self) -> list[Case]:
        r = self.rates
        hours = np.array(HOUR_WEIGHTS) / sum(HOUR_WEIGHTS)
        town_w = np.array([t.weight for t in self.network.townships])
        town_w = town_w / town_w.sum()
        mean_week = sum(WEEKDAY_WEIGHTS) / 7
        cases: list[Case] = []
        for offset in range(self.days):
            day = self.start + timedelta(days=offset)
            factor = WEEKDAY_WEIGHTS[day.weekday()] / mean_week * self.scale
            for kind, per_year in (("ecg", r.ecg_per_year), ("imaging", r.imaging_per_year)):
                n = int(self.rng.poisson(per_year / 365.0 * factor))
                for _ in range(n):
                    hour = int(self.rng.choice(24, p=hours))
                    local = datetime(day.year, day.month, day.day, hour, tzinfo=SHANGHAI)
                    at = (local + timedelta(seconds=float(self.rng.uniform(0, 3600)))).astimezone(
                        UTC
                    )
                    town = int(self.rng.choice(len(town_w), p=town_w))
                    case = Case(kind, town, at, self._patient(town))
                    u = self.rng.random()
                    if kind == "ecg":
                        case.critical = u < r.ecg_critical
                        case.unsatisfactory = (
                            r.ecg_critical <= u < r.ecg_critical + r.ecg_unsatisfactory
                        )
                        case.positive = case.critical or self.rng.random() < r.positive_ecg
                    else:
                        case.positive = u < r.positive_imaging
                    case.consult = self.rng.random() < r.consultation
                    cases.append(case)
        cases.sort(key=lambda c: c.at)
        return cases

    # --- events ---------------------------------------------------------------------------

    def _schedule(self, at: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), action))

    def _timed(self, stage: str, action: Callable[[], Any]) -> Any:
        started = time.process_time()
        try:
            return action()
        finally:
            self.report.stage_seconds[stage] += time.process_time() - started

    def _arrive(self, case: Case) -> None:
        town = self.network.townships[case.township]
        if case.kind == "ecg":
            hr = (
                float(self.rng.uniform(36, 39)) if case.critical else float(self.rng.normal(75, 12))
            )
            data = ecg_part10(
                self.rng, study_uid=case.study_uid, patient=case.patient, acquired_at=case.at,
                hr=min(max(hr, 30.0), 140.0), leads_off=4 if case.unsatisfactory else 0,
                institution=town.name, station=town.ecg_ae,
            )  # fmt: skip
            sender = self.senders[town.ecg_ae]
        else:
            data = dx_part10(
                self.rng, study_uid=case.study_uid, patient=case.patient, acquired_at=case.at,
                institution=town.name,
            )  # fmt: skip
            sender = self.senders[town.dr_ae]
        self._timed(
            "ingest",
            lambda: file_instance(data, store=self.store, sessions=self.sessions, sender=sender),
        )
        self.report.studies += 1
        self.report.counts[case.kind] += 1
        ready = case.at + timedelta(seconds=self.settings.quiet_seconds + 5)
        self._schedule(ready, lambda: self._process(case, ready))

    def _process(self, case: Case, at: datetime) -> None:
        self._timed(
            "process",
            lambda: (
                sweep_ready_studies(self.sessions, quiet_seconds=self.settings.quiet_seconds),
                pipeline.process_study(
                    case.study_uid, sessions=self.sessions, store=self.store, now=at
                ),
            ),
        )
        with self.sessions() as session:
            row = session.execute(
                select(Study.id, WorklistItem.priority)
                .join(WorklistItem, WorklistItem.study_pk == Study.id)
                .where(Study.study_uid == case.study_uid)
            ).first()
            alert_id = session.scalar(
                select(CriticalAlert.id)
                .join(Study, Study.id == CriticalAlert.study_pk)
                .where(Study.study_uid == case.study_uid)
            )
        if row is None:
            self.report.counts["not routed"] += 1
            return
        if alert_id is not None:
            self.report.counts["critical alerts"] += 1
            if self.rng.random() >= self.rates.unacknowledged:
                ack_at = at + timedelta(minutes=float(self.rng.gamma(2.0, 4.0)))
                self._schedule(ack_at, lambda: self._acknowledge(case, alert_id, ack_at))
        if case.unsatisfactory and not case.reacquired:
            again = Case(
                "ecg", case.township, at + timedelta(minutes=float(self.rng.uniform(8, 30))),
                case.patient, positive=case.positive, reacquired=True,
            )  # fmt: skip
            self.report.counts["re-acquired"] += 1
            self._schedule(again.at, lambda: self._arrive(again))
        self._open += 1
        stat = str(row[1]) == "stat"
        self._schedule(self._claim_time(at, case, stat), lambda: self._claim(case))

    def _claim_time(self, at: datetime, case: Case, stat: bool) -> datetime:
        local_hour = at.astimezone(SHANGHAI).hour
        night = local_hour < 8 or local_hour >= 18
        if stat:
            minutes = self.rng.gamma(2.0, 2.5)
        elif case.kind == "ecg":
            minutes = self.rng.gamma(2.0, 25.0 if night else 10.0)
        else:
            minutes = self.rng.gamma(2.0, 240.0 if night else 60.0)
        return at + timedelta(minutes=float(minutes))

    def _current(self, session: Session, case: Case) -> tuple[int, WorklistStatus] | None:
        row = session.execute(
            select(WorklistItem.pool_id, WorklistItem.status)
            .join(Study, Study.id == WorklistItem.study_pk)
            .where(Study.study_uid == case.study_uid)
        ).first()
        return None if row is None else (row[0], WorklistStatus(row[1]))

    def _claim(self, case: Case, *, consulted: bool = False) -> None:
        at = clock.utcnow()
        with self.sessions() as session:
            state = self._current(session, case)
            if state is None or state[1] is WorklistStatus.SIGNED:
                return
            pool, _status = state
            names = self.readers_of.get(pool) or []
            if not names:
                self.report.counts["no reader in pool"] += 1
                return
            reader = self.users[names[int(self.rng.integers(len(names)))]]
            try:
                self._timed(
                    "read",
                    lambda: claim(
                        session, reader, case.study_uid,
                        lease=timedelta(minutes=self.settings.lease_minutes), now=at,
                    ),
                )  # fmt: skip
            except ServiceError:
                self.report.counts["claim refused"] += 1
                return
        if case.consult and not consulted and pool == self.county_id:
            ask_at = at + timedelta(minutes=float(self.rng.uniform(2, 8)))
            self._schedule(ask_at, lambda: self._consult(case, reader))
            return
        minutes = self.rng.gamma(3.0, 1.5 if case.kind == "ecg" else 3.0)
        sign_at = at + timedelta(minutes=float(minutes))
        self._schedule(sign_at, lambda: self._sign(case, reader))

    def _consult(self, case: Case, reader: User) -> None:
        with self.sessions() as session:
            try:
                self._timed(
                    "read",
                    lambda: request_consultation(
                        session, reader, case.study_uid,
                        question="请上级专家会诊：诊断不确定。", opinion="倾向于正常范围。",
                        now=clock.utcnow(),
                    ),
                )  # fmt: skip
            except ServiceError:
                self.report.counts["consultation refused"] += 1
                return
        self.report.counts["consultations"] += 1
        answer_at = clock.utcnow() + timedelta(minutes=float(self.rng.gamma(2.0, 20.0)))
        self._schedule(answer_at, lambda: self._claim(case, consulted=True))

    def _content(self, case: Case) -> ReportContent:
        if case.kind == "ecg":
            if case.critical:
                return ReportContent(
                    findings="窦性心动过缓，心室率 35 次/分。",
                    impression="严重窦性心动过缓（危急值）", critical=True, positive=True,
                )  # fmt: skip
            if case.unsatisfactory:
                return ReportContent(
                    findings="胸导联脱落，图形不能诊断。", impression="技术不合格，已通知重新采集",
                    positive=False,
                )  # fmt: skip
            if case.positive:
                return ReportContent(
                    findings="窦性心律，ST-T 改变。",
                    impression="ST-T 改变，请结合临床",
                    positive=True,
                )
            return ReportContent(findings="窦性心律。", impression="正常心电图", positive=False)
        if case.positive:
            return ReportContent(
                findings="右下肺野见斑片状模糊影。",
                impression="右下肺炎症，建议复查",
                positive=True,
            )
        return ReportContent(
            findings="胸廓对称，两肺纹理清晰，心影不大。",
            impression="心肺未见明显异常",
            positive=False,
        )

    def _sign(self, case: Case, reader: User) -> None:
        at = clock.utcnow()
        with self.sessions() as session:
            try:
                self._timed(
                    "read",
                    lambda: sign(
                        session, reader, case.study_uid, key=self.key,
                        content=self._content(case), now=at,
                    ),
                )  # fmt: skip
                session.commit()
            except ServiceError:
                session.rollback()
                self.report.counts["sign refused"] += 1
                # Lost the lease (escalated away meanwhile): whoever holds the pool now reads it.
                self._schedule(at + timedelta(minutes=5), lambda: self._claim(case, consulted=True))
                return
        self.report.counts["signed"] += 1
        self._open -= 1
        self._signed.append(
            (at, case.township, str(case.patient.patient_id), "ecg" if case.kind == "ecg" else "dx")
        )

    def _acknowledge(self, case: Case, alert_id: int, at: datetime) -> None:
        tech = self.users[self.network.townships[case.township].technician]
        with self.sessions() as session:
            try:
                acknowledge(session, tech, alert_id, name=f"{tech.full_name}（值班医生）", now=at)
                self.report.counts["alerts acknowledged"] += 1
            except ServiceError:
                session.rollback()

    def _escalate(self, at: datetime) -> None:
        if self._open <= 0:
            return
        moved = self._timed("escalate", lambda: escalate_overdue(self.sessions, now=at))
        self.report.counts["auto escalations"] += len(moved)

    def _recognise(self, at: datetime) -> None:
        """Another township of the county sees a patient with a recent signed result and asks the
        registry; a recognisable result is re-used (the exam is not repeated)."""
        recent = [s for s in self._signed[-400:] if s[0] > at - timedelta(days=7)]
        if not recent:
            return
        _signed_at, town, patient_id, exam = recent[int(self.rng.integers(len(recent)))]
        others = [i for i in range(len(self.network.townships)) if i != town] or [town]
        visitor = self.network.townships[others[int(self.rng.integers(len(others)))]]
        tech = self.users[visitor.technician]
        with self.sessions() as session:
            answer = lookup(session, patient_id=patient_id, key=self.key, exam=exam, now=at)
            self.report.counts["recognition lookups"] += 1
            if answer.results:
                _use, created = record_use(session, tech, answer.results[0].verify_code, now=at)
                self.report.counts["exams avoided"] += int(created)

    # --- run --------------------------------------------------------------------------------

    def run(self, progress: Callable[[str], None] | None = None) -> SimulationReport:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            self._load_network()
            cases = self._plan()
            for case in cases:
                self._schedule(case.at, lambda c=case: self._arrive(c))  # type: ignore[misc]
                if self.rng.random() < self.rates.recognition_lookup:
                    later = case.at + timedelta(minutes=float(self.rng.uniform(5, 60)))
                    self._schedule(later, lambda t=later: self._recognise(t))  # type: ignore[misc]
            first = datetime(self.start.year, self.start.month, self.start.day, tzinfo=SHANGHAI)
            end = first + timedelta(days=self.days)
            tick = first.astimezone(UTC)
            # After the last arrival, readers finish the backlog (two more days).
            while tick < end + timedelta(days=2):
                self._schedule(tick, lambda t=tick: self._escalate(t))  # type: ignore[misc]
                tick += timedelta(minutes=15)
            done = 0
            last_day: date | None = None
            while self._events:
                at, _, action = heapq.heappop(self._events)
                _set_clock(at)
                action()
                done += 1
                day = at.astimezone(SHANGHAI).date()
                if progress is not None and day != last_day and day.day == 1:
                    progress(f"{day.isoformat()}: {self.report.studies} studies")
                last_day = day
        finally:
            clock.reset()
        self.report.seconds = time.perf_counter() - started
        self.report.cpu_seconds = time.process_time() - cpu_started
        return self.report


def simulate(
    settings: Settings,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    *,
    county: str,
    code: str | None = None,
    start: date,
    days: int,
    seed: int = 1,
    townships: int = 12,
    scale: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> SimulationReport:
    """Simulate one county's traffic (see the module docstring); returns counts and timings."""
    return Simulator(
        settings, sessions, store, county=county, code=code, start=start, days=days, seed=seed,
        townships=townships, scale=scale,
    ).run(progress)  # fmt: skip
