"""The preliminary analysis of one ECG: :func:`analyze` → :class:`ECGAnalysis`.

Pipeline: per-lead quality → conditioning (zero-phase 0.5–100 Hz) → multi-lead QRS detection →
median beat of the dominant beats → global onsets/offsets across leads → intervals, QTc, axis,
ST levels → rhythm → critical values → bilingual statements. Every value that cannot be measured
is None (JSON null), never a guess. The machine's result is stored with ``ALGORITHM_VERSION``
and never overwritten by the reader's confirmation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from remote_dx.ecg.analysis import ALGORITHM_VERSION, delineator
from remote_dx.ecg.analysis import critical as crit
from remote_dx.ecg.analysis import rhythm as rh
from remote_dx.ecg.analysis.axis import frontal_axis
from remote_dx.ecg.analysis.beats import detect_qrs
from remote_dx.ecg.analysis.intervals import PARAMS, Boundaries, delineate
from remote_dx.ecg.analysis.median import MedianBeat, median_beat
from remote_dx.ecg.analysis.preprocess import Array, condition, lead_matrix
from remote_dx.ecg.analysis.quality import assess
from remote_dx.ecg.analysis.st import pr_baseline, st_levels
from remote_dx.ecg.analysis.statements import statement
from remote_dx.ecg.model import ECG

FIRST_DEGREE_AVB_MS = 200.0
SHORT_PR_MS = 120.0
WIDE_QRS_MS = 120.0
PROLONGED_QTC_MS = 460.0  # conservative single cut-off for both sexes (AHA 2009 Part IV)
ST_STATEMENT_MV = 0.1
ST_DEPRESSION_MV = -0.1
#: The learned delineation's vote: a wave is where this many leads' worth of probability see it.
VOTES_NEEDED = delineator.Votes(p=1.5, qrs=1.5, t=1.5)
#: Share of the median-beat rules in each reported interval; the rest is the learned reading's.
RULE_WEIGHT = 0.5


@dataclass
class ECGAnalysis:
    heart_rate: float | None = None
    rr_irregularity: float | None = None
    pr_ms: float | None = None
    p_duration_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_bazett_ms: float | None = None
    qtc_fridericia_ms: float | None = None
    axis_deg: float | None = None
    rhythm: str | None = None
    statements: list[dict[str, str]] = field(default_factory=list)
    quality: dict[str, Any] = field(default_factory=dict)
    critical: dict[str, Any] = field(default_factory=lambda: {"critical": False, "reasons": []})
    st_deviation_mv: dict[str, float] = field(default_factory=dict)  # at J + 60 ms
    st_j_mv: dict[str, float] = field(default_factory=dict)  # at the J point
    beats_detected: int = 0
    beats_in_median: int = 0
    ectopic_beats: int = 0
    pauses_s: list[float] = field(default_factory=list)
    algorithm_version: str = ALGORITHM_VERSION
    # Not serialised: internals for rendering / benchmarks.
    r_peaks: np.ndarray | None = field(default=None, repr=False)
    #: Each reading's own intervals (ms) before they are combined: "rules", "learned".
    interval_readings: dict[str, dict[str, float | None]] = field(default_factory=dict, repr=False)
    boundaries: Boundaries | None = field(default=None, repr=False)
    median: MedianBeat | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("r_peaks", "boundaries", "median", "interval_readings"):
            out.pop(key, None)
        return out


def _ms(samples: float, fs: float) -> float:
    return round(samples * 1000.0 / fs, 1)


def _learned_intervals(
    x: Array, fs: float, usable: np.ndarray, r_peaks: np.ndarray, mb: MedianBeat
) -> dict[str, float | None]:
    """P duration, PR, QRS and QT (ms) from the learned per-lead delineation of the median
    beat's own beats (:mod:`remote_dx.ecg.analysis.delineator`)."""
    prob = delineator.probabilities(delineator.to_network_rate(x[usable], fs))
    waves = delineator.beat_waves(prob, r_peaks / fs, mb.used, VOTES_NEEDED)
    return delineator.median_intervals(waves)


def _combined(rule: float | None, learned: float | None) -> float | None:
    """The two readings' weighted mean; either alone where the other found nothing."""
    if rule is None or learned is None:
        return rule if learned is None else round(learned, 1)
    return round(RULE_WEIGHT * rule + (1.0 - RULE_WEIGHT) * learned, 1)


def _residual(x: Array, mb: MedianBeat, r_peaks: np.ndarray) -> Array:
    """The signal with the median QRST subtracted at every beat (QRST cancellation)."""
    res = x.copy()
    pre = mb.fiducial
    w = mb.beats.shape[1]
    for r in r_peaks:
        lo, hi = r - pre, r - pre + w
        a, b = max(lo, 0), min(hi, x.shape[1])
        res[:, a:b] -= mb.beats[:, a - lo : b - lo]
    return res


