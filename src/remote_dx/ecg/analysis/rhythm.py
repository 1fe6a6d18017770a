"""Rhythm: rate, RR irregularity, P-wave presence, atrial flutter waves, pacing, pauses, ectopy.

Rules (the usual ones of resting-ECG interpretation programs, e.g. the criteria summarised in
AHA/ACCF/HRS 2009 recommendations Part I and in Macfarlane's Glasgow program description):

* paced: pacemaker spikes (very narrow, steep deflections) precede most QRS complexes;
* suspected atrial fibrillation: irregularly irregular RR **and** no consistent P wave;
* suspected atrial flutter: the atrial activity left after QRST cancellation has a dominant,
  narrow-band frequency of 3.5–6 Hz (flutter waves at 210–360 /min);
* sinus rhythm when a consistent P wave precedes the QRS; bradycardia < 60 /min, tachycardia
  > 100 /min;
* ``other`` when none of these fits (e.g. junctional rhythm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import signal

from remote_dx.ecg.analysis.preprocess import Array, filt

BRADY_BPM = 60.0
TACHY_BPM = 100.0
IRREGULAR_NMSD = 0.10  # median |ΔRR| / mean RR above which the rhythm is irregular
# Median correlation of each beat's P segment with the median P: every odd LUDB sinus record is
# ≥ 0.83, so 0.75 leaves a margin while the disorganised atrial activity of atrial fibrillation,
# which the median can turn into a P-like bump, no longer counts as a P wave.
P_CONSISTENCY_MIN = 0.75
PAUSE_S = 2.0
LONG_PAUSE_S = 3.0
FREQUENT_ECTOPY_PER_10S = 3  # premature / ectopic beats per 10 s called "frequent"
# Pacing spike curvature over the record's 98th percentile of curvature: chosen on the odd LUDB
# records (paced ≥ 4.9, others ≤ 1.6; the geometric middle), the even ones are held out.
SPIKE_RATIO = 2.8
FLUTTER_BAND_HZ = (3.5, 6.0)
FLUTTER_CONCENTRATION = 0.5


@dataclass
class Rhythm:
    code: str
    heart_rate: float | None
    rr_ms: list[float] = field(default_factory=list)
    rr_irregularity: float | None = None
    irregular: bool = False
    p_present: bool = False
    pauses_s: list[float] = field(default_factory=list)
    ectopic_beats: int = 0
    ectopy_per_10s: float = 0.0
    paced: bool = False
    flutter: bool = False


def rr_irregularity(rr_s: np.ndarray) -> float | None:
    """Median absolute successive RR difference over the mean RR (dimensionless)."""
    if rr_s.size < 3:
        return None
    return float(np.median(np.abs(np.diff(rr_s))) / np.mean(rr_s))


def p_consistency(x: Array, centres: np.ndarray, lo: int, hi: int) -> float:
    """Median correlation of each beat's P segment (all leads) with the median P segment."""
    if hi <= lo or centres.size < 2:
        return 0.0
    idx = centres[:, None] + np.arange(lo, hi)[None, :]
    if idx.min() < 0 or idx.max() >= x.shape[1]:
        ok = (idx.min(axis=1) >= 0) & (idx.max(axis=1) < x.shape[1])
        idx = idx[ok]
        if idx.shape[0] < 2:
            return 0.0
    seg = x[:, idx].transpose(1, 0, 2)
    seg = seg - seg.mean(axis=2, keepdims=True)
    flat = seg.reshape(seg.shape[0], -1)
    ref = np.median(flat, axis=0)
    a = flat - flat.mean(axis=1, keepdims=True)
    b = ref - ref.mean()
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum())
    den[den == 0] = np.inf
    return float(np.median((a @ b) / den))


