"""Report templates per exam, their normal defaults, and the ECG template's pre-filling.

A template fixes which fields a report has and what a normal report says, so a reader edits
instead of typing: chest DX (胸部正位) and limb DX start from the usual normal wording, the ECG
template starts from the preliminary analysis (the reader's confirmed values where there are
some, else the machine's) and stays editable. The template is chosen from the study (modality,
body part, description); the reader may switch it.

``positive`` (abnormal, for statistics) and ``critical`` (危急值) are derived from the content
unless the reader set them: ECG by statement codes, imaging by whether every clause of the
impression is a "no abnormality" phrase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from remote_dx.core.models import ECGAnalysisRecord, Study
from remote_dx.ecg.analysis.statements import TEXTS

CHEST_FINDINGS = (
    "胸廓对称，气管居中。双肺纹理清晰，走行自然，双肺野内未见明显实质性病变。双肺门影不大。"
    "心影大小、形态未见异常。双侧膈面光整，肋膈角锐利。"
)
CHEST_IMPRESSION = "心肺膈未见明显异常。"
LIMB_FINDINGS = (
    "所示骨质结构完整，骨皮质连续，未见明显骨折征象及骨质破坏。关节间隙正常，关节面光整。"
    "周围软组织未见明显肿胀。"
)
LIMB_IMPRESSION = "所示骨关节未见明显异常。"


@dataclass(frozen=True)
class Template:
    code: str
    name: str
    name_en: str
    kind: str  # imaging | ecg
    modalities: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)


TEMPLATES: dict[str, Template] = {
    t.code: t
    for t in (
        Template(
            "chest-dx",
            "胸部正位 X 线",
            "Chest X-ray (PA)",
            "imaging",
            ("DX", "CR"),
            {"findings": CHEST_FINDINGS, "impression": CHEST_IMPRESSION},
        ),
        Template(
            "limb-dx",
            "四肢骨关节 X 线",
            "Limb X-ray",
            "imaging",
            ("DX", "CR"),
            {"findings": LIMB_FINDINGS, "impression": LIMB_IMPRESSION},
        ),
        Template(
            "imaging",
            "影像检查（通用）",
            "Imaging (generic)",
            "imaging",
            ("DX", "CR", "CT", "MR", "US", "MG", "RF", "XA"),
            {"findings": "", "impression": ""},
        ),
        Template(
            "ecg",
            "常规十二导联心电图",
            "12-lead resting ECG",
            "ecg",
            ("ECG",),
            {"findings": "", "impression": "", "measurements": {}, "statements": []},
        ),
    )
}

LIMB_PARTS = frozenset(
    {
        "HAND", "FOOT", "KNEE", "ANKLE", "ELBOW", "WRIST", "SHOULDER", "HIP", "ARM", "LEG",
        "EXTREMITY", "UPR EXTREMITY", "LWR EXTREMITY", "FEMUR", "TIBIA", "FIBULA", "HUMERUS",
        "RADIUS", "ULNA", "FINGER", "TOE", "FOREARM", "CALF", "THIGH", "CLAVICLE", "HEEL",
    }
)  # fmt: skip
LIMB_WORDS = (
    "四肢", "手", "足", "膝", "踝", "肘", "腕", "肩",
    "髋", "股骨", "胫", "腓", "肱", "尺桡", "指", "趾",
)  # fmt: skip
CHEST_WORDS = ("胸", "CHEST", "THORAX", "LUNG")

# Statement codes that say nothing abnormal; any other code makes an ECG report positive.
NORMAL_ECG_CODES = frozenset({"sinus"})
CRITICAL_ECG_CODES = frozenset(
    {
        "stemi_suspected",
        "critical_bradycardia",
        "critical_tachycardia",
        "critical_qtc",
        "long_pause",
    }
)
_NORMAL_CLAUSE = re.compile(
    r"(未见(明显)?(异常|病变|器质性病变)|无(明显)?异常|正常心电图|大致正常|正常范围|"
    r"no (acute )?(abnormality|abnormalities)|normal)",
    re.IGNORECASE,
)
_CLAUSES = re.compile(r"[；;。.\n，,]+")

MEASUREMENT_KEYS = ("heart_rate", "pr_ms", "qrs_ms", "qt_ms", "qtc_bazett_ms", "axis_deg")


class UnknownTemplate(LookupError):
    pass


def get_template(code: str) -> Template:
    try:
        return TEMPLATES[code]
    except KeyError:
        raise UnknownTemplate(
            f"unknown report template {code!r}; known: {', '.join(sorted(TEMPLATES))}"
        ) from None


def choose_template(modality: str | None, body_part: str | None, description: str | None) -> str:
    """The template a study starts with."""
    modality = (modality or "").upper()
    if modality == "ECG":
        return "ecg"
    text = f"{body_part or ''} {description or ''}".upper()
    if modality in ("DX", "CR", "DR", "RF", ""):
        if any(word in text for word in CHEST_WORDS):
            return "chest-dx"
        if (body_part or "").upper() in LIMB_PARTS or any(w in text for w in LIMB_WORDS):
            return "limb-dx"
    return "imaging"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return round(float(value), 1)
    except (TypeError, ValueError):
        return None


def ecg_prefill(record: ECGAnalysisRecord | None) -> dict[str, Any]:
    """The ECG template's content from the analysis: confirmed values over machine values."""
    machine = (record.result if record is not None else None) or {}
    confirmed = (record.confirmed if record is not None else None) or {}
    confirmed_m = confirmed.get("measurements") or {}
    measurements = {
        key: _num(confirmed_m.get(key))
        if confirmed_m.get(key) is not None
        else _num(machine.get(key))
        for key in MEASUREMENT_KEYS
    }
    rhythm = confirmed.get("rhythm") or machine.get("rhythm")
    statements = [
        {"code": s.get("code"), "zh": s.get("zh"), "en": s.get("en")}
        for s in (confirmed.get("statements") or machine.get("statements") or [])
        if isinstance(s, dict)
    ]
    critical_call = confirmed.get("critical")
    if critical_call is None:
        critical_call = bool((machine.get("critical") or {}).get("critical"))
    reader_said = any(v is not None for v in confirmed_m.values()) or bool(confirmed.get("rhythm"))
    return {
        "findings": ecg_findings_text(
            measurements, rhythm=confirmed.get("rhythm") or None, confirmed=reader_said
        ),
        "impression": ecg_impression_text(statements),
        "measurements": measurements,
        "rhythm": rhythm,
        "statements": statements,
        "critical": bool(critical_call),
        "positive": None,
        "withdrawn": False,
    }


