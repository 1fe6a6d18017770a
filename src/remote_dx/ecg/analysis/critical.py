"""Suspected STEMI and other critical values.

STEMI (Thygesen K. et al., Fourth Universal Definition of Myocardial Infarction (2018),
Circulation 2018;138:e618–e651, Table 3 "ECG manifestations of acute myocardial ischaemia"):
new ST elevation at the J point in two contiguous leads with the cut-points ≥ 1 mm (0.1 mV) in
all leads other than V2–V3, where the cut-points are ≥ 2 mm in men ≥ 40 years, ≥ 2.5 mm in men
< 40 years, or ≥ 1.5 mm in women regardless of age. A single ECG cannot tell "new", hence
"suspected". When sex or age is unknown the lowest V2–V3 cut-point (1.5 mm) is used: a missed
STEMI costs more than a false alert.

Contiguity ("contiguous leads" = leads looking at the same region, 4th UDMI, and the lead
groups of the 2017 ESC STEMI guideline, Ibanez et al., Eur Heart J 2018;39:119): any two leads
of the inferior group (II, III, aVF) or of the lateral group (I, aVL, V5, V6), and neighbouring
precordial leads (V1–V2, V2–V3, V3–V4, V4–V5, V5–V6; anterior/septal). ST elevation in aVR
with widespread ST depression is left to the reader.

Other critical values (the hospital's critical-value list for ECG): heart rate < 40 or > 150
/min, a pause ≥ 3.0 s, QTc > 500 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ST_CUTPOINT_MV = 0.1
_GROUPS = (("II", "III", "aVF"), ("I", "aVL", "V5", "V6"))
CONTIGUOUS_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (g[i], g[j]) for g in _GROUPS for i in range(len(g)) for j in range(i + 1, len(g))
) + tuple((f"V{k}", f"V{k + 1}") for k in range(1, 6))
TERRITORY = {
    "aVL": "lateral",
    "I": "lateral",
    "II": "inferior",
    "aVF": "inferior",
    "III": "inferior",
    "V1": "anterior",
    "V2": "anterior",
    "V3": "anterior",
    "V4": "anterior",
    "V5": "lateral",
    "V6": "lateral",
}
HR_LOW, HR_HIGH = 40.0, 150.0
PAUSE_CRITICAL_S = 3.0
QTC_CRITICAL_MS = 500.0


def v2v3_cutpoint(sex: str | None, age_years: float | None) -> float:
    """ST elevation cut-point (mV) for V2 and V3 by sex and age (4th UDMI)."""
    sex = (sex or "").upper()[:1]
    if sex == "M" and age_years is not None:
        return 0.2 if age_years >= 40 else 0.25
    return 0.15  # women, or sex/age unknown: the lowest cut-point


def stemi_leads(st_j_mv: dict[str, float], sex: str | None, age: float | None) -> list[str]:
    """Leads meeting the cut-point that have a contiguous neighbour also meeting it."""
    v23 = v2v3_cutpoint(sex, age)

    def over(lead: str) -> bool:
        value = st_j_mv.get(lead)
        if value is None:
            return False
        return value >= (v23 if lead in ("V2", "V3") else ST_CUTPOINT_MV) - 1e-9

    hits: set[str] = set()
    for a, b in CONTIGUOUS_PAIRS:
        if over(a) and over(b):
            hits.update((a, b))
    order = list(TERRITORY)
    return sorted(hits, key=order.index)


@dataclass
class Critical:
    critical: bool = False
    reasons: list[dict[str, str]] = field(default_factory=list)
    stemi_leads: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "critical": self.critical,
            "reasons": list(self.reasons),
            "stemi_leads": list(self.stemi_leads),
        }


def evaluate(
    *,
    st_j_mv: dict[str, float],
    sex: str | None,
    age: float | None,
    heart_rate: float | None,
    pauses_s: list[float],
    qtc_ms: float | None,
) -> Critical:
    from remote_dx.ecg.analysis.statements import statement

    out = Critical()
    leads = stemi_leads(st_j_mv, sex, age)
    if leads:
        territories = sorted({TERRITORY[lead] for lead in leads})
        out.stemi_leads = leads
        detail = f"{'/'.join(territories)}: {', '.join(leads)}"
        out.reasons.append(statement("stemi_suspected", detail))
    if heart_rate is not None and heart_rate < HR_LOW:
        out.reasons.append(statement("critical_bradycardia", f"{heart_rate:.0f}/min"))
    if heart_rate is not None and heart_rate > HR_HIGH:
        out.reasons.append(statement("critical_tachycardia", f"{heart_rate:.0f}/min"))
    long = [p for p in pauses_s if p >= PAUSE_CRITICAL_S]
    if long:
        out.reasons.append(statement("long_pause", f"{max(long):.1f} s"))
    if qtc_ms is not None and qtc_ms > QTC_CRITICAL_MS:
        out.reasons.append(statement("critical_qtc", f"{qtc_ms:.0f} ms"))
    out.critical = bool(out.reasons)
    return out
