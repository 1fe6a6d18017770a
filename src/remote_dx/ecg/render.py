"""The standard 12-lead printout as PNG, SVG and PDF, and downsampled leads for the browser.

Page: A4 landscape (297 × 210 mm). Grid 270 × 160 mm of 1 mm squares with a heavier line every
5 mm, in the usual pink/red. Paper speed 25 mm/s, gain 10 mm/mV. Rows: I aVR V1 V4 / II aVL V2 V5 /
III aVF V3 V6 (each column 2.5 s: column k shows seconds 2.5k–2.5(k+1), as carts print), then a
full 10 s lead II rhythm strip. Each row starts with a 1 mV × 200 ms calibration pulse (10 mm
high, 5 mm wide). Header: patient, acquisition time, device and any measurements passed in.

Everything is laid out once in millimetres (``layout``) and drawn by three small back ends:
Pillow (PNG, default 200 dpi → 7.87 px/mm), hand-written SVG (mm user units) and matplotlib's
PDF backend (TrueType text embedded as Type 42, so the text — Chinese names included — can be
copied and searched). Chinese needs a CJK font on the machine (``fc-list :lang=zh``; Debian
``fonts-wqy-microhei`` or ``fonts-noto-cjk``); without one, non-Latin characters are replaced by
"?" instead of drawing empty boxes.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from remote_dx.ecg.model import ECG

PAGE_W_MM = 297.0
PAGE_H_MM = 210.0
GRID_LEFT = 13.5
GRID_TOP = 40.0
GRID_W = 270.0
GRID_H = 160.0
ROW_H = 40.0
PAPER_SPEED = 25.0  # mm/s
GAIN = 10.0  # mm/mV
CAL_W = 10.0  # room for the calibration pulse before each row's trace
TRACE_LEFT = GRID_LEFT + CAL_W
COLUMN_S = 2.5
ROWS = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_S = 10.0

MINOR = "#f6c3c8"
MAJOR = "#e8707d"
TRACE = "#000000"
TEXT = "#1a1a1a"
DEFAULT_DPI = 200

_CJK_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
_LATIN_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


@dataclass
class Text:
    x: float
    y: float  # baseline, mm from top
    text: str
    size: float  # mm (cap height is ~0.7 of it)
    bold: bool = False


@dataclass
class Layout:
    """The printout in millimetres, top-left origin (y downwards)."""

    minor: list[tuple[float, float, float, float]] = field(default_factory=list)
    major: list[tuple[float, float, float, float]] = field(default_factory=list)
    traces: list[np.ndarray] = field(default_factory=list)  # (n, 2) arrays of x, y in mm
    marks: list[tuple[float, float, float, float]] = field(default_factory=list)  # separators
    texts: list[Text] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def cjk_font_path() -> str | None:
    """A font file that covers Chinese, or None (then Chinese is not drawn)."""
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(
                ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        files = sorted(line.split(":")[0].strip() for line in out.splitlines() if line.strip())
        # Prefer a sans face (hei) over serif (song/ming) for a printout.
        files.sort(key=lambda f: (not any(k in f.lower() for k in ("hei", "sans")), f))
        for path in files:
            if Path(path).is_file() and path.lower().endswith((".ttf", ".ttc", ".otf")):
                return path
    return next((p for p in _CJK_CANDIDATES if Path(p).is_file()), None)


@functools.lru_cache(maxsize=1)
def _latin_font_path() -> str | None:
    return next((p for p in _LATIN_CANDIDATES if Path(p).is_file()), None)


def _font_path() -> str | None:
    return cjk_font_path() or _latin_font_path()


def _printable(text: str) -> str:
    if cjk_font_path():
        return text
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _segment(ecg: ECG, lead: str, start_s: float, seconds: float) -> np.ndarray | None:
    values = ecg.leads.get(lead)
    if values is None or ecg.sampling_rate <= 0:
        return None
    first = round(start_s * ecg.sampling_rate)
    last = min(len(values), round((start_s + seconds) * ecg.sampling_rate) + 1)
    if first >= last:
        return None
    return np.asarray(values[first:last], dtype=np.float64)


def _header_lines(ecg: ECG, measurements: dict[str, Any] | None, title: str | None) -> list[Text]:
    p = ecg.patient
    name = (p.name or "").replace("^", " ").strip() or "—"
    sex_age = " / ".join(
        part
        for part in (
            p.sex or "",
            f"{p.age_years:g} y" if p.age_years is not None else "",
        )
        if part
    )
    line1 = f"{name}    ID {p.patient_id or '—'}"
    if sex_age:
        line1 += f"    {sex_age}"
    if p.birth_date:
        line1 += f"    DOB {p.birth_date}"
    when = ecg.acquired_at.strftime("%Y-%m-%d %H:%M:%S") if ecg.acquired_at else "—"
    line2 = f"Acquired {when}    Device {ecg.device or '—'}    Source {ecg.source_format}"
    texts = [
        Text(GRID_LEFT, 12.0, _printable(title or "12-lead ECG"), 5.0, bold=True),
        Text(GRID_LEFT, 19.5, _printable(line1), 4.0),
        Text(GRID_LEFT, 26.0, _printable(line2), 3.2),
    ]
    if measurements:
        parts = [f"{k} {v}" for k, v in measurements.items() if v is not None and v != ""]
        texts.append(Text(GRID_LEFT, 32.5, _printable("    ".join(parts)), 3.2))
    texts.append(
        Text(
            GRID_LEFT,
            GRID_TOP + GRID_H + 5.5,
            f"{PAPER_SPEED:g} mm/s    {GAIN:g} mm/mV    {ecg.sampling_rate:g} Hz",
            3.0,
        )
    )
    return texts


def layout(
    ecg: ECG, *, measurements: dict[str, Any] | None = None, title: str | None = None
) -> Layout:
    """Lay the printout out in millimetres (shared by the PNG, SVG and PDF back ends)."""
    out = Layout()
    for i in range(int(GRID_W) + 1):
        x = GRID_LEFT + i
        (out.major if i % 5 == 0 else out.minor).append((x, GRID_TOP, x, GRID_TOP + GRID_H))
    for j in range(int(GRID_H) + 1):
        y = GRID_TOP + j
        (out.major if j % 5 == 0 else out.minor).append((GRID_LEFT, y, GRID_LEFT + GRID_W, y))

    rhythm_lead = "II" if "II" in ecg.leads else next(iter(ecg.leads), "II")
    rows: list[list[tuple[str, float, float]]] = [
        [(lead, k * COLUMN_S, COLUMN_S) for k, lead in enumerate(row)] for row in ROWS
    ]
    rows.append([(rhythm_lead, 0.0, RHYTHM_S)])

    for r, row in enumerate(rows):
        baseline = GRID_TOP + ROW_H * r + ROW_H * 0.6
        # Calibration pulse: 1 mV (10 mm) for 200 ms (5 mm).
        x0 = GRID_LEFT + 2.0
        pulse = np.array(
            [
                (x0, baseline),
                (x0 + 1.5, baseline),
                (x0 + 1.5, baseline - GAIN),
                (x0 + 1.5 + 0.2 * PAPER_SPEED, baseline - GAIN),
                (x0 + 1.5 + 0.2 * PAPER_SPEED, baseline),
                (TRACE_LEFT, baseline),
            ]
        )
        out.traces.append(pulse)
        for lead, start_s, seconds in row:
            x_start = TRACE_LEFT + start_s * PAPER_SPEED
            values = _segment(ecg, lead, start_s, seconds)
            label = lead if lead in ecg.leads else f"{lead} —"
            out.texts.append(Text(x_start + 1.0, baseline - 12.0, label, 3.5, bold=True))
            if start_s > 0 and len(row) > 1:
                out.marks.append((x_start, baseline - 4.0, x_start, baseline + 4.0))
            if values is None:
                continue
            t = np.arange(len(values)) / ecg.sampling_rate
            xs = x_start + t * PAPER_SPEED
            ys = baseline - values * GAIN
            ys = np.clip(ys, GRID_TOP, GRID_TOP + GRID_H)
            out.traces.append(np.column_stack([xs, ys]))
    out.texts.extend(_header_lines(ecg, measurements, title))
    return out


# --- PNG (Pillow) -------------------------------------------------------------------------------


def px_per_mm(dpi: int) -> float:
    return dpi / 25.4


def png_size(dpi: int = DEFAULT_DPI) -> tuple[int, int]:
    scale = px_per_mm(dpi)
    return round(PAGE_W_MM * scale), round(PAGE_H_MM * scale)


def render_png(
    ecg: ECG,
    *,
    measurements: dict[str, Any] | None = None,
    title: str | None = None,
    dpi: int = DEFAULT_DPI,
) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    if px_per_mm(dpi) < 4:
        raise ValueError(f"{dpi} dpi gives under 4 px per mm; the grid would not be legible")
    scale = px_per_mm(dpi)
    plan = layout(ecg, measurements=measurements, title=title)
    image = Image.new("RGB", png_size(dpi), "white")
    draw = ImageDraw.Draw(image)

    def px(x: float, y: float) -> tuple[float, float]:
        return x * scale, y * scale

    for x1, y1, x2, y2 in plan.minor:
        draw.line([px(x1, y1), px(x2, y2)], fill=MINOR, width=1)
    for x1, y1, x2, y2 in plan.major:
        draw.line([px(x1, y1), px(x2, y2)], fill=MAJOR, width=max(1, round(scale * 0.25)))
    for x1, y1, x2, y2 in plan.marks:
        draw.line([px(x1, y1), px(x2, y2)], fill=TRACE, width=max(1, round(scale * 0.2)))
    trace_width = max(1, round(scale * 0.25))
    for trace in plan.traces:
        points = [tuple(p) for p in (trace * scale).tolist()]
        draw.line(points, fill=TRACE, width=trace_width, joint="curve")

    font_file = _font_path()
    for text in plan.texts:
        size = max(8, round(text.size * scale))
        font = ImageFont.truetype(font_file, size) if font_file else ImageFont.load_default(size)
        draw.text(px(text.x, text.y), text.text, fill=TEXT, font=font, anchor="ls")
        if text.bold:  # a faux bold: the CJK faces have no bold weight
            draw.text(px(text.x + 0.12, text.y), text.text, fill=TEXT, font=font, anchor="ls")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", dpi=(dpi, dpi), optimize=False)
    return buffer.getvalue()


# --- SVG (hand-written) -------------------------------------------------------------------------


def _path(lines: list[tuple[float, float, float, float]]) -> str:
    return " ".join(f"M{x1:.2f} {y1:.2f}L{x2:.2f} {y2:.2f}" for x1, y1, x2, y2 in lines)


def render_svg(
    ecg: ECG, *, measurements: dict[str, Any] | None = None, title: str | None = None
) -> str:
    """The printout as SVG text; user units are millimetres."""
    plan = layout(ecg, measurements=measurements, title=title)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PAGE_W_MM:g}mm" '
        f'height="{PAGE_H_MM:g}mm" viewBox="0 0 {PAGE_W_MM:g} {PAGE_H_MM:g}">',
        f'<rect width="{PAGE_W_MM:g}" height="{PAGE_H_MM:g}" fill="#ffffff"/>',
        f'<path d="{_path(plan.minor)}" stroke="{MINOR}" stroke-width="0.1" fill="none"/>',
        f'<path d="{_path(plan.major)}" stroke="{MAJOR}" stroke-width="0.2" fill="none"/>',
        f'<path d="{_path(plan.marks)}" stroke="{TRACE}" stroke-width="0.2" fill="none"/>',
        f'<g fill="none" stroke="{TRACE}" stroke-width="0.25" stroke-linejoin="round">',
    ]
    for trace in plan.traces:
        points = " ".join(f"{x:.2f},{y:.2f}" for x, y in trace)
        parts.append(f'<polyline points="{points}"/>')
    parts.append("</g>")
    parts.append(
        f'<g fill="{TEXT}" font-family="WenQuanYi Micro Hei, Noto Sans CJK SC, '
        'Microsoft YaHei, SimHei, DejaVu Sans, sans-serif">'
    )
    for text in plan.texts:
        weight = ' font-weight="bold"' if text.bold else ""
        parts.append(
            f'<text x="{text.x:.2f}" y="{text.y:.2f}" font-size="{text.size:.2f}"{weight}>'
            f"{escape(text.text)}</text>"
        )
    parts.append("</g></svg>")
    return "\n".join(parts)


# --- PDF (matplotlib) ---------------------------------------------------------------------------


def render_pdf(
    ecg: ECG, *, measurements: dict[str, Any] | None = None, title: str | None = None
) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    plan = layout(ecg, measurements=measurements, title=title)
    inch = 25.4
    points_per_mm = 72 / inch
    with matplotlib.rc_context({"pdf.fonttype": 42}):
        figure = Figure(figsize=(PAGE_W_MM / inch, PAGE_H_MM / inch))
        FigureCanvasPdf(figure)
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_xlim(0, PAGE_W_MM)
        axes.set_ylim(PAGE_H_MM, 0)
        axes.axis("off")

        def segments(lines: list[tuple[float, float, float, float]]) -> list:
            return [[(x1, y1), (x2, y2)] for x1, y1, x2, y2 in lines]

        axes.add_collection(
            LineCollection(segments(plan.minor), colors=MINOR, linewidths=0.1 * points_per_mm)
        )
        axes.add_collection(
            LineCollection(segments(plan.major), colors=MAJOR, linewidths=0.2 * points_per_mm)
        )
        axes.add_collection(
            LineCollection(segments(plan.marks), colors=TRACE, linewidths=0.2 * points_per_mm)
        )
        axes.add_collection(
            LineCollection(
                [t.tolist() for t in plan.traces],
                colors=TRACE,
                linewidths=0.25 * points_per_mm,
                joinstyle="round",
            )
        )
        font_file = _font_path()
        for text in plan.texts:
            font = FontProperties(fname=font_file) if font_file else FontProperties()
            font.set_size(text.size * points_per_mm)
            if text.bold and not cjk_font_path():
                font.set_weight("bold")
            axes.text(text.x, text.y, text.text, fontproperties=font, color=TEXT, va="baseline")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="pdf")
    return buffer.getvalue()


def render(
    ecg: ECG,
    fmt: str,
    *,
    measurements: dict[str, Any] | None = None,
    title: str | None = None,
) -> tuple[bytes, str]:
    """(content, media type) for ``fmt`` in png, svg, pdf."""
    fmt = fmt.lower()
    if fmt == "png":
        return render_png(ecg, measurements=measurements, title=title), "image/png"
    if fmt == "svg":
        svg = render_svg(ecg, measurements=measurements, title=title)
        return svg.encode("utf-8"), "image/svg+xml"
    if fmt == "pdf":
        return render_pdf(ecg, measurements=measurements, title=title), "application/pdf"
    raise ValueError(f"unknown printout format {fmt!r} (png, svg or pdf)")


# --- Leads for the browser viewer ---------------------------------------------------------------


def downsample_leads(ecg: ECG, max_points: int = 5000) -> dict[str, Any]:
    """All leads as JSON-ready lists of at most ``max_points`` values each (mV, 4 decimals).

    Above the limit each bucket of samples contributes its minimum and maximum in the order they
    occur, so QRS peaks and pacing spikes survive (plain decimation would drop them); the result
    is a uniform series at ``sampling_rate`` (the effective rate after downsampling).
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    n = ecg.n_samples
    if n <= max_points:
        leads = {name: np.round(v.astype(np.float64), 4).tolist() for name, v in ecg.leads.items()}
        rate = ecg.sampling_rate
    else:
        buckets = max_points // 2
        edges = np.linspace(0, n, buckets + 1).astype(int)
        leads = {}
        for name, values in ecg.leads.items():
            out = np.empty(2 * buckets, dtype=np.float64)
            for b in range(buckets):
                chunk = values[edges[b] : edges[b + 1]]
                lo, hi = int(np.argmin(chunk)), int(np.argmax(chunk))
                first, second = (lo, hi) if lo <= hi else (hi, lo)
                out[2 * b], out[2 * b + 1] = chunk[first], chunk[second]
            leads[name] = np.round(out, 4).tolist()
        rate = 2 * buckets / ecg.duration_s
    return {
        "sampling_rate": rate,
        "original_sampling_rate": ecg.sampling_rate,
        "duration_s": ecg.duration_s,
        "n_points": len(next(iter(leads.values()))) if leads else 0,
        "units": "mV",
        "leads": leads,
    }


__all__ = [
    "DEFAULT_DPI",
    "cjk_font_path",
    "downsample_leads",
    "layout",
    "png_size",
    "px_per_mm",
    "render",
    "render_pdf",
    "render_png",
    "render_svg",
]