def pacing_spike(raw: Array, fs: float, centres: np.ndarray) -> int | None:
    """Offset (samples, relative to the QRS fiducial) of the pacing spike, or None if not paced.

    A pacing spike is 1–2 samples wide at 500 Hz and appears at once in most leads, so its
    curvature (second difference) summed over the leads is many times that of the sharpest
    natural QRS. Per beat, the largest summed curvature 200–16 ms before the fiducial (a paced
    QRS is wide, its fiducial well after the spike; the fiducial's own sharp R tip is excluded)
    is compared with the record's 98th percentile of summed curvature (set by the QRS
    complexes); paced when the median beat's ratio is at least ``SPIKE_RATIO``. Unfiltered
    samples are used: any low-pass would smear the spike.
    """
    if fs < 400 or centres.size == 0:
        return None
    d2 = np.abs(raw[:, 1:-1] - (raw[:, :-2] + raw[:, 2:]) / 2).sum(axis=0)
    scale = float(np.percentile(d2, 98))
    if scale <= 0:
        return None
    lo_off, hi_off = round(0.2 * fs), round(0.016 * fs)
    ratios, offsets = [], []
    for c in centres:
        lo, hi = c - lo_off - 1, c - hi_off - 1  # d2[i] is the curvature at sample i + 1
        if lo < 0 or hi > d2.size:
            continue
        k = int(np.argmax(d2[lo:hi]))
        ratios.append(d2[lo + k] / scale)
        offsets.append(lo + k + 1 - c)
    if not ratios or float(np.median(ratios)) < SPIKE_RATIO:
        return None
    paced = np.asarray(ratios) >= SPIKE_RATIO
    return int(np.median(np.asarray(offsets)[paced]))


def atrial_flutter(residual: Array, fs: float) -> bool:
    """Narrow-band 3.5–6 Hz atrial activity in the QRST-cancelled signal."""
    if residual.shape[1] < 4 * fs:
        return False
    r = filt(residual, fs, "bandpass", 2.0, 12.0)
    f, pxx = signal.welch(r, fs=fs, nperseg=min(r.shape[1], round(4 * fs)), axis=1)
    pxx = pxx.sum(axis=0)
    band = (f >= 2.0) & (f <= 12.0)
    if not band.any() or pxx[band].sum() <= 0:
        return False
    peak_f = f[band][np.argmax(pxx[band])]
    if not FLUTTER_BAND_HZ[0] <= peak_f <= FLUTTER_BAND_HZ[1]:
        return False
    near = band & (np.abs(f - peak_f) <= 0.5)
    harmonic = band & (np.abs(f - 2 * peak_f) <= 0.5)
    share = (pxx[near].sum() + pxx[harmonic].sum()) / pxx[band].sum()
    return bool(share >= FLUTTER_CONCENTRATION)


def classify(
    r_peaks: np.ndarray,
    fs: float,
    duration_s: float,
    *,
    dominant: np.ndarray,
    p_present: bool,
    paced: bool,
    flutter: bool,
) -> Rhythm:
    if r_peaks.size < 2:
        return Rhythm(code="other", heart_rate=None)
    rr = np.diff(r_peaks) / fs
    hr = 60.0 / float(np.mean(rr))
    irr = rr_irregularity(rr)
    irregular = irr is not None and irr > IRREGULAR_NMSD
    pauses = [round(float(v), 2) for v in rr if v > PAUSE_S]
    med = float(np.median(rr))
    premature = np.zeros(r_peaks.size, dtype=bool)
    if not irregular:
        premature[1:] = rr < 0.8 * med
    ectopic = int(np.sum(premature | ~dominant))
    per10 = ectopic * 10.0 / duration_s if duration_s > 0 else 0.0
    if paced:
        code = "paced"
    elif irregular and not p_present:
        code = "afib"
    elif flutter and not p_present:
        code = "aflutter"
    elif p_present:
        # The rate as reported (whole bpm), as the reader compares it with 60 / 100.
        bpm = round(hr)
        code = "sinus_brady" if bpm < BRADY_BPM else "sinus_tachy" if bpm > TACHY_BPM else "sinus"
    else:
        code = "other"
    return Rhythm(
        code=code,
        heart_rate=round(hr, 1),
        rr_ms=[round(float(v) * 1000, 1) for v in rr],
        rr_irregularity=None if irr is None else round(irr, 4),
        irregular=bool(irregular),
        p_present=p_present,
        pauses_s=pauses,
        ectopic_beats=ectopic,
        ectopy_per_10s=round(per10, 2),
        paced=paced,
        flutter=flutter,
    )