CONFIRMED_LABEL = "（测量值经医师确认）"


def ecg_findings_text(
    m: dict[str, Any], *, rhythm: str | None = None, confirmed: bool = False
) -> str:
    """The findings sentence of an ECG report. ``rhythm`` is the reader's confirmed rhythm (a
    code such as ``sinus``, or free text); the machine's rhythm already opens the impression.
    ``confirmed`` labels the values as the reader's, so nobody signs them as machine output."""

    def fmt(key: str) -> str:
        value = m.get(key)
        return "—" if value is None else f"{value:.0f}"

    lead = f"{TEXTS.get(rhythm, (rhythm, ''))[0]}，" if rhythm else ""
    return (
        f"{lead}心率 {fmt('heart_rate')} 次/分，PR 间期 {fmt('pr_ms')} ms，"
        f"QRS 时限 {fmt('qrs_ms')} ms，QT/QTc {fmt('qt_ms')}/{fmt('qtc_bazett_ms')} ms，"
        f"QRS 电轴 {fmt('axis_deg')}°。" + (CONFIRMED_LABEL if confirmed else "")
    )


def ecg_impression_text(statements: list[dict[str, Any]]) -> str:
    texts = [s.get("zh") or TEXTS.get(str(s.get("code")), ("", ""))[0] for s in statements]
    texts = [t for t in texts if t]
    codes = {s.get("code") for s in statements}
    if texts and codes <= NORMAL_ECG_CODES:
        texts.append("正常心电图")
    return "；".join(texts) + ("。" if texts else "")


def initial_content(template: Template, ecg: ECGAnalysisRecord | None = None) -> dict[str, Any]:
    """The content a new report starts with."""
    if template.kind == "ecg":
        return ecg_prefill(ecg)
    return {
        "findings": template.defaults.get("findings", ""),
        "impression": template.defaults.get("impression", ""),
        "measurements": None,
        "rhythm": None,
        "statements": [],
        "critical": None,
        "positive": None,
        "withdrawn": False,
    }


def _impression_is_normal(impression: str) -> bool:
    clauses = [c.strip() for c in _CLAUSES.split(impression or "") if c.strip()]
    return bool(clauses) and all(_NORMAL_CLAUSE.search(c) for c in clauses)


def flags(template: Template, content: dict[str, Any]) -> tuple[bool | None, bool]:
    """(positive, critical) of a content: the reader's explicit values win."""
    codes = {str(s.get("code")) for s in content.get("statements") or [] if s.get("code")}
    critical = content.get("critical")
    if critical is None:
        critical = bool(codes & CRITICAL_ECG_CODES)
    positive = content.get("positive")
    if positive is None:
        if critical:
            positive = True
        elif template.kind == "ecg" and codes:
            rhythm = content.get("rhythm")
            positive = bool(codes - NORMAL_ECG_CODES) or rhythm not in (None, "sinus")
        elif (content.get("impression") or "").strip():
            positive = not _impression_is_normal(content["impression"])
        else:
            positive = None
    return positive, bool(critical)


def study_template(study: Study, modality: str | None) -> str:
    return choose_template(modality, study.body_part, study.description)
