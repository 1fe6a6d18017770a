"""QRS detection on a multi-lead combination.

Every usable lead is band-passed to the QRS band (5–20 Hz); large leads are scaled down to a
common size so that no single lead dominates (small leads are never amplified, or their P and T
waves would count as much as a QRS); all are combined into one non-negative "spatial
magnitude" (root mean square across leads). A QRS is large in at least some leads, so the
combination keeps every beat where one lead is small or noisy (the idea of multi-lead
detectors, e.g. Christov 2004, and of the spatial velocity of Frank leads). neurokit2's
gradient detector (``ecg_findpeaks(method="neurokit")``) finds the complexes on it; each is
refined to the maximum of the combination.
"""

from __future__ import annotations

import neurokit2 as nk
import numpy as np

from remote_dx.ecg.analysis.preprocess import Array, filt

REFRACTORY_S = 0.2  # physiological minimum between two ventricular depolarisations
MIN_RELATIVE_AMPLITUDE = 0.2


def detection_signal(x: Array, fs: float, usable: np.ndarray | None = None) -> Array:
    """Root mean square across leads of the QRS-band signal, each lead scaled to unit amplitude."""
    if usable is not None and usable.any():
        x = x[usable]
    band = filt(x, fs, "bandpass", 5.0, 20.0)
    # Scale large leads down to a common size but never amplify small ones: a lead whose QRS is
    # tiny would otherwise contribute its P and T waves at QRS size.
    amp = np.percentile(np.abs(band), 99, axis=1)
    scale = np.maximum(amp, np.median(amp))
    scale[scale <= 1e-6] = np.inf  # all flat: contributes nothing
    return np.sqrt(np.mean((band / scale[:, None]) ** 2, axis=0))


def detect_qrs(x: Array, fs: float, usable: np.ndarray | None = None) -> np.ndarray:
    """Sample indices of the QRS complexes (refined to the peak of the combined magnitude)."""
    comb = detection_signal(x, fs, usable)
    if not np.any(comb > 0):
        return np.zeros(0, dtype=int)
    try:
        found = nk.ecg_findpeaks(comb, sampling_rate=round(fs), method="neurokit")
        peaks = np.asarray(found["ECG_R_Peaks"], dtype=int)
    except Exception:
        return np.zeros(0, dtype=int)
    if peaks.size == 0:
        return peaks
    # Refine to the local maximum of the combination within ±50 ms, then drop duplicates that
    # fall inside the refractory period (keep the larger).
    half = int(0.05 * fs)
    refined = np.empty_like(peaks)
    for i, p in enumerate(peaks):
        lo, hi = max(0, p - half), min(len(comb), p + half + 1)
        refined[i] = lo + int(np.argmax(comb[lo:hi]))
    refined = np.unique(refined)
    keep: list[int] = []
    for p in refined:
        if keep and p - keep[-1] < REFRACTORY_S * fs:
            if comb[p] > comb[keep[-1]]:
                keep[-1] = p
            continue
        keep.append(int(p))
    out = np.asarray(keep, dtype=int)
    # The gradient detector's threshold follows a moving average, so in a quiet bradycardic
    # record it also fires on small bumps between beats; a QRS is never a fifth of the size of
    # the typical complex in the multi-lead combination.
    if out.size >= 3:
        out = out[comb[out] >= MIN_RELATIVE_AMPLITUDE * np.median(comb[out])]
    return out
