"""The report as a PDF: A4, the reading centre's header, the patient and exam, findings and
impression, ECG measurements, who signed and when, and the verification code with a QR code of
``{public_base_url}/verify/{code}`` so another hospital can check a printout (结果互认).

Drawn with reportlab. Chinese text uses the CJK TrueType font the ECG printout uses
(:func:`remote_dx.ecg.render.cjk_font_path`; a .ttc collection is opened with ``subfontIndex``);
reportlab embeds the used glyphs as a subset with a ToUnicode map, so the text stays searchable
and copyable (``pdftotext`` gets the Chinese back). The QR code is reportlab's own widget.
Without a CJK font the PDF is still made, with Helvetica (Chinese then shows as blanks) — the
install scripts put ``fonts-wqy-microhei`` on every machine.
"""

from __future__ import annotations

import functools
import io
from datetime import datetime
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from reportlab.graphics.barcode.qr import QrCodeWidget
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import (
    Image,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from remote_dx.ecg.render import cjk_font_path
from remote_dx.reporting.export.codes import measurement_values
from remote_dx.reporting.export.view import SignedReportView, display_name

TITLE = "远程诊断报告"
LOCAL_TZ = ZoneInfo("Asia/Shanghai")  # shown in local time, stored in UTC
FONT_NAME = "RDX-CJK"
STATUS_ZH = {"preliminary": "初步报告（待审核）", "final": "正式报告", "amended": "更正报告"}
SIGNER_ROLE_ZH = {"author": "报告医师", "confirmer": "审核医师", "amender": "更正医师"}
SEX_ZH = {"M": "男", "F": "女", "O": "其他"}


@functools.lru_cache(maxsize=1)
def report_font() -> str:
    """The registered font name to write with: the CJK TrueType font, else Helvetica."""
    path = cjk_font_path()
    if path is None:
        return "Helvetica"
    if FONT_NAME not in pdfmetrics.getRegisteredFontNames():
        # subfontIndex picks the first face of a .ttc collection (wqy-microhei, Noto CJK).
        pdfmetrics.registerFont(TTFont(FONT_NAME, path, subfontIndex=0))
    return FONT_NAME


def verify_url(public_base_url: str, code: str) -> str:
    return f"{public_base_url.rstrip('/')}/verify/{code}"


def local_time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


def _date(value: str | None) -> str:
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def _age(birth_date: str | None, study_date: str | None) -> str:
    if not (birth_date and study_date and len(birth_date) == 8 and len(study_date) == 8):
        return ""
    try:
        b, s = int(birth_date), int(study_date)
    except ValueError:
        return ""
    years = (s - b) // 10000
    return f"{years}岁" if 0 <= years < 150 else ""


def _styles(font: str) -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("base", fontName=font, fontSize=10.5, leading=15, wordWrap="CJK")
    return {
        "base": base,
        "institution": ParagraphStyle(
            "institution", parent=base, fontSize=16, leading=22, alignment=TA_CENTER
        ),
        "title": ParagraphStyle("title", parent=base, fontSize=14, leading=20, alignment=TA_CENTER),
        "heading": ParagraphStyle(
            "heading", parent=base, fontSize=11.5, leading=18, spaceBefore=6, spaceAfter=2
        ),
        "small": ParagraphStyle("small", parent=base, fontSize=8.5, leading=11),
        "status": ParagraphStyle(
            "status",
            parent=base,
            fontSize=9,
            leading=12,
            alignment=TA_CENTER,
            textColor=colors.HexColor("#444444"),
        ),
    }


def _para(text: str, style: ParagraphStyle) -> Paragraph:
    # Paragraph takes mini-markup: escape the text and keep the reader's line breaks.
    return Paragraph(escape(text).replace("\n", "<br/>"), style)


def qr_drawing(data: str, size_mm: float = 28.0) -> Drawing:
    widget = QrCodeWidget(data, barLevel="M")
    x0, y0, x1, y1 = widget.getBounds()
    side = size_mm * mm
    drawing = Drawing(side, side, transform=[side / (x1 - x0), 0, 0, side / (y1 - y0), 0, 0])
    drawing.add(widget)
    return drawing


def render_report_pdf(
    view: SignedReportView, *, public_base_url: str, ecg_printout_png: bytes | None = None
) -> bytes:
    """The PDF bytes of ``view``; with ``ecg_printout_png`` the 12-lead printout is page 2."""
    font = report_font()
    st = _styles(font)
    story: list = [
        _para(view.pool_name, st["institution"]),
        _para(TITLE, st["title"]),
        _para(f"{STATUS_ZH.get(view.status, view.status)}　第 {view.version} 版", st["status"]),
        Spacer(1, 4 * mm),
    ]
    patient, study = view.patient, view.study
    exam = " ".join(
        dict.fromkeys(  # without repeats: an ECG's description is often just "ECG"
            x for x in (study.modality, study.body_part, study.description) if x
        )
    )
    cells = [
        (
            "姓名",
            display_name(patient.name),
            "性别",
            SEX_ZH.get(patient.sex or "", patient.sex or ""),
        ),
        ("病人号", patient.patient_id, "年龄", _age(patient.birth_date, study.study_date)),
        ("送检单位", view.origin_name, "检查日期", _date(study.study_date)),
        ("检查项目", exam, "检查号", study.accession_number or ""),
    ]
    table = Table(
        [[_para(c, st["base"]) for c in row] for row in cells],
        colWidths=[22 * mm, 68 * mm, 22 * mm, 58 * mm],
    )
    table.setStyle(
        TableStyle(
            [
                ("LINEABOVE", (0, 0), (-1, 0), 1, colors.black),
                ("LINEBELOW", (0, -1), (-1, -1), 1, colors.black),
                ("TEXTCOLOR", (0, 0), (0, -1), colors.HexColor("#555555")),
                ("TEXTCOLOR", (2, 0), (2, -1), colors.HexColor("#555555")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story += [table, Spacer(1, 3 * mm)]

    measured = measurement_values(view.measurements)
    if view.is_ecg and measured:
        story.append(_para("测量值", st["heading"]))
        header = [_para(m.label_zh, st["small"]) for m, _ in measured]
        values = [_para(f"{value:.0f} {m.unit_display}", st["small"]) for m, value in measured]
        width = 170 * mm / len(measured)
        mtable = Table([header, values], colWidths=[width] * len(measured))
        mtable.setStyle(
            TableStyle(
                [
                    ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#888888")),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                ]
            )
        )
        story.append(mtable)
    if view.findings:
        story += [_para("检查所见", st["heading"]), _para(view.findings, st["base"])]
    if view.statements:
        story += [
            _para("心电图诊断" if view.is_ecg else "诊断要点", st["heading"]),
            _para("\n".join(view.statements), st["base"]),
        ]
    story += [
        _para("诊断意见", st["heading"]),
        _para(view.impression or "（无）", st["base"]),
    ]
    if view.content.get("withdrawn"):
        story.append(_para("本报告已撤回，结果不再有效", st["heading"]))
    if view.amendment_reason:
        story += [_para("更正原因", st["heading"]), _para(view.amendment_reason, st["base"])]
    if view.critical:
        story.append(_para("★ 危急值：已按危急值流程通知送检单位", st["heading"]))

    signer_lines = [
        f"{SIGNER_ROLE_ZH.get(s.role, '报告医师')}：{s.name}"
        + (f"（{s.title}）" if s.title else "")
        + (f"　{s.institution}" if s.institution else "")
        + (f"　{local_time(s.signed_at)}" if s.signed_at else "")
        for s in view.signers
    ]
    code = view.verify_code or ""
    left = [_para(line, st["base"]) for line in signer_lines]
    left.append(_para(f"报告时间：{local_time(view.signed_at)}（北京时间）", st["base"]))
    if code:
        left += [
            Spacer(1, 2 * mm),
            _para(f"验证码：{code}", st["heading"]),
            _para(f"扫码或访问 {verify_url(public_base_url, code)} 核验本报告真伪", st["small"]),
        ]
    left.append(_para("本报告经数字签名，仅供临床参考；县域医共体成员单位结果互认。", st["small"]))
    sign_block = Table(
        [[left, qr_drawing(verify_url(public_base_url, code)) if code else ""]],
        colWidths=[136 * mm, 34 * mm],
    )
    sign_block.setStyle(
        TableStyle(
            [
                ("LINEABOVE", (0, 0), (-1, 0), 1, colors.black),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    story += [Spacer(1, 6 * mm), KeepTogether([sign_block])]

    if ecg_printout_png:
        image = Image(io.BytesIO(ecg_printout_png))
        scale = 180 * mm / image.imageWidth
        image.drawWidth, image.drawHeight = 180 * mm, image.imageHeight * scale
        story += [PageBreak(), _para("12 导联心电图", st["heading"]), image]

    buffer = io.BytesIO()
    name = display_name(patient.name)

    def footer(canvas, doc) -> None:  # type: ignore[no-untyped-def]
        canvas.saveState()
        canvas.setFont(font, 8)
        canvas.drawString(
            20 * mm, 12 * mm, f"{view.pool_name}　{name}　{patient.patient_id}　验证码 {code}"
        )
        canvas.drawRightString(190 * mm, 12 * mm, f"第 {doc.page} 页")
        canvas.restoreState()

    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title=f"{TITLE} {name} {study.study_date or ''}".strip(),
        author=view.pool_name,
        subject=f"Study {study.study_uid} report v{view.version}",
        creator="remote_dx",
    )
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buffer.getvalue()
