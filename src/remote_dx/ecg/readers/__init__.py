"""ECG file readers: every format a township cart exports → one internal ``ECG``.

``read_ecg(files)`` takes the uploaded parts of ONE recording as (file name, bytes) and picks
the reader from names and content (first rule that matches):

1. any ``.hea`` part → WFDB (header + the signal files it names; other parts must be those);
2. ``DICM`` at byte 128, or a ``.dcm``/``.dicom`` name → DICOM waveform (12-lead, general,
   ambulatory ECG);
3. content starting with ``<`` (after BOM/whitespace) → XML, by root element:
   ``AnnotatedECG`` → HL7 aECG, ``restingecgdata`` → Philips Sierra, ``RestingECG`` → GE MUSE;
4. ``.csv``/``.tsv``/``.txt`` name, or a text line of lead names → CSV;
5. otherwise ECGError naming the file and the supported formats.

Several non-WFDB parts in one upload are refused (one upload is one ECG). Every reader ends in the
same checks (``_common.finish``): limb leads derived from I and II when missing, sampling rate
within 100–20000 Hz, ≥ 2 s, equal lead lengths, finite samples, not all leads flat. Any problem
raises ``ECGError`` with a message for the sender (the API answers 422 with it).
"""

from __future__ import annotations

from pathlib import PurePath

from remote_dx.ecg.model import ECG, ECGError
from remote_dx.ecg.readers._common import local, parse_xml
from remote_dx.ecg.readers.aecg import read_aecg
from remote_dx.ecg.readers.csv_reader import looks_like_csv, read_csv
from remote_dx.ecg.readers.dicom_waveform import looks_like_dicom, read_dicom_waveform
from remote_dx.ecg.readers.muse import read_muse
from remote_dx.ecg.readers.sierra import read_sierra
from remote_dx.ecg.readers.wfdb_reader import read_wfdb

SUPPORTED = (
    "DICOM ECG waveform (.dcm), WFDB (.hea + .dat), HL7 aECG XML, Philips Sierra XML, "
    "GE MUSE XML, CSV with a header row of lead names"
)


def detect_format(files: list[tuple[str, bytes]]) -> str:
    """Name of the format ``read_ecg`` would use: dicom, wfdb, hl7-aecg, philips-sierra,
    ge-muse or csv (ECGError when none fits)."""
    return _detect(files)[0]


def read_ecg(
    files: list[tuple[str, bytes]],
    *,
    sampling_rate: float | None = None,
    units: str | None = None,
) -> ECG:
    """Read the parts of one uploaded ECG. ``sampling_rate``/``units`` are the upload's optional
    parameters for CSV (ignored by formats that state their own)."""
    kind, name, data = _detect(files)
    if kind == "wfdb":
        return read_wfdb(files)
    if kind == "dicom":
        return read_dicom_waveform(data, name=name)
    if kind == "csv":
        return read_csv(data, name=name, sampling_rate=sampling_rate, units=units)
    reader = {"hl7-aecg": read_aecg, "philips-sierra": read_sierra, "ge-muse": read_muse}[kind]
    return reader(data, name=name)


def _detect(files: list[tuple[str, bytes]]) -> tuple[str, str, bytes]:
    parts = [(PurePath(name or "upload").name, data) for name, data in files]
    if not parts:
        raise ECGError("no file received")
    empty = [name for name, data in parts if not data]
    if empty:
        raise ECGError(f"empty file(s): {', '.join(empty)}")
    if any(name.lower().endswith(".hea") for name, _ in parts):
        return "wfdb", parts[0][0], b""
    if len(parts) > 1:
        raise ECGError(
            f"{len(parts)} files ({', '.join(n for n, _ in parts)}) sent as one ECG; only WFDB "
            "needs several (.hea + .dat) — send one file per ECG"
        )
    name, data = parts[0]
    if looks_like_dicom(name, data):
        return "dicom", name, data
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        root = parse_xml(data, what=name)
        kind = {
            "AnnotatedECG": "hl7-aecg",
            "restingecgdata": "philips-sierra",
            "RestingECG": "ge-muse",
        }.get(local(root.tag))
        if kind is None:
            raise ECGError(
                f"{name}: XML root <{local(root.tag)}> is not a known ECG format "
                "(HL7 AnnotatedECG, Philips restingecgdata, GE RestingECG)"
            )
        return kind, name, data
    if looks_like_csv(name, data):
        return "csv", name, data
    raise ECGError(f"{name}: unrecognised ECG format; supported: {SUPPORTED}")


__all__ = ["SUPPORTED", "ECGError", "detect_format", "read_ecg"]