def _short_rr(mb: MedianBeat, r_peaks: np.ndarray, fs: float) -> float | None:
    """10th percentile of the RR following the beats of the median (s): in an irregular rhythm
    the next QRS of the short cycles shows in the median beat and bounds the T-wave search."""
    used = mb.used[mb.used + 1 < r_peaks.size]
    if used.size == 0:
        return None
    return float(np.percentile((r_peaks[used + 1] - r_peaks[used]) / fs, 10))


def analyze(ecg: ECG) -> ECGAnalysis:
    """Measure and interpret one resting ECG (any lead set, any sampling rate ≥ 100 Hz)."""
    leads = {name: np.asarray(v, dtype=np.float32) for name, v in ecg.leads.items()}
    work = ECG(leads=leads, sampling_rate=ecg.sampling_rate).complete_limb_leads()
    names, raw = lead_matrix(work)
    fs = float(ecg.sampling_rate)
    duration = raw.shape[1] / fs
    result = ECGAnalysis()

    quality = assess(names, raw, fs)
    result.quality = quality.to_dict()
    usable = quality.usable
    statements: list[dict[str, str]] = []
    if quality.unsatisfactory:
        statements.append(statement("technically_unsatisfactory", "; ".join(quality.reasons)))
    if not usable.any():
        result.statements = [*statements, statement("no_beats")]
        return result

    x = condition(raw, fs)
    r_peaks = detect_qrs(x, fs, usable)
    result.r_peaks = r_peaks
    result.beats_detected = int(r_peaks.size)
    if r_peaks.size < 2:
        result.statements = [*statements, statement("no_beats")]
        return result
    rr = np.diff(r_peaks) / fs
    mean_rr = float(np.mean(rr))

    mb = median_beat(x, fs, r_peaks, usable)
    spike = None
    bnd = Boundaries()
    if mb is not None:
        offset = rh.pacing_spike(raw[usable], fs, mb.centres)
        spike = None if offset is None else mb.fiducial + offset
        bnd = delineate(
            mb, float(np.median(rr)), usable, rr_short_s=_short_rr(mb, r_peaks, fs), spike=spike
        )
    result.median, result.boundaries = mb, bnd
    dominant = mb.dominant if mb is not None else np.ones(r_peaks.size, dtype=bool)

    p_present = False
    paced = False
    flutter = False
    if mb is not None and bnd.qrs_on is not None:
        result.beats_in_median = mb.n_used
        fid = mb.fiducial
        if bnd.p_on is not None and bnd.p_off is not None:
            cons = rh.p_consistency(
                x[usable], mb.centres, bnd.p_on - fid - round(0.02 * fs), bnd.p_off - fid
            )
            p_present = cons >= rh.P_CONSISTENCY_MIN
        paced = spike is not None
        if not p_present:
            atrial = [names.index(n) for n in ("II", "III", "aVF", "V1") if n in names]
            flutter = rh.atrial_flutter(_residual(x, mb, r_peaks)[atrial or [0]], fs)

    rhythm = rh.classify(
        r_peaks,
        fs,
        duration,
        dominant=dominant,
        p_present=p_present,
        paced=paced,
        flutter=flutter,
    )
    result.heart_rate = rhythm.heart_rate
    result.rr_irregularity = rhythm.rr_irregularity
    result.rhythm = rhythm.code
    result.ectopic_beats = rhythm.ectopic_beats
    result.pauses_s = rhythm.pauses_s

    qtc_b = None
    stemi_st: dict[str, float] = {}
    if mb is not None and bnd.qrs_on is not None and bnd.qrs_off is not None:
        rules: dict[str, float | None] = {
            "p": None,
            "pr": None,
            "qrs": _ms(bnd.qrs_off - bnd.qrs_on, fs),
            "qt": None,
        }
        # A small P (under p_measure_mv) still shows the rhythm is sinus, but its boundaries
        # sit in the noise: PR and P duration are then null rather than a guess.
        p_measurable = (bnd.p_amplitude_mv or 0.0) >= PARAMS.p_measure_mv
        p_measured = (
            p_present
            and p_measurable
            and not paced
            and bnd.p_on is not None
            and bnd.p_off is not None
        )
        if p_measured:
            rules["pr"] = _ms(bnd.qrs_on - bnd.p_on, fs)  # type: ignore[operator]
            rules["p"] = _ms(bnd.p_off - bnd.p_on, fs)  # type: ignore[operator]
        if bnd.t_off is not None and bnd.t_off > bnd.qrs_off:
            rules["qt"] = _ms(bnd.t_off - bnd.qrs_on, fs)
        # Two readings of the same beats whose errors are only partly shared (the rules on
        # the median beat, the network on each beat's per-lead waves). In the cross-validation
        # on the odd LUDB records their mean was closer to the cardiologists' than either
        # (bench/README.md). Whether a P is measured at all stays the rules' decision (P
        # consistency, size, pacing).
        learned = _learned_intervals(x, fs, usable, r_peaks, mb)
        result.interval_readings = {"rules": rules, "learned": learned}
        result.qrs_ms = _combined(rules["qrs"], learned["qrs"])
        if p_measured:
            result.pr_ms = _combined(rules["pr"], learned["pr"])
            result.p_duration_ms = _combined(rules["p"], learned["p"])
        qt = _combined(rules["qt"], learned["qt"])
        if qt is not None and result.qrs_ms is not None and qt > result.qrs_ms:
            result.qt_ms = qt
            qtc_b = round(qt / np.sqrt(mean_rr), 1)
            result.qtc_bazett_ms = qtc_b
            result.qtc_fridericia_ms = round(qt / np.cbrt(mean_rr), 1)
        base = pr_baseline(mb.beats, bnd.qrs_on, fs)
        result.axis_deg = frontal_axis(names, mb.beats, base, bnd.qrs_on, bnd.qrs_off)
        unusable = {n for n, ok in zip(names, usable, strict=True) if not ok}
        st_j = st_levels(names, mb.beats, base, bnd.qrs_off, fs, 0.0)
        st_40 = st_levels(names, mb.beats, base, bnd.qrs_off, fs, 40.0)
        st_60 = st_levels(names, mb.beats, base, bnd.qrs_off, fs, 60.0)
        result.st_j_mv = {n: v for n, v in st_j.items() if n not in unusable}
        result.st_deviation_mv = {n: v for n, v in st_60.items() if n not in unusable}
        # The STEMI rule reads the elevation at J; a J point placed a few ms early would read
        # the tail of the R wave as elevation, so the elevation must persist to J + 40 ms too.
        stemi_st = {n: min(v, st_40[n]) for n, v in result.st_j_mv.items()}

    # Statements: rhythm first, then conduction, axis, repolarisation.
    statements.insert(0, statement(rhythm.code))
    if rhythm.irregular and rhythm.code not in ("afib",):
        statements.append(statement("irregular_rhythm"))
    if rhythm.pauses_s:
        statements.append(statement("pause", f"{max(rhythm.pauses_s):.1f} s"))
    if rhythm.ectopic_beats:
        code = (
            "frequent_ectopy"
            if rhythm.ectopy_per_10s >= rh.FREQUENT_ECTOPY_PER_10S
            else "premature_beats"
        )
        statements.append(statement(code, f"{rhythm.ectopic_beats}"))
    if result.pr_ms is not None and result.pr_ms > FIRST_DEGREE_AVB_MS:
        statements.append(statement("first_degree_av_block"))
    if result.pr_ms is not None and result.pr_ms < SHORT_PR_MS:
        statements.append(statement("short_pr"))
    if result.qrs_ms is not None and result.qrs_ms >= WIDE_QRS_MS:
        statements.append(statement("wide_qrs"))
    if qtc_b is not None and qtc_b > PROLONGED_QTC_MS:
        statements.append(statement("prolonged_qtc"))
    if result.axis_deg is not None:
        ax = result.axis_deg
        if -90 <= ax < -30:
            statements.append(statement("left_axis_deviation"))
        elif 90 < ax <= 180:
            statements.append(statement("right_axis_deviation"))
        elif -180 < ax < -90:
            statements.append(statement("extreme_axis"))
    up = [n for n, v in result.st_j_mv.items() if v >= ST_STATEMENT_MV]
    down = [n for n, v in result.st_deviation_mv.items() if v <= ST_DEPRESSION_MV]
    if up:
        statements.append(statement("st_elevation", ", ".join(up)))
    if down:
        statements.append(statement("st_depression", ", ".join(down)))

    critical = crit.evaluate(
        st_j_mv=stemi_st,
        sex=ecg.patient.sex if ecg.patient else None,
        age=ecg.patient.age_years if ecg.patient else None,
        heart_rate=result.heart_rate,
        pauses_s=rhythm.pauses_s,
        qtc_ms=qtc_b,
    )
    result.critical = critical.to_dict()
    for reason in critical.reasons:
        if reason["code"] not in {s["code"] for s in statements}:
            statements.append(reason)
    result.statements = statements
    return result
