"""Machine statements: a stable code with Chinese and English text.

The codes are the contract with the report and the worklist (the reader's confirmed statements
are stored beside these, never over them)."""

from __future__ import annotations

TEXTS: dict[str, tuple[str, str]] = {
    "sinus": ("窦性心律", "Sinus rhythm"),
    "sinus_brady": ("窦性心动过缓", "Sinus bradycardia"),
    "sinus_tachy": ("窦性心动过速", "Sinus tachycardia"),
    "afib": ("疑似心房颤动", "Suspected atrial fibrillation"),
    "aflutter": ("疑似心房扑动", "Suspected atrial flutter"),
    "paced": ("起搏心律", "Paced rhythm"),
    "other": ("其他心律（未分类）", "Other rhythm (not classified)"),
    "irregular_rhythm": ("心律不齐", "Irregular rhythm"),
    "pause": ("心搏停顿（> 2.0 s）", "Pause (> 2.0 s)"),
    "long_pause": ("长间歇（≥ 3.0 s）", "Long pause (≥ 3.0 s)"),
    "premature_beats": ("早搏", "Premature beats"),
    "frequent_ectopy": ("频发早搏", "Frequent ectopic beats"),
    "first_degree_av_block": ("一度房室传导阻滞", "First-degree AV block"),
    "short_pr": ("PR 间期缩短", "Short PR interval"),
    "wide_qrs": ("QRS 波增宽", "Wide QRS complex"),
    "prolonged_qtc": ("QTc 延长", "Prolonged QTc"),
    "left_axis_deviation": ("电轴左偏", "Left axis deviation"),
    "right_axis_deviation": ("电轴右偏", "Right axis deviation"),
    "extreme_axis": ("电轴极度偏移", "Extreme axis deviation"),
    "st_elevation": ("ST 段抬高", "ST elevation"),
    "st_depression": ("ST 段压低", "ST depression"),
    "stemi_suspected": ("疑似急性 ST 段抬高型心肌梗死", "Suspected acute STEMI"),
    "critical_bradycardia": ("危急值：心率 < 40 次/分", "Critical: heart rate < 40 /min"),
    "critical_tachycardia": ("危急值：心率 > 150 次/分", "Critical: heart rate > 150 /min"),
    "critical_qtc": ("危急值：QTc > 500 ms", "Critical: QTc > 500 ms"),
    "technically_unsatisfactory": (
        "技术不合格，请重新采集",
        "Technically unsatisfactory, re-acquire",
    ),
    "no_beats": ("未检出 QRS 波", "No QRS complexes detected"),
}


def statement(code: str, detail: str | None = None) -> dict[str, str]:
    """{"code", "zh", "en"}; ``detail`` (e.g. the leads) is appended to both texts."""
    zh, en = TEXTS[code]
    if detail:
        zh, en = f"{zh}（{detail}）", f"{en} ({detail})"
    return {"code": code, "zh": zh, "en": en}
