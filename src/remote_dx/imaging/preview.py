"""Preview images: one small PNG per study for the worklist (not for diagnosis).

Pixel data of any transfer syntax pydicom can decode with its plugins (pylibjpeg: JPEG baseline /
lossless, JPEG-LS, JPEG 2000, RLE; GDCM where installed) is turned into display values by the
grayscale pipeline of PS3.3 C.11 / PS3.4 N.2:

1. Modality LUT / Rescale Slope & Intercept (C.11.1) → modality values (e.g. HU);
2. VOI LUT Sequence or Window Center/Width with its VOI LUT Function (C.11.2); when the header
   has neither, a robust window from the 0.5th–99.5th percentiles of the image;
3. Presentation: MONOCHROME1 is inverted so that air is black as on every other preview
   (C.7.6.3.1.2).

Large images are box-averaged to about the preview size before windowing: the mean keeps the
noise down (anti-aliasing) and a 2048×2048 radiograph is windowed on 512×512 values only.
Colour images (RGB, YBR — decoded to RGB by pydicom — and PALETTE COLOR) are scaled to 8 bits.

ECG and other waveforms (PS3.3 C.10.9) get a simple thumbnail of up to three leads on a grid.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

log = logging.getLogger(__name__)

PREVIEW_SIZE = 512
_MINOR = (250, 200, 200)
_MAJOR = (240, 150, 150)


class PreviewError(Exception):
    """The instance's pixel data or waveform cannot be turned into a preview."""


def has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def has_waveform(ds: Dataset) -> bool:
    return "WaveformSequence" in ds


