"""WFDB records (PhysioNet): a ``.hea`` header plus the signal file(s) it names → ECG.

The header's record line gives the sampling frequency and length, each signal line the file,
format, ADC gain and baseline, units and lead name (WFDB "header(5)" format). ``wfdb.rdrecord``
does the decoding (formats 16, 212, 80, 24, 32…) from a private temporary folder; the checks
around it give the sender a clear message instead of a numpy error:

* the header must name its sampling frequency (WFDB's silent default of 250 Hz is refused: a
  header without one is a broken export, and a wrong rate corrupts every interval);
* every signal file the header names must have been sent;
* signal files shorter than the header's sample count are truncated uploads.

LUDB headers carry ``#<age>: 51`` / ``#<sex>: F`` comments, MIT-BIH ``# 69 M …``; both are read.
"""

from __future__ import annotations

import re
import tempfile
from datetime import datetime
from pathlib import Path, PurePath

import numpy as np
import wfdb

from remote_dx.ecg.model import ECG, ECGError, PatientInfo
from remote_dx.ecg.readers._common import finish, lead_name, unit_scale_to_mv

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def read_wfdb(files: list[tuple[str, bytes]]) -> ECG:
    """Read one WFDB record from its header and signal files (names as uploaded)."""
    by_name = {PurePath(name).name: data for name, data in files}
    headers = [n for n in by_name if n.lower().endswith(".hea")]
    if len(headers) != 1:
        raise ECGError(f"WFDB upload needs exactly one .hea header, got {len(headers)}")
    header_name = headers[0]
    record_name = header_name[: -len(".hea")]
    header_text = _decode_header(by_name[header_name], header_name)
    record_line, signal_lines, comments = _split_header(header_text, header_name)

    fields = record_line.split()
    if len(fields) < 3:
        raise ECGError(
            f"{header_name}: record line {record_line!r} gives no sampling frequency "
            "(expected 'name n_signals frequency n_samples')"
        )
    rate_field = fields[2].split("/")[0].split("(")[0]
    try:
        rate = float(rate_field)
    except ValueError:
        raise ECGError(f"{header_name}: sampling frequency {fields[2]!r} is not a number") from None
    if rate <= 0:
        raise ECGError(f"{header_name}: sampling frequency {rate:g} Hz is not positive")

    needed = sorted({line.split()[0] for line in signal_lines})
    for file_name in needed:
        if not _SAFE_NAME.match(file_name) or file_name == header_name:
            raise ECGError(f"{header_name}: signal file name {file_name!r} is not allowed")
        if file_name not in by_name and file_name != "~":
            raise ECGError(f"{header_name} names signal file {file_name}, which was not sent")

    expected = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
    if expected is not None:
        _check_sizes(signal_lines, by_name, expected, header_name)

    with tempfile.TemporaryDirectory(prefix="rdx-wfdb-") as folder:
        for file_name in [header_name, *needed]:
            if file_name in by_name:
                (Path(folder) / file_name).write_bytes(by_name[file_name])
        try:
            record = wfdb.rdrecord(str(Path(folder) / record_name), physical=True)
        except Exception as exc:
            raise ECGError(f"{record_name}: WFDB record cannot be read ({exc})") from exc

    signal = record.p_signal
    if signal is None or signal.size == 0:
        raise ECGError(f"{record_name}: WFDB record holds no samples (signal file empty?)")
    if expected is not None and signal.shape[0] < expected:
        raise ECGError(
            f"{record_name}: signal file is truncated ({signal.shape[0]} of {expected} samples "
            "per lead)"
        )

    leads: dict[str, np.ndarray] = {}
    for column, (label, unit) in enumerate(zip(record.sig_name, record.units, strict=True)):
        name = lead_name(label)
        scale = unit_scale_to_mv(unit or "mV", what=f"{record_name} lead {label}")
        if name in leads:
            name = f"{name} ({column + 1})"
        leads[name] = (signal[:, column].astype(np.float64) * scale).astype(np.float32)

    acquired = None
    if record.base_date is not None:
        acquired = datetime.combine(record.base_date, record.base_time or datetime.min.time())

    ecg = ECG(
        leads=leads,
        sampling_rate=rate,
        patient=_patient(comments),
        acquired_at=acquired,
        source_format="wfdb",
    )
    return finish(ecg)


# Bytes per sample of the common WFDB storage formats (signal(5)).
_BYTES_PER_SAMPLE = {8: 1.0, 16: 2.0, 61: 2.0, 80: 1.0, 160: 2.0, 212: 1.5, 24: 3.0, 32: 4.0}


def _check_sizes(
    signal_lines: list[str], files: dict[str, bytes], samples: int, header_name: str
) -> None:
    """Refuse signal files shorter than the header's sample count (a cut-off upload)."""
    per_file: dict[str, tuple[float, int]] = {}
    for line in signal_lines:
        parts = line.split()
        if len(parts) < 2:
            raise ECGError(f"{header_name}: signal line {line!r} has no storage format")
        match = re.match(r"^(\d+)(?:x\d+)?(?::\d+)?(?:\+(\d+))?$", parts[1])
        if not match:
            raise ECGError(f"{header_name}: storage format {parts[1]!r} not understood")
        fmt, offset = int(match.group(1)), int(match.group(2) or 0)
        width = _BYTES_PER_SAMPLE.get(fmt)
        if width is None:
            continue  # compressed/rare formats: let wfdb judge
        total, start = per_file.get(parts[0], (0.0, offset))
        per_file[parts[0]] = (total + width, max(start, offset))
    for file_name, (bytes_per_frame, offset) in per_file.items():
        needed = offset + int(bytes_per_frame * samples)
        have = len(files.get(file_name, b""))
        if have < needed:
            raise ECGError(
                f"{file_name} is truncated: {have} bytes, but the header's {samples} samples "
                f"need {needed}"
            )


def _decode_header(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return data.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise ECGError(f"{name}: header is not text") from None


def _split_header(text: str, name: str) -> tuple[str, list[str], list[str]]:
    lines = [line.strip() for line in text.splitlines()]
    comments = [line[1:].strip() for line in lines if line.startswith("#")]
    content = [line for line in lines if line and not line.startswith("#")]
    if not content:
        raise ECGError(f"{name}: empty WFDB header")
    record_line, signal_lines = content[0], content[1:]
    fields = record_line.split()
    try:
        n_signals = int(fields[1]) if len(fields) > 1 else 0
    except ValueError:
        raise ECGError(f"{name}: record line {record_line!r} is not a WFDB record line") from None
    if n_signals <= 0:
        raise ECGError(f"{name}: header declares no signals")
    if "/" in fields[0]:
        raise ECGError(f"{name}: multi-segment WFDB records are not supported")
    if len(signal_lines) < n_signals:
        raise ECGError(
            f"{name}: header declares {n_signals} signals but describes {len(signal_lines)}"
        )
    return record_line, signal_lines[:n_signals], comments


def _patient(comments: list[str]) -> PatientInfo:
    patient = PatientInfo()
    for comment in comments:
        tagged = re.match(r"^<(age|sex)>:\s*(\S+)", comment, re.IGNORECASE)
        if tagged:
            key, value = tagged.group(1).lower(), tagged.group(2)
            if key == "age" and value.replace(".", "", 1).isdigit():
                patient.age_years = float(value)
            elif key == "sex" and value[:1].upper() in "MF":
                patient.sex = value[:1].upper()
            continue
        mitbih = re.match(r"^(\d{1,3})\s+([MF])\b", comment)
        if mitbih and patient.age_years is None:
            patient.age_years = float(mitbih.group(1))
            patient.sex = mitbih.group(2)
    return patient
