"""Global (multi-lead) wave boundaries on the median beats.

Resting-ECG programs measure intervals globally: the QRS begins at the earliest onset and ends at
the latest offset seen in any lead, and likewise P onset and T offset (IEC 60601-2-25:2011,
201.12.4.4.102 "global intervals"; CSE Working Party, Circulation 1985;71:523). We follow that
with combined-lead detection functions computed on the median beats of all usable leads:

* QRS onset/offset: the spatial velocity ``V(t) = sqrt(sum_l (dM_l/dt)^2)`` — the Frank-lead
  technique adapted to the 12 leads (Laguna et al., Comput Biomed Res 1994;27:45). The QRS is
  where V is far above the velocity of the flanking isoelectric PR segment and of the ST segment;
  the boundary is where V falls to a fixed fraction of its QRS peak above that floor. A paced
  QRS begins at its pacing spike (where the cardiologists mark it); the spike's own velocity is
  left out of V so that it does not set the scale.
* T offset: per lead, where the T wave's descending limb flattens out: the first sample after
  the steepest descent (of the lead's T, either polarity) at which the slope is back to a fixed
  fraction of that steepest slope (a slope-threshold end point, the family of Laguna et al.
  1994's and Martinez et al. 2004's T-end rules; rdx-ecg 0.4.0). It replaces the tangent method
  (Lepeschkin & Surawicz 1952), whose intersection with the PR level ends a wide or
  slowly-returning T too early and moves with any TP/PR level offset; the slope rule follows
  the flattening cardiologists mark and is blind to a level offset. Every lead whose T is large
  enough to measure is used; the global T end is the latest of the leads that agree with the
  consensus (within a window around the median of the leads) — the reference convention is the
  latest T end over 12 leads, and one lead with a flat or noisy T would otherwise decide it.
* P onset/offset: the P envelope (``E(t) = sqrt(sum_l (M_l - b_l)^2)``, b_l the lead's PR level,
  restricted to the interval between the previous beat's T end and the QRS onset, so that at high
  rates the previous T is not taken for the P) falls to a fixed fraction of the P peak above its
  floor on each side. The onset is then found again on the envelope about a sloping baseline,
  from each lead's TP level just before the first onset to its PR level (rdx-ecg 0.3.0).
  A P whose envelope rises 0.02 mV above its floor counts as a P wave (for the rhythm); its PR
  and duration are reported from 0.03 mV only, below that its boundaries sit in the noise
  (rdx-ecg 0.4.1).

Every fraction and shift is a single global constant (no per-record tuning), chosen on the odd
LUDB records only (bench/ecg_accuracy.py reports the held-out even ones); a boundary that cannot be
found is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remote_dx.ecg.analysis.median import MedianBeat
from remote_dx.ecg.analysis.preprocess import Array, filt


@dataclass(frozen=True)
class Params:
    """Global constants of the method (fractions of the wave's peak above its floor; shifts).

    The shifts move each detected boundary onto the reference convention (earliest onset /
    latest offset marked by cardiologists in any of the 12 leads). They and the fractions were
    chosen on the odd LUDB records only; bench/ecg_accuracy.py gives the verdict on the even ones.
    """

    qrs_on_frac: float = 0.015
    qrs_off_frac: float = 0.02
    qrs_on_shift_ms: float = -9.0
    qrs_off_shift_ms: float = 7.0
    p_on_frac: float = 0.1
    p_off_frac: float = 0.15
    p_on_shift_ms: float = -15.0
    p_off_shift_ms: float = 10.0
    p_min_mv: float = 0.02  # a P envelope this large counts as a P wave (rhythm) ...
    p_measure_mv: float = 0.03  # ... and this large is measured (PR, P duration)
    t_win: float = 0.55  # T search ends by QRS onset + t_win·sqrt(RR) s (QTc ≈ 550 ms)
    t_gap_s: float = 0.15  # ... and this long before the next (early) QRS
    t_min_mv: float = 0.03  # a lead's T must be this large to be measured ...
    t_rel: float = 0.2  # ... and this share of the largest T of the ECG
    t_lowpass_hz: float = 15.0  # the T's slope is read on this low-passed median beat
    t_slope_frac: float = 0.35  # T end: slope back to this share of the steepest descent
    t_consensus_ms: float = 80.0  # leads further than this from the median T end disagree
    t_shift_ms: float = 17.0


PARAMS = Params()


@dataclass
class Boundaries:
    """Sample indices within the median-beat window (None: not found)."""

    qrs_on: int | None = None
    qrs_off: int | None = None
    p_on: int | None = None
    p_off: int | None = None
    p_peak: int | None = None
    t_peak: int | None = None
    t_off: int | None = None
    p_amplitude_mv: float | None = None
    t_off_leads: dict[int, int] | None = None  # per-lead T end (index into the usable leads)


def _ms(fs: float, ms: float) -> int:
    return round(ms * fs / 1000.0)


def _moving_min(v: Array, lo: int, hi: int, width: int) -> float:
    seg = v[max(lo, 0) : max(hi, lo + 1)]
    if seg.size == 0:
        return float(np.min(v))
    if seg.size <= width:
        return float(seg.mean())
    c = np.cumsum(np.concatenate([[0.0], seg]))
    means = (c[width:] - c[:-width]) / width
    return float(means.min())


def _qrs(
    m: Array, fs: float, fid: int, spike: int | None, params: Params
) -> tuple[int, int] | None:
    """Global QRS onset and offset from the spatial velocity (see the module docstring)."""
    w = m.shape[1]
    ml = filt(m, fs, "lowpass", 40.0)
    vel = np.sqrt(np.sum(np.gradient(ml, axis=1) ** 2, axis=0)) * fs  # mV/s
    if spike is not None:
        # The low-passed spike still dominates V for ~10 ms; bridge it linearly.
        a, b = max(spike - _ms(fs, 12), 0), min(spike + _ms(fs, 12), w - 1)
        vel[a : b + 1] = np.linspace(vel[a], vel[b], b - a + 1)
    lo, hi = fid - _ms(fs, 80), fid + _ms(fs, 80)
    vmax = float(vel[lo:hi].max())
    if vmax <= 0:
        return None
    strong = np.flatnonzero(vel[lo:hi] >= 0.3 * vmax) + lo
    first, last = int(strong[0]), int(strong[-1])
    win = _ms(fs, 20)
    floor_pr = _moving_min(vel, first - _ms(fs, 200), first - _ms(fs, 10), win)
    floor_st = _moving_min(vel, last + _ms(fs, 10), last + _ms(fs, 200), win)
    thr_on = floor_pr + params.qrs_on_frac * (vmax - floor_pr)
    thr_off = floor_st + params.qrs_off_frac * (vmax - floor_st)
    i = first
    while i > first - _ms(fs, 150) and i > 0 and vel[i] > thr_on:
        i -= 1
    j = last
    while j < last + _ms(fs, 200) and j < w - 1 and vel[j] > thr_off:
        j += 1
    on = i + _ms(fs, params.qrs_on_shift_ms)
    if spike is not None:
        # Always the spike (rdx-ecg 0.4.2): the 40 Hz low-pass spreads the spike's velocity past
        # the 12 ms bridge, so the strong region could start before the spike and the velocity
        # walk then ran into the noise ahead of it (LUDB 34: onset 40 ms before the spike).
        on = spike
    off = min(j + _ms(fs, params.qrs_off_shift_ms), w - 1)
    return on, off


def _t_end(
    y: Array, fs: float, t_lo: int, t_hi: int, d_hi: int, params: Params
) -> tuple[int | None, int | None, dict[int, int]]:
    """(global T end, T peak of the largest T, per-lead T ends) by the per-lead slope rule.

    ``y`` is the median beat per lead minus its PR level, low-passed at ``t_lowpass_hz``; the T
    peak of each lead is its largest deflection (either sign) in [t_lo, t_hi); the descending
    limb is searched up to 250 ms after the peak and never past ``d_hi``.
    """
    if t_hi - t_lo < _ms(fs, 40):
        return None, None, {}
    seg = y[:, t_lo:t_hi]
    tp = t_lo + np.argmax(np.abs(seg), axis=1)
    amp = np.abs(y[np.arange(y.shape[0]), tp])
    a_max = float(amp.max())
    ends: dict[int, int] = {}
    values: list[float] = []
    for lead in range(y.shape[0]):
        if amp[lead] < max(params.t_min_mv, params.t_rel * a_max):
            continue
        if tp[lead] >= t_hi - _ms(fs, 10):
            continue  # still rising at the end of the search: baseline drift, not a T peak
        z = np.sign(y[lead, tp[lead]]) * y[lead]
        hi = min(tp[lead] + _ms(fs, 250), d_hi)
        if hi - tp[lead] < _ms(fs, 10):
            continue
        slope = np.gradient(z[tp[lead] : hi])
        k = int(np.argmin(slope))
        if slope[k] >= 0:
            continue
        # First sample past the steepest descent whose slope is back above the fraction.
        flat = np.flatnonzero(slope[k:] >= params.t_slope_frac * slope[k])
        end = tp[lead] + k + (int(flat[0]) if flat.size else slope.size - 1 - k)
        values.append(float(end))
        ends[lead] = int(end)
    if not values:
        return None, None, ends
    v = np.asarray(values)
    med = float(np.median(v))
    agree = v[np.abs(v - med) <= _ms(fs, params.t_consensus_ms)]
    if agree.size == 0:
        agree = v[[int(np.argmin(np.abs(v - med)))]]
    t_off = round(min(float(agree.max()) + _ms(fs, params.t_shift_ms), y.shape[1] - 1))
    return t_off, int(tp[int(np.argmax(amp))]), ends


def delineate(
    mb: MedianBeat,
    rr_s: float | None,
    usable: np.ndarray | None = None,
    params: Params = PARAMS,
    *,
    rr_short_s: float | None = None,
    spike: int | None = None,
) -> Boundaries:
    """Global boundaries on the median beats.

    ``rr_s``: the typical RR (s); ``rr_short_s``: a short RR among the beats of the median (in an
    irregular rhythm the next QRS of the short cycles shows in the median beat and bounds the T
    search); ``spike``: the pacing spike's index in the median-beat window, if paced.
    """
    fs = mb.fs
    m = mb.beats if usable is None or not usable.any() else mb.beats[usable]
    w = m.shape[1]
    fid = mb.fiducial
    out = Boundaries()

    q = _qrs(m, fs, fid, spike, params)
    if q is None:
        return out
    qon, qoff = q
    out.qrs_on, out.qrs_off = qon, qoff

    # Isoelectric level per lead: the PR segment just before the QRS onset.
    ms20 = filt(m, fs, "lowpass", 20.0)
    b = ms20[:, max(qon - _ms(fs, 20), 0) : max(qon - _ms(fs, 5), 1)].mean(axis=1)
    y = ms20 - b[:, None]

    # --- T wave: per-lead slope-rule end points, latest of the agreeing leads.
    rr = rr_s if rr_s and rr_s > 0 else 1.0
    rr_short = rr_short_s if rr_short_s and 0 < rr_short_s < rr else rr
    t_lo = qoff + _ms(fs, 60)
    t_hi = min(qon + round(fs * min(params.t_win * np.sqrt(rr), rr_short - params.t_gap_s)), w - 1)
    d_hi = min(qon + round(fs * (rr_short - 0.1)), w - 1)
    y_t = filt(m, fs, "lowpass", params.t_lowpass_hz)
    y_t -= y_t[:, max(qon - _ms(fs, 20), 0) : max(qon - _ms(fs, 5), 1)].mean(axis=1)[:, None]
    out.t_off, out.t_peak, out.t_off_leads = _t_end(y_t, fs, t_lo, t_hi, d_hi, params)

    # --- P wave: envelope between the previous beat's T end and the QRS onset.
    env = np.sqrt(np.sum(y**2, axis=0))
    p_lo = max(qon - _ms(fs, 350), 0)
    if out.t_off is not None:
        p_lo = max(p_lo, out.t_off - round(rr * fs))
    p_hi = qon - _ms(fs, 30)
    if p_hi - p_lo > _ms(fs, 40):
        pp = p_lo + int(np.argmax(env[p_lo:p_hi]))
        floor_after = float(env[pp:qon].min())
        floor_before = float(env[max(pp - _ms(fs, 150), p_lo) : pp + 1].min())
        amp = float(env[pp]) - max(floor_before, floor_after)
        out.p_amplitude_mv = amp
        if amp >= params.p_min_mv and pp > p_lo + _ms(fs, 10):
            out.p_peak = pp
            thr_b = floor_before + params.p_on_frac * (env[pp] - floor_before)
            thr_a = floor_after + params.p_off_frac * (env[pp] - floor_after)
            i = pp
            while i > max(pp - _ms(fs, 150), p_lo) and env[i] > thr_b:
                i -= 1
            j = pp
            while j < qon and env[j] > thr_a:
                j += 1
            if i - _ms(fs, 20) >= 0:
                # Second pass: the baseline under the P runs from each lead's level just before
                # the first-pass onset (the TP segment) to its PR level, instead of lying flat at
                # the PR level — a TP/PR offset (atrial repolarisation, wander, the previous T's
                # tail) otherwise keeps the envelope up and drags the onset early.
                a = i - _ms(fs, 12)
                tp_level = y[:, i - _ms(fs, 20) : i - _ms(fs, 5) + 1].mean(axis=1)
                ramp = np.clip((np.arange(w) - a) / max(qon - _ms(fs, 12) - a, 1), 0.0, 1.0)
                env2 = np.sqrt(np.sum((y - tp_level[:, None] * (1.0 - ramp)) ** 2, axis=0))
                lo2 = max(pp - _ms(fs, 150), p_lo)
                floor2 = float(env2[lo2 : pp + 1].min())
                thr2 = floor2 + params.p_on_frac * (env2[pp] - floor2)
                i = pp
                while i > lo2 and env2[i] > thr2:
                    i -= 1
            out.p_on = max(i + _ms(fs, params.p_on_shift_ms), 0)
            out.p_off = min(j + _ms(fs, params.p_off_shift_ms), qon)
    return out
