"""ST deviation per lead on the median beat.

Measured against the isoelectric PR segment (the conventional reference level; Thygesen et al.,
Fourth Universal Definition of Myocardial Infarction, Circulation 2018;138:e618, section
"Electrocardiographic detection of myocardial infarction") at the J point (the global QRS
offset) — the point the STEMI thresholds are defined at — and at J + 60 ms.
"""

from __future__ import annotations

from remote_dx.ecg.analysis.preprocess import Array


def pr_baseline(median: Array, qrs_on: int, fs: float) -> Array:
    """Per-lead level of the PR segment (20–5 ms before the global QRS onset)."""
    lo = max(qrs_on - round(0.020 * fs), 0)
    hi = max(qrs_on - round(0.005 * fs), lo + 1)
    return median[:, lo:hi].mean(axis=1)


def st_levels(
    names: list[str], median: Array, baseline: Array, qrs_off: int, fs: float, offset_ms: float
) -> dict[str, float]:
    """ST level (mV, + elevation) at J + offset_ms, averaged over ±4 ms against noise."""
    at = qrs_off + round(offset_ms * fs / 1000)
    half = max(round(0.004 * fs), 1)
    lo, hi = max(at - half, 0), min(at + half + 1, median.shape[1])
    if hi <= lo:
        return {}
    values = median[:, lo:hi].mean(axis=1) - baseline
    return {name: round(float(v), 3) for name, v in zip(names, values, strict=True)}