def render_preview(ds: Dataset, max_size: int = PREVIEW_SIZE) -> bytes:
    """A PNG of the instance: its (middle) image frame, or its waveform. Raises PreviewError."""
    if has_pixels(ds):
        image = image_preview(ds, max_size)
    elif has_waveform(ds):
        image = waveform_preview(ds, width=max_size)
    else:
        raise PreviewError("the instance has neither pixel data nor a waveform")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _first(value: object) -> float:
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _decode_frame(ds: Dataset) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        if frames > 1:
            return pixel_array(ds, index=frames // 2)
        return ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        syntax = getattr(ds.file_meta, "TransferSyntaxUID", None) if "file_meta" in ds else None
        name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
        raise PreviewError(f"cannot decode the pixel data ({name}): {exc}") from exc


def _box_reduce(arr: np.ndarray, max_size: int) -> np.ndarray:
    """Average ``factor×factor`` blocks so the longer side is about ``max_size`` (or less)."""
    factor = math.ceil(max(arr.shape[0], arr.shape[1]) / max_size)
    if factor <= 1:
        return arr.astype(np.float32)
    rows = arr.shape[0] // factor * factor
    cols = arr.shape[1] // factor * factor
    cropped = arr[:rows, :cols].astype(np.float32)
    shape = (rows // factor, factor, cols // factor, factor, *arr.shape[2:])
    return cropped.reshape(shape).mean(axis=(1, 3))


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality values → [0, 1] display values (PS3.3 C.11.2.1.2 and C.11.2.1.3)."""
    center = ds.get("WindowCenter")
    width = ds.get("WindowWidth")
    if center is not None and width is not None:
        try:
            c, w = _first(center), _first(width)
        except (TypeError, ValueError, IndexError):
            c = w = float("nan")
        if math.isfinite(c) and math.isfinite(w) and w >= 1:
            function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
            if function == "SIGMOID":
                return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
            if function == "LINEAR_EXACT":
                return np.clip((values - (c - w / 2)) / w, 0.0, 1.0)
            if w > 1:
                return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
    return _percentile_window(values)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def image_preview(ds: Dataset, max_size: int = PREVIEW_SIZE) -> Image.Image:
    """The display image of one instance (middle frame for multi-frame objects)."""
    arr = _decode_frame(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        photometric, samples = "RGB", 3
    if samples > 1 or arr.ndim == 3:
        rgb = _box_reduce(arr, max_size)
        top = float(rgb.max()) if rgb.size else 0.0
        scale = 255.0 / top if top > 255.0 else 1.0
        image = Image.fromarray(np.clip(rgb * scale, 0, 255).astype(np.uint8), mode="RGB")
    else:
        if "VOILUTSequence" in ds:
            # A VOI LUT maps stored → display values with a table; apply it at full size, then
            # treat its output range as the display range.
            lut_out = apply_voi_lut(apply_modality_lut(arr, ds), ds, prefer_lut=True)
            values = _box_reduce(lut_out, max_size)
            low, high = float(values.min()), float(values.max())
            display = (values - low) / (high - low) if high > low else np.zeros_like(values)
        else:
            if "ModalityLUTSequence" in ds:
                values = _box_reduce(apply_modality_lut(arr, ds).astype(np.float32), max_size)
            else:
                # Rescale is linear, so reducing first and rescaling after is exact (and cheap).
                slope = float(ds.get("RescaleSlope", 1) or 1)
                intercept = float(ds.get("RescaleIntercept", 0) or 0)
                values = _box_reduce(arr, max_size) * slope + intercept
            display = _window(values, ds)
        if photometric == "MONOCHROME1":
            display = 1.0 - display
        image = Image.fromarray((display * 255.0 + 0.5).astype(np.uint8), mode="L")

    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    return image


def _lead_labels(group: Dataset) -> list[str]:
    labels = []
    for index, channel in enumerate(group.get("ChannelDefinitionSequence") or []):
        label = ""
        source = channel.get("ChannelSourceSequence")
        if source:
            label = str(source[0].get("CodeMeaning") or "")
        # "Lead II", "I (Einthoven)" → "II", "I"
        label = label.split("(")[0].replace("Lead", "").strip()
        labels.append(label or str(channel.get("ChannelLabel") or index))
    return labels


def waveform_preview(
    ds: Dataset, width: int = PREVIEW_SIZE, seconds: float = 10.0, leads: int = 3
) -> Image.Image:
    """Up to ``leads`` channels of the first waveform group as black traces on an ECG grid."""
    try:
        group = ds.WaveformSequence[0]
        data = ds.waveform_array(0)  # samples × channels, in the channels' units
        rate = float(group.SamplingFrequency)
    except Exception as exc:  # malformed waveform modules fail in many ways
        raise PreviewError(f"cannot read the waveform: {exc}") from exc
    labels = _lead_labels(group)
    # Lead II is the rhythm strip readers look at first; show it first when present.
    upper = [label.upper() for label in labels]
    preferred = [upper.index(name) for name in ("II", "I", "V1") if name in upper]
    rest = [index for index in range(data.shape[1]) if index not in preferred]
    chosen = (preferred + rest)[:leads]
    n = min(data.shape[0], int(seconds * rate)) if rate > 0 else data.shape[0]
    band = max(60, width // 4)
    height = band * len(chosen)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    step = max(1, width // 50)  # small squares; every fifth line darker, as on ECG paper
    for x in range(0, width, step):
        draw.line([(x, 0), (x, height)], fill=_MINOR if x % (step * 5) else _MAJOR)
    for y in range(0, height, step):
        draw.line([(0, y), (width, y)], fill=_MINOR if y % (step * 5) else _MAJOR)
    xs = np.linspace(0, width - 1, n)
    for row, channel in enumerate(chosen):
        trace = np.nan_to_num(data[:n, channel].astype(np.float64))
        trace = trace - np.median(trace)
        span = float(np.percentile(np.abs(trace), 99.5)) or 1.0
        middle = row * band + band / 2
        ys = middle - trace / span * (band * 0.45)
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill="black", width=1)
        if channel < len(labels):
            draw.text((4, row * band + 2), labels[channel], fill="black")
    return image
