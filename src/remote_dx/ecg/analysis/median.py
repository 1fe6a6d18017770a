"""Representative (median) beat per lead.

Beats of the dominant morphology are aligned on their QRS (fine alignment by cross-correlation
of the multi-lead QRS within ±10 ms) and the sample-wise median is taken per lead, as resting ECG
analysis programs do before measuring (IEC 60601-2-25 measures on such a representative beat).
Premature beats and beats of another morphology (ectopic, aberrant, noisy) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remote_dx.ecg.analysis.preprocess import Array

PRE_S = 0.50  # window before the QRS fiducial: room for a long PR (first-degree block)
POST_S = 0.75  # window after it: room for a long QT
MIN_CORRELATION = 0.90  # QRS shape agreement with the dominant template to count as dominant
PREMATURE_RATIO = 0.80  # RR shorter than this share of the median RR → premature


@dataclass
class MedianBeat:
    beats: Array  # [n_leads, window] median beat per lead (mV)
    fiducial: int  # index of the QRS fiducial within the window
    fs: float
    used: np.ndarray  # indices (into the R-peak array) of the beats that formed the median
    dominant: np.ndarray  # bool per R peak: dominant morphology (False: ectopic or noisy)
    centres: np.ndarray  # aligned fiducial sample of each used beat in the recording

    @property
    def n_used(self) -> int:
        return int(self.used.size)


def _epochs(x: Array, centres: np.ndarray, pre: int, post: int) -> Array:
    idx = centres[:, None] + np.arange(-pre, post)[None, :]
    return x[:, idx].transpose(1, 0, 2)  # [beats, leads, window]


def median_beat(
    x: Array, fs: float, r_peaks: np.ndarray, usable: np.ndarray | None = None
) -> MedianBeat | None:
    """Median beat of the dominant, non-premature beats; None when fewer than one such beat."""
    pre, post = round(PRE_S * fs), round(POST_S * fs)
    n = x.shape[1]
    inside = (r_peaks - pre >= 0) & (r_peaks + post <= n)
    if not inside.any():
        return None
    cand = np.flatnonzero(inside)
    ep = _epochs(x, r_peaks[cand], pre, post)
    lead_mask = usable if usable is not None and usable.any() else np.ones(x.shape[0], bool)

    # QRS-region morphology (±60 ms) across the usable leads, baseline-removed per beat.
    q = int(0.06 * fs)
    qrs = ep[:, lead_mask, pre - q : pre + q]
    qrs = qrs - qrs.mean(axis=2, keepdims=True)
    flat = qrs.reshape(len(cand), -1)
    template = np.median(flat, axis=0)
    corr = _corr(flat, template)
    dominant_c = corr >= MIN_CORRELATION
    if not dominant_c.any():
        dominant_c = corr >= np.max(corr) - 1e-9

    rr = np.diff(r_peaks)
    prev_rr = np.full(len(r_peaks), np.nan)
    prev_rr[1:] = rr
    med_rr = np.median(rr) if rr.size else np.nan
    premature = prev_rr[cand] < PREMATURE_RATIO * med_rr
    keep = dominant_c & ~premature
    if keep.sum() < max(1, dominant_c.sum() // 2):
        keep = dominant_c  # irregular rhythm (e.g. atrial fibrillation): RR says nothing

    # Fine alignment: shift each kept beat by the lag (±10 ms) maximising its correlation with
    # the template of the multi-lead QRS.
    max_lag = int(0.01 * fs)
    shifts = np.zeros(len(cand), dtype=int)
    tpl = np.median(qrs[keep], axis=0).ravel()
    if max_lag > 0:
        best = np.full(len(cand), -np.inf)
        for lag in range(-max_lag, max_lag + 1):
            lo, hi = pre - q + lag, pre + q + lag
            if lo < 0 or hi > pre + post:
                continue
            seg = ep[:, lead_mask, lo:hi]
            seg = (seg - seg.mean(axis=2, keepdims=True)).reshape(len(cand), -1)
            c = _corr(seg, tpl)
            better = c > best
            best[better], shifts[better] = c[better], lag
    centres = r_peaks[cand] + shifts
    ok = (centres - pre >= 0) & (centres + post <= n)
    keep &= ok
    if not keep.any():
        return None
    aligned = _epochs(x, centres[keep], pre, post)
    med = np.median(aligned, axis=0)
    dominant = np.ones(len(r_peaks), dtype=bool)
    dominant[cand] = dominant_c
    return MedianBeat(
        beats=med, fiducial=pre, fs=fs, used=cand[keep], dominant=dominant, centres=centres[keep]
    )


def _corr(rows: Array, ref: Array) -> Array:
    a = rows - rows.mean(axis=1, keepdims=True)
    b = ref - ref.mean()
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum())
    den[den == 0] = np.inf
    return (a @ b) / den
