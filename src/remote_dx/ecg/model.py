"""The internal ECG model every reader produces and every consumer (analysis, rendering, the
DICOM writer, the browser) takes.

Signals are float32 in millivolts, one array per lead, all at one sampling rate. Lead names follow
the standard 12-lead set (PS3.16 CID 3001 "ECG Leads" meanings): I, II, III, aVR, aVL, aVF, V1–V6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from numpy.typing import NDArray

STANDARD_LEADS: tuple[str, ...] = (
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
)
_ALIASES = {name.upper(): name for name in STANDARD_LEADS} | {
    "AVR": "aVR",
    "AVL": "aVL",
    "AVF": "aVF",
    "MLII": "II",
    "LEAD I": "I",
    "LEAD II": "II",
    "LEAD III": "III",
    "-AVR": "-aVR",
}


def standard_lead_name(name: str) -> str:
    """Map a reader's lead label ("Lead II", "AVR", "v1") onto the standard spelling."""
    cleaned = name.strip()
    key = cleaned.upper().replace("LEAD ", "LEAD ").strip()
    if key.startswith("LEAD ") and key[5:] in _ALIASES:
        return _ALIASES[key[5:]]
    return _ALIASES.get(key, cleaned)


class ECGError(ValueError):
    """The recording is not a usable ECG; the message says what is wrong (shown to the sender)."""


@dataclass
class PatientInfo:
    patient_id: str | None = None
    name: str | None = None  # DICOM PN form: family^given
    sex: str | None = None  # M / F / O
    birth_date: str | None = None  # YYYYMMDD
    age_years: float | None = None


@dataclass
class DeviceMeasurements:
    """What the cart itself measured and said; kept untouched beside our own analysis."""

    heart_rate: float | None = None
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_ms: float | None = None
    axis_deg: float | None = None
    statements: list[str] = field(default_factory=list)


@dataclass
class MedianBeat:
    """A representative (median/average) beat the cart derived, kept beside the rhythm leads.

    DICOM stores it as a second multiplex group (WaveformOriginality DERIVED), HL7 aECG as a
    REPRESENTATIVE_BEAT series, MUSE as the ``Median`` waveform; float32 mV like the leads.
    """

    leads: dict[str, NDArray[np.float32]]
    sampling_rate: float


@dataclass
class ECG:
    leads: dict[str, NDArray[np.float32]]
    sampling_rate: float
    patient: PatientInfo = field(default_factory=PatientInfo)
    acquired_at: datetime | None = None
    device: str | None = None
    source_format: str = "unknown"
    device_measurements: DeviceMeasurements | None = None
    median_beat: MedianBeat | None = None

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.leads.values()))) if self.leads else 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_rate if self.sampling_rate else 0.0

    def lead(self, name: str) -> NDArray[np.float32]:
        return self.leads[name]

    def complete_limb_leads(self) -> ECG:
        """Derive III, aVR, aVL, aVF from I and II where a cart stored only 8 leads.

        Einthoven's and Goldberger's relations: III = II − I, aVR = −(I + II)/2,
        aVL = I − II/2, aVF = II − I/2.
        """
        if "I" not in self.leads or "II" not in self.leads:
            return self
        lead_i, lead_ii = self.leads["I"], self.leads["II"]
        derived = {
            "III": lead_ii - lead_i,
            "aVR": -(lead_i + lead_ii) / 2,
            "aVL": lead_i - lead_ii / 2,
            "aVF": lead_ii - lead_i / 2,
        }
        for name, values in derived.items():
            self.leads.setdefault(name, values.astype(np.float32))
        return self

    def ordered(self) -> ECG:
        """Leads in standard order first, any extra leads after."""
        names = [n for n in STANDARD_LEADS if n in self.leads]
        names += [n for n in self.leads if n not in names]
        self.leads = {n: self.leads[n] for n in names}
        return self

    def validate(
        self, *, min_rate: float = 100.0, max_rate: float = 20000.0, min_seconds: float = 2.0
    ) -> None:
        """Raise ECGError naming the problem if this cannot be read as an ECG."""
        if not self.leads:
            raise ECGError("no leads in the recording")
        if not (min_rate <= self.sampling_rate <= max_rate):
            raise ECGError(
                f"sampling rate {self.sampling_rate:g} Hz is outside {min_rate:g}–{max_rate:g} Hz"
            )
        lengths = {name: len(values) for name, values in self.leads.items()}
        if len(set(lengths.values())) != 1:
            raise ECGError(f"leads have different lengths: {lengths}")
        if self.duration_s < min_seconds:
            raise ECGError(
                f"recording is {self.duration_s:.1f} s long; at least {min_seconds:g} s needed"
            )
        for name, values in self.leads.items():
            if not np.all(np.isfinite(values)):
                raise ECGError(f"lead {name} contains missing (non-finite) samples")
