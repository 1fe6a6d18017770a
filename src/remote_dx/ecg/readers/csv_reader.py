"""CSV ECG: a table a township technician can make in Excel (文件 → 另存为 → CSV).

Layout::

    # sampling_rate=500; units=uV
    I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6
    -12,35,47,-11,-29,41,-80,-15,22,61,70,43
    ...

* One header row of lead names (I, II, III, aVR/AVR, aVL, aVF, V1–V6; "Lead II", "MLII" work);
  any subset is accepted — a 2-lead or 8-lead table is an ECG too (with I and II present, the other
  limb leads are derived when missing).
* Sampling rate and units, either in metadata lines before the header — ``# key=value`` pairs
  separated by ``;`` or ``,`` (Excel may quote the cell or add trailing commas: both fine), keys
  ``sampling_rate`` (or ``fs``, ``rate``, ``采样率``; "500Hz" fine) and ``units`` (or ``unit``,
  ``单位``; ``uV``, ``mV`` or ``V``) — or as the upload's form/query parameters ``sampling_rate``
  and ``units``. When both are given they must agree.
* An optional first column ``time``/``time_s``/``t`` (seconds) or ``time_ms`` (milliseconds) is
  allowed; it gives the sampling rate when none is stated, and must match it when one is.
* Separator comma, semicolon or tab; encoding UTF-8 (with or without BOM) or GB18030 (what
  Chinese Excel writes by default).
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from remote_dx.ecg.model import ECG, STANDARD_LEADS, ECGError
from remote_dx.ecg.readers._common import finish, lead_name, unit_scale_to_mv

_RATE_KEYS = {"sampling_rate", "samplingrate", "sample_rate", "fs", "rate", "hz", "采样率"}
_UNIT_KEYS = {"units", "unit", "单位"}
_TIME_COLUMNS = {"time": 1.0, "time_s": 1.0, "t": 1.0, "seconds": 1.0, "time_ms": 1e-3, "ms": 1e-3}
_KNOWN = {name.upper() for name in STANDARD_LEADS} | {"-AVR"}


def looks_like_csv(name: str, data: bytes) -> bool:
    if name.lower().endswith((".csv", ".tsv", ".txt")):
        return True
    try:
        head = _decode(data[:4096], name).splitlines()
    except ECGError:
        return False
    return any(_header_cells(line) for line in head[:10])


def read_csv(
    data: bytes,
    *,
    name: str = "ecg.csv",
    sampling_rate: float | None = None,
    units: str | None = None,
) -> ECG:
    text = _decode(data, name)
    lines = text.splitlines()
    meta: dict[str, str] = {}
    header_at = None
    for index, line in enumerate(lines):
        stripped = line.strip().strip('"').strip()
        if not stripped or stripped.replace(",", "").replace(";", "").strip() == "":
            continue
        if stripped.startswith("#") or "=" in stripped.split(",")[0]:
            meta.update(_metadata(stripped.lstrip("#")))
            continue
        header_at = index
        break
    if header_at is None:
        raise ECGError(f"{name}: no header row with lead names")

    dialect_delimiter = _delimiter(lines[header_at])
    rows = list(csv.reader(io.StringIO("\n".join(lines[header_at:])), delimiter=dialect_delimiter))
    header = [cell.strip() for cell in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise ECGError(f"{name}: header row but no samples")

    time_scale = _TIME_COLUMNS.get(header[0].lower()) if header else None
    columns = header[1:] if time_scale else header
    offset = 1 if time_scale else 0
    names = [lead_name(c) for c in columns]
    unknown = [c for c, n in zip(columns, names, strict=True) if n.upper() not in _KNOWN]
    if unknown or not names:
        raise ECGError(
            f"{name}: header {', '.join(header)!r} — column(s) {', '.join(unknown) or '(none)'} "
            "are not lead names (use I, II, III, aVR, aVL, aVF, V1–V6)"
        )
    if len(set(names)) != len(names):
        raise ECGError(f"{name}: a lead appears twice in the header ({', '.join(columns)})")

    matrix = np.empty((len(body), len(header)), dtype=np.float64)
    for row_number, row in enumerate(body, start=header_at + 2):
        if len(row) < len(header):
            raise ECGError(
                f"{name}: line {row_number} has {len(row)} values, the header has {len(header)}"
            )
        for column, cell in enumerate(row[: len(header)]):
            cell = cell.strip()
            if not cell:
                raise ECGError(f"{name}: line {row_number}, column {header[column]} is empty")
            try:
                matrix[row_number - header_at - 2, column] = float(cell.replace(",", "."))
            except ValueError:
                raise ECGError(
                    f"{name}: line {row_number}, column {header[column]}: {cell!r} is not a number"
                ) from None

    rate = _rate(meta, sampling_rate, name)
    if time_scale:
        steps = np.diff(matrix[:, 0]) * time_scale
        if len(steps) == 0 or np.median(steps) <= 0:
            raise ECGError(f"{name}: time column does not increase")
        from_time = 1.0 / float(np.median(steps))
        if rate is None:
            rate = round(from_time, 3)
        elif abs(from_time - rate) > 0.01 * rate:
            raise ECGError(
                f"{name}: time column says {from_time:.1f} Hz, the stated sampling rate {rate:g} Hz"
            )
    if rate is None:
        raise ECGError(
            f"{name}: sampling rate missing — add a first line '# sampling_rate=500; units=uV' "
            "or send sampling_rate with the upload"
        )
    unit = _unit(meta, units, name)
    scale = unit_scale_to_mv(unit, what=name)
    leads = {
        lead: (matrix[:, offset + i] * scale).astype(np.float32) for i, lead in enumerate(names)
    }
    return finish(ECG(leads=leads, sampling_rate=rate, source_format="csv"))


def _decode(data: bytes, name: str) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ECGError(f"{name}: text is neither UTF-8 nor GB18030")


def _delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _header_cells(line: str) -> bool:
    cells = [c.strip().strip('"') for c in re.split(r"[,;\t]", line) if c.strip()]
    known = [c for c in cells if lead_name(c).upper() in _KNOWN]
    return len(known) >= 1 and len(known) >= len(cells) - 1


def _metadata(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in re.split(r"[;,\t]", text):
        if "=" in part:
            key, value = part.split("=", 1)
        elif ":" in part:
            key, value = part.split(":", 1)
        else:
            continue
        pairs[key.strip().strip('"').lower()] = value.strip().strip('"')
    return pairs


def _rate(meta: dict[str, str], given: float | None, name: str) -> float | None:
    stated = next((meta[k] for k in meta if k in _RATE_KEYS), None)
    from_file = None
    if stated is not None:
        match = re.match(r"^\s*([0-9.]+)\s*(hz)?\s*$", stated, re.IGNORECASE)
        if not match:
            raise ECGError(f"{name}: sampling rate {stated!r} is not a number of Hz")
        from_file = float(match.group(1))
    if from_file is not None and given is not None and abs(from_file - given) > 1e-6:
        raise ECGError(f"{name}: the file says {from_file:g} Hz but the upload says {given:g} Hz")
    return from_file if from_file is not None else given


def _unit(meta: dict[str, str], given: str | None, name: str) -> str:
    stated = next((meta[k] for k in meta if k in _UNIT_KEYS), None)
    if stated and given and stated.strip().lower() != given.strip().lower():
        raise ECGError(f"{name}: the file says units {stated} but the upload says {given}")
    unit = stated or given
    if not unit:
        raise ECGError(
            f"{name}: units missing — add 'units=uV' (or mV) to the first line or the upload"
        )
    return unit
