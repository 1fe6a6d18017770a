"""Per-lead technical quality: lead-off / flat, saturation, high-frequency noise, baseline wander.

A recording in which a lead is off or saturated, or several leads are too noisy to read, is
"technically unsatisfactory" and is sent back to the township for re-acquisition at once
(the same check a cart runs before printing; thresholds follow the amplitudes in AHA/ACCF/HRS
2007 recommendations for standardisation, Part I: noise < 0.03–0.05 mV for diagnostic reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remote_dx.ecg.analysis.preprocess import Array, filt

FLAT_PTP_MV = 0.05  # a connected lead shows at least QRS-sized deflections
SATURATION_SHARE = 0.01  # ≥ 1 % of samples pinned at the extreme value ...
CLIP_EXCURSION = 0.05  # ... an extreme at least this share of the range off the median ...
RAIL_HOLD_S = 1.5  # ... or held unchanged this long
NOISE_FAIR_MV = 0.05  # RMS above 40 Hz
NOISE_POOR_MV = 0.15
WANDER_FAIR_MV = 1.0  # peak-to-peak below 0.5 Hz
WANDER_POOR_MV = 3.0
MAX_POOR_LEADS = 2  # more unreadable leads than this → re-acquire


@dataclass
class LeadQuality:
    grade: str  # good / fair / poor / unusable
    problems: list[str] = field(default_factory=list)
    noise_mv: float = 0.0
    wander_mv: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "grade": self.grade,
            "problems": list(self.problems),
            "noise_mv": round(self.noise_mv, 4),
            "wander_mv": round(self.wander_mv, 3),
        }


@dataclass
class Quality:
    leads: dict[str, LeadQuality]
    unsatisfactory: bool
    reasons: list[str]

    @property
    def usable(self) -> np.ndarray:
        return np.array([q.grade != "unusable" for q in self.leads.values()], dtype=bool)

    def to_dict(self) -> dict[str, object]:
        return {
            "technically_unsatisfactory": self.unsatisfactory,
            "reasons": list(self.reasons),
            "leads": {name: q.to_dict() for name, q in self.leads.items()},
        }


def _longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D boolean array."""
    if not mask.any():
        return 0
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def _saturated(x: Array, fs: float) -> np.ndarray:
    """Per lead: clipped at an ADC / amplifier rail.

    A clipped wave sits at the lead's own extreme for many samples (≥ ``SATURATION_SHARE``), and
    that extreme lies off the baseline (the lead's median) by ``CLIP_EXCURSION`` of the range or
    more: the cut top of an R or T, a cut S or ST dip (LUDB 115 and 120 have such clips). A flat
    baseline that is itself the extreme — a sample-exact periodic synthetic ECG whose waves all
    point one way has its median within 0.2 % of the range from it — is not clipping. A lead
    held at the rail (electrode off, DC offset beyond the input range) is: its extreme is its
    baseline, but it stays there unchanged for ``RAIL_HOLD_S`` or longer, which no ECG baseline
    does.
    """
    hi = x.max(axis=1, keepdims=True)
    lo = x.min(axis=1, keepdims=True)
    med = np.median(x, axis=1, keepdims=True)
    span = np.maximum(hi - lo, 1e-12)
    out = np.zeros(x.shape[0], dtype=bool)
    for ext in (hi, lo):
        at = x == ext
        share = at.sum(axis=1) / x.shape[1]
        excursion = np.abs(ext - med)[:, 0] >= CLIP_EXCURSION * span[:, 0]
        held = np.array([_longest_run(row) >= RAIL_HOLD_S * fs for row in at])
        out |= (share >= SATURATION_SHARE) & (excursion | held)
    return out


def assess(names: list[str], raw: Array, fs: float) -> Quality:
    ptp = np.percentile(raw, 99.5, axis=1) - np.percentile(raw, 0.5, axis=1)
    saturated = _saturated(raw, fs)
    hf = raw - filt(raw, fs, "lowpass", 40.0) if fs > 90 else np.zeros_like(raw)
    noise = np.sqrt(np.mean(hf**2, axis=1))
    low = filt(raw, fs, "lowpass", 0.5)
    wander = low.max(axis=1) - low.min(axis=1)
    leads: dict[str, LeadQuality] = {}
    for i, name in enumerate(names):
        problems: list[str] = []
        grade = "good"
        if ptp[i] < FLAT_PTP_MV:
            problems.append("lead_off")
            grade = "unusable"
        elif saturated[i]:
            problems.append("saturation")
            grade = "unusable"
        else:
            if noise[i] >= NOISE_POOR_MV:
                problems.append("noise")
                grade = "poor"
            elif noise[i] >= NOISE_FAIR_MV:
                problems.append("noise")
                grade = "fair"
            if wander[i] >= WANDER_POOR_MV:
                problems.append("baseline_wander")
                grade = "poor"
            elif wander[i] >= WANDER_FAIR_MV:
                problems.append("baseline_wander")
                grade = grade if grade == "poor" else "fair"
        leads[name] = LeadQuality(grade, problems, float(noise[i]), float(wander[i]))
    reasons: list[str] = []
    for problem in ("lead_off", "saturation"):
        bad = [n for n, q in leads.items() if problem in q.problems]
        if bad:
            reasons.append(f"{problem.replace('_', '-')}: {', '.join(bad)}")
    poor = [n for n, q in leads.items() if q.grade == "poor"]
    if len(poor) > MAX_POOR_LEADS:
        reasons.append(f"too noisy to read: {', '.join(poor)}")
    return Quality(leads=leads, unsatisfactory=bool(reasons), reasons=reasons)
