"""Frontal-plane QRS axis from the net QRS areas of leads I and aVF.

With Einthoven's triangle, lead I measures the horizontal component Hx and aVF = (√3/2)·Hy of
the frontal heart vector, so the mean QRS axis is atan2(2/√3 · area(aVF), area(I)) in degrees
(hexaxial reference: I at 0°, aVF at +90°; AHA/ACCF/HRS 2009 recommendations Part I for the
normal range −30° to +90°). Areas are integrals of the median beat between the global QRS onset
and offset, above the PR-segment level.
"""

from __future__ import annotations

import math

import numpy as np

from remote_dx.ecg.analysis.preprocess import Array


def frontal_axis(
    names: list[str], median: Array, baseline: Array, qrs_on: int, qrs_off: int
) -> float | None:
    if "I" not in names or "aVF" not in names or qrs_off <= qrs_on:
        return None
    i, f = names.index("I"), names.index("aVF")
    area_i = float(np.sum(median[i, qrs_on:qrs_off] - baseline[i]))
    area_f = float(np.sum(median[f, qrs_on:qrs_off] - baseline[f]))
    if abs(area_i) < 1e-9 and abs(area_f) < 1e-9:
        return None
    deg = math.degrees(math.atan2(area_f * 2 / math.sqrt(3), area_i))
    return round(deg)
