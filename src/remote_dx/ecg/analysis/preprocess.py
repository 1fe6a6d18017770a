"""Signal conditioning shared by every analysis step.

All filters are zero-phase (``sosfiltfilt``) so that onsets and offsets are not shifted; the
0.5 Hz high-pass removes baseline wander without the phase distortion of a causal filter (IEC
60601-2-25 asks for a 0.05 Hz low-frequency response for ST; the median-beat ST measurement
takes its baseline from the PR segment of the same beat, which cancels what the 0.5 Hz
zero-phase filter leaves).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from remote_dx.ecg.model import ECG, STANDARD_LEADS

Array = NDArray[np.float64]


def lead_matrix(ecg: ECG) -> tuple[list[str], Array]:
    """Leads in standard order (extras after) as one float64 array [n_leads, n_samples]."""
    names = [n for n in STANDARD_LEADS if n in ecg.leads]
    names += [n for n in ecg.leads if n not in names]
    data = np.vstack([np.asarray(ecg.leads[n], dtype=np.float64) for n in names])
    return names, data


@lru_cache(maxsize=64)
def _sos(kind: str, cutoff: tuple[float, ...], fs: float, order: int) -> NDArray[np.float64]:
    wn = cutoff[0] if len(cutoff) == 1 else list(cutoff)
    return signal.butter(order, wn, btype=kind, fs=fs, output="sos")


def filt(x: Array, fs: float, kind: str, *cutoff: float, order: int = 2) -> Array:
    """Zero-phase Butterworth filter along the last axis (cutoffs clipped below Nyquist)."""
    nyq = fs / 2
    cut = tuple(min(c, 0.95 * nyq) for c in cutoff)
    if kind == "lowpass" and cut[0] >= 0.95 * nyq:
        return x
    return signal.sosfiltfilt(_sos(kind, cut, float(fs), order), x, axis=-1)


def condition(x: Array, fs: float) -> Array:
    """Diagnostic-band signal used for delineation: 0.5 Hz high-pass, 100 Hz low-pass."""
    y = filt(x, fs, "highpass", 0.5)
    return filt(y, fs, "lowpass", 100.0, order=4)
